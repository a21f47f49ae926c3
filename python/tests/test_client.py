"""kvtier.Client against a real kvtierd: every call, zero copy across processes, leases kept
alive by views, errors, purges and killed clients."""

from __future__ import annotations

import importlib.metadata
import os
import signal
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest

import kvtier
from kvtier import StatusCode, Tier

MiB = 1 << 20


def keys(n: int, tag: str = "k") -> list[bytes]:
    return [f"{tag}-{i}".encode() for i in range(n)]


def pattern(i: int, size: int) -> np.ndarray:
    return (np.arange(size, dtype=np.uint32) * 2654435761 + i).astype(np.uint8)


def store(c: kvtier.Client, ks: list[bytes], size: int) -> None:
    with c.reserve(ks, [size] * len(ks)) as r:
        assert r.codes == [StatusCode.OK] * len(ks)
        for i in range(len(ks)):
            np.frombuffer(r.view(i), np.uint8)[:] = pattern(i, size)
        assert r.commit() == [StatusCode.OK] * len(ks)


def test_version_and_limits(daemon: kvtier.testing.Daemon) -> None:
    # One version everywhere: the library the package loads, the package, its metadata.
    assert kvtier.version().count(".") == 2
    assert kvtier.version() == kvtier.__version__ == importlib.metadata.version("kvtier")
    assert kvtier.protocol_version() >= 1
    with kvtier.Client(daemon.socket, "ns") as c:
        assert c.pool_size == 64 * MiB
        assert c.max_block_bytes == 8 * MiB
        assert c.spill_max_block_bytes == 0  # no SSD tier here


def test_store_match_acquire_remove(daemon: kvtier.testing.Daemon) -> None:
    with kvtier.Client(daemon.socket, "ns") as c:
        ks = keys(4)
        store(c, ks, 64 * 1024)
        m = c.match_prefix(ks + [b"missing"] + ks[:1])
        assert m.count == 4 and m.tiers == [Tier.DRAM] * 4
        with c.acquire(ks + [b"missing"]) as leases:
            assert leases.codes == [StatusCode.OK] * 4 + [StatusCode.NOT_FOUND]
            assert leases.prefix == 4
            for i in range(4):
                assert np.array_equal(np.frombuffer(leases.view(i), np.uint8),
                                      pattern(i, 64 * 1024))
                assert leases.tier(i) == Tier.DRAM
            leases.verify()
        assert c.stats().leased_blocks == 0
        # Per-key outcomes are results, not exceptions: the call itself succeeds.
        assert c.remove([ks[0], b"missing"]) == [StatusCode.OK, StatusCode.NOT_FOUND]
        assert c.match_prefix(ks).count == 0
        assert c.commit([b"never reserved"]) == [StatusCode.NOT_FOUND]
        assert c.prefetch([ks[1], b"missing"]) == [StatusCode.OK, StatusCode.NOT_FOUND]
        s = c.stats()
        assert s.committed_blocks == 3 and s.reserved_blocks == 0
        # Hints to the tier policy: per-key outcomes too, and no hit or miss counted.
        assert c.has_hints
        assert c.reuse_soon([ks[1], b"missing"]) == [StatusCode.OK, StatusCode.NOT_FOUND]
        assert c.done_with([ks[2], b"missing"]) == [StatusCode.OK, StatusCode.NOT_FOUND]
        assert (c.stats().hits, c.stats().misses) == (s.hits, s.misses)
        # What loading the matched prefix would cost, by tier.
        e = c.match_prefix(ks[1:] + [b"missing"], estimate=True)
        assert e.count == 3 and e.dram_blocks == 3 and e.ssd_blocks == 0
        assert e.dram_bytes == 3 * 64 * 1024 and e.ssd_bytes == 0
        assert e.load_us is not None and e.ssd_queue_us == 0
        assert c.match_prefix(ks[1:]).load_us is None  # not asked for


def test_reserve_codes_and_whole_call_errors(daemon: kvtier.testing.Daemon) -> None:
    with kvtier.Client(daemon.socket, "ns") as c:
        store(c, [b"a"], 4096)
        with c.reserve([b"a", b"b"], [4096, 4096]) as r:
            assert r.codes == [StatusCode.ALREADY_EXISTS, StatusCode.OK]
            r.write(1, bytes(4096))
            with pytest.raises(kvtier.KvtierError):
                r.view(0)  # not reserved
            assert r.commit() == [StatusCode.OK]
        # A block over max_block_bytes fails the whole call, naming the limit.
        with pytest.raises(kvtier.InvalidArgumentError, match="max_block_bytes"):
            c.reserve([b"small", b"huge"], [4096, 9 * MiB])
        with pytest.raises(kvtier.InvalidArgumentError, match="1..32 bytes"):
            c.reserve([b"x" * 33], [1])
        with pytest.raises(kvtier.InvalidArgumentError):
            c.reserve([b"x"], [1, 2])
        # Pool full of pinned (reserved) blocks: RESOURCE_EXHAUSTED per key, with the reason.
        held = c.reserve(keys(8, "full"), [8 * MiB] * 8)
        r = c.reserve([b"one more"], [8 * MiB])
        assert r.codes == [StatusCode.RESOURCE_EXHAUSTED]
        assert "full" in r.refusal
        held.abort()
        r.abort()


def test_connect_errors() -> None:
    with pytest.raises(kvtier.UnavailableError, match="not running"):
        kvtier.Client("/nonexistent/kvtierd.sock", "ns")
    with pytest.raises(kvtier.InvalidArgumentError):
        kvtier.Client("/nonexistent/kvtierd.sock", "")
    assert issubclass(kvtier.LeaseRevokedError, kvtier.FailedPreconditionError)
    assert issubclass(kvtier.TimedOutError, kvtier.KvtierError)


def test_namespaces_never_meet(daemon: kvtier.testing.Daemon) -> None:
    with kvtier.Client(daemon.socket, "model-a") as a, kvtier.Client(daemon.socket, "model-b") as b:
        a.put_copy([b"k"], [b"from a"])
        assert b.match_prefix([b"k"]).count == 0
        assert b.get_copy([b"k"]) == [None]
        assert a.get_copy([b"k"]) == [bytearray(b"from a")]


def test_copies_and_ttl(daemon: kvtier.testing.Daemon) -> None:
    with kvtier.Client(daemon.socket, "ns") as c:
        data = [os.urandom(1000), bytearray(os.urandom(3000)), np.arange(10, dtype=np.float32)]
        assert c.put_copy([b"x", b"y", b"z"], data) == [StatusCode.OK] * 3
        got = c.get_copy([b"x", b"y", b"z", b"w"])
        assert got[0] == data[0] and got[1] == data[1] and got[3] is None
        assert np.array_equal(np.frombuffer(got[2], np.float32), data[2])
        out = bytearray(3000)
        with c.acquire([b"y"]) as leases:
            assert leases.copy_into(0, out) == 3000
            assert leases.read_bytes(0) == bytes(data[1])
        assert out == data[1]
        # Copies into read-only memory are refused, not done.
        with pytest.raises(kvtier.InvalidArgumentError, match="read-only"):
            c.get_copy_into([b"x"], [bytes(1000)])
        frozen = np.zeros(1000, np.uint8)
        frozen.flags.writeable = False
        with pytest.raises(kvtier.InvalidArgumentError, match="read-only"):
            c.get_copy_into([b"x"], [frozen])
        assert not frozen.any()
        # A TTL makes the block expire; wait for it without assuming how long expiry takes.
        assert c.put_copy([b"short"], [b"lived"], ttl_seconds=1) == [StatusCode.OK]
        deadline = time.monotonic() + 30
        while c.match_prefix([b"short"]).count and time.monotonic() < deadline:
            time.sleep(0.2)
        assert c.match_prefix([b"short"]).count == 0
        assert c.stats().expirations >= 1


def test_views_keep_leases_and_reservations_alive(daemon: kvtier.testing.Daemon) -> None:
    with kvtier.Client(daemon.socket, "ns") as c:
        store(c, [b"k"], 4096)
        leases = c.acquire([b"k"])
        arr = np.frombuffer(leases.view(0), np.uint8)
        assert leases.views_alive == 1
        leases.release()  # deferred: a view still reads the block
        assert c.stats().leased_blocks == 1
        c.remove([b"k"])
        assert np.array_equal(arr, pattern(0, 4096))  # removed, but still ours to read
        del arr
        assert c.stats().leased_blocks == 0
        assert c.stats().committed_blocks == 0

        r = c.reserve([b"w"], [4096])
        view = r.view(0)
        with pytest.raises(BufferError):
            r.commit()  # a write through the view after commit could hit a reused slot
        view[:] = bytes(4096)
        del view
        r.commit()
        # Leaving the with-block aborts, once its views are gone.
        with c.reserve([b"v"], [4096]) as r2:
            kept = r2.view(0)
        assert c.stats().reserved_blocks == 1
        del kept
        assert c.stats().reserved_blocks == 0


def test_views_outlive_close_and_deferred_releases_are_sent(daemon: kvtier.testing.Daemon) -> None:
    c = kvtier.Client(daemon.socket, "ns")
    store(c, [b"k"], 4096)
    leases = c.acquire([b"k"])
    arr = np.frombuffer(leases.view(0), np.uint8)
    c.close()  # the session ends now; the mapping stays while `arr` reads it
    assert c.closed
    with pytest.raises(kvtier.KvtierError):
        c.stats()
    assert np.array_equal(arr, pattern(0, 4096))
    del arr, leases

    # A view dropped while an onload is open cannot release at once (no other call may run
    # then): its release goes with the next call.
    with kvtier.Client(daemon.socket, "ns") as c, kvtier.HostMemory(MiB) as mem:
        region = c.register_host_region(mem)
        leases = c.acquire([b"k"])
        view = leases.view(0)
        leases.release()
        op = c.start_onload([b"k"], region, [0], layers=1, progress=(region, MiB - 4))
        del view
        assert [r.code for r in op.finish()] == [StatusCode.OK]
        assert c.stats().leased_blocks == 0


def test_zero_copy_write_is_seen_by_another_process(daemon: kvtier.testing.Daemon) -> None:
    with kvtier.Client(daemon.socket, "ns") as c:
        size = 2 * MiB
        with c.reserve([b"shared"], [size]) as r:
            np.frombuffer(r.view(0), np.uint8)[:] = pattern(5, size)
            r.commit()
        reader = textwrap.dedent(f"""
            import numpy as np, kvtier
            c = kvtier.Client({daemon.socket!r}, "ns")
            with c.acquire([b"shared"]) as l:
                a = np.frombuffer(l.view(0), np.uint8)
                s = int(a.astype(np.uint64).sum())
                del a
                l.verify()
            print(s)
        """)
        out = subprocess.run([sys.executable, "-c", reader], capture_output=True, text=True,
                             check=True, env=os.environ)
        assert int(out.stdout) == int(pattern(5, size).astype(np.uint64).sum())


def test_a_killed_client_gives_everything_back(daemon: kvtier.testing.Daemon) -> None:
    with kvtier.Client(daemon.socket, "ns") as c:
        store(c, [b"held"], 4096)
        child = textwrap.dedent(f"""
            import os, sys, kvtier
            c = kvtier.Client({daemon.socket!r}, "ns")
            r = c.reserve([b"pending"], [1 << 20])
            l = c.acquire([b"held"])
            v = l.view(0)
            print("holding", flush=True)
            sys.stdin.read()
        """)
        p = subprocess.Popen([sys.executable, "-c", child], stdin=subprocess.PIPE,
                             stdout=subprocess.PIPE, text=True, env=os.environ)
        assert p.stdout is not None and p.stdout.readline().strip() == "holding"
        s = c.stats()
        assert s.reserved_blocks == 1 and s.leased_blocks == 1
        p.send_signal(signal.SIGKILL)
        p.wait()
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            s = c.stats()
            if s.reserved_blocks == 0 and s.leased_blocks == 0:
                break
            time.sleep(0.05)
        assert s.reserved_blocks == 0 and s.leased_blocks == 0
        assert c.match_prefix([b"pending"]).count == 0


def test_a_purge_during_a_read_is_caught(daemon: kvtier.testing.Daemon) -> None:
    c = kvtier.Client(daemon.socket, "ns")
    size = 1 * MiB
    store(c, [b"k"], size)
    leases = c.acquire([b"k"])
    view = np.frombuffer(leases.view(0), np.uint8)
    first = view[: size // 2].copy()
    assert leases.intact()
    daemon.ctl("purge", "test")
    second = view[size // 2 :].copy()  # read after the purge wiped the pool: zeroes
    assert not second.any()
    assert not leases.intact()
    with pytest.raises(kvtier.LeaseRevokedError):
        leases.verify()
    del view, first
    # A session ended by kvtierd fails its next call as a whole.
    with pytest.raises(kvtier.KvtierError):
        c.stats()
    c.close()

    # The usual shape: a purge inside the with-block surfaces as LeaseRevokedError, also when
    # leaving the block releases leases of a session that is gone.
    with kvtier.Client(daemon.socket, "ns") as c:
        store(c, [b"k"], size)
        with pytest.raises(kvtier.LeaseRevokedError):
            with c.acquire([b"k"]) as leases:
                out = np.frombuffer(leases.view(0), np.uint8).copy()
                daemon.ctl("purge", "test")
                leases.verify()
        with pytest.raises(kvtier.UnavailableError):  # and the session is gone
            c.get_copy([b"k"])


def test_host_region_offload_onload_and_layers(daemon: kvtier.testing.Daemon) -> None:
    with kvtier.Client(daemon.socket, "ns") as c, kvtier.HostMemory(8 * MiB) as mem:
        region = c.register_host_region(mem)
        buf = np.frombuffer(mem.view(), np.uint8)
        size = 256 * 1024
        ks = keys(8, "layer")
        for i in range(8):
            buf[i * size : (i + 1) * size] = pattern(i, size)
        codes = c.offload(ks, region, [i * size for i in range(8)], [size] * 8, layers=2)
        assert codes == [StatusCode.OK] * 8
        assert c.offload(ks[:1], region, [0], [size]) == [StatusCode.ALREADY_EXISTS]
        # Onload the run contiguously at 4 MiB: no staging copy.
        base = 4 * MiB
        results = c.onload(ks, region, [base + i * size for i in range(8)])
        assert all(r.code == StatusCode.OK and r.size == size for r in results)
        assert np.array_equal(buf[base : base + 8 * size], buf[: 8 * size])
        # In steps: a progress word at the end of the region.
        buf[base : base + 8 * size] = 0
        progress = 8 * MiB - 4
        buf[progress : progress + 4] = 0
        with c.start_onload(ks, region, [base + i * size for i in range(8)], layers=2,
                            progress=(region, progress)) as op:
            op.wait_layer(0)
            assert np.array_equal(buf[base : base + 4 * size], buf[: 4 * size])
            op.wait_layer(1)
            results = op.finish()
        assert [r.code for r in results] == [StatusCode.OK] * 8
        assert np.array_equal(buf[base : base + 8 * size], buf[: 8 * size])
        # Misses and blocks that do not fit are per-key results.
        results = c.onload([b"missing", ks[0]], region, [0, 8 * MiB - 10])
        assert [r.code for r in results] == [StatusCode.NOT_FOUND, StatusCode.INVALID_ARGUMENT]
        if not os.path.exists("/dev/nvidia0"):  # without a GPU, CUDA calls say so
            with pytest.raises(kvtier.UnavailableError):
                c.register_cuda_region(0, bytes(64), 1 << 20)
            with pytest.raises(kvtier.UnavailableError):
                c.pin_pool_for_cuda()
        c.deregister_region(region)
        with pytest.raises(kvtier.NotFoundError):
            c.deregister_region(region)


def test_ssd_tier_tiers_and_prefetch(ssd_daemon: kvtier.testing.Daemon) -> None:
    with kvtier.Client(ssd_daemon.socket, "ns") as c:
        assert c.spill_max_block_bytes == 4 * MiB
        ks = keys(4, "cold")
        store(c, ks, 256 * 1024)
        # More than demote_above (5%) of the pool not on SSD yet: the oldest are written out.
        filler = np.zeros(MiB, np.uint8)
        for i in range(8):
            assert c.put_copy([f"filler-{i}".encode()], [filler]) == [StatusCode.OK]
        deadline = time.monotonic() + 30
        while c.stats().demotions < 4 and time.monotonic() < deadline:
            time.sleep(0.05)
        ssd_daemon.ctl("evict", "--tenant", "test", "--tier", "dram")
        m = c.match_prefix(ks)
        assert m.count == 4 and m.tiers == [Tier.SSD] * 4
        assert c.prefetch(ks) == [StatusCode.OK] * 4
        assert c.match_prefix(ks).tiers == [Tier.DRAM] * 4
        ssd_daemon.ctl("evict", "--tenant", "test", "--tier", "dram")
        with c.acquire(ks) as leases:  # acquire promotes from SSD itself
            assert leases.codes == [StatusCode.OK] * 4
            assert np.array_equal(np.frombuffer(leases.view(3), np.uint8),
                                  pattern(3, 256 * 1024))
            leases.verify()


def test_block_keys_and_namespace() -> None:
    tokens = list(range(1000))
    k = kvtier.block_keys(tokens, 256)
    assert len(k) == 3 and all(len(x) == 32 for x in k)
    assert kvtier.block_keys(tokens[:768], 256) == k  # a prefix has the prefix's keys
    changed = tokens.copy()
    changed[300] = 7  # block 1: it and every later key change, block 0 stays
    k2 = kvtier.block_keys(changed, 256)
    assert k2[0] == k[0] and k2[1] != k[1] and k2[2] != k[2]
    assert kvtier.block_keys(tokens, 256, salt=b"lora-1")[0] != k[0]
    base = dict(model_fingerprint="f" * 32, engine="llama.cpp", engine_version="0.3.36",
                kv_dtype="f16", kv_layout="flash_attn=0", block_tokens=256)
    ns = kvtier.namespace(**base)
    assert len(ns.encode()) <= 128 and ns.startswith("llama.cpp-0.3.36/tp0of1/blk256/")
    for field, value in [("model_fingerprint", "e" * 32), ("engine_version", "0.3.37"),
                         ("kv_dtype", "q8_0"), ("kv_layout", "flash_attn=1")]:
        assert kvtier.namespace(**{**base, field: value}) != ns
    assert kvtier.namespace(**base, tp_rank=1, tp_size=2) != ns
    assert kvtier.namespace(**base) == ns
