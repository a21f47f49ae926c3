#!/usr/bin/env bash
# Sets up the virtual environment of one inference engine for its connector's CPU tests:
# build/venv-ENGINE with the engine at the version kvtier's connector was written against, every
# package pinned by python/constraints/ENGINE.txt (a `pip freeze` of a working install: the
# engines' own requirements are loose, and their plug-in APIs change between minor releases),
# and `pip install ./python`. About 4 minutes and 8-10 GB per engine on a fresh machine (torch
# and its CUDA wheels; pip's cache makes a rerun fast). Fails loudly: nothing is skipped.
#   scripts/engine-env.sh vllm|sglang [BUILD_DIR]     prints the venv's python on its last line
set -euo pipefail
cd "$(dirname "$0")/.."
engine=${1:?usage: scripts/engine-env.sh vllm|sglang [BUILD_DIR]}
build=${2:-build}
constraints=python/constraints/$engine.txt
[ -f "$constraints" ] || { echo "kvtier: no $constraints" >&2; exit 1; }
version=$(grep -i "^$engine==" "$constraints" | cut -d= -f3)
mkdir -p "$build"
venv="$(cd "$build" && pwd)/venv-$engine"
fail() { echo "kvtier: $*" >&2; exit 1; }

if [ ! -x "$venv/bin/python" ]; then
  python3 -m venv "$venv" || fail "python3 -m venv failed (apt-get install python3-venv)"
fi
py="$venv/bin/python"
have() { "$py" -c "import importlib.metadata as m, sys; sys.exit(m.version('$engine') != '$version')" 2>/dev/null; }
# A fresh install needs about 10 GB: say so up front instead of failing half-way in pip.
if ! have; then
  free_kib=$(df -Pk "$build" | awk 'NR == 2 { print $4 }')
  [ "$free_kib" -ge $((12 * 1024 * 1024)) ] ||
    fail "installing $engine needs about 12 GB free on $(df -P "$build" | awk 'NR == 2 { print $6 }'), only $((free_kib / 1024 / 1024)) GB is"
fi
have || echo "kvtier: installing $engine $version and its pinned dependencies into $venv (a few minutes)" >&2
# Also when it is there: a changed constraints file then brings the venv in line (~7 s).
"$py" -m pip install -q -c "$constraints" "$engine==$version" pytest ||
  fail "pip could not install $engine $version with $constraints (PyPI reachable? disk space?)"
have || fail "$engine $version is not installed in $venv after pip install"
"$py" -m pip install -q ./python || fail "pip install ./python into $venv failed"
echo "$py"
