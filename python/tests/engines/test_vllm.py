"""kvtier.vllm inside vLLM's real scheduler, with a real kvtierd, on the CPU.

vLLM's own `Scheduler` builds the connector through vLLM's `KVConnectorFactory` (the code path
`--kv-transfer-config` takes) and calls its scheduler half; a second instance of the connector,
built by the factory as the worker, moves pages between kvtierd and KV cache tensors laid out
as vLLM lays them out (one allocation, LBNHC). What stands in for the GPU model is `forward`:
it writes each token's KV as a function of the token prefix, and samples a token that is a
hash of the KV bytes the request's blocks hold, so a wrong or missing page changes the output.
Run with the vLLM venv (scripts/python-test.sh sets it up); the CUDA half is in tests/gpu/.
"""

from __future__ import annotations

import hashlib
import json
import threading
import time
from pathlib import Path
from typing import Any

import pytest
import torch
from vllm import SamplingParams
from vllm.config import (CacheConfig, DeviceConfig, KVTransferConfig, ModelConfig,
                         SchedulerConfig, VllmConfig)
from vllm.distributed.kv_transfer.kv_connector.factory import KVConnectorFactory
from vllm.distributed.kv_transfer.kv_connector.v1.base import KVConnectorRole
from vllm.utils.hashing import sha256
from vllm.v1.core.kv_cache_utils import get_request_block_hasher, init_none_hash
from vllm.v1.core.sched.scheduler import Scheduler
from vllm.v1.kv_cache_interface import (FullAttentionSpec, KVCacheConfig, KVCacheGroupSpec,
                                        KVCacheTensor)
from vllm.v1.outputs import KVConnectorOutput, ModelRunnerOutput
from vllm.v1.request import Request
from vllm.v1.structured_output import StructuredOutputManager

import kvtier
import kvtier.vllm as kv_vllm
from kvtier.testing import Daemon

BLOCK = 16
LAYERS = ["model.layers.0.self_attn.attn", "model.layers.1.self_attn.attn"]
SPEC = FullAttentionSpec(block_size=BLOCK, num_kv_heads=2, head_size=8, dtype=torch.float16)
PAGE = SPEC.page_size_bytes          # K and V of 16 tokens x 2 heads x 8 dims, fp16: 1 KiB
SLOT = PAGE // BLOCK                 # one token's bytes in a page (LBNHC: tokens outermost)
VOCAB = 256
MAX_TOKENS = 3

init_none_hash(sha256)


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("model")
    (d / "config.json").write_text(json.dumps({
        "architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": 32,
        "intermediate_size": 64, "num_attention_heads": 4, "num_key_value_heads": 2,
        "num_hidden_layers": 2, "vocab_size": VOCAB, "max_position_embeddings": 1024,
        "rms_norm_eps": 1e-5, "torch_dtype": "float16"}))
    return d


@pytest.fixture
def daemon(ssd_daemon: Daemon) -> Daemon:
    """conftest's kvtierd with an SSD tier (demoting past 5% of the pool)."""
    return ssd_daemon


def vllm_config(model_dir: Path, socket: str, **extra: Any) -> VllmConfig:
    cache = CacheConfig(block_size=BLOCK, gpu_memory_utilization=0.9, cache_dtype="auto",
                        enable_prefix_caching=True)
    cache.kv_cache_layout = "LBNHC"   # resolved by the engine core before connectors exist
    return VllmConfig(
        model_config=ModelConfig(model=str(model_dir), skip_tokenizer_init=True,
                                 dtype="float16", seed=0, max_model_len=1024),
        scheduler_config=SchedulerConfig(max_num_seqs=8, max_num_batched_tokens=64,
                                         max_model_len=1024, enable_chunked_prefill=True,
                                         is_encoder_decoder=False),
        cache_config=cache,
        kv_transfer_config=KVTransferConfig(
            kv_connector="KvtierConnector", kv_connector_module_path="kvtier.vllm",
            kv_role="kv_both", kv_load_failure_policy="recompute",
            kv_connector_extra_config={"socket": socket, "reconnect_seconds": 0,
                                       "model_fingerprint": "test-weights", **extra}),
        device_config=DeviceConfig("cpu"))


def kv_cache_config(num_blocks: int) -> KVCacheConfig:
    """The single-group, layer-outermost placement vLLM plans for a full-attention model."""
    return KVCacheConfig(
        num_blocks=num_blocks,
        kv_cache_tensors=[KVCacheTensor(size=len(LAYERS) * num_blocks * PAGE, layers=LAYERS,
                                        layer_stride=num_blocks * PAGE, block_stride=PAGE)],
        kv_cache_groups=[KVCacheGroupSpec(LAYERS, SPEC)],
        kv_cache_layout="LBNHC")


def spread(digest: bytes) -> bytes:
    return (digest * (SLOT // len(digest) + 1))[:SLOT]


def token_kv(tokens: list[int], pos: int, layer: int) -> bytes:
    """What the stand-in model writes as token `pos`'s KV in layer 0 (a function of the
    tokens); layer 1's is a function of layer 0's KV up to `pos` (Engine.forward)."""
    assert layer == 0
    h = hashlib.blake2b(bytes(str(tokens[: pos + 1]), "ascii"), digest_size=32)
    return spread(h.digest())


def expected_outputs(prompt: list[int], max_tokens: int = MAX_TOKENS) -> list[int]:
    """The outputs of the stand-in model computing everything itself."""
    tokens = list(prompt)
    layer0: list[bytes] = []
    layer1: list[bytes] = []
    for _ in range(max_tokens):
        for pos in range(len(layer0), len(tokens)):
            layer0.append(token_kv(tokens, pos, 0))
            layer1.append(spread(hashlib.blake2b(b"".join(layer0), digest_size=32).digest()))
        h = hashlib.blake2b()
        for pos in range(len(tokens)):
            h.update(layer0[pos])
            h.update(layer1[pos])
        tokens.append(h.digest()[0] % VOCAB)
    return tokens[len(prompt):]


class Engine:
    """vLLM's scheduler, the connector's two halves, and the stand-in model on CPU tensors."""

    def __init__(self, model_dir: Path, socket: str, num_blocks: int = 64, **extra: Any):
        self.config = vllm_config(model_dir, socket, **extra)
        self.config.cache_config.num_gpu_blocks = num_blocks
        kvc = kv_cache_config(num_blocks)
        self.sched = Scheduler(vllm_config=self.config, kv_cache_config=kvc,
                               structured_output_manager=StructuredOutputManager(self.config),
                               block_size=BLOCK, log_stats=False)
        assert isinstance(self.sched.connector, kv_vllm.KvtierConnector)
        self.worker = KVConnectorFactory.create_connector(self.config, KVConnectorRole.WORKER,
                                                          kvc)
        assert isinstance(self.worker, kv_vllm.KvtierConnector)
        self.storage = torch.zeros(kvc.kv_cache_tensors[0].size, dtype=torch.uint8)
        self.kv = self.storage.view(len(LAYERS), num_blocks, BLOCK, SLOT)
        self.worker.register_kv_caches({name: self.kv[i] for i, name in enumerate(LAYERS)})
        self.outputs: dict[str, list[int]] = {}
        self.load_errors: set[int] = set()
        self.loaded_async: set[str] = set()
        self.before_load: Any = None  # a hook run between the scheduler's step and the load
        self.metas: list[kv_vllm.KvtierConnectorMetadata] = []
        self.first_computed: dict[str, int] = {}  # tokens not computed at first schedule
        self._n = 0

    def add(self, prompt: list[int], max_tokens: int = MAX_TOKENS) -> str:
        self._n += 1
        rid = f"r{self._n}"
        params = SamplingParams(max_tokens=max_tokens, ignore_eos=True)
        self.sched.add_request(Request(rid, prompt, params, None,
                                       block_hasher=get_request_block_hasher(BLOCK, sha256)))
        self.outputs[rid] = []
        return rid

    def forward(self, out: Any) -> dict[str, list[int]]:
        """Like a transformer: layer 0's KV of a token is a function of the tokens, layer 1's a
        function of layer 0's KV of every position up to it *as read from the cache*, and the
        sampled token a hash of every cached page of the request. KV loaded wrong, or computed
        over KV loaded wrong, changes the outputs."""
        sampled: dict[str, list[int]] = {}
        computed = {r.req_id: r.num_computed_tokens for r in out.scheduled_new_reqs}
        cached = out.scheduled_cached_reqs
        computed.update(zip(cached.req_ids, cached.num_computed_tokens))
        for req_id, n in out.num_scheduled_tokens.items():
            req = self.sched.requests[req_id]
            blocks = self.sched.kv_cache_manager.get_block_ids(req_id)[0]
            tokens = list(req.all_token_ids)
            start = computed[req_id]

            def slot(layer: int, pos: int) -> torch.Tensor:
                return self.kv[layer, blocks[pos // BLOCK], pos % BLOCK]
            for pos in range(start, start + n):
                slot(0, pos)[:] = torch.frombuffer(bytearray(token_kv(tokens, pos, 0)),
                                                   dtype=torch.uint8)
                h = hashlib.blake2b(digest_size=32)
                for q in range(pos + 1):
                    h.update(slot(0, q).numpy().tobytes())
                slot(1, pos)[:] = torch.frombuffer(bytearray(spread(h.digest())),
                                                   dtype=torch.uint8)
            if start + n < len(tokens):  # a chunk of a longer prefill samples nothing
                sampled[req_id] = []
                continue
            h = hashlib.blake2b()
            for pos in range(start + n):
                for layer in range(len(LAYERS)):
                    h.update(slot(layer, pos).numpy().tobytes())
            sampled[req_id] = [h.digest()[0] % VOCAB]
        return sampled

    def step(self) -> None:
        out = self.sched.schedule()
        meta = out.kv_connector_metadata
        self.metas.append(meta)
        for r in out.scheduled_new_reqs:
            self.first_computed.setdefault(r.req_id, r.num_computed_tokens)
        w = self.worker
        w.handle_preemptions(meta)
        w.bind_connector_metadata(meta)
        if self.before_load is not None:
            self.before_load(meta)
        w.start_load_kv(None)  # type: ignore[arg-type]
        for name in LAYERS:
            w.wait_for_layer_load(name)
        sampled = self.forward(out)
        w.wait_for_save()
        sending, recving = w.get_finished(out.finished_req_ids)
        invalid = w.get_block_ids_with_load_errors()
        worker_meta = w.build_connector_worker_meta()
        w.clear_connector_metadata()
        self.load_errors |= invalid
        self.loaded_async |= recving or set()
        ids = list(sampled)
        result = ModelRunnerOutput(
            req_ids=ids, req_id_to_index={r: i for i, r in enumerate(ids)},
            sampled_token_ids=[sampled[r] for r in ids],
            kv_connector_output=KVConnectorOutput(finished_sending=sending,
                                                  finished_recving=recving,
                                                  invalid_block_ids=invalid,
                                                  kv_connector_worker_meta=worker_meta))
        for outputs in self.sched.update_from_output(out, result).values():
            for o in outputs.outputs:
                self.outputs[o.request_id] += o.new_token_ids

    def run(self, max_steps: int = 200) -> None:
        """Steps until vLLM has nothing left, stores included (has_requests counts the
        connector's pending work)."""
        for _ in range(max_steps):
            if not self.sched.has_requests():
                return
            self.step()
            self.worker._worker.drain()  # type: ignore[union-attr]  # (determinism)
        raise AssertionError("requests did not finish")

    def close(self) -> None:
        self.worker.shutdown()
        self.sched.connector.shutdown()  # type: ignore[union-attr]


def prompt(n: int, seed: int) -> list[int]:
    return [(seed * 7919 + i * 31) % VOCAB for i in range(n)]


def run_one(engine: Engine, tokens: list[int]) -> list[int]:
    rid = engine.add(tokens)
    engine.run()
    return engine.outputs[rid]


def test_construction_by_vllms_factory_checks_its_config(model_dir: Path, daemon: Daemon) -> None:
    cfg = vllm_config(model_dir, daemon.socket)
    kvc = kv_cache_config(8)
    c = KVConnectorFactory.create_connector(cfg, KVConnectorRole.SCHEDULER, kvc)
    assert type(c).__name__ == "KvtierConnector" and type(c).__module__ == "kvtier.vllm"
    assert kv_vllm.KvtierConnector.requires_piecewise_for_cudagraph({})
    cfg.kv_transfer_config.kv_load_failure_policy = "fail"
    with pytest.raises(ValueError, match="recompute"):
        KVConnectorFactory.create_connector(cfg, KVConnectorRole.SCHEDULER, kvc)
    cfg = vllm_config(model_dir, daemon.socket)
    cfg.cache_config.kv_cache_layout = "LHBNC"
    kvc.kv_cache_layout = None
    with pytest.raises(ValueError, match="contiguous pages"):
        KVConnectorFactory.create_connector(cfg, KVConnectorRole.SCHEDULER, kvc)


def test_a_second_engine_loads_a_shared_prefix_and_answers_the_same(model_dir: Path,
                                                                    daemon: Daemon) -> None:
    shared = prompt(80, 1)                   # 5 full blocks
    a, b = shared + prompt(20, 2), shared + prompt(37, 3)
    first = Engine(model_dir, daemon.socket)
    assert run_one(first, a) == expected_outputs(a)
    first.close()
    # A fresh engine (no local prefix cache) on the same kvtierd: b's shared blocks come from
    # kvtier, its own tail is computed, and the answer is what recompute gives.
    second = Engine(model_dir, daemon.socket)
    rid = second.add(b)
    second.run()
    assert second.outputs[rid] == expected_outputs(b)
    assert second.first_computed[rid] == 80      # 5 blocks loaded, not computed
    loads = [len(t.hashes) for m in second.metas for t in m.loads]
    assert loads == [5] and not any(m.async_loads for m in second.metas)
    assert not second.load_errors
    second.close()


def test_two_requests_in_one_batch_share_loaded_blocks(model_dir: Path, daemon: Daemon) -> None:
    shared = prompt(64, 4)
    first = Engine(model_dir, daemon.socket)
    assert run_one(first, shared + [9]) == expected_outputs(shared + [9])
    first.close()
    second = Engine(model_dir, daemon.socket)
    x, y = shared + prompt(5, 5), shared + prompt(40, 6)
    rx, ry = second.add(x), second.add(y)
    second.run()
    assert second.outputs[rx] == expected_outputs(x)
    assert second.outputs[ry] == expected_outputs(y)
    assert not second.load_errors
    second.close()


def test_hits_in_the_ssd_tier_load_asynchronously(model_dir: Path, daemon: Daemon) -> None:
    p = prompt(100, 7)                      # 6 blocks, 12 pages
    first = Engine(model_dir, daemon.socket)
    assert run_one(first, p) == expected_outputs(p)
    first.close()
    with kvtier.Client(daemon.socket, "filler") as c:  # stats are the tenant's
        # Past demote_above (5% of the pool) not on SSD: the oldest blocks are written out.
        for i in range(8):
            assert c.put_copy([b"filler-%d" % i], [bytes(1 << 20)]) == [kvtier.StatusCode.OK]
        deadline = time.monotonic() + 30
        while c.stats().demotions < 12 and time.monotonic() < deadline:
            time.sleep(0.05)
    daemon.ctl("evict", "--tenant", daemon.tenant, "--tier", "dram")
    second = Engine(model_dir, daemon.socket)   # load_mode "auto"
    rid = second.add(p)
    second.run()
    assert second.outputs[rid] == expected_outputs(p)
    assert [len(t.hashes) for m in second.metas for t in m.async_loads] == [6]
    assert rid in second.loaded_async and not second.load_errors
    second.close()
    third = Engine(model_dir, daemon.socket)    # now back in DRAM: loaded in the step
    assert run_one(third, p) == expected_outputs(p)
    assert [len(t.hashes) for m in third.metas for t in m.loads] == [6]
    third.close()


def test_a_page_evicted_after_the_match_is_a_load_error_and_is_recomputed(
        model_dir: Path, daemon: Daemon) -> None:
    p = prompt(96, 8)                       # 6 full blocks stored
    first = Engine(model_dir, daemon.socket)
    assert run_one(first, p) == expected_outputs(p)
    first.close()
    second = Engine(model_dir, daemon.socket)
    removed: list[int] = []

    def evict(meta: kv_vllm.KvtierConnectorMetadata) -> None:
        for t in meta.loads:   # between the scheduler's match and the worker's load
            ns = second.worker._conn.namespaces[0]
            with kvtier.Client(daemon.socket, ns) as c:
                assert c.remove([kv_vllm.page_key(t.hashes[3], 1)]) == [kvtier.StatusCode.OK]
            removed.extend(t.block_ids[3:])
        second.before_load = None
    second.before_load = evict
    assert run_one(second, p) == expected_outputs(p)   # recomputed from block 3 on: right
    assert removed and second.load_errors == set(removed)
    second.close()


def test_kv_computed_over_a_failed_load_is_never_stored(model_dir: Path,
                                                        daemon: Daemon) -> None:
    a = prompt(96, 12)                     # 6 blocks, stored by the first engine
    b = a[:80] + prompt(40, 13)            # blocks 0-4 loadable; 5-6 computed in the same step
    c = b + prompt(20, 14)                 # a third engine loads b's blocks for c
    first = Engine(model_dir, daemon.socket)
    assert run_one(first, a) == expected_outputs(a)
    first.close()
    second = Engine(model_dir, daemon.socket)

    def evict(meta: kv_vllm.KvtierConnectorMetadata) -> None:
        if meta.loads:   # a page of block 3 goes between the match and the load
            with kvtier.Client(daemon.socket, second.worker._conn.namespaces[0]) as cl:
                cl.remove([kv_vllm.page_key(meta.loads[0].hashes[3], 0)])
            second.before_load = None
    second.before_load = evict
    assert run_one(second, b) == expected_outputs(b)     # recomputed from block 3: right
    assert second.load_errors
    # Blocks 5-6 were first computed over the stale block 3: that KV must not have been
    # stored (they are stored once recomputed). A third engine must answer right.
    assert any(m.held for m in second.metas) and any(m.failed for m in second.metas)
    second.close()
    third = Engine(model_dir, daemon.socket)
    assert run_one(third, c) == expected_outputs(c)
    assert third.first_computed["r1"] == 112             # all 7 blocks of b from kvtier
    third.close()


def test_preempted_requests_come_back_through_kvtier(model_dir: Path, daemon: Daemon) -> None:
    # Three requests decoding 60 tokens each in 15 usable blocks: vLLM preempts, frees the
    # preempted request's blocks (the worker first waits for stores reading them), and when
    # it is scheduled again its prefix is loaded from kvtier instead of recomputed.
    eng = Engine(model_dir, daemon.socket, num_blocks=16)
    prompts = [prompt(100, 20 + i) for i in range(3)]
    rids = [eng.add(p, max_tokens=60) for p in prompts]
    eng.run(max_steps=1000)
    for rid, p in zip(rids, prompts):
        assert eng.outputs[rid] == expected_outputs(p, 60)
    assert any(m.preempted for m in eng.metas)
    assert any(m.loads for m in eng.metas) and not eng.load_errors
    pool = eng.sched.kv_cache_manager.block_pool
    assert pool.get_num_free_blocks() == pool.num_gpu_blocks - 1   # none held back
    eng.close()


def test_kvtierd_down_means_misses_then_it_comes_back(model_dir: Path, daemon: Daemon) -> None:
    p = prompt(70, 9)
    daemon.stop()
    eng = Engine(model_dir, daemon.socket)
    assert run_one(eng, p) == expected_outputs(p)   # no kvtierd: computed, nothing raised
    eng.close()
    daemon.start()
    eng = Engine(model_dir, daemon.socket)
    assert run_one(eng, p) == expected_outputs(p)   # stores again
    eng.close()
    again = Engine(model_dir, daemon.socket)
    assert run_one(again, p) == expected_outputs(p)
    assert again.first_computed["r1"] == 64      # loaded from the restarted kvtierd
    again.close()


def test_other_weights_never_see_these_blocks(model_dir: Path, daemon: Daemon) -> None:
    p = prompt(64, 10)
    eng = Engine(model_dir, daemon.socket)
    run_one(eng, p + [1])
    eng.close()
    other = Engine(model_dir, daemon.socket, model_fingerprint="other-weights")
    assert run_one(other, p + [1]) == expected_outputs(p + [1])
    assert other.first_computed["r1"] == 0 and not any(m.loads for m in other.metas)
    other.close()
    same = Engine(model_dir, daemon.socket)
    assert run_one(same, p + [1]) == expected_outputs(p + [1])
    assert same.first_computed["r1"] == 64       # the control: same weights do hit
    same.close()


def test_purge_during_serving_is_a_load_error_not_wrong_kv(model_dir: Path,
                                                            daemon: Daemon) -> None:
    p = prompt(96, 11)
    first = Engine(model_dir, daemon.socket)
    run_one(first, p)
    first.close()
    second = Engine(model_dir, daemon.socket)

    def purge(meta: kv_vllm.KvtierConnectorMetadata) -> None:
        if meta.loads:
            daemon.ctl("purge", daemon.tenant)
            second.before_load = None
    second.before_load = purge
    assert run_one(second, p) == expected_outputs(p)
    assert second.load_errors   # every loaded block was reported and recomputed
    second.close()


def test_the_namespace_follows_the_weights_bytes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                 daemon: Daemon) -> None:
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    with pytest.raises(ValueError, match="model_fingerprint"):
        kv_vllm.model_fingerprint(str(tmp_path))          # no weight files
    weights = tmp_path / "model.safetensors"
    weights.write_bytes(b"a" * 1000)
    first = kv_vllm.model_fingerprint(str(tmp_path))
    assert kv_vllm.model_fingerprint(str(tmp_path)) == first   # also from the cache
    weights.write_bytes(b"b" * 1000)                           # a fine-tune: same size
    assert kv_vllm.model_fingerprint(str(tmp_path)) != first



def test_without_a_fingerprint_the_connector_hashes_the_served_weights(
        model_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, daemon: Daemon) -> None:
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    model = tmp_path / "model"
    model.mkdir()
    (model / "config.json").write_text((model_dir / "config.json").read_text())
    (model / "model.safetensors").write_bytes(b"weights v1")
    kvc = kv_cache_config(8)

    def ns() -> str:
        cfg = vllm_config(model, daemon.socket, model_fingerprint="")
        c = KVConnectorFactory.create_connector(cfg, KVConnectorRole.SCHEDULER, kvc)
        return str(c._conn.namespaces[0])  # type: ignore[attr-defined]
    first = ns()
    assert first == ns()
    (model / "model.safetensors").write_bytes(b"weights v2")
    assert ns() != first


def test_a_preempted_request_aborted_during_its_async_load(model_dir: Path,
                                                          daemon: Daemon) -> None:
    from vllm.v1.request import RequestStatus
    # As in the preemption test, but preempted requests come back through async loads, and
    # one is aborted while its load is still running (held up here by a gate): vLLM must get
    # its blocks back once, after the load has ended, and go on serving the others.
    eng = Engine(model_dir, daemon.socket, num_blocks=16, load_mode="async")
    paged = eng.worker._worker  # type: ignore[attr-defined]
    gate = threading.Event()
    submit = paged.submit_async_loads

    def gated(loads: Any) -> None:
        paged.jobs.put(lambda conn: gate.wait())
        submit(loads)
    paged.submit_async_loads = gated
    prompts = [prompt(100, 30 + i) for i in range(3)]
    rids = [eng.add(p, max_tokens=60) for p in prompts]
    aborted = None
    for _ in range(1000):
        if aborted is None:
            eng.step()
            eng.worker._worker.drain() if gate.is_set() else None  # type: ignore[union-attr]
            for rid in rids:
                r = eng.sched.requests.get(rid)
                if r is not None and r.status == RequestStatus.WAITING_FOR_REMOTE_KVS:
                    eng.sched.finish_requests(rid, RequestStatus.FINISHED_ABORTED)
                    aborted = rid
                    break
            if aborted is None:
                gate.set()  # not that step: let loads through until a preempted one waits
                eng.worker._worker.drain()  # type: ignore[union-attr]
                gate.clear()
        else:
            eng.step()       # the load still hangs: its blocks must stay held
            eng.step()
            gate.set()
            paged.submit_async_loads = submit
            eng.run(max_steps=1000)
            break
    assert aborted is not None, "no request was preempted into an async load"
    for rid, p in zip(rids, prompts):
        if rid != aborted:
            assert eng.outputs[rid] == expected_outputs(p, 60)
    pool = eng.sched.kv_cache_manager.block_pool
    assert pool.get_num_free_blocks() == pool.num_gpu_blocks - 1 and not eng.sched.requests
    eng.close()


def test_handle_preemptions_waits_for_stores_still_reading(model_dir: Path,
                                                           daemon: Daemon) -> None:
    eng = Engine(model_dir, daemon.socket)
    paged = eng.worker._worker  # type: ignore[attr-defined]
    gate = threading.Event()
    paged.jobs.put(lambda conn: gate.wait())   # a store still reading its blocks
    returned = threading.Event()

    def preempt(preempted: bool) -> None:
        eng.worker.handle_preemptions(
            kv_vllm.KvtierConnectorMetadata(preempted=["r1"] if preempted else []))
        returned.set()
    # Without a preemption no block is freed: it does not wait.
    t = threading.Thread(target=preempt, args=(False,))
    t.start()
    t.join(timeout=60)
    assert returned.is_set()
    # With one, the freed blocks may be written this step: it returns only after the store.
    returned.clear()
    t = threading.Thread(target=preempt, args=(True,))
    t.start()
    assert not returned.wait(0.5)              # (cannot fail while it waits, as it must)
    gate.set()
    t.join(timeout=60)
    assert returned.is_set()
    eng.close()
