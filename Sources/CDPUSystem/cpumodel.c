/* libgcc_s's CPU model, answered before its constructor asks the CPU.
 *
 * libgcc_s.so.1 (linked dynamically: see the Makefile on -static-libgcc) runs __cpu_indicator_init
 * before main in every process that loads it: 12 CPUID instructions to fill __cpu_model, which only
 * __builtin_cpu_is/__builtin_cpu_supports read. Nothing in dpuctl does (its C code, the Swift runtime,
 * libdispatch, libstdc++ and BoringSSL, which keeps its own OPENSSL_ia32cap). Under a hypervisor each
 * CPUID traps: 4.8 us on the VM this was measured on, 58 us of every dpuctl start (`rexec /bin/true`
 * among them). The constructor returns at once when the vendor is already set, and libgcc_s reads
 * __cpu_model through its GOT, so this definition (exported: -Xlinker --export-dynamic-symbol in the
 * Makefile) is the one it sees. VENDOR_OTHER and no features: a __builtin_cpu_supports would say no
 * rather than be wrong. The layout is libgcc's struct __processor_model, unchanged since GCC 4.8. */
struct processor_model {
    unsigned int vendor;
    unsigned int type;
    unsigned int subtype;
    unsigned int features[1];
};

__attribute__((visibility("default"), used)) struct processor_model __cpu_model = {3 /* VENDOR_OTHER */, 0, 0, {0}};
