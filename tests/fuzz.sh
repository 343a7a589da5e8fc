#!/usr/bin/env bash
# Runs every fuzz target (fuzz/, cargo-fuzz on the nightly toolchain, AddressSanitizer) for
# a bounded time each and fails on any crash, leak or timeout. The harnesses live in
# tests/src/fuzz/; the normal test run exercises them too.
#
#   tests/fuzz.sh [SECONDS_PER_TARGET]   (default 20; FUZZ_RUNS=N runs N inputs instead)
#
# Without the nightly toolchain nothing can be fuzzed: the script says so loudly and exits
# 0 only when FUZZ_OPTIONAL=1 (so a machine without nightly can still run the rest).
set -euo pipefail
cd "$(dirname "$0")/.."
secs="${1:-20}"

if ! cargo +nightly --version >/dev/null 2>&1; then
    echo "!! NOTE: the nightly toolchain is missing: the fuzz targets were NOT run" >&2
    [ "${FUZZ_OPTIONAL:-0}" = 1 ] && exit 0
    exit 1
fi
if ! cargo fuzz --version >/dev/null 2>&1; then
    echo "installing cargo-fuzz"
    cargo install cargo-fuzz --locked --quiet
fi
cargo +nightly --version
cargo fuzz --version

targets=$(cargo fuzz list --fuzz-dir fuzz)
echo "building the targets (AddressSanitizer)"
cargo +nightly fuzz build --fuzz-dir fuzz -O 2>&1 | grep -v '^\s*Compiling' || true

summary=()
for t in $targets; do
    corpus="fuzz/corpus/$t"
    mkdir -p "$corpus"
    # Seeds: the committed ones, and for the evidence targets the real reports and quotes
    # beside the checkout when they are there.
    [ -d "fuzz/seeds/$t" ] && cp -n fuzz/seeds/$t/* "$corpus/" 2>/dev/null || true
    vec=../shared/vectors
    case "$t" in
        snp_report)
            # A real report followed by its VCEK reaches the signature and chain checks.
            if [ -f "$vec/snp/virtee-sev/report_milan.hex" ]; then
                python3 -c 'import sys; sys.stdout.buffer.write(bytes.fromhex("".join(open(sys.argv[1]).read().split())) + open(sys.argv[2], "rb").read())' \
                    "$vec/snp/virtee-sev/report_milan.hex" "$vec/snp/virtee-sev/vcek_milan.der" >"$corpus/seed-virtee-milan" || true
            fi
            if [ -f "$vec/snp/go-sev-guest/attestation.bin" ]; then
                cat "$vec/snp/go-sev-guest/attestation.bin" "$vec/snp/go-sev-guest/vcek.der" >"$corpus/seed-go-sev-guest" || true
            fi ;;
        tdx_quote)
            for f in "$vec/tdx/trustee/tdx_quote_4.dat" "$vec/tdx/dcap-qvl/tdx_quote"; do
                [ -f "$f" ] && cp "$f" "$corpus/seed-$(basename "$(dirname "$f")")" || true
            done ;;
    esac
    if [ -n "${FUZZ_RUNS:-}" ]; then
        limit="-runs=$FUZZ_RUNS"
    else
        limit="-max_total_time=$secs"
    fi
    log="fuzz/artifacts/$t.log"
    mkdir -p fuzz/artifacts
    echo "== fuzz $t ($limit)"
    if ! cargo +nightly fuzz run --fuzz-dir fuzz -O "$t" "$corpus" -- \
        "$limit" -rss_limit_mb=4096 -timeout=10 -max_len=8192 -print_final_stats=1 \
        >"$log" 2>&1; then
        tail -60 "$log"
        echo "!! fuzz target $t FAILED: the crashing input is in fuzz/artifacts/$t/" >&2
        exit 1
    fi
    runs=$(grep -o 'stat::number_of_executed_units: *[0-9]*' "$log" | grep -o '[0-9]*$' | tail -1)
    cov=$(grep -o 'cov: [0-9]*' "$log" | tail -1)
    summary+=("$t: ${runs:-?} executions, ${cov:-cov: ?}, no crash")
done
echo
echo "== fuzz summary"
printf '   %s\n' "${summary[@]}"
