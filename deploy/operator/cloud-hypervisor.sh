#!/usr/bin/env bash
# deploy/operator/cloud-hypervisor.sh: the cloud-hypervisor counterpart of qemu-snp.sh and
# qemu-tdx.sh: a confidential guest (TDX or SEV-SNP) whose SWIOTLB virtio-blk function is
# served by swiotlb-host (the systemd unit swiotlb-host@<vm>) over vfio-user (--user-device).
#
#   OPERATOR MATERIAL: NOT RUN BY CI, AND NEVER RUN BY THE PROJECT, NOT EVEN WITHOUT A
#   CONFIDENTIAL PLATFORM: cloud-hypervisor was not installed where this was written, and
#   no SEV-SNP or TDX machine was available. It is the least certain of the three scripts;
#   docs/deploy.md lists what is assumed and what was not confirmed.
#
# Written against cloud-hypervisor v51.0 (the latest release in its release notes as read)
# for --user-device, --memory shared=on, --platform tdx=on and --firmware; and against its
# main-branch documentation (after v51.0, no tagged release confirmed) for two things:
#   - `--platform tdx=on,quote_generation_socket=...` (GetQuote forwarding to the host's QGS;
#     the docs say GetQuote fails with QGS_UNAVAILABLE without it);
#   - SEV-SNP on KVM: a build with `--no-default-features --features kvm,igvm,sev_snp,fw_cfg`,
#     `--platform sev_snp=on`, an IGVM stage0 image (--igvm) and the kernel through fw_cfg.
#     Older documentation says SEV-SNP is supported on MSHV only.
# Checked here: `bash -n`, shellcheck and a dry run (DRY_RUN=1). Nothing was started.
#
# References (read these; nothing here is copied from them):
#   https://github.com/cloud-hypervisor/cloud-hypervisor/blob/main/docs/vfio-user.md
#   https://github.com/cloud-hypervisor/cloud-hypervisor/blob/main/docs/intel_tdx.md
#   https://github.com/cloud-hypervisor/cloud-hypervisor/blob/main/docs/amd_sev_snp.md
#   https://github.com/cloud-hypervisor/cloud-hypervisor/blob/main/release-notes.md
#
# Differences from the QEMU scripts that matter here:
#   - cloud-hypervisor refuses --user-device without shared guest memory
#     (UserDevicesRequireSharedMemory), so guest RAM is `shared=on` and its fds go to the
#     device process in DMA_MAP; swiotlb-host drops them without mapping (docs/sandbox.md).
#   - --disk is a virtio-blk device on virtio-pci, so the guest kernel needs virtio_pci for its
#     root disk: `initcall_blacklist=virtio_pci_driver_init` is NOT an option here; unbind the
#     SWIOTLB function from virtio-pci in the guest instead (docs/deploy.md, guest side).
#
# Usage:   PLATFORM=tdx VM=vm1 GUEST_IMAGE=/var/lib/swiotlb/guests/vm1.raw deploy/operator/cloud-hypervisor.sh
#          PLATFORM=snp ... KERNEL=... IGVM=... deploy/operator/cloud-hypervisor.sh
#          DRY_RUN=1 deploy/operator/cloud-hypervisor.sh   # print the command line, start nothing
# Every variable below can be set in the environment.
set -euo pipefail

# --- What to run ---------------------------------------------------------------------------
PLATFORM=${PLATFORM:-tdx}                      # tdx | snp
VM=${VM:-vm1}                                  # instance name: swiotlb-host@$VM, /etc/swiotlb/$VM.*
SOCKET=${SOCKET:-/run/swiotlb/$VM.sock}        # ListenStream= of deploy/systemd/swiotlb-host@.socket
CH=${CH:-cloud-hypervisor}                     # built with --features tdx, or kvm,igvm,sev_snp,fw_cfg
MEM=${MEM:-4G}                                 # guest RAM
CPUS=${CPUS:-4}                                # vCPUs
GUEST_IMAGE=${GUEST_IMAGE:-/var/lib/swiotlb/guests/$VM.raw}   # root disk (virtio-blk)
# ch-remote endpoint. Not in /run/swiotlb: swiotlb-host may remove files in its socket's
# directory (docs/sandbox.md, Landlock), and the VMM's control socket has no business there.
API_SOCKET=${API_SOCKET:-/run/cloud-hypervisor/$VM.sock}
# TDX: TDVF (OVMF built from OvmfPkg/IntelTdx/IntelTdxX64.dsc), which boots the disk.
TDVF=${TDVF:-/usr/share/OVMF/OVMF.inteltdx.fd}
# TDX: the host's Quote Generation Service, as cloud-hypervisor spells it: a path (Unix
# socket), vsock:CID:PORT, or tcp:HOST:PORT. Empty: not passed (then no quote, no attestation).
QGS=${QGS:-/var/run/tdx-qgs/qgs.socket}
# SEV-SNP: an IGVM stage0 image, and the kernel the firmware gets through fw_cfg.
IGVM=${IGVM:-}
KERNEL=${KERNEL:-}
INITRD=${INITRD:-}
CMDLINE=${CMDLINE:-console=ttyS0 root=/dev/vda1 ro}
# SEV-SNP: optional HOST_DATA (64 hex digits); pin the same value as `host_data` in
# /etc/swiotlb/$VM.policy.toml. The format cloud-hypervisor expects was not confirmed.
HOST_DATA=${HOST_DATA:-}
# --- Host side -----------------------------------------------------------------------------
START_HOST=${START_HOST:-systemd}              # systemd | no (see qemu-snp.sh)
DRY_RUN=${DRY_RUN:-0}
EXTRA_CH_ARGS=${EXTRA_CH_ARGS:-}               # more arguments, split on blanks

# -------------------------------------------------------------------------------------------
say() { printf 'cloud-hypervisor.sh: %s\n' "$*" >&2; }
die() {
    say "ERROR: $*"
    exit 1
}
need() { # need "what is wrong" test...
    local why=$1
    shift
    if ! "$@"; then
        if [ "$DRY_RUN" = 1 ]; then say "WARNING (dry run): $why"; else die "$why"; fi
    fi
}

if [ -n "${CI:-}" ] || [ -n "${GITHUB_ACTIONS:-}" ]; then
    die "this is operator material for a TDX or SEV-SNP host; CI must not run it (CI is set)"
fi
case $VM in '' | *[!A-Za-z0-9_.-]*) die "VM must be a plain instance name (letters, digits, _ . -)" ;; esac
# cloud-hypervisor's option parser splits on commas: keep them out of paths.
for p in "$SOCKET" "$GUEST_IMAGE" "$API_SOCKET" "$TDVF" "$QGS"; do
    case $p in *,*) die "a comma in $p would break cloud-hypervisor's option syntax" ;; esac
done
if [ -n "$HOST_DATA" ]; then
    case $HOST_DATA in *[!0-9a-fA-F]*) die "HOST_DATA must be 64 hex digits" ;; esac
    [ ${#HOST_DATA} -eq 64 ] || die "HOST_DATA must be 64 hex digits"
fi

# --- Preflight ------------------------------------------------------------------------------
ch_found() { command -v "$CH" >/dev/null 2>&1; }
need "$CH not found" ch_found
need "/dev/kvm missing" test -c /dev/kvm
need "guest image $GUEST_IMAGE missing" test -r "$GUEST_IMAGE"
need "/etc/swiotlb/$VM.policy.toml missing: the device refuses I/O without a policy to attest against" \
    test -r "/etc/swiotlb/$VM.policy.toml"
tdx_enabled() { grep -qx Y /sys/module/kvm_intel/parameters/tdx 2>/dev/null; }
snp_enabled() { grep -qx Y /sys/module/kvm_amd/parameters/sev_snp 2>/dev/null; }
case $PLATFORM in
    tdx)
        need "KVM TDX is not enabled (/sys/module/kvm_intel/parameters/tdx is not Y)" tdx_enabled
        need "TDVF $TDVF missing" test -r "$TDVF"
        case $QGS in '' | vsock:* | tcp:* | inet:*) ;; *) need "QGS socket ${QGS#unix:} missing" test -S "${QGS#unix:}" ;; esac
        ;;
    snp)
        need "KVM SEV-SNP is not enabled (/sys/module/kvm_amd/parameters/sev_snp is not Y)" snp_enabled
        need "IGVM (the stage0 image) is required for SEV-SNP" test -n "$IGVM"
        [ -z "$IGVM" ] || need "IGVM $IGVM missing" test -r "$IGVM"
        need "KERNEL is required for SEV-SNP (passed through fw_cfg)" test -n "$KERNEL"
        [ -z "$KERNEL" ] || need "kernel $KERNEL missing" test -r "$KERNEL"
        ;;
    *) die "PLATFORM must be tdx or snp" ;;
esac

# --- Host side first ---------------------------------------------------------------------------
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

if [ "$DRY_RUN" != 1 ]; then
    mkdir -p "$(dirname "$API_SOCKET")"
    chmod 0700 "$(dirname "$API_SOCKET")"
fi

# --- The command line -----------------------------------------------------------------------
args=(
    --api-socket "path=$API_SOCKET"
    --cpus "boot=$CPUS"
    # shared=on: required with --user-device (see the header).
    --memory "size=$MEM,shared=on"
    --disk "path=$GUEST_IMAGE"
    # The SWIOTLB virtio-blk function over vfio-user. Whether cloud-hypervisor maps the pool
    # BAR as guest RAM (it should: one sparse-mmap area with the memfd) was not confirmed;
    # `trapped_pool_accesses` in swiotlb-host's session_end line says (0 = mapped).
    --user-device "socket=$SOCKET,id=swiotlb0"
    --serial tty --console off
)
case $PLATFORM in
    tdx)
        platform="tdx=on"
        [ -z "$QGS" ] || platform+=",quote_generation_socket=$QGS"
        args+=(--platform "$platform" --firmware "$TDVF")
        ;;
    snp)
        args+=(--platform "sev_snp=on" --igvm "$IGVM" --kernel "$KERNEL" --cmdline "$CMDLINE")
        [ -z "$INITRD" ] || args+=(--initramfs "$INITRD")
        [ -z "$HOST_DATA" ] || args+=(--host-data "$HOST_DATA")
        ;;
esac
# shellcheck disable=SC2206 # extra arguments, split on blanks on purpose
[ -z "$EXTRA_CH_ARGS" ] || args+=($EXTRA_CH_ARGS)

say "cloud-hypervisor command line:"
printf '%q ' "$CH" "${args[@]}" >&2
printf '\n' >&2
if [ "$DRY_RUN" = 1 ]; then
    printf '%q ' "$CH" "${args[@]}"
    printf '\n'
    exit 0
fi
exec "$CH" "${args[@]}"
