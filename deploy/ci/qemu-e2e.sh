#!/usr/bin/env bash
# deploy/ci/qemu-e2e.sh: boots a real Linux guest under QEMU whose vfio-user-pci device is
# served by swiotlb-host, runs swiotlb-guest inside that guest through the sysfs back end,
# and checks both sides: the guest's result line on the console, the host's session_end
# JSON (SWIOTLB negotiated, attestation accepted, no trapped pool access, the pool at the bus
# address the guest kernel assigned) and the audit log (swiotlb-audit verify).
#
# Runs as root on a Debian (bookworm or later) x86_64 machine that reaches Debian's mirrors.
# QEMU >= 10.1 (the vfio-user-pci client) comes from trixie-backports and needs glibc >= 2.38,
# so it runs inside a cached `debootstrap --variant=minbase trixie` chroot. The guest kernel
# is trixie's linux-image-amd64; the initramfs is busybox-static plus a static swiotlb-guest.
# See docs/qemu-e2e.md.
#
# Environment (all optional):
#   SWIOTLB_QEMU_CACHE    cache directory (chroot + kernel)   [/var/cache/swiotlb-qemu]
#   SWIOTLB_QEMU_MIRROR   Debian mirror                       [http://deb.debian.org/debian]
#   SWIOTLB_QEMU_REFRESH  1: rebuild the chroot (newer packages) even if the stamp matches
#   SWIOTLB_QEMU_ACCEL    auto | tcg | kvm                    [auto: KVM only if a probe boot works]
#   SWIOTLB_QEMU_TIMEOUT  seconds the test boot may take      [300]
#   SWIOTLB_QEMU_KVM_PROBE_TIMEOUT  seconds for the KVM probe boot [10]
#   SWIOTLB_QEMU_IO_SIZE  bytes the guest writes and reads back [4M]
#   SWIOTLB_QEMU_POOL_SIZE  pool BAR size                     [16M]
#   SWIOTLB_QEMU_LOGS     where logs are kept after the run   [$CARGO_TARGET_DIR/qemu-e2e]
#   SWIOTLB_QEMU_VERBOSE  1: print the whole guest console, not only the result lines
#   SWIOTLB_QEMU_EXTRA_ARGS  more QEMU arguments, split on blanks (e.g. "-trace vfio_region_*")
#   SWIOTLB_QEMU_GUEST_INTX_DISABLE  1: /init enables the function and sets Interrupt Disable
#                         before swiotlb-guest runs (a diagnostic: see the trapped-access check)
#
# Exit status: 0 all checks passed; 1 a check or a step failed; 3 everything the tree allows
# passed but swiotlb-guest has no sysfs back end (--pci) yet, so nothing ran through the device.
set -Eeuo pipefail
umask 022

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
CACHE=${SWIOTLB_QEMU_CACHE:-/var/cache/swiotlb-qemu}
MIRROR=${SWIOTLB_QEMU_MIRROR:-http://deb.debian.org/debian}
SUITE=trixie
ROOT=$CACHE/$SUITE-root
STAMP=$ROOT/.swiotlb-e2e-stamp
KDIR=/opt/swiotlb-kernel            # inside the chroot: the extracted guest kernel
ACCEL=${SWIOTLB_QEMU_ACCEL:-auto}
BOOT_TIMEOUT=${SWIOTLB_QEMU_TIMEOUT:-300}
KVM_PROBE_TIMEOUT=${SWIOTLB_QEMU_KVM_PROBE_TIMEOUT:-10}
IO_SIZE=${SWIOTLB_QEMU_IO_SIZE:-4M}
POOL_SIZE=${SWIOTLB_QEMU_POOL_SIZE:-16M}
TARGET_DIR=${CARGO_TARGET_DIR:-$REPO/target}
case $TARGET_DIR in /*) ;; *) TARGET_DIR=$REPO/$TARGET_DIR ;; esac
LOGS=${SWIOTLB_QEMU_LOGS:-$TARGET_DIR/qemu-e2e}
VERBOSE=${SWIOTLB_QEMU_VERBOSE:-0}
DISK_SIZE_MIB=64

# What goes into the chroot. Changing any of this (or RECIPE_VERSION) invalidates the cache.
RECIPE_VERSION=1
CHROOT_PKGS=(kmod busybox-static xz-utils)
QEMU_PKG=qemu-system-x86
QEMU_SUITE=$SUITE-backports
KERNEL_META=linux-image-amd64
# Guest modules: loaded for the test (uio), and shipped for the peer comparison (stock
# virtio-blk with swiotlb=force), which are NOT loaded in the test: virtio_pci would bind the
# function (1af4:1042) before swiotlb-guest gets it.
MODS_TEST=(uio uio_pci_generic)
MODS_PEER=(virtio_pci virtio_blk) # virtio_pci is built in (the test keeps it off, see CMDLINE)

# ---------------------------------------------------------------------------------------------
say() { printf '%s\n' "$*"; }
step() { printf '\n== %s\n' "$*"; }
die() {
    printf '\nqemu-e2e: FAILED: %s\n' "$*" >&2
    exit 1
}
now() { date +%s.%N; }
secs() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.1f", b - a }'; }
TIMINGS=()
PHASE=""
PHASE_T0=""
phase() { # phase NAME: ends the running phase (recording its time) and starts NAME
    local t
    t=$(now)
    if [ -n "$PHASE" ]; then TIMINGS+=("$(printf '%-40s %7s s' "$PHASE" "$(secs "$PHASE_T0" "$t")")"); fi
    PHASE=$1
    PHASE_T0=$t
    [ -n "$PHASE" ] && step "$PHASE"
    return 0
}

[ "$(id -u)" = 0 ] || die "must run as root (debootstrap, chroot, mknod and mount need it)"
[ "$(uname -m)" = x86_64 ] || die "x86_64 only"

# ---------------------------------------------------------------------------------------------
# Teardown: always, on success, failure or a signal.
MOUNTS=()        # mount points to undo, in order
HOST_PID=""
QEMU_PID=""
WORK=""
RUNDIR=""        # inside the chroot tree (socket, kernel, initramfs)
T_START=$(now)

mount_tracked() { # mount_tracked TARGET mount-args...
    local target=$1
    shift
    mount "$@" "$target"
    MOUNTS+=("$target")
}

unmount_all() {
    local i m
    for ((i = ${#MOUNTS[@]} - 1; i >= 0; i--)); do
        m=${MOUNTS[i]}
        if mountpoint -q "$m"; then
            umount "$m" 2>/dev/null || umount -l "$m" 2>/dev/null ||
                printf 'qemu-e2e: WARNING: could not unmount %s\n' "$m" >&2
        fi
    done
    MOUNTS=()
}

stop_pid() { # stop_pid PID NAME: TERM, then KILL after 5 s
    local pid=$1 name=$2 i
    [ -n "$pid" ] || return 0
    kill -0 "$pid" 2>/dev/null || return 0
    kill -TERM "$pid" 2>/dev/null || true
    for i in $(seq 50); do
        kill -0 "$pid" 2>/dev/null || break
        sleep 0.1
    done
    if kill -0 "$pid" 2>/dev/null; then
        printf 'qemu-e2e: %s (pid %s) did not stop on TERM, killing it\n' "$name" "$pid" >&2
        kill -KILL "$pid" 2>/dev/null || true
    fi
    wait "$pid" 2>/dev/null || true
}

cleanup() {
    local rc=$?
    set +e
    trap - EXIT INT TERM
    stop_pid "$QEMU_PID" qemu
    stop_pid "$HOST_PID" swiotlb-host
    unmount_all
    [ -n "$RUNDIR" ] && rm -rf "$RUNDIR"
    [ -n "$WORK" ] && rm -rf "$WORK"
    if [ ${#TIMINGS[@]} -gt 0 ] || [ -n "$PHASE" ]; then
        phase ""
        printf '\n== timings\n'
        printf '   %s\n' "${TIMINGS[@]}"
        printf '   %-40s %7s s\n' "total" "$(secs "$T_START" "$(now)")"
    fi
    [ -d "$LOGS" ] && printf '   logs: %s\n' "$LOGS"
    case $rc in
        130 | 143) printf '\nqemu-e2e: INTERRUPTED (signal): QEMU and swiotlb-host stopped, mounts undone\n' >&2 ;;
    esac
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# Refuses to delete a tree that still has something mounted in it (a bind of /dev, say).
assert_nothing_mounted_under() {
    local dir
    dir=$(realpath -m "$1")
    if awk -v d="$dir/" '{ if (index($5 "/", d) == 1) { found = 1 } } END { exit !found }' /proc/self/mountinfo; then
        die "something is still mounted under $dir (see /proc/self/mountinfo); unmount it first"
    fi
}

in_root() { chroot "$ROOT" /usr/bin/env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin LANG=C.UTF-8 \
    DEBIAN_FRONTEND=noninteractive "$@"; }

# ---------------------------------------------------------------------------------------------
phase "build machine tools"
need=()
for pair in debootstrap:debootstrap cpio:cpio gzip:gzip xz:xz-utils file:file jq:jq \
    flock:util-linux mountpoint:util-linux realpath:coreutils; do
    command -v "${pair%%:*}" >/dev/null 2>&1 || need+=("${pair#*:}")
done
# debootstrap needs the keys trixie is signed with (bookworm's keyring has them since 2023.3).
if [ ! -s /usr/share/keyrings/debian-archive-keyring.gpg ]; then need+=(debian-archive-keyring); fi
if [ ${#need[@]} -gt 0 ]; then
    command -v apt-get >/dev/null || die "missing tools (${need[*]}) and no apt-get to install them"
    say "installing: ${need[*]}"
    apt-get update -qq || die "apt-get update failed"
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
        "${need[@]}" >/dev/null || die "apt-get install ${need[*]} failed"
else
    say "all present (debootstrap, cpio, gzip, xz, file, jq, util-linux)"
fi
command -v cargo >/dev/null || die "cargo is not on PATH"

# ---------------------------------------------------------------------------------------------
phase "chroot ($SUITE, QEMU, kernel, busybox)"
mkdir -p "$CACHE"
exec 9>"$CACHE/.lock"
flock -x 9 # one builder at a time; runs using the chroot hold it shared (below)
# With the lock held exclusively no other run is using the chroot: a mount left in it is
# stale (a run killed with SIGKILL) and is ours to undo.
while mountpoint -q "$ROOT/proc" 2>/dev/null; do umount "$ROOT/proc" || umount -l "$ROOT/proc" || break; done

RECIPE=$(printf '%s\n' "v$RECIPE_VERSION" "$SUITE" "${CHROOT_PKGS[*]}" "$QEMU_PKG/$QEMU_SUITE" \
    "$KERNEL_META" "${MODS_TEST[*]}" "${MODS_PEER[*]}" | sha256sum | cut -c1-16)

stamp_ok() {
    [ -s "$STAMP" ] || return 1
    [ "$(sed -n 's/^recipe=//p' "$STAMP")" = "$RECIPE" ] || return 1
    local line pkg want have krel
    while IFS= read -r line; do
        case $line in
            pkg:*)
                pkg=${line#pkg:}
                want=${pkg#*=}
                pkg=${pkg%%=*}
                have=$(in_root dpkg-query -W -f="\${Version}" "$pkg" 2>/dev/null) || return 1
                [ "$have" = "$want" ] || {
                    say "cache: $pkg is $have, the stamp says $want"
                    return 1
                }
                ;;
        esac
    done <"$STAMP"
    krel=$(sed -n 's/^kernel-release=//p' "$STAMP")
    [ -n "$krel" ] && [ -s "$ROOT$KDIR/boot/vmlinuz-$krel" ] &&
        [ -s "$ROOT$KDIR/lib/modules/$krel/modules.dep" ] || return 1
    return 0
}

build_base() {
    assert_nothing_mounted_under "$ROOT"
    assert_nothing_mounted_under "$ROOT.tmp"
    rm -rf "$ROOT" "$ROOT.tmp"
    say "debootstrap --variant=minbase $SUITE ($MIRROR)"
    debootstrap --variant=minbase "$SUITE" "$ROOT.tmp" "$MIRROR" >"$CACHE/debootstrap.log" 2>&1 || {
        tail -n 30 "$CACHE/debootstrap.log" >&2
        die "debootstrap failed (full log: $CACHE/debootstrap.log)"
    }
    touch "$ROOT.tmp/.swiotlb-e2e-base"
    mv "$ROOT.tmp" "$ROOT"
}

build_packages() {
    local kpkg kver krel log=$CACHE/apt.log
    rm -f "$STAMP"
    cat >"$ROOT/etc/apt/sources.list" <<EOF
deb $MIRROR $SUITE main
deb $MIRROR $SUITE-updates main
deb $MIRROR $SUITE-backports main
EOF
    rm -f "$ROOT/etc/apt/sources.list.d/"*.sources 2>/dev/null || true
    printf 'APT::Install-Recommends "false";\nAPT::Install-Suggests "false";\n' \
        >"$ROOT/etc/apt/apt.conf.d/90swiotlb-e2e"
    mount_tracked "$ROOT/proc" -t proc proc
    : >"$log"
    say "apt-get install ${CHROOT_PKGS[*]}; -t $QEMU_SUITE $QEMU_PKG"
    { in_root apt-get update &&
        in_root apt-get install -y "${CHROOT_PKGS[@]}" &&
        in_root apt-get install -y -t "$QEMU_SUITE" "$QEMU_PKG"; } >>"$log" 2>&1 || {
        tail -n 30 "$log" >&2
        die "apt-get in the chroot failed (log: $log)"
    }
    # The guest kernel: the package linux-image-amd64 points at, downloaded and extracted
    # (not installed: no initramfs-tools, no hooks).
    kpkg=$(in_root apt-cache depends "$KERNEL_META" | awk '/Depends: linux-image-[0-9]/ { print $2; exit }')
    [ -n "$kpkg" ] || die "cannot tell which kernel package $KERNEL_META depends on"
    kver=$(in_root apt-cache policy "$kpkg" | awk '/Candidate:/ { print $2 }')
    say "kernel: $kpkg $kver"
    rm -rf "$ROOT$KDIR" "$ROOT/tmp/kdeb"
    mkdir -p "$ROOT/tmp/kdeb" && chmod 777 "$ROOT/tmp/kdeb"
    in_root sh -c "cd /tmp/kdeb && apt-get download '$kpkg=$kver'" >>"$log" 2>&1 ||
        die "apt-get download $kpkg failed (log: $log)"
    in_root sh -c "dpkg-deb -x /tmp/kdeb/*.deb '$KDIR'" >>"$log" 2>&1 || die "extracting $kpkg failed"
    rm -rf "$ROOT/tmp/kdeb"
    # Merged /usr: the package ships usr/lib/modules; modprobe -d and depmod -b want lib/modules.
    [ -e "$ROOT$KDIR/lib" ] || ln -s usr/lib "$ROOT$KDIR/lib"
    krel=$(find "$ROOT$KDIR/lib/modules/" -mindepth 1 -maxdepth 1 -type d -printf '%f\n' | head -n1)
    [ -s "$ROOT$KDIR/boot/vmlinuz-$krel" ] || die "no vmlinuz-$krel in $kpkg"
    in_root depmod -b "$KDIR" "$krel" >>"$log" 2>&1 || die "depmod failed (log: $log)"
    in_root apt-get clean
    unmount_all
    # The vfio-user client is what all this is for.
    in_root qemu-system-x86_64 -device help 2>/dev/null | grep -q '"vfio-user-pci"' ||
        die "$(in_root qemu-system-x86_64 --version | head -n1) has no vfio-user-pci device (need QEMU >= 10.1)"
    {
        echo "recipe=$RECIPE"
        echo "built=$(date -u +%Y-%m-%dT%H:%M:%SZ)"
        echo "mirror=$MIRROR"
        for p in "${CHROOT_PKGS[@]}" "$QEMU_PKG"; do
            echo "pkg:$p=$(in_root dpkg-query -W -f="\${Version}" "$p")"
        done
        # The kernel is extracted, not installed (dpkg does not know it): its files are checked.
        echo "kernel-package=$kpkg"
        echo "kernel-version=$kver"
        echo "kernel-release=$krel"
    } >"$STAMP.tmp"
    mv "$STAMP.tmp" "$STAMP"
}

if [ "${SWIOTLB_QEMU_REFRESH:-0}" = 1 ]; then
    say "SWIOTLB_QEMU_REFRESH=1: rebuilding the chroot"
    build_base
    build_packages
elif stamp_ok; then
    say "cached: $ROOT (stamp matches: recipe $RECIPE, package versions as recorded)"
else
    if [ ! -e "$ROOT/.swiotlb-e2e-base" ] || [ ! -x "$ROOT/usr/bin/apt-get" ]; then build_base; fi
    build_packages
fi
flock -s 9 # keep the chroot from being rebuilt under this run
QEMU_VERSION=$(in_root qemu-system-x86_64 --version | head -n1)
KREL=$(sed -n 's/^kernel-release=//p' "$STAMP")
KPKG_VERSION="$(sed -n 's/^kernel-package=//p' "$STAMP") $(sed -n 's/^kernel-version=//p' "$STAMP")"
say "qemu:    $QEMU_VERSION"
say "kernel:  $KPKG_VERSION ($KREL)"
say "busybox: $(sed -n 's/^pkg:busybox-static=//p' "$STAMP")"

# ---------------------------------------------------------------------------------------------
phase "build host tools (release)"
cd "$REPO"
cargo build --release -p swiotlb-host -p swiotlb-attest --bins --quiet || die "cargo build (host) failed"
HOST_BIN=$TARGET_DIR/release/swiotlb-host
AUDIT_BIN=$TARGET_DIR/release/swiotlb-audit
ATTEST_BIN=$TARGET_DIR/release/swiotlb-attest
for b in "$HOST_BIN" "$AUDIT_BIN" "$ATTEST_BIN"; do [ -x "$b" ] || die "$b was not built"; done

phase "build static swiotlb-guest"
RUSTFLAGS="-C target-feature=+crt-static" cargo build --release -p swiotlb-guest \
    --target x86_64-unknown-linux-gnu --quiet || die "cargo build (static guest) failed"
GUEST_BIN=$TARGET_DIR/x86_64-unknown-linux-gnu/release/swiotlb-guest
[ -x "$GUEST_BIN" ] || die "$GUEST_BIN was not built"
say "$(file -b "$GUEST_BIN" | cut -d, -f1-5)"
file -b "$GUEST_BIN" | grep -Eq 'statically linked|static-pie linked' ||
    die "$GUEST_BIN is not statically linked: $(file -b "$GUEST_BIN")"
if ldd "$GUEST_BIN" 2>&1 | grep -q '=>'; then die "$GUEST_BIN has dynamic dependencies: $(ldd "$GUEST_BIN" 2>&1)"; fi
say "ldd: $(ldd "$GUEST_BIN" 2>&1 | head -n1 | sed 's/^[[:space:]]*//')"
HAS_PCI=0
if "$GUEST_BIN" --help 2>/dev/null | grep -q -- '--pci'; then HAS_PCI=1; fi
if [ "$HAS_PCI" = 1 ]; then
    say "swiotlb-guest has --pci (sysfs back end)"
else
    say "NOTE: this swiotlb-guest has no --pci option: the sysfs back end has not landed yet"
fi

# ---------------------------------------------------------------------------------------------
phase "initramfs"
mkdir -p "$LOGS" "$ROOT/tmp"
# Only this script's own files (SWIOTLB_QEMU_LOGS may point at a directory with others).
rm -rf "${LOGS:?}/audit" "$LOGS"/{console.log,console.txt,host.stdout,host.stderr,kvm-probe.log}
WORK=$(mktemp -d /tmp/swiotlb-qemu-e2e.XXXXXX)
RUNDIR=$(mktemp -d "$ROOT/tmp/e2e.XXXXXX") # QEMU sees it as /tmp/e2e.XXXXXX
RUN_IN=/tmp/${RUNDIR##*/}
chmod 755 "$RUNDIR"
SOCK=$RUNDIR/swiotlb.sock
[ ${#SOCK} -lt 100 ] || die "socket path too long for a Unix socket ($SOCK): set SWIOTLB_QEMU_CACHE to a shorter directory"

"$ATTEST_BIN" emulated-keygen --out "$WORK/ark" >/dev/null || die "swiotlb-attest emulated-keygen failed"

IR=$WORK/initramfs
mkdir -p "$IR"/{bin,dev,proc,sys,tmp,lib/modules}
cp "$ROOT/bin/busybox" "$IR/bin/busybox"
file -b "$IR/bin/busybox" | grep -Eq 'statically linked|static-pie linked' || die "busybox is not static"
mknod -m 600 "$IR/dev/console" c 5 1
mknod -m 666 "$IR/dev/null" c 1 3
# Stripped: the release profile keeps debuginfo, which would triple the initramfs.
if command -v strip >/dev/null; then strip -o "$IR/swiotlb-guest" "$GUEST_BIN"; else cp "$GUEST_BIN" "$IR/swiotlb-guest"; fi
install -m 600 "$WORK/ark/emulated-ark.pk8" "$IR/key.pk8"

# Modules with their dependencies, in load order, decompressed (busybox insmod takes .ko).
modules_for() { # modules_for LISTFILE MOD...: copies the modules, writes their load order
    local list=$1 m line path name
    shift
    : >"$IR/lib/modules/$list"
    for m in "$@"; do
        in_root modprobe -d "$KDIR" -S "$KREL" --show-depends "$m" >"$WORK/deps" 2>&1 ||
            die "modprobe --show-depends $m: $(cat "$WORK/deps")"
        while IFS= read -r line; do
            case $line in
                insmod\ *)
                    path=${line#insmod }
                    path=${path%% *}
                    name=$(basename "$path")
                    name=${name%%.ko*}
                    grep -qx "$name" "$IR/lib/modules/$list" && continue
                    case $path in
                        *.ko.xz) xz -dc "$ROOT$path" >"$IR/lib/modules/$name.ko" ;;
                        *.ko.gz) gzip -dc "$ROOT$path" >"$IR/lib/modules/$name.ko" ;;
                        *.ko.zst) in_root zstd -dc "$path" >"$IR/lib/modules/$name.ko" ;;
                        *.ko) cp "$ROOT$path" "$IR/lib/modules/$name.ko" ;;
                        *) die "unexpected module file $path" ;;
                    esac
                    echo "$name" >>"$IR/lib/modules/$list"
                    ;;
                builtin\ *) ;;
                *) die "modprobe --show-depends $m: unexpected '$line'" ;;
            esac
        done <"$WORK/deps"
    done
}
modules_for load-test "${MODS_TEST[@]}"
modules_for load-peer "${MODS_PEER[@]}"
say "modules (test): $(tr '\n' ' ' <"$IR/lib/modules/load-test")"
say "modules (peer, not loaded in this test): $(tr '\n' ' ' <"$IR/lib/modules/load-peer")"

cat >"$IR/e2e.conf" <<EOF
IO_SIZE=$IO_SIZE
HAS_PCI=$HAS_PCI
INTX_DISABLE=${SWIOTLB_QEMU_GUEST_INTX_DISABLE:-0}
EOF

cat >"$IR/init" <<'INIT'
#!/bin/busybox sh
# Init of the swiotlb QEMU end-to-end guest: find the vfio-user device, run swiotlb-guest
# through the sysfs back end, print SWIOTLB-E2E result lines on the console, power off.
/bin/busybox --install -s /bin
export PATH=/bin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev 2>/dev/null
exec </dev/console >/dev/console 2>&1
. /e2e.conf
say() { echo "SWIOTLB-E2E: $*"; }
finish() { # finish PASS|FAIL message...
    say "$@"
    sync
    poweroff -f
    sleep 5
}
read -r up _ </proc/uptime
say "BOOT init at ${up}s (kernel $(uname -r))"
if grep -q 'swiotlb_e2e=probe' /proc/cmdline; then finish "PROBE-OK"; fi

for m in $(cat /lib/modules/load-test); do
    insmod "/lib/modules/$m.ko" || say "WARNING: insmod $m failed"
done

# lspci, from /sys.
DEV=""
echo "PCI functions (slot vendor:device class):"
for d in /sys/bus/pci/devices/*; do
    v=$(cat "$d/vendor"); dv=$(cat "$d/device"); c=$(cat "$d/class")
    drv=$(basename "$(readlink "$d/driver" 2>/dev/null)" 2>/dev/null)
    echo "  ${d##*/} ${v#0x}:${dv#0x} class ${c#0x} ${drv:+driver $drv}"
    if [ "$v" = 0x1af4 ] && [ "$dv" = 0x1042 ]; then DEV=$d; fi
done
[ -n "$DEV" ] || finish FAIL "no virtio-blk function (1af4:1042) on the guest's PCI bus"
SLOT=${DEV##*/}
echo "$SLOT resources (BAR start end flags):"
n=0
while read -r s e f; do
    if [ "$((s))" != 0 ]; then echo "  BAR$n $s $e $f"; fi
    n=$((n + 1))
    [ $n -ge 6 ] && break
done <"$DEV/resource"
set -- $(sed -n 3p "$DEV/resource")
BAR2=$(printf '0x%x' "$(($1))")
BAR2_SIZE=$(($2 - $1 + 1))
set -- $(sed -n 1p "$DEV/resource")
BAR0=$(printf '0x%x' "$(($1))")
say "DEVICE $SLOT vendor=$(cat "$DEV/vendor") device=$(cat "$DEV/device") bar0=$BAR0 bar2=$BAR2 bar2_size=$BAR2_SIZE command=$(od -An -tx2 -j4 -N2 "$DEV/config" | tr -d ' ')"

if [ "$HAS_PCI" != 1 ]; then
    echo "swiotlb-guest (static) runs in the guest:"
    /swiotlb-guest --version
    /swiotlb-guest --help
    finish FAIL "sysfs back end missing: swiotlb-guest has no --pci option; once it lands this init runs: swiotlb-guest --pci sysfs:auto --attester emulated --emulated-key /key.pk8 info, then ... roundtrip --size $IO_SIZE"
fi

if [ "$INTX_DISABLE" = 1 ]; then
    # Diagnostic (SWIOTLB_QEMU_GUEST_INTX_DISABLE=1): set Interrupt Disable (command bit 10)
    # after enabling the function (pci_enable_device clears that bit).
    [ "$(cat "$DEV/enable")" = 0 ] && echo 1 >"$DEV/enable"
    cmd=$(od -An -tu2 -j4 -N2 "$DEV/config" | tr -d ' ')
    new=$((cmd | 0x400))
    printf "\\$(printf %o $((new & 0xff)))\\$(printf %o $((new >> 8)))" |
        dd of="$DEV/config" bs=2 seek=2 count=1 conv=notrunc 2>/dev/null
    say "INTX-DISABLE command $(printf 0x%04x "$cmd") -> $(od -An -tx2 -j4 -N2 "$DEV/config" | tr -d ' ')"
fi

G="/swiotlb-guest --pci sysfs:auto --attester emulated --emulated-key /key.pk8"
echo "+ $G info"
$G info || finish FAIL "swiotlb-guest info failed (exit $?)"
echo "+ $G --json info"
INFO=$($G --json info) || finish FAIL "swiotlb-guest --json info failed: $INFO"
say "INFO $INFO"
case $INFO in *'"ok":true'*) ;; *) finish FAIL "info: $INFO" ;; esac
case $INFO in *VIRTIO_F_SWIOTLB*|*'"SWIOTLB"'*) ;; *) finish FAIL "VIRTIO_F_SWIOTLB not negotiated: $INFO" ;; esac
POOL=$(echo "$INFO" | sed -n 's/.*"pool_bus_address":\([0-9]*\).*/\1/p')
[ -n "$POOL" ] || finish FAIL "no pool_bus_address in: $INFO"
say "POOL driver=$(printf '0x%x' "$POOL") kernel-bar2=$BAR2"
[ "$((POOL))" = "$((BAR2))" ] || finish FAIL "the driver's pool address $(printf '0x%x' "$POOL") is not the BAR2 the kernel assigned ($BAR2)"
echo "+ $G roundtrip --size $IO_SIZE"
RT=$($G --json roundtrip --size "$IO_SIZE") || finish FAIL "swiotlb-guest roundtrip failed: $RT"
say "ROUNDTRIP $RT"
case $RT in *'"ok":true'*) ;; *) finish FAIL "roundtrip: $RT" ;; esac
W=$(echo "$RT" | sed -n 's/.*"write_mib_s":\([0-9.e+-]*\).*/\1/p')
R=$(echo "$RT" | sed -n 's/.*"read_mib_s":\([0-9.e+-]*\).*/\1/p')
read -r up _ </proc/uptime
finish PASS "bytes=$IO_SIZE write_mib_s=$W read_mib_s=$R uptime=${up}s"
INIT
chmod 755 "$IR/init"
(cd "$IR" && find . -print0 | sort -z | cpio --null -o -H newc --quiet | gzip -1) >"$RUNDIR/initrd.gz" ||
    die "building the initramfs failed"
cp "$ROOT$KDIR/boot/vmlinuz-$KREL" "$RUNDIR/vmlinuz"
say "initramfs: $(du -h "$RUNDIR/initrd.gz" | cut -f1) (swiotlb-guest $(du -h "$IR/swiotlb-guest" | cut -f1), busybox $(du -h "$IR/bin/busybox" | cut -f1), $(wc -l <"$IR/lib/modules/load-test") + $(wc -l <"$IR/lib/modules/load-peer") modules)"

# ---------------------------------------------------------------------------------------------
# QEMU, from inside the chroot. Runs in the background; its pid is chroot's, which execs QEMU.
QEMU_ARGS=(-machine q35 -m 512 -smp 1 -nodefaults -no-user-config -display none
    -serial stdio -monitor none -nic none -no-reboot
    -kernel "$RUN_IN/vmlinuz" -initrd "$RUN_IN/initrd.gz"
    # SeaBIOS drives every virtio-blk function it finds unless boot order is strict; it would
    # decline VIRTIO_F_SWIOTLB (a swiotlb_declined finding). The -kernel ROM still boots.
    -boot strict=on
    # One line each time QEMU turns the BAR mappings on or off (see the trapped-access check).
    -trace vfio_region_mmaps_set_enabled)
# shellcheck disable=SC2206 # extra QEMU arguments, split on blanks (e.g. "-trace vfio_region_*")
[ -n "${SWIOTLB_QEMU_EXTRA_ARGS:-}" ] && QEMU_ARGS+=($SWIOTLB_QEMU_EXTRA_ARGS)
# virtio_pci is built into Debian's kernel: kept from binding the function (1af4:1042), or it
# would reset it and claim its BARs (with IO_STRICT_DEVMEM no sysfs mmap of a claimed BAR).
CMDLINE="console=ttyS0 panic=-1 loglevel=5 initcall_blacklist=virtio_pci_driver_init"

run_qemu() { # run_qemu LOG TIMEOUT ACCEL APPEND [extra args]: QEMU's status, 124 on timeout,
    # 125 when the log matches $QEMU_ABORT_RE (a hung KVM, say)
    local log=$1 timeout=$2 accel=$3 append=$4 t0 rc
    shift 4
    t0=$(date +%s)
    T_INIT=""
    chroot "$ROOT" /usr/bin/env -i PATH=/usr/bin:/bin qemu-system-x86_64 -accel "$accel" \
        "${QEMU_ARGS[@]}" -append "$append" "$@" </dev/null >"$log" 2>&1 &
    QEMU_PID=$!
    while kill -0 "$QEMU_PID" 2>/dev/null; do
        if [ -z "$T_INIT" ] && grep -aq '^SWIOTLB-E2E: BOOT' "$log"; then T_INIT=$(now); fi
        if [ $(($(date +%s) - t0)) -ge "$timeout" ]; then
            stop_pid "$QEMU_PID" qemu
            QEMU_PID=""
            return 124
        fi
        if [ -n "${QEMU_ABORT_RE:-}" ] && grep -Eaq "$QEMU_ABORT_RE" "$log"; then
            stop_pid "$QEMU_PID" qemu
            QEMU_PID=""
            return 125
        fi
        sleep 0.2
    done
    rc=0
    wait "$QEMU_PID" || rc=$?
    QEMU_PID=""
    return "$rc"
}

phase "accelerator"
KVM_FAILED_RE='KVM internal error|failed to initialize kvm|KVM_RUN|kvm run failed'
mount_tracked "$ROOT/proc" -t proc proc # this run's own (stacked if another run has one)
USE_ACCEL=tcg
case $ACCEL in
    tcg) say "SWIOTLB_QEMU_ACCEL=tcg" ;;
    kvm | auto)
        if [ -c /dev/kvm ] && [ -r /dev/kvm ] && [ -w /dev/kvm ]; then
            # The chroot gets its own /dev/kvm node (same numbers), no bind mount needed.
            if [ ! -c "$ROOT/dev/kvm" ]; then
                mknod -m 600 "$ROOT/dev/kvm" c "$((0x$(stat -c %t /dev/kvm)))" "$((0x$(stat -c %T /dev/kvm)))"
            fi
            # A failed probe is remembered for this host kernel, CPU, QEMU and guest kernel (a
            # working one is probed again every run: it takes a second or two).
            probe_key="host $(uname -r) cpu$(grep -m1 '^model name' /proc/cpuinfo | cut -d: -f2) | $QEMU_VERSION | guest $KREL"
            if [ "$ACCEL" = auto ] && [ -s "$CACHE/kvm-probe" ] && [ "$(sed -n 1p "$CACHE/kvm-probe")" = "$probe_key" ]; then
                say "KVM failed its probe on this host before ($(sed -n 2p "$CACHE/kvm-probe")): using TCG"
                say "(rm $CACHE/kvm-probe to probe again)"
            else
                say "probing KVM: a boot to init within ${KVM_PROBE_TIMEOUT}s"
                prc=0
                # (PVM hosts: "KVM internal error" and a stopped VM; no need to wait for the timeout)
                QEMU_ABORT_RE=$KVM_FAILED_RE run_qemu "$LOGS/kvm-probe.log" "$KVM_PROBE_TIMEOUT" kvm "$CMDLINE swiotlb_e2e=probe" || prc=$?
                if grep -q 'SWIOTLB-E2E: PROBE-OK' "$LOGS/kvm-probe.log"; then
                    USE_ACCEL=kvm
                    rm -f "$CACHE/kvm-probe"
                    say "KVM works"
                else
                    why="exit $prc"
                    [ "$prc" = 124 ] && why="no init within ${KVM_PROBE_TIMEOUT}s"
                    [ "$prc" = 125 ] && why="$(grep -Eam1 "$KVM_FAILED_RE" "$LOGS/kvm-probe.log" 2>/dev/null || true)"
                    say "KVM does not boot this kernel ($why; $LOGS/kvm-probe.log): using TCG"
                    [ "$ACCEL" = kvm ] && die "SWIOTLB_QEMU_ACCEL=kvm but KVM does not work"
                    printf '%s\n%s\n' "$probe_key" "$(date -u +%Y-%m-%dT%H:%M:%SZ): $why" >"$CACHE/kvm-probe.tmp.$$" &&
                        mv "$CACHE/kvm-probe.tmp.$$" "$CACHE/kvm-probe"
                fi
            fi
        else
            say "no usable /dev/kvm: using TCG"
            [ "$ACCEL" = kvm ] && die "SWIOTLB_QEMU_ACCEL=kvm but there is no /dev/kvm"
        fi
        ;;
    *) die "SWIOTLB_QEMU_ACCEL must be auto, tcg or kvm" ;;
esac

# ---------------------------------------------------------------------------------------------
phase "start swiotlb-host"
DISK=$WORK/disk.img
truncate -s "${DISK_SIZE_MIB}M" "$DISK"
AUDIT_DIR=$WORK/audit
mkdir -p "$AUDIT_DIR"
# One vfio-user client: QEMU, for the whole life of the VM (every swiotlb-guest run inside the
# guest is a device reset within that one session).
NO_COLOR=1 "$HOST_BIN" --socket "$SOCK" --disk "$DISK" --pool-size "$POOL_SIZE" --sessions 1 --log info \
    --attestation required --allow-emulated --emulated-ark "$WORK/ark/emulated-ark.pub" \
    --audit-log "$AUDIT_DIR/device.jsonl" >"$LOGS/host.stdout" 2>"$LOGS/host.stderr" &
HOST_PID=$!
for _ in $(seq 100); do
    [ -S "$SOCK" ] && break
    kill -0 "$HOST_PID" 2>/dev/null || break
    sleep 0.1
done
if [ ! -S "$SOCK" ]; then
    tail -n 20 "$LOGS/host.stderr" >&2
    die "swiotlb-host did not start listening on $SOCK"
fi
say "listening on $SOCK (pid $HOST_PID; QEMU sees $RUN_IN/swiotlb.sock), pool $POOL_SIZE, disk ${DISK_SIZE_MIB} MiB, attestation required (emulated)"

# ---------------------------------------------------------------------------------------------
phase "boot + test ($USE_ACCEL)"
DEVJSON=$(jq -cn --arg p "$RUN_IN/swiotlb.sock" '{driver: "vfio-user-pci", socket: {path: $p, type: "unix"}}')
say "qemu-system-x86_64 -accel $USE_ACCEL ${QEMU_ARGS[*]} -append '$CMDLINE' -device '$DEVJSON'"
T_BOOT=$(now)
qrc=0
run_qemu "$LOGS/console.log" "$BOOT_TIMEOUT" "$USE_ACCEL" "$CMDLINE" -device "$DEVJSON" || qrc=$?
T_QEMU_END=$(now)
if [ "$qrc" = 124 ]; then
    tail -n 40 "$LOGS/console.log" >&2
    die "the guest did not power off within ${BOOT_TIMEOUT}s (console: $LOGS/console.log)"
fi
# The host ends after its one session (QEMU's disconnect).
for _ in $(seq 100); do
    kill -0 "$HOST_PID" 2>/dev/null || break
    sleep 0.1
done
hrc=0
if kill -0 "$HOST_PID" 2>/dev/null; then
    say "WARNING: swiotlb-host still running 10 s after QEMU exited: stopping it"
    stop_pid "$HOST_PID" swiotlb-host
    hrc=stopped
else
    wait "$HOST_PID" || hrc=$?
fi
HOST_PID=""
tr -d '\r' <"$LOGS/console.log" >"$LOGS/console.txt"
if [ "$VERBOSE" = 1 ]; then
    step "guest console"
    cat "$LOGS/console.txt"
fi

# ---------------------------------------------------------------------------------------------
phase "checks"
FAILS=()
fail() {
    FAILS+=("$*")
    say "   FAIL  $*"
}
ok() { say "   ok    $*"; }

say "-- guest (console: $LOGS/console.txt)"
grep '^SWIOTLB-E2E:' "$LOGS/console.txt" | sed 's/^/   /' || true
[ "$qrc" = 0 ] || fail "QEMU exited with status $qrc"
BOOT_AT=$(sed -n 's/^SWIOTLB-E2E: BOOT init at \([0-9.]*\)s.*/\1/p' "$LOGS/console.txt" | head -n1)
RESULT=$(grep -E '^SWIOTLB-E2E: (PASS|FAIL)' "$LOGS/console.txt" | tail -n1 || true)
BACKEND_MISSING=0
case $RESULT in
    "SWIOTLB-E2E: PASS"*) ok "guest: ${RESULT#SWIOTLB-E2E: }" ;;
    *"sysfs back end missing"*)
        BACKEND_MISSING=1
        say "   MISSING  the sysfs back end (swiotlb-guest --pci) is not in this tree yet: the guest found the device, ran the static binary and stopped there"
        ;;
    "SWIOTLB-E2E: FAIL"*) fail "guest: ${RESULT#SWIOTLB-E2E: FAIL }" ;;
    *) fail "the guest printed no result line (console: $LOGS/console.txt)" ;;
esac
GUEST_BAR2=$(sed -n 's/^SWIOTLB-E2E: DEVICE .* bar2=\(0x[0-9a-f]*\).*/\1/p' "$LOGS/console.txt" | head -n1)
if [ -n "$GUEST_BAR2" ]; then
    ok "guest kernel assigned BAR2 (the pool) at $GUEST_BAR2"
else
    fail "the guest did not report the device's BAR2"
fi

say "-- host (stdout: $LOGS/host.stdout, stderr: $LOGS/host.stderr)"
[ "$hrc" = 0 ] || fail "swiotlb-host exited with status $hrc"
SESSION=$(jq -c 'select(.event == "session_end")' "$LOGS/host.stdout" 2>/dev/null | tail -n1 || true)
if [ -z "$SESSION" ]; then
    fail "swiotlb-host printed no session_end line"
else
    S() { jq -r "$@" <<<"$SESSION"; }
    say "   session_end: ended $(S .ended); negotiated [$(S '.summary.negotiated | join(", ")')]"
    say "   pool $(S '.summary.pool_size') B at $(S 'if .summary.pool_bus_address == null then "null" else (.summary.pool_bus_address | tostring) end'); chains $(S .summary.chains) ($(S .summary.chains_rejected) rejected), DMAs $(S .summary.dma_descriptors), device-read $(S .summary.dma_readable_bytes) B, device-written $(S .summary.dma_writable_bytes) B, interrupts $(S .summary.interrupts), pool moves $(S .summary.pool_moves)"
    say "   vfio-user: $(S '.protocol.messages') messages, $(S '.protocol.error_replies') error replies, $(S '.protocol.dma_maps_ignored') DMA_MAPs of guest RAM ignored (never mapped); blk reads $(S '.summary.device.reads'), writes $(S '.summary.device.writes'), flushes $(S '.summary.device.flushes'), io_errors $(S '.summary.device.io_errors')"
    HOST_POOL=$(S '.summary.pool_bus_address // empty')
    HOST_POOL_HEX=""
    [ -n "$HOST_POOL" ] && HOST_POOL_HEX=$(printf '0x%x' "$HOST_POOL")
    trapped=$(S .summary.trapped_pool_accesses)
    if [ "$trapped" = 0 ]; then
        ok "trapped_pool_accesses: 0 (QEMU mapped the pool BAR as RAM)"
    else
        fail "trapped_pool_accesses: $trapped (pool accesses went over the socket, not through the mapping)"
        off=$(grep -ac 'BAR 2 mmaps enabled: 0' "$LOGS/console.txt" || true)
        if [ "${off:-0}" -gt 0 ]; then
            say "         QEMU turned the BAR mappings off $off time(s) (trace vfio_region_mmaps_set_enabled in the console"
            say "         log). Without KVM, vfio-pci emulates INTx by unmapping the BARs until it sees an EOI; the"
            say "         device raised $(S .summary.interrupts) interrupt(s). A polling driver must set Interrupt Disable"
            say "         (PCI command bit 10) after enabling the function (the kernel clears that bit when it enables"
            say "         a device). SWIOTLB_QEMU_GUEST_INTX_DISABLE=1 makes /init set it first, to confirm."
        fi
    fi
    v=$(S .summary.dma_violations)
    f=$(S .summary.findings)
    if [ "$v" = 0 ] && [ "$f" = 0 ]; then
        ok "dma_violations: 0, findings: 0"
    else
        fail "dma_violations: $v, findings: $f ($(S -c '.summary.findings_by_kind'))"
    fi
    if [ "$BACKEND_MISSING" = 1 ]; then
        say "   n/a   SWIOTLB negotiation, attestation, pool address as the driver used it: nothing drove the device (no sysfs back end); host saw status $(S .summary.status), attestation $(S .summary.attestation_state), pool address ${HOST_POOL_HEX:-none}, guest kernel BAR2 ${GUEST_BAR2:-?}"
    else
        if S '.summary.negotiated[]' | grep -qx 'VIRTIO_F_SWIOTLB\|SWIOTLB'; then
            ok "VIRTIO_F_SWIOTLB negotiated"
        else
            fail "VIRTIO_F_SWIOTLB not negotiated: $(S -c .summary.negotiated)"
        fi
        att=$(S .summary.attestation_state)
        if [ "$att" = accepted ]; then
            ok "attestation accepted (platform $(S '.summary.attestation.platform // "?"'))"
        else
            fail "attestation: $att"
        fi
        say "   pool bus address: host $HOST_POOL_HEX, guest kernel BAR2 $GUEST_BAR2"
        if [ -n "$HOST_POOL_HEX" ] && [ -n "$GUEST_BAR2" ] && [ "$((HOST_POOL_HEX))" = "$((GUEST_BAR2))" ]; then
            ok "pool bus address: host = guest kernel = $GUEST_BAR2"
        else
            fail "pool bus address: host ${HOST_POOL_HEX:-none}, guest kernel ${GUEST_BAR2:-?}"
        fi
        if [ "$(S .summary.chains)" -gt 0 ] 2>/dev/null; then
            ok "I/O went through the device ($(S .summary.chains) chains)"
        else
            fail "no chain reached the device"
        fi
    fi
fi

say "-- audit log ($AUDIT_DIR, copied to $LOGS/audit)"
mapfile -t AUDIT_FILES < <(find "$AUDIT_DIR" -name '*.jsonl' | sort)
cp -r "$AUDIT_DIR" "$LOGS/audit" 2>/dev/null || true
if [ ${#AUDIT_FILES[@]} = 0 ]; then
    fail "no audit log written"
elif "$AUDIT_BIN" verify "${AUDIT_FILES[@]}" --key "$AUDIT_DIR/device.key.pub" >"$WORK/verify.out" 2>&1; then
    ok "swiotlb-audit verify: $(tr '\n' ' ' <"$WORK/verify.out")"
else
    fail "swiotlb-audit verify: $(tr '\n' ' ' <"$WORK/verify.out")"
fi

say "-- figures"
say "   accelerator       $USE_ACCEL ($QEMU_VERSION)"
say "   guest kernel      $KPKG_VERSION"
INIT_WALL="?"
[ -n "${T_INIT:-}" ] && INIT_WALL=$(secs "$T_BOOT" "$T_INIT")
say "   boot              QEMU start to /init ${INIT_WALL} s wall clock (guest uptime at /init ${BOOT_AT:-?} s); QEMU ran $(secs "$T_BOOT" "$T_QEMU_END") s in all"
RT=$(sed -n 's/^SWIOTLB-E2E: ROUNDTRIP //p' "$LOGS/console.txt" | tail -n1)
if [ -n "$RT" ]; then
    say "   guest I/O         $(jq -r '"\(.bytes) B: write \(.write_mib_s | . * 10 | round / 10) MiB/s (flush included), read \(.read_mib_s | . * 10 | round / 10) MiB/s, sha256 \(.sha256[0:16])..."' <<<"$RT" 2>/dev/null || echo "$RT")"
else
    say "   guest I/O         none (no roundtrip ran)"
fi

if [ ${#FAILS[@]} -gt 0 ] || { [ "$BACKEND_MISSING" = 0 ] && [ "${RESULT#SWIOTLB-E2E: PASS}" = "$RESULT" ]; }; then
    [ "$VERBOSE" = 1 ] || { step "guest console (last 60 lines)"; tail -n 60 "$LOGS/console.txt"; }
    step "swiotlb-host stderr (last 30 lines)"
    tail -n 30 "$LOGS/host.stderr" | sed 's/\x1b\[[0-9;]*m//g'
    die "${#FAILS[@]} check(s) failed: $(printf '%s; ' "${FAILS[@]}")"
fi
if [ "$BACKEND_MISSING" = 1 ]; then
    printf '\nqemu-e2e: INCOMPLETE: the sysfs back end (swiotlb-guest --pci sysfs:auto) is missing; everything else passed (exit 3)\n' >&2
    exit 3
fi
printf '\nqemu-e2e: PASS: swiotlb-guest in a QEMU guest (%s) drove swiotlb-host over vfio-user, pool mapped as RAM, attested, audit log verified\n' "$USE_ACCEL"
