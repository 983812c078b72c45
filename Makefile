# dpuctl — the packaging contract. `make deps` installs what building and testing need (Debian 12),
# `make` builds the release binary, `make test` runs every test, `make install` installs.

PREFIX ?= /usr/local
DESTDIR ?=
BINDIR ?= $(PREFIX)/bin
SBINDIR ?= $(PREFIX)/sbin
LIBDIR ?= $(PREFIX)/lib
MANDIR ?= $(PREFIX)/share/man
BASHCOMPDIR ?= $(PREFIX)/share/bash-completion/completions
ZSHCOMPDIR ?= $(PREFIX)/share/zsh/site-functions
FISHCOMPDIR ?= $(PREFIX)/share/fish/vendor_completions.d
UNITDIR ?= $(PREFIX)/lib/systemd/system
# mount(8) looks for mount.TYPE helpers in /sbin only, whatever PREFIX is.
MOUNTHELPERDIR ?= /sbin

SWIFT ?= swift
# Start-up time is most of `rexec /bin/true`, so the dynamic loader gets little to do:
# --no-export-dynamic: SwiftPM exports every symbol of an executable (21,000 here), which start-up then
#   walks (relocations, the runtime's dladdr()); nothing loads against dpuctl.
# libstdc++ (which the Swift runtime needs) linked statically: its 5,000 symbol relocations were the
#   largest part of what remained. The toolchain's link arguments say `-lstdc++`; a directory holding
#   only libstdc++.a, searched first, makes that the archive.
# libgcc_s stays a shared library: glibc's pthread_exit/pthread_cancel dlopen it for unwinding when it is
#   not loaded yet, which fails (abort) where dpuctl has left this machine's /lib behind (rootfs
#   prepare's threads); -static-libgcc did that. Its constructor's 12 CPUIDs (each traps to a
#   hypervisor) are skipped: dpuctl exports a filled-in __cpu_model (Sources/CDPUSystem/cpumodel.c).
# --disable-local-rpath: no RUNPATH $ORIGIN (the Swift libraries are linked in), so the loader does not
#   first probe a dozen hwcaps/tls paths next to the binary for every library.
# -disable-concrete-type-metadata-mangled-name-accessors: the metadata of concrete generic types
#   (HMAC<SHA256>, swift-crypto's DigestContext<SHA256>, [UInt8]...) is built through its accessor with
#   the conformances passed in, not by demangling a name at run time and scanning every protocol
#   conformance record of the binary for them (~15% of the rexec client's user time before).
# Every function in a section of its own (-function-sections for Swift, -ffunction-sections for C), and
#   the ones `rexec /bin/true` runs laid out together, in the order it first runs them
#   (scripts/hot-sections.txt, made by scripts/hot-sections.sh; gold's --section-ordering-file): the
#   client's code then spans a few hundred KB instead of 16 MB, and its start takes half the page faults
#   on code (71 -> 36). `make build LINK_MAP=FILE` also writes the linker's map (the script reads it).
# Measured with bench/rexec.sh and perf stat (bench/RESULTS.md, rexec).
STATIC_LIBS = $(CURDIR)/.build/static-libs
HOT_SECTIONS = scripts/hot-sections.txt
SWIFT_BUILD_FLAGS = -c release --static-swift-stdlib --disable-local-rpath \
	-Xlinker --no-export-dynamic -Xlinker --export-dynamic-symbol=__cpu_model -Xlinker -L$(STATIC_LIBS) \
	-Xswiftc -Xfrontend -Xswiftc -disable-concrete-type-metadata-mangled-name-accessors \
	-Xswiftc -Xfrontend -Xswiftc -function-sections -Xcc -ffunction-sections \
	-Xlinker --section-ordering-file -Xlinker $(CURDIR)/$(HOT_SECTIONS)
SWIFT_RELEASE_FLAGS = $(SWIFT_BUILD_FLAGS) $(if $(LINK_MAP),-Xlinker -Map -Xlinker $(abspath $(LINK_MAP)))
RELEASE_BIN = .build/release/dpuctl
# The flags the release objects were compiled with. SwiftPM recompiles a file when it changes, not when
# the flags do: objects compiled before -function-sections kept their single .text and the section list
# could not place them (measurements on such a tree were of another layout than a clean build's).
RELEASE_FLAGS_STAMP = .build/release-flags
# Man pages carry this date, so regenerating them changes nothing unless the commands changed.
MAN_DATE = 2026-11-26

# Debian packages: to build; to run the tests (namespaces, FUSE, systemd tools, shells for the
# completions, man to render the pages, socat as a real peer, python3 for the udsproxy tests' real
# server and client, binutils to check what libudsproxy.so exports; for the rootfs tests: setcap/getcap,
# getfattr/setfattr (and getfacl/setfacl for qtfs), sfdisk, mkfs.ext4 and qemu-img/qemu-nbd to build and read disk images). gcc links
# libudsproxy.so.
DEB_BUILD = libsystemd-dev libfuse3-dev pkg-config gcc libc6-dev libstdc++-12-dev
DEB_TEST = fuse3 iproute2 util-linux procps systemd man-db groff-base zsh fish socat \
	libvirt-daemon libvirt-daemon-driver-qemu libvirt-clients qemu-system-x86 \
	libcap2-bin attr acl fdisk e2fsprogs qemu-utils python3 binutils
DEB_PACKAGES = $(DEB_BUILD) $(DEB_TEST)

.PHONY: all build preload deps test unit integration e2e demo man completions install uninstall dist clean check-generated

all: build

build: $(STATIC_LIBS)/libstdc++.a
	@# Other release flags than the last build's: start the release objects afresh.
	@if [ -e .build/release ] && [ "$$(cat $(RELEASE_FLAGS_STAMP) 2>/dev/null)" != '$(SWIFT_BUILD_FLAGS)' ]; then \
		echo "release build flags changed: recompiling everything"; rm -rf "$$(readlink -f .build/release)"; fi
	@# SwiftPM does not see the section list as an input of the link: a binary older than it goes.
	@if [ $(HOT_SECTIONS) -nt $(RELEASE_BIN) ] || [ -n "$(LINK_MAP)" ]; then rm -f $(RELEASE_BIN); fi
	$(SWIFT) build $(SWIFT_RELEASE_FLAGS) --product dpuctl
	@echo '$(SWIFT_BUILD_FLAGS)' >$(RELEASE_FLAGS_STAMP)
	@# After SwiftPM: on a fresh tree it makes .build/release a symbolic link, replacing a directory
	@# made before it (and the library in it).
	@$(MAKE) --no-print-directory preload

$(STATIC_LIBS)/libstdc++.a:
	@archive=$$($(CC) -print-file-name=libstdc++.a); [ -f "$$archive" ] || { echo "libstdc++.a not found (make deps installs libstdc++-12-dev)" >&2; exit 1; }; \
		mkdir -p $(STATIC_LIBS) && ln -sf "$$archive" $@

# libudsproxy.so is linked with the C compiler, not as SwiftPM's `udsproxy` product: the Swift driver links
# every product against the Swift runtime (with the toolchain's rpath), which a library preloaded into
# arbitrary programs must not drag in. It exports connect() and needs libc only.
CC ?= cc
PRELOAD_LIB = .build/release/libudsproxy.so
preload: $(PRELOAD_LIB)
$(PRELOAD_LIB): Sources/CUDSPreload/udsproxy.c $(wildcard Sources/CUDSPreload/include/*.h)
	mkdir -p $$(dirname $(PRELOAD_LIB))
	$(CC) -shared -fPIC -O2 -fvisibility=hidden -Wall -Wextra -Werror -ISources/CUDSPreload/include \
		-Wl,-z,defs -Wl,--as-needed -o $(PRELOAD_LIB) Sources/CUDSPreload/udsproxy.c

deps:
	@missing=$$(for p in $(DEB_PACKAGES); do dpkg-query -W -f='$${Status}\n' $$p 2>/dev/null | grep -q '^install ok installed' || echo $$p; done); \
	if [ -n "$$missing" ]; then \
		echo "installing:" $$missing; \
		export DEBIAN_FRONTEND=noninteractive; \
		apt-get update -qq && apt-get install -y -qq --no-install-recommends $$missing >/dev/null; \
	else echo "all Debian packages present"; fi

# The end-to-end test needs libvirt and QEMU, which `make deps` installs (it skips, saying so, without them).
test: build unit integration e2e

# The main job: the whole offload on this machine (simulated host and DPU), then torn down.
demo: build
	$(RELEASE_BIN) demo

unit:
	$(SWIFT) test

integration: build
	DPUCTL=$(CURDIR)/$(RELEASE_BIN) bash Tests/integration/run.sh

# Unmodified libvirt on the simulated DPU runs a VM on the simulated host (installs libvirt and QEMU).
e2e: build
	DPUCTL=$(CURDIR)/$(RELEASE_BIN) bash Tests/integration/run.sh ../e2e/libvirt.sh

# ---- generated documentation -------------------------------------------------------------------------

GENERATE_MANUAL = .build/argparser-tools/debug/generate-manual
LINKS = .build/links

$(GENERATE_MANUAL):
	$(SWIFT) package resolve
	$(SWIFT) build --package-path .build/checkouts/swift-argument-parser --scratch-path .build/argparser-tools --product generate-manual

# Every applet name, linked to the release binary, so that generation sees each name as it is invoked.
links: build
	rm -rf $(LINKS) && mkdir -p $(LINKS)/bin
	ln -s $(abspath $(RELEASE_BIN)) $(LINKS)/bin/dpuctl
	$(RELEASE_BIN) --list | while read name dir; do ln -s $(abspath $(RELEASE_BIN)) $(LINKS)/bin/$$name; done

man: links $(GENERATE_MANUAL)
	OUT=man ./scripts/generate-docs.sh man $(GENERATE_MANUAL) $(MAN_DATE)

completions: links
	OUT=completions ./scripts/generate-docs.sh completions

# Fails when the checked-in completions or man pages differ from what the binary generates now.
check-generated: links $(GENERATE_MANUAL)
	./scripts/generate-docs.sh check $(GENERATE_MANUAL) $(MAN_DATE)

# ---- install -----------------------------------------------------------------------------------------

install: build
	install -d $(DESTDIR)$(BINDIR) $(DESTDIR)$(SBINDIR) $(DESTDIR)$(LIBDIR) $(DESTDIR)$(UNITDIR) \
		$(DESTDIR)$(MANDIR)/man1 $(DESTDIR)$(MANDIR)/man8 $(DESTDIR)$(BASHCOMPDIR) $(DESTDIR)$(ZSHCOMPDIR) \
		$(DESTDIR)$(FISHCOMPDIR) $(DESTDIR)$(MOUNTHELPERDIR)
	install -m 0755 $(RELEASE_BIN) $(DESTDIR)$(BINDIR)/dpuctl
	install -m 0755 .build/release/libudsproxy.so $(DESTDIR)$(LIBDIR)/libudsproxy.so
	$(RELEASE_BIN) --list | while read name dir; do \
		case $$dir in bin) target=$(BINDIR);; sbin) target=$(SBINDIR);; esac; \
		ln -sfn $(BINDIR)/dpuctl $(DESTDIR)$$target/$$name; \
	done
	ln -sfn $(BINDIR)/dpuctl $(DESTDIR)$(MOUNTHELPERDIR)/mount.qtfs
	for unit in systemd/*.in; do \
		sed 's|@bindir@|$(BINDIR)|g' $$unit > $(DESTDIR)$(UNITDIR)/$$(basename $$unit .in); \
	done
	install -m 0644 systemd/*.socket $(DESTDIR)$(UNITDIR)/
	install -m 0644 man/*.1 $(DESTDIR)$(MANDIR)/man1/
	install -m 0644 man/*.8 $(DESTDIR)$(MANDIR)/man8/
	install -m 0644 completions/bash/* $(DESTDIR)$(BASHCOMPDIR)/
	install -m 0644 completions/zsh/* $(DESTDIR)$(ZSHCOMPDIR)/
	install -m 0644 completions/fish/* $(DESTDIR)$(FISHCOMPDIR)/

uninstall:
	$(RELEASE_BIN) --list | while read name dir; do \
		case $$dir in bin) target=$(BINDIR);; sbin) target=$(SBINDIR);; esac; \
		rm -f $(DESTDIR)$$target/$$name; \
	done
	rm -f $(DESTDIR)$(MOUNTHELPERDIR)/mount.qtfs $(DESTDIR)$(BINDIR)/dpuctl $(DESTDIR)$(LIBDIR)/libudsproxy.so
	for unit in systemd/*.in systemd/*.socket; do rm -f $(DESTDIR)$(UNITDIR)/$$(basename $$unit .in); done
	for page in man/*.1; do rm -f $(DESTDIR)$(MANDIR)/man1/$$(basename $$page); done
	for page in man/*.8; do rm -f $(DESTDIR)$(MANDIR)/man8/$$(basename $$page); done
	for f in completions/bash/*; do rm -f $(DESTDIR)$(BASHCOMPDIR)/$$(basename $$f); done
	for f in completions/zsh/*; do rm -f $(DESTDIR)$(ZSHCOMPDIR)/$$(basename $$f); done
	for f in completions/fish/*; do rm -f $(DESTDIR)$(FISHCOMPDIR)/$$(basename $$f); done

dist: build
	rm -rf dist && mkdir -p dist
	$(MAKE) install DESTDIR=$(CURDIR)/dist/root PREFIX=/usr MOUNTHELPERDIR=/usr/sbin
	tar -C dist/root -czf dist/dpuctl-$$($(RELEASE_BIN) --version)-$$(uname -m).tar.gz .

clean:
	rm -rf .build dist
