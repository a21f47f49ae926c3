"""kvtier.Client across real kvtierd restarts on the same socket: without ``reconnect`` every
call after the loss raises UnavailableError at once; with it the next call opens a new session,
and nothing of the lost session (leases, reservations, regions, views) is honoured in the new
one."""

from __future__ import annotations

import os
import time

import numpy as np
import pytest

import kvtier
from kvtier import StatusCode

BLOCK = 64 << 10
# "At once" means "not after the 120 s timeout": a liveness bound (a refused call takes
# microseconds), not a latency target.
AT_ONCE_S = 30.0


def kill(daemon) -> None:
    """SIGKILL, as a crash: the next start is cold."""
    daemon.proc.kill()
    daemon.proc.wait()
    daemon.proc = None


def keys_of(owner: int, n: int) -> list[bytes]:
    return [b"py/%d/%d" % (owner, i) for i in range(n)]


def store_and_read(c: kvtier.Client, keys: list[bytes]) -> None:
    values = [os.urandom(BLOCK) for _ in keys]
    assert c.put_copy(keys, values) == [StatusCode.OK] * len(keys)
    assert [bytes(b) for b in c.get_copy(keys)] == values  # byte for byte, verified


def test_without_reconnect_every_call_after_a_restart_raises_unavailable(daemon):
    with kvtier.Client(daemon.socket, "py/reconnect", timeout_ms=120000) as c:
        keys = keys_of(1, 2)
        store_and_read(c, keys)
        daemon.stop()
        daemon.start()
        for _ in range(3):
            t0 = time.monotonic()
            for call in (lambda: c.match_prefix(keys), c.stats, lambda: c.acquire(keys),
                         lambda: c.put_copy(keys_of(2, 1), [b"x"])):
                with pytest.raises(kvtier.UnavailableError, match="kvtierd"):
                    call()
            assert time.monotonic() - t0 < AT_ONCE_S
        assert c.reconnects == 0
        assert not c.reconnect


def test_reconnect_carries_a_client_loop_across_a_killed_and_restarted_kvtierd(daemon):
    with kvtier.Client(daemon.socket, "py/reconnect", timeout_ms=120000, reconnect=True) as c:
        assert c.reconnect and c.reconnects == 0
        for i in range(10):
            store_and_read(c, keys_of(100 + i, 4))
        held_keys = keys_of(100, 4)
        old = c.acquire(held_keys)
        assert old.prefix == 4 and old.generation == 0
        old_view = old.view(0)
        old_reservation = c.reserve(keys_of(5, 1), [BLOCK])
        memory = kvtier.HostMemory(4 * BLOCK)
        old_region = c.register_host_region(memory)
        assert memory.views_alive == 1  # held while registered

        kill(daemon)
        for _ in range(5):  # kvtierd down: each call fails at once, the next tries again
            t0 = time.monotonic()
            with pytest.raises(kvtier.UnavailableError, match="reconnecting failed"):
                c.match_prefix(held_keys)
            assert time.monotonic() - t0 < AT_ONCE_S
        assert c.reconnects == 0

        daemon.start()
        for i in range(10, 20):  # the loop goes on: its first call reconnects, then runs
            store_and_read(c, keys_of(100 + i, 4))
        assert c.reconnects == 1
        assert c.match_prefix(held_keys).count == 0  # SIGKILL: the DRAM tier went with it

        # The old leases: refused, their view reads zeros (never the new pool), no crash.
        assert not old.intact()
        with pytest.raises(kvtier.LeaseRevokedError):
            old.verify()
        with pytest.raises(kvtier.KvtierError) as e:
            old.view(1)
        assert e.value.code == StatusCode.FAILED_PRECONDITION
        assert not np.frombuffer(old_view, np.uint8).any()
        del old_view
        old.release()  # forgotten by libkvclient, nothing sent
        # The old reservation: its key reserved anew, the old commit must not commit that one.
        new_reservation = c.reserve(keys_of(5, 1), [BLOCK])
        with pytest.raises(kvtier.KvtierError) as e:
            old_reservation.commit()
        assert e.value.code == StatusCode.FAILED_PRECONDITION
        assert c.match_prefix(keys_of(5, 1)).count == 0
        new_reservation.write(0, b"\x07" * BLOCK)
        assert new_reservation.commit() == [StatusCode.OK]
        assert c.get_copy(keys_of(5, 1)) == [bytearray(b"\x07" * BLOCK)]
        # The old region: refused, and no longer holding the memory.
        assert memory.views_alive == 0
        with pytest.raises(kvtier.KvtierError) as e:
            c.onload(keys_of(5, 1), old_region, [0])
        assert e.value.code == StatusCode.FAILED_PRECONDITION
        region = c.register_host_region(memory)
        assert region != old_region
        assert c.onload(keys_of(5, 1), region, [BLOCK])[0].code == StatusCode.OK
        assert bytes(memory.view()[BLOCK:2 * BLOCK]) == b"\x07" * BLOCK
        c.deregister_region(region)
        memory.close()
        assert c.stats().leased_blocks == 0


def test_reconnect_after_a_clean_restart_gives_new_leases_of_the_new_session(daemon):
    with kvtier.Client(daemon.socket, "py/reconnect", reconnect=True) as c:
        keys = keys_of(7, 2)
        store_and_read(c, keys)
        with c.acquire(keys) as before:
            daemon.stop()
            daemon.start()
            store_and_read(c, keys)  # reconnects; the restart was cold: stored again
            assert c.reconnects == 1
            with c.acquire(keys) as after:
                assert after.generation == 1 and after.intact()
                assert not before.intact()
                assert c.stats().leased_blocks == 2
            assert c.stats().leased_blocks == 0
