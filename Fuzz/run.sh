#!/usr/bin/env bash
# Builds the libFuzzer targets (ASan + coverage) and runs each for a while on its checked-in seed corpus.
#
#   Fuzz/run.sh [SECONDS_PER_TARGET] [TARGET...]      e.g. Fuzz/run.sh 3       (the test suite's short run)
#                                                         Fuzz/run.sh 3600 fuzz-link-machine
# FUZZ_CONFIG=release builds optimised (several times the executions per second; long runs).
# New inputs the fuzzer finds go to .build-fuzz/corpus/<target> (not checked in); a crash stops the run with the
# input saved as .build-fuzz/findings/<target>/crash-…; replay one with FUZZ_TRACE=1 .build-fuzz/debug/<target> FILE.
# Prints one line per target: executions, coverage, and the outcome; exits non-zero on any finding.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
root="$(dirname "$here")"
seconds=${1:-10}
shift || true
config=${FUZZ_CONFIG:-debug}
scratch="$root/.build-fuzz"
all=(fuzz-frame-scanner fuzz-startup-packet fuzz-scram fuzz-session-state fuzz-config fuzz-admin-command fuzz-link-machine fuzz-link-raw)
targets=("$@")
[ ${#targets[@]} -eq 0 ] && targets=("${all[@]}")

# The sanitizer runtime's symbols make the linker warn at length: kept out of the output, not out of the status.
set +e
(cd "$here" && swift build -c "$config" --scratch-path "$scratch" -Xswiftc -sanitize=fuzzer,address > "$scratch.log" 2>&1)
built=$?
set -e
grep -v -e "ld.gold: warning: Cannot export local symbol" -e "^\[" "$scratch.log" || true
[ $built -eq 0 ] || { echo "Fuzz/run.sh: the fuzz build failed" >&2; exit 1; }
bin="$scratch/$config"
# Swift's own crash backtracer cannot run under ASan; libFuzzer and ASan print the stack instead.
export SWIFT_BACKTRACE=enable=no ASAN_OPTIONS="${ASAN_OPTIONS:-detect_leaks=1}"
failed=0
printf '%-22s %12s %8s %8s  %s\n' target executions cov ft outcome
for target in "${targets[@]}"; do
    [ -x "$bin/$target" ] || { echo "$target: not built" >&2; failed=1; continue; }
    mkdir -p "$scratch/corpus/$target" "$scratch/findings/$target"
    log="$scratch/findings/$target/last-run.log"
    set +e
    # FUZZ_SEED fixes libFuzzer's seed (the test suite's short runs), so a run can be repeated.
    "$bin/$target" ${FUZZ_SEED:+-seed=$FUZZ_SEED} -max_total_time="$seconds" -max_len=4096 -timeout=10 -rss_limit_mb=3072 -print_final_stats=1 \
        -artifact_prefix="$scratch/findings/$target/" "$scratch/corpus/$target" "$here/Corpus/$target" >"$log" 2>&1
    status=$?
    set -e
    execs=$(grep -o 'stat::number_of_executed_units: [0-9]*' "$log" | awk '{print $2}')
    cov=$(grep -o 'cov: [0-9]*' "$log" | tail -1 | awk '{print $2}')
    ft=$(grep -o 'ft: [0-9]*' "$log" | tail -1 | awk '{print $2}')
    if [ $status -eq 0 ]; then
        outcome=ok
    else
        failed=1
        outcome="FOUND: $(grep -m1 -E 'Precondition failed|Fatal error|ERROR: (AddressSanitizer|LeakSanitizer|libFuzzer)' "$log" || echo "exit $status") — see $log"
    fi
    printf '%-22s %12s %8s %8s  %s\n' "$target" "${execs:-?}" "${cov:-?}" "${ft:-?}" "$outcome"
done
exit $failed
