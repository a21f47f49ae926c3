"""SGLang end to end through kvtier on a GPU: a real SGLang engine with kvtier as its HiCache L3
storage backend (kvtier.sglang), the tiny random-weight Llama of vllm_e2e.py, greedy outputs
compared, TTFT with the prefix from kvtierd vs recompute.

    python tests/gpu/sglang_e2e.py --socket /path/kvtierd.sock      (tests/gpu/run.sh runs it)

Needs SGLang (scripts/engine-env.sh sglang), a GPU and a kvtierd (kvtier.sglang copies between
SGLang's host pool and kvtierd's pool on the CPU: no CUDA in kvtierd needed). Each engine runs
in a child process of its own (SGLang holds the GPU until its processes exit); both have the
hierarchical cache on (GPU + host pool, write_through), so the storage backend is their only
difference:
  - "local": no storage backend; each prompt twice, the second time a hit in SGLang's own radix
    cache on the GPU. Its second outputs are the reference: computing only the suffix over
    reused KV.
  - "kvtier": --hicache-storage-backend dynamic with kvtier.sglang; each prompt once (SGLang
    writes the pages through to its host pool and backs them up to kvtierd), the backups waited
    for, SGLang's GPU and host caches flushed (flush_cache), then each prompt again: the prefix
    can only come from kvtierd (prefetch policy wait_complete: a request waits for its
    prefetch). Its outputs must equal the reference token for token (same suffix computation
    over the same KV bytes).
  - TTFT (one output token) of an 8000-token prompt: computed vs its prefix from kvtierd.
The prompts are shifted by a random offset per run, so pages an earlier run left in the same
kvtierd (same weights, same namespace) are not found.
Exit status 0 when outputs match and kvtierd's hits rose during the kvtier run's second pass.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import random
import sys
import tempfile
import time
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from vllm_e2e import prompts as base_prompts  # noqa: E402  (no vLLM import at its top)
from vllm_e2e import write_model  # noqa: E402

PAGE = 16          # tokens per SGLang page (= per kvtier block pair, K and V)
LONG = 8000        # tokens of the TTFT prompt
SETTLE_S = 120.0   # the longest wait for SGLang's backups to reach kvtierd


def prompts(salt: int) -> list[list[int]]:
    """vllm_e2e's prompts (4 x 1224 tokens, a shared 1024-token prefix), token ids shifted."""
    return [[(t - 100 + salt) % 31000 + 100 for t in p] for p in base_prompts()]


def long_prompt(salt: int, start: int = 0) -> list[int]:
    """LONG tokens of a sequence that shares no page with the prompts (nor, from another
    start, with itself)."""
    return [((i + start) * 104729 + salt) % 31000 + 100 for i in range(LONG)]


def engine(model: str, socket: str, fingerprint: str | None) -> Any:
    import sglang  # type: ignore[import-untyped]
    kw: dict[str, Any] = {}
    if fingerprint is not None:
        kw["hicache_storage_backend"] = "dynamic"
        kw["hicache_storage_backend_extra_config"] = json.dumps({
            "backend_name": "kvtier", "module_path": "kvtier.sglang",
            "class_name": "KvtierHiCacheStorage", "interface_v1": 1, "socket": socket,
            "model_fingerprint": fingerprint,
            # SGLang's own key (popped before the backend sees the config): prefetch spans
            # from one page on, not from 256 tokens, so a prompt whose shared prefix another
            # request already brought back still fetches its own 192-token rest.
            "prefetch_threshold": PAGE})
        kw["hicache_storage_prefetch_policy"] = "wait_complete"
    return sglang.Engine(
        model_path=model, skip_tokenizer_init=True, dtype="bfloat16", page_size=PAGE,
        context_length=16384, mem_fraction_static=0.5, max_total_tokens=1 << 17,
        random_seed=0, enable_hierarchical_cache=True, hicache_ratio=2.0,
        hicache_write_policy="write_through", hicache_mem_layout="page_first",
        log_level="warning", **kw)


def generate(llm: Any, ps: list[list[int]], max_tokens: int) -> list[dict[str, Any]]:
    """One batch; per prompt its output ids, the prefix tokens it reused and how many of those
    came from the storage backend (SGLang's meta_info cached_tokens / cached_tokens_details)."""
    params = {"temperature": 0.0, "max_new_tokens": max_tokens, "ignore_eos": True}
    outs = llm.generate(input_ids=ps, sampling_params=params)
    result = []
    for o in outs:
        meta = o["meta_info"]
        details = meta.get("cached_tokens_details") or {}
        result.append({"ids": list(o["output_ids"]), "cached": int(meta.get("cached_tokens", 0)),
                       "storage": int(details.get("storage") or 0)})
    return result


def ttft(llm: Any, p: list[int]) -> tuple[float, dict[str, Any]]:
    t = time.perf_counter()
    out = generate(llm, [p], 1)[0]
    return time.perf_counter() - t, out


def tenant_stats(socket: str) -> Any:
    import kvtier
    with kvtier.Client(socket, "probe") as c:
        return c.stats()


def settle(llm: Any, socket: str) -> None:
    """Waits for SGLang's backups to land in kvtierd, then empties SGLang's GPU and host caches.
    Backups run behind the requests (GPU -> host write-through, then host -> kvtierd on
    SGLang's backup thread); kvtierd's committed blocks stop growing when they are done, and
    SGLang refuses flush_cache until no write-through or backup is in flight."""
    deadline = time.monotonic() + SETTLE_S
    last, since = -1, time.monotonic()
    while True:
        n = tenant_stats(socket).committed_blocks
        if n != last:
            last, since = n, time.monotonic()
        elif time.monotonic() - since >= 1.0:
            break
        if time.monotonic() > deadline:
            raise SystemExit("kvtierd's committed blocks kept changing; backups did not settle")
        time.sleep(0.1)
    while True:
        r = llm.flush_cache()
        if getattr(r, "success", False):
            return
        if time.monotonic() > deadline:
            raise SystemExit(f"SGLang refused flush_cache: {getattr(r, 'message', r)}")
        time.sleep(0.1)


def child(mode: str, model: str, socket: str, fingerprint: str | None, salt: int,
          out_path: str) -> None:
    llm = engine(model, socket, fingerprint if mode == "kvtier" else None)
    try:
        ps = prompts(salt)
        result: dict[str, Any] = {"first": generate(llm, ps, 16)}
        if mode == "kvtier":
            generate(llm, [long_prompt(salt, LONG)], 1)  # warm-up: a first long prefill
            settle(llm, socket)
            long = long_prompt(salt)
            result["ttft_compute"], result["long_compute"] = ttft(llm, long)
            settle(llm, socket)  # its pages are in kvtierd now, nowhere in SGLang
            result["ttft_kvtier"], result["long_kvtier"] = ttft(llm, long)
            settle(llm, socket)
            before = tenant_stats(socket).hits
        result["second"] = generate(llm, ps, 16)
        if mode == "kvtier":
            st = tenant_stats(socket)
            # sessions: this probe's and kvtier.sglang's, one per SGLang thread that called it
            result["second_hits"], result["sessions"] = st.hits - before, st.sessions
        with open(out_path, "w") as f:
            json.dump(result, f)
    finally:
        llm.shutdown()


def run(mode: str, model: str, socket: str, fingerprint: str, salt: int) -> dict[str, Any]:
    out = tempfile.mktemp(suffix=".json")
    p = mp.get_context("spawn").Process(target=child,
                                        args=(mode, model, socket, fingerprint, salt, out))
    p.start()
    p.join()
    if p.exitcode != 0 or not os.path.exists(out):
        raise SystemExit(f"the {mode} engine failed (exit {p.exitcode})")
    with open(out) as f:
        result = dict(json.load(f))
    os.unlink(out)
    return result


def ids(outs: list[dict[str, Any]]) -> list[list[int]]:
    return [o["ids"] for o in outs]


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--socket", required=True)
    args = ap.parse_args()
    import kvtier
    salt = random.SystemRandom().randrange(31000)
    print(f"token offset of this run: {salt}")
    with tempfile.TemporaryDirectory() as model:
        write_model(model)
        fingerprint = kvtier.file_fingerprint(os.path.join(model, "model.safetensors"))
        local = run("local", model, args.socket, fingerprint, salt)
        before = tenant_stats(args.socket)
        tiered = run("kvtier", model, args.socket, fingerprint, salt)
        after = tenant_stats(args.socket)
    ok = True
    same = ids(tiered["second"]) == ids(local["second"])
    print(f"outputs with the prefix from kvtierd == with SGLang's own radix cache: {same}")
    ok &= same
    print(f"first outputs (no reuse) equal: {ids(tiered['first']) == ids(local['first'])} "
          "(information)")
    print(f"prefix tokens reused in the second pass: local {[o['cached'] for o in local['second']]}"
          f", kvtier {[o['cached'] for o in tiered['second']]} of which from kvtierd "
          f"{[o['storage'] for o in tiered['second']]} (information)")
    hits = after.hits - before.hits
    print(f"kvtierd hits during the kvtier run: {hits}, during its second pass: "
          f"{tiered['second_hits']}")
    ok &= tiered["second_hits"] > 0
    print(f"kvtierd sessions open at the end of the kvtier run: {tiered['sessions']} "
          "(information: SGLang restarts its storage threads on every flush_cache)")
    c, k = tiered["ttft_compute"], tiered["ttft_kvtier"]
    print(f"\n{f'TTFT, {LONG}-token prompt':<28}{'ms':>10}\n{'computed':<28}{c * 1e3:>10.1f}\n"
          f"{'prefix from kvtierd':<28}{k * 1e3:>10.1f}\n{'speed-up':<28}{c / k:>10.2f}x")
    print(f"(reused tokens: computed {tiered['long_compute']['cached']}, from kvtierd "
          f"{tiered['long_kvtier']['storage']} of {tiered['long_kvtier']['cached']})")
    print("sglang e2e:", "passed" if ok else "FAILED")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
