#!/usr/bin/env bash
# deploy/operator/qemu-snp.sh: an example launch of an AMD SEV-SNP guest under QEMU whose
# SWIOTLB virtio-blk function is served by swiotlb-host (the systemd unit
# swiotlb-host@<vm>) over vfio-user.
#
#   OPERATOR MATERIAL: NOT RUN BY CI, AND NEVER RUN ON SEV-SNP HARDWARE BY THE PROJECT.
#   No SEV-SNP machine was available when it was written. Read it, adapt the variables
#   below, and try it on a host you control. docs/deploy.md says what was and was not
#   tested, and lists the host and guest steps this script assumes.
#
# Written against QEMU 10.1: the first release with the vfio-user-pci client; the
# sev-snp-guest object exists since 9.1. A host kernel with KVM SEV-SNP (upstream since
# 6.11) and a guest kernel with configfs-tsm and sev-guest (6.7 or later) are assumed.
# Checked here: `bash -n`, shellcheck, a dry run (DRY_RUN=1), and the option and property
# names against Debian's QEMU 11.1.3 (option parsing only, under TCG, where QEMU stops at
# "cannot set up private guest memory for sev-snp-guest: KVM required"). Nothing was booted.
#
# References (read these; nothing here is copied from them):
#   https://www.qemu.org/docs/master/system/i386/amd-memory-encryption.html  (sev-snp-guest)
#   https://www.qemu.org/docs/master/system/confidential-guest-support.html
#   https://www.qemu.org/docs/master/system/guest-memfd.html   (private memory: guest_memfd)
#   https://www.qemu.org/docs/master/system/devices/vfio-user.html  (vfio-user-pci)
#   https://www.qemu.org/docs/master/system/igvm.html          (igvm-cfg, optional)
#   https://www.qemu.org/docs/master/interop/qemu-qmp-ref.html (SevSnpGuestProperties)
#   https://docs.kernel.org/virt/coco/sev-guest.html           (the guest's sev-guest driver)
#
# Usage:   VM=vm1 GUEST_IMAGE=/var/lib/swiotlb/guests/vm1.qcow2 deploy/operator/qemu-snp.sh
#          DRY_RUN=1 deploy/operator/qemu-snp.sh      # print the QEMU command line, start nothing
# Every variable below can be set in the environment.
set -euo pipefail

# --- What to run ---------------------------------------------------------------------------
VM=${VM:-vm1}                                  # instance name: swiotlb-host@$VM, /etc/swiotlb/$VM.*
SOCKET=${SOCKET:-/run/swiotlb/$VM.sock}        # ListenStream= of deploy/systemd/swiotlb-host@.socket
QEMU=${QEMU:-qemu-system-x86_64}               # QEMU >= 10.1 (vfio-user-pci)
MEM=${MEM:-4G}                                 # guest RAM
CPUS=${CPUS:-4}                                # vCPUs
CPU_MODEL=${CPU_MODEL:-EPYC-v4}                # a named EPYC model, as AMD's launch guides use
# Firmware. SEV-SNP guests boot OVMF with -bios (no pflash: SNP has no read-only private
# memory). For a measured direct kernel boot use an AmdSev build (OvmfPkg/AmdSev/AmdSevX64.dsc),
# which checks the kernel/initrd/cmdline hashes QEMU puts in (kernel-hashes=on below). File
# names differ between distributions: check yours.
OVMF=${OVMF:-/usr/share/OVMF/OVMF.amdsev.fd}
# Or an IGVM file instead of OVMF (needs a QEMU built with IGVM support; Debian's 11.1.3 build
# has no igvm-cfg object). Leave empty to use $OVMF.
IGVM=${IGVM:-}
# Guest root disk. It is attached as NVMe, not virtio, so that the guest kernel may keep
# virtio_pci out entirely (initcall_blacklist=virtio_pci_driver_init, see docs/deploy.md);
# NVMe DMA goes through the guest kernel's own swiotlb bounce buffers in a CVM.
GUEST_IMAGE=${GUEST_IMAGE:-/var/lib/swiotlb/guests/$VM.qcow2}
GUEST_IMAGE_FORMAT=${GUEST_IMAGE_FORMAT:-qcow2}
# Optional direct kernel boot. With KERNEL set, QEMU adds the hashes of kernel, initrd and
# command line to the launch measurement (kernel-hashes=on), so the policy's `measurements`
# pins them too. Without it, OVMF boots the disk and the guest's own boot loader command line
# must carry the kernel parameters below.
KERNEL=${KERNEL:-}
INITRD=${INITRD:-}
APPEND=${APPEND:-console=ttyS0 root=/dev/nvme0n1p1 ro initcall_blacklist=virtio_pci_driver_init}
# --- SEV-SNP parameters --------------------------------------------------------------------
# C-bit position and physical address bits lost to encryption: CPUID 0x8000001F EBX[5:0] and
# EBX[11:6] on the host. 51 and 1 on Milan and Genoa; QEMU requires reduced-phys-bits.
CBITPOS=${CBITPOS:-51}
REDUCED_PHYS_BITS=${REDUCED_PHYS_BITS:-1}
# Guest policy: 0x30000 = bit 17 (must be 1) + bit 16 (SMT allowed); bit 19 (DEBUG) clear.
# swiotlb-attest refuses a report with DEBUG set unless the policy says allow_debug = true.
SNP_POLICY=${SNP_POLICY:-0x30000}
# Optional 32 bytes (64 hex digits) the host puts in the report's HOST_DATA. Pin the same
# value as `host_data` in /etc/swiotlb/$VM.policy.toml to bind the evidence to this launch
# configuration (e.g. the SHA-256 of this VM's name and image).
HOST_DATA=${HOST_DATA:-}
# Shared (non-private) guest RAM. Private memory is guest_memfd, which QEMU creates by itself
# for a confidential guest whatever backend is chosen here (see guest-memfd.html).
#   ram   - memory-backend-ram: no fd, so QEMU's vfio-user DMA_MAP messages carry no fd and
#           the device process never even holds a descriptor of guest RAM (it would not map
#           it anyway: swiotlb-host drops DMA_MAP fds unused).
#   memfd - memory-backend-memfd,share=on, as AMD's SNP launch guides use; QEMU then attaches
#           the memfd to every DMA_MAP (hw/vfio-user/container.c), and swiotlb-host drops it.
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
say() { printf 'qemu-snp: %s\n' "$*" >&2; }
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
    die "this is operator material for an SEV-SNP host; CI must not run it (CI is set)"
fi

# Values that end up inside JSON or QEMU's comma-separated options must not break them.
case $VM in '' | *[!A-Za-z0-9_.-]*) die "VM must be a plain instance name (letters, digits, _ . -)" ;; esac
case $SOCKET in *[!A-Za-z0-9._/@:-]*) die "SOCKET has characters this script will not quote: $SOCKET" ;; esac
case $SWIOTLB_PCI_ADDR in '' | 0x[0-9a-fA-F] | 0x[0-9a-fA-F][0-9a-fA-F]) ;; *) die "SWIOTLB_PCI_ADDR must be empty or a slot like 0x10" ;; esac
if [ -n "$HOST_DATA" ]; then
    case $HOST_DATA in *[!0-9a-fA-F]*) die "HOST_DATA must be 64 hex digits" ;; esac
    [ ${#HOST_DATA} -eq 64 ] || die "HOST_DATA must be 64 hex digits"
fi

# --- Preflight: QEMU, KVM SEV-SNP, firmware, the host side ---------------------------------
qemu_has_vfio_user() { "$QEMU" -device help 2>/dev/null | grep -q '"vfio-user-pci"'; }
qemu_has_igvm() { "$QEMU" -object help 2>/dev/null | grep -qw 'igvm-cfg'; }
if command -v "$QEMU" >/dev/null 2>&1; then
    qver=$("$QEMU" --version | sed -n '1s/.*version \([0-9]*\)\.\([0-9]*\).*/\1 \2/p')
    read -r qmaj qmin <<<"${qver:-0 0}"
    need "QEMU ${qmaj}.${qmin} is older than 10.1 (no vfio-user-pci client)" \
        test $((qmaj * 100 + qmin)) -ge 1001
    need "$QEMU has no vfio-user-pci device" qemu_has_vfio_user
    if [ -n "$IGVM" ]; then
        need "$QEMU has no igvm-cfg object (built without IGVM): use OVMF instead" qemu_has_igvm
    fi
else
    need "$QEMU not found" false
fi
need "/dev/kvm missing" test -c /dev/kvm
snp_enabled() { grep -qx Y /sys/module/kvm_amd/parameters/sev_snp 2>/dev/null; }
need "KVM SEV-SNP is not enabled (/sys/module/kvm_amd/parameters/sev_snp is not Y)" snp_enabled
need "/dev/sev missing (ccp driver not loaded?)" test -c /dev/sev
if [ -n "$IGVM" ]; then need "IGVM file $IGVM missing" test -r "$IGVM"; else need "OVMF $OVMF missing" test -r "$OVMF"; fi
need "guest image $GUEST_IMAGE missing" test -r "$GUEST_IMAGE"
[ -z "$KERNEL" ] || need "kernel $KERNEL missing" test -r "$KERNEL"
[ -z "$INITRD" ] || need "initrd $INITRD missing" test -r "$INITRD"
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

machine="q35,confidential-guest-support=sev0,memory-backend=ram0"
snp="sev-snp-guest,id=sev0,cbitpos=$CBITPOS,reduced-phys-bits=$REDUCED_PHYS_BITS,policy=$SNP_POLICY"
if [ -n "$HOST_DATA" ]; then
    # QEMU takes HOST_DATA as base64 of the 32 raw bytes.
    host_data_b64=$(printf '%b' "$(printf '%s' "$HOST_DATA" | sed 's/../\\x&/g')" | base64 -w0)
    snp+=",host-data=$host_data_b64"
fi

args=(
    -name "$VM,debug-threads=on"
    -accel kvm
    -cpu "$CPU_MODEL"
    -smp "$CPUS"
    -m "$MEM"
    -object "$ram_obj"
    -nodefaults -display none
    -serial mon:stdio
    # QEMU's SEV documentation: an SEV-ES guest (SNP included) does not support reboot. A
    # reboot ends QEMU; the next start is a new launch (new measurement, new attestation).
    -no-reboot
)

if [ -n "$IGVM" ]; then
    # IGVM carries the firmware: no -bios then (QEMU refuses both).
    machine+=",igvm-cfg=igvm0"
    args+=(-object "igvm-cfg,id=igvm0,file=$IGVM")
else
    args+=(-bios "$OVMF")
fi

if [ -n "$KERNEL" ]; then
    # Measured direct boot: the kernel, initrd and command line hashes go into the launch
    # measurement, which the policy pins (docs/deploy.md, "Measurements").
    snp+=",kernel-hashes=on"
    args+=(-kernel "$KERNEL" -append "$APPEND")
    [ -z "$INITRD" ] || args+=(-initrd "$INITRD")
fi

args+=(
    -machine "$machine"
    -object "$snp"
    # The root disk, the first bootable device (bootindex 0 is taken by the -kernel loader
    # when KERNEL is set, so 1 here).
    -drive "if=none,id=root,file=$GUEST_IMAGE,format=$GUEST_IMAGE_FORMAT"
    -device "nvme,drive=root,serial=$VM-root,bootindex=1"
    # Strict boot order: firmware boots only what has a bootindex. Under SeaBIOS (the CI run)
    # this kept the firmware's virtio-blk driver off the SWIOTLB function; whether OVMF also
    # leaves it alone was not checked (look for a swiotlb_declined finding in the audit log).
    -boot strict=on
    # The SWIOTLB virtio-blk function, served by swiotlb-host over the vfio-user socket. QEMU
    # maps the pool BAR (a sealed memfd) into guest physical memory as RAM.
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
