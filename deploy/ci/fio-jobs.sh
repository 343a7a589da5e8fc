# deploy/ci/fio-jobs.sh: the fio jobs the QEMU run puts to every disk it compares (ours
# through the ublk server, Linux's swiotlb=force bounce path, a virtio-blk disk with no bounce
# at all), sourced by the guest's /init (busybox sh). Same jobs, same options, one disk at a
# time: 4 KiB random read at QD1 and QD32, 4 KiB random write at QD32, 1 MiB sequential read
# and write, each time-based over the first FIO_SPAN of the disk, O_DIRECT, io_uring.
# Each job's JSON goes to the console between SWIOTLB-E2E FIO-BEGIN and FIO-END lines.
# Environment: FIO_RUNTIME (seconds per job, default 3), FIO_SPAN (default 64M).

run_fio_jobs() { # run_fio_jobs DEVICE LABEL
    dev=$1
    label=$2
    for job in randread-4k-qd1:randread:4k:1 randread-4k-qd32:randread:4k:32 \
        randwrite-4k-qd32:randwrite:4k:32 seqread-1m:read:1m:4 seqwrite-1m:write:1m:4; do
        name=${job%%:*}
        rest=${job#*:}
        rw=${rest%%:*}
        rest=${rest#*:}
        bs=${rest%%:*}
        qd=${rest#*:}
        out=/tmp/fio-$label-$name.json
        fio --name="$name" --filename="$dev" --rw="$rw" --bs="$bs" --iodepth="$qd" \
            --ioengine=io_uring --direct=1 --time_based --runtime="${FIO_RUNTIME:-3}" \
            --size="${FIO_SPAN:-64M}" --randrepeat=0 --norandommap --group_reporting \
            --output-format=json --output="$out" >/dev/null 2>/tmp/fio.err ||
            finish FAIL "fio $name on $dev ($label) failed: $(tail -n 2 /tmp/fio.err | tr '\n' ' ')"
        echo "SWIOTLB-E2E: FIO-BEGIN $label $name"
        tr -d '\n' <"$out"
        echo
        echo "SWIOTLB-E2E: FIO-END $label $name"
    done
}
