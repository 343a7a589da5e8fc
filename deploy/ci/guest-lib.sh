# deploy/ci/guest-lib.sh: what the QEMU runs' guests share, sourced by their /init (busybox
# sh): the console and the result lines (say, finish), the clock (now_us), and the steps that
# bring our function to the driver: find it (find_function), take it from the kernel's
# virtio_pci (hand_over), read its BARs (bar_info) and bind it to vfio-pci (bind_vfio).
# Result lines start with "SWIOTLB-E2E: "; the host side reads them from the console.

say() { echo "SWIOTLB-E2E: $*"; }
finish() { # finish PASS|FAIL message...
    say "$@"
    sync
    poweroff -f
    sleep 5
}

# Wall clock in microseconds (busybox date has no %N; adjtimex prints tv_sec and tv_usec).
now_us() { adjtimex | awk '/tv_sec:/ { s = $2 } /tv_usec:/ { u = $2 } END { printf "%d%06d\n", s, u }'; }

# guest_init: busybox's applets, /proc, /sys, /dev, the console, /e2e.conf; the BOOT line;
# the KVM probe (swiotlb_e2e=probe on the command line) powers off here.
guest_init() {
    /bin/busybox --install -s /bin
    export PATH=/bin
    mount -t proc proc /proc
    mount -t sysfs sysfs /sys
    mount -t devtmpfs devtmpfs /dev 2>/dev/null
    exec </dev/console >/dev/console 2>&1
    . /e2e.conf
    read -r up _ </proc/uptime
    say "BOOT init at ${up}s (kernel $(uname -r))"
    if grep -q 'swiotlb_e2e=probe' /proc/cmdline; then finish "PROBE-OK"; fi
}

# find_function: lspci from /sys; sets DEV (its sysfs directory) and SLOT to our function.
find_function() {
    DEV=""
    echo "PCI functions (slot vendor:device class):"
    for d in /sys/bus/pci/devices/*; do
        v=$(cat "$d/vendor"); dv=$(cat "$d/device"); c=$(cat "$d/class")
        drv=$(basename "$(readlink "$d/driver" 2>/dev/null)" 2>/dev/null)
        echo "  ${d##*/} ${v#0x}:${dv#0x} class ${c#0x} ${drv:+driver $drv}"
        # Ours is the vfio-user-pci function at slot 0x10 (QEMU's "addr"); the other 1af4:1042
        # functions are QEMU's own virtio-blk-pci disks, driven by the stock virtio drivers.
        if [ "$v" = 0x1af4 ] && [ "$dv" = 0x1042 ] && [ "${d##*/}" = "0000:00:10.0" ]; then DEV=$d; fi
    done
    [ -n "$DEV" ] || finish FAIL "no virtio-blk function (1af4:1042) at 0000:00:10.0 on the guest's PCI bus"
    SLOT=${DEV##*/}
}

# hand_over: the hand-over, as an operator does it: the kernel's built-in virtio_pci bound
# every virtio function at boot, ours included. driver_override names a driver that does not
# exist, so nothing binds it again; then it is unbound (virtio_pci resets it). virtio_blk, a
# module here, is loaded only after, so it never probes our function (in a guest whose
# virtio_blk is already loaded, it would: it declines VIRTIO_F_SWIOTLB and the host records
# one swiotlb_declined finding). virtio_pci keeps driving the other disks. Prints HANDOVER.
hand_over() {
    BOOT_DRV=$(basename "$(readlink "$DEV/driver" 2>/dev/null)" 2>/dev/null)
    if [ -n "$BOOT_DRV" ]; then
        echo swiotlb-none >"$DEV/driver_override" || finish FAIL "writing $DEV/driver_override failed"
        echo "$SLOT" >"$DEV/driver/unbind" || finish FAIL "unbinding $SLOT from $BOOT_DRV failed"
    fi
    NOW_DRV=$(basename "$(readlink "$DEV/driver" 2>/dev/null)" 2>/dev/null)
    say "HANDOVER $SLOT bound_at_boot=${BOOT_DRV:-none} now=${NOW_DRV:-none} driver_override=$(cat "$DEV/driver_override")"
    [ -z "$NOW_DRV" ] || finish FAIL "$SLOT is still bound to $NOW_DRV after the hand-over"
}

# bar_info: the function's BARs as the kernel assigned them; sets BAR0, BAR2 (the pool) and
# BAR2_SIZE; prints DEVICE.
bar_info() {
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
}

# bind_vfio: the function to vfio-pci (driver_override, then a probe), in the IOMMU group the
# vIOMMU gave it, with the VFIO modules (load-vfio) loaded first. Sets GROUP; prints
# VFIO-BIND; fails when the group or /dev/vfio/GROUP is missing or BAR2 moved.
bind_vfio() {
    if [ ! -e "$DEV/iommu_group" ]; then
        dmesg | grep -iE 'DMAR|IOMMU|remapping' | tail -n 5 | while read -r l; do say "DMESG $l"; done
        finish FAIL "$SLOT has no IOMMU group: no vIOMMU (QEMU -device intel-iommu, guest intel_iommu=on)"
    fi
    GROUP=$(basename "$(readlink "$DEV/iommu_group")")
    for m in $(cat /lib/modules/load-vfio); do
        insmod "/lib/modules/$m.ko" || finish FAIL "insmod $m failed"
    done
    echo vfio-pci >"$DEV/driver_override" || finish FAIL "writing $DEV/driver_override failed"
    echo "$SLOT" >/sys/bus/pci/drivers_probe || finish FAIL "probing $SLOT with driver_override=vfio-pci failed"
    i=0
    while [ ! -c "/dev/vfio/$GROUP" ] && [ $i -lt 50 ]; do sleep 0.1; i=$((i + 1)); done
    DRV=$(basename "$(readlink "$DEV/driver" 2>/dev/null)" 2>/dev/null)
    say "VFIO-BIND $SLOT driver=${DRV:-none} iommu_group=$GROUP group_devices=$(ls "/sys/kernel/iommu_groups/$GROUP/devices" | tr '\n' ',') dev_vfio=$(ls /dev/vfio | tr '\n' ',')"
    if [ "$DRV" != vfio-pci ] || [ ! -c "/dev/vfio/$GROUP" ]; then
        dmesg | grep -iE 'vfio|DMAR|IOMMU' | tail -n 5 | while read -r l; do say "DMESG $l"; done
        finish FAIL "$SLOT is not usable through VFIO (driver ${DRV:-none}, /dev/vfio/$GROUP $([ -c "/dev/vfio/$GROUP" ] && echo present || echo missing))"
    fi
    set -- $(sed -n 3p "$DEV/resource")
    VBAR2=$(printf '0x%x' "$(($1))")
    [ "$VBAR2" = "$BAR2" ] || finish FAIL "BAR2 moved when vfio-pci bound the function: $BAR2 -> $VBAR2"
}
