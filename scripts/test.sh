#!/usr/bin/env bash
# Builds kvtier and runs every test: first a normal build (build/), then the whole suite again
# under AddressSanitizer + UndefinedBehaviorSanitizer (build-asan/) and under ThreadSanitizer
# with clang (build-tsan/). `--fast` skips the sanitizer passes. Installs missing Debian
# packages first. Exit status 0 only if all pass.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/deps.sh
kvt_install_deps

# Catch2's ctest discovery cuts a test name at ';' and then runs a filter that matches nothing,
# which ctest reports as passed: refuse such names.
if grep -rn --include='*_test.cc' -E '(TEST_CASE|SCENARIO)\("[^"]*;' tests; then
  echo "kvtier: a test name above contains ';', which ctest would never run" >&2
  exit 1
fi

jobs=$(nproc)
# Each integration test starts a daemon with a 64-512 MiB pre-faulted pool: cap parallelism so
# a many-core runner with a memory limit is not overcommitted.
test_jobs=$(( jobs < 4 ? jobs : 4 ))
run_suite() {  # build_dir, extra cmake args...
  local dir=$1; shift
  cmake -S . -B "$dir" -G Ninja -DKVT_WERROR=ON "$@" >/dev/null
  cmake --build "$dir" -j "$jobs"
  (cd "$dir" && ctest --output-on-failure -j "$test_jobs" --timeout 600)
}

run_suite build -DCMAKE_BUILD_TYPE=RelWithDebInfo
# The Python package and llama.cpp end to end, against that build's kvtierd and libkvclient.
scripts/python-test.sh build
# The GPU path is optional: the daemon and the client library must also build without it (the
# suite above used the CUDA toolkit if it is installed).
cmake -S . -B build-nocuda -G Ninja -DKVT_WERROR=ON -DKVTIER_WITH_CUDA=OFF -DKVT_BUILD_TESTS=OFF \
  -DKVT_BUILD_BENCH=OFF >/dev/null
cmake --build build-nocuda -j "$jobs" --target kvtierd kvtierctl kvclient kvclient_static
if [ "${1:-}" != "--fast" ]; then
  ASAN_OPTIONS=detect_leaks=1:abort_on_error=1 UBSAN_OPTIONS=print_stacktrace=1 \
    run_suite build-asan -DCMAKE_BUILD_TYPE=Debug -DKVT_SANITIZE=address,undefined
  # ThreadSanitizer, built with clang: this is also the clang build, whose -Wthread-safety (an
  # error with KVT_WERROR) checks every KVT_GUARDED_BY / KVT_REQUIRES annotation. A data race in
  # a test or in a kvtierd it starts fails that test (TSan's exit status 66).
  TSAN_OPTIONS=halt_on_error=1:second_deadlock_stack=1 \
    run_suite build-tsan -DCMAKE_BUILD_TYPE=RelWithDebInfo -DKVT_SANITIZE=thread \
      -DCMAKE_C_COMPILER=clang -DCMAKE_CXX_COMPILER=clang++ -DKVT_BUILD_BENCH=OFF
fi
echo "kvtier: all tests passed"
