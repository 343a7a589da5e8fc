#!/usr/bin/env bash
# deploy/ci/qemu-e2e.sh: boots a real Linux guest under QEMU (q35 with an intel-iommu vIOMMU)
# whose vfio-user-pci device is served by swiotlb-host, runs swiotlb-guest inside that guest
# through both PCI back ends one after the other, the sysfs back end and then kernel VFIO (the
# function bound to vfio-pci, type1 IOMMU), each writing, reading back and verifying data, and
# checks both sides: the guest's result lines on the console, the host's session_end JSON
# (SWIOTLB negotiated, attestation accepted, no trapped pool access, the pool at the bus
# address the guest kernel assigned) and the audit log (swiotlb-audit verify).
# Then the peer comparison: a second boot of the same guest reads the same bytes from QEMU's own
# virtio-blk-pci (iommu_platform=on) with the guest kernel's swiotlb=force (Linux's bounce
# path); both read figures and their ratio are reported (never a pass/fail criterion).
#
# Runs as root on a Debian (bookworm or later) x86_64 machine that reaches Debian's mirrors.
# QEMU >= 10.1 (the vfio-user-pci client) comes from trixie-backports and needs glibc >= 2.38,
# so it runs inside a cached `debootstrap --variant=minbase trixie` chroot. The guest kernel
# is trixie's linux-image-amd64; the initramfs is busybox-static plus a static swiotlb-guest.
# The chroot, the builds, the initramfs skeleton, QEMU and swiotlb-host come from
# deploy/ci/qemu-lib.sh (shared with deploy/ci/qemu-faults.sh); the guest's common steps from
# deploy/ci/guest-lib.sh. See docs/qemu-e2e.md.
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
#   SWIOTLB_QEMU_PEER     0: skip the peer comparison (the second boot)     [1]
#   SWIOTLB_QEMU_PEER_SIZE  bytes read on each side, a multiple of 1M, <= 256M [128M]
#   SWIOTLB_QEMU_GUEST_DISK 0: skip the guest disk stage (ublk, ext4, fio)       [1]
#   SWIOTLB_QEMU_FIO_RUNTIME  seconds per fio job, on every disk compared     [3]
#
# Exit status: 0 all checks passed; 1 a check or a step failed; 3 everything the tree allows
# passed but swiotlb-guest has no sysfs back end (--pci) yet, so nothing ran through the device.
set -Eeuo pipefail
umask 022

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
LIB_NAME=qemu-e2e
. "$REPO/deploy/ci/qemu-lib.sh"
IO_SIZE=${SWIOTLB_QEMU_IO_SIZE:-4M}
POOL_SIZE=${SWIOTLB_QEMU_POOL_SIZE:-16M}
LOGS=${SWIOTLB_QEMU_LOGS:-$TARGET_DIR/qemu-e2e}
VERBOSE=${SWIOTLB_QEMU_VERBOSE:-0}
DISK_SIZE_MIB=64
PEER=${SWIOTLB_QEMU_PEER:-1}
PEER_SIZE=${SWIOTLB_QEMU_PEER_SIZE:-128M}
PEER_BS_MIB=1 # request size on both sides: swiotlb-guest's largest request (MAX_REQUEST_BYTES)
GUEST_DISK=${SWIOTLB_QEMU_GUEST_DISK:-1}
FIO_RUNTIME=${SWIOTLB_QEMU_FIO_RUNTIME:-3}

case $PEER in 0 | 1) ;; *) die "SWIOTLB_QEMU_PEER must be 0 or 1" ;; esac
IO_BYTES=$(bytes_of "$IO_SIZE") || die "SWIOTLB_QEMU_IO_SIZE=$IO_SIZE is not a size (4M, 512K, ...)"
# The sysfs run writes [0, IO) and the VFIO run [IO, 2 IO): both must fit the disk.
if [ "$IO_BYTES" = 0 ] || [ $((IO_BYTES % 512)) != 0 ] || [ $((2 * IO_BYTES)) -gt $((DISK_SIZE_MIB << 20)) ]; then
    die "SWIOTLB_QEMU_IO_SIZE=$IO_SIZE must be a multiple of 512, at most half the ${DISK_SIZE_MIB} MiB disk"
fi
PEER_BYTES=$(bytes_of "$PEER_SIZE") || die "SWIOTLB_QEMU_PEER_SIZE=$PEER_SIZE is not a size (32M, 65536K, ...)"
PEER_MIB=$((PEER_BYTES >> 20))
if [ "$PEER_BYTES" = 0 ] || [ $((PEER_BYTES % (PEER_BS_MIB << 20))) != 0 ] || [ "$PEER_MIB" -gt 256 ]; then
    die "SWIOTLB_QEMU_PEER_SIZE=$PEER_SIZE must be a multiple of ${PEER_BS_MIB}M, at most 256M (the guest has 512 MiB)"
fi
[ "$PEER" = 0 ] || [ "$PEER_MIB" -le "$DISK_SIZE_MIB" ] || DISK_SIZE_MIB=$PEER_MIB

lib_require_root

# ---------------------------------------------------------------------------------------------
lib_machine_tools
lib_chroot

# ---------------------------------------------------------------------------------------------
lib_build_host_tools
lib_build_static_guest

# ---------------------------------------------------------------------------------------------
phase "initramfs, disk images"
mkdir -p "$LOGS"
# Only this script's own files (SWIOTLB_QEMU_LOGS may point at a directory with others).
rm -rf "${LOGS:?}/audit" "$LOGS"/{console.log,console.txt,host.stdout,host.stderr,kvm-probe.log} \
    "$LOGS"/{guest-disk.img,guest-disk.json,fio.json} \
    "$LOGS"/{peer-console.log,peer-console.txt,peer-comparison.json}
lib_initramfs_begin e2e


# The disk image swiotlb-host serves. For the peer comparison: random (non-zero) contents,
# written and synced now (no writeback left for the guest's flush or for O_DIRECT reads to wait
# on); the peer boot's QEMU gets a copy. Both guests read the first PEER_BYTES and compare their
# SHA-256 with this one.
DISK=$WORK/disk.img
PEER_SHA=""
PEER_IMG=""
if [ "$PEER" = 1 ]; then
    PEER_IMG=$RUNDIR/peer.img
    { head -c "$((DISK_SIZE_MIB << 20))" /dev/urandom >"$DISK" && cp "$DISK" "$PEER_IMG" &&
        sync "$DISK" "$PEER_IMG"; } || die "writing the disk images failed"
    PEER_SHA=$(head -c "$PEER_BYTES" "$DISK" | sha256sum | cut -d' ' -f1)
    say "disk image: ${DISK_SIZE_MIB} MiB of random data, first $PEER_MIB MiB sha256 ${PEER_SHA:0:16}...; the peer reads a copy ($RUN_IN/peer.img)"
else
    truncate -s "${DISK_SIZE_MIB}M" "$DISK"
fi

modules_for load-test "${MODS_TEST[@]}"
modules_for load-peer "${MODS_PEER[@]}"
modules_for load-vfio "${MODS_VFIO[@]}"
modules_for load-ublk "${MODS_UBLK[@]}"
copy_tools "${DISK_TOOLS[@]}"
mkdir -p "$IR/etc"
cp "$ROOT/etc/mke2fs.conf" "$IR/etc/mke2fs.conf" || die "no /etc/mke2fs.conf in the chroot"
install -m 644 "$REPO/deploy/ci/guest-disk.sh" "$IR/guest-disk.sh"
install -m 644 "$REPO/deploy/ci/fio-jobs.sh" "$IR/fio-jobs.sh"
say "modules (test): $(tr '\n' ' ' <"$IR/lib/modules/load-test")"
say "modules (VFIO run): $(tr '\n' ' ' <"$IR/lib/modules/load-vfio")"
say "modules (peer boot; the test boot's fio disks after the hand-over): $(tr '\n' ' ' <"$IR/lib/modules/load-peer")"

cat >"$IR/e2e.conf" <<EOF
IO_SIZE=$IO_SIZE
IO_BYTES=$IO_BYTES
HAS_PCI=$HAS_PCI
INTX_DISABLE=${SWIOTLB_QEMU_GUEST_INTX_DISABLE:-0}
PEER=$PEER
PEER_BYTES=$PEER_BYTES
PEER_MIB=$PEER_MIB
PEER_BS_MIB=$PEER_BS_MIB
PEER_SHA=$PEER_SHA
DISK_BYTES=$((DISK_SIZE_MIB << 20))
GUEST_DISK=$GUEST_DISK
FIO_RUNTIME=$FIO_RUNTIME
EOF

cat >"$IR/init" <<'INIT'
#!/bin/busybox sh
# Init of the swiotlb QEMU end-to-end guest: find the vfio-user device, run swiotlb-guest
# through the sysfs back end, then bind the function to vfio-pci and run it through the VFIO
# back end, print SWIOTLB-E2E result lines on the console, power off.
. /guest-lib.sh
guest_init

if grep -q 'swiotlb_e2e=peer' /proc/cmdline; then
    # The peer: QEMU's own virtio-blk-pci (iommu_platform=on) bound by the stock virtio_pci and
    # virtio_blk, with swiotlb=force: every DMA bounces through Linux's software IO TLB. Two
    # functions serve copies of one image: serial "cache-none" (QEMU reads it with O_DIRECT)
    # and "cache-writeback" (through the host page cache, as swiotlb-host reads its image).
    peer_fail() { finish PEER-FAIL "$@"; }
    grep -q 'swiotlb=force' /proc/cmdline || peer_fail "swiotlb=force is not on the kernel command line"
    for m in $(cat /lib/modules/load-peer); do
        insmod "/lib/modules/$m.ko" || peer_fail "insmod $m failed"
    done
    i=0
    while { [ ! -b /dev/vda ] || [ ! -b /dev/vdb ]; } && [ $i -lt 100 ]; do sleep 0.1; i=$((i + 1)); done
    if [ ! -b /dev/vda ] || [ ! -b /dev/vdb ]; then peer_fail "no /dev/vda and /dev/vdb 10 s after loading virtio_blk"; fi
    dmesg | grep -E 'software IO TLB|swiotlb=force' | while read -r l; do say "PEER-DMESG $l"; done
    SW=/sys/kernel/debug/swiotlb
    mount -t debugfs debugfs /sys/kernel/debug 2>/dev/null
    N=$((PEER_MIB / PEER_BS_MIB))
    peer_read() { # peer_read MARKER SERIAL: a checked pass, then a timed pass of dd iflag=direct
        local mark=$1 serial=$2 b d="" VD PD F AP Q bytes SUM r0 s0 t0 t1 base us reqs sectors HW NS
        for b in /sys/block/vd*; do
            [ "$(cat "$b/serial" 2>/dev/null)" = "$serial" ] && d=${b##*/}
        done
        [ -n "$d" ] || peer_fail "no virtio disk with serial $serial"
        VD=$(readlink -f /sys/block/$d/device)
        PD=${VD%/*}
        # The virtio device's feature bits, one character per bit: 32 VERSION_1,
        # 33 ACCESS_PLATFORM (iommu_platform=on; without it virtio bypasses the DMA API, and
        # so swiotlb=force).
        F=$(cat "$VD/features")
        AP=$(echo "$F" | cut -c34)
        Q=/sys/block/$d/queue
        bytes=$(($(cat /sys/block/$d/size) * 512))
        say "$mark-DEVICE $d serial=$serial ${VD##*/} on ${PD##*/} $(cat "$PD/vendor"):$(cat "$PD/device") driver $(basename "$(readlink "$PD/driver")") version_1=$(echo "$F" | cut -c33) access_platform=$AP bytes=$bytes max_sectors_kb=$(cat $Q/max_sectors_kb) max_segments=$(cat $Q/max_segments) max_segment_size=$(cat $Q/max_segment_size)"
        [ "$bytes" = "$DISK_BYTES" ] || peer_fail "$d has $bytes bytes, the image $DISK_BYTES"
        # The first pass warms the path, as on our side, and checks the data.
        SUM=$(dd if=/dev/$d bs=${PEER_BS_MIB}M count=$N iflag=direct 2>/dev/null | sha256sum | cut -d' ' -f1)
        [ "$SUM" = "$PEER_SHA" ] || peer_fail "$d: read sha256 $SUM; the image's first $PEER_BYTES bytes have $PEER_SHA"
        [ -w $SW/io_tlb_used_hiwater ] && echo 0 >$SW/io_tlb_used_hiwater
        set -- $(cat /sys/block/$d/stat)
        r0=$1 s0=$3
        # What the timing itself costs (two clock reads, starting dd, opening the disk): subtracted.
        t0=$(now_us)
        dd if=/dev/$d of=/dev/null bs=${PEER_BS_MIB}M count=0 iflag=direct 2>/dev/null
        t1=$(now_us)
        base=$((t1 - t0))
        t0=$(now_us)
        dd if=/dev/$d of=/dev/null bs=${PEER_BS_MIB}M count=$N iflag=direct 2>/dev/null || peer_fail "dd if=/dev/$d iflag=direct failed"
        t1=$(now_us)
        set -- $(cat /sys/block/$d/stat)
        reqs=$(($1 - r0))
        sectors=$(($3 - s0))
        HW=$(cat $SW/io_tlb_used_hiwater 2>/dev/null || echo n/a)
        NS=$(cat $SW/io_tlb_nslabs 2>/dev/null || echo n/a)
        [ "$((sectors * 512))" = "$PEER_BYTES" ] || peer_fail "$d: the device saw $((sectors * 512)) bytes read, not $PEER_BYTES"
        us=$((t1 - t0 - base))
        [ "$us" -gt 0 ] || us=$((t1 - t0))
        [ "$reqs" -gt 0 ] || reqs=1
        say "$mark read_mib_s=$(awk -v b="$PEER_BYTES" -v us="$us" 'BEGIN { printf "%.3f", b / 1048576 / (us / 1e6) }') bytes=$PEER_BYTES seconds=$(awk -v us="$us" 'BEGIN { printf "%.6f", us / 1e6 }') timing_overhead_seconds=$(awk -v us="$base" 'BEGIN { printf "%.6f", us / 1e6 }') disk=$d serial=$serial requests=$reqs avg_request_kib=$((sectors / 2 / reqs)) access_platform=$AP swiotlb_nslabs=$NS swiotlb_used_hiwater_slabs=$HW sha256=$SUM"
    }
    peer_read PEER cache-none
    peer_read PEER-WRITEBACK cache-writeback
    finish PEER-DONE
fi

for m in $(cat /lib/modules/load-test); do
    insmod "/lib/modules/$m.ko" || say "WARNING: insmod $m failed"
done

find_function
hand_over
if [ "$GUEST_DISK" = 1 ]; then
    for m in $(cat /lib/modules/load-peer); do
        insmod "/lib/modules/$m.ko" 2>/dev/null || echo "note: insmod $m failed (built in?)"
    done
fi
bar_info

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

# check_info TAG COMMAND...: `info` through the back end COMMAND names (TAG prefixes its
# console lines: "" for sysfs, "VFIO-" for VFIO), then its JSON: ok, SWIOTLB negotiated, and
# the driver's pool at the BAR2 the kernel assigned.
check_info() {
    tag=$1
    shift
    echo "+ $* info"
    "$@" info || finish FAIL "${tag}swiotlb-guest info failed (exit $?)"
    echo "+ $* --json info"
    info=$("$@" --json info) || finish FAIL "${tag}swiotlb-guest --json info failed: $info"
    say "${tag}INFO $info"
    case $info in *'"ok":true'*) ;; *) finish FAIL "${tag}info: $info" ;; esac
    case $info in *VIRTIO_F_SWIOTLB*|*'"SWIOTLB"'*) ;; *) finish FAIL "${tag}VIRTIO_F_SWIOTLB not negotiated: $info" ;; esac
    pool=$(echo "$info" | sed -n 's/.*"pool_bus_address":\([0-9]*\).*/\1/p')
    [ -n "$pool" ] || finish FAIL "${tag}no pool_bus_address in: $info"
    say "${tag}POOL driver=$(printf '0x%x' "$pool") kernel-bar2=$BAR2"
    [ "$((pool))" = "$((BAR2))" ] || finish FAIL "${tag}the driver's pool address $(printf '0x%x' "$pool") is not the BAR2 the kernel assigned ($BAR2)"
}

G="/swiotlb-guest --pci sysfs:auto --attester emulated --emulated-key /key.pk8"
check_info "" $G
if [ "$PEER" = 1 ]; then
    # Our side of the peer comparison, before the round trip changes the image: the bytes the
    # peer boot reads, in requests of PEER_BS_MIB (the driver's largest), timed by the driver
    # around the transfer alone. Two passes, as on the peer: the first warms the path (pool
    # pages, host page cache), the second is the figure; both digests are checked.
    for pass in READ-WARMUP READ; do
        echo "+ $G --json read --offset 0 --length $PEER_BYTES --output /dev/null"
        RD=$($G --json read --offset 0 --length "$PEER_BYTES" --output /dev/null) || finish FAIL "swiotlb-guest read failed: $RD"
        say "$pass $RD"
        case $RD in *'"ok":true'*) ;; *) finish FAIL "read: $RD" ;; esac
        case $RD in *"\"sha256\":\"$PEER_SHA\""*) ;; *) finish FAIL "read: the sha256 is not the image's ($PEER_SHA): $RD" ;; esac
    done
fi
echo "+ $G roundtrip --size $IO_SIZE"
RT=$($G --json roundtrip --size "$IO_SIZE") || finish FAIL "swiotlb-guest roundtrip failed: $RT"
say "ROUNDTRIP $RT"
case $RT in *'"ok":true'*) ;; *) finish FAIL "roundtrip: $RT" ;; esac
W=$(echo "$RT" | sed -n 's/.*"write_mib_s":\([0-9.e+-]*\).*/\1/p')
R=$(echo "$RT" | sed -n 's/.*"read_mib_s":\([0-9.e+-]*\).*/\1/p')
SUM=$(echo "$RT" | sed -n 's/.*"sha256":"\([0-9a-f]*\)".*/\1/p')
[ -n "$SUM" ] || finish FAIL "no sha256 in the roundtrip: $RT"

# The same function through kernel VFIO: bound to vfio-pci (driver_override, then a probe),
# in the IOMMU group the vIOMMU gave it, opened through a type1 container. The sysfs run's
# driver reset the device on its way out; this run starts from reset too.
say "SYSFS-DONE bytes=$IO_SIZE write_mib_s=$W read_mib_s=$R sha256=$SUM"
bind_vfio
GV="/swiotlb-guest --pci vfio:auto --attester emulated --emulated-key /key.pk8"
check_info VFIO- $GV
# What the sysfs run wrote, read back through VFIO: the two back ends agree on the data.
echo "+ $GV --json read --offset 0 --length $IO_SIZE --output /dev/null"
VRD=$($GV --json read --offset 0 --length "$IO_SIZE" --output /dev/null) || finish FAIL "swiotlb-guest (VFIO) read failed: $VRD"
say "VFIO-READBACK $VRD"
case $VRD in *"\"sha256\":\"$SUM\""*) ;; *) finish FAIL "VFIO read of the sysfs run's data: sha256 is not the one written ($SUM): $VRD" ;; esac
# Its own round trip, on the next IO_SIZE bytes (different data: it depends on the offset).
echo "+ $GV roundtrip --offset $IO_BYTES --size $IO_SIZE"
VRT=$($GV --json roundtrip --offset "$IO_BYTES" --size "$IO_SIZE") || finish FAIL "swiotlb-guest (VFIO) roundtrip failed: $VRT"
say "VFIO-ROUNDTRIP $VRT"
case $VRT in *'"ok":true'*) ;; *) finish FAIL "VFIO roundtrip: $VRT" ;; esac
VW=$(echo "$VRT" | sed -n 's/.*"write_mib_s":\([0-9.e+-]*\).*/\1/p')
VR=$(echo "$VRT" | sed -n 's/.*"read_mib_s":\([0-9.e+-]*\).*/\1/p')
if [ "$GUEST_DISK" = 1 ]; then
    export PATH=/usr/sbin:/usr/bin:/bin  # e2fsprogs and fio before busybox's own mke2fs
    . /guest-disk.sh
fi
read -r up _ </proc/uptime
finish PASS "bytes=$IO_SIZE sysfs write_mib_s=$W read_mib_s=$R; vfio write_mib_s=$VW read_mib_s=$VR; uptime=${up}s"
INIT
chmod 755 "$IR/init"
lib_initramfs_pack
say "initramfs: $(du -h "$RUNDIR/initrd.gz" | cut -f1) (swiotlb-guest $(du -h "$IR/swiotlb-guest" | cut -f1), busybox $(du -h "$IR/bin/busybox" | cut -f1), $(wc -l <"$IR/lib/modules/load-test") + $(wc -l <"$IR/lib/modules/load-vfio") + $(wc -l <"$IR/lib/modules/load-peer") modules)"


# ---------------------------------------------------------------------------------------------
# virtio_pci is built into Debian's kernel and binds every virtio function at boot, ours
# too: /init hands ours over (driver_override, unbind) before anything else uses it, as an
# operator does; virtio_pci keeps the other disks. intel_iommu=on: the vIOMMU (below) gives the function an IOMMU group, which VFIO needs.
# no_timer_check: with interrupt remapping the kernel panics when its early check sees no timer
# interrupt through the IO-APIC ("timer doesn't work through Interrupt-remapped IO-APIC"),
# which TCG on a loaded machine sometimes misses (seen once in the fault scenarios' boots).
CMDLINE="console=ttyS0 panic=-1 loglevel=5 intel_iommu=on no_timer_check"
# The fio comparison runs in this boot: Linux's bounce path needs swiotlb=force, and a DMA
# address space that is not translated (iommu=pt: identity; VFIO still gets its group).
[ "$GUEST_DISK" = 1 ] && CMDLINE="$CMDLINE iommu=pt swiotlb=force"
lib_accel "$CMDLINE"

# ---------------------------------------------------------------------------------------------
phase "start swiotlb-host"
AUDIT_DIR=$WORK/audit
# One vfio-user client: QEMU, for the whole life of the VM (every swiotlb-guest run inside the
# guest is a device reset within that one session).
start_host "$LOGS/host" "$DISK" "$POOL_SIZE" "$AUDIT_DIR" --sessions 1
say "listening on $SOCK (pid $HOST_PID; QEMU sees $RUN_IN/swiotlb.sock), pool $POOL_SIZE, disk ${DISK_SIZE_MIB} MiB, attestation required (emulated)"

# ---------------------------------------------------------------------------------------------
# The peers' virtio-blk-pci. queue-size=1024: seg_max is queue-size - 2, and a 1 MiB O_DIRECT
# buffer may be 256 scattered pages; at the default 256 (seg_max 254) the block layer
# sometimes splits it in two.
PEER_DEV="virtio-blk-pci,iommu_platform=on,disable-legacy=on,queue-size=1024"
FIO_DISKS=()
if [ "$GUEST_DISK" = 1 ]; then
    # Writable copies for the fio comparison, cached on the host as swiotlb-host's image is
    # (through the page cache): one disk that bounces (iommu_platform=on with swiotlb=force),
    # one that does not (no ACCESS_PLATFORM). In the test boot, beside our function.
    for c in peer plain; do
        cp --sparse=always "$DISK" "$RUNDIR/fio-$c.img" || die "copying the image for the fio $c disk failed"
    done
    FIO_DISKS+=(-drive "file=$RUN_IN/fio-peer.img,if=none,id=fio-peer,format=raw,cache=writeback"
        -device "$PEER_DEV,drive=fio-peer,serial=fio-peer"
        -drive "file=$RUN_IN/fio-plain.img,if=none,id=fio-plain,format=raw,cache=writeback"
        -device "virtio-blk-pci,disable-legacy=on,queue-size=1024,drive=fio-plain,serial=fio-plain")
fi
phase "boot + test ($USE_ACCEL)"
DEVJSON=$(jq -cn --arg p "$RUN_IN/swiotlb.sock" '{driver: "vfio-user-pci", socket: {path: $p, type: "unix"}, addr: "0x10"}')
say "qemu-system-x86_64 -accel $TEST_ACCEL ${QEMU_ARGS[*]} -append '$CMDLINE' ${VIOMMU[*]} -device '$DEVJSON' ${FIO_DISKS[*]}"
T_BOOT=$(now)
qrc=0
run_qemu "$LOGS/console.log" "$BOOT_TIMEOUT" "$TEST_ACCEL" "$CMDLINE" "${VIOMMU[@]}" -device "$DEVJSON" "${FIO_DISKS[@]}" || qrc=$?
T_QEMU_END=$(now)
T_INIT_TEST=${T_INIT:-}
if [ "$qrc" = 124 ]; then
    tail -n 40 "$LOGS/console.log" >&2
    die "the guest did not power off within ${BOOT_TIMEOUT}s (console: $LOGS/console.log)"
fi
# The host ends after its one session (QEMU's disconnect).
wait_host 10
hrc=$HOST_RC
tr -d '\r' <"$LOGS/console.log" >"$LOGS/console.txt"
if [ "$VERBOSE" = 1 ]; then
    step "guest console"
    cat "$LOGS/console.txt"
fi

# ---------------------------------------------------------------------------------------------
# The peer: the same kernel and initramfs (/init in its peer mode), QEMU's own virtio-blk-pci
# bound by the stock drivers, the guest kernel bouncing every DMA through its software IO TLB.
# ACCESS_PLATFORM (iommu_platform=on) makes virtio use the DMA API; no vIOMMU is needed (the
# DMA address space is plain memory), and swiotlb=force makes the DMA API bounce. virtio_pci
# binds every virtio function, as in the test boot.
PEER_CMDLINE="console=ttyS0 panic=-1 loglevel=5 swiotlb=force swiotlb_e2e=peer"
# Two functions on one image, both read-only (so QEMU's image locks allow it): cache=none (QEMU
# reads with O_DIRECT) and cache=writeback (through the host page cache, as swiotlb-host reads
# its image).
PEER_QEMU_ARGS=()
for c in none writeback; do
    PEER_QEMU_ARGS+=(-drive "file=$RUN_IN/peer.img,if=none,id=peer-$c,format=raw,cache=$c,readonly=on"
        -device "$PEER_DEV,drive=peer-$c,serial=cache-$c")
done
peer_rc=""
if [ "$PEER" = 1 ]; then
    phase "peer boot: virtio-blk-pci + swiotlb=force ($USE_ACCEL)"
    say "qemu-system-x86_64 -accel $USE_ACCEL ${QEMU_ARGS[*]} -append '$PEER_CMDLINE' ${PEER_QEMU_ARGS[*]}"
    T_PEER=$(now)
    peer_rc=0
    run_qemu "$LOGS/peer-console.log" "$BOOT_TIMEOUT" "$USE_ACCEL" "$PEER_CMDLINE" "${PEER_QEMU_ARGS[@]}" || peer_rc=$?
    say "QEMU ran $(secs "$T_PEER" "$(now)") s, exit status $peer_rc"
    tr -d '\r' <"$LOGS/peer-console.log" >"$LOGS/peer-console.txt"
    rm -f "$PEER_IMG"
    if [ "$VERBOSE" = 1 ]; then
        step "peer guest console"
        cat "$LOGS/peer-console.txt"
    fi
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
# Each back end's own result lines (the guest stops at the first failure, so a missing line
# names the step that failed).
line_of() { sed -n "s/^SWIOTLB-E2E: $1 //p" "$LOGS/console.txt" | tail -n1; }
json_ok() { [ "$(jq -r '.ok' <<<"$1" 2>/dev/null)" = true ]; }
pool_line() { # pool_line MARKER BACKEND: the driver's pool address against the kernel's BAR2
    local l drv
    l=$(line_of "$1")
    drv=$(sed -n 's/^driver=\(0x[0-9a-f]*\) .*/\1/p' <<<"$l")
    if [ -n "$drv" ] && [ -n "$GUEST_BAR2" ] && [ "$((drv))" = "$((GUEST_BAR2))" ]; then
        ok "$2: the driver's pool bus address $drv = the kernel's BAR2"
    else
        fail "$2: the driver's pool bus address (${l:-no $1 line}) is not the kernel's BAR2 ${GUEST_BAR2:-?}"
    fi
}
SYSFS_RT=$(line_of ROUNDTRIP)
VFIO_RT=$(line_of VFIO-ROUNDTRIP)
VFIO_RB=$(line_of VFIO-READBACK)
if [ "$BACKEND_MISSING" = 0 ]; then
    pool_line POOL "sysfs back end"
    if json_ok "$SYSFS_RT"; then
        ok "sysfs back end: wrote, read back and verified $(jq -r .bytes <<<"$SYSFS_RT") B (sha256 $(jq -r '.sha256[0:16]' <<<"$SYSFS_RT")...)"
    else
        fail "sysfs back end: no successful roundtrip (${SYSFS_RT:-no ROUNDTRIP line})"
    fi
    say "   $(line_of VFIO-BIND)"
    pool_line VFIO-POOL "VFIO back end"
    if json_ok "$VFIO_RB" && [ "$(jq -r .sha256 <<<"$VFIO_RB")" = "$(jq -r .sha256 <<<"$SYSFS_RT" 2>/dev/null)" ]; then
        ok "VFIO back end: read the sysfs run's $(jq -r .read <<<"$VFIO_RB") B back, same sha256"
    else
        fail "VFIO back end: reading back the sysfs run's data (${VFIO_RB:-no VFIO-READBACK line})"
    fi
    if json_ok "$VFIO_RT"; then
        ok "VFIO back end: wrote, read back and verified $(jq -r .bytes <<<"$VFIO_RT") B (sha256 $(jq -r '.sha256[0:16]' <<<"$VFIO_RT")...)"
    else
        fail "VFIO back end: no successful roundtrip (${VFIO_RT:-no VFIO-ROUNDTRIP line})"
    fi
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

HANDOVER=$(line_of HANDOVER)
case $HANDOVER in
    *bound_at_boot=virtio-pci*now=none*) ok "hand-over: the kernel's virtio_pci bound our function at boot; driver_override and unbind gave it to swiotlb-guest (${HANDOVER})" ;;
    *now=none*) ok "hand-over: our function was free at boot (${HANDOVER})" ;;
    *) fail "hand-over: ${HANDOVER:-no HANDOVER line}" ;;
esac
if [ "$GUEST_DISK" = 1 ]; then
    say "-- guest disk (ublk server on the device; image kept at $LOGS/guest-disk.img)"
    for m in UBLK-READY UBLK-QUEUE PAT MTRR UBLK-FS UBLK-STOPPED PAT-BAR; do
        l=$(line_of "$m")
        if [ -n "$l" ]; then say "   $m ${l:0:400}"; else fail "guest disk: no $m line"; fi
    done
    if [ -n "$(line_of DISK-DONE)" ]; then
        ok "guest disk: /dev/ublkb0 served through the pool; ext4 made, $(line_of UBLK-FS | sed -n 's/.*files=\([0-9]*\).*/\1/p') files written, e2fsck -fn clean, every digest verified after a remount; the server stopped on SIGTERM and removed the device"
    fi
    # The image as the host left it, checked with e2fsprogs on this machine: the filesystem
    # is clean and every file of the manifest has its digest.
    cp --sparse=always "$DISK" "$LOGS/guest-disk.img" || fail "copying the guest disk image failed"
    if FS=$(e2fsck -fn "$LOGS/guest-disk.img" 2>&1); then
        ok "host-side e2fsck -fn on the image: clean ($(echo "$FS" | tail -n1))"
    else
        fail "host-side e2fsck -fn on the image: $(echo "$FS" | tail -n 3 | tr '\n' ' ')"
    fi
    debugfs -R "cat /manifest.sha256" "$LOGS/guest-disk.img" 2>/dev/null >"$WORK/manifest" || true
    good=0
    total=$(wc -l <"$WORK/manifest")
    while read -r sum f; do
        got=$(debugfs -R "cat /tree/${f#./}" "$LOGS/guest-disk.img" 2>/dev/null | sha256sum | cut -d' ' -f1)
        [ "$got" = "$sum" ] && good=$((good + 1))
    done <"$WORK/manifest"
    if [ "$total" -gt 0 ] && [ "$good" = "$total" ]; then
        ok "host-side debugfs: all $total files of the manifest read back from the image with their digests"
    else
        fail "host-side debugfs: $good of $total files of the manifest intact"
    fi
    READY_JSON=$(line_of UBLK-READY)
    {
        jq -n --argjson ready "${READY_JSON:-null}" --arg queue "$(line_of UBLK-QUEUE)" \
            --arg pat "$(line_of PAT)" --arg pat_bar "$(line_of PAT-BAR)" --arg fs "$(line_of UBLK-FS)" \
            --arg stopped "$(line_of UBLK-STOPPED)" --arg fsck "$(echo "${FS:-}" | tail -n1)" \
            --argjson files "$total" --argjson intact "$good" \
            --arg dumpe2fs "$(dumpe2fs -h "$LOGS/guest-disk.img" 2>/dev/null | grep -E '^(Filesystem volume name|Block count|Block size|Inode count|Filesystem features|Filesystem state):' | tr -s ' ' | tr '\n' ';')" '
            {device: $ready, queue: $queue, pool_memory_type: $pat, pool_memory_type_bar_mapping: $pat_bar, guest_fs: $fs,
             server_stop: $stopped, host_e2fsck: $fsck, host_manifest_files: $files,
             host_manifest_intact: $intact, filesystem: $dumpe2fs}'
    } >"$LOGS/guest-disk.json" 2>/dev/null || say "   WARNING: could not write $LOGS/guest-disk.json"
fi

PEER_FAILED=0
declare -A P=() # P[MARKER.key]: the key=value pairs of the peer's MARKER line
PEER_MARKERS=(PEER PEER-WRITEBACK)
if [ "$PEER" = 1 ]; then
    peer_fail() {
        PEER_FAILED=1
        fail "peer: $*"
    }
    say "-- peer boot (console: $LOGS/peer-console.txt)"
    grep '^SWIOTLB-E2E:' "$LOGS/peer-console.txt" | sed 's/^/   /' || true
    case $peer_rc in
        0) ;;
        124) peer_fail "the guest did not power off within ${BOOT_TIMEOUT}s" ;;
        *) peer_fail "QEMU exited with status $peer_rc" ;;
    esac
    PEER_ERR=$(sed -n 's/^SWIOTLB-E2E: PEER-FAIL //p' "$LOGS/peer-console.txt" | tail -n1)
    [ -z "$PEER_ERR" ] || peer_fail "$PEER_ERR"
    # Evidence that the peer measured Linux's bounce path, not a direct DMA.
    TLB=$(sed -n 's/^SWIOTLB-E2E: PEER-DMESG .*\(software IO TLB: .*\)/\1/p' "$LOGS/peer-console.txt" | head -n1)
    if [ -n "$TLB" ]; then
        ok "guest kernel with swiotlb=force set up its software IO TLB (dmesg: \"$TLB\")"
    elif [ -z "$PEER_ERR" ]; then
        peer_fail "no \"software IO TLB\" line in the guest's dmesg: swiotlb is not in force"
    fi
    for m in "${PEER_MARKERS[@]}"; do
        line=$(sed -n "s/^SWIOTLB-E2E: $m \\(read_mib_s=.*\\)/\\1/p" "$LOGS/peer-console.txt" | tail -n1)
        for kv in $line; do P[$m.${kv%%=*}]=${kv#*=}; done
        if [ -z "${P[$m.read_mib_s]:-}" ]; then
            [ -n "$PEER_ERR" ] || peer_fail "the guest printed no $m figure"
            continue
        fi
        ok "$m: ${P[$m.disk]} (serial ${P[$m.serial]}) read $((${P[$m.bytes]} >> 20)) MiB, sha256 = the image's (${P[$m.sha256]:0:16}...); ${P[$m.requests]} requests, ${P[$m.avg_request_kib]} KiB each on average"
        if [ "${P[$m.access_platform]}" = 1 ]; then
            ok "$m: VIRTIO_F_ACCESS_PLATFORM negotiated (iommu_platform=on): virtio_blk maps through the DMA API"
        else
            peer_fail "$m: VIRTIO_F_ACCESS_PLATFORM not negotiated: virtio bypasses the DMA API, and so swiotlb"
        fi
        hw=${P[$m.swiotlb_used_hiwater_slabs]}
        case $hw in
            n/a) say "   n/a   $m: swiotlb debugfs counters (no /sys/kernel/debug/swiotlb in this kernel)" ;;
            0) peer_fail "$m: the software IO TLB was not used during the read (high-water mark 0)" ;;
            *) ok "$m: software IO TLB in use during the read: high-water mark $hw of ${P[$m.swiotlb_nslabs]} slabs ($((hw * 2)) KiB bounced at once)" ;;
        esac
    done
fi

fio_json() { # fio_json CONSOLE LABEL: {job: fio's JSON} from the FIO-BEGIN/END blocks
    awk -v l="$2" '$1 == "SWIOTLB-E2E:" && $2 == "FIO-BEGIN" && $3 == l { name = $4; getline; print name "\t" $0 }' "$1" |
        jq -Rn '[inputs | split("\t") | {key: .[0], value: (.[1] | fromjson? // null)}] | from_entries'
}
if [ "$GUEST_DISK" = 1 ]; then
    say "-- fio (same jobs on each disk, $FIO_RUNTIME s each, O_DIRECT, io_uring; figures, never checks)"
    OURS_FIO=$(fio_json "$LOGS/console.txt" OURS 2>/dev/null || echo '{}')
    PEER_FIO=$(fio_json "$LOGS/console.txt" FIO-PEER 2>/dev/null || echo '{}')
    PLAIN_FIO=$(fio_json "$LOGS/console.txt" FIO-PLAIN 2>/dev/null || echo '{}')
    [ "$(jq 'length' <<<"$OURS_FIO")" = 5 ] || fail "fio: $(jq 'length' <<<"$OURS_FIO") of 5 jobs reported on our disk"
    [ "$(jq 'length' <<<"$PEER_FIO")" = 5 ] || fail "fio: $(jq 'length' <<<"$PEER_FIO") of 5 jobs reported on the swiotlb=force peer"
    [ "$(jq 'length' <<<"$PLAIN_FIO")" = 5 ] || fail "fio: $(jq 'length' <<<"$PLAIN_FIO") of 5 jobs reported on the no-bounce disk"
    for m in FIO-PEER FIO-PLAIN; do
        l=$(sed -n "s/^SWIOTLB-E2E: $m-BOUNCE //p" "$LOGS/console.txt" | tail -n1)
        hw=$(sed -n 's/.*swiotlb_used_hiwater_slabs=\([0-9n/a]*\).*/\1/p' <<<"$l")
        case $m:$hw in
            *:n/a | *:) say "   n/a   $m: no swiotlb high-water mark ($l)" ;;
            FIO-PEER:0) fail "fio: the swiotlb=force peer did not bounce (high-water mark 0: $l)" ;;
            FIO-PEER:*) ok "fio: the peer bounced through Linux's IO TLB (high-water mark $hw slabs)" ;;
            FIO-PLAIN:0) ok "fio: the no-bounce disk did not touch the IO TLB (high-water mark 0)" ;;
            FIO-PLAIN:*) fail "fio: the no-bounce disk went through the IO TLB (high-water mark $hw: $l)" ;;
        esac
    done
    FIO_TABLE=$(jq -n --argjson ours "$OURS_FIO" --argjson peer "$PEER_FIO" --argjson plain "$PLAIN_FIO" '
        def fig(j): if j == null then null else
            (if (j.jobs[0]["job options"].rw // "") | test("write") then j.jobs[0].write else j.jobs[0].read end) as $s
            | {iops: $s.iops, bw_kib_s: $s.bw, clat_p50_us: (($s.clat_ns.percentile["50.000000"] // 0) / 1000),
               clat_p99_us: (($s.clat_ns.percentile["99.000000"] // 0) / 1000)} end;
        def ratio(a; b): if a == null or b == null or b.iops == 0 then null else ((a.iops / b.iops) * 100 | round / 100) end;
        [($ours | keys[]) as $k | {job: $k, ours: fig($ours[$k]), peer: fig($peer[$k]), no_bounce: fig($plain[$k])}
         | . + {ours_over_peer: ratio(.ours; .peer), ours_over_no_bounce: ratio(.ours; .no_bounce)}]')
    jq -r '.[] | "   \(.job | .[0:18] | . + " " * (18 - length)) ours \(.ours.iops // "-" | tostring | .[0:9]) IOPS  peer \(.peer.iops // "-" | tostring | .[0:9])  no-bounce \(.no_bounce.iops // "-" | tostring | .[0:9])  ours/peer \(.ours_over_peer // "-")  ours/no-bounce \(.ours_over_no_bounce // "-")"' <<<"$FIO_TABLE"
    jq -n --argjson t "$FIO_TABLE" --arg accel "$USE_ACCEL" --arg qemu "$QEMU_VERSION" --arg kernel "$KPKG_VERSION" \
        --argjson runtime "$FIO_RUNTIME" --arg when "$(date -u +%Y-%m-%dT%H:%M:%SZ)" '
        {when: $when, accelerator: $accel, qemu: $qemu, guest_kernel: $kernel, runtime_s_per_job: $runtime,
         disks: {ours: "/dev/ublkb0: swiotlb-guest ublk (kernel VFIO back end) on swiotlb-host over vfio-user, image through the host page cache",
                 peer: "virtio-blk-pci iommu_platform=on, guest swiotlb=force (Linux bounce path), cache=writeback",
                 no_bounce: "virtio-blk-pci without ACCESS_PLATFORM (no bounce), cache=writeback"},
         note: "TCG inflates every figure; the ratios are figures, not checks. All three disks in one boot (iommu=pt swiotlb=force), one after the other.",
         jobs: $t}' >"$LOGS/fio.json" || say "   WARNING: could not write $LOGS/fio.json"
    say "   recorded in $LOGS/fio.json"
fi

say "-- figures"
say "   accelerator       $USE_ACCEL ($QEMU_VERSION)"
say "   guest kernel      $KPKG_VERSION"
INIT_WALL="?"
[ -n "$T_INIT_TEST" ] && INIT_WALL=$(secs "$T_BOOT" "$T_INIT_TEST")
say "   boot              QEMU start to /init ${INIT_WALL} s wall clock (guest uptime at /init ${BOOT_AT:-?} s); QEMU ran $(secs "$T_BOOT" "$T_QEMU_END") s in all"
io_figure() { # io_figure LABEL JSON
    if [ -n "$2" ]; then
        say "   $1$(jq -r '"\(.bytes) B: write \(.write_mib_s | . * 10 | round / 10) MiB/s (flush included), read \(.read_mib_s | . * 10 | round / 10) MiB/s, sha256 \(.sha256[0:16])..."' <<<"$2" 2>/dev/null || echo "$2")"
    else
        say "   $1none (no roundtrip ran)"
    fi
}
io_figure "guest I/O, sysfs  " "$SYSFS_RT"
io_figure "guest I/O, VFIO   " "$VFIO_RT"
COMPARISON=""
if [ "$PEER" = 1 ]; then
    RD=$(sed -n 's/^SWIOTLB-E2E: READ //p' "$LOGS/console.txt" | tail -n1)
    OURS_MIBS=$(jq -r '.read_mib_s // empty' <<<"$RD" 2>/dev/null || true)
    OURS_SECS=$(jq -r '.seconds // empty' <<<"$RD" 2>/dev/null || true)
    PEER_MIBS=${P[PEER.read_mib_s]:-}
    PEER_WB_MIBS=${P[PEER-WRITEBACK.read_mib_s]:-}
    r1() { awk -v x="$1" 'BEGIN { printf "%.1f", x }'; }
    r3() { awk -v x="$1" 'BEGIN { printf "%.3f", x }'; }
    ratio() { [ -n "$1" ] && [ -n "$2" ] && awk -v a="$1" -v b="$2" 'BEGIN { if (b > 0) printf "%.2f", a / b }'; }
    RATIO=$(ratio "$OURS_MIBS" "$PEER_MIBS" || true)
    RATIO_WB=$(ratio "$OURS_MIBS" "$PEER_WB_MIBS" || true)
    say "   peer comparison   $PEER_MIB MiB read sequentially in $PEER_BS_MIB MiB requests, same image contents, second pass ($USE_ACCEL):"
    if [ -n "$OURS_MIBS" ]; then
        say "     ours                    $(r1 "$OURS_MIBS") MiB/s ($(r3 "$OURS_SECS") s): swiotlb-guest read; pool BAR of swiotlb-host over vfio-user"
    else
        say "     ours                    none (swiotlb-guest read did not run)"
    fi
    if [ -n "$PEER_MIBS" ]; then
        say "     peer, cache=none        $(r1 "$PEER_MIBS") MiB/s ($(r3 "${P[PEER.seconds]}") s): dd iflag=direct; virtio-blk-pci iommu_platform=on, swiotlb=force  ratio ours/peer ${RATIO:-?}"
    else
        say "     peer, cache=none        none (the peer boot failed)"
    fi
    if [ -n "$PEER_WB_MIBS" ]; then
        say "     peer, cache=writeback   $(r1 "$PEER_WB_MIBS") MiB/s ($(r3 "${P[PEER-WRITEBACK.seconds]}") s): the same through the host page cache, as swiotlb-host reads  ratio ours/peer ${RATIO_WB:-?}"
    fi
    say "     (TCG inflates both sides; the ratio is a figure, not a check)"
    if [ -n "$RATIO" ]; then
        COMPARISON="read $PEER_MIB MiB in $PEER_BS_MIB MiB requests ($USE_ACCEL): ours $(r1 "$OURS_MIBS") MiB/s; peer virtio-blk-pci + swiotlb=force $(r1 "$PEER_MIBS") MiB/s (cache=none), $(r1 "${PEER_WB_MIBS:-0}") MiB/s (cache=writeback); ratio ours/peer $RATIO (cache=none), ${RATIO_WB:-?} (cache=writeback)"
    fi
    peer_json() { # peer_json MARKER CACHE
        local m=$1
        jq -n --arg cache "$2" --arg mibs "${P[$m.read_mib_s]:-}" --arg secs "${P[$m.seconds]:-}" \
            --arg disk "${P[$m.disk]:-}" --arg reqs "${P[$m.requests]:-}" --arg avg "${P[$m.avg_request_kib]:-}" \
            --arg ap "${P[$m.access_platform]:-}" --arg hw "${P[$m.swiotlb_used_hiwater_slabs]:-}" \
            --arg nslabs "${P[$m.swiotlb_nslabs]:-}" --arg ovh "${P[$m.timing_overhead_seconds]:-}" '
            def num: if . == "" or . == "n/a" then null else tonumber end;
            {drive_cache: $cache, read_mib_s: ($mibs | num), seconds: ($secs | num),
             timing_overhead_seconds_subtracted: ($ovh | num), disk: $disk,
             requests: ($reqs | num), avg_request_kib: ($avg | num),
             access_platform: ($ap == "1"), swiotlb_nslabs: ($nslabs | num),
             swiotlb_used_hiwater_slabs: ($hw | num)}'
    }
    {
        jq -n --arg accel "$USE_ACCEL" --arg qemu "$QEMU_VERSION" --arg kernel "$KPKG_VERSION" \
            --argjson bytes "$PEER_BYTES" --argjson request_bytes "$((PEER_BS_MIB << 20))" \
            --arg ours "${OURS_MIBS:-}" --arg ours_s "${OURS_SECS:-}" \
            --arg ratio "${RATIO:-}" --arg ratio_wb "${RATIO_WB:-}" \
            --arg cmdline "$PEER_CMDLINE" --arg qargs "${PEER_QEMU_ARGS[*]}" --arg tlb "${TLB:-}" \
            --argjson peer "$(peer_json PEER none)" --argjson peer_wb "$(peer_json PEER-WRITEBACK writeback)" \
            --arg when "$(date -u +%Y-%m-%dT%H:%M:%SZ)" '
            def num: if . == "" then null else tonumber end;
            {when: $when, accelerator: $accel, qemu: $qemu, guest_kernel: $kernel,
             bytes: $bytes, request_bytes: $request_bytes,
             ours: {read_mib_s: ($ours | num), seconds: ($ours_s | num),
                    how: "swiotlb-guest --pci sysfs:auto --json read --offset 0 --output /dev/null (second pass), vfio-user-pci served by swiotlb-host"},
             peer: ($peer + {how: "dd of=/dev/null bs=1M iflag=direct (second pass)"}),
             peer_writeback: ($peer_wb + {how: "dd of=/dev/null bs=1M iflag=direct (second pass)"}),
             peer_boot: {kernel_cmdline: $cmdline, qemu_args: $qargs, dmesg: $tlb},
             ratio_ours_over_peer: ($ratio | num),
             ratio_ours_over_peer_writeback: ($ratio_wb | num)}'
    } >"$LOGS/peer-comparison.json" 2>/dev/null || say "   WARNING: could not write $LOGS/peer-comparison.json"
    say "     recorded in             $LOGS/peer-comparison.json"
fi

if [ ${#FAILS[@]} -gt 0 ] || { [ "$BACKEND_MISSING" = 0 ] && [ "${RESULT#SWIOTLB-E2E: PASS}" = "$RESULT" ]; }; then
    [ "$VERBOSE" = 1 ] || { step "guest console (last 60 lines)"; tail -n 60 "$LOGS/console.txt"; }
    if [ "$PEER_FAILED" = 1 ] && [ "$VERBOSE" != 1 ]; then
        step "peer guest console (last 40 lines)"
        tail -n 40 "$LOGS/peer-console.txt"
    fi
    step "swiotlb-host stderr (last 30 lines)"
    tail -n 30 "$LOGS/host.stderr" | sed 's/\x1b\[[0-9;]*m//g'
    die "${#FAILS[@]} check(s) failed: $(printf '%s; ' "${FAILS[@]}")"
fi
if [ "$BACKEND_MISSING" = 1 ]; then
    printf '\nqemu-e2e: INCOMPLETE: the sysfs back end (swiotlb-guest --pci sysfs:auto) is missing; everything else passed (exit 3)\n' >&2
    exit 3
fi
printf '\nqemu-e2e: PASS: swiotlb-guest in a QEMU guest (%s, vIOMMU) drove swiotlb-host over vfio-user through the sysfs and the kernel VFIO back ends, pool mapped as RAM, attested, audit log verified\n' "$USE_ACCEL"
[ -z "$COMPARISON" ] || printf 'qemu-e2e: peer comparison: %s\n' "$COMPARISON"
