# deploy/ci/guest-faults.sh: the guest side of the fault scenarios (deploy/ci/qemu-faults.sh),
# sourced by that run's /init (busybox sh) once the function is bound to vfio-pci. The kernel
# command line says which boot this is (swiotlb_faults=soak|kill|stop|vmkill|exhaust); every boot
# serves the device as a ublk disk and does what a user of that disk does, while the host
# side does something to the device:
#   soak     the ublk server SIGKILLed mid-I/O and a new one started (guest-killed), verified
#            fio through the new one (verified-soak), ext4 under churn (filesystem-churn);
#   kill     ext4 with fio writing and a manifest of fsynced files growing, then the host
#            SIGKILLs swiotlb-host (device-killed): errors, not hangs, and a deletable disk;
#   stop     a new host on the same image: journal replayed, e2fsck, every listed file read;
#            then the same load and the host SIGTERMs swiotlb-host (device-stopped);
#   vmkill   a new host with a 1 MiB pool serving two sessions: fio writing to the raw tail
#            past the filesystem, then the host side SIGKILLs QEMU (guest-vm-killed);
#   exhaust  the same host's second session: the pool as the new session finds it (zeroed),
#            the same checks of what the stop left, then 1 MiB writes at queue depth 128
#            (pool-exhaustion).
# Needs from /init: say, finish, now_us (guest-lib.sh), $GV, and ublk_drv, ext4, mke2fs,
# e2fsck and fio. Prints SWIOTLB-E2E lines the host side reads:
#   CHECK <scenario> ok|FAIL <what>          one check, its outcome
#   FIGURE <scenario> <key>=<value>...       figures
#   FIO-BEGIN <label> <job> / FIO-END        fio's JSON between them
#   MANIFEST <sha256> <path>                 a file whose fsync (and its directory's) returned
#   FILE <sha256> <path>                     a listed file as read back after a restart
#   FAULT-KILL-HOST KILL|TERM                the host side: signal swiotlb-host now
#   FAULT-KILL-QEMU                          the host side: SIGKILL QEMU now
#   UBLK-FAILED <line>, IO-ERROR <who>       seen after the device went away
#   BOOT-DONE <boot>                         every step of this boot ran

MNT=/mnt/disk
SOAK=${SOAK:-soak}

check() { # check SCENARIO ok|FAIL WHAT...
    sc=$1
    st=$2
    shift 2
    say "CHECK $sc $st $*"
}
expect() { # expect SCENARIO WHAT COMMAND...: a check from COMMAND's status
    sc=$1
    what=$2
    shift 2
    if "$@"; then check "$sc" ok "$what"; else check "$sc" FAIL "$what"; fi
}
figure() { # figure SCENARIO KEY=VALUE...
    sc=$1
    shift
    say "FIGURE $sc $*"
}
ms_since() { echo $((($(now_us) - $1) / 1000)); }

# ublk_start NAME ARGS...: the ublk server in the background (stdout /tmp/NAME.out, stderr
# /tmp/NAME.err) until its ublk_ready line; sets UBLK_PID and UBLK_DEV (empty if it failed).
ublk_start() {
    name=$1
    shift
    echo "+ $GV --json ublk $*"
    $GV --json ublk "$@" >/tmp/$name.out 2>/tmp/$name.err &
    UBLK_PID=$!
    i=0
    while ! grep -q '"ublk_ready"' /tmp/$name.out 2>/dev/null && [ $i -lt 600 ]; do
        kill -0 $UBLK_PID 2>/dev/null || break
        sleep 0.1
        i=$((i + 1))
    done
    READY=$(grep '"ublk_ready"' /tmp/$name.out | head -n1)
    UBLK_DEV=$(echo "$READY" | sed -n 's/.*"device":"\([^"]*\)".*/\1/p')
    if [ -z "$UBLK_DEV" ]; then
        cat /tmp/$name.err
        return 1
    fi
    i=0
    while [ ! -b "$UBLK_DEV" ] && [ $i -lt 50 ]; do sleep 0.1; i=$((i + 1)); done
    say "UBLK-READY $name $READY"
    [ -b "$UBLK_DEV" ]
}

# ublk_stop NAME SECONDS: SIGTERM, then waits up to SECONDS; sets UBLK_RC ("hung" when it did
# not exit) and prints the server's stop line.
ublk_stop() {
    kill -TERM $UBLK_PID 2>/dev/null
    i=0
    while kill -0 $UBLK_PID 2>/dev/null && [ $i -lt $(($2 * 10)) ]; do sleep 0.1; i=$((i + 1)); done
    if kill -0 $UBLK_PID 2>/dev/null; then
        UBLK_RC=hung
    else
        wait $UBLK_PID
        UBLK_RC=$?
    fi
    say "UBLK-STOPPED $1 exit=$UBLK_RC $(grep -h '"ublk_stopped"\|"error"' /tmp/$1.out | tail -n1)"
}

# d_tasks: the tasks in uninterruptible sleep (state D) now, as pid:comm:wchan.
d_tasks() {
    for p in /proc/[0-9]*; do
        s=$(sed 's/.*) //' "$p/stat" 2>/dev/null | cut -d' ' -f1)
        [ "$s" = D ] && echo "${p#/proc/}:$(cat "$p/comm" 2>/dev/null):$(cat "$p/wchan" 2>/dev/null)"
    done
}
# stuck_tasks: the tasks in state D in two looks a second apart (a task waiting for I/O that
# completes passes through D; one left there stays).
stuck_tasks() {
    a=$(d_tasks)
    sleep 1
    b=$(d_tasks)
    for t in $a; do
        for u in $b; do [ "${t%%:*}" = "${u%%:*}" ] && echo "$u"; done
    done
}

print_fio() { # print_fio LABEL JOB FILE: fio's JSON on the console
    echo "SWIOTLB-E2E: FIO-BEGIN $1 $2"
    sed -n '/^{/,$p' "$3" | tr -d '\n'
    echo
    echo "SWIOTLB-E2E: FIO-END $1 $2"
}
# fio_num FILE JOB FIELD: a number from fio's JSON (FIELD like write.io_bytes), without jq.
fio_num() {
    sed -n '/^{/,$p' "$1" | tr -d '\n ' | awk -v job="$2" -v f="$3" '
        { s = $0; i = index(s, "\"jobname\":\"" job "\""); if (!i) exit; s = substr(s, i)
          split(f, p, "."); j = index(s, "\"" p[1] "\":{"); s = substr(s, j)
          if (p[2] == "") { match(s, /:[-0-9.e+]+/); print substr(s, RSTART + 1, RLENGTH - 1); exit }
          k = index(s, "\"" p[2] "\":"); s = substr(s, k + length(p[2]) + 3)
          match(s, /^[-0-9.e+]+/); print substr(s, RSTART, RLENGTH) }'
}
fio_err() { # fio_err FILE JOB: the job's error (errno; 0 none)
    sed -n '/^{/,$p' "$1" | tr -d '\n ' | awk -v job="$2" '
        { i = index($0, "\"jobname\":\"" job "\""); if (!i) exit; s = substr($0, i)
          j = index(s, "\"error\":"); s = substr(s, j + 8); match(s, /^[0-9]+/); print substr(s, RSTART, RLENGTH) }'
}

# pool_sample: the pool as the guest sees it: 256 eight-byte words, one every BAR2_SIZE/256
# bytes (with a 1 MiB pool, the first word of every 4 KiB), read through /dev/mem with
# busybox devmem (an mmap: the kernel allows it while vfio-pci has not claimed the range;
# read(2) of /dev/mem stops at the end of RAM). Prints "READ NONZERO": words read, and how
# many of them are not zero.
pool_sample() {
    read_ok=0
    nz=0
    k=0
    while [ $k -lt 256 ]; do
        v=$(devmem $((BAR2 + k * (BAR2_SIZE / 256))) 64 2>/dev/null) && read_ok=$((read_ok + 1))
        [ -n "$v" ] && [ "$((v))" != 0 ] && nz=$((nz + 1))
        k=$((k + 1))
    done
    echo "$read_ok $nz"
}

# ---------------------------------------------------------------------------------------------
# The manifest writer: files of 4 KiB to 1 MiB of random bytes under DIR, each written as
# NAME.tmp, fsynced, renamed to NAME, its directory fsynced; only then is its digest printed
# (MANIFEST). Runs until a step fails; writes how many it finished to /tmp/writer.n and the
# failing step to /tmp/writer.err.
manifest_writer() {
    dir=$1
    n=0
    mkdir -p "$dir" && sync "$dir" "$(dirname "$dir")" || { echo "mkdir $dir" >/tmp/writer.err; return 1; }
    while :; do
        f=$dir/f$n
        sz=$((4096 + (n * 7919 * 4096) % (1 << 20)))
        head -c $sz /dev/urandom >"$f.tmp" 2>/dev/null || { echo "write f$n" >/tmp/writer.err; break; }
        sum=$(sha256sum "$f.tmp" | cut -d' ' -f1)
        sync "$f.tmp" 2>/dev/null || { echo "fsync f$n.tmp" >/tmp/writer.err; break; }
        mv "$f.tmp" "$f" 2>/dev/null || { echo "rename f$n" >/tmp/writer.err; break; }
        sync "$dir" 2>/dev/null || { echo "fsync $dir after f$n" >/tmp/writer.err; break; }
        say "MANIFEST $sum ${f#$MNT/}"
        n=$((n + 1))
        echo $n >/tmp/writer.n.new && mv /tmp/writer.n.new /tmp/writer.n
    done
    echo $n >/tmp/writer.n.new && mv /tmp/writer.n.new /tmp/writer.n
    return 1
}

# device_gone SCENARIO SIGNAL DIR: the load (fio on a file, the manifest writer) on the
# mounted disk, the host side told to signal swiotlb-host, then what the guest sees: the
# server's failure line, the first I/O error, every task out of D state, a new request failing
# at once, the filesystem unmounted, the server stopped and the ublk device gone.
device_gone() {
    sc=$1
    sig=$2
    set -- "$1" "$2" "$3$TRY_SUFFIX"
    dir=$MNT/$3
    rm -f /tmp/writer.err
    echo 0 >/tmp/writer.n
    fio --name=load --filename="$MNT/$3.fio" --rw=randwrite --bs=4k --iodepth=32 --ioengine=io_uring \
        --direct=1 --size=16M --time_based --runtime=3600 --randrepeat=0 --output-format=json \
        --output=/tmp/$3-fio.json >/dev/null 2>/tmp/$3-fio.err &
    FIO_PID=$!
    manifest_writer "$dir" &
    WRITER_PID=$!
    # Until the manifest has WANT files and fio is writing.
    i=0
    while [ $i -lt 3000 ]; do
        n=$(cat /tmp/writer.n 2>/dev/null)
        [ "${n:-0}" -lt "${MANIFEST_MIN:-20}" ] || break
        kill -0 $WRITER_PID 2>/dev/null || break
        sleep 0.1
        i=$((i + 1))
    done
    listed=$(cat /tmp/writer.n 2>/dev/null)
    inflight=$(cat /sys/block/${UBLK_DEV##*/}/inflight | tr -s ' ' | sed 's/^ //')
    kill -0 $FIO_PID 2>/dev/null && fio_running=1 || fio_running=0
    expect "$sc" "the load runs when the device goes: fio writing, $listed files in the manifest, in flight (reads writes) $inflight" \
        [ "$fio_running" = 1 -a "${listed:-0}" -ge "${MANIFEST_MIN:-20}" ]
    # A ticker on the kernel's clock: a gap between its ticks is time the guest did not run.
    # QEMU freezes the vCPU whose register access waits for a reply from a server that has
    # died, until its reply timeout (docs/qemu-faults.md); the driver's timeout can only
    # count from when the guest runs again.
    ( while :; do read -r t _ </proc/uptime; echo "$t"; usleep 100000; done ) >/tmp/ticks &
    TICKER=$!
    T0=$(now_us)
    dmesg -c >/dev/null
    read -r up0 _ </proc/uptime
    say "FAULT-KILL-HOST $sig"
    # What the guest sees, looked at every 0.1 s until all three are in or the deadline.
    t_fail=""
    t_writer=""
    t_fio=""
    t_err=""
    limit=$((TIMEOUT_MS / 100 + 300))
    i=0
    while [ $i -lt $limit ]; do
        if [ -z "$t_fail" ] && grep -q 'the device failed' /tmp/ublk.err 2>/dev/null; then
            t_fail=$(ms_since $T0)
            say "UBLK-FAILED $(grep -m1 'the device failed' /tmp/ublk.err)"
        fi
        if [ -z "$t_writer" ] && ! kill -0 $WRITER_PID 2>/dev/null; then
            t_writer=$(ms_since $T0)
            [ -n "$t_err" ] || { t_err=$t_writer; say "IO-ERROR writer $(cat /tmp/writer.err 2>/dev/null)"; }
        fi
        if [ -z "$t_fio" ] && ! kill -0 $FIO_PID 2>/dev/null; then
            t_fio=$(ms_since $T0)
            [ -n "$t_err" ] || { t_err=$t_fio; say "IO-ERROR fio $(tail -n 1 /tmp/$3-fio.err)"; }
        fi
        [ -n "$t_fail" ] && [ -n "$t_writer" ] && [ -n "$t_fio" ] && break
        sleep 0.1
        i=$((i + 1))
    done
    wait $WRITER_PID
    wait $FIO_PID
    fio_rc=$?
    kill $TICKER
    files=$(cat /tmp/writer.n 2>/dev/null)
    # The kernel's first I/O error on the disk after the signal, on the kernel's clock (the
    # one /proc/uptime shows): the failure as the block layer saw it, free of the 0.1 s looks.
    kerr=$(dmesg | sed -n "s/^\[ *\([0-9.]*\)\] I\/O error, dev ${UBLK_DEV##*/},.*/\1/p" | head -n1)
    t_kerr=""
    [ -n "$kerr" ] && t_kerr=$(awk -v a="$up0" -v b="$kerr" 'BEGIN { printf "%d", (b - a) * 1000 }')
    # The longest the guest stood still between the signal and that error (beyond the ticker's
    # own 0.1 s), on the same clock.
    frozen=$(awk -v a="$up0" -v b="${kerr:-999999}" '$1 >= a && $1 <= b { if (p != "" && $1 - p > g) g = $1 - p; p = $1 }
        END { g = g * 1000 - 100; if (g < 0) g = 0; printf "%d", g }' /tmp/ticks)
    figure "$sc" "guest_frozen_ms=$frozen"
    figure "$sc" "signal=$sig timeout_ms=$TIMEOUT_MS signal_to_first_kernel_io_error_ms=${t_kerr:-none} signal_to_server_failure_ms=${t_fail:-none} signal_to_first_app_error_ms=${t_err:-none} signal_to_writer_end_ms=${t_writer:-none} signal_to_fio_end_ms=${t_fio:-none} manifest_files=$files manifest_at_signal=$listed fio_exit=$fio_rc fio_error=$(fio_err /tmp/$3-fio.json load) writer_failed_at=\"$(cat /tmp/writer.err 2>/dev/null)\""
    expect "$sc" "the disk's requests failed with an I/O error within the driver's timeout ($TIMEOUT_MS ms) of the request to signal the host, counting only time the guest ran: the kernel's first I/O error on ${UBLK_DEV##*/} ${t_kerr:-never} ms after it, the guest frozen for $frozen ms of that" \
        [ -n "$t_kerr" -a "${t_kerr:-999999}" -le $((TIMEOUT_MS + frozen + 1000)) ]
    expect "$sc" "the server gave the device up and said so (\"the device failed\"), seen ${t_fail:-never} ms after the request to signal the host (looked at every 0.1 s; the guest frozen for $frozen ms)" \
        [ -n "$t_fail" -a "${t_fail:-999999}" -le $((TIMEOUT_MS + frozen + 3000)) ]
    expect "$sc" "the manifest writer got an I/O error and ended (${t_writer:-never} ms after the signal; failed at: $(cat /tmp/writer.err 2>/dev/null))" \
        [ -n "$t_writer" -a -s /tmp/writer.err ]
    expect "$sc" "fio got an I/O error and ended (${t_fio:-never} ms after the signal; exit $fio_rc, error $(fio_err /tmp/$3-fio.json load))" \
        [ -n "$t_fio" -a "$fio_rc" != 0 ]
    # A request made now, after the failure: an error at once, not the timeout again.
    t=$(now_us)
    dd if="$UBLK_DEV" of=/dev/null bs=4096 count=1 skip=7 iflag=direct 2>/tmp/dd.err
    dd_rc=$?
    dd_ms=$(ms_since $t)
    expect "$sc" "a new read of the disk fails at once (exit $dd_rc in $dd_ms ms: $(tail -n1 /tmp/dd.err))" \
        [ $dd_rc != 0 -a $dd_ms -lt 2000 ]
    stuck=$(stuck_tasks | tr '\n' ' ')
    expect "$sc" "no task in uninterruptible sleep (D) $((($(now_us) - T0) / 1000)) ms after the signal${stuck:+: $stuck}" [ -z "$stuck" ]
    # The way out: unmount (the journal is aborted: ext4 made it read-only), stop the server.
    umount "$MNT" 2>/tmp/umount.err &
    U=$!
    i=0
    while kill -0 $U 2>/dev/null && [ $i -lt 300 ]; do sleep 0.1; i=$((i + 1)); done
    if kill -0 $U 2>/dev/null; then
        check "$sc" FAIL "umount $MNT did not return within 30 s (stuck: $(stuck_tasks | tr '\n' ' '))"
    else
        wait $U
        urc=$?
        expect "$sc" "umount $MNT returned (exit $urc in $((i * 100)) ms: $(tail -n 1 /tmp/umount.err))" [ $urc = 0 ]
    fi
    t=$(now_us)
    ublk_stop ublk 60
    stop_ms=$(ms_since $t)
    # Exit 1: the server says the device failed (its summary's failure).
    expect "$sc" "the server stopped on SIGTERM in $stop_ms ms (exit $UBLK_RC: 1 is \"the device failed\")" [ "$UBLK_RC" = 1 ]
    expect "$sc" "the ublk device was deleted: no $UBLK_DEV, no /dev/ublkc${UBLK_DEV#/dev/ublkb}" \
        [ ! -e "$UBLK_DEV" -a ! -e "/dev/ublkc${UBLK_DEV#/dev/ublkb}" ]
    stuck=$(stuck_tasks | tr '\n' ' ')
    expect "$sc" "no task in uninterruptible sleep after the server stopped${stuck:+: $stuck}" [ -z "$stuck" ]
    figure "$sc" "server_stop_ms=$stop_ms"
    dmesg | grep -iE 'ublk|EXT4-fs|I/O error|blocked for|hung_task|vfio' | tail -n 25 | while read -r l; do say "DMESG $l"; done
}

# after_restart SCENARIO DIRS...: the filesystem as the last boot left it: mounted (the journal
# replays), every file under DIRS (and DIR-2, DIR-3, later tries') read back (FILE lines, checked on the host side against the
# MANIFEST lines), unmounted, e2fsck -fn.
after_restart() {
    sc=$1
    shift
    dmesg -c >/dev/null
    mount -t ext4 "$UBLK_DEV" $MNT || { check "$sc" FAIL "mounting $UBLK_DEV after the restart failed"; return 1; }
    rec=$(dmesg | grep -E 'EXT4-fs.*(recovery|orphan|mounted)' | tr '\n' ';')
    say "RECOVERY $rec"
    case $rec in *'recovery complete'*) replayed=1 ;; *) replayed=0 ;; esac
    expect "$sc" "the journal replayed on mount (dmesg: $rec)" [ $replayed = 1 ]
    n=0
    for d in "$@"; do
        for f in $MNT/$d/* $MNT/$d-*/*; do
            [ -f "$f" ] || continue
            say "FILE $(sha256sum "$f" | cut -d' ' -f1) ${f#$MNT/}"
            n=$((n + 1))
        done
    done
    figure "$sc" "files_read_back=$n"
    umount $MNT || check "$sc" FAIL "umount after the read-back failed"
    FSCK=$(/usr/sbin/e2fsck -fn "$UBLK_DEV" 2>&1)
    frc=$?
    echo "$FSCK"
    expect "$sc" "e2fsck -fn after the restart: clean (exit $frc: $(echo "$FSCK" | tail -n1))" [ $frc = 0 ]
}

# ---------------------------------------------------------------------------------------------
for m in $(cat /lib/modules/load-ublk); do
    insmod "/lib/modules/$m.ko" 2>/dev/null || echo "note: insmod $m failed"
done
[ -c /dev/ublk-control ] || finish FAIL "no /dev/ublk-control after loading ublk_drv"
grep -qw ext4 /proc/filesystems || finish FAIL "no ext4 in /proc/filesystems after loading its modules"
mkdir -p $MNT
BOOT_KIND=$(sed -n 's/.*swiotlb_faults=\([a-z]*\).*/\1/p' /proc/cmdline)
# A later try of a boot (the host side's, when QEMU died under the one before) writes its
# files beside the earlier tries', which the next boot checks too.
TRY=$(sed -n 's/.*swiotlb_faults_try=\([0-9]*\).*/\1/p' /proc/cmdline)
TRY_SUFFIX=""
[ "${TRY:-1}" = 1 ] || TRY_SUFFIX=-$TRY

case $BOOT_KIND in
soak)
    # guest-killed: the server SIGKILLed with fio's requests in flight.
    sc=guest-killed
    ublk_start ublk-first || finish FAIL "the first ublk server did not start: $(tail -n 3 /tmp/ublk-first.err | tr '\n' ' ')"
    FIRST=$UBLK_DEV
    fio --name=gk --filename="$FIRST" --rw=randrw --bs=4k --iodepth=32 --ioengine=io_uring --direct=1 \
        --size=32M --time_based --runtime=600 --randrepeat=0 --output-format=json \
        --output=/tmp/gk.json >/dev/null 2>/tmp/gk.err &
    FIO_PID=$!
    sleep 3
    set -- $(cat /sys/block/${FIRST##*/}/stat)
    ios_before=$(($1 + $5))
    inflight=$(cat /sys/block/${FIRST##*/}/inflight | tr -s ' ' | sed 's/^ //')
    kill -0 $FIO_PID 2>/dev/null && fio_running=1 || fio_running=0
    expect $sc "fio was doing I/O on $FIRST when the server was killed ($ios_before requests done, in flight (reads writes) $inflight)" \
        [ $fio_running = 1 -a $ios_before -gt 0 ]
    T0=$(now_us)
    kill -KILL $UBLK_PID
    i=0
    while kill -0 $FIO_PID 2>/dev/null && [ $i -lt 600 ]; do sleep 0.1; i=$((i + 1)); done
    t_fio=$(ms_since $T0)
    if kill -0 $FIO_PID 2>/dev/null; then
        check $sc FAIL "fio did not end within 60 s of the server's death (stuck: $(stuck_tasks | tr '\n' ' '))"
        kill -KILL $FIO_PID
    fi
    wait $FIO_PID
    fio_rc=$?
    wait $UBLK_PID 2>/dev/null
    expect $sc "fio's requests failed with an I/O error once the server died: fio ended $t_fio ms after SIGKILL (exit $fio_rc, error $(fio_err /tmp/gk.json gk): $(tail -n 1 /tmp/gk.err))" \
        [ $fio_rc != 0 ]
    stuck=$(stuck_tasks | tr '\n' ' ')
    expect $sc "no task in uninterruptible sleep after the server's death${stuck:+: $stuck}" [ -z "$stuck" ]
    # What the kernel's ublk driver did with the device of a dead server (no recovery flags).
    i=0
    while [ -e "$FIRST" ] && [ $i -lt 100 ]; do sleep 0.1; i=$((i + 1)); done
    figure $sc "kill_to_fio_end_ms=$t_fio fio_error=$(fio_err /tmp/gk.json gk) requests_before_kill=$ios_before block_device_after_kill=$([ -e "$FIRST" ] && echo present || echo removed) char_device_after_kill=$([ -e "/dev/ublkc${FIRST#/dev/ublkb}" ] && echo present || echo removed)"
    # The dead server's ublk device, left behind by the kernel, deleted by the command for it.
    dead_id=${FIRST#/dev/ublkb}
    /swiotlb-guest ublk-delete --id "$dead_id" >/tmp/ublk-delete.out 2>&1
    del_rc=$?
    expect $sc "swiotlb-guest ublk-delete --id $dead_id removed the dead server's device (exit $del_rc: $(tail -n 1 /tmp/ublk-delete.out))" \
        [ $del_rc = 0 -a ! -e "/dev/ublkc$dead_id" ]
    say "GUEST-KILLED-DONE"
    # A new server on the same device, in the same boot: the device reset, attested again.
    ublk_start ublk || finish FAIL "a new ublk server after the first one's death did not start: $(tail -n 3 /tmp/ublk.err | tr '\n' ' ')"
    check $sc ok "a new ublk server serves the device after the first one's death ($UBLK_DEV: $READY)"
    live_id=${UBLK_DEV#/dev/ublkb}
    /swiotlb-guest ublk-delete --id "$live_id" >/tmp/ublk-delete.out 2>&1
    del_rc=$?
    kill -0 $UBLK_PID 2>/dev/null && alive=1 || alive=0
    expect $sc "ublk-delete refuses the device of a server that runs (exit $del_rc: $(tail -n 1 /tmp/ublk-delete.out)); the device and its server are still there" \
        [ $del_rc != 0 -a -e "$UBLK_DEV" -a $alive = 1 ]
    dd if="$UBLK_DEV" of=/dev/null bs=1M count=4 iflag=direct 2>/dev/null
    expect $sc "the new server's disk reads (4 MiB)" [ $? = 0 ]

    # verified-soak: fio with crc32c verification through the disk.
    sc=verified-soak
    cat >/tmp/soak.fio <<EOF
[global]
filename=$UBLK_DEV
ioengine=io_uring
direct=1
randrepeat=0
verify_fatal=1
loops=$SOAK_LOOPS
[randwrite]
rw=randwrite
bs=4k
iodepth=32
offset=0
size=$SOAK_RSPAN
verify=crc32c
verify_backlog=1024
[randread]
rw=randread
bs=4k
iodepth=32
offset=0
size=$SOAK_RSPAN
[seqwrite]
rw=write
bs=1M
iodepth=8
offset=$SOAK_RSPAN
size=$SOAK_SSPAN
verify=crc32c
verify_backlog=16
EOF
    cat /tmp/soak.fio
    t=$(now_us)
    fio --output-format=json --output=/tmp/soak.json /tmp/soak.fio >/dev/null 2>/tmp/soak.err
    frc=$?
    soak_ms=$(ms_since $t)
    print_fio SOAK all /tmp/soak.json
    w=$(($(fio_num /tmp/soak.json randwrite write.io_bytes) + $(fio_num /tmp/soak.json seqwrite write.io_bytes)))
    v=$(($(fio_num /tmp/soak.json randwrite read.io_bytes) + $(fio_num /tmp/soak.json seqwrite read.io_bytes)))
    figure $sc "seconds=$((soak_ms / 1000)) written_bytes=$w verified_bytes=$v random_read_bytes=$(fio_num /tmp/soak.json randread read.io_bytes) randwrite_iops=$(fio_num /tmp/soak.json randwrite write.iops) randread_iops=$(fio_num /tmp/soak.json randread read.iops) seqwrite_iops=$(fio_num /tmp/soak.json seqwrite write.iops) seqwrite_bw_kib_s=$(fio_num /tmp/soak.json seqwrite write.bw)"
    expect $sc "fio exited 0 with no job error (exit $frc: $(tail -n 2 /tmp/soak.err | tr '\n' ' '))" \
        [ $frc = 0 -a "$(fio_err /tmp/soak.json randwrite)$(fio_err /tmp/soak.json randread)$(fio_err /tmp/soak.json seqwrite)" = 000 ]
    expect $sc "every byte written was read back and verified (crc32c): written $w, verified $v" [ "$w" -gt 0 -a "$w" = "$v" ]

    # filesystem-churn: ext4 on the first FS_BYTES of the disk, several processes at once.
    sc=filesystem-churn
    /usr/sbin/mke2fs -q -t ext4 -F -L swiotlb-faults "$UBLK_DEV" $((FS_BYTES >> 10))k || finish FAIL "mkfs.ext4 $UBLK_DEV failed"
    mount -t ext4 "$UBLK_DEV" $MNT || finish FAIL "mounting $UBLK_DEV failed"
    churn() { # churn WORKER END_US: create, fsync, rename, truncate, append, remove until END_US
        d=$MNT/churn/w$1
        mkdir -p $d/a $d/b
        n=0
        while [ "$(now_us)" -lt "$2" ]; do
            f=$d/a/f$((n % 40))
            head -c $(((n * 2654435761) % 300000 + 1)) /dev/urandom >$f.new || break
            sync $f.new || break
            mv $f.new $f || break
            case $((n % 6)) in
                0) truncate -s $(((n % 9) * 4096 + 17)) $f ;;
                1) rm -f $d/a/f$(((n + 20) % 40)) ;;
                2) echo "$n" >>$f && sync $f ;;
                3) mv $f $d/b/g$((n % 13)) ;;
                4) rm -rf $d/b && mkdir -p $d/b ;;
                5) fallocate -l $(((n % 5 + 1) * 65536)) $d/a/p$((n % 4)) 2>/dev/null; truncate -s 0 $d/a/p$(((n + 1) % 4)) 2>/dev/null ;;
            esac || break
            n=$((n + 1))
        done
        echo $n >/tmp/churn.$1
    }
    end=$(($(now_us) + CHURN_SECONDS * 1000000))
    pids=""
    for w in $(seq $CHURN_WORKERS); do
        : >/tmp/churn.$w
        churn $w $end &
        pids="$pids $!"
    done
    for p in $pids; do wait $p; done
    ops=0
    per=""
    for w in $(seq $CHURN_WORKERS); do
        c=$(cat /tmp/churn.$w)
        per="$per${per:+,}${c:-0}"
        ops=$((ops + ${c:-0}))
    done
    nfiles=$(find $MNT/churn -type f | wc -l)
    sync
    umount $MNT || check $sc FAIL "umount after the churn failed"
    FSCK=$(/usr/sbin/e2fsck -fn "$UBLK_DEV" 2>&1)
    frc=$?
    echo "$FSCK"
    figure $sc "workers=$CHURN_WORKERS seconds=$CHURN_SECONDS rounds=$ops rounds_per_worker=$per files_left=$nfiles e2fsck=\"$(echo "$FSCK" | tail -n1)\""
    allran=1
    for c in $(echo "$per" | tr , ' '); do [ "$c" -gt 0 ] || allran=0; done
    expect $sc "every worker ran for the whole time (rounds per worker: $per)" [ $allran = 1 ]
    expect $sc "e2fsck -fn in the guest: clean (exit $frc)" [ $frc = 0 ]
    ublk_stop ublk 60
    expect $sc "the server stopped on SIGTERM (exit $UBLK_RC) and removed $UBLK_DEV" [ "$UBLK_RC" = 0 -a ! -e "$UBLK_DEV" ]
    ;;
kill)
    ublk_start ublk --id 0 || finish FAIL "the ublk server did not start: $(tail -n 3 /tmp/ublk.err | tr '\n' ' ')"
    mount -t ext4 "$UBLK_DEV" $MNT || finish FAIL "mounting $UBLK_DEV failed"
    device_gone device-killed KILL killed
    ;;
stop)
    ublk_start ublk --id 0 || finish FAIL "the ublk server did not start on the new host: $(tail -n 3 /tmp/ublk.err | tr '\n' ' ')"
    after_restart device-killed killed
    mount -t ext4 "$UBLK_DEV" $MNT || finish FAIL "mounting $UBLK_DEV failed"
    device_gone device-stopped TERM stopped
    ;;
vmkill)
    sc=guest-vm-killed
    ublk_start ublk --id 0 || finish FAIL "the ublk server did not start on the 1 MiB pool: $(tail -n 3 /tmp/ublk.err | tr '\n' ' ')"
    fio --name=vk --filename="$UBLK_DEV" --rw=randwrite --bs=64k --iodepth=32 --ioengine=io_uring --direct=1 \
        --offset=$FS_BYTES --size=32M --time_based --runtime=600 --randrepeat=0 >/dev/null 2>/tmp/vk.err &
    sleep 3
    set -- $(pool_sample)
    pread=$1
    pnz=$2
    set -- $(cat /sys/block/${UBLK_DEV##*/}/stat)
    figure $sc "requests_before_kill=$(($1 + $5)) pool_words_sampled=$pread pool_nonzero_words_before_kill=$pnz"
    expect $sc "fio was writing through the pool when QEMU was killed ($(($1 + $5)) requests done; $pnz of $pread sampled pool words not zero)" [ $(($1 + $5)) -gt 0 -a "${pnz:-0}" -gt 0 ]
    say "FAULT-KILL-QEMU"
    sleep 600
    finish FAIL "QEMU was not killed"
    ;;
exhaust)
    # The pool as this session finds it, before any driver of this boot touched it: the host
    # reset the function for the new session and zeroed the pool the killed VM left in use.
    set -- $(pool_sample)
    figure guest-vm-killed "new_session_pool_words_sampled=$1 new_session_pool_nonzero_words=$2"
    expect guest-vm-killed "the next session's pool is zeroed: $2 of $1 sampled words not zero" [ "${1:-0}" = 256 -a "${2:-1}" = 0 ]
    ublk_start ublk --id 0 --depth 128 || finish FAIL "the ublk server did not start on the 1 MiB pool: $(tail -n 3 /tmp/ublk.err | tr '\n' ' ')"
    after_restart device-stopped killed stopped
    sc=pool-exhaustion
    Q=/sys/block/${UBLK_DEV##*/}
    figure $sc "ublk_depth=$(echo "$READY" | sed -n 's/.*"depth":\([0-9]*\).*/\1/p') pool_size=$(echo "$READY" | sed -n 's/.*"pool_size":\([0-9]*\).*/\1/p') max_sectors_kb=$(cat $Q/queue/max_sectors_kb) nr_requests=$(cat $Q/queue/nr_requests)"
    set -- $(cat $Q/stat)
    w0=$5
    ws0=$7
    # Sample the requests in flight while fio runs: the depth the disk really reached.
    ( peak=0
      while :; do
          set -- $(cat $Q/inflight)
          [ $(($1 + $2)) -gt $peak ] && peak=$(($1 + $2)) && echo $peak >/tmp/px.peak
          sleep 0.05
      done ) &
    SAMPLER=$!
    t=$(now_us)
    fio --name=px --filename="$UBLK_DEV" --rw=write --bs=1M --iodepth=128 --iodepth_batch_submit=128 \
        --ioengine=io_uring --direct=1 --offset=$FS_BYTES --size=$PX_SPAN --loops=$PX_LOOPS \
        --verify=crc32c --verify_backlog=128 --verify_fatal=1 --randrepeat=0 \
        --output-format=json --output=/tmp/px.json >/dev/null 2>/tmp/px.err
    frc=$?
    px_ms=$(ms_since $t)
    kill $SAMPLER
    print_fio PX px /tmp/px.json
    set -- $(cat $Q/stat)
    writes=$(($5 - w0))
    wsec=$(($7 - ws0))
    [ $writes -gt 0 ] || writes=1
    ublk_stop ublk 60
    S=$(grep -h '"ublk_stopped"' /tmp/ublk.out | tail -n1)
    num() { echo "$S" | sed -n "s/.*\"$1\":\([0-9]*\).*/\1/p" | head -n1; }
    figure $sc "seconds=$((px_ms / 1000)) written_bytes=$(fio_num /tmp/px.json px write.io_bytes) verified_bytes=$(fio_num /tmp/px.json px read.io_bytes) write_bw_kib_s=$(fio_num /tmp/px.json px write.bw) write_iops=$(fio_num /tmp/px.json px write.iops) verify_read_bw_kib_s=$(fio_num /tmp/px.json px read.bw) block_writes=$writes avg_write_kib=$((wsec / 2 / writes)) peak_in_flight=$(cat /tmp/px.peak 2>/dev/null || echo 0) server_parts=$(num parts) server_waits_for_room=$(num waits_for_room) server_errors=$(num errors)"
    expect $sc "fio: 1 MiB writes at depth 128 on the 1 MiB pool, verified, with no error (exit $frc, error $(fio_err /tmp/px.json px): $(tail -n 2 /tmp/px.err | tr '\n' ' '))" \
        [ $frc = 0 -a "$(fio_err /tmp/px.json px)" = 0 ]
    expect $sc "the requests reached the server as 1 MiB writes (average $((wsec / 2 / writes)) KiB over $writes)" [ $((wsec / 2 / writes)) -ge 1000 ]
    expect $sc "requests waited for room in the pool: back-pressure (waits_for_room $(num waits_for_room), peak in flight $(cat /tmp/px.peak 2>/dev/null))" [ "$(num waits_for_room)" -gt 0 ]
    expect $sc "the server completed every request without an error (errors $(num errors), exit $UBLK_RC)" [ "$(num errors)" = 0 -a "$UBLK_RC" = 0 ]
    ;;
*) finish FAIL "unknown swiotlb_faults boot '$BOOT_KIND'" ;;
esac
say "BOOT-DONE $BOOT_KIND"
