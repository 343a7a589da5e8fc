#!/usr/bin/env bash
# deploy/operator/qemu-tdx.sh: an example launch of an Intel TDX guest (a TD) under QEMU whose
# SWIOTLB virtio-blk function is served by swiotlb-host (the systemd unit swiotlb-host@<vm>)
# over vfio-user.
#
#   OPERATOR MATERIAL: NOT RUN BY CI, AND NEVER RUN ON TDX HARDWARE BY THE PROJECT.
#   No TDX machine was available when it was written. Read it, adapt the variables below,
#   and try it on a host you control. docs/deploy.md says what was and was not tested, and
#   lists the host and guest steps this script assumes.
#
# Written against QEMU 10.1: the first release with both the vfio-user-pci client and the
# tdx-guest object (with quote-generation-socket). A host kernel with KVM TDX (upstream since
# 6.16), a TDX module initialised by the BIOS, a Quote Generation Service (QGS) on the host,
# and a guest kernel with configfs-tsm and tdx-guest (6.7 or later) are assumed.
# Checked here: `bash -n`, shellcheck, a dry run (DRY_RUN=1), and the option and property
# names against Debian's QEMU 11.1.3 (option parsing only, under TCG, where QEMU stops at
# "cannot set up private guest memory for tdx-guest: KVM required"). Nothing was booted.
#
# References (read these; nothing here is copied from them):
#   https://www.qemu.org/docs/master/system/i386/tdx.html     (tdx-guest, TDVF via -bios)
#   https://www.qemu.org/docs/master/system/confidential-guest-support.html
#   https://www.qemu.org/docs/master/system/guest-memfd.html   (private memory: guest_memfd)
#   https://www.qemu.org/docs/master/system/devices/vfio-user.html  (vfio-user-pci)
#   https://www.qemu.org/docs/master/interop/qemu-qmp-ref.html (TdxGuestProperties)
#   https://docs.kernel.org/virt/kvm/x86/intel-tdx.html        (host KVM side)
#   https://docs.kernel.org/arch/x86/tdx.html                  (guest side, attestation)
#
# Usage:   VM=vm1 GUEST_IMAGE=/var/lib/swiotlb/guests/vm1.qcow2 deploy/operator/qemu-tdx.sh
#          DRY_RUN=1 deploy/operator/qemu-tdx.sh      # print the QEMU command line, start nothing
# Every variable below can be set in the environment.
set -euo pipefail

# --- What to run ---------------------------------------------------------------------------
VM=${VM:-vm1}                                  # instance name: swiotlb-host@$VM, /etc/swiotlb/$VM.*
SOCKET=${SOCKET:-/run/swiotlb/$VM.sock}        # ListenStream= of deploy/systemd/swiotlb-host@.socket
QEMU=${QEMU:-qemu-system-x86_64}               # QEMU >= 10.1 (vfio-user-pci, tdx-guest)
MEM=${MEM:-4G}                                 # guest RAM
CPUS=${CPUS:-4}                                # vCPUs
# TDVF: OVMF built with TDX support (OvmfPkg/IntelTdx/IntelTdxX64.dsc). It is loaded with
# -bios (TDX has no read-only private memory, so no pflash) and measured into MRTD. File
# names differ between distributions: check yours.
TDVF=${TDVF:-/usr/share/OVMF/OVMF.inteltdx.fd}
# Guest root disk, attached as NVMe, not virtio, so that the guest kernel may keep virtio_pci
# out entirely (initcall_blacklist=virtio_pci_driver_init, see docs/deploy.md); NVMe DMA goes
# through the guest kernel's own swiotlb bounce buffers in a TD.
GUEST_IMAGE=${GUEST_IMAGE:-/var/lib/swiotlb/guests/$VM.qcow2}
GUEST_IMAGE_FORMAT=${GUEST_IMAGE_FORMAT:-qcow2}
# Optional direct kernel boot. TDVF measures kernel, initrd and command line into the RTMRs
# (MRTD covers TDVF only), so pin them with rtmr1/rtmr2 in the policy if you pin anything.
# Without KERNEL, TDVF boots the disk and the guest's boot loader command line must carry the
# kernel parameters below.
KERNEL=${KERNEL:-}
INITRD=${INITRD:-}
APPEND=${APPEND:-console=ttyS0 root=/dev/nvme0n1p1 ro initcall_blacklist=virtio_pci_driver_init}
# --- TDX parameters ------------------------------------------------------------------------
# Where QEMU forwards the guest's GetQuote requests: the host's Quote Generation Service.
# Without it configfs-tsm in the guest gets no quote and `swiotlb-guest --attester tdx` fails.
#   unix:/PATH        a Unix socket (what recent QGS packages listen on; check your QGS config)
#   vsock:CID:PORT    a vsock address (older setups: vsock:2:4050)
QGS=${QGS:-unix:/var/run/tdx-qgs/qgs.socket}
# The tdx-guest defaults are kept: SEPT_VE_DISABLE on, DEBUG off (swiotlb-attest refuses a TD
# with DEBUG unless the policy says allow_debug = true). MRCONFIGID/MROWNER/MROWNERCONFIG are
# not set: swiotlb-attest does not check them (docs/attestation.md).
# Shared (non-private) guest RAM. Private memory is guest_memfd, which QEMU creates by itself
# for a confidential guest whatever backend is chosen here (see guest-memfd.html).
#   ram   - memory-backend-ram: no fd, so QEMU's vfio-user DMA_MAP messages carry no fd and
#           the device process never even holds a descriptor of guest RAM.
#   memfd - memory-backend-memfd,share=on; QEMU then attaches the memfd to every DMA_MAP
#           (hw/vfio-user/container.c), and swiotlb-host drops it unused.
GUEST_RAM_BACKEND=${GUEST_RAM_BACKEND:-ram}
# PCI slot of the SWIOTLB function on the root bus (q35 pcie.0). A fixed slot gives the guest
# a known address, 0000:00:10.0 for 0x10, to name in `swiotlb-guest --pci sysfs:0000:00:10.0`
# and to unbind from virtio-pci if needed (docs/deploy.md). Empty: QEMU picks a free slot.
SWIOTLB_PCI_ADDR=${SWIOTLB_PCI_ADDR-0x10}
# --- Host side -----------------------------------------------------------------------------
# systemd: make sure swiotlb-host@$VM.socket is listening (the device process starts when
#          QEMU connects, and gets a freshly reset function for this VM).
# no:      start nothing; $SOCKET must already be listening (swiotlb-host --socket ...).
START_HOST=${START_HOST:-systemd}
DRY_RUN=${DRY_RUN:-0}                          # 1: print the command line, check, start nothing
EXTRA_QEMU_ARGS=${EXTRA_QEMU_ARGS:-}           # more QEMU arguments, split on blanks

# -------------------------------------------------------------------------------------------
say() { printf 'qemu-tdx: %s\n' "$*" >&2; }
die() {
    say "ERROR: $*"
    exit 1
}
# A failed precondition stops a real launch; a dry run only reports it.
need() { # need "what is wrong" test...
    local why=$1
    shift
    if ! "$@"; then
        if [ "$DRY_RUN" = 1 ]; then say "WARNING (dry run): $why"; else die "$why"; fi
    fi
}

if [ -n "${CI:-}" ] || [ -n "${GITHUB_ACTIONS:-}" ]; then
    die "this is operator material for a TDX host; CI must not run it (CI is set)"
fi

# Values that end up inside JSON or QEMU's comma-separated options must not break them.
case $VM in '' | *[!A-Za-z0-9_.-]*) die "VM must be a plain instance name (letters, digits, _ . -)" ;; esac
case $SOCKET in *[!A-Za-z0-9._/@:-]*) die "SOCKET has characters this script will not quote: $SOCKET" ;; esac
case $SWIOTLB_PCI_ADDR in '' | 0x[0-9a-fA-F] | 0x[0-9a-fA-F][0-9a-fA-F]) ;; *) die "SWIOTLB_PCI_ADDR must be empty or a slot like 0x10" ;; esac
case $QGS in
    unix:/*)
        qgs_path=${QGS#unix:}
        case $qgs_path in *[!A-Za-z0-9._/@:-]*) die "QGS path has characters this script will not quote" ;; esac
        qgs_json="{\"type\":\"unix\",\"path\":\"$qgs_path\"}"
        ;;
    vsock:*:*)
        qgs_cid=${QGS#vsock:}
        qgs_cid=${qgs_cid%%:*}
        qgs_port=${QGS##*:}
        case $qgs_cid$qgs_port in '' | *[!0-9]*) die "QGS must be vsock:CID:PORT with numbers" ;; esac
        # QEMU's SocketAddress takes vsock cid and port as strings.
        qgs_json="{\"type\":\"vsock\",\"cid\":\"$qgs_cid\",\"port\":\"$qgs_port\"}"
        ;;
    *) die "QGS must be unix:/PATH or vsock:CID:PORT" ;;
esac

# --- Preflight: QEMU, KVM TDX, firmware, QGS, the host side --------------------------------
qemu_has_vfio_user() { "$QEMU" -device help 2>/dev/null | grep -q '"vfio-user-pci"'; }
qemu_has_tdx() { "$QEMU" -object help 2>/dev/null | grep -qw 'tdx-guest'; }
if command -v "$QEMU" >/dev/null 2>&1; then
    qver=$("$QEMU" --version | sed -n '1s/.*version \([0-9]*\)\.\([0-9]*\).*/\1 \2/p')
    read -r qmaj qmin <<<"${qver:-0 0}"
    need "QEMU ${qmaj}.${qmin} is older than 10.1 (no vfio-user-pci client, no tdx-guest)" \
        test $((qmaj * 100 + qmin)) -ge 1001
    need "$QEMU has no vfio-user-pci device" qemu_has_vfio_user
    need "$QEMU has no tdx-guest object" qemu_has_tdx
else
    need "$QEMU not found" false
fi
need "/dev/kvm missing" test -c /dev/kvm
tdx_enabled() { grep -qx Y /sys/module/kvm_intel/parameters/tdx 2>/dev/null; }
need "KVM TDX is not enabled (/sys/module/kvm_intel/parameters/tdx is not Y)" tdx_enabled
need "TDVF $TDVF missing" test -r "$TDVF"
need "guest image $GUEST_IMAGE missing" test -r "$GUEST_IMAGE"
[ -z "$KERNEL" ] || need "kernel $KERNEL missing" test -r "$KERNEL"
[ -z "$INITRD" ] || need "initrd $INITRD missing" test -r "$INITRD"
if [ -n "${qgs_path:-}" ]; then
    need "QGS socket $qgs_path missing (is the Quote Generation Service running?)" test -S "$qgs_path"
fi
need "/etc/swiotlb/$VM.policy.toml missing: the device refuses I/O without a policy to attest against" \
    test -r "/etc/swiotlb/$VM.policy.toml"

# --- Host side first: the device must be listening before QEMU connects ---------------------
case $START_HOST in
    systemd)
        if [ "$DRY_RUN" = 1 ]; then
            say "dry run: would run: systemctl start swiotlb-host@$VM.socket"
        elif ! systemctl is-active --quiet "swiotlb-host@$VM.socket"; then
            say "starting swiotlb-host@$VM.socket"
            systemctl start "swiotlb-host@$VM.socket" || die "systemctl start swiotlb-host@$VM.socket failed"
        fi
        ;;
    no) ;;
    *) die "START_HOST must be systemd or no" ;;
esac
need "$SOCKET is not a listening socket (is swiotlb-host@$VM.socket active?)" test -S "$SOCKET"
# The unit creates the socket root-only (SocketUser=root, SocketMode=0600): QEMU must run as
# that user, or set SocketUser= in a drop-in to the user QEMU runs as.
if [ "$DRY_RUN" != 1 ] && [ -S "$SOCKET" ] && [ ! -w "$SOCKET" ]; then
    die "no write permission on $SOCKET (see SocketUser= in swiotlb-host@.socket)"
fi

# --- The command line -----------------------------------------------------------------------
case $GUEST_RAM_BACKEND in
    ram) ram_obj="memory-backend-ram,id=ram0,size=$MEM" ;;
    memfd) ram_obj="memory-backend-memfd,id=ram0,size=$MEM,share=on" ;;
    *) die "GUEST_RAM_BACKEND must be ram or memfd" ;;
esac

args=(
    -name "$VM,debug-threads=on"
    -accel kvm
    # The host CPU model, as QEMU's TDX documentation launches a TD; the TDX module fixes or
    # filters the CPUID bits it owns.
    -cpu host
    -smp "$CPUS"
    -m "$MEM"
    -object "$ram_obj"
    # kernel-irqchip=split is what TDX needs (QEMU's default for a TD when left on auto;
    # spelled out here).
    -machine "q35,kernel-irqchip=split,confidential-guest-support=tdx0,memory-backend=ram0"
    # The TD. JSON because quote-generation-socket is a nested SocketAddress.
    -object "{\"qom-type\":\"tdx-guest\",\"id\":\"tdx0\",\"quote-generation-socket\":$qgs_json}"
    -bios "$TDVF"
    -nodefaults -display none
    -serial mon:stdio
    # A guest reboot ends QEMU instead of resetting in place: every boot is then a fresh
    # launch (new measurement, new attestation), started by the operator or a unit.
    -no-reboot
)

if [ -n "$KERNEL" ]; then
    args+=(-kernel "$KERNEL" -append "$APPEND")
    [ -z "$INITRD" ] || args+=(-initrd "$INITRD")
fi

args+=(
    # The root disk, the first bootable device (bootindex 0 is taken by the -kernel loader
    # when KERNEL is set, so 1 here).
    -drive "if=none,id=root,file=$GUEST_IMAGE,format=$GUEST_IMAGE_FORMAT"
    -device "nvme,drive=root,serial=$VM-root,bootindex=1"
    # Strict boot order: firmware boots only what has a bootindex. Under SeaBIOS (the CI run)
    # this kept the firmware's virtio-blk driver off the SWIOTLB function; whether TDVF also
    # leaves it alone was not checked (look for a swiotlb_declined finding in the audit log).
    -boot strict=on
    # The SWIOTLB virtio-blk function, served by swiotlb-host over the vfio-user socket. QEMU
    # maps the pool BAR (a sealed memfd) into guest physical memory; the TD reaches it as
    # shared (unencrypted) memory.
    -device "{\"driver\":\"vfio-user-pci\",\"id\":\"swiotlb0\"${SWIOTLB_PCI_ADDR:+,\"addr\":\"$SWIOTLB_PCI_ADDR\"},\"socket\":{\"path\":\"$SOCKET\",\"type\":\"unix\"}}"
)
# shellcheck disable=SC2206 # extra QEMU arguments, split on blanks on purpose
[ -z "$EXTRA_QEMU_ARGS" ] || args+=($EXTRA_QEMU_ARGS)

say "QEMU command line:"
printf '%q ' "$QEMU" "${args[@]}" >&2
printf '\n' >&2
if [ "$DRY_RUN" = 1 ]; then
    printf '%q ' "$QEMU" "${args[@]}"
    printf '\n'
    exit 0
fi
exec "$QEMU" "${args[@]}"
