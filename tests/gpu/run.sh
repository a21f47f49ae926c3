#!/usr/bin/env bash
# The GPU checks of kvtier, for a machine with an NVIDIA GPU and the CUDA toolkit
# (/usr/local/cuda): builds kvtierd, kvtierctl and kvt_gpu_check with CUDA, starts kvtierd with
# a 4 GiB pool and an SSD tier in a temp dir (demoting past 5% dirty, so the check can push
# blocks to SSD quickly), waits until the pool is pinned, runs the checks
# (tests/gpu/gpu_check.cc says what they are) and prints their table, then the page mover of
# the engine connectors (tests/gpu/paged_check.py) with the machine's PyTorch.
# Exit status: 0 all passed, 1 a check failed or missed its target, 77 no GPU here.
set -euo pipefail
cd "$(dirname "$0")/../.."
if [ -z "${KVT_SKIP_DEPS:-}" ]; then
  source scripts/deps.sh
  kvt_install_deps
fi
build=${KVT_GPU_BUILD_DIR:-build-gpu}
cmake -S . -B "$build" -G Ninja -DCMAKE_BUILD_TYPE=Release -DKVTIER_WITH_CUDA=ON \
  -DKVT_BUILD_BENCH=OFF >/dev/null
cmake --build "$build" -j "$(nproc)" --target kvtierd kvtierctl kvt_gpu_check kvclient >/dev/null

if ! "$build/tests/kvt_gpu_check" --socket /nonexistent --ctl true >/tmp/kvt-gpu-probe.$$ 2>&1 &&
   grep -q "^no GPU" /tmp/kvt-gpu-probe.$$; then
  cat /tmp/kvt-gpu-probe.$$
  rm -f /tmp/kvt-gpu-probe.$$
  exit 77
fi
rm -f /tmp/kvt-gpu-probe.$$

dir=$(mktemp -d /tmp/kvt-gpu.XXXXXX)
cleanup() {
  if [ -n "${daemon:-}" ]; then kill -TERM "$daemon" 2>/dev/null || true; wait "$daemon" || true; fi
  rm -rf "$dir"
}
trap cleanup EXIT
cat >"$dir/kvtierd.toml" <<TOML
config_version = 1
[daemon]
run_dir = "run"
socket_mode = "0600"
log_level = "info"
default_tenant = "gpu"
[pool]
slab_bytes = "4MiB"
max_block_bytes = "4MiB"
[spill]
dir = "$dir/spill"
key_file = "$dir/kvtier.key"
create_key = true
segment_bytes = "256MiB"
demote_above = 0.05
[admin]
audit_log = "run/audit.log"
[[tenant]]
name = "gpu"
dram_bytes = "4GiB"
ssd_bytes = "4GiB"
TOML
"$build/daemon/kvtierd" --config "$dir/kvtierd.toml" 2>"$dir/kvtierd.log" &
daemon=$!
ctl="$build/daemon/kvtierctl --admin-socket $dir/run/kvtierd-admin.sock"
for _ in $(seq 600); do
  if $ctl status 2>/dev/null | grep -q "^pinning *done"; then break; fi
  if ! kill -0 "$daemon" 2>/dev/null; then cat "$dir/kvtierd.log"; exit 1; fi
  sleep 0.1
done
$ctl status | grep -E "^(gpu|pinning|pools_pinned_bytes)" || true
status=0
"$build/tests/kvt_gpu_check" --socket "$dir/run/kvtierd.sock" --ctl "$ctl" || status=$?
# The engine connectors' page mover (kvtier.paged: CUDA IPC region, per-layer events) with the
# machine's PyTorch; no engine needed. Skipped, and said so, where python3 has no torch.
if python3 -c "import torch" 2>/dev/null; then
  PYTHONPATH=python KVTIER_LIBKVCLIENT="$build/libkvclient/libkvclient.so" \
    python3 tests/gpu/paged_check.py "$dir/run/kvtierd.sock" || status=1
else
  echo "paged check: not run (python3 has no torch)"
fi
# The engines end to end: a real vLLM (and SGLang) engine with kvtier's plug-in, outputs and
# TTFT (tests/gpu/ENGINE_e2e.py). Only when asked, KVT_GPU_ENGINES="vllm sglang", on a GPU host
# that can install them (scripts/engine-env.sh downloads ~10 GB per engine from PyPI; the
# project's lent device machines cannot reach it).
for engine in ${KVT_GPU_ENGINES:-}; do
  epy=$(scripts/engine-env.sh "$engine" "$build" | tail -1) || { status=1; continue; }
  KVTIER_LIBKVCLIENT="$PWD/$build/libkvclient/libkvclient.so" \
    "$epy" "tests/gpu/${engine}_e2e.py" --socket "$dir/run/kvtierd.sock" || status=1
done
if [ "$status" -ne 0 ]; then
  echo "--- kvtierd log ---"
  tail -n 40 "$dir/kvtierd.log"
fi
exit "$status"
