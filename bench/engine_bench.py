"""The engine connectors' CPU data paths beside the limit they compete with (memcpy of the same
bytes, in the same run), and the vLLM scheduler's lookup cost.

    build/venv-vllm/bin/python bench/engine_bench.py vllm       # scripts/engine-env.sh vllm
    build/venv-sglang/bin/python bench/engine_bench.py sglang

Shapes are Llama-3-8B's (32 layers, 8 KV heads of 128, bf16): vLLM pages of 16 tokens (64 KiB
per layer), SGLang page_first pages of 16 tokens (1 MiB per K or V range, all layers). A real
kvtierd (kvtier.testing.Daemon) with a 1.5 GiB pool; 2,000 tokens moved per call. What is
timed is the connector's own work on the CPU: on a GPU, vLLM's pages move by kvtierd's CUDA
copies instead (tests/gpu/paged_check.py has that table).
"""

from __future__ import annotations

import json
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Any, Callable

import torch

ROOT = Path(__file__).resolve().parents[1]
BUILD = Path(os.environ.get("KVTIER_BUILD_DIR", ROOT / "build"))
os.environ.setdefault("KVTIER_LIBKVCLIENT", str(BUILD / "libkvclient" / "libkvclient.so"))
os.environ.setdefault("KVTIERD", str(BUILD / "daemon" / "kvtierd"))

from kvtier.testing import Daemon  # noqa: E402

LAYERS, HEADS, DIM, TOKENS_PER_BLOCK = 32, 8, 128, 16
TOKENS = 2000
RUNS = 7


def best(fn: Callable[[], Any], runs: int = RUNS) -> float:
    times = []
    for _ in range(runs):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return min(times)


def memcpy_s(nbytes: int) -> float:
    """One core's copy of the same bytes: the connectors copy on one thread."""
    torch.set_num_threads(1)
    src = torch.randint(0, 256, (nbytes,), dtype=torch.uint8)
    dst = torch.empty_like(src)
    return best(lambda: dst.copy_(src))


def row(what: str, seconds: float, nbytes: int, limit_s: float) -> None:
    gbs = nbytes / seconds / 1e9
    print(f"| {what} | {seconds * 1e3:.1f} ms | {gbs:.2f} | {nbytes / limit_s / 1e9:.2f} | "
          f"{limit_s / seconds:.2f} |")


def header(title: str) -> None:
    print(f"\n{title}\n\n| path | time | GB/s | memcpy GB/s (1 core) | of memcpy |\n"
          "| --- | --- | --- | --- | --- |")


def bench_vllm(d: Daemon) -> None:
    import kvtier.vllm as kv_vllm
    from vllm.distributed.kv_transfer.kv_connector.factory import KVConnectorFactory
    from vllm.distributed.kv_transfer.kv_connector.v1.base import KVConnectorRole
    from vllm.utils.hashing import sha256
    from vllm.v1.core.kv_cache_utils import get_request_block_hasher, init_none_hash
    from vllm.v1.kv_cache_interface import (FullAttentionSpec, KVCacheConfig,
                                            KVCacheGroupSpec, KVCacheTensor)
    from vllm.v1.request import Request
    from vllm import SamplingParams
    sys.path.insert(0, str(ROOT / "python" / "tests" / "engines"))
    import test_vllm as t

    init_none_hash(sha256)
    spec = FullAttentionSpec(block_size=TOKENS_PER_BLOCK, num_kv_heads=HEADS, head_size=DIM,
                             dtype=torch.bfloat16)
    page = spec.page_size_bytes
    blocks = TOKENS // TOKENS_PER_BLOCK
    num_blocks = 2 * blocks + 2
    layers = [f"model.layers.{i}.self_attn.attn" for i in range(LAYERS)]
    kvc = KVCacheConfig(
        num_blocks=num_blocks,
        kv_cache_tensors=[KVCacheTensor(size=LAYERS * num_blocks * page, layers=layers,
                                        layer_stride=num_blocks * page, block_stride=page)],
        kv_cache_groups=[KVCacheGroupSpec(layers, spec)], kv_cache_layout="LBNHC")
    model = Path(d.dir) / "model"
    model.mkdir()
    (model / "config.json").write_text((json.dumps({
        "architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": 4096,
        "intermediate_size": 14336, "num_attention_heads": 32, "num_key_value_heads": HEADS,
        "num_hidden_layers": LAYERS, "vocab_size": 128256, "max_position_embeddings": 8192,
        "rms_norm_eps": 1e-5, "torch_dtype": "bfloat16"})))
    cfg = t.vllm_config(model, d.socket)
    sched = KVConnectorFactory.create_connector(cfg, KVConnectorRole.SCHEDULER, kvc)
    worker = KVConnectorFactory.create_connector(cfg, KVConnectorRole.WORKER, kvc)
    storage = torch.randint(0, 256, (LAYERS * num_blocks * page,), dtype=torch.uint8)
    kv = storage.view(LAYERS, num_blocks, page)
    worker.register_kv_caches({n: kv[i] for i, n in enumerate(layers)})
    paged = worker._worker
    assert paged is not None
    req = Request("bench", [(i * 7919) % 128000 for i in range(TOKENS + 1)],
                  SamplingParams(max_tokens=1), None,
                  block_hasher=get_request_block_hasher(TOKENS_PER_BLOCK, sha256))
    hashes = [bytes(h) for h in req.block_hashes[:blocks]]
    nbytes = blocks * LAYERS * page
    limit = memcpy_s(nbytes)

    header(f"vLLM connector, CPU tensors: {blocks} blocks x {LAYERS} layers x "
           f"{page >> 10} KiB = {nbytes >> 20} MiB per call")
    store_s = best(lambda: (paged.submit_stores([kv_vllm.Transfer("s", hashes,
                                                                  list(range(blocks)))]),
                            paged.drain()), runs=1)   # the first store copies; later ones exist
    row("store (reserve, copy, commit; first time)", store_s, nbytes, limit)
    dst = list(range(blocks, 2 * blocks))
    load_s = best(lambda: paged.load([kv_vllm.Transfer("l", hashes, dst)]))
    assert not paged.take_load_errors()
    row("load (acquire, copy, verify)", load_s, nbytes, limit)
    assert torch.equal(kv[:, blocks : 2 * blocks], kv[:, :blocks])

    lookups = []
    for _ in range(20):
        t0 = time.perf_counter()
        n, _ = sched.get_num_new_matched_tokens(req, 0)
        lookups.append(time.perf_counter() - t0)
    assert n == blocks * TOKENS_PER_BLOCK
    print(f"\nscheduler lookup of a {TOKENS}-token prompt, all {blocks * LAYERS} pages hit "
          f"({LAYERS} keys per block): median {statistics.median(lookups) * 1e3:.2f} ms, "
          f"first {lookups[0] * 1e3:.2f} ms")
    paged.close()


def bench_sglang(d: Daemon) -> None:
    from sglang.srt.mem_cache.device_pool_info import KVBufferLayout, KVBuffers, MHABufferInfo
    from sglang.srt.mem_cache.pool_host.base import host_memory_budget_scope
    from sglang.srt.mem_cache.pool_host.mha import MHATokenToKVPoolHost
    from sglang.srt.mem_cache.utils import get_hash_str
    sys.path.insert(0, str(ROOT / "python" / "tests" / "engines"))
    import test_sglang as t

    pages = TOKENS // TOKENS_PER_BLOCK
    dev_tokens = pages * TOKENS_PER_BLOCK
    k = [torch.zeros(dev_tokens, HEADS, DIM, dtype=torch.bfloat16) for _ in range(LAYERS)]
    v = [torch.zeros(dev_tokens, HEADS, DIM, dtype=torch.bfloat16) for _ in range(LAYERS)]
    ptrs = [torch.tensor([x.data_ptr() for x in b], dtype=torch.uint64) for b in (k, v)]
    info = MHABufferInfo(
        buffers=KVBuffers(k=k, v=v, k_data_ptrs=ptrs[0], v_data_ptrs=ptrs[1],
                          layout=KVBufferLayout.NHD),
        page_size=TOKENS_PER_BLOCK, head_num=HEADS, head_dim=DIM, v_head_dim=DIM,
        dtype=torch.bfloat16, device=torch.device("cpu"))
    with host_memory_budget_scope(8 << 30):
        pool = MHATokenToKVPoolHost(info, 2.0, 0, TOKENS_PER_BLOCK, "page_first",
                                    pin_memory=False, device="cpu",
                                    device_capacity_tokens=dev_tokens, start_layer=0,
                                    end_layer=LAYERS)
    t.randomize(pool)
    b = t.backend(t.config(d), pool)
    keys = get_hash_str(list(range(pages * TOKENS_PER_BLOCK)), None,
                        page_size=TOKENS_PER_BLOCK)
    src, dst = pool.alloc(pages * TOKENS_PER_BLOCK), pool.alloc(pages * TOKENS_PER_BLOCK)
    nbytes = pages * sum(b._sizes)
    limit = memcpy_s(nbytes)
    header(f"SGLang backend, page_first host pool: {pages} pages x 2 ranges x "
           f"{b._sizes[0] >> 10} KiB = {nbytes >> 20} MiB per call (SGLang batches <= 128 pages)")
    got: list[bool] = []
    store_s = best(lambda: got.extend(b.batch_set_v1(keys, src)), runs=1)
    assert got == [True] * pages
    row("batch_set_v1 (put_copy; first time)", store_s, nbytes, limit)
    load_s = best(lambda: got.extend(b.batch_get_v1(keys, dst)))
    assert all(got)
    row("batch_get_v1 (acquire, copy, verify)", load_s, nbytes, limit)
    exists = best(lambda: b.batch_exists(keys), runs=20)
    print(f"\nbatch_exists of {pages} pages: {exists * 1e3:.2f} ms")


def main() -> int:
    which = sys.argv[1] if len(sys.argv) > 1 else ""
    if which not in ("vllm", "sglang"):
        print(__doc__)
        return 2
    with Daemon(dram_bytes=1536 << 20, max_block_bytes=4 << 20) as d:
        (bench_vllm if which == "vllm" else bench_sglang)(d)
    return 0


if __name__ == "__main__":
    sys.exit(main())
