# deploy/ci/guest-disk.sh: the guest disk stage of the QEMU end-to-end run, sourced by the
# guest's /init (busybox sh) once the function is bound to vfio-pci. It does what a user of
# the disk does: starts the ublk server on the device, runs fio on /dev/ublkb0, makes an
# ext4 filesystem, writes a tree of files of mixed sizes (some larger than the pool) with a
# manifest of their SHA-256 digests, unmounts, checks the filesystem with e2fsck, mounts it
# again and verifies every digest, then stops the server with SIGTERM and checks that it
# removed the device; then the same fio jobs on the two peer disks of this boot (Linux's
# bounce path, and no bounce). Needs from /init: say, finish, $GV (the driver's command
# line), $BAR2, and the ublk_drv and ext4 modules, mke2fs, e2fsck and fio in the initramfs.
# Prints SWIOTLB-E2E lines the host side reads: UBLK-READY, UBLK-QUEUE, PAT, MTRR, FIO-*
# (fio's JSON), UBLK-FS, UBLK-STOPPED, PAT-BAR, FIO-PEER-BOUNCE, FIO-PLAIN-BOUNCE, DISK-DONE.

disk_fail() { finish FAIL "guest disk: $*"; }

# The pool's memory type as the kernel's PAT tracking records it: pat_line MARKER
pat_line() {
    mount -t debugfs debugfs /sys/kernel/debug 2>/dev/null
    p=/sys/kernel/debug/x86/pat_memtype_list
    if [ -r $p ]; then
        hex=$(printf '%016x' "$((BAR2))")
        l=$(grep -i "$hex" $p | head -n 3 | tr '\n' ';')
        say "$1 pool=$BAR2 ${l:-no entry for the pool in pat_memtype_list}"
    else
        say "$1 pool=$BAR2 no $p"
    fi
}
# The MTRRs, which turn a write-back PAT request into UC- where they say uncached.
say "MTRR $(tr '\n' ';' </proc/mtrr 2>/dev/null)"

# A dependency may not load on this CPU (crc32c-intel needs SSE4.2, which TCG's CPU model
# lacks; the generic crc32c serves instead): what counts is ublk and ext4 being there.
for m in $(cat /lib/modules/load-ublk); do
    insmod "/lib/modules/$m.ko" 2>/dev/null || echo "note: insmod $m failed"
done
[ -c /dev/ublk-control ] || disk_fail "no /dev/ublk-control after loading ublk_drv"
grep -qw ext4 /proc/filesystems || disk_fail "no ext4 in /proc/filesystems after loading its modules"

echo "+ $GV --json ublk"
$GV --json ublk >/tmp/ublk.out 2>/tmp/ublk.err &
UBLK_PID=$!
i=0
while ! grep -q '"ublk_ready"' /tmp/ublk.out 2>/dev/null && [ $i -lt 300 ]; do
    kill -0 $UBLK_PID 2>/dev/null || break
    sleep 0.1
    i=$((i + 1))
done
READY=$(grep '"ublk_ready"' /tmp/ublk.out | head -n1)
if [ -z "$READY" ]; then
    cat /tmp/ublk.err
    disk_fail "the ublk server did not become ready: $(tail -n 3 /tmp/ublk.err | tr '\n' ' ')"
fi
say "UBLK-READY $READY"
B=/dev/ublkb0
i=0
while [ ! -b $B ] && [ $i -lt 50 ]; do sleep 0.1; i=$((i + 1)); done
[ -b $B ] || disk_fail "no $B"
Q=/sys/block/ublkb0/queue
say "UBLK-QUEUE size=$(($(cat /sys/block/ublkb0/size) * 512)) logical_block_size=$(cat $Q/logical_block_size) max_sectors_kb=$(cat $Q/max_sectors_kb) discard_max_bytes=$(cat $Q/discard_max_bytes) write_zeroes_max_bytes=$(cat $Q/write_zeroes_max_bytes) write_cache=$(cat $Q/write_cache) ro=$(cat /sys/block/ublkb0/ro)"
pat_line PAT

# fio on the raw disk first (the filesystem comes after and stays on the image).
. /fio-jobs.sh
run_fio_jobs "$B" OURS

# The filesystem.
echo "+ mkfs.ext4 $B"
/usr/sbin/mke2fs -q -t ext4 -F -L swiotlb-e2e $B || disk_fail "mkfs.ext4 $B failed"
mkdir -p /mnt/disk
mount -t ext4 $B /mnt/disk || disk_fail "mounting $B failed"
mkdir -p /mnt/disk/tree/a/b /mnt/disk/tree/c
n=0
for spec in a/1:1 a/2:4 a/b/3:17 a/b/4:4096 c/5:65536 c/6:300000 7:1048576 8:3000000 9:20000000 c/10:24117248; do
    f=${spec%%:*}
    sz=${spec#*:}
    head -c "$sz" /dev/urandom >"/mnt/disk/tree/$f" || disk_fail "writing tree/$f ($sz bytes) failed"
    n=$((n + 1))
done
(cd /mnt/disk/tree && find . -type f | sort | xargs sha256sum >../manifest.sha256) || disk_fail "writing the manifest failed"
sync
umount /mnt/disk || disk_fail "unmounting failed"
echo "+ e2fsck -fn $B"
FSCK=$(/usr/sbin/e2fsck -fn $B 2>&1)
frc=$?
echo "$FSCK"
[ $frc = 0 ] || disk_fail "e2fsck -fn found problems (exit $frc): $(echo "$FSCK" | tail -n 3 | tr '\n' ' ')"
mount -t ext4 -o ro $B /mnt/disk || disk_fail "mounting $B again failed"
CHECK=$(cd /mnt/disk/tree && sha256sum -c ../manifest.sha256 2>&1)
crc=$?
good=$(echo "$CHECK" | grep -c ': OK$')
umount /mnt/disk
[ $crc = 0 ] && [ "$good" = $n ] || disk_fail "manifest check: $good of $n files intact: $(echo "$CHECK" | grep -v ': OK$' | head -n 3 | tr '\n' ' ')"
say "UBLK-FS files=$n verified=$good largest=24117248 e2fsck=clean"

# Orderly stop: SIGTERM, the device goes away, the server prints what it served.
kill -TERM $UBLK_PID
wait $UBLK_PID
urc=$?
STOPPED=$(grep '"ublk_stopped"' /tmp/ublk.out | tail -n1)
say "UBLK-STOPPED exit=$urc $STOPPED"
[ $urc = 0 ] || disk_fail "the ublk server exited with $urc: $(tail -n 3 /tmp/ublk.err | tr '\n' ' ')"
[ ! -e $B ] || disk_fail "$B still exists after the server stopped"
# The same pool mapped the BAR's own way (no /dev/mem): its memory type for comparison.
$GV --pool-map bar --json ublk >/tmp/ublk-bar.out 2>/tmp/ublk-bar.err &
BAR_PID=$!
i=0
while ! grep -q '"ublk_ready"' /tmp/ublk-bar.out 2>/dev/null && [ $i -lt 300 ]; do
    kill -0 $BAR_PID 2>/dev/null || break
    sleep 0.1
    i=$((i + 1))
done
grep -q '"ublk_ready"' /tmp/ublk-bar.out || disk_fail "the ublk server with --pool-map bar did not start: $(tail -n 3 /tmp/ublk-bar.err | tr '\n' ' ')"
say "UBLK-BAR-READY $(grep '"ublk_ready"' /tmp/ublk-bar.out | head -n1)"
pat_line PAT-BAR
kill -TERM $BAR_PID
wait $BAR_PID || disk_fail "the ublk server with --pool-map bar exited with $?"
# The peers, in this same boot, beside our disk: QEMU's virtio-blk-pci driven by the stock
# virtio_pci and virtio_blk. One bounces through Linux's software IO TLB (iommu_platform=on,
# and swiotlb=force on the command line), one does not (no ACCESS_PLATFORM: virtio hands the
# device guest-physical addresses). The IO TLB's high-water mark, reset before each disk,
# shows which one bounced.
SW=/sys/kernel/debug/swiotlb
for pair in FIO-PEER:fio-peer FIO-PLAIN:fio-plain; do
    label=${pair%%:*}
    serial=${pair#*:}
    d=""
    for b in /sys/block/vd*; do
        [ "$(cat "$b/serial" 2>/dev/null)" = "$serial" ] && d=${b##*/}
    done
    [ -n "$d" ] || disk_fail "no virtio disk with serial $serial beside ours (virtio_pci and virtio_blk loaded?)"
    F=$(cat "$(readlink -f /sys/block/$d/device)/features")
    [ -w $SW/io_tlb_used_hiwater ] && echo 0 >$SW/io_tlb_used_hiwater
    run_fio_jobs /dev/$d "$label"
    say "$label-BOUNCE disk=$d access_platform=$(echo "$F" | cut -c34) swiotlb_used_hiwater_slabs=$(cat $SW/io_tlb_used_hiwater 2>/dev/null || echo n/a)"
done
say "DISK-DONE files=$n"
