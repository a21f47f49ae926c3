"""kvtier.llama_cpp against a real kvtierd and a real llama.cpp (llama-cpp-python) on the CPU.

A tiny random llama model (tests/llama_model.py) prefills a 2,048-token prompt in batches of
256 tokens (= the block size, so restored blocks are bit-identical to recomputed ones);
logits are compared as raw bytes. Each test runs its own kvtierd (kvtier.testing.Daemon).
The model has 1 KiB of KV per token: a 256-token block is a 256 KiB piece, exactly.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
import subprocess
import sys
import textwrap
import time
import warnings
from pathlib import Path
from typing import Callable, List

import pytest

_HERE = os.path.dirname(os.path.abspath(__file__))
for _p in (_HERE, os.path.dirname(_HERE)):
    if _p not in sys.path:
        sys.path.insert(0, _p)

# CI pins llama-cpp-python: a missing llama_cpp must fail this suite, never skip it.
import llama_cpp  # noqa: E402

import kvtier  # noqa: E402
from kvtier import StatusCode, Tier  # noqa: E402
from kvtier import llama_state as ls  # noqa: E402
from kvtier.llama_cpp import (  # noqa: E402
    LAYOUT_KEY,
    BlockTooLargeError,
    KvtierLlamaCache,
    LlamaKVStore,
    llama_namespace,
    piece_keys,
)
from kvtier.testing import Daemon  # noqa: E402

import llama_model as lm  # noqa: E402

T = 2048          # prompt length
N = 256           # block size (and prefill batch: block-aligned batch boundaries)
MiB = 1 << 20


# --------------------------------------------------------------------------
# fixtures and helpers

@pytest.fixture(scope="module")
def model_path(tmp_path_factory) -> str:
    return lm.write_tiny_llama_gguf(str(tmp_path_factory.mktemp("model") / "tiny.gguf"))


@pytest.fixture(scope="module")
def tokens() -> List[int]:
    return lm.random_tokens(T + 1, seed=11)  # the extra one is the "next token"


@pytest.fixture(scope="module")
def ref_next(model_path, tokens) -> bytes:
    """Next-token logits after computing the whole prompt (no kvtier)."""
    llm = lm.open_llama(model_path)
    lm.prefill(llm, tokens[:T], N)
    return lm.next_logits(llm, tokens[T], T)


@pytest.fixture(scope="module")
def layout(model_path, tokens) -> ls.StateLayout:
    """The layout of the tests' contexts (flash attention off): the salt of their keys."""
    llm = lm.open_llama(model_path)
    lm.prefill(llm, tokens[:N], N)
    return ls.parse_seq_state(lm.get_seq_state(llm)).layout


@pytest.fixture(scope="module")
def ns(model_path) -> str:
    return llama_namespace(lm.open_llama(model_path), model_path, N)


@pytest.fixture
def daemon():
    with Daemon(dram_bytes=64 * MiB) as d:
        yield d


def source(model_path: str, tokens: List[int], *, flash_attn: bool = False):
    """A context that computed the prompt in block-aligned batches."""
    llm = lm.open_llama(model_path, flash_attn=flash_attn)
    lm.prefill(llm, tokens[:T], N)
    return llm


def store_prompt(d: Daemon, ns: str, model_path: str, tokens: List[int], **kw) -> LlamaKVStore:
    kv = LlamaKVStore(kvtier.Client(d.socket, ns), source(model_path, tokens), block_tokens=N)
    assert kv.store(tokens[:T], **kw) == T // N
    return kv


def finish(llm, tokens: List[int], restored: int) -> bytes:
    """Computes the rest of the prompt after `restored` tokens; the next token's logits."""
    assert lm.seq_pos_max(llm) == restored - 1       # exactly the restored prefix, or empty
    lm.prefill(llm, tokens[restored:T], N, pos0=restored)
    return lm.next_logits(llm, tokens[T], T)


def wait_for(cond: Callable[[], bool], what: str, deadline_s: float = 30.0) -> None:
    end = time.monotonic() + deadline_s
    while not cond():
        if time.monotonic() > end:
            raise AssertionError("timed out waiting for " + what)
        time.sleep(0.05)


# --------------------------------------------------------------------------
# hits

def test_store_restore_into_fresh_context_bit_exact(daemon, model_path, tokens, ns, ref_next):
    kv = store_prompt(daemon, ns, model_path, tokens)
    assert kv.store(tokens[:T]) == 0                     # already there: nothing new
    fresh = lm.open_llama(model_path)                     # a new Llama on the same model
    got = LlamaKVStore(kvtier.Client(daemon.socket, ns), fresh, block_tokens=N)
    assert got.restore(tokens) == T                       # all 8 blocks; token T is left
    assert got.stats.hits == 1 and got.stats.blocks_restored == T // N
    assert lm.seq_pos_max(fresh) == T - 1
    assert fresh.n_tokens == T and list(fresh.input_ids[:T]) == tokens[:T]
    assert lm.next_logits(fresh, tokens[T], T) == ref_next
    # a prompt of exactly T tokens keeps its last block to compute (its logits are needed)
    again = lm.open_llama(model_path)
    kv2 = LlamaKVStore(kvtier.Client(daemon.socket, ns), again, block_tokens=N)
    assert kv2.restore(tokens[:T]) == T - N
    assert finish(again, tokens, T - N) == ref_next


def test_llama_eval_continues_after_restore(daemon, model_path, tokens, ns, ref_next):
    """restore() sets llm.n_tokens/input_ids: Llama.eval computes just the rest."""
    store_prompt(daemon, ns, model_path, tokens)
    llm = lm.open_llama(model_path, n_batch=N)
    kv = LlamaKVStore(kvtier.Client(daemon.socket, ns), llm, block_tokens=N)
    short = tokens[:1100]                                 # 4 blocks restorable
    n = kv.restore(short)
    assert n == 1024
    llm.eval(tokens[n:T])
    assert llm.n_tokens == T
    assert lm.next_logits(llm, tokens[T], T) == ref_next


def test_partial_prefix_restore_then_compute_rest(daemon, model_path, tokens, ns):
    store_prompt(daemon, ns, model_path, tokens)
    other = tokens[:1024] + lm.random_tokens(T + 1 - 1024, seed=12)   # shares 4 blocks
    ref = lm.open_llama(model_path)
    lm.prefill(ref, other[:T], N)
    ref_last = lm.last_logits(ref)
    ref_other = lm.next_logits(ref, other[T], T)

    llm = lm.open_llama(model_path, n_batch=N)
    kv = LlamaKVStore(kvtier.Client(daemon.socket, ns), llm, block_tokens=N)
    assert kv.restore(other) == 1024
    assert lm.seq_pos_max(llm) == 1023
    llm.eval(other[1024:T])                               # batches of N from 1024
    assert llm.n_tokens == T
    assert lm.last_logits(llm) == ref_last
    assert lm.next_logits(llm, other[T], T) == ref_other
    assert kv.store(other[:T]) == 4                       # its own 4 new blocks


_CHILD = textwrap.dedent("""
    import hashlib, sys
    sys.path[:0] = [{tests!r}, {python!r}]
    import kvtier, llama_model as lm
    from kvtier.llama_cpp import LlamaKVStore, llama_namespace
    tokens = lm.random_tokens({n} + 1, seed=11)
    llm = lm.open_llama({model!r})
    lm.prefill(llm, tokens[:{n}], {block})
    kv = LlamaKVStore(kvtier.Client({socket!r}, llama_namespace(llm, {model!r}, {block})), llm,
                      block_tokens={block})
    stored = kv.store(tokens[:{n}])
    logits = lm.next_logits(llm, tokens[{n}], {n})
    print(stored, hashlib.sha256(logits).hexdigest())
""")


def test_two_processes_share_a_prefix(daemon, model_path, tokens, ns, ref_next):
    """Another engine process stores; this one restores and gets the same logits."""
    code = _CHILD.format(tests=_HERE, python=os.path.dirname(_HERE), n=T, model=model_path,
                         block=N, socket=daemon.socket)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 0, out.stderr
    stored, child_hash = out.stdout.split()
    assert int(stored) == T // N
    assert child_hash == hashlib.sha256(ref_next).hexdigest()

    llm = lm.open_llama(model_path)
    kv = LlamaKVStore(kvtier.Client(daemon.socket, ns), llm, block_tokens=N)
    assert kv.restore(tokens) == T
    assert lm.next_logits(llm, tokens[T], T) == ref_next


# --------------------------------------------------------------------------
# blocks that go away: a shorter prefix (or none), and the right logits after recomputing

def _push_to_ssd(d: Daemon, client: kvtier.Client, keys: List[bytes]) -> None:
    """Makes `keys` SSD-only: fill the pool past spill.demote_above (0.75) with other blocks
    so that kvtierd demotes the least recently used dirty ones (ours) to SSD, then evict
    DRAM (which keeps blocks already on SSD and drops the others)."""
    s = client.stats()
    filler = kvtier.Client(d.socket, "filler")
    n = (s.pool_bytes - s.used_bytes) // MiB - 1
    assert all(c == StatusCode.OK for c in
               filler.put_copy([os.urandom(32) for _ in range(n)], [bytes(MiB)] * n))
    wait_for(lambda: client.stats().ssd_blocks >= len(keys), "demotion to SSD")
    wait_for(lambda: client.stats().dirty_bytes <= 0.75 * s.pool_bytes, "demotion to settle")
    d.ctl("evict", "--tenant", "test", "--tier", "dram")
    m = client.match_prefix(keys)
    assert m.count == len(keys) and set(m.tiers) == {Tier.SSD}
    filler.close()


def _flip_record_byte(spill_dir: Path, key: bytes) -> None:
    """Flips one ciphertext byte of the SSD record of `key` (its header holds the key in
    clear at offset 56; the 256-byte header is followed by the AES-GCM ciphertext)."""
    hits = []
    for seg in sorted(spill_dir.rglob("seg-*.kvs")):
        data = seg.read_bytes()
        at = data.find(key)
        while at >= 0:
            if (at - 56) % 4096 == 0:
                hits.append((seg, at - 56))
            at = data.find(key, at + 1)
    assert len(hits) == 1, hits
    seg, rec = hits[0]
    with open(seg, "r+b") as f:
        f.seek(rec + 256 + 1000)
        b = f.read(1)
        f.seek(rec + 256 + 1000)
        f.write(bytes([b[0] ^ 0x5A]))
        f.flush()
        os.fsync(f.fileno())


@pytest.mark.parametrize("how", ["removed", "expired", "purged", "ssd_tampered"])
def test_lost_blocks_give_a_shorter_prefix_never_wrong_logits(model_path, tokens, ns, layout,
                                                              ref_next, how):
    opts = {"dram_bytes": 64 * MiB}
    if how == "expired":
        opts["default_ttl_seconds"] = 1
    if how == "ssd_tampered":
        opts = {"dram_bytes": 16 * MiB, "max_block_bytes": 4 * MiB, "ssd_bytes": 256 * MiB}
    with Daemon(**opts) as d:
        keys = piece_keys(tokens[:T], N, layout)
        client = kvtier.Client(d.socket, ns)
        llm = lm.open_llama(model_path)
        kv = LlamaKVStore(kvtier.Client(d.socket, ns), llm, block_tokens=N)
        if how == "expired":
            # the first 4 blocks outlive the test; the last 4 take the tenant's 1 s default,
            # and so does the layout block (stores write it without a TTL of their own)
            src = LlamaKVStore(client, source(model_path, tokens), block_tokens=N)
            assert src.store(tokens[:1024], ttl_seconds=3600) == 4
            assert src.store(tokens[:T]) == 4
            wait_for(lambda: client.match_prefix(keys).count == 4, "the last blocks to expire")
            wait_for(lambda: client.match_prefix([LAYOUT_KEY]).count == 0,
                     "the layout block to expire")
            # a fresh context needs the layout block to know which keys to look up...
            assert kv.restore(tokens) == 0 and kv.stats.no_layout == 1
            # ... a context that knows its layout does not
            llm, kv = src.llm, src
            expect = 1024
        else:
            store_prompt(d, ns, model_path, tokens)
            if how == "removed":
                assert client.remove([keys[3]]) == [StatusCode.OK]
                expect = 3 * N
            elif how == "purged":
                d.ctl("purge", "test")
                expect = 0
            else:
                _push_to_ssd(d, client, keys)
                _flip_record_byte(d.dir / "spill", keys[5])
                expect = 5 * N

        n = kv.restore(tokens)
        assert n == expect
        if how == "ssd_tampered":
            assert kv.client.stats().integrity_failures >= 1
        assert finish(llm, tokens, n) == ref_next


def test_purge_during_the_copy_is_a_miss(daemon, model_path, tokens, ns, ref_next):
    """The blocks were copied, then the tenant was purged before verify(): the copy must not
    be used (the pool is zeroed under a purge); the engine recomputes."""
    src = store_prompt(daemon, ns, model_path, tokens)
    llm = lm.open_llama(model_path)
    kv = LlamaKVStore(kvtier.Client(daemon.socket, ns), llm, block_tokens=N)
    purged = []

    def purge(leases: kvtier.Leases) -> None:
        assert leases.intact()
        daemon.ctl("purge", "test")
        purged.append(leases.intact())

    kv._after_copy = purge
    assert kv.restore(tokens) == 0
    assert purged == [False]
    assert kv.stats.revoked == 1 and kv.stats.misses == 1
    assert lm.seq_pos_max(llm) == -1 and llm.n_tokens == 0
    assert finish(llm, tokens, 0) == ref_next
    # both stores reconnect to kvtierd (the purge ended their sessions) and work again
    kv._after_copy = None
    assert src.store(tokens[:T]) == T // N
    assert kv.restore(tokens) == T                        # replaces what the sequence held
    assert lm.next_logits(llm, tokens[T], T) == ref_next


# --------------------------------------------------------------------------
# KV that must never meet

def test_another_model_never_matches(daemon, model_path, tokens, ns, layout, tmp_path):
    other_path = lm.write_tiny_llama_gguf(str(tmp_path / "other.gguf"),
                                          lm.TinyLlamaConfig(seed=999))
    other = lm.open_llama(other_path)
    other_ns = llama_namespace(other, other_path, N)
    assert other_ns != ns
    assert other_ns == llama_namespace(other, other_path, N,
                                       model_fingerprint=kvtier.file_fingerprint(other_path))
    store_prompt(daemon, ns, model_path, tokens)
    keys = piece_keys(tokens[:T], N, layout)              # the same shape: the same layout
    c = kvtier.Client(daemon.socket, other_ns)
    assert c.match_prefix(keys).count == 0
    assert kvtier.Client(daemon.socket, ns).match_prefix(keys).count == T // N
    kv = LlamaKVStore(c, other, block_tokens=N)
    assert kv.restore(tokens) == 0 and kv.stats.misses == 1


def test_namespace_parts(model_path):
    llm = lm.open_llama(model_path)
    base = llama_namespace(llm, model_path, N)
    assert base.startswith("llama.cpp-%s/tp0of1/blk256/" % llama_cpp.__version__)
    assert len(base.encode()) <= 128
    assert llama_namespace(llm, model_path, N) == base                  # deterministic
    assert llama_namespace(llm, model_path, 128) != base
    assert llama_namespace(llm, model_path, N, tp_rank=1, tp_size=2) != base
    assert llama_namespace(llm, model_path, N, extra=["lora=x"]) != base
    assert llama_namespace(llm, model_path, N, model_fingerprint="0" * 32) != base
    q8 = lm.open_llama(model_path, flash_attn=True, type_k=8, type_v=8)
    fa = lm.open_llama(model_path, flash_attn=True)
    assert llama_namespace(q8, model_path, N) != llama_namespace(fa, model_path, N)


def test_flash_attention_layouts_never_meet(daemon, model_path, tokens, layout, ref_next):
    on = source(model_path, tokens, flash_attn=True)
    ns_on = llama_namespace(on, model_path, N)
    ns_off = llama_namespace(lm.open_llama(model_path), model_path, N)
    assert ns_on != ns_off
    kv_on = LlamaKVStore(kvtier.Client(daemon.socket, ns_on), on, block_tokens=N)
    assert kv_on.store(tokens[:T]) == T // N
    assert kv_on.layout is not None and kv_on.layout.v_trans is False and layout.v_trans
    off_fresh = lm.open_llama(model_path)
    kv = LlamaKVStore(kvtier.Client(daemon.socket, ns_off), off_fresh, block_tokens=N)
    assert kv.restore(tokens) == 0 and kv.stats.no_layout == 1  # nothing in its namespace

    # Even under one namespace (a misconfigured caller), the layouts never meet. A fresh
    # context without flash attention looks up the keys of the layout block's layout (flash
    # attention's), finds those pieces, and llama.cpp refuses their V layout...
    kv = LlamaKVStore(kvtier.Client(daemon.socket, ns_on), off_fresh, block_tokens=N)
    assert kv.restore(tokens) == 0
    assert kv.stats.refused_by_llama == 1 and lm.seq_pos_max(off_fresh) == -1
    assert kv.layout is None
    # ... a context without flash attention stores its own pieces there, under its own
    # layout's keys: all of them new, the 4 blocks it shares with flash attention's prompt
    # included (with keys of the tokens alone it would find those 4 and store 4)
    other = tokens[:1024] + lm.random_tokens(T + 1 - 1024, seed=14)
    off = source(model_path, other)
    kv_off = LlamaKVStore(kvtier.Client(daemon.socket, ns_on), off, block_tokens=N)
    assert kv_off.store(other[:T]) == T // N
    assert kv_off.stats.layout_conflicts == 1              # the layout block: flash attention's
    ref_other = lm.next_logits(off, other[T], T)
    # ... and each context restores its own layout's pieces, with the right logits
    assert kv_off.restore(other) == T
    assert lm.next_logits(off, other[T], T) == ref_other
    assert kv_off.restore(tokens) == 1024                  # its own 4, never flash attention's
    assert finish(off, tokens, 1024) == ref_next
    ref_on = source(model_path, tokens, flash_attn=True)
    ref_on_next = lm.next_logits(ref_on, tokens[T], T)
    assert kv_on.restore(tokens) == T
    assert lm.next_logits(on, tokens[T], T) == ref_on_next
    assert kv_on.restore(other) == 1024                    # its own 4 blocks of the prefix


def test_a_layout_block_rewritten_under_pieces_never_joins_them(daemon, model_path, tokens,
                                                                 ref_next):
    """The layout block can go (expiry, eviction, removal) and come back with another layout:
    a flash-attention context stored 4 blocks; the layout block went; a context without flash
    attention in the same namespace stored another prompt, writing its own layout block. A
    fresh context without flash attention must not join the first prompt's pieces with that
    layout (the pieces are the same size either way, and llama.cpp would accept them: wrong
    logits); their keys carry their layout, so it does not find them."""
    on = source(model_path, tokens, flash_attn=True)
    ns = llama_namespace(on, model_path, N)                  # shared by both, by mistake
    c = kvtier.Client(daemon.socket, ns)
    assert LlamaKVStore(c, on, block_tokens=N).store(tokens[:1024]) == 4
    assert c.remove([LAYOUT_KEY]) == [StatusCode.OK]
    other = lm.random_tokens(T, seed=15)
    kv_off = LlamaKVStore(kvtier.Client(daemon.socket, ns), source(model_path, other),
                          block_tokens=N)
    assert kv_off.store(other[:T]) == T // N
    stored = ls.StateLayout.from_bytes(bytes(c.get_copy([LAYOUT_KEY])[0] or b""))
    assert stored == kv_off.layout and stored.v_trans      # the layout block is now its layout

    fresh = lm.open_llama(model_path)
    kv = LlamaKVStore(kvtier.Client(daemon.socket, ns), fresh, block_tokens=N)
    n = kv.restore(tokens)
    assert n == 0 and kv.stats.misses == 1 and lm.seq_pos_max(fresh) == -1
    assert finish(fresh, tokens, n) == ref_next


# --------------------------------------------------------------------------
# the layout block, and pieces that are exactly the payload

PIECE = N * 1024  # 4 layers x (128 B K + 128 B V) per token


def test_stored_blocks_are_exactly_the_payload(daemon, model_path, tokens, ns):
    """A piece is the block's K/V bytes and nothing else: 256 KiB for 256 tokens, a power of
    two, which fills a pool slot exactly (with a per-piece header it would take a 320 KiB
    slot). The layout is stored once per namespace (one 4 KiB slot), not once per block."""
    kv = store_prompt(daemon, ns, model_path, tokens)
    assert kv.stats.bytes_stored == T * 1024
    c = kvtier.Client(daemon.socket, ns)
    assert kv.layout is not None
    with c.acquire([LAYOUT_KEY, *piece_keys(tokens[:T], N, kv.layout)]) as leases:
        assert leases.prefix == 1 + T // N
        sizes = [leases.size(i) for i in range(len(leases))]
        layout = ls.StateLayout.from_bytes(bytes(leases.view(0)))
        leases.verify()
    assert layout == kv.layout and layout.bytes_per_token == 1024
    assert sizes[1:] == [PIECE] * (T // N) and PIECE == 256 << 10
    assert sizes[0] == len(layout.to_bytes()) <= 4096
    s = c.stats()
    assert s.committed_blocks == 1 + T // N
    assert s.used_bytes == (T // N) * PIECE + 4096        # slot bytes: no class rounding up


def test_missing_layout_block_is_a_miss_until_the_next_store(daemon, model_path, tokens, ns,
                                                            ref_next):
    src = store_prompt(daemon, ns, model_path, tokens)
    c = kvtier.Client(daemon.socket, ns)
    assert src.layout is not None
    keys = piece_keys(tokens[:T], N, src.layout)
    assert c.remove([LAYOUT_KEY]) == [StatusCode.OK]
    # every block is there, but a context that does not know its layout yet does not know
    # which keys to look up: a miss
    fresh = lm.open_llama(model_path)
    kv = LlamaKVStore(kvtier.Client(daemon.socket, ns), fresh, block_tokens=N)
    assert kv.restore(tokens) == 0
    assert kv.stats.no_layout == 1 and lm.seq_pos_max(fresh) == -1 and kv.layout is None
    # a context that knows its layout needs no layout block
    assert src.restore(tokens) == T and src.stats.no_layout == 0
    assert lm.next_logits(src.llm, tokens[T], T) == ref_next
    # the next store() puts the layout block back, and only it; a store that has not seen
    # its layout yet reads it from its sequence's state
    helper = LlamaKVStore(kvtier.Client(daemon.socket, ns), src.llm, block_tokens=N)
    assert helper.store(tokens[:T]) == 0
    assert c.match_prefix([LAYOUT_KEY, *keys]).count == 1 + T // N
    assert c.stats().committed_blocks == 1 + T // N
    assert kv.restore(tokens) == T and kv.layout == src.layout
    assert lm.next_logits(fresh, tokens[T], T) == ref_next

    # again, from a store that knows its layout (its sequence is empty after a miss: the
    # layout is not read from it again)
    assert c.remove([LAYOUT_KEY]) == [StatusCode.OK]
    assert src.restore(tokens[:N]) == 0 and lm.seq_pos_max(src.llm) == -1
    assert src.store(tokens[:T]) == 0
    assert c.match_prefix([LAYOUT_KEY]).count == 1
    fresh2 = lm.open_llama(model_path)
    kv2 = LlamaKVStore(kvtier.Client(daemon.socket, ns), fresh2, block_tokens=N)
    assert kv2.restore(tokens) == T
    assert lm.next_logits(fresh2, tokens[T], T) == ref_next


def _other_layout(real: ls.StateLayout, how: str) -> bytes:
    if how == "damaged":
        raw = bytearray(real.to_bytes())
        raw[20] ^= 1
        return bytes(raw)
    if how == "v_rows":  # flash attention's layout: pieces of the same size
        return ls.StateLayout(False, tuple(ls.LayerLayout(l.k_type, l.k_row, l.v_type, l.v_row)
                                           for l in real.layers)).to_bytes()
    assert how == "3_layers"
    return dataclasses.replace(real, layers=real.layers[:3]).to_bytes()


@pytest.mark.parametrize("how", ["damaged", "v_rows", "3_layers"])
def test_layout_block_of_another_layout_is_a_miss(daemon, model_path, tokens, ns, ref_next,
                                                  how):
    """The namespace's layout block replaced (a namespace collision, an engine bug): never a
    wrong join. A context that knows its layout does not read it; a fresh one refuses a
    damaged one, and with another layout's looks up that layout's keys, finding nothing;
    stores go on under their own layout's keys and count the conflict."""
    src = store_prompt(daemon, ns, model_path, tokens)
    c = kvtier.Client(daemon.socket, ns)
    assert src.layout is not None
    assert c.remove([LAYOUT_KEY]) == [StatusCode.OK]
    assert c.put_copy([LAYOUT_KEY], [_other_layout(src.layout, how)]) == [StatusCode.OK]

    assert src.restore(tokens) == T and src.stats.bad_layout == 0
    assert lm.next_logits(src.llm, tokens[T], T) == ref_next

    fresh = lm.open_llama(model_path)
    kv = LlamaKVStore(kvtier.Client(daemon.socket, ns), fresh, block_tokens=N)
    assert kv.restore(tokens) == 0 and lm.seq_pos_max(fresh) == -1
    assert kv.stats.bad_layout == (1 if how == "damaged" else 0)
    assert kv.stats.bad_pieces == 0 and kv.stats.refused_by_llama == 0
    assert finish(fresh, tokens, 0) == ref_next

    other = tokens[:N] + lm.random_tokens(T, seed=13)
    new = LlamaKVStore(kvtier.Client(daemon.socket, ns), source(model_path, other),
                       block_tokens=N)
    assert new.store(other[:T]) == T // N - 1 and new.stats.layout_conflicts == 1
    assert c.match_prefix(piece_keys(other[:T], N, src.layout)).count == T // N
    # the layout block is left as it was (another layout's restores may rely on it)
    assert bytes(c.get_copy([LAYOUT_KEY])[0] or b"") == _other_layout(src.layout, how)


def test_a_piece_of_the_wrong_size_is_a_miss(daemon, model_path, tokens, ns, layout, ref_next):
    store_prompt(daemon, ns, model_path, tokens)
    c = kvtier.Client(daemon.socket, ns)
    keys = piece_keys(tokens[:T], N, layout)
    piece = c.get_copy([keys[3]])[0]
    assert piece is not None and len(piece) == PIECE
    llm = lm.open_llama(model_path)
    kv = LlamaKVStore(kvtier.Client(daemon.socket, ns), llm, block_tokens=N)
    for k, wrong in enumerate([bytes(piece) + b"\0", bytes(piece[:-4096])]):
        assert c.remove([keys[3]]) == [StatusCode.OK]
        assert c.put_copy([keys[3]], [wrong]) == [StatusCode.OK]
        assert kv.restore(tokens) == 0
        assert kv.stats.bad_pieces == k + 1 and lm.seq_pos_max(llm) == -1
    assert kv.restore(tokens[:3 * N + 1]) == 3 * N      # the blocks before it are fine
    assert finish(llm, tokens, 3 * N) == ref_next


# --------------------------------------------------------------------------
# sizes

def test_block_larger_than_max_block_bytes_is_refused_clearly(model_path, tokens, ns):
    # 4 layers x (128 B K + 128 B V) = 1 KiB per token: a 256-token block is 256 KiB, and
    # 128 tokens (no header) fill 128 KiB exactly
    with Daemon(dram_bytes=16 * MiB, max_block_bytes=128 << 10) as d:
        kv = LlamaKVStore(kvtier.Client(d.socket, ns), source(model_path, tokens),
                          block_tokens=N)
        with pytest.raises(BlockTooLargeError, match=r"262144 bytes.*block_tokens <= 128\b"):
            kv.store(tokens[:T])


def test_blocks_too_large_for_ssd_warn_once(model_path, tokens, ns):
    with Daemon(dram_bytes=16 * MiB, max_block_bytes=4 * MiB, ssd_bytes=256 * MiB,
                spill_max_block_bytes=128 << 10) as d:
        kv = LlamaKVStore(kvtier.Client(d.socket, ns), source(model_path, tokens),
                          block_tokens=N)
        with pytest.warns(RuntimeWarning, match=r"DRAM only.*block_tokens <= 128\b"):
            assert kv.store(tokens[:1024]) == 4
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            assert kv.store(tokens[:T]) == 4                  # no second warning


def test_store_needs_the_tokens_evaluated(daemon, model_path, tokens, ns):
    llm = lm.open_llama(model_path)
    kv = LlamaKVStore(kvtier.Client(daemon.socket, ns), llm, block_tokens=N)
    with pytest.raises(ValueError, match="empty"):
        kv.store(tokens[:T])
    lm.prefill(llm, tokens[:600], N)
    with pytest.raises(ValueError, match="holds 600 tokens"):
        kv.store(tokens[:T])
    assert kv.store(tokens[:600]) == 2                    # its 2 full blocks
    assert kv.store(tokens[:255]) == 0                    # no full block


def test_store_checks_the_tokens_against_the_llama(daemon, model_path, tokens, ns, layout):
    """With a Llama that tracks what it evaluated, store() refuses tokens it did not evaluate
    (their keys would get the KV of other tokens)."""
    llm = lm.open_llama(model_path, n_batch=N)
    kv = LlamaKVStore(kvtier.Client(daemon.socket, ns), llm, block_tokens=N)
    llm.eval(tokens[:1024])
    with pytest.raises(ValueError, match=r"holds 1024 tokens.*2048 tokens"):
        kv.store(tokens[:T])
    wrong = list(tokens[:1024])
    wrong[300] = 4 if wrong[300] != 4 else 5
    with pytest.raises(ValueError, match=r"token 300 given to store\(\) is %d, the Llama "
                                         r"evaluated %d" % (wrong[300], tokens[300])):
        kv.store(wrong)
    c = kvtier.Client(daemon.socket, ns)
    assert c.match_prefix(piece_keys(wrong, N, layout)).count == 0
    assert c.stats().committed_blocks == 0                # nothing stored, not even the layout
    assert kv.store(tokens[:1100]) == 4                   # its full blocks: what it evaluated
    assert c.match_prefix(piece_keys(tokens[:1024], N, layout)).count == 4


def test_reconnect_keeps_the_connect_options_and_is_rate_limited(daemon, model_path, tokens,
                                                                 ns, ref_next, monkeypatch):
    import kvtier.llama_cpp as kl

    src = store_prompt(daemon, ns, model_path, tokens)
    llm = lm.open_llama(model_path)
    kv = LlamaKVStore(kvtier.Client(daemon.socket, ns, timeout_ms=4321, spin_us=7), llm,
                      block_tokens=N)
    real = kl.Client
    calls = []

    def refuse(*args, **kw):
        calls.append((args, kw))
        raise kvtier.UnavailableError("kvtierd does not answer")

    monkeypatch.setattr(kl, "Client", refuse)
    daemon.ctl("purge", "test")                          # ends every session of the tenant
    for _ in range(5):                                    # well within a second
        assert kv.restore(tokens) == 0
    assert calls == [((daemon.socket, ns), {"timeout_ms": 4321, "spin_us": 7})]
    assert kv.stats.errors == 5 and kv.stats.misses == 5

    def connect(*args, **kw):
        calls.append((args, kw))
        return real(*args, **kw)

    monkeypatch.setattr(kl, "Client", connect)
    time.sleep(kv.reconnect_interval_s)
    assert src.store(tokens[:T]) == T // N                # src reconnects too (the purge)
    assert kv.restore(tokens) == T
    assert lm.next_logits(llm, tokens[T], T) == ref_next
    assert (kv.client.timeout_ms, kv.client.spin_us) == (4321, 7)
    assert len(calls) == 3                                # kv: refused, then once more; src


# --------------------------------------------------------------------------
# Llama.set_cache

def _complete(llm, prompt: List[int]) -> str:
    out = llm.create_completion(prompt=prompt, max_tokens=8, temperature=0.0)
    return out["choices"][0]["text"]


def test_kvtier_llama_cache_with_set_cache(daemon, model_path):
    # the shared prefix is a multiple of n_batch (512): every way below of computing p2 (from
    # scratch, or reusing the prefix's KV) has the same batch boundaries, so the same output
    shared = lm.random_tokens(1536, seed=21)
    p1 = shared + lm.random_tokens(300, seed=22)
    p2 = shared + lm.random_tokens(300, seed=23)
    assert p1[1536] != p2[1536]

    # without a cache: one Llama answers p1, then p2 (reusing its own KV of the prefix)
    ref = lm.open_llama(model_path)
    ref_out = [_complete(ref, p1), _complete(ref, p2)]
    ref_logits = lm.last_logits(ref)
    alone = lm.open_llama(model_path)
    assert _complete(alone, p2) == ref_out[1]            # p2 computed from scratch agrees

    ns64 = llama_namespace(ref, model_path, 64)
    a = lm.open_llama(model_path)
    cache_a = KvtierLlamaCache(kvtier.Client(daemon.socket, ns64), block_tokens=64)  # no llm
    assert cache_a.keep_scores
    a.set_cache(cache_a)
    assert _complete(a, p1) == ref_out[0]
    assert cache_a.stats.misses == 1 and cache_a.stats.stores == 1
    assert cache_a.cache_size > 0
    assert p1 in cache_a and p2 in cache_a and shared[:63] + [1] * 10 not in cache_a

    # another Llama (a fresh context, as another process would have) loads p1's state
    b = lm.open_llama(model_path)
    cache_b = KvtierLlamaCache(kvtier.Client(daemon.socket, ns64), block_tokens=64, llm=b)
    assert not cache_b.keep_scores                        # b has no logits_all
    b.set_cache(cache_b)
    assert _complete(b, p2) == ref_out[1]
    assert cache_b.stats.hits == 1 and cache_b.stats.misses == 0
    assert cache_b.stats.incompatible == 0 and cache_b.stats.bytes_loaded > 0
    assert lm.last_logits(b) == ref_logits               # the same decodes, bit for bit
    # p2's state was stored too: its own (longer) prefixes are now found
    assert cache_b.stats.stores == 1
    st = cache_b[p2 + [5, 6]]
    assert st.n_tokens >= len(p2) and list(st.input_ids[:len(p2)]) == p2
    assert not st.scores.any()                            # not stored: zeros


def test_kvtier_llama_cache_skips_states_of_another_n_batch(daemon, model_path):
    """A state saved by a Llama with n_batch 512 has 307 rows of scores for a 300-token
    prompt (+7 evaluated completion tokens); one with n_batch 256 holds 256: load_state would
    raise. With `llm` it is a miss, and the completion is the one of a Llama without cache."""
    prompt = lm.random_tokens(300, seed=51)
    w = lm.open_llama(model_path, n_batch=512)
    ns64 = llama_namespace(w, model_path, 64)
    w.set_cache(KvtierLlamaCache(kvtier.Client(daemon.socket, ns64), llm=w))
    _complete(w, prompt)
    clean = lm.open_llama(model_path, n_batch=256)
    want = _complete(clean, prompt)

    r = lm.open_llama(model_path, n_batch=256)
    cache = KvtierLlamaCache(kvtier.Client(daemon.socket, ns64), llm=r)
    r.set_cache(cache)
    assert _complete(r, prompt) == want
    assert cache.stats.misses == 1 and cache.stats.hits == 0
    assert cache.stats.incompatible == 1
    assert _complete(r, prompt) == _complete(clean, prompt)   # and the next one too

    # without `llm` the state is handed over as stored, and load_state cannot take it
    r2 = lm.open_llama(model_path, n_batch=256)
    r2.set_cache(KvtierLlamaCache(kvtier.Client(daemon.socket, ns64)))
    with pytest.raises(ValueError, match="broadcast"):
        _complete(r2, prompt)


def test_kvtier_llama_cache_skips_states_larger_than_n_ctx(daemon, model_path):
    """A state of 1,207 tokens (n_ctx 4096) does not fit a Llama with n_ctx 1024: load_state
    would fail half-way (n_tokens set, KV empty) and later prompts would reuse tokens that
    are not in the KV cache. With `llm` it is a miss, and every completion after it is the
    one of a Llama without cache."""
    p1 = lm.random_tokens(1200, seed=61)
    w = lm.open_llama(model_path, n_ctx=4096)
    ns64 = llama_namespace(w, model_path, 64)
    w.set_cache(KvtierLlamaCache(kvtier.Client(daemon.socket, ns64), llm=w))
    _complete(w, p1)
    p2 = p1[:900] + lm.random_tokens(50, seed=62)        # finds the state of p1 (14 blocks)
    p3 = p2[:50] + lm.random_tokens(100, seed=63)        # shares 50 tokens with p2
    clean = lm.open_llama(model_path, n_ctx=1024)
    want = [_complete(clean, p2), _complete(clean, p3)]

    r = lm.open_llama(model_path, n_ctx=1024)
    cache = KvtierLlamaCache(kvtier.Client(daemon.socket, ns64), llm=r)
    r.set_cache(cache)
    assert _complete(r, p2) == want[0]
    assert cache.stats.incompatible == 1 and cache.stats.hits == 0
    assert _complete(r, p3) == want[1]
    assert r.n_tokens <= 1024


def test_kvtier_llama_cache_misses_and_stale_manifests(daemon, model_path):
    from kvtier.llama_cpp import _Manifest, _chunk_key, _manifest_key

    llm = lm.open_llama(model_path)
    ns64 = llama_namespace(llm, model_path, 64)
    client = kvtier.Client(daemon.socket, ns64)
    cache = KvtierLlamaCache(client, block_tokens=64, keep_scores=False)
    prompt = lm.random_tokens(300, seed=31)
    with pytest.raises(KeyError):
        cache[prompt]
    with pytest.raises(KeyError):
        cache[prompt[:63]]                                # shorter than a block: never cached
    llm.set_cache(cache)
    text = _complete(llm, prompt)
    assert cache.stats.stores == 1
    st = cache[prompt]
    assert not st.scores.any() and st.n_tokens == 307    # 300 + 7 evaluated completion tokens

    # one chunk of the state goes (evicted, expired...): every manifest of that state is
    # dropped on the next lookup (one load tried, not four), and it is a miss
    anchors = kvtier.block_keys(st.input_ids[:307].tolist(), 64)
    mkeys = [_manifest_key(a) for a in anchors]
    assert client.match_prefix(mkeys).count == 4
    m = _Manifest.unpack(bytes(client.get_copy([mkeys[-1]])[0]))
    assert client.remove([_chunk_key(m.nonce, 0)]) == [StatusCode.OK]
    with pytest.raises(KeyError):
        cache[prompt]
    assert cache.stats.stale == 1
    assert [c for c in client.acquire(mkeys).codes] == [StatusCode.NOT_FOUND] * 4

    # stored again by the next completion; then a purge between the copy of the state and
    # its verify(): the copy is thrown away (a miss), never handed to llama.cpp
    again = lm.open_llama(model_path)
    again.set_cache(cache)
    assert _complete(again, prompt) == text
    assert cache.stats.stores == 2
    cache._after_copy = lambda leases: daemon.ctl("purge", "test")
    with pytest.raises(KeyError):
        cache[prompt]
    assert cache.stats.revoked == 1
    cache._after_copy = None

    # the purge ended the cache's session: it reconnects, stores again, and a fresh Llama
    # answers the same
    fresh = lm.open_llama(model_path)
    fresh.set_cache(cache)
    assert _complete(fresh, prompt) == text
    assert cache.stats.stores == 3
    assert cache[prompt].n_tokens == 307


def test_kvtier_llama_cache_keeps_manifests_of_states_not_readable_now(daemon, model_path,
                                                                         monkeypatch):
    """Only a chunk that is gone (NOT_FOUND) makes a state's manifests go; a chunk that
    cannot be read now (a failed SSD promotion, a revoked lease) is a miss that keeps them."""
    from kvtier.llama_cpp import _Manifest, _chunk_key, _manifest_key

    llm = lm.open_llama(model_path)
    client = kvtier.Client(daemon.socket, llama_namespace(llm, model_path, 64))
    cache = KvtierLlamaCache(client, llm=llm)
    llm.set_cache(cache)
    prompt = lm.random_tokens(300, seed=71)
    _complete(llm, prompt)
    st = cache[prompt]
    mkeys = [_manifest_key(a) for a in kvtier.block_keys(st.input_ids[:307].tolist(), 64)]
    m = _Manifest.unpack(bytes(client.get_copy([mkeys[-1]])[0] or b""))
    chunks = {_chunk_key(m.nonce, i) for i in range(m.n_chunks)}

    class Unreadable:
        def __init__(self, n: int) -> None:
            self.codes = [StatusCode.IO_ERROR] * n
            self.prefix = 0

        def release(self) -> None:
            pass

    real_acquire = client.acquire
    monkeypatch.setattr(client, "acquire", lambda keys: Unreadable(len(keys))
                        if chunks & set(keys) else real_acquire(keys))
    with pytest.raises(KeyError):
        cache[prompt]
    assert cache.stats.unreadable == 1 and cache.stats.stale == 0
    monkeypatch.setattr(client, "acquire", real_acquire)
    assert client.match_prefix(mkeys).count == len(mkeys)   # every manifest kept
    assert cache[prompt].n_tokens == 307

    # a purge between the copy and verify(): a miss; the purge took the manifests, not the
    # lookup (stale stays 0)
    cache._after_copy = lambda leases: daemon.ctl("purge", "test")
    with pytest.raises(KeyError):
        cache[prompt]
    assert cache.stats.revoked == 1 and cache.stats.stale == 0


def test_kvtier_llama_cache_chunks_are_exact_powers_of_two(model_path):
    """A stored LlamaState is cut in chunks of a power of two (here 256 KiB: the largest one
    under a max_block_bytes of 384 KiB), all full but the last: never a power of two plus a
    few bytes, which would take the next slot class."""
    from kvtier.llama_cpp import _Manifest, _chunk_key, _manifest_key

    with Daemon(dram_bytes=64 * MiB, max_block_bytes=384 << 10) as d:
        llm = lm.open_llama(model_path)
        client = kvtier.Client(d.socket, llama_namespace(llm, model_path, 64))
        cache = KvtierLlamaCache(client, block_tokens=64)
        assert cache.chunk_bytes == 256 << 10
        llm.set_cache(cache)
        prompt = lm.random_tokens(300, seed=41)
        text = _complete(llm, prompt)
        assert cache.stats.stores == 1
        ids = cache[prompt].input_ids[:307].tolist()
        m = _Manifest.unpack(bytes(client.get_copy([_manifest_key(
            kvtier.block_keys(ids, 64)[-1])])[0]))
        assert m.chunk_bytes == 256 << 10 and m.n_chunks >= 3
        with client.acquire([_chunk_key(m.nonce, i) for i in range(m.n_chunks)]) as leases:
            sizes = [leases.size(i) for i in range(m.n_chunks)]
        assert sizes[:-1] == [256 << 10] * (m.n_chunks - 1)
        assert 0 < sizes[-1] <= 256 << 10 and sum(sizes) == m.payload_len
        fresh = lm.open_llama(model_path)
        fresh.set_cache(cache)
        assert _complete(fresh, prompt) == text
