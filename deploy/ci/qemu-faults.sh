#!/usr/bin/env bash
# deploy/ci/qemu-faults.sh: reliability under load and faults, in a real Linux guest under QEMU
# (q35, intel-iommu vIOMMU, TCG) whose vfio-user-pci function is served by swiotlb-host and
# driven by swiotlb-guest's ublk server (/dev/ublkbN) through the kernel VFIO back end. Five
# boots on one disk image; a new swiotlb-host for each of the first three, one for the last two:
#   1 soak     guest-killed: the ublk server SIGKILLed mid-I/O, a new one serves the device;
#              verified-soak: fio with crc32c verification (random 4 KiB writes and reads at
#              QD32, sequential 1 MiB writes) over many times the pool's size;
#              filesystem-churn: ext4, several processes creating, fsyncing, renaming,
#              truncating and removing files; e2fsck -fn in the guest, and here on the image.
#   2 kill     device-killed: fio writing and a manifest of fsynced files growing on ext4,
#              then swiotlb-host SIGKILLed (the guest prints a line; this script's watcher of
#              the console sends the signal): I/O errors within the driver's timeout, no task
#              left in D state, the disk deleted.
#   3 stop     a new host: the journal replays, e2fsck -fn, every file of the manifest intact;
#              then device-stopped: the same, with SIGTERM (the host's graceful stop).
#   4 vmkill   a new host with a 1 MiB pool, two sessions; guest-vm-killed: fio writing through
#              the disk, then QEMU SIGKILLed: the session ends, the host keeps serving;
#   5 exhaust  the same host's next session: the pool found zeroed, what the stop left checked
#              as above, then pool-exhaustion: 1 MiB writes at queue depth 128, verified.
# Then the final image is kept (faults-disk.img) and checked here: e2fsck -fn, and every file
# of both manifests read with debugfs. Every scenario's outcome and figures go to faults.json.
#
#   sudo deploy/ci/qemu-faults.sh           # the short form (the test command runs it)
#   sudo deploy/ci/qemu-faults.sh --long    # the long form: far more data, time and files
#
# Shares the chroot, builds and QEMU helpers with qemu-e2e.sh (deploy/ci/qemu-lib.sh) and its
# environment (SWIOTLB_QEMU_CACHE, _MIRROR, _ACCEL, _TIMEOUT, _EXTRA_ARGS, _VERBOSE, _LOGS).
# Also: SWIOTLB_FAULTS_TIMEOUT_MS, the guest driver's timeout (--timeout-ms) [10000].
# See docs/qemu-faults.md.
#
# Exit status: 0 every scenario passed; 1 a scenario or a step failed.
set -Eeuo pipefail
umask 022

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
LIB_NAME=qemu-faults
. "$REPO/deploy/ci/qemu-lib.sh"
LOGS=${SWIOTLB_QEMU_LOGS:-$TARGET_DIR/qemu-e2e}
VERBOSE=${SWIOTLB_QEMU_VERBOSE:-0}
TIMEOUT_MS=${SWIOTLB_FAULTS_TIMEOUT_MS:-10000}
FORM=short
for a in "$@"; do
    case $a in
        --long) FORM=long ;;
        --short) FORM=short ;;
        -h | --help)
            sed -n '2,/^$/p' "$0" | sed 's/^# \{0,1\}//'
            exit 0
            ;;
        *) die "unknown argument $a (--short, --long)" ;;
    esac
done
case $TIMEOUT_MS in '' | *[!0-9]*) die "SWIOTLB_FAULTS_TIMEOUT_MS must be a number of milliseconds" ;; esac

# The two forms. Pool: 16 MiB (swiotlb-host's default) for the first three boots, 1 MiB (the
# smallest it serves) for the last.
POOL=16M
POOL_BYTES=$((16 << 20))
if [ "$FORM" = short ]; then
    DISK_MIB=512      # the image (sparse)
    FS_MIB=192        # ext4 on the first FS_MIB; the rest stays raw for pool exhaustion
    SOAK_RSPAN_MIB=32 # random writes (verified) and reads over [0, RSPAN)
    SOAK_SSPAN_MIB=32 # sequential 1 MiB writes (verified) over [RSPAN, RSPAN + SSPAN)
    SOAK_LOOPS=2      # passes over each span
    CHURN_SECONDS=30
    CHURN_WORKERS=4
    MANIFEST_MIN=20   # files in the manifest before the host is signalled
    PX_SPAN_MIB=256   # 1 MiB writes at depth 128 over [FS_MIB, FS_MIB + PX_SPAN)
    PX_LOOPS=1
else
    DISK_MIB=2048
    FS_MIB=1024
    SOAK_RSPAN_MIB=128
    SOAK_SSPAN_MIB=256
    SOAK_LOOPS=8
    CHURN_SECONDS=300
    CHURN_WORKERS=6
    MANIFEST_MIN=300
    PX_SPAN_MIB=512
    PX_LOOPS=2
fi
[ $((FS_MIB + PX_SPAN_MIB)) -le "$DISK_MIB" ] && [ $((SOAK_RSPAN_MIB + SOAK_SSPAN_MIB)) -le "$DISK_MIB" ] ||
    die "the $FORM form's spans do not fit its $DISK_MIB MiB image"
FL=$LOGS/faults # per-boot logs: consoles, hosts' output, audit logs

lib_require_root

# ---------------------------------------------------------------------------------------------
lib_machine_tools
lib_chroot
lib_build_host_tools
lib_build_static_guest
[ "$HAS_PCI" = 1 ] || die "swiotlb-guest has no --pci option: the fault scenarios need the VFIO back end"

# ---------------------------------------------------------------------------------------------
phase "initramfs, disk image"
mkdir -p "$LOGS"
rm -rf "${FL:?}" "$LOGS/faults.json" "$LOGS/faults-disk.img"
mkdir -p "$FL"
lib_initramfs_begin faults
modules_for load-vfio "${MODS_VFIO[@]}"
modules_for load-ublk "${MODS_UBLK[@]}"
copy_tools "${DISK_TOOLS[@]}"
mkdir -p "$IR/etc"
cp "$ROOT/etc/mke2fs.conf" "$IR/etc/mke2fs.conf" || die "no /etc/mke2fs.conf in the chroot"
install -m 644 "$REPO/deploy/ci/guest-faults.sh" "$IR/guest-faults.sh"
cat >"$IR/e2e.conf" <<EOF
TIMEOUT_MS=$TIMEOUT_MS
FS_BYTES=$((FS_MIB << 20))
SOAK_RSPAN=$((SOAK_RSPAN_MIB << 20))
SOAK_SSPAN=$((SOAK_SSPAN_MIB << 20))
SOAK_LOOPS=$SOAK_LOOPS
CHURN_SECONDS=$CHURN_SECONDS
CHURN_WORKERS=$CHURN_WORKERS
MANIFEST_MIN=$MANIFEST_MIN
PX_SPAN=$((PX_SPAN_MIB << 20))
PX_LOOPS=$PX_LOOPS
EOF
cat >"$IR/init" <<'INIT'
#!/bin/busybox sh
# Init of the swiotlb QEMU fault-scenario guest: the function to vfio-pci, then the boot's
# stage of deploy/ci/guest-faults.sh (swiotlb_faults=... on the command line), power off.
. /guest-lib.sh
guest_init
# A task in D state for 10 s is reported by the kernel's hung-task detector (dmesg).
[ -w /proc/sys/kernel/hung_task_timeout_secs ] && echo 10 >/proc/sys/kernel/hung_task_timeout_secs
find_function
hand_over
bar_info
bind_vfio
export PATH=/usr/sbin:/usr/bin:/bin # e2fsprogs and fio before busybox's own mke2fs
GV="/swiotlb-guest --pci vfio:auto --attester emulated --emulated-key /key.pk8 --timeout-ms $TIMEOUT_MS"
. /guest-faults.sh
finish PASS "faults boot $BOOT_KIND"
INIT
chmod 755 "$IR/init"
lib_initramfs_pack
say "initramfs: $(du -h "$RUNDIR/initrd.gz" | cut -f1)"
# The image every host serves lives where it is kept: no copy at the end. Sparse, it takes
# what the guest writes: at most the whole image, so that much room must be free.
DISK=$LOGS/faults-disk.img
truncate -s "${DISK_MIB}M" "$DISK"
FREE_MIB=$(($(df --output=avail -k "$LOGS" | tail -n1) >> 10))
[ "$FREE_MIB" -ge $((DISK_MIB + 256)) ] ||
    die "$LOGS has $FREE_MIB MiB free; the $FORM form's image may take $DISK_MIB MiB (a host whose image or logs hit a full disk fails the scenarios)"
say "disk image: $DISK_MIB MiB (sparse); ext4 on the first $FS_MIB MiB; form: $FORM; driver timeout $TIMEOUT_MS ms"

# ---------------------------------------------------------------------------------------------
QEMU_ARGS+=(-m 1024) # depth 128 x 1 MiB: the ublk server's buffers and fio's, beside the page cache
# no_timer_check: on a loaded machine, TCG can miss the kernel's early check that the timer
# interrupt arrives through the interrupt-remapped IO-APIC, and the kernel panics ("timer
# doesn't work through Interrupt-remapped IO-APIC"; seen here once in five boots).
CMDLINE="console=ttyS0 panic=-1 loglevel=5 intel_iommu=on no_timer_check"
lib_accel "$CMDLINE"
DEVJSON=$(jq -cn --arg p "$RUN_IN/swiotlb.sock" '{driver: "vfio-user-pci", socket: {path: $p, type: "unix"}, addr: "0x10"}')

# What the scenarios record: one line per check (scenario, ok|FAIL, what) and per figure
# (scenario, key, value), from the guest's CHECK and FIGURE lines and from the checks here.
CHECKS=$WORK/checks.tsv
FIGURES=$WORK/figures.tsv
: >"$CHECKS"
: >"$FIGURES"
check() { # check SCENARIO ok|FAIL WHAT
    printf '%s\t%s\t%s\n' "$1" "$2" "$3" >>"$CHECKS"
    if [ "$2" = ok ]; then say "   ok    [$1] $3"; else say "   FAIL  [$1] $3"; fi
}
figure() { # figure SCENARIO KEY VALUE
    printf '%s\t%s\t%s\n' "$1" "$2" "$3" >>"$FIGURES"
}

# The console watcher (run_qemu's hook): sends the signal the guest asks for with its
# FAULT-KILL-HOST line (to swiotlb-host) or FAULT-KILL-QEMU line (SIGKILL to QEMU), and notes
# when the guest's first reports after it appear. Reads only what the console gained since
# the last look.
fault_hook() {
    local size chunk sig
    size=$(stat -c %s "$1" 2>/dev/null || echo 0)
    [ "$size" -gt "$HOOK_OFF" ] || return 0
    chunk=$(tail -c +"$((HOOK_OFF > 512 ? HOOK_OFF - 511 : 1))" "$1" | tr -d '\r' | grep -a '^SWIOTLB-E2E: \(FAULT-KILL-\|UBLK-FAILED\|IO-ERROR\)' || true)
    HOOK_OFF=$size
    [ -n "$chunk" ] || return 0
    if [ -z "$KILL_SENT" ] && grep -q '^SWIOTLB-E2E: FAULT-KILL-QEMU' <<<"$chunk"; then
        kill -KILL "$QEMU_PID" 2>/dev/null || true
        T_KILL=$(now)
        KILL_SENT=QEMU
        say "   the guest asked: SIGKILL sent to QEMU (pid $QEMU_PID)"
        return 0
    fi
    if [ -z "$KILL_SENT" ]; then
        sig=$(sed -n 's/^SWIOTLB-E2E: FAULT-KILL-HOST \([A-Z]*\).*/\1/p' <<<"$chunk" | head -n1)
        if [ -n "$sig" ] && [ -n "$HOST_PID" ]; then
            kill -"$sig" "$HOST_PID" 2>/dev/null || true
            T_KILL=$(now)
            KILL_SENT=$sig
            say "   the guest asked: SIG$sig sent to swiotlb-host (pid $HOST_PID)"
        fi
    fi
    if [ -n "$KILL_SENT" ]; then
        [ -n "$T_UBLK_FAILED" ] || ! grep -q '^SWIOTLB-E2E: UBLK-FAILED' <<<"$chunk" || T_UBLK_FAILED=$(now)
        [ -n "$T_IO_ERROR" ] || ! grep -q '^SWIOTLB-E2E: IO-ERROR' <<<"$chunk" || T_IO_ERROR=$(now)
    fi
    return 0
}

# new_host NAME POOL SESSIONS: a new swiotlb-host on the image, serving SESSIONS vfio-user
# sessions (QEMU is the client: one per boot) with a pool of POOL; its output and audit log
# under $FL/NAME-host.* and $FL/NAME-audit.
new_host() {
    HOST_POOL=$2
    start_host "$FL/$1-host" "$DISK" "$2" "$FL/$1-audit" --sessions "$3"
    say "swiotlb-host ($1) pid $HOST_PID, pool $2, $3 session(s)"
}

# boot NAME KIND SCENARIO...: a boot with swiotlb_faults=KIND on the running swiotlb-host;
# then the guest's CHECK and FIGURE lines and its result line, and QEMU's status: 0, or, where
# this script killed QEMU or the server, what QEMU did then (a figure). Sets QRC; the console
# is $FL/NAME-console.txt.
boot() {
    local name=$1 kind=$2 t0 sc l why
    shift 2
    BOOT_NAME=$name
    phase "boot $name: $* ($USE_ACCEL, pool $HOST_POOL)"
    say "qemu-system-x86_64 -accel $TEST_ACCEL ${QEMU_ARGS[*]} -append '$CMDLINE swiotlb_faults=$kind swiotlb_faults_try=${BOOT_TRY:-1}' ${VIOMMU[*]} -device '$DEVJSON'"
    KILL_SENT=""
    T_KILL=""
    T_UBLK_FAILED=""
    T_IO_ERROR=""
    HOOK_OFF=0
    t0=$(now)
    QRC=0
    QEMU_HOOK=fault_hook run_qemu "$FL/$name-console.log" "$BOOT_TIMEOUT" "$TEST_ACCEL" \
        "$CMDLINE swiotlb_faults=$kind swiotlb_faults_try=${BOOT_TRY:-1}" "${VIOMMU[@]}" -device "$DEVJSON" || QRC=$?
    figure "boot-$name" seconds "$(secs "$t0" "$(now)")"
    tr -d '\r' <"$FL/$name-console.log" >"$FL/$name-console.txt"
    [ "$VERBOSE" = 1 ] && { step "guest console ($name)"; cat "$FL/$name-console.txt"; }
    # QEMU died under the guest after the server was gone (see attempt): nothing recorded.
    BOOT_ABORTED=0
    if [ "${RETRY_OK:-0}" = 1 ] && [ "$QRC" = 134 ] && [ -n "$KILL_SENT" ] &&
        ! grep -q '^SWIOTLB-E2E: BOOT-DONE' "$FL/$name-console.txt"; then
        BOOT_ABORTED=1
        return 0
    fi
    grep '^SWIOTLB-E2E: \(CHECK\|FIGURE\|UBLK-READY\|UBLK-STOPPED\|UBLK-FAILED\|IO-ERROR\|RECOVERY\|FAULT\|PASS\|FAIL\|BOOT-DONE\)' \
        "$FL/$name-console.txt" | cut -c1-400 | sed 's/^/   /' || true
    # The guest's checks and figures.
    while IFS= read -r l; do
        l=${l#SWIOTLB-E2E: CHECK }
        sc=${l%% *}
        l=${l#* }
        printf '%s\t%s\t%s\n' "$sc" "${l%% *}" "${l#* }" >>"$CHECKS"
    done < <(grep '^SWIOTLB-E2E: CHECK ' "$FL/$name-console.txt" || true)
    while IFS= read -r l; do
        l=${l#SWIOTLB-E2E: FIGURE }
        sc=${l%% *}
        jq -Rr --arg sc "$sc" '[scan("([A-Za-z0-9_]+)=(\"[^\"]*\"|[^ ]*)")] | .[] | [$sc, .[0], (.[1] | ltrimstr("\"") | rtrimstr("\""))] | @tsv' \
            <<<"${l#* }" >>"$FIGURES"
    done < <(grep '^SWIOTLB-E2E: FIGURE ' "$FL/$name-console.txt" || true)
    l=$(grep -E '^SWIOTLB-E2E: (PASS|FAIL)' "$FL/$name-console.txt" | tail -n1 || true)
    # QEMU's end where this script killed it, or killed the server under it.
    why=""
    if [ "$KILL_SENT" = QEMU ] && [ "$QRC" = 137 ]; then
        why="SIGKILLed by this script, as the guest asked"
    elif [ -n "$KILL_SENT" ] && [ "$QRC" = 134 ] && grep -q 'reboot: Power down' "$FL/$name-console.txt" &&
        grep -q 'hardware error: vfio: DMA mapping failed' "$FL/$name-console.txt"; then
        why="aborted after the guest powered off: with the server gone, resetting the machine unmaps the vIOMMU's mappings of the device through the dead vfio-user connection, which fails, and QEMU stops with \"hardware error: vfio: DMA mapping failed, unable to continue\" (exit 134)"
    fi
    if [ -n "$why" ]; then
        figure "$1" "qemu_exit_boot_$name" "$QRC: $why"
        say "   QEMU exit status $QRC: $why"
    fi
    for sc in "$@"; do
        case $QRC in
            0) ;;
            124) check "$sc" FAIL "boot $name: the guest did not power off within ${BOOT_TIMEOUT}s" ;;
            *) [ -n "$why" ] || check "$sc" FAIL "boot $name: QEMU exited with status $QRC" ;;
        esac
        [ "$KILL_SENT" = QEMU ] && continue # no result line: the guest was killed
        case $l in
            "SWIOTLB-E2E: PASS"*) ;;
            "SWIOTLB-E2E: FAIL"*) check "$sc" FAIL "boot $name: the guest stopped: ${l#SWIOTLB-E2E: FAIL }" ;;
            *) check "$sc" FAIL "boot $name: the guest printed no result line" ;;
        esac
    done
}

# attempt NAME KIND POOL SCENARIO...: a new host (one session) and a boot; when QEMU died
# under the guest after the server was signalled, before the guest finished (QEMU's vfio-user
# client sometimes fails an assertion when its server dies), the figure says so and the boot
# runs again as NAME-2, then NAME-3 (BOOT_TRIES in all), each on a new host on the same image
# with swiotlb_faults_try=N: its files go beside the earlier tries', and the next boot checks
# every try's manifest. The last try counts as any boot does. Sets ATTEMPT, the boot that
# counts.
BOOT_TRIES=3
attempt() {
    local base=$1 name=$1 kind=$2 pool=$3 why sc try=1 retry
    shift 3
    while :; do
        retry=0
        [ "$try" -lt "$BOOT_TRIES" ] && retry=1
        new_host "$name" "$pool" 1
        RETRY_OK=$retry BOOT_TRY=$try boot "$name" "$kind" "$@"
        wait_host 30
        [ "$BOOT_ABORTED" = 1 ] || break
        why=$(grep -a -m1 'Assertion' "$FL/$name-console.txt" || grep -a -m1 'hardware error' "$FL/$name-console.txt" ||
            grep -a '^qemu-system' "$FL/$name-console.txt" | tail -n1 || echo "no message")
        for sc in "$@"; do figure "$sc" "qemu_died_boot_$name" "exit $QRC after SIG$KILL_SENT, before the guest finished: $why"; done
        try=$((try + 1))
        say "   QEMU died under the guest (exit $QRC: $why): try $try of $BOOT_TRIES, on a new host on the same image"
        name=$base-$try
    done
    ATTEMPT=$name
}

# session_checks NAME SCENARIO [N]: the host's Nth session_end (default: the last): no
# finding, no DMA violation, no trapped pool access, SWIOTLB negotiated, attestation accepted.
session_checks() {
    local name=$1 sc=$2 n=${3:-0} s
    s=$(jq -c 'select(.event == "session_end")' "$FL/$name-host.stdout" 2>/dev/null |
        if [ "$n" = 0 ]; then tail -n1; else sed -n "${n}p"; fi || true)
    if [ -z "$s" ]; then
        check "$sc" FAIL "swiotlb-host ($name) printed no session_end${3:+ number $n}"
        return
    fi
    figure "$sc" "host_${name}_session${3:+_$n}" "$(jq -c '{ended, chains: .summary.chains, dma_descriptors: .summary.dma_descriptors, findings: .summary.findings, findings_by_kind: .summary.findings_by_kind, io_errors: .summary.device.io_errors, reads: .summary.device.reads, writes: .summary.device.writes, flushes: .summary.device.flushes, interrupts: .summary.interrupts}' <<<"$s")"
    if [ "$(jq -r '"\(.summary.findings) \(.summary.dma_violations) \(.summary.trapped_pool_accesses)"' <<<"$s")" = "0 0 0" ]; then
        check "$sc" ok "swiotlb-host ($name): session${3:+ $n} ended ($(jq -r .ended <<<"$s")) with 0 findings, 0 DMA violations, 0 trapped pool accesses over $(jq -r .summary.chains <<<"$s") chains"
    else
        check "$sc" FAIL "swiotlb-host ($name): findings $(jq -c '.summary.findings_by_kind' <<<"$s"), violations $(jq -r .summary.dma_violations <<<"$s"), trapped $(jq -r .summary.trapped_pool_accesses <<<"$s")"
    fi
    if jq -e '(.summary.negotiated | index("SWIOTLB")) and .summary.attestation_state == "accepted"' <<<"$s" >/dev/null; then
        check "$sc" ok "swiotlb-host ($name): VIRTIO_F_SWIOTLB negotiated, attestation accepted"
    else
        check "$sc" FAIL "swiotlb-host ($name): negotiated $(jq -c .summary.negotiated <<<"$s"), attestation $(jq -r .summary.attestation_state <<<"$s")"
    fi
}

# audit_verify NAME SCENARIO [--live]: swiotlb-audit verify on the host's log; sets AUDIT_OUT.
audit_verify() {
    local name=$1 sc=$2 live=${3:-} files
    mapfile -t files < <(find "$FL/$name-audit" -name '*.jsonl' | sort)
    if [ ${#files[@]} = 0 ]; then
        check "$sc" FAIL "swiotlb-host ($name) wrote no audit log"
        return 1
    fi
    AUDIT_RC=0
    AUDIT_OUT=$("$AUDIT_BIN" verify "${files[@]}" --key "$FL/$name-audit/device.key.pub" $live 2>&1) || AUDIT_RC=$?
    AUDIT_OUT=$(tr '\n' ' ' <<<"$AUDIT_OUT")
    figure "$sc" "audit_verify_${name}${live:+_live}" "exit $AUDIT_RC: $AUDIT_OUT"
    return "$AUDIT_RC"
}

# audit_events NAME: the messages of the host's audit records, one a line.
audit_events() { find "$FL/$1-audit" -name '*.jsonl' -print0 | sort -z | xargs -0 cat | jq -r '.message // empty' 2>/dev/null; }

# manifest_check SCENARIO WRITTEN_BY READ_BY: every MANIFEST line of boot WRITTEN_BY and its
# later tries if there were any (a file whose fsync and its directory's returned before the host
# was signalled, or after) has a FILE line with the same digest in boot READ_BY.
manifest_check() {
    local sc=$1 w=$2 r=$3 total good extra
    cat "$FL/$w-console.txt" "$FL/$w"-[0-9]-console.txt 2>/dev/null | grep '^SWIOTLB-E2E: MANIFEST ' | awk '{ print $3 " " $4 }' | LC_ALL=C sort -k2,2 >"$WORK/$w.manifest" || true
    # The files read back in the manifest's directories (the reader also reads other boots').
    grep '^SWIOTLB-E2E: FILE ' "$FL/$r-console.txt" | awk -v dirs="$(awk '{ sub("/[^/]*$", "", $2); print $2 }' "$WORK/$w.manifest" | sort -u)" '
        BEGIN { n = split(dirs, d, "\n"); for (i = 1; i <= n; i++) keep[d[i]] = 1 }
        { p = $4; sub("/[^/]*$", "", p); if (p in keep) print $3 " " $4 }' | LC_ALL=C sort -k2,2 >"$WORK/$r.files" || true
    total=$(wc -l <"$WORK/$w.manifest")
    good=$(LC_ALL=C join -1 2 -2 2 "$WORK/$w.manifest" "$WORK/$r.files" | awk '$2 == $3' | wc -l)
    # Files found that the manifest does not list: written, but their fsync never returned.
    extra=$(LC_ALL=C join -1 2 -2 2 -v 2 "$WORK/$w.manifest" "$WORK/$r.files" | wc -l)
    figure "$sc" manifest_files "$total"
    figure "$sc" manifest_files_intact_after_restart "$good"
    figure "$sc" files_found_not_in_manifest "$extra"
    if [ "$total" -gt 0 ] && [ "$good" = "$total" ]; then
        check "$sc" ok "after the restart every file of the manifest is intact, byte for byte (sha256): $good of $total"
    else
        check "$sc" FAIL "after the restart $good of $total files of the manifest are intact: $(LC_ALL=C join -1 2 -2 2 -a 1 "$WORK/$w.manifest" "$WORK/$r.files" | awk '$2 != $3' | head -n 3 | tr '\n' ';')"
    fi
}

# ---------------------------------------------------------------------------------------------
# in_order FILE PATTERN...: whether FILE has lines matching the PATTERNs (grep -E), in that
# order, each after the one before.
in_order() {
    local f=$1
    shift
    awk -v pats="$(printf '%s\n' "$@")" 'BEGIN { n = split(pats, p, "\n"); i = 1 }
        i <= n && $0 ~ p[i] { i++ } END { exit !(i > n) }' "$f"
}

# Boot 1: guest-killed, verified-soak, filesystem-churn, on a host of its own.
new_host soak "$POOL" 1
boot soak soak guest-killed verified-soak filesystem-churn
wait_host 10
[ "$HOST_RC" = 0 ] && check guest-killed ok "swiotlb-host (soak) exited 0 after QEMU's session" ||
    check guest-killed FAIL "swiotlb-host (soak) exited $HOST_RC"
session_checks soak guest-killed
if audit_verify soak guest-killed; then
    check guest-killed ok "swiotlb-audit verify (soak host): $AUDIT_OUT"
else
    check guest-killed FAIL "swiotlb-audit verify (soak host): $AUDIT_OUT"
fi
# The first server's death as the host saw it: nothing until the next server's driver reset
# the device (it writes 0 to device_status first; vfio-pci's release of the function makes no
# reset the host sees) and attested again; the audit log records both.
audit_events soak >"$WORK/soak.events"
figure guest-killed audit_events "$(grep -E 'reset|attestation|connect' "$WORK/soak.events" | uniq -c | sed 's/^ *//' | tr '\n' ';')"
if in_order "$WORK/soak.events" 'attestation passed' 'device reset: driver wrote 0' 'attestation passed'; then
    check guest-killed ok "the audit log records the first server's session, then the device reset by the next server's driver and a new attestation"
else
    check guest-killed FAIL "the audit log does not show an attestation, then a device reset and a new attestation"
fi
FSCK=$(e2fsck -fn "$DISK" 2>&1) && check filesystem-churn ok "host-side e2fsck -fn on the image after the churn: clean ($(tail -n1 <<<"$FSCK"))" ||
    check filesystem-churn FAIL "host-side e2fsck -fn on the image after the churn: $(tail -n 3 <<<"$FSCK" | tr '\n' ' ')"
figure filesystem-churn host_e2fsck "$(tail -n1 <<<"$FSCK")"
SOAK_FIO=$(awk '$1 == "SWIOTLB-E2E:" && $2 == "FIO-BEGIN" && $3 == "SOAK" { getline; print; exit }' "$FL/soak-console.txt")
[ -n "$SOAK_FIO" ] && jq -c '.' <<<"$SOAK_FIO" >"$FL/soak-fio.json" 2>/dev/null || true

# signal_checks SCENARIO SIGNAL: the host side's view of the guest asking for SIGNAL: sent,
# and the guest's failure and first I/O error lines, on this machine's clock.
signal_checks() {
    local sc=$1 sig=$2
    if [ "$KILL_SENT" != "$sig" ]; then
        check "$sc" FAIL "the guest never asked for SIG$sig (no FAULT-KILL-HOST $sig line)"
        return 1
    fi
    check "$sc" ok "swiotlb-host sent SIG$sig when the guest asked (exit status $HOST_RC)"
    [ -n "$T_UBLK_FAILED" ] && figure "$sc" host_clock_signal_to_server_failure_line_s "$(secs "$T_KILL" "$T_UBLK_FAILED")"
    [ -n "$T_IO_ERROR" ] && figure "$sc" host_clock_signal_to_first_io_error_line_s "$(secs "$T_KILL" "$T_IO_ERROR")"
    # The time the guest stood still meanwhile (its own measure, a FIGURE line).
    frozen=$(awk -F'\t' -v sc="$sc" '$1 == sc && $2 == "guest_frozen_ms" { v = $3 } END { print v + 0 }' "$FIGURES")
    if [ -n "$T_UBLK_FAILED" ] && awk -v a="$T_KILL" -v b="$T_UBLK_FAILED" -v t="$TIMEOUT_MS" -v f="$frozen" 'BEGIN { exit !(b - a <= (t + f) / 1000 + 2) }'; then
        check "$sc" ok "host clock: SIG$sig to the guest's \"the device failed\" line $(secs "$T_KILL" "$T_UBLK_FAILED") s (driver timeout $((TIMEOUT_MS / 1000)) s; guest frozen ${frozen} ms meanwhile; the guest looks every 0.1 s, this script every 0.1 s)"
    else
        check "$sc" FAIL "host clock: no \"the device failed\" line within the driver's timeout + the guest's frozen time ($frozen ms) + 2 s of SIG$sig (${T_UBLK_FAILED:+$(secs "$T_KILL" "$T_UBLK_FAILED") s})"
    fi
    # What QEMU printed once the server was gone (its own lines on the console).
    QEMU_SAID=$(sed -n '/^SWIOTLB-E2E: FAULT-KILL-HOST/,$p' "$FL/$BOOT_NAME-console.txt" | grep -a '^qemu' |
        sed 's/0x[0-9a-f]*/0x./g; s/[0-9]\{2,\}/N/g' | sort | uniq -c | sort -rn | sed 's/^ *//' | head -n 12 | tr '\n' ';' || true)
    figure "$sc" qemu_messages_after_signal "$QEMU_SAID"
}

# Boot 2: device-killed (SIGKILL), on a new host.
attempt kill kill "$POOL" device-killed
figure device-killed host_exit_status "$HOST_RC"
signal_checks device-killed KILL
# A killed writer leaves records after its last checkpoint and no stop record: an open log
# (swiotlb-audit verify says so, exit 3), which --live verification accepts: everything up to
# the cut is checked as usual.
audit_verify "$ATTEMPT" device-killed || true
if audit_verify "$ATTEMPT" device-killed --live; then
    check device-killed ok "swiotlb-audit verify --live on the killed host's log: intact up to the cut ($AUDIT_OUT)"
else
    check device-killed FAIL "swiotlb-audit verify --live on the killed host's log: exit $AUDIT_RC ($AUDIT_OUT)"
fi

# Boot 3: after the kill (journal, e2fsck, manifest), then device-stopped (SIGTERM), on a new host.
attempt stop stop "$POOL" device-killed device-stopped
manifest_check device-killed kill "$ATTEMPT"
figure device-stopped host_exit_status "$HOST_RC"
if signal_checks device-stopped TERM; then
    # The graceful stop: requests in flight completed, the image flushed, a final signed
    # checkpoint, exit 0.
    if [ "$HOST_RC" = 0 ]; then
        check device-stopped ok "swiotlb-host stopped on SIGTERM with exit status 0"
    else
        check device-stopped FAIL "swiotlb-host exit status on SIGTERM: $HOST_RC, not 0$([ "$HOST_RC" = 143 ] && echo ': killed by the signal (this host has no graceful stop on SIGTERM)')"
    fi
    if audit_verify "$ATTEMPT" device-stopped; then
        check device-stopped ok "swiotlb-audit verify after SIGTERM: intact ($AUDIT_OUT)"
    else
        check device-stopped FAIL "swiotlb-audit verify after SIGTERM: exit $AUDIT_RC, not intact ($AUDIT_OUT)"
        audit_verify "$ATTEMPT" device-stopped --live || true
    fi
    figure device-stopped host_last_events "$(jq -c 'select(.event != null) | {event, ended, signal}' "$FL/$ATTEMPT-host.stdout" 2>/dev/null | tail -n 3 | tr '\n' ' ')"
    # The orderly stop as the host reports it: the session ended "stopped", and every chain it
    # took was served (each served request is counted by its kind) without an I/O error.
    session_checks "$ATTEMPT" device-stopped
    s=$(jq -c 'select(.event == "session_end")' "$FL/$ATTEMPT-host.stdout" 2>/dev/null | tail -n1 || true)
    if jq -e '.ended == "stopped" and .summary.chains == (.summary.device | .reads + .writes + .flushes + .get_ids + .discards + .write_zeroes + .unsupported + .malformed) and .summary.device.io_errors == 0' <<<"$s" >/dev/null 2>&1; then
        check device-stopped ok "the host's session ended \"stopped\": every one of the $(jq -r .summary.chains <<<"$s") chains it took was served, 0 I/O errors"
    else
        check device-stopped FAIL "the host's last session: $(jq -c '{ended, chains: .summary.chains, device: .summary.device}' <<<"$s" 2>/dev/null || echo none)"
    fi
fi

# Boots 4 and 5, one host with a 1 MiB pool serving two sessions: QEMU SIGKILLed mid-I/O
# (guest-vm-killed), then a new QEMU: after the stop (journal, e2fsck, manifest), the pool as
# the new session finds it, and pool-exhaustion.
new_host small 1M 2
boot vmkill vmkill guest-vm-killed
if [ "$KILL_SENT" = QEMU ]; then
    check guest-vm-killed ok "QEMU SIGKILLed with fio writing through the pool (status $QRC)"
else
    check guest-vm-killed FAIL "the guest never asked for QEMU's kill (no FAULT-KILL-QEMU line)"
fi
for _ in $(seq 100); do
    jq -e 'select(.event == "session_end")' "$FL/small-host.stdout" >/dev/null 2>&1 && break
    sleep 0.1
done
if kill -0 "$HOST_PID" 2>/dev/null; then
    check guest-vm-killed ok "swiotlb-host still serves after the client's death ($(secs "$T_KILL" "$(now)") s after SIGKILL)"
else
    check guest-vm-killed FAIL "swiotlb-host ended with its client"
fi
session_checks small guest-vm-killed 1
boot exhaust exhaust guest-vm-killed device-stopped pool-exhaustion
wait_host 10
manifest_check device-stopped stop exhaust
[ "$HOST_RC" = 0 ] && check pool-exhaustion ok "swiotlb-host (1 MiB pool) exited 0 after its two sessions" ||
    check pool-exhaustion FAIL "swiotlb-host (1 MiB pool) exited $HOST_RC"
session_checks small pool-exhaustion 2
if audit_verify small pool-exhaustion; then
    check pool-exhaustion ok "swiotlb-audit verify (1 MiB pool host): $AUDIT_OUT"
    check guest-vm-killed ok "swiotlb-audit verify (1 MiB pool host, both sessions): intact"
else
    check pool-exhaustion FAIL "swiotlb-audit verify (1 MiB pool host): $AUDIT_OUT"
    check guest-vm-killed FAIL "swiotlb-audit verify (1 MiB pool host): $AUDIT_OUT"
fi
audit_events small >"$WORK/small.events"
figure guest-vm-killed audit_events "$(grep -E 'reset|attestation|connect' "$WORK/small.events" | uniq -c | sed 's/^ *//' | tr '\n' ';')"
if in_order "$WORK/small.events" 'driver connect' 'attestation passed' 'driver disconnect' 'device reset: function reset' 'driver connect' 'attestation passed' 'driver disconnect'; then
    check guest-vm-killed ok "the audit log records the killed client's disconnect, the function reset for the next session, and the next session attested"
else
    check guest-vm-killed FAIL "the audit log does not show connect, attestation, disconnect, function reset, connect, attestation, disconnect in that order"
fi
PX_FIO=$(awk '$1 == "SWIOTLB-E2E:" && $2 == "FIO-BEGIN" && $3 == "PX" { getline; print; exit }' "$FL/exhaust-console.txt")
[ -n "$PX_FIO" ] && jq -c '.' <<<"$PX_FIO" >"$FL/exhaust-fio.json" 2>/dev/null || true
# ---------------------------------------------------------------------------------------------
phase "final image"
IMG=$DISK
if FSCK=$(e2fsck -fn "$IMG" 2>&1); then
    check final-image ok "host-side e2fsck -fn on the final image: clean ($(tail -n1 <<<"$FSCK"))"
else
    check final-image FAIL "host-side e2fsck -fn on the final image: $(tail -n 3 <<<"$FSCK" | tr '\n' ' ')"
fi
figure final-image e2fsck "$(tail -n1 <<<"$FSCK")"
cat "$WORK/kill.manifest" "$WORK/stop.manifest" >"$WORK/all.manifest" 2>/dev/null || true
total=$(wc -l <"$WORK/all.manifest")
good=0
while read -r sum f; do
    got=$(debugfs -R "cat /$f" "$IMG" 2>/dev/null | sha256sum | cut -d' ' -f1)
    [ "$got" = "$sum" ] && good=$((good + 1))
done <"$WORK/all.manifest"
figure final-image manifest_files "$total"
figure final-image manifest_files_intact "$good"
if [ "$total" -gt 0 ] && [ "$good" = "$total" ]; then
    check final-image ok "host-side debugfs: every file of both manifests read back from the image with its digest ($good of $total)"
else
    check final-image FAIL "host-side debugfs: $good of $total files of the manifests intact"
fi

# ---------------------------------------------------------------------------------------------
phase "report"
describe() {
    case $1 in
        guest-killed) echo "The ublk server (swiotlb-guest ublk) SIGKILLed while fio did random 4 KiB reads and writes at QD32 on its disk; then a new server on the same device in the same boot. Host side: the session goes on (QEMU is the vfio-user client), the device is reset and attested again, the audit log records it, no finding." ;;
        verified-soak) echo "fio through the new server's disk with crc32c verification (verify_backlog): random 4 KiB writes at QD32 (verified) with random 4 KiB reads at QD32 over the same ${SOAK_RSPAN_MIB} MiB, and sequential 1 MiB writes at QD8 (verified) over the next ${SOAK_SSPAN_MIB} MiB, $SOAK_LOOPS passes each; the pool is $((POOL_BYTES >> 20)) MiB." ;;
        filesystem-churn) echo "ext4 on the first $FS_MIB MiB; $CHURN_WORKERS processes for $CHURN_SECONDS s each creating files of up to 300 KB, fsyncing, renaming, truncating, appending, fallocating and removing them; unmount, e2fsck -fn in the guest, and here on the image." ;;
        device-killed) echo "ext4 mounted, fio writing a file (4 KiB at QD32) and a manifest of fsynced files growing (each file fsynced, renamed, its directory fsynced, only then listed); at $MANIFEST_MIN files the guest asks and this script SIGKILLs swiotlb-host. Guest: errors within the driver's timeout ($TIMEOUT_MS ms), no D state, the disk deleted. Next boot, a new host on the same image: the journal replays, e2fsck -fn, every listed file intact." ;;
        device-stopped) echo "The same load on the restarted host, then SIGTERM to swiotlb-host: its graceful stop (requests in flight completed, image flushed, final signed audit checkpoint, exit 0), the guest seeing errors and no hang; next boot checks the journal, e2fsck and the manifest." ;;
        guest-vm-killed) echo "The whole guest killed: a host with a 1 MiB pool serving two sessions; fio writing through the ublk disk, then this script SIGKILLs QEMU (the vfio-user client). The host ends the session (disconnect in the audit log, no finding), keeps serving, and the next QEMU's session starts from a function reset: the new guest reads the pool through /dev/mem before any driver touches it and finds it zeroed." ;;
        pool-exhaustion) echo "The 1 MiB pool (the smallest) host's second session, the ublk server at depth 128: fio writes 1 MiB blocks at iodepth 128 over $PX_SPAN_MIB MiB of the raw tail past the filesystem, $PX_LOOPS pass(es), verified (crc32c); only back-pressure, no error." ;;
        final-image) echo "The image as the last host left it, kept as faults-disk.img: e2fsck -fn here, and every file of both manifests read with debugfs and its sha256 compared." ;;
        *) echo "" ;;
    esac
}
SCENARIOS=(guest-killed guest-vm-killed verified-soak filesystem-churn device-killed device-stopped pool-exhaustion final-image)
{
    for sc in "${SCENARIOS[@]}"; do
        jq -n --arg sc "$sc" --arg what "$(describe "$sc")" \
            --rawfile checks "$CHECKS" --rawfile figures "$FIGURES" '
            def rows(t): t | split("\n") | map(select(length > 0) | split("\t")) | map(select(.[0] == $sc));
            (rows($checks) | map({ok: (.[1] == "ok"), check: .[2]})) as $c
            | {scenario: $sc, done: $what,
               observed: (rows($figures) | map({key: .[1], value: (.[2] | (tonumber? // (fromjson? // .)))}) | from_entries),
               checks: $c,
               pass: (($c | length) > 0 and ($c | all(.ok)))}'
    done
} | jq -s --arg form "$FORM" --arg accel "$USE_ACCEL" --arg qemu "$QEMU_VERSION" --arg kernel "$KPKG_VERSION" \
    --argjson timeout "$TIMEOUT_MS" --rawfile figures "$FIGURES" --arg when "$(date -u +%Y-%m-%dT%H:%M:%SZ)" '
    {when: $when, form: $form, accelerator: $accel, qemu: $qemu, guest_kernel: $kernel, driver_timeout_ms: $timeout,
     boots: ($figures | split("\n") | map(select(startswith("boot-")) | split("\t")) | map({key: .[0], value: (.[2] | tonumber? // .)}) | from_entries),
     pass: all(.[]; .pass), scenarios: .}' >"$LOGS/faults.json" || die "writing faults.json failed"
jq -r '.scenarios[] | "   \(if .pass then "PASS" else "FAIL" end)  \(.scenario)"' "$LOGS/faults.json"
say "   recorded in $LOGS/faults.json; image: $LOGS/faults-disk.img; logs: $FL"
FAILED=$(awk -F'\t' '$2 != "ok"' "$CHECKS")
if [ -n "$FAILED" ]; then
    step "failed checks"
    awk -F'\t' '$2 != "ok" { print "   [" $1 "] " $3 }' "$CHECKS"
    die "$(wc -l <<<"$FAILED") check(s) failed (faults.json)"
fi
printf '\nqemu-faults: PASS (%s form): every scenario passed (faults.json)\n' "$FORM"
