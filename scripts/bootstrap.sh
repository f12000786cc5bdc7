#!/usr/bin/env bash
# Idempotent bootstrap of everything lb needs to build and test its eBPF
# programs on Debian 12 as root. Every step checks first and does nothing
# when its prerequisite is already there, so both `cargo xtask demo` and
# `cargo xtask ci` can run it every time.
set -euo pipefail

log() { printf '[bootstrap] %s\n' "$*"; }
die() { printf '[bootstrap] error: %s\n' "$*" >&2; exit 1; }

[ "$(id -u)" -eq 0 ] || die "run as root (XDP, bpffs and network namespaces need it)"

BPF_LINKER_VERSION=0.13.0
CARGO_FUZZ_VERSION=0.13.1
LLVM_MAJOR=22
LLVM_PREFIX=/usr/lib/llvm-${LLVM_MAJOR}

# 1. bpffs: maps and programs are pinned there.
if ! mountpoint -q /sys/fs/bpf; then
    log "mounting bpffs on /sys/fs/bpf"
    mount -t bpf bpf /sys/fs/bpf
fi

# 2. Debian packages: LLVM for bpf-linker, and the tools the tests and the
#    demo drive (iproute2 for namespaces, ethtool for offloads, testssl.sh
#    for the TLS configuration scan, slowhttptest for slow clients).
apt_pkgs=()
[ -f "${LLVM_PREFIX}/lib/libLLVM.so" ] || [ -d "${LLVM_PREFIX}/lib/cmake/llvm" ] || apt_pkgs+=("llvm-${LLVM_MAJOR}-dev")
command -v ip >/dev/null || apt_pkgs+=(iproute2)
command -v ethtool >/dev/null || apt_pkgs+=(ethtool)
command -v nsenter >/dev/null || apt_pkgs+=(util-linux)
# The demo's L7 part makes its certificates with openssl and asks with curl.
command -v openssl >/dev/null || apt_pkgs+=(openssl)
command -v curl >/dev/null || apt_pkgs+=(curl)
# The TLS configuration scan (lb-userspace/tests/tls_scan.rs); Debian's
# package testssl.sh installs the command as `testssl`.
command -v testssl >/dev/null || apt_pkgs+=(testssl.sh)
# libFuzzer (built by the fuzz crate's libfuzzer-sys) is C++.
command -v c++ >/dev/null || apt_pkgs+=(g++)
# The slow-client attacks (lb-userspace/tests/slow_clients.rs).
command -v slowhttptest >/dev/null || apt_pkgs+=(slowhttptest)
if [ "${#apt_pkgs[@]}" -gt 0 ]; then
    log "installing Debian packages: ${apt_pkgs[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq "${apt_pkgs[@]}" >/dev/null
fi

# 3. The nightly toolchain with rust-src (aya-build compiles core for bpfel).
command -v rustup >/dev/null || die "rustup not found: install Rust with rustup first"
if ! rustup toolchain list | grep -q '^nightly'; then
    log "installing the nightly toolchain"
    rustup toolchain install nightly --profile minimal
fi
if ! rustup component list --toolchain nightly --installed | grep -q '^rust-src'; then
    log "adding rust-src to the nightly toolchain"
    rustup component add rust-src --toolchain nightly
fi
nightly_llvm=$(rustc +nightly -vV | sed -n 's/^LLVM version: \([0-9]*\).*/\1/p')
[ "$nightly_llvm" = "$LLVM_MAJOR" ] || die "rustc +nightly uses LLVM ${nightly_llvm}, but bpf-linker is built for LLVM ${LLVM_MAJOR}; install a nightly based on LLVM ${LLVM_MAJOR} (rustup toolchain install nightly-YYYY-MM-DD)"

# 4. bpf-linker, built against the same LLVM.
if ! bpf-linker --version 2>/dev/null | grep -q "${BPF_LINKER_VERSION}"; then
    log "installing bpf-linker ${BPF_LINKER_VERSION} (about a minute)"
    LLVM_PREFIX=${LLVM_PREFIX} LLVM_SYS_221_PREFIX=${LLVM_PREFIX} \
        cargo install bpf-linker --version "${BPF_LINKER_VERSION}" --locked \
        --no-default-features --features "llvm-${LLVM_MAJOR}"
fi

# 5. cargo-fuzz, for `cargo xtask fuzz` (the fuzz targets in fuzz/, built
#    with the nightly toolchain and libFuzzer).
if ! cargo fuzz --version 2>/dev/null | grep -q "${CARGO_FUZZ_VERSION}"; then
    log "installing cargo-fuzz ${CARGO_FUZZ_VERSION} (about 30 s)"
    cargo install cargo-fuzz --version "${CARGO_FUZZ_VERSION}" --locked
fi

log "ready"
