#!/usr/bin/env bash
# Sets up the Python side in a virtual environment under the build directory (default build/):
# the test tools, llama-cpp-python (built from source once per machine: its wheel is cached in
# $KVTIER_WHEEL_CACHE, default ~/.cache/kvtier/wheels, keyed by version, Python and CPU), and
# `pip install ./python`. A download that fails stops here with the reason: nothing is skipped.
#   scripts/python-env.sh [BUILD_DIR]      prints the venv's python on its last line
set -euo pipefail
cd "$(dirname "$0")/.."
build=${1:-build}
mkdir -p "$build"
venv="$(cd "$build" && pwd)/venv"

# Versions the tests were written against (llama.cpp's state layout is version-specific).
LLAMA_CPP_PYTHON=0.3.36
LLAMA_CPP_DEPS=(typing-extensions==4.16.0 diskcache==5.6.3 jinja2==3.1.6 MarkupSafe==3.0.4)
LLAMA_CMAKE_ARGS="-DLLAVA_BUILD=OFF -DLLAMA_CURL=OFF"
PY_TEST_DEPS=(numpy==2.4.6 pytest==9.2.0 gguf==0.19.0)

fail() { echo "kvtier: $*" >&2; exit 1; }

command -v python3 >/dev/null || fail "python3 is missing (apt-get install python3 python3-venv)"
if [ ! -x "$venv/bin/python" ]; then
  python3 -m venv "$venv" || fail "python3 -m venv failed (apt-get install python3-venv)"
fi
py="$venv/bin/python"
"$py" -m pip install -q "${PY_TEST_DEPS[@]}" "${LLAMA_CPP_DEPS[@]}" ||
  fail "pip could not install ${PY_TEST_DEPS[*]} ${LLAMA_CPP_DEPS[*]} from PyPI (network?); the Python tests need them"

have_llama() {
  "$py" -c "import llama_cpp, sys; sys.exit(llama_cpp.__version__ != '$LLAMA_CPP_PYTHON')" 2>/dev/null
}
if ! have_llama; then
  # llama.cpp is compiled for this CPU (GGML_NATIVE): the cache key holds the CPU's vector
  # extensions (not every flag: some differ between hosts of one instance type), the build
  # flags, the Python version and the architecture.
  isa=$( (grep -m1 -E '^(flags|Features)' /proc/cpuinfo || true) | tr ' ' '\n' |
         (grep -E '^(sse|ssse|avx|fma|f16c|bmi|amx|vnni|asimd|sve|fp16|dotprod|i8mm)' || true) |
         sort -u | tr '\n' ' ')
  key=$(printf '%s|%s' "$isa" "$LLAMA_CMAKE_ARGS" | md5sum | cut -c1-12)
  pytag=$("$py" -c 'import sys; print(f"cp{sys.version_info[0]}{sys.version_info[1]}")')
  cache="${KVTIER_WHEEL_CACHE:-$HOME/.cache/kvtier/wheels}/llama-cpp-python-$LLAMA_CPP_PYTHON-$pytag-$(uname -m)-$key"
  if ! ls "$cache"/llama_cpp_python-*.whl >/dev/null 2>&1; then
    echo "kvtier: building llama-cpp-python $LLAMA_CPP_PYTHON from source (about 10 minutes on 2 cores; cached in $cache)" >&2
    mkdir -p "$cache.tmp"
    CMAKE_ARGS="$LLAMA_CMAKE_ARGS" CMAKE_BUILD_PARALLEL_LEVEL=$(nproc) \
      "$py" -m pip wheel -q --no-deps --no-binary llama-cpp-python -w "$cache.tmp" \
      "llama-cpp-python==$LLAMA_CPP_PYTHON" ||
      fail "could not download or build llama-cpp-python $LLAMA_CPP_PYTHON (PyPI reachable? cmake and g++ installed?)"
    rm -rf "$cache" && mv "$cache.tmp" "$cache"
  fi
  "$py" -m pip install -q --no-deps "$cache"/llama_cpp_python-*.whl ||
    fail "could not install the llama-cpp-python wheel in $cache"
  # A wheel that installs but does not load (a broken cache) must stop the run here, or the
  # llama.cpp tests could not run.
  have_llama || fail "llama-cpp-python $LLAMA_CPP_PYTHON does not import after installing $cache (delete that folder to rebuild)"
fi
"$py" -m pip install -q ./python || fail "pip install ./python failed"
echo "$py"
