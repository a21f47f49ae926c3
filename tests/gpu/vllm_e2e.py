"""vLLM end to end through kvtier on a GPU: a real vLLM engine with the kvtier connector, a tiny
random-weight Llama written here, greedy outputs compared, TTFT with a kvtier hit vs recompute.

    python tests/gpu/vllm_e2e.py --socket /path/kvtierd.sock      (tests/gpu/engines.sh runs it)

Needs vLLM (scripts/engine-env.sh vllm), a GPU and a kvtierd built with CUDA. Each engine runs
in a child process of its own (vLLM holds the GPU until its process exits):
  - "local": no connector; each prompt twice, the second time a hit in vLLM's own GPU prefix
    cache. Its second outputs are the reference: computing only the suffix over reused KV.
  - "kvtier": the connector; each prompt once (stored in kvtierd), then vLLM's GPU prefix cache
    is reset and each prompt again: the prefix now comes from kvtierd. Its outputs must equal
    the reference token for token (same suffix computation over the same KV bytes).
  - TTFT (one output token) of an 8000-token prompt: computed vs loaded from kvtierd.
Exit status 0 when outputs match and the kvtier run reported hits.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import sys
import tempfile
import time
from typing import Any

BLOCK = 16


def write_model(path: str) -> None:
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM
    torch.manual_seed(0)
    cfg = LlamaConfig(hidden_size=1024, intermediate_size=2816, num_hidden_layers=8,
                      num_attention_heads=16, num_key_value_heads=4, vocab_size=32000,
                      max_position_embeddings=16384)
    model = LlamaForCausalLM(cfg)
    model.to(torch.bfloat16)  # type: ignore[arg-type]
    model.save_pretrained(path, safe_serialization=True)


def prompts() -> list[list[int]]:
    shared = [(i * 7919) % 31000 + 100 for i in range(1024)]
    return [shared + [(i * 31 + j) % 31000 + 100 for i in range(200)] for j in range(4)]


def engine(model: str, socket: str, kvtier: bool) -> Any:
    from vllm import LLM
    kw: dict[str, Any] = {}
    if kvtier:
        kw["kv_transfer_config"] = {
            "kv_connector": "KvtierConnector", "kv_connector_module_path": "kvtier.vllm",
            "kv_role": "kv_both", "kv_load_failure_policy": "recompute",
            "kv_connector_extra_config": {"socket": socket}}
    return LLM(model=model, skip_tokenizer_init=True, dtype="bfloat16", block_size=BLOCK,
               gpu_memory_utilization=0.5, max_model_len=16384, enable_prefix_caching=True,
               seed=0, **kw)


def generate(llm: Any, ps: list[list[int]], max_tokens: int) -> list[list[int]]:
    from vllm import SamplingParams, TokensPrompt
    params = SamplingParams(temperature=0.0, max_tokens=max_tokens, ignore_eos=True)
    outs = llm.generate([TokensPrompt(prompt_token_ids=p) for p in ps], params)
    return [list(o.outputs[0].token_ids) for o in outs]


def ttft(llm: Any, p: list[int]) -> float:
    t = time.perf_counter()
    generate(llm, [p], 1)
    return time.perf_counter() - t


def child(mode: str, model: str, socket: str, out_path: str) -> None:
    llm = engine(model, socket, kvtier=(mode == "kvtier"))
    ps = prompts()
    result: dict[str, Any] = {"first": generate(llm, ps, 16)}
    if mode == "kvtier":
        time.sleep(2)  # stores run behind the requests; let them land
        llm.reset_prefix_cache()
        long = [(i * 104729) % 31000 + 100 for i in range(8000)]
        result["ttft_compute"] = ttft(llm, long)
        time.sleep(2)
        llm.reset_prefix_cache()
        result["ttft_kvtier"] = ttft(llm, long)
        llm.reset_prefix_cache()
    import kvtier
    with kvtier.Client(socket, "probe") as c:  # the tenant's hits, around the second pass
        before = c.stats().hits
        result["second"] = generate(llm, ps, 16)
        result["second_hits"] = c.stats().hits - before
    with open(out_path, "w") as f:
        json.dump(result, f)


def run(mode: str, model: str, socket: str) -> dict[str, Any]:
    out = tempfile.mktemp(suffix=".json")
    p = mp.get_context("spawn").Process(target=child, args=(mode, model, socket, out))
    p.start()
    p.join()
    if p.exitcode != 0:
        raise SystemExit(f"the {mode} engine failed (exit {p.exitcode})")
    with open(out) as f:
        return dict(json.load(f))


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--socket", required=True)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as model:
        write_model(model)
        local = run("local", model, args.socket)
        tiered = run("kvtier", model, args.socket)
    ok = True
    same = tiered["second"] == local["second"]
    print(f"outputs with the prefix from kvtierd == with vLLM's own prefix cache: {same}")
    ok &= same
    print(f"first outputs (no reuse) equal: {tiered['first'] == local['first']} (information)")
    hits = tiered["second_hits"]
    print(f"kvtierd hits during the kvtier engine's second pass: {hits}")
    ok &= hits > 0
    c, k = tiered["ttft_compute"], tiered["ttft_kvtier"]
    print(f"\n{'TTFT, 8000-token prompt':<28}{'ms':>10}\n{'computed':<28}{c * 1e3:>10.1f}\n"
          f"{'prefix from kvtierd':<28}{k * 1e3:>10.1f}\n{'speed-up':<28}{c / k:>10.2f}x")
    print("vllm e2e:", "passed" if ok else "FAILED")
    return 0 if ok else 1


if __name__ == "__main__":
    os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
    sys.exit(main())
