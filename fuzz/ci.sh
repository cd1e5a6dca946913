#!/usr/bin/env bash
# The fuzz step of CI (.ci/run): builds every target in fuzz/ with cargo-fuzz
# on the stable toolchain (no sanitizer, debug assertions on) and runs each
# for a short bounded time from its committed seed corpus. A crash, a
# failed invariant, a timeout or a leak of memory fails the step; libFuzzer
# writes the input that did it under fuzz/artifacts/<target>/.
# docs/fuzzing.md says more.
#
#   fuzz/ci.sh                 # every target, WARD_FUZZ_SECONDS (15) each
#   fuzz/ci.sh policy_parse    # one target
#   fuzz/ci.sh --build-only    # build every target, run none (.ci/run builds
#                              # them in the background during the tests)
set -euo pipefail
cd "$(dirname "$0")"

CARGO_FUZZ_VERSION=0.13.2
SECONDS_PER_TARGET=${WARD_FUZZ_SECONDS:-15}
# The flags every build and run uses (a run with other flags rebuilds):
# the dev profile of fuzz/Cargo.toml (opt-level 1), which a fresh machine
# builds several times faster than cargo-fuzz's release build; long runs
# (docs/fuzzing.md) use release. Built outside the checkout, so a fresh
# clone on the same machine reuses it.
TARGET_DIR=${WARD_FUZZ_TARGET_DIR:-$HOME/.cache/ward-fuzz/target}
FLAGS=(--dev --sanitizer none --debug-assertions --target-dir "$TARGET_DIR")

if ! cargo fuzz --version 2>/dev/null | grep -qx "cargo-fuzz $CARGO_FUZZ_VERSION"; then
    echo "fuzz: installing cargo-fuzz $CARGO_FUZZ_VERSION"
    cargo install --locked "cargo-fuzz@$CARGO_FUZZ_VERSION"
fi

build_only=false
if [ "${1:-}" = "--build-only" ]; then
    build_only=true
    shift
fi
if (($#)); then
    targets=("$@")
else
    mapfile -t targets < <(cargo fuzz list)
fi

start=$SECONDS
cargo fuzz build "${FLAGS[@]}"
echo "fuzz: built ${#targets[@]} targets in $((SECONDS - start)) s"
$build_only && exit 0

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
for target in "${targets[@]}"; do
    echo "fuzz: $target for ${SECONDS_PER_TARGET} s"
    # New inputs go to a scratch directory; the committed seeds are read only.
    mkdir -p "$work/$target"
    log="$work/$target.log"
    if ! cargo fuzz run "${FLAGS[@]}" "$target" "$work/$target" "corpus/$target" -- \
        -max_total_time="$SECONDS_PER_TARGET" -timeout=10 -rss_limit_mb=2048 \
        -print_final_stats=1 >"$log" 2>&1; then
        tail -n 80 "$log"
        for input in "artifacts/$target"/*; do
            [ -f "$input" ] && echo "fuzz: input $input (base64): $(base64 -w0 "$input")"
        done
        echo "fuzz: $target FAILED; the input is under fuzz/artifacts/$target/"
        exit 1
    fi
    execs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log")
    rss=$(sed -n 's/^stat::peak_rss_mb: *//p' "$log")
    echo "fuzz: $target ok: ${execs:-?} executions, corpus $(ls "$work/$target" | wc -l) new + $(ls "corpus/$target" | wc -l) seeds, peak RSS ${rss:-?} MB"
done
echo "fuzz: ${#targets[@]} targets ran without a finding in $((SECONDS - start)) s"
