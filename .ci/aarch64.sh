#!/usr/bin/env bash
# aarch64, the CPU architecture of Jetson Orin, on an x86-64 machine.
#
#   bash .ci/aarch64.sh                 type-check (and, under CI's clippy wrapper, lint) every target
#                                       of the workspace for aarch64-unknown-linux-gnu, then the crate
#                                       with the features an Orin build uses: code behind
#                                       `cfg(target_arch = "aarch64")` (the Arm int8 kernel), FFI, and
#                                       what x86-only code leaves unused there (CI runs this)
#   bash .ci/aarch64.sh test [ARGS]     build the workspace's tests for aarch64 and run them under
#                                       qemu-user (`cargo test ARGS`; without ARGS every test but three
#                                       that only qemu fails, below), by hand: about 12 min of builds
#                                       on 2 vCPUs, then ~45 min emulated
#
# The emulated CPU is a Cortex-A76 (`QEMU_CPU`, default cortex-a76): Armv8.2 with the dot product
# and no int8 matrix multiply or SVE, as Orin's Cortex-A78AE, so tract and our kernels pick the
# code paths they would pick on Orin. `QEMU_CPU=cortex-a72` (no dot product) runs the float INT8
# path. Times under emulation say nothing of an Arm CPU's speed.
#
# Needs: the Rust standard library for aarch64 (rustup), a cross C/C++ toolchain (build scripts
# compile C for the target: openh264) and, for `test`, qemu-user; installed here when missing. When
# they cannot be installed (no network) the check is skipped with a warning, as the gst tests are.
set -euo pipefail
cd "$(dirname "$0")/.."
target=aarch64-unknown-linux-gnu
mode="${1:-check}"
[ $# -gt 0 ] && shift

skip() {
    echo "ci: WARNING: $1: the aarch64 $mode is skipped"
    exit 0
}

if ! rustup target list --installed 2>/dev/null | grep -qx "$target"; then
    rustup target add "$target" >/dev/null 2>&1 || skip "rustup could not add $target"
fi
packages="gcc-aarch64-linux-gnu g++-aarch64-linux-gnu"
[ "$mode" = test ] && packages="$packages qemu-user"
missing=""
for tool in aarch64-linux-gnu-gcc aarch64-linux-gnu-g++; do
    command -v "$tool" >/dev/null || missing=1
done
if [ "$mode" = test ] && ! command -v qemu-aarch64 >/dev/null; then
    missing=1
fi
if [ -n "$missing" ]; then
    # shellcheck disable=SC2086 # a list of package names
    apt-get install -y --no-install-recommends $packages >/dev/null 2>&1 \
        || { apt-get update >/dev/null 2>&1 && apt-get install -y --no-install-recommends $packages >/dev/null 2>&1; } \
        || skip "apt could not install $packages"
fi

export CARGO_TARGET_AARCH64_UNKNOWN_LINUX_GNU_LINKER=aarch64-linux-gnu-gcc
# What qemu-user reads from the environment: the emulated CPU and where the target's libc lies.
export QEMU_CPU="${QEMU_CPU:-cortex-a76}" QEMU_LD_PREFIX=/usr/aarch64-linux-gnu
export CARGO_TARGET_AARCH64_UNKNOWN_LINUX_GNU_RUNNER=qemu-aarch64
if [ "$mode" = test ] && [ ! -e /proc/sys/fs/binfmt_misc/qemu-aarch64 ]; then
    # The tests start our binary (the CLI tests, isolated decoders, the allocation tests' own
    # processes): the kernel must hand aarch64 executables to qemu (what Debian's qemu-user-binfmt
    # registers; needs root). Without it those tests fail with "Exec format error".
    { [ -e /proc/sys/fs/binfmt_misc/register ] \
        || mount -t binfmt_misc binfmt_misc /proc/sys/fs/binfmt_misc; } \
        && echo ':qemu-aarch64:M::\x7fELF\x02\x01\x01\x00\x00\x00\x00\x00\x00\x00\x00\x00\x02\x00\xb7\x00:\xff\xff\xff\xff\xff\xff\xff\x00\xff\xff\xff\xff\xff\xff\xff\xff\xfe\xff\xff\xff:/usr/bin/qemu-aarch64:' \
            >/proc/sys/fs/binfmt_misc/register \
        || echo "ci: WARNING: aarch64 executables cannot be registered with binfmt_misc: the tests that start a process fail"
fi
case "$mode" in
    check)
        cargo check --target "$target" --workspace --all-targets
        # What an Orin build switches on (V4L2 cameras, the ROS 2 node, the device path; TensorRT's
        # Rust side, its C++ shim being left out without headers): FFI code is where aarch64 differs
        # (`c_char` is unsigned there).
        cargo check --target "$target" --features camera-v4l,ros2,cuda,tensorrt --lib --bins --tests
        ;;
    test)
        if [ $# -eq 0 ]; then
            # Three tests fail under qemu-user, not on Arm: two expect the error of spawning a
            # program that does not exist, which glibc's posix_spawn (CLONE_VM | CLONE_VFORK,
            # emulated as a plain fork) cannot pass back, so the child exits 127 instead; the soak
            # test's RSS bound counts qemu's own translation cache (benches/README.md, session 29).
            set -- --no-fail-fast -- \
                --skip camera::isolated::a_worker_that_cannot_run_is_a_clear_error \
                --skip camera::pipe::gst_failures_carry_the_childs_words_and_the_child_is_gone \
                --skip cli::soak::soak_rss_fds_and_fps_stay_flat
        fi
        cargo test --target "$target" --workspace "$@"
        ;;
    *)
        echo "usage: bash .ci/aarch64.sh [check | test [CARGO TEST ARGS]]" >&2
        exit 2
        ;;
esac
