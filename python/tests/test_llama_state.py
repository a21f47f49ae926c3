"""kvtier.llama_state against a real llama.cpp (llama-cpp-python) on the CPU.

A tiny random llama model is written with the gguf package; states are
split into blocks, joined back and restored into fresh contexts; logits are
compared as raw bytes (bit-exact, NaN-safe). Pieces are header-less: the
layout is passed to the join, and pieces are exactly the payload size.
"""

from __future__ import annotations

import os
import struct
import sys
import time

import numpy as np
import pytest

_HERE = os.path.dirname(os.path.abspath(__file__))
for _p in (_HERE, os.path.dirname(_HERE)):
    if _p not in sys.path:
        sys.path.insert(0, _p)

from kvtier import llama_state as ls  # noqa: E402
from kvtier.llama_state import UnsupportedStateLayout  # noqa: E402

# CI pins llama-cpp-python: a missing llama_cpp must fail this suite, never skip it.
import llama_cpp  # noqa: E402,F401

import llama_model as lm  # noqa: E402

T = 2048          # prompt length
N = 256           # block size


# --------------------------------------------------------------------------
# fixtures

@pytest.fixture(scope="module")
def model_path(tmp_path_factory):
    return lm.write_tiny_llama_gguf(str(tmp_path_factory.mktemp("model") / "tiny-llama.gguf"))


@pytest.fixture(scope="module")
def tokens():
    return lm.random_tokens(T + 1, seed=11)   # the extra one is the "next token"


class Source:
    """A context that prefilled the whole prompt, its state and the
    reference logits of the next token."""

    def __init__(self, model_path, tokens, flash_attn, split=None):
        self.llm = lm.open_llama(model_path, flash_attn=flash_attn)
        lm.prefill(self.llm, tokens[:T], split)
        self.state = lm.get_seq_state(self.llm)
        self.next_ref = lm.next_logits(self.llm, tokens[T], T)


_sources = {}


@pytest.fixture(scope="module")
def source(model_path, tokens):
    def get(flash_attn, split=None):
        key = (flash_attn, split)
        if key not in _sources:
            _sources[key] = Source(model_path, tokens, flash_attn, split)
        return _sources[key]
    yield get
    _sources.clear()


# --------------------------------------------------------------------------
# (a) full round trip, (c) with and without flash attention

@pytest.mark.parametrize("flash_attn", [False, True], ids=["fa_off", "fa_on"])
def test_full_roundtrip_bit_exact(model_path, tokens, source, flash_attn):
    src = source(flash_attn)
    st = ls.parse_seq_state(src.state)
    assert st.n_tokens == T and st.seq_id == 0
    # flash attention stores V untransposed; without it V is transposed
    assert st.layout.v_trans == (not flash_attn)
    assert "vtrans=%d" % (not flash_attn) in st.layout_id

    pieces = ls.split_blocks(st, N)
    assert len(pieces) == T // N
    # a piece is the payload only: 4 layers x (128 B K + 128 B V) x 256 tokens = 256 KiB,
    # a power of two (one pool slot exactly), not a power of two plus a header
    assert st.layout.bytes_per_token == 1024
    assert ls.piece_size(st.layout, N) == N * 1024 == 256 << 10
    assert all(len(p) == 256 << 10 for p in pieces)
    joined = ls.join_blocks(pieces, layout=st.layout, block_tokens=N)
    assert bytes(joined) == src.state          # the join rebuilds llama.cpp's bytes exactly

    fresh = lm.open_llama(model_path, flash_attn=flash_attn)
    assert lm.set_seq_state(fresh, joined) == len(joined)
    assert lm.seq_pos_max(fresh) == T - 1
    assert lm.next_logits(fresh, tokens[T], T) == src.next_ref


@pytest.mark.parametrize("flash_attn", [False, True], ids=["fa_off", "fa_on"])
def test_join_from_memoryviews_into_buffer(model_path, tokens, source, flash_attn):
    """Zero-copy inputs (memoryviews of one shared arena) and a caller buffer."""
    src = source(flash_attn)
    st = ls.parse_seq_state(src.state)
    size_p = ls.piece_size(st.layout, N)
    arena = bytearray(size_p * (T // N))
    views = [memoryview(arena)[i * size_p:(i + 1) * size_p] for i in range(T // N)]
    # split straight into the arena (as store() does into reserved pool slots), in two calls
    assert ls.split_blocks_into(st, N, views[:3]) == 3
    assert ls.split_blocks_into(st, N, [None, *views[4:]], first=3) == T // N - 4
    assert ls.split_blocks_into(st, N, [views[3]], first=3) == 1
    assert [bytes(v) for v in views] == [bytes(p) for p in ls.split_blocks(st, N)]
    size = ls.joined_size(st.layout, T)
    out = bytearray(size + 100)
    assert ls.join_blocks_into(views, out, layout=st.layout, block_tokens=N) == size
    assert bytes(out[:size]) == src.state

    fresh = lm.open_llama(model_path, flash_attn=flash_attn)
    assert lm.set_seq_state(fresh, memoryview(out)[:size]) == size
    assert lm.next_logits(fresh, tokens[T], T) == src.next_ref


@pytest.mark.parametrize("flash_attn", [False, True], ids=["fa_off", "fa_on"])
def test_non_power_of_two_blocks_match_truncated_state(model_path, tokens, flash_attn):
    """Blocks of 96: 21 full blocks (2016 tokens), the 32-token tail dropped.
    The join equals what llama.cpp writes for the same sequence cut at 2016."""
    llm = lm.open_llama(model_path, flash_attn=flash_attn)
    lm.prefill(llm, tokens[:T])
    st = ls.parse_seq_state(lm.get_seq_state(llm))
    pieces = ls.split_blocks(st, 96)
    assert len(pieces) == T // 96 == 21
    assert all(len(p) == 96 * st.layout.bytes_per_token for p in pieces)
    joined = ls.join_blocks(pieces, layout=st.layout, block_tokens=96)
    assert lm.seq_rm(llm, 0, 21 * 96, -1)
    assert bytes(joined) == lm.get_seq_state(llm)


# --------------------------------------------------------------------------
# (b) partial prefix restore, then compute the rest

@pytest.mark.parametrize("flash_attn", [False, True], ids=["fa_off", "fa_on"])
@pytest.mark.parametrize("block,src_split,k", [(256, None, 2), (256, 256, 3), (96, 96, 7)],
                         ids=["N256_k2", "N256_k3", "N96_k7"])
def test_partial_prefix_restore_bit_exact(model_path, tokens, source, flash_attn, block, src_split, k):
    """Restore the first k blocks, compute the rest of the prompt, and compare
    with a context that computed the first k*N tokens itself (same batch
    boundaries as the source, so the KV bytes are the same) then the rest in
    the same split."""
    src = source(flash_attn, src_split)
    st = ls.parse_seq_state(src.state)
    pieces = ls.split_blocks(st, block)[:k]
    joined = ls.join_blocks(pieces, layout=st.layout, block_tokens=block)
    P = k * block
    rest = tokens[P:T]

    ref = lm.open_llama(model_path, flash_attn=flash_attn)
    lm.prefill(ref, tokens[:P], src_split)
    assert lm.get_seq_state(ref) == bytes(joined)
    lm.prefill(ref, rest, 512, pos0=P)
    ref_last = lm.last_logits(ref)
    ref_next = lm.next_logits(ref, tokens[T], T)

    got = lm.open_llama(model_path, flash_attn=flash_attn)
    assert lm.set_seq_state(got, joined) == len(joined)
    lm.prefill(got, rest, 512, pos0=P)
    assert lm.last_logits(got) == ref_last
    assert lm.next_logits(got, tokens[T], T) == ref_next


def test_restore_over_a_used_sequence(model_path, tokens, source):
    """set_data replaces what the destination sequence held (llama.cpp does
    seq_rm itself); restoring into a context that already decoded other
    tokens gives the same next-token logits."""
    src = source(False)
    st = ls.parse_seq_state(src.state)
    joined = ls.join_blocks(ls.split_blocks(st, N), layout=st.layout, block_tokens=N)
    ctx = lm.open_llama(model_path, flash_attn=False)
    lm.prefill(ctx, lm.random_tokens(700, seed=99))
    assert lm.set_seq_state(ctx, joined) == len(joined)
    assert lm.seq_pos_max(ctx) == T - 1
    assert lm.next_logits(ctx, tokens[T], T) == src.next_ref


def test_flash_attn_layouts_are_distinct(model_path, tokens, source):
    """(c) v_trans differs with flash attention: the layouts, their ids and their layout
    blocks differ, and llama.cpp refuses a state of the other V layout. The pieces are the
    same size, so only the layout tells them apart: joined with the wrong layout, fa-on pieces
    are accepted by an fa-off context and give wrong logits. That wrong join is what the
    layout hash (kvtier.llama_cpp salts every piece's key with it) rules out."""
    st_off = ls.parse_seq_state(source(False).state)
    st_on = ls.parse_seq_state(source(True).state)
    lay_off, lay_on = st_off.layout, st_on.layout
    assert lay_off != lay_on and lay_off.layout_id != lay_on.layout_id
    assert lay_off.to_bytes() != lay_on.to_bytes()
    assert lay_off.layout_hash != lay_on.layout_hash and len(lay_on.layout_hash) == 16
    off = ls.split_blocks(st_off, N)
    on = ls.split_blocks(st_on, N)
    assert len(off[0]) == len(on[0])

    ctx = lm.open_llama(model_path, flash_attn=False)
    assert lm.set_seq_state(ctx, ls.join_blocks(on[:2], layout=lay_on, block_tokens=N)) == 0
    assert lm.seq_pos_max(ctx) == -1               # "incompatible V transposition"

    wrong = ls.join_blocks(on, layout=lay_off, block_tokens=N)
    assert lm.set_seq_state(ctx, wrong) == len(wrong)
    assert lm.next_logits(ctx, tokens[T], T) != source(False).next_ref


# --------------------------------------------------------------------------
# (d) malformed pieces, layout blocks and unsupported states

def test_bad_pieces_raise(source):
    st = ls.parse_seq_state(source(False).state)
    lay = st.layout
    p = ls.split_blocks(st, N)
    p128 = ls.split_blocks(st, 128)

    def bad(pieces, match, layout=lay, block_tokens=N):
        with pytest.raises(ValueError, match=match):
            ls.join_blocks(pieces, layout=layout, block_tokens=block_tokens)

    bad([], "no pieces")
    bad([p[0], p128[1]], "piece 1 is 131072 bytes; a block of 256 tokens .* is 262144")
    bad([p[0], p[1][:-1]], "piece 1 is 262143 bytes")
    bad([p[0], p[1] + b"\0"], "piece 1 is 262145 bytes")
    bad(p[:2], "piece 0 is 262144 bytes; a block of 128 tokens", block_tokens=128)
    bad(p128[:2], "piece 0 is 131072 bytes", block_tokens=N)
    bad(p[:1], "block_tokens must be positive", block_tokens=0)
    other = ls.StateLayout(lay.v_trans, lay.layers[:3])           # one layer less
    bad(p[:2], "piece 0 is 262144 bytes; a block of 256 tokens .* is 196608", layout=other)
    with pytest.raises(TypeError):
        ls.join_blocks(p[:2], layout=lay.to_bytes(), block_tokens=N)
    with pytest.raises(ValueError, match="needed"):
        ls.join_blocks_into(p[:2], bytearray(10), layout=lay, block_tokens=N)
    with pytest.raises(ValueError, match="read-only"):
        ls.join_blocks_into(p[:2], bytes(ls.joined_size(lay, 2 * N)), layout=lay, block_tokens=N)

    # split_blocks_into: exact-size writable buffers, blocks the state holds
    size = ls.piece_size(lay, N)
    with pytest.raises(ValueError, match="holds 262143 bytes, a piece is 262144"):
        ls.split_blocks_into(st, N, [bytearray(size - 1)])
    with pytest.raises(ValueError, match="holds 262145 bytes"):
        ls.split_blocks_into(st, N, [bytearray(size + 1)])
    with pytest.raises(ValueError, match="read-only"):
        ls.split_blocks_into(st, N, [bytes(size)])
    with pytest.raises(ValueError, match="the state holds 2048 tokens"):
        ls.split_blocks_into(st, N, [bytearray(size)], first=T // N)
    with pytest.raises(ValueError, match="the state holds"):
        ls.split_blocks_into(st, N, [None] * (T // N + 1))


def test_layout_block_round_trip_and_damage():
    """to_bytes/from_bytes: the layout block is self-checking; anything but an intact layout
    block of this piece format raises ValueError."""
    lay = ls.StateLayout(True, (ls.LayerLayout(1, 128, 1, 128, 2, 64),) * 4)
    raw = lay.to_bytes()
    assert len(raw) < 4096                                    # one 4 KiB slot
    assert ls.StateLayout.from_bytes(raw) == lay
    assert ls.StateLayout.from_bytes(memoryview(bytearray(raw))) == lay
    assert ls.StateLayout.from_bytes(np.frombuffer(raw, np.uint8)) == lay
    rows = ls.StateLayout(False, (ls.LayerLayout(1, 128, 1, 128),) * 4)
    assert ls.StateLayout.from_bytes(rows.to_bytes()) == rows
    assert rows.to_bytes() != raw

    hdr = ls._LAYOUT_HDR.size

    def bad(b, match):
        with pytest.raises(ValueError, match=match):
            ls.StateLayout.from_bytes(b)

    bad(b"", "truncated")
    bad(raw[:20], "truncated")
    bad(bytes(len(raw)), "magic")                           # a zeroed (purged) block
    bad(b"KVTB" + raw[4:], "magic")
    bad(_mutate(raw, "<H", 4, 2), "layout block version 2")
    bad(_mutate(raw, "<H", 6, ls.PIECE_VERSION - 1), "piece format %d" % (ls.PIECE_VERSION - 1))
    bad(raw[:-1], "header says")
    bad(raw + b"\0", "header says")
    bad(_mutate(raw, "<I", 8, len(raw)), "header says")
    flip = bytearray(raw); flip[hdr + 4] ^= 1                # v_trans in the descriptor
    bad(flip, "checksum")
    flip = bytearray(raw); flip[-1] ^= 1                     # the checksum itself
    bad(flip, "checksum")
    flip = bytearray(raw); flip[hdr + 12 + 4] ^= 0x80        # layer 0 k_row
    bad(flip, "checksum")


def _mutate(buf, fmt, off, value):
    b = bytearray(buf)
    struct.pack_into(fmt, b, off, value)
    return bytes(b)


@pytest.mark.parametrize("flash_attn", [False, True], ids=["fa_off", "fa_on"])
def test_unknown_layouts_refused(model_path, tokens, source, flash_attn):
    s = source(flash_attn).state
    n = T
    data = 16 + 12 * n                   # offset of v_trans
    k0 = data + 8                        # layer 0 k_type

    def refuse(buf, match):
        with pytest.raises(UnsupportedStateLayout, match=match) as ei:
            ls.parse_seq_state(buf)
        assert isinstance(ei.value, ValueError)

    refuse(_mutate(s, "<I", 0, 0xDEADBEEF), "io magic")
    refuse(_mutate(s, "<I", 8, 2), "n_stream 2")
    refuse(_mutate(s, "<I", 12, n - 1), None)                     # cell count vs. data
    refuse(_mutate(s, "<i", 16 + 12 * 5, 7), "cell 5 has pos 7")
    refuse(_mutate(s, "<I", 16 + 12 * 3 + 4, 2), "n_seq_id 2")
    refuse(_mutate(s, "<i", 16 + 12 * 4 + 8, 3), "seq_id 3")
    refuse(_mutate(s, "<I", data, 2), "v_trans 2")
    refuse(_mutate(s, "<I", data + 4, 5), None)                    # n_layer vs. data
    refuse(_mutate(s, "<I", data + 4, 0), "n_layer 0")
    refuse(_mutate(s, "<i", k0, 99), "unknown ggml type id 99")
    refuse(_mutate(s, "<Q", k0 + 4, 127), "k_size_row 127")
    refuse(_mutate(s, "<Q", k0 + 4, 64), None)                     # valid row size, wrong total
    refuse(s + b"\0", "1 trailing bytes")
    refuse(s[:-1], "truncated")
    refuse(s[:10], "truncated")

    llm = lm.open_llama(model_path, flash_attn=flash_attn)
    lm.prefill(llm, tokens[:600])
    # a hole in the middle of the sequence: cells are no longer one run
    assert lm.seq_rm(llm, 0, 100, 200)
    refuse(lm.get_seq_state(llm), "cell 100 has pos 200")
    # an empty sequence
    assert lm.seq_rm(llm, 0, -1, -1)
    refuse(lm.get_seq_state(llm), "cell_count 0")


def test_synthetic_layouts_and_types():
    """Parser checks that need no model: quantized K, transposed quantized V."""
    # q8_0 K (34-byte blocks of 32), f16 V untransposed
    lay = ls.StateLayout(False, (ls.LayerLayout(8, 34 * 2, 1, 128),) * 2)
    buf = synth_state(lay, 40)
    st = ls.parse_seq_state(buf)
    assert st.layout == lay and "k=q8_0:68B" in st.layout_id
    assert ls.StateLayout.from_bytes(lay.to_bytes()) == lay
    pieces = ls.split_blocks(st, 8)
    assert all(len(p) == 8 * (68 + 128) * 2 for p in pieces)
    assert bytes(ls.join_blocks(pieces, layout=lay, block_tokens=8)) == buf
    # 40 tokens in blocks of 16: two blocks, the 8-token tail dropped
    j = ls.parse_seq_state(ls.join_blocks(ls.split_blocks(st, 16), layout=lay, block_tokens=16))
    assert j.n_tokens == 32 and j.layout == lay
    for a, b, l in zip(j.k_offsets + j.v_offsets, st.k_offsets + st.v_offsets, lay.layers * 2):
        assert j.buf[a:a + 32 * l.k_row] == st.buf[b:b + 32 * l.k_row]

    # transposed V of a quantized type cannot happen in llama.cpp: refuse it
    lay_q = ls.StateLayout(True, (ls.LayerLayout(1, 128, 8, 34 * 2, 34, 2),))
    with pytest.raises(UnsupportedStateLayout, match="quantized"):
        ls.parse_seq_state(synth_state(lay_q, 8))
    with pytest.raises(ValueError):
        ls.split_blocks(st, 0)


# --------------------------------------------------------------------------
# throughput (printed, not asserted)

def synth_state(layout: ls.StateLayout, n: int, seq_id: int = 0) -> bytes:
    """A llama_state_seq_get_data-format buffer with patterned K/V bytes."""
    parts = [struct.pack("<IiII", ls.LLAMA_STATE_SEQ_MAGIC, seq_id, 1, n)]
    meta = np.empty((n, 3), "<i4")
    meta[:, 0] = np.arange(n)
    meta[:, 1] = 1
    meta[:, 2] = seq_id
    parts.append(meta.tobytes())
    parts.append(struct.pack("<II", int(layout.v_trans), layout.n_layer))
    pattern = (np.arange(1 << 20, dtype=np.uint32) * 2654435761 >> 13).astype(np.uint8)

    def data(size, salt):
        reps = -(-size // pattern.size)
        return np.roll(np.tile(pattern, reps)[:size], salt).tobytes()

    for i, l in enumerate(layout.layers):
        parts.append(struct.pack("<iQ", l.k_type, l.k_row))
        parts.append(data(n * l.k_row, i))
    for i, l in enumerate(layout.layers):
        if layout.v_trans:
            parts.append(struct.pack("<iII", l.v_type, l.v_el, l.n_embd_v))
        else:
            parts.append(struct.pack("<iQ", l.v_type, l.v_row))
        parts.append(data(n * l.v_row, 1000 + i))
    return b"".join(parts)


@pytest.mark.parametrize("v_trans", [False, True], ids=["v_rows", "v_transposed"])
def test_join_throughput(v_trans, capsys):
    # 16 layers, 512-wide f16 K and V: 32 KiB per token, 2048 tokens = 64 MiB
    if v_trans:
        layer = ls.LayerLayout(1, 1024, 1, 1024, 2, 512)
    else:
        layer = ls.LayerLayout(1, 1024, 1, 1024)
    lay = ls.StateLayout(v_trans, (layer,) * 16)
    buf = synth_state(lay, 2048)
    st = ls.parse_seq_state(buf)
    t0 = time.perf_counter()
    pieces = ls.split_blocks(st, 256)
    t_split = time.perf_counter() - t0
    assert all(len(p) == 8 << 20 for p in pieces)          # 256 x 32 KiB: a power of two
    out = bytearray(ls.joined_size(lay, 2048))
    ls.join_blocks_into(pieces, out, layout=lay, block_tokens=256)   # warm the output pages
    assert bytes(out) == buf

    def best(fn, reps=5):
        ts = []
        for _ in range(reps):
            t = time.perf_counter()
            fn()
            ts.append(time.perf_counter() - t)
        return min(ts)

    src = np.frombuffer(buf, np.uint8)
    dst = np.frombuffer(out, np.uint8)
    t_join = best(lambda: ls.join_blocks_into(pieces, out, layout=lay, block_tokens=256))
    t_join_new = best(lambda: ls.join_blocks(pieces, layout=lay, block_tokens=256))
    t_split_into = best(lambda: ls.split_blocks_into(st, 256, pieces))
    t_copy = best(lambda: np.copyto(dst, src))
    t_bytes = best(lambda: bytearray(buf))
    mb = len(buf) / 2**20
    with capsys.disabled():
        print("\n[join throughput, %s] %.0f MiB state, 8 blocks: "
              "join_blocks_into (warm buffer) %.0f MiB/s vs np.copyto %.0f MiB/s; "
              "join_blocks (new bytearray) %.0f MiB/s vs bytearray(bytes) %.0f MiB/s; "
              "split_blocks_into (warm pieces) %.0f MiB/s, split_blocks (new) %.0f MiB/s"
              % ("V transposed" if v_trans else "V rows", mb, mb / t_join, mb / t_copy,
                 mb / t_join_new, mb / t_bytes, mb / t_split_into, mb / t_split))
