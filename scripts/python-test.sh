#!/usr/bin/env bash
# Runs the Python suite (python/tests) against the binaries of a build directory (default
# build/, built first by scripts/test.sh): the client against a real kvtierd, llama.cpp through
# kvtier end to end (venv from scripts/python-env.sh), then each engine connector's CPU tests in
# that engine's own venv (scripts/engine-env.sh: vLLM and SGLang pin different torch builds).
# KVTIER_ENGINES (default "vllm sglang") chooses which engines; "" runs none.
# KVTIER_DROP_ENGINE_VENVS=1 removes each engine's venv (8-10 GB) once its tests pass, so that a
# CI runner needs room for one engine at a time, not both.
set -euo pipefail
cd "$(dirname "$0")/.."
build=${1:-build}
py=$(scripts/python-env.sh "$build" | tail -1)
export KVTIER_BUILD_DIR="$PWD/$build"
export KVTIER_LIBKVCLIENT="$PWD/$build/libkvclient/libkvclient.so"
# Run from outside python/ so that the installed package (not the source tree) is tested.
# -rs lists any skipped test with its reason (none is expected).
(cd "$build" && "$py" -m pytest -q -rs -p no:cacheprovider --ignore="$OLDPWD/python/tests/engines" \
  "$OLDPWD/python/tests")
for engine in ${KVTIER_ENGINES-vllm sglang}; do
  epy=$(scripts/engine-env.sh "$engine" "$build" | tail -1)
  (cd "$build" && "$epy" -m pytest -q -rs -p no:cacheprovider \
    "$OLDPWD/python/tests/engines/test_$engine.py")
  if [ "${KVTIER_DROP_ENGINE_VENVS:-0}" = 1 ]; then rm -rf "$build/venv-$engine"; fi
done
