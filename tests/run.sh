#!/usr/bin/env bash
# The project's test command (CI runs exactly this through .ci/run): formatting, lints,
# then every unit, integration and end-to-end test of the workspace.
set -euo pipefail
cd "$(dirname "$0")/.."

step() { printf '\n== %s\n' "$*"; }

step "toolchain"
cargo --version
rustc --version

step "cargo fmt --check"
cargo fmt --all -- --check

step "cargo clippy (warnings are errors)"
cargo clippy --workspace --all-targets --quiet -- -D warnings

step "tools the tests use beyond cargo"
# systemd-analyze verifies the deploy units and resolves their system-call filter
# (tests/tests/deploy_unit.rs); without it those checks are skipped with a NOTE.
if ! command -v systemd-analyze >/dev/null 2>&1; then
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
        echo "installing systemd (for systemd-analyze)"
        (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq systemd >/dev/null) \
            || echo "NOTE: could not install systemd; the unit checks will be skipped"
    else
        echo "NOTE: systemd-analyze is missing; the unit checks will be skipped"
    fi
fi
command -v systemd-analyze >/dev/null 2>&1 && systemd-analyze --version | head -1

# The audit records are checked against the official OCSF schema (tests/ocsf/validate.py:
# the OCSF project's schema exports in the ocsf-json-schema package, checked with
# jsonschema), from a venv under the target directory with both pinned; the rsyslog
# configuration in deploy/rsyslog runs in a real rsyslogd (tests/tests/ocsf_schema.rs,
# siem_feed.rs). The tests fail without either, as this script demands both.
apt_install() {
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
        echo "installing $*"
        (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@" >/dev/null) \
            || echo "NOTE: could not install $*"
    else
        echo "NOTE: $* missing and cannot be installed here (not root, or no apt-get)"
    fi
}
if ! python3 -c 'import venv, ensurepip' >/dev/null 2>&1; then
    apt_install python3-venv
fi
OCSF_VENV="$(pwd)/${CARGO_TARGET_DIR:-target}/ocsf-venv"
case "${CARGO_TARGET_DIR:-}" in /*) OCSF_VENV="$CARGO_TARGET_DIR/ocsf-venv" ;; esac
{ [ -x "$OCSF_VENV/bin/python" ] || python3 -m venv "$OCSF_VENV"; } \
    && "$OCSF_VENV/bin/pip" install -q --disable-pip-version-check ocsf-json-schema==1.2.0 jsonschema==4.26.0 \
    && "$OCSF_VENV/bin/python" -c 'import ocsf_json_schema, jsonschema; print("OCSF schema checker ready")' \
    || echo "NOTE: the OCSF schema checker could not be set up in $OCSF_VENV: the OCSF tests will fail"
export SWIOTLB_OCSF_PYTHON="$OCSF_VENV/bin/python"
export SWIOTLB_REQUIRE_OCSF_CHECK=1
if ! command -v rsyslogd >/dev/null 2>&1 && [ ! -x /usr/sbin/rsyslogd ]; then
    apt_install rsyslog
fi
export SWIOTLB_REQUIRE_RSYSLOG=1
RSYSLOGD="$(command -v rsyslogd || echo /usr/sbin/rsyslogd)"
"$RSYSLOGD" -v 2>/dev/null | head -1 || echo "NOTE: rsyslogd is missing: the rsyslog test will fail"

step "build the binaries the end-to-end tests run"
cargo build --workspace --bins --quiet

step "cargo test"
cargo test --workspace --quiet

step "tests NOT run here (ignored: they need hardware, or they are measurements)"
cargo test --workspace --quiet -- --ignored --list 2>/dev/null | grep ': test$' || echo "(none)"

step "QEMU end-to-end: a stock Linux guest drives swiotlb-host through QEMU's vfio-user client (TCG)"
deploy/ci/qemu-e2e.sh

step "QEMU fault scenarios, short form (docs/qemu-faults.md): verified fio soak, ext4 churn, the device process SIGKILLed and SIGTERMed mid-write, the ublk server and QEMU SIGKILLed, a 1 MiB pool at depth 128; the long form is deploy/ci/qemu-faults.sh --long"
deploy/ci/qemu-faults.sh

step "fuzz every target for a bounded time (fails on any crash; needs nightly, says so loudly if it is missing)"
FUZZ_OPTIONAL=1 tests/fuzz.sh "${FUZZ_SECONDS:-20}"

step "micro-benchmarks, short mode (figures only, never a pass/fail; BENCHMARKS.md): slot allocator and bounce copies, per-descriptor audit check, transcript hashing, evidence verification"
cargo bench --quiet -p swiotlb-guest --bench pool -- --quick
cargo bench --quiet -p swiotlb-host --bench audit_check -- --quick
cargo bench --quiet -p swiotlb-shared --bench transcript -- --quick
cargo bench --quiet -p swiotlb-attest --bench evidence -- --quick

step "demo (release build)"
./deploy/demo.sh

step "end-to-end benchmark, short mode (figures only, never a pass/fail; BENCHMARKS.md): host and guest processes, polling and interrupt notification, audit off/summary/full, against a shared-memory ping-pong, an eventfd round trip, memcpy and the image's pread in the same run"
"${CARGO_TARGET_DIR:-target}/release/swiotlb-bench" --quick
