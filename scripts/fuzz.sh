#!/usr/bin/env bash
# Builds the libFuzzer targets of tests/fuzz/ with clang (in build-fuzz/, every library
# instrumented with ASan + UBSan) and runs each one for SECONDS (default 30) over a copy of its
# seed corpus in tests/fuzz/corpus/<target>/, one target at a time. Prints each target's
# executions and result; exits non-zero if any target found a crash, a leak, a timeout or ran
# out of memory, after printing the input that reproduces it. Installs missing Debian packages
# (clang and its libFuzzer runtime too) first.
#
#   scripts/fuzz.sh [SECONDS_PER_TARGET]
#
# Environment: KVT_FUZZ_TARGETS="frame config" runs only those; KVT_FUZZ_JOBS (default 1)
# build jobs; KVT_FUZZ_ARGS extra libFuzzer flags for every target (e.g. "-seed=1").
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/deps.sh

seconds=${1:-30}
if ! [[ "$seconds" =~ ^[1-9][0-9]*$ ]]; then
  echo "usage: scripts/fuzz.sh [SECONDS_PER_TARGET]  (a whole number of seconds, default 30)" >&2
  exit 2
fi

# What this build needs (no Catch2 or Python), plus clang and its libFuzzer runtime.
# shellcheck disable=SC2034  # read by kvt_install_deps
KVT_PACKAGES=(cmake ninja-build g++ pkg-config libboost-dev liburing-dev libssl-dev
              libspdlog-dev libtomlplusplus-dev prometheus-cpp-dev clang libclang-rt-14-dev)
kvt_install_deps

build="build-fuzz"
cmake -S . -B "$build" -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo \
  -DCMAKE_C_COMPILER=clang -DCMAKE_CXX_COMPILER=clang++ -DKVT_FUZZ=ON -DKVT_WERROR=ON \
  -DKVT_BUILD_TESTS=OFF -DKVT_BUILD_BENCH=OFF -DKVTIER_WITH_CUDA=OFF >/dev/null
cmake --build "$build" -j "${KVT_FUZZ_JOBS:-1}" --target kvt_fuzzers kvt_fuzz_seeds

# The generated seeds should match the committed ones; a change of the wire or spill format
# makes them drift (still valid seeds, just less useful): say how to refresh them.
fresh=$(mktemp -d)
scratch=""
cleanup() { rm -rf "$fresh" ${scratch:+"$scratch"}; }
trap cleanup EXIT
"$build/tests/fuzz/kvt_fuzz_seeds" "$fresh"
# The corpus may hold more (regression inputs a fuzzer found); the generated seeds must match.
for t in frame spill; do
  stale=0
  for f in "$fresh/$t"/*; do
    cmp -s "$f" "tests/fuzz/corpus/$t/$(basename "$f")" || stale=1
  done
  if [ "$stale" -ne 0 ]; then
    echo "kvtier: note: tests/fuzz/corpus/$t differs from what kvt_fuzz_seeds writes now;" \
         "refresh with: $build/tests/fuzz/kvt_fuzz_seeds tests/fuzz/corpus" >&2
  fi
done

# Scratch files of the fuzzers (sockets, spill segments): on tmpfs where there is one.
if [ -d /dev/shm ] && [ -w /dev/shm ]; then
  scratch=$(mktemp -d /dev/shm/kvt-fuzz.XXXXXX)
else
  scratch=$(mktemp -d)
fi
export KVT_FUZZ_TMPDIR=$scratch
export UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1
# Largest input per target: a few frames; an HTTP head past its 8 KiB limit; a config page;
# a segment header and a few records.
declare -A max_len=([frame]=32768 [admin]=9000 [config]=16384 [spill]=32768 [snapshot]=16384)
targets=${KVT_FUZZ_TARGETS:-frame admin config spill snapshot}

runs="$build/fuzz-runs"
failed=0
summary=()
for t in $targets; do
  if [ -z "${max_len[$t]:-}" ]; then
    echo "kvtier: unknown fuzz target '$t' (frame, admin, config, spill, snapshot)" >&2
    exit 2
  fi
  dir="$runs/$t"
  rm -rf "$dir"
  mkdir -p "$dir"
  # libFuzzer adds what it finds to the first corpus directory: a copy, never the committed one.
  cp -r "tests/fuzz/corpus/$t" "$dir/corpus"
  echo "kvtier: fuzzing $t for ${seconds}s (log: $dir/log.txt)"
  rc=0
  # shellcheck disable=SC2086  # KVT_FUZZ_ARGS is a list of flags
  "$build/tests/fuzz/kvt_fuzz_$t" -max_total_time="$seconds" -max_len="${max_len[$t]}" \
    -timeout=25 -rss_limit_mb=4096 -print_final_stats=1 -artifact_prefix="$dir/" \
    ${KVT_FUZZ_ARGS:-} "$dir/corpus" >"$dir/log.txt" 2>&1 || rc=$?
  execs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$dir/log.txt" | tail -n 1)
  rate=$(sed -n 's/^stat::average_exec_per_sec: *//p' "$dir/log.txt" | tail -n 1)
  cov=$(grep -o 'cov: [0-9]*' "$dir/log.txt" | tail -n 1 || true)
  artifacts=$(find "$dir" -maxdepth 1 -type f \
    \( -name 'crash-*' -o -name 'leak-*' -o -name 'timeout-*' -o -name 'oom-*' \) | sort)
  if [ "$rc" -eq 0 ] && [ -z "$artifacts" ]; then
    result="ok"
  else
    failed=1
    result="FAILED (exit $rc)"
    echo "kvtier: $t failed; the end of its log:" >&2
    tail -n 40 "$dir/log.txt" >&2
    for a in $artifacts; do
      echo "kvtier: reproducer: $a" >&2
      echo "kvtier:   rerun with: $build/tests/fuzz/kvt_fuzz_$t $a" >&2
      echo "kvtier:   hex: $(od -An -v -tx1 -N 512 "$a" | tr -d ' \n')" >&2
    done
  fi
  summary+=("$(printf '%-7s %12s execs %8s exec/s  %-9s %s' "$t" "${execs:-?}" "${rate:-?}" \
    "${cov:-cov: ?}" "$result")")
done

echo "kvtier: fuzzing summary (${seconds}s per target):"
printf '  %s\n' "${summary[@]}"
if [ "$failed" -ne 0 ]; then
  echo "kvtier: fuzzing found problems; reproducers are listed above" >&2
  exit 1
fi
echo "kvtier: no fuzzer found a problem"
