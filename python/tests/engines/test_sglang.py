"""kvtier.sglang against SGLang 0.5.23 itself, on the CPU: the backend is built by SGLang's own
StorageBackendFactory ("dynamic"), pages live in SGLang's real host KV pools (page_first and the
other layouts, MHA and MLA, pin_memory off) and are stored in a real kvtierd."""

from __future__ import annotations

import ctypes
import threading
import time
from typing import Any, Callable, Iterator, List

import pytest
import torch

import kvtier
import kvtier.client
from kvtier import StatusCode
from kvtier import sglang as ks
from kvtier.testing import Daemon
from sglang.srt.mem_cache.device_pool_info import (
    KVBufferLayout,
    KVBuffers,
    MHABufferInfo,
    MLABufferInfo,
)
from sglang.srt.mem_cache.hicache_storage import HiCacheStorageConfig
from sglang.srt.mem_cache.pool_host.base import host_memory_budget_scope
from sglang.srt.mem_cache.pool_host.mha import MHATokenToKVPoolHost
from sglang.srt.mem_cache.pool_host.mla import MLATokenToKVPoolHost
from sglang.srt.mem_cache.storage import StorageBackendFactory
from sglang.srt.mem_cache.utils import get_hash_str
from sglang.srt.observability.metrics_collector import StorageMetrics

PAGE = 4          # tokens per page
LAYERS = 2
TOKENS = 64       # device pool tokens; the host pool holds twice that


def mha_pool(layout: str = "page_first", heads: int = 2, dim: int = 8) -> Any:
    """SGLang's host pool over a small CPU "device" pool, with random bytes in every page."""
    k = tuple(torch.zeros(TOKENS, heads, dim, dtype=torch.bfloat16) for _ in range(LAYERS))
    v = tuple(torch.zeros(TOKENS, heads, dim, dtype=torch.bfloat16) for _ in range(LAYERS))
    ptrs = [torch.tensor([t.data_ptr() for t in ts], dtype=torch.uint64) for ts in (k, v)]
    info = MHABufferInfo(
        buffers=KVBuffers(k=k, v=v, k_data_ptrs=ptrs[0], v_data_ptrs=ptrs[1],
                          layout=KVBufferLayout.NHD),
        page_size=PAGE, head_num=heads, head_dim=dim, v_head_dim=dim, dtype=torch.bfloat16,
        device=torch.device("cpu"))
    with host_memory_budget_scope(1 << 30):  # not the machine's free memory
        pool = MHATokenToKVPoolHost(info, 2.0, 0, PAGE, layout, pin_memory=False,
                                    device="cpu", device_capacity_tokens=TOKENS,
                                    start_layer=0, end_layer=LAYERS)
    randomize(pool)
    return pool


def mla_pool() -> Any:
    rank, rope = 16, 8
    bufs = tuple(torch.zeros(TOKENS, 1, rank + rope, dtype=torch.bfloat16) for _ in range(LAYERS))
    info = MLABufferInfo(
        buffers=bufs, data_ptrs=torch.tensor([b.data_ptr() for b in bufs], dtype=torch.uint64),
        layer_indices=tuple(range(LAYERS)), device_layer_num=LAYERS, page_size=PAGE,
        kv_lora_rank=rank, qk_rope_head_dim=rope, kv_cache_dim=rank + rope,
        dtype=torch.bfloat16, device=torch.device("cpu"))
    with host_memory_budget_scope(1 << 30):
        pool = MLATokenToKVPoolHost(info, 2.0, 0, PAGE, "page_first", pin_memory=False,
                                    device="cpu", device_capacity_tokens=TOKENS,
                                    start_layer=0, end_layer=LAYERS, target_layer_num=LAYERS)
    randomize(pool)
    return pool


def randomize(pool: Any) -> None:
    raw = pool.kv_buffer.view(torch.uint8)
    raw.copy_(torch.randint(0, 256, raw.shape, dtype=torch.uint8))


def config(d: Daemon, fingerprint: str = "model-a", *, mla: bool = False, tp_rank: int = 0,
           tp_size: int = 1, metrics: bool = False, **extra: Any) -> HiCacheStorageConfig:
    """What SGLang's HiCacheController._generate_storage_config gives the backend."""
    extra_config = {"backend_name": "kvtier", "module_path": "kvtier.sglang",
                    "class_name": "KvtierHiCacheStorage", "interface_v1": 1,
                    "socket": d.socket, "model_fingerprint": fingerprint,
                    "reconnect_interval_s": 0.05, **extra}
    if fingerprint == "":
        del extra_config["model_fingerprint"]
    return HiCacheStorageConfig(
        tp_rank=tp_rank, tp_size=tp_size, pp_rank=0, pp_size=1, attn_cp_rank=0,
        attn_cp_size=1, is_mla_model=mla, enable_storage_metrics=metrics,
        is_page_first_layout=True, model_name="served-name", extra_config=extra_config)


def backend(cfg: HiCacheStorageConfig, pool: Any) -> ks.KvtierHiCacheStorage:
    """Built and registered as HiCacheController.attach_storage_backend does."""
    b = StorageBackendFactory.create_backend("dynamic", cfg, pool)
    assert type(b) is ks.KvtierHiCacheStorage
    b.register_mem_pool_host(pool)
    return b


def page_keys(n: int, seed: int = 0) -> List[str]:
    """SGLang's own page keys (hex SHA-256 chain) for n pages of tokens."""
    keys = get_hash_str(list(range(seed, seed + n * PAGE)), None, page_size=PAGE)
    assert isinstance(keys, list) and len(keys) == n
    return keys


def page_bytes(pool: Any, indices: torch.Tensor, i: int) -> bytes:
    """Page i of `indices` as SGLang's own flat data page (K then V)."""
    return flat_bytes(pool.get_data_page(int(indices[i * PAGE]), flat=True))


def flat_bytes(t: torch.Tensor) -> bytes:
    return t.view(torch.int16).numpy().tobytes()  # bf16: compare bits, not values


def pages(pool: Any, indices: torch.Tensor) -> List[bytes]:
    return [page_bytes(pool, indices, i) for i in range(indices.numel() // PAGE)]


def poll(fn: Callable[[], bool], seconds: float = 20.0) -> None:
    deadline = time.monotonic() + seconds
    while not fn():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.02)


@pytest.fixture
def pool() -> Iterator[Any]:
    p = mha_pool()
    yield p


# --------------------------------------------------------------------------------------------

def test_factory_builds_it_and_pages_round_trip(daemon: Daemon, pool: Any) -> None:
    b = backend(config(daemon), pool)
    assert b.namespace is not None and b.namespace.startswith("sglang-")
    keys = page_keys(3)
    src, dst = pool.alloc(3 * PAGE), pool.alloc(3 * PAGE)
    assert pages(pool, src) != pages(pool, dst)
    assert b.batch_exists(keys) == 0 and not b.exists(keys[0])
    assert b.batch_get_v1(keys, dst) == [False] * 3

    assert b.batch_set_v1(keys, src) == [True] * 3
    assert b.batch_exists(keys) == 3 and b.exists(keys[2])
    assert b.batch_get_v1(keys, dst) == [True] * 3
    assert pages(pool, dst) == pages(pool, src)  # bit-exact, K and V of every layer
    assert b.counters.pages_hit == 3 and b.counters.pages_stored == 3

    # One kvtier block per component (K, V) of a page, keyed as documented.
    with kvtier.Client(daemon.socket, str(b.namespace)) as c:
        ks0 = ks.component_keys(keys[0], 2)
        assert ks0[0] != ks0[1] and c.match_prefix(ks0).count == 2
        flat0 = page_bytes(pool, src, 0)
        assert c.get_copy(ks0[:1])[0] == flat0[: len(flat0) // 2]  # K, then V

    # Storing again: kvtierd says ALREADY_EXISTS, which is a success.
    with kvtier.Client(daemon.socket, str(b.namespace)) as c:
        assert c.put_copy(ks0, [b"x" * b._sizes[0]] * 2) == [StatusCode.ALREADY_EXISTS] * 2
    assert b.batch_set_v1(keys, src) == [True] * 3
    other = backend(config(daemon), pool)  # another engine process of the same model
    assert other.namespace == b.namespace and other.batch_set_v1(keys, dst) == [True] * 3
    assert other.batch_exists(keys) == 3


def test_partial_prefix_is_leading_pages_only(daemon: Daemon, pool: Any) -> None:
    b = backend(config(daemon), pool)
    keys = page_keys(5)
    src, dst = pool.alloc(5 * PAGE), pool.alloc(5 * PAGE)
    assert b.batch_set_v1(keys[:3], src[: 3 * PAGE]) == [True] * 3
    assert b.batch_set_v1(keys[4:], src[4 * PAGE:]) == [True]  # stored after a gap
    assert b.batch_exists(keys) == 3
    assert b.batch_get_v1(keys, dst) == [True, True, True, False, False]
    assert pages(pool, dst)[:3] == pages(pool, src)[:3]
    assert b.batch_exists(keys[3:]) == 0
    assert b.batch_get_v1(keys[3:], dst[3 * PAGE:]) == [False, False]  # page 4 is stored

    # A page with its V block gone is not a stored page, nor is anything after it.
    with kvtier.Client(daemon.socket, str(b.namespace)) as c:
        assert c.remove([ks.component_keys(keys[1], 2)[1]]) == [StatusCode.OK]
    assert b.batch_exists(keys) == 1
    assert b.batch_get_v1(keys, dst) == [True, False, False, False, False]


def test_purge_during_a_read_voids_the_batch_then_recovers(
        daemon: Daemon, pool: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    b = backend(config(daemon), pool)
    keys = page_keys(3)
    src, dst = pool.alloc(3 * PAGE), pool.alloc(3 * PAGE)
    assert b.batch_set_v1(keys, src) == [True] * 3

    lib = kvtier.client.lib
    copy = lib.kvtier_copy_from_pool
    copies: List[int] = []

    def purge_on_first_copy(dst_addr: Any, src_addr: Any, n: int) -> None:
        copies.append(n)
        if len(copies) == 1:
            daemon.ctl("purge", "test")  # the session ends and the pool is zeroed mid-read
        copy(ctypes.c_void_p(dst_addr), ctypes.c_void_p(src_addr), n)

    monkeypatch.setattr(lib, "kvtier_copy_from_pool", purge_on_first_copy)
    assert b.batch_get_v1(keys, dst) == [False] * 3
    monkeypatch.undo()
    assert len(copies) >= 1 and b.counters.revoked_reads == 1

    # The purge deleted the pages; the backend reconnects and stores and reads again.
    assert b.batch_exists(keys) == 0
    poll(lambda: b.batch_set_v1(keys, src) == [True] * 3)
    assert b.batch_get_v1(keys, dst) == [True] * 3 and pages(pool, dst) == pages(pool, src)

    # A purge between SGLang's query and its read: the read is a miss, not an exception.
    assert b.batch_exists(keys) == 3
    daemon.ctl("purge", "test")
    assert b.batch_get_v1(keys, dst) == [False] * 3
    poll(lambda: b.batch_set_v1(keys, src) == [True] * 3)
    assert b.batch_exists(keys) == 3


def test_daemon_down_gives_misses_and_restart_works_again(daemon: Daemon, pool: Any) -> None:
    b = backend(config(daemon), pool)
    keys = page_keys(2)
    src, dst = pool.alloc(2 * PAGE), pool.alloc(2 * PAGE)
    assert b.batch_set_v1(keys, src) == [True, True]
    daemon.stop()
    failed = b.counters.failed_calls
    for _ in range(3):  # no exception, only misses (some calls within the back-off)
        assert b.batch_exists(keys) == 0
        assert b.batch_get_v1(keys, dst) == [False, False]
        assert b.batch_set_v1(keys, src) == [False, False]
        assert b.batch_get(keys) == [None, None] and b.batch_set(keys, [None, None]) is False
    assert b.counters.failed_calls > failed and b.open_sessions == 0

    daemon.start()  # a fresh kvtierd: empty, and the old session is gone
    poll(lambda: b.batch_set_v1(keys, src) == [True, True])
    assert b.batch_exists(keys) == 2
    assert b.batch_get_v1(keys, dst) == [True, True] and pages(pool, dst) == pages(pool, src)


def test_namespaces_never_meet(daemon: Daemon, pool: Any) -> None:
    a = backend(config(daemon, "model-a"), pool)
    pool_b = mha_pool()
    b = backend(config(daemon, "model-b"), pool_b)
    assert a.namespace != b.namespace
    keys = page_keys(2)
    src_a, src_b, dst = pool.alloc(2 * PAGE), pool_b.alloc(2 * PAGE), pool.alloc(2 * PAGE)
    assert a.batch_set_v1(keys, src_a) == [True, True]
    assert b.batch_exists(keys) == 0
    assert b.batch_get_v1(keys, pool_b.alloc(2 * PAGE)) == [False] * 2
    assert b.batch_set_v1(keys, src_b) == [True, True]  # OK, not ALREADY_EXISTS of model-a's
    assert b.counters.pages_stored == 2
    assert a.batch_get_v1(keys, dst) == [True, True] and pages(pool, dst) == pages(pool, src_a)
    assert pages(pool, src_a) != pages(pool_b, src_b)

    # Other TP ranks of an MHA model hold other heads: other namespaces.
    r1 = backend(config(daemon, "model-a", tp_rank=1, tp_size=2), mha_pool())
    r0 = backend(config(daemon, "model-a", tp_rank=0, tp_size=2), mha_pool())
    assert len({a.namespace, r0.namespace, r1.namespace}) == 3


@pytest.mark.parametrize("layout", ["page_first_direct", "page_head"])
def test_other_contiguous_layouts(daemon: Daemon, layout: str) -> None:
    pool = mha_pool(layout)
    b = backend(config(daemon), pool)
    keys = page_keys(2)
    src, dst = pool.alloc(2 * PAGE), pool.alloc(2 * PAGE)
    assert b.batch_set_v1(keys, src) == [True, True]
    assert b.batch_get_v1(keys, dst) == [True, True] and pages(pool, dst) == pages(pool, src)
    assert layout in ks.SUPPORTED_LAYOUTS
    assert b.namespace != backend(config(daemon), mha_pool()).namespace  # page_first's


def test_mla_pool_one_block_per_page_shared_by_tp_ranks(daemon: Daemon) -> None:
    pool = mla_pool()
    r0 = backend(config(daemon, mla=True, tp_rank=0, tp_size=2), pool)
    r1 = backend(config(daemon, mla=True, tp_rank=1, tp_size=2), pool)
    assert r0.namespace == r1.namespace and r0._sizes == [LAYERS * PAGE * 24 * 2]
    keys = page_keys(3)
    src, dst = pool.alloc(3 * PAGE), pool.alloc(3 * PAGE)
    assert r0.batch_set_v1(keys, src) == [True] * 3
    assert r1.batch_exists(keys) == 3
    assert r1.batch_get_v1(keys, dst) == [True] * 3 and pages(pool, dst) == pages(pool, src)
    with kvtier.Client(daemon.socket, str(r0.namespace)) as c:  # the raw page key, one block
        assert ks.component_keys(keys[0], 1) == [bytes.fromhex(keys[0])]
        assert c.get_copy([bytes.fromhex(keys[0])])[0] == page_bytes(pool, src, 0)


def test_refused_configurations(daemon: Daemon, pool: Any) -> None:
    with pytest.raises(ValueError, match="model_fingerprint"):
        StorageBackendFactory.create_backend("dynamic", config(daemon, ""), pool)
    b = StorageBackendFactory.create_backend("dynamic", config(daemon), pool)
    assert b.batch_exists(page_keys(1)) == 0  # no pool registered yet: a miss
    with pytest.raises(ValueError, match="layer_first.*page_first"):
        b.register_mem_pool_host(mha_pool("layer_first"))
    assert b.namespace is None
    with pytest.raises(ValueError, match="MLA"):  # an MHA pool for an MLA model
        backend(config(daemon, mla=True), pool)
    b.register_mem_pool_host(pool)
    b.register_mem_host_pool_v2(pool, "kv")  # the KV entry of a plain model's pool group
    with pytest.raises(NotImplementedError, match="mamba"):
        b.register_mem_host_pool_v2(mha_pool(), "mamba")


def test_flat_page_interface_v0_uses_the_same_blocks(daemon: Daemon, pool: Any) -> None:
    b = backend(config(daemon), pool)
    keys = page_keys(3)
    src = pool.alloc(3 * PAGE)
    flat = [pool.get_data_page(int(src[i * PAGE]), flat=True) for i in range(3)]
    assert b.batch_set(keys[:2], flat[:2]) is True and b.set(keys[2], flat[2]) is True
    got = b.batch_get(keys + page_keys(1, seed=999))  # into SGLang's dummy pages
    assert [g is None for g in got] == [False, False, False, True]
    assert [flat_bytes(g) for g in got[:3] if g is not None] == pages(pool, src)
    one = b.get(keys[1], pool.get_dummy_flat_data_page())
    assert one is not None and flat_bytes(one) == pages(pool, src)[1]
    assert b.exists(keys[0]) and not b.exists(page_keys(1, seed=999)[0])
    dst = pool.alloc(3 * PAGE)  # and the zero-copy interface reads what v0 stored
    assert b.batch_get_v1(keys, dst) == [True] * 3 and pages(pool, dst) == pages(pool, src)
    assert b.set(keys[0], torch.zeros(3)) is False  # a tensor that is not a page
    assert b.get(keys[0], torch.zeros(3)) is None


def test_threads_get_a_session_each(daemon: Daemon, pool: Any) -> None:
    b = backend(config(daemon), pool)
    keys = page_keys(4)
    src = pool.alloc(4 * PAGE)
    assert b.batch_set_v1(keys, src) == [True] * 4
    want = pages(pool, src)
    dsts = [pool.alloc(4 * PAGE) for _ in range(4)]
    results: List[Any] = [None] * 4
    all_read = threading.Barrier(4)  # no reader ends before every reader has its session

    def reader(t: int) -> None:
        ok = all(b.batch_exists(keys) == 4 and b.batch_get_v1(keys, dsts[t]) == [True] * 4
                 for _ in range(20))
        results[t] = ok and pages(pool, dsts[t]) == want
        all_read.wait()

    threads = [threading.Thread(target=reader, args=(t,)) for t in range(4)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    assert results == [True] * 4
    assert b.open_sessions == 5 and b.counters.connects == 5  # the 4 readers and this thread
    # SGLang restarts its storage threads on flush_cache(): the next new thread's first call
    # closes the sessions of the 4 that ended, so sessions do not pile up in kvtierd.
    with kvtier.Client(daemon.socket, "probe") as probe:
        sessions = probe.stats().sessions
        th = threading.Thread(target=lambda: b.batch_exists(keys))
        th.start()
        th.join()
        assert b.open_sessions == 2                 # this thread and the new one
        assert probe.stats().sessions == sessions - 4 + 1
    b.close()
    assert b.open_sessions == 0


def test_bad_calls_are_failures_not_exceptions(daemon: Daemon, pool: Any) -> None:
    b = backend(config(daemon, metrics=True), pool)
    keys = page_keys(2)
    src = pool.alloc(2 * PAGE)
    assert b.batch_set_v1(keys, src[:PAGE]) == [False, False]  # too few host indices
    assert b.batch_get_v1(keys, src[:PAGE]) == [False, False]
    assert b.batch_set_v1([], src[:0]) == [] and b.batch_exists([]) == 0
    assert b.batch_set_v1(keys, src) == [True, True]
    assert b.batch_get_v1(keys, pool.alloc(2 * PAGE)) == [True, True]
    stats = b.get_stats()
    assert isinstance(stats, StorageMetrics)
    assert stats.backup_pgs == [2] and stats.prefetch_pgs == [2]
    assert len(stats.backup_bandwidth) == 1 and b.get_stats().backup_pgs == []
    assert b.clear() is False and b.batch_exists(keys) == 2  # clear removes nothing


def test_pages_over_max_block_bytes_are_refused(caplog: pytest.LogCaptureFixture) -> None:
    with Daemon(dram_bytes=16 << 20, max_block_bytes=64 << 10) as d:
        pool = mha_pool(heads=64, dim=128)  # K and V ranges of 128 KiB per page
        b = backend(config(d), pool)
        keys = page_keys(2)
        src = pool.alloc(2 * PAGE)
        assert b.batch_set_v1(keys, src) == [False, False]
        assert "max_block_bytes" in caplog.text
        assert b.batch_exists(keys) == 0
        assert b.batch_get_v1(keys, pool.alloc(2 * PAGE)) == [False] * 2
        assert b.open_sessions == 1 and b.counters.connects == 1  # the session was kept
