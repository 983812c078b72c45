/// O_DIRECT, which the Glibc module leaves out (it is declared under _GNU_SOURCE) and whose value
/// differs between architectures.
#if arch(x86_64) || arch(i386)
public let O_DIRECT: Int32 = 0o40000
#else
public let O_DIRECT: Int32 = 0o200000
#endif
