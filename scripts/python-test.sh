#!/usr/bin/env bash
# Runs the Python suite (python/tests) against the binaries of a build directory (default
# build/, built first by scripts/test.sh): the client against a real kvtierd, and llama.cpp
# through kvtier end to end. Sets up the venv with scripts/python-env.sh.
set -euo pipefail
cd "$(dirname "$0")/.."
build=${1:-build}
py=$(scripts/python-env.sh "$build" | tail -1)
export KVTIER_BUILD_DIR="$PWD/$build"
export KVTIER_LIBKVCLIENT="$PWD/$build/libkvclient/libkvclient.so"
# Run from outside python/ so that the installed package (not the source tree) is tested.
# -rs lists any skipped test with its reason (none is expected).
(cd "$build" && "$py" -m pytest -q -rs -p no:cacheprovider "$OLDPWD/python/tests")
