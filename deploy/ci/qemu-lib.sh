# shellcheck shell=bash disable=SC2034 # (sourced: the scripts that source it use its variables)
# deploy/ci/qemu-lib.sh: what the QEMU runs share (deploy/ci/qemu-e2e.sh, the end-to-end
# run, and deploy/ci/qemu-faults.sh, the fault scenarios), sourced by both after they set
# LIB_NAME (the prefix of their messages) and REPO. It holds:
#   - messages, timings and sizes: say, step, die, now, secs, phase, bytes_of;
#   - teardown: mount_tracked, unmount_all, stop_pid and the EXIT/INT/TERM traps, which stop
#     QEMU ($QEMU_PID) and swiotlb-host ($HOST_PID), undo mounts and remove $RUNDIR and $WORK;
#   - the cached trixie chroot with QEMU >= 10.1 and the guest kernel (lib_chroot), whose
#     recipe (packages, module lists) is defined here once, so both runs share one cache;
#   - the release builds (lib_build_host_tools, lib_build_static_guest);
#   - the initramfs: its skeleton (lib_initramfs_begin), modules with their dependencies
#     (modules_for), dynamically linked tools with their libraries (copy_tools), packing
#     (lib_initramfs_pack);
#   - QEMU (run_qemu, with a hook called while it runs) and the accelerator (lib_accel);
#   - swiotlb-host (start_host).
# See docs/qemu-e2e.md and docs/qemu-faults.md.
#
# Environment (all optional): SWIOTLB_QEMU_CACHE, SWIOTLB_QEMU_MIRROR, SWIOTLB_QEMU_REFRESH,
# SWIOTLB_QEMU_ACCEL, SWIOTLB_QEMU_TIMEOUT, SWIOTLB_QEMU_KVM_PROBE_TIMEOUT,
# SWIOTLB_QEMU_EXTRA_ARGS (see qemu-e2e.sh).

CACHE=${SWIOTLB_QEMU_CACHE:-/var/cache/swiotlb-qemu}
MIRROR=${SWIOTLB_QEMU_MIRROR:-http://deb.debian.org/debian}
SUITE=trixie
ROOT=$CACHE/$SUITE-root
STAMP=$ROOT/.swiotlb-e2e-stamp
KDIR=/opt/swiotlb-kernel            # inside the chroot: the extracted guest kernel
ACCEL=${SWIOTLB_QEMU_ACCEL:-auto}
BOOT_TIMEOUT=${SWIOTLB_QEMU_TIMEOUT:-600}
KVM_PROBE_TIMEOUT=${SWIOTLB_QEMU_KVM_PROBE_TIMEOUT:-10}
TARGET_DIR=${CARGO_TARGET_DIR:-$REPO/target}
case $TARGET_DIR in /*) ;; *) TARGET_DIR=$REPO/$TARGET_DIR ;; esac

# What goes into the chroot. Changing any of this (or RECIPE_VERSION) invalidates the cache.
RECIPE_VERSION=1
CHROOT_PKGS=(kmod busybox-static xz-utils e2fsprogs fio)
QEMU_PKG=qemu-system-x86
QEMU_SUITE=$SUITE-backports
KERNEL_META=linux-image-amd64
# Guest modules: loaded for the test (uio), and shipped for the peer comparison (stock
# virtio-blk with swiotlb=force), which are NOT loaded in the test: virtio_pci would bind the
# function (1af4:1042) before swiotlb-guest gets it.
MODS_TEST=(uio uio_pci_generic)
MODS_PEER=(virtio_pci virtio_blk) # virtio_pci is built in (the test boot hands our function over, see /init)
# The VFIO back end's modules, loaded by /init after the sysfs run: vfio-pci (with what
# modules.dep says it needs: vfio, vfio_pci_core, irqbypass, ...) and the type1 IOMMU back end,
# which vfio only requests at run time. The whole kernel's modules are in the cache already,
# so this list is not part of the recipe: changing it needs no new chroot.
MODS_VFIO=(vfio_iommu_type1 vfio_pci)
# The guest disk stage: the kernel's ublk driver (with io_uring, built in) and ext4.
MODS_UBLK=(ublk_drv ext4)
# What a user of the disk runs, with their libraries from the chroot (dynamically linked,
# unlike busybox): mke2fs (mkfs.ext4), e2fsck, fio.
DISK_TOOLS=(/usr/sbin/mke2fs /usr/sbin/e2fsck /usr/bin/fio)

# ---------------------------------------------------------------------------------------------
say() { printf '%s\n' "$*"; }
step() { printf '\n== %s\n' "$*"; }
die() {
    printf '\n%s: FAILED: %s\n' "$LIB_NAME" "$*" >&2
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

bytes_of() { # bytes_of SIZE: a byte count, or N with a K, M or G suffix (powers of 1024)
    local n=${1%[KkMmGg]}
    case $n in '' | *[!0-9]*) return 1 ;; esac
    case ${1#"$n"} in
        '') echo "$n" ;;
        [Kk]) echo $((n << 10)) ;;
        [Mm]) echo $((n << 20)) ;;
        [Gg]) echo $((n << 30)) ;;
    esac
}

lib_require_root() {
    [ "$(id -u)" = 0 ] || die "must run as root (debootstrap, chroot, mknod and mount need it)"
    [ "$(uname -m)" = x86_64 ] || die "x86_64 only"
}

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
                printf '%s: WARNING: could not unmount %s\n' "$LIB_NAME" "$m" >&2
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
        printf '%s: %s (pid %s) did not stop on TERM, killing it\n' "$LIB_NAME" "$name" "$pid" >&2
        kill -KILL "$pid" 2>/dev/null || true
    fi
    wait "$pid" 2>/dev/null || true
}

lib_cleanup() {
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
        130 | 143) printf '\n%s: INTERRUPTED (signal): QEMU and swiotlb-host stopped, mounts undone\n' "$LIB_NAME" >&2 ;;
    esac
    exit "$rc"
}
trap lib_cleanup EXIT
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
lib_machine_tools() { # the phase "build machine tools"
    local need=() pair
    phase "build machine tools"
    for pair in debootstrap:debootstrap cpio:cpio gzip:gzip xz:xz-utils file:file jq:jq \
        e2fsck:e2fsprogs debugfs:e2fsprogs \
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
}

# ---------------------------------------------------------------------------------------------
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
    local kpkg kver krel log=$CACHE/apt.log p
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

lib_chroot() { # the phase "chroot": builds or reuses the cached chroot; sets QEMU_VERSION, KREL, KPKG_VERSION
    phase "chroot ($SUITE, QEMU, kernel, busybox)"
    mkdir -p "$CACHE"
    exec 9>"$CACHE/.lock"
    flock -x 9 # one builder at a time; runs using the chroot hold it shared (below)
    # With the lock held exclusively no other run is using the chroot: a mount left in it is
    # stale (a run killed with SIGKILL) and is ours to undo.
    while mountpoint -q "$ROOT/proc" 2>/dev/null; do umount "$ROOT/proc" || umount -l "$ROOT/proc" || break; done

    RECIPE=$(printf '%s\n' "v$RECIPE_VERSION" "$SUITE" "${CHROOT_PKGS[*]}" "$QEMU_PKG/$QEMU_SUITE" \
        "$KERNEL_META" "${MODS_TEST[*]}" "${MODS_PEER[*]}" | sha256sum | cut -c1-16)

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
}

# ---------------------------------------------------------------------------------------------
lib_build_host_tools() { # sets HOST_BIN, AUDIT_BIN, ATTEST_BIN
    local b
    phase "build host tools (release)"
    cd "$REPO" || die "cannot enter $REPO"
    cargo build --release -p swiotlb-host -p swiotlb-verifiers --bins --quiet || die "cargo build (host, verifiers) failed"
    HOST_BIN=$TARGET_DIR/release/swiotlb-host
    AUDIT_BIN=$TARGET_DIR/release/swiotlb-audit
    ATTEST_BIN=$TARGET_DIR/release/swiotlb-attest
    for b in "$HOST_BIN" "$AUDIT_BIN" "$ATTEST_BIN"; do [ -x "$b" ] || die "$b was not built"; done
}

lib_build_static_guest() { # sets GUEST_BIN and HAS_PCI (1: swiotlb-guest has --pci)
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
        say "swiotlb-guest has --pci (the sysfs and VFIO back ends)"
    else
        say "NOTE: this swiotlb-guest has no --pci option: the sysfs back end has not landed yet"
    fi
}

# ---------------------------------------------------------------------------------------------
# lib_initramfs_begin TAG: the run's directories and the initramfs skeleton. Sets WORK (a
# temporary directory), RUNDIR (inside the chroot tree, which QEMU sees as $RUN_IN), SOCK
# (swiotlb-host's socket there), IR (the initramfs tree: static busybox, /dev/console,
# /dev/null, the stripped swiotlb-guest, a fresh emulated ARK key as /key.pk8 whose public
# half is $WORK/ark/emulated-ark.pub, and deploy/ci/guest-lib.sh).
lib_initramfs_begin() {
    local tag=$1
    mkdir -p "$LOGS" "$ROOT/tmp"
    WORK=$(mktemp -d "/tmp/swiotlb-qemu-$tag.XXXXXX")
    RUNDIR=$(mktemp -d "$ROOT/tmp/$tag.XXXXXX") # QEMU sees it as /tmp/$tag.XXXXXX
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
    install -m 644 "$REPO/deploy/ci/guest-lib.sh" "$IR/guest-lib.sh"
    QEMU_ARGS+=(-kernel "$RUN_IN/vmlinuz" -initrd "$RUN_IN/initrd.gz")
}

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

copy_tools() { # copy_tools PATH...: chroot binaries and every library they load, at the paths ldd names
    local b lib
    for b in "$@"; do
        mkdir -p "$IR$(dirname "$b")"
        cp -L "$ROOT$b" "$IR$b" || die "copying $b from the chroot failed"
        in_root ldd "$b" >"$WORK/ldd" 2>&1 || die "ldd $b: $(cat "$WORK/ldd")"
        for lib in $(awk '/=> \// { print $3 } /^\t\// { print $1 }' "$WORK/ldd"); do
            [ -e "$IR$lib" ] && continue
            mkdir -p "$IR$(dirname "$lib")"
            cp -L "$ROOT$lib" "$IR$lib" || die "copying $lib (for $b) failed"
        done
    done
}

lib_initramfs_pack() { # packs $IR into $RUNDIR/initrd.gz, beside the kernel ($RUNDIR/vmlinuz)
    (cd "$IR" && find . -print0 | sort -z | cpio --null -o -H newc --quiet | gzip -1) >"$RUNDIR/initrd.gz" ||
        die "building the initramfs failed"
    cp "$ROOT$KDIR/boot/vmlinuz-$KREL" "$RUNDIR/vmlinuz"
}

# ---------------------------------------------------------------------------------------------
# QEMU, from inside the chroot. QEMU_ARGS: the machine every boot shares (callers may add to
# it; lib_initramfs_begin adds the kernel and the initramfs).
QEMU_ARGS=(-machine q35 -m 512 -smp 1 -nodefaults -no-user-config -display none
    -serial stdio -monitor none -nic none -no-reboot
    # SeaBIOS drives every virtio-blk function it finds unless boot order is strict; it would
    # decline VIRTIO_F_SWIOTLB (a swiotlb_declined finding). The -kernel ROM still boots.
    -boot strict=on
    # One line each time QEMU turns the BAR mappings on or off (see the trapped-access check).
    -trace vfio_region_mmaps_set_enabled)
# shellcheck disable=SC2206 # extra QEMU arguments, split on blanks (e.g. "-trace vfio_region_*")
[ -n "${SWIOTLB_QEMU_EXTRA_ARGS:-}" ] && QEMU_ARGS+=($SWIOTLB_QEMU_EXTRA_ARGS)
# The test boot's vIOMMU, before the device it translates for. caching-mode=on: QEMU's VFIO
# (vfio-user too) needs to see every mapping the guest makes; intremap=on: without interrupt
# remapping vfio_iommu_type1 refuses the group ("No interrupt remapping support"). With KVM,
# interrupt remapping needs the split irqchip; TCG has no in-kernel irqchip to split.
VIOMMU=(-device "intel-iommu,intremap=on,caching-mode=on")

# run_qemu LOG TIMEOUT ACCEL APPEND [extra args]: QEMU's status, 124 on timeout, 125 when the
# log matches $QEMU_ABORT_RE (a hung KVM, say). Runs in the background, the kernel and
# initramfs from $RUN_IN; its pid (chroot's, which execs QEMU) is $QEMU_PID meanwhile. Sets
# T_INIT when the guest's /init prints its BOOT line. When QEMU_HOOK names a function, it is
# called with the log every time the loop looks (every 0.1 s): the fault scenarios act on
# the guest's console lines there.
run_qemu() {
    local log=$1 timeout=$2 accel=$3 append=$4 t0 rc
    shift 4
    t0=$(date +%s)
    T_INIT=""
    chroot "$ROOT" /usr/bin/env -i PATH=/usr/bin:/bin qemu-system-x86_64 -accel "$accel" \
        "${QEMU_ARGS[@]}" -append "$append" "$@" </dev/null >"$log" 2>&1 &
    QEMU_PID=$!
    while kill -0 "$QEMU_PID" 2>/dev/null; do
        if [ -z "$T_INIT" ] && grep -aq '^SWIOTLB-E2E: BOOT' "$log" 2>/dev/null; then T_INIT=$(now); fi
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
        if [ -n "${QEMU_HOOK:-}" ]; then
            "$QEMU_HOOK" "$log"
            sleep 0.1
        else
            sleep 0.2
        fi
    done
    rc=0
    wait "$QEMU_PID" || rc=$?
    QEMU_PID=""
    return "$rc"
}

# lib_accel CMDLINE: the phase "accelerator". Sets USE_ACCEL (kvm only if a probe boot of this
# kernel and initramfs, with swiotlb_e2e=probe on CMDLINE, reaches /init) and TEST_ACCEL (with
# the split irqchip the vIOMMU's interrupt remapping needs under KVM). Mounts the chroot's
# /proc for the run.
lib_accel() {
    local cmdline=$1 probe_key prc why
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
                    QEMU_ABORT_RE=$KVM_FAILED_RE run_qemu "$LOGS/kvm-probe.log" "$KVM_PROBE_TIMEOUT" kvm "$cmdline swiotlb_e2e=probe" || prc=$?
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
    TEST_ACCEL=$USE_ACCEL
    [ "$USE_ACCEL" = kvm ] && TEST_ACCEL=kvm,kernel-irqchip=split
    return 0
}

# ---------------------------------------------------------------------------------------------
# start_host OUT DISK POOL AUDIT_DIR [more swiotlb-host arguments]: swiotlb-host on $SOCK,
# serving DISK with a pool of POOL, attestation required (emulated, the key of
# lib_initramfs_begin), its audit log in AUDIT_DIR/device.jsonl; stdout to OUT.stdout, stderr
# to OUT.stderr. Sets HOST_PID once the socket listens.
start_host() {
    local out=$1 disk=$2 pool=$3 audit=$4 _
    shift 4
    mkdir -p "$audit"
    # A host killed before left its socket behind: it must not pass for the new one's.
    rm -f "$SOCK"
    NO_COLOR=1 "$HOST_BIN" --socket "$SOCK" --disk "$disk" --pool-size "$pool" --log info \
        --attestation required --allow-emulated --emulated-ark "$WORK/ark/emulated-ark.pub" \
        --audit-log "$audit/device.jsonl" "$@" >"$out.stdout" 2>"$out.stderr" &
    HOST_PID=$!
    for _ in $(seq 100); do
        [ -S "$SOCK" ] && break
        kill -0 "$HOST_PID" 2>/dev/null || break
        sleep 0.1
    done
    if [ ! -S "$SOCK" ]; then
        tail -n 20 "$out.stderr" >&2
        die "swiotlb-host did not start listening on $SOCK"
    fi
}

# wait_host SECONDS: waits for swiotlb-host to end (it ends after its sessions), stopping it
# after SECONDS; sets HOST_RC (its status, or "stopped") and clears HOST_PID.
wait_host() {
    local _
    for _ in $(seq $(($1 * 10))); do
        kill -0 "$HOST_PID" 2>/dev/null || break
        sleep 0.1
    done
    HOST_RC=0
    if kill -0 "$HOST_PID" 2>/dev/null; then
        say "WARNING: swiotlb-host still running $1 s after QEMU exited: stopping it"
        stop_pid "$HOST_PID" swiotlb-host
        HOST_RC=stopped
    else
        wait "$HOST_PID" || HOST_RC=$?
    fi
    HOST_PID=""
}
