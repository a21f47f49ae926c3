"""Split llama.cpp per-sequence KV state into per-token-block pieces and back.

What llama.cpp writes
=====================

``llama_state_seq_get_data(ctx, dst, size, seq_id)`` (llama-cpp-python 0.3.36,
vendored llama.cpp) produces, all little-endian and unpadded:

``src/llama-context.cpp`` ``llama_context::state_seq_get_data``::

    u32 io_magic = 0xaf143cd8
    i32 seq_id                      (ignored on read: the caller's dest seq wins)

then ``memory->state_write(io, seq_id)``; for the standard attention cache that
is ``src/llama-kv-cache.cpp`` ``llama_kv_cache::state_write``::

    u32 n_stream
    per stream:
        u32 cell_count              (cells holding seq_id; 0 -> nothing follows)
        state_write_meta, per cell in cell-index order:
            i32 pos
            u32 n_seq_id            (1 for a single-sequence dump)
            [llama_kv_cell_ext, 12 bytes, only for M-RoPE / PLE models]
            i32 seq_id[n_seq_id]
        state_write_data:
            u32 v_trans             (1 = V stored transposed: no flash attention)
            u32 n_layer
            per layer:  i32 k_type (ggml_type), u64 k_size_row,
                        cell_count * k_size_row bytes      (one K row per cell)
            if not v_trans, per layer:
                        i32 v_type, u64 v_size_row,
                        cell_count * v_size_row bytes      (one V row per cell)
            if v_trans, per layer:
                        i32 v_type, u32 v_size_el, u32 n_embd_v_gqa,
                        n_embd_v_gqa rows of cell_count * v_size_el bytes
                        (row j holds element j of every cell)

``state_read_meta`` / ``state_read_data`` read exactly the same sequence; for a
single-sequence restore they ``seq_rm`` the destination sequence first, find
free cells with ``find_slot`` and check v_trans, n_layer, each layer's type
and row size (and, transposed, element size and n_embd_v_gqa) against the
context's own cache.

Multi-stream caches (``kv_unified=false`` with several sequences), SWA caches
(``llama_kv_cache_iswa`` writes two such dumps back to back), recurrent and
hybrid memories, cell extensions and caches with V-less layers all produce
something else; :func:`parse_seq_state` accepts only one stream holding one
contiguous run of cells at positions 0..n-1 (what a single-sequence prefill
gives) and raises :class:`UnsupportedStateLayout` naming the first field that
differs. Another llama.cpp version may change this format: refusing is
correct, guessing is not.

Why per-block pieces
====================

Prompts that share a prefix share that prefix's KV data. Storing one state per
prefix length would cost O(T^2) bytes for a T-token conversation (every prefix
stored again, each a superset of the last); storing fixed blocks of
``block_tokens`` tokens stores each block once, and any prompt whose first
``k*N`` tokens match reuses the first k blocks. A block's K/V bytes depend on
every token before it (attention), so a block is only reusable after the same
prefix: the caller keys block i by a hash chain over tokens [0, (i+1)*N)
(:func:`kvtier.keys.block_keys`), salted with the hash of the block's layout
(:attr:`StateLayout.layout_hash`; :func:`kvtier.llama_cpp.piece_keys`), in a
namespace of the model and cache configuration
(:func:`kvtier.llama_cpp.llama_namespace`).

A piece is the payload only, exactly ``N * layout.bytes_per_token`` bytes
(:func:`piece_size`)::

    per layer the block's K rows (N * k_size_row bytes), then
    per layer the block's V data: N V rows (N * v_size_row bytes), or with
    v_trans the block's slice of each of the n_embd_v_gqa rows
    (n_embd_v_gqa * N * v_size_el bytes, row-major).

Why no per-piece header: kvtierd carves its DRAM pool into slot size classes
p, 1.25p, 1.5p and 1.75p per power of two, and a block larger than a slab takes
whole slabs. A piece's payload is usually a power of two (256 tokens x 64 KiB
per token = 16 MiB; the tests' model: 256 x 1 KiB = 256 KiB); a few hundred
bytes of header on top would put every piece one class up (25% of the DRAM tier
wasted, or a second slab for a piece one slab large). So a piece carries
nothing but K/V bytes, as a real engine's paged blocks do, and what a header
would check comes from elsewhere:

- which tokens, in which order: the block keys. Block i's key covers tokens
  [0, (i+1)*N), so the pieces of keys 0..k-1 are blocks 0..k-1 of one prefix,
  in order and contiguous, by construction; :func:`join_blocks_into` takes them
  in that order;
- which layout: the :class:`StateLayout`, given explicitly to the join. The
  caller salts every piece's key with the hash of the layout it was cut with,
  so a lookup for one layout never finds pieces of another: the layout a
  caller joins with is the layout of the pieces its keys found. A caller that
  does not know its layout yet learns which to look up from a small "layout
  block" stored once per namespace (:meth:`StateLayout.to_bytes`), not once
  per piece;
- the size: :func:`join_blocks_into` refuses any piece that is not exactly
  :func:`piece_size` bytes for the layout and ``block_tokens`` it is given.

The layout block
================

:meth:`StateLayout.to_bytes` (checked by :meth:`StateLayout.from_bytes`)::

    struct _LAYOUT_HDR: magic b"KVTL", layout block version, piece format
                        version (PIECE_VERSION), descriptor length
    descriptor:         llama.cpp's state magic (the state format), v_trans,
                        n_layer, per layer k_type, k_size_row, v_type,
                        v_size_row, v_size_el, n_embd_v_gqa
    16 bytes:           BLAKE2b-128 of everything before

A few hundred bytes (one 4 KiB slot). Of the descriptor, llama.cpp itself
checks every field on restore (``state_read_data``) except the piece format.
The layout block tells a context that has not produced a state of its own yet
which layout's keys to look up (:class:`kvtier.llama_cpp.LlamaKVStore`). It is
only that hint: the pieces such a lookup finds are of the layout it names
(their keys say so), so a layout block of another layout makes it find none,
or pieces llama.cpp refuses for the context, never pieces joined with a
layout they were not cut with.

Restoring k blocks needs one gather copy (:func:`join_blocks_into`) to
interleave the blocks back into llama.cpp's per-layer layout; it runs at
memcpy speed (numpy slice copies, one per layer per block) straight from the
pieces (e.g. leased views of kvtierd's pool) into a caller-provided buffer.
Storing needs one scatter copy (:func:`split_blocks_into`) from the state into
the pieces (e.g. kvtierd's reserved slots).
"""

from __future__ import annotations

import hashlib
import struct
from dataclasses import dataclass
from typing import Any, List, Optional, Sequence, Tuple, Union

import numpy as np

__all__ = [
    "UnsupportedStateLayout",
    "LayerLayout",
    "StateLayout",
    "SeqState",
    "PIECE_VERSION",
    "parse_seq_state",
    "piece_size",
    "split_blocks",
    "split_blocks_into",
    "joined_size",
    "join_blocks",
    "join_blocks_into",
]

BufferLike = Union[bytes, bytearray, memoryview, np.ndarray]

#: Version of the piece format (header-less pieces under keys salted with their layout's hash,
#: layout block once per namespace). Part of the layout block and of kvtier.llama_cpp's
#: namespace: pieces of another format are never found.
PIECE_VERSION = 3

LLAMA_STATE_SEQ_MAGIC = 0xAF143CD8

# ggml_type id -> (name, block size in elements, bytes per block).
# Only types llama.cpp accepts for the KV cache (plus f32/bf16).
GGML_TYPES = {
    0: ("f32", 1, 4),
    1: ("f16", 1, 2),
    2: ("q4_0", 32, 18),
    3: ("q4_1", 32, 20),
    6: ("q5_0", 32, 22),
    7: ("q5_1", 32, 24),
    8: ("q8_0", 32, 34),
    20: ("iq4_nl", 32, 18),
    30: ("bf16", 1, 2),
}

MAX_LAYERS = 4096


class UnsupportedStateLayout(ValueError):
    """The state bytes are not the one layout this module understands."""


# --------------------------------------------------------------------------
# layout

@dataclass(frozen=True)
class LayerLayout:
    k_type: int
    k_row: int          # bytes of K per cell
    v_type: int
    v_row: int          # bytes of V per cell (v_trans: n_embd_v * v_el)
    v_el: int = 0       # v_trans only: bytes per V element
    n_embd_v: int = 0   # v_trans only: number of transposed V rows

    def spec(self, v_trans: bool) -> str:
        k = "k=%s:%dB" % (GGML_TYPES[self.k_type][0], self.k_row)
        if v_trans:
            v = "v=%s:%dx%dB" % (GGML_TYPES[self.v_type][0], self.n_embd_v, self.v_el)
        else:
            v = "v=%s:%dB" % (GGML_TYPES[self.v_type][0], self.v_row)
        return k + "," + v


def _bytes_view(buf: BufferLike) -> memoryview:
    """A flat byte view of any buffer (no copy)."""
    b: Any = buf
    return memoryview(b).cast("B")


_DESC_HDR = struct.Struct("<III")        # source magic, v_trans, n_layer
_DESC_LAYER = struct.Struct("<iQiQII")   # k_type, k_row, v_type, v_row, v_el, n_embd_v
_LAYOUT_HDR = struct.Struct("<4sHHI")    # magic, layout block version, piece version, desc len
LAYOUT_MAGIC = b"KVTL"
LAYOUT_VERSION = 1


@dataclass(frozen=True)
class StateLayout:
    v_trans: bool
    layers: Tuple[LayerLayout, ...]

    @property
    def n_layer(self) -> int:
        return len(self.layers)

    @property
    def bytes_per_token(self) -> int:
        return sum(l.k_row + l.v_row for l in self.layers)

    def descriptor(self) -> bytes:
        """Canonical bytes of this layout (the body of :meth:`to_bytes`)."""
        parts = [_DESC_HDR.pack(LLAMA_STATE_SEQ_MAGIC, int(self.v_trans), len(self.layers))]
        for l in self.layers:
            parts.append(_DESC_LAYER.pack(l.k_type, l.k_row, l.v_type, l.v_row, l.v_el, l.n_embd_v))
        return b"".join(parts)

    @property
    def layout_hash(self) -> bytes:
        """BLAKE2b-128 of :meth:`descriptor` (16 bytes): kvtier.llama_cpp salts the keys of
        this layout's pieces with it."""
        return hashlib.blake2b(self.descriptor(), digest_size=16).digest()

    @property
    def layout_id(self) -> str:
        """Readable identifier to fold into the cache namespace, e.g.
        ``llama.cpp-seq/af143cd8/vtrans=1/4x[k=f16:128B,v=f16:64x2B]/<hash>``.
        It does not identify the model: the caller adds that."""
        runs: List[Tuple[str, int]] = []
        for l in self.layers:
            s = l.spec(self.v_trans)
            if runs and runs[-1][0] == s:
                runs[-1] = (s, runs[-1][1] + 1)
            else:
                runs.append((s, 1))
        body = "+".join("%dx[%s]" % (n, s) for s, n in runs)
        return "llama.cpp-seq/%08x/vtrans=%d/%s/%s" % (
            LLAMA_STATE_SEQ_MAGIC, int(self.v_trans), body, self.layout_hash[:8].hex())

    def to_bytes(self) -> bytes:
        """The layout block: this layout and the piece format, self-checking (module
        docstring, "The layout block"). Stored once per namespace, as a hint; read back
        with :meth:`from_bytes`."""
        desc = self.descriptor()
        body = _LAYOUT_HDR.pack(LAYOUT_MAGIC, LAYOUT_VERSION, PIECE_VERSION, len(desc)) + desc
        return body + hashlib.blake2b(body, digest_size=16).digest()

    @classmethod
    def from_bytes(cls, raw: BufferLike) -> "StateLayout":
        """The layout of a layout block (:meth:`to_bytes`). Raises ValueError if it is not a
        complete, intact layout block of this piece format."""
        mv = _bytes_view(raw)
        if len(mv) < _LAYOUT_HDR.size + 16:
            raise ValueError("layout block truncated (%d bytes)" % len(mv))
        magic, ver, piece_ver, dlen = _LAYOUT_HDR.unpack_from(mv, 0)
        if magic != LAYOUT_MAGIC:
            raise ValueError("layout block magic %r, expected %r" % (bytes(magic), LAYOUT_MAGIC))
        if ver != LAYOUT_VERSION or piece_ver != PIECE_VERSION:
            raise ValueError("layout block version %d, piece format %d; expected %d, %d"
                             % (ver, piece_ver, LAYOUT_VERSION, PIECE_VERSION))
        end = _LAYOUT_HDR.size + dlen
        if len(mv) != end + 16:
            raise ValueError("layout block is %d bytes, its header says %d" % (len(mv), end + 16))
        if hashlib.blake2b(mv[:end], digest_size=16).digest() != bytes(mv[end:]):
            raise ValueError("layout block checksum mismatch")
        return cls.from_descriptor(mv[_LAYOUT_HDR.size:end])

    @classmethod
    def from_descriptor(cls, desc: BufferLike) -> "StateLayout":
        mv = _bytes_view(desc)
        if len(mv) < _DESC_HDR.size:
            raise ValueError("layout descriptor truncated")
        magic, v_trans, n_layer = _DESC_HDR.unpack_from(mv, 0)
        if magic != LLAMA_STATE_SEQ_MAGIC or v_trans not in (0, 1) or not 0 < n_layer <= MAX_LAYERS:
            raise ValueError("layout descriptor header not recognised")
        if len(mv) != _DESC_HDR.size + n_layer * _DESC_LAYER.size:
            raise ValueError("layout descriptor length does not match its layer count")
        layers = []
        for i in range(n_layer):
            kt, kr, vt, vr, ve, nv = _DESC_LAYER.unpack_from(mv, _DESC_HDR.size + i * _DESC_LAYER.size)
            if kt not in GGML_TYPES or vt not in GGML_TYPES or kr == 0 or vr == 0:
                raise ValueError("layout descriptor layer %d not recognised" % i)
            if bool(v_trans) != (ve != 0 and nv != 0) or (v_trans and vr != ve * nv):
                raise ValueError("layout descriptor layer %d V fields inconsistent" % i)
            layers.append(LayerLayout(kt, kr, vt, vr, ve, nv))
        return cls(bool(v_trans), tuple(layers))


@dataclass
class SeqState:
    """A parsed single-sequence state. Holds a view of the original buffer."""
    buf: memoryview
    seq_id: int
    n_tokens: int
    layout: StateLayout
    k_offsets: Tuple[int, ...]   # start of each layer's K data in buf
    v_offsets: Tuple[int, ...]   # start of each layer's V data in buf

    @property
    def layout_id(self) -> str:
        return self.layout.layout_id


# --------------------------------------------------------------------------
# parsing

class _Reader:
    def __init__(self, mv: memoryview) -> None:
        self.mv = mv
        self.off = 0

    def take(self, fmt: str, what: str) -> Any:
        s = struct.calcsize(fmt)
        if self.off + s > len(self.mv):
            raise UnsupportedStateLayout("state truncated reading %s at offset %d" % (what, self.off))
        v = struct.unpack_from(fmt, self.mv, self.off)
        self.off += s
        return v[0] if len(v) == 1 else v

    def skip(self, n: int, what: str) -> int:
        start = self.off
        if start + n > len(self.mv):
            raise UnsupportedStateLayout(
                "state truncated: %s needs %d bytes at offset %d, %d left" % (what, n, start, len(self.mv) - start))
        self.off += n
        return start


def _type_info(t: int, what: str) -> Tuple[str, int, int]:
    if t not in GGML_TYPES:
        raise UnsupportedStateLayout("%s has unknown ggml type id %d" % (what, t))
    return GGML_TYPES[t]


def parse_seq_state(buf: BufferLike) -> SeqState:
    """Parse ``llama_state_seq_get_data`` output (see module docstring).

    Raises UnsupportedStateLayout for anything but one stream with cells at
    positions 0..n-1 of one sequence in a standard K/V cache.
    """
    mv = _bytes_view(buf)
    r = _Reader(mv)

    magic = r.take("<I", "io magic")
    if magic != LLAMA_STATE_SEQ_MAGIC:
        raise UnsupportedStateLayout("io magic 0x%08x, expected 0x%08x" % (magic, LLAMA_STATE_SEQ_MAGIC))
    seq_id = r.take("<i", "seq_id")
    if seq_id < 0:
        raise UnsupportedStateLayout("seq_id %d in header (whole-context dump?)" % seq_id)
    n_stream = r.take("<I", "n_stream")
    if n_stream != 1:
        raise UnsupportedStateLayout("n_stream %d, expected 1 (unified KV cache)" % n_stream)
    n = r.take("<I", "cell_count")
    if n == 0:
        raise UnsupportedStateLayout("cell_count 0: the sequence is empty")

    # cell metadata: (pos, n_seq_id, seq_id) per cell, 12 bytes, no extension
    meta_off = r.skip(12 * n, "cell metadata")
    meta = np.frombuffer(mv, dtype="<i4", count=3 * n, offset=meta_off).reshape(n, 3)
    bad = np.flatnonzero(meta[:, 1] != 1)
    if bad.size:
        i = int(bad[0])
        raise UnsupportedStateLayout("cell %d has n_seq_id %d, expected 1" % (i, int(meta[i, 1])))
    bad = np.flatnonzero(meta[:, 0] != np.arange(n, dtype=np.int32))
    if bad.size:
        i = int(bad[0])
        raise UnsupportedStateLayout(
            "cell %d has pos %d, expected %d (cells not one run from pos 0, or cell extensions)"
            % (i, int(meta[i, 0]), i))
    bad = np.flatnonzero(meta[:, 2] != seq_id)
    if bad.size:
        i = int(bad[0])
        raise UnsupportedStateLayout("cell %d has seq_id %d, header says %d" % (i, int(meta[i, 2]), seq_id))

    v_trans = r.take("<I", "v_trans")
    if v_trans not in (0, 1):
        raise UnsupportedStateLayout("v_trans %d, expected 0 or 1" % v_trans)
    n_layer = r.take("<I", "n_layer")
    if not 0 < n_layer <= MAX_LAYERS:
        raise UnsupportedStateLayout("n_layer %d out of range" % n_layer)

    k_info = []
    k_offs = []
    for il in range(n_layer):
        kt = r.take("<i", "layer %d k_type" % il)
        _, blk, tsz = _type_info(kt, "layer %d K" % il)
        krow = r.take("<Q", "layer %d k_size_row" % il)
        if krow == 0 or krow % tsz:
            raise UnsupportedStateLayout("layer %d k_size_row %d is not a multiple of the %s block size %d"
                                         % (il, krow, GGML_TYPES[kt][0], tsz))
        k_offs.append(r.skip(n * krow, "layer %d K data" % il))
        k_info.append((kt, krow))

    layers = []
    v_offs = []
    for il in range(n_layer):
        vt = r.take("<i", "layer %d v_type" % il)
        _, blk, tsz = _type_info(vt, "layer %d V" % il)
        if not v_trans:
            vrow = r.take("<Q", "layer %d v_size_row" % il)
            if vrow == 0 or vrow % tsz:
                raise UnsupportedStateLayout("layer %d v_size_row %d is not a multiple of the %s block size %d"
                                             % (il, vrow, GGML_TYPES[vt][0], tsz))
            v_offs.append(r.skip(n * vrow, "layer %d V data" % il))
            layers.append(LayerLayout(k_info[il][0], k_info[il][1], vt, vrow))
        else:
            if blk != 1:
                raise UnsupportedStateLayout("layer %d transposed V of quantized type %s" % (il, GGML_TYPES[vt][0]))
            vel = r.take("<I", "layer %d v_size_el" % il)
            if vel != tsz:
                raise UnsupportedStateLayout("layer %d v_size_el %d, %s has %d" % (il, vel, GGML_TYPES[vt][0], tsz))
            nv = r.take("<I", "layer %d n_embd_v_gqa" % il)
            if nv == 0:
                raise UnsupportedStateLayout("layer %d n_embd_v_gqa 0" % il)
            v_offs.append(r.skip(nv * n * vel, "layer %d V data" % il))
            layers.append(LayerLayout(k_info[il][0], k_info[il][1], vt, nv * vel, vel, nv))

    if r.off != len(mv):
        raise UnsupportedStateLayout(
            "%d trailing bytes after the KV data (SWA/hybrid memory or another format?)" % (len(mv) - r.off))

    return SeqState(mv, seq_id, n, StateLayout(bool(v_trans), tuple(layers)), tuple(k_offs), tuple(v_offs))


# --------------------------------------------------------------------------
# pieces

def piece_size(layout: StateLayout, block_tokens: int) -> int:
    """Bytes of one piece of `block_tokens` tokens: the K/V payload, nothing else."""
    if block_tokens <= 0:
        raise ValueError("block_tokens must be positive")
    return block_tokens * layout.bytes_per_token


def split_blocks_into(state: SeqState, block_tokens: int, outs: Sequence[Optional[BufferLike]],
                      *, first: int = 0) -> int:
    """Writes block ``first + j`` of `state` into ``outs[j]`` (skipping None entries), e.g.
    straight into reserved pool slots: the one copy of a store. Each out must be writable and
    exactly :func:`piece_size` bytes. Returns the number of pieces written. Raises ValueError
    for a block the state does not hold in full, or an out of the wrong size."""
    lay = state.layout
    N = block_tokens
    size = piece_size(lay, N)
    if first < 0 or first + len(outs) > state.n_tokens // N:
        raise ValueError("blocks %d..%d of %d tokens: the state holds %d tokens"
                         % (first, first + len(outs) - 1, N, state.n_tokens))
    u8 = np.frombuffer(state.buf, dtype=np.uint8)
    T = state.n_tokens
    # transposed V: each layer's data is an (n_embd_v, T * v_el) matrix
    v_mats = []
    if lay.v_trans:
        for l, off in zip(lay.layers, state.v_offsets):
            v_mats.append(u8[off:off + l.n_embd_v * T * l.v_el].reshape(l.n_embd_v, T * l.v_el))
    written = 0
    for j, out in enumerate(outs):
        if out is None:
            continue
        dst = np.frombuffer(_bytes_view(out), dtype=np.uint8)
        if not dst.flags.writeable:
            raise ValueError("piece buffer %d is read-only" % j)
        if dst.size != size:
            raise ValueError("piece buffer %d holds %d bytes, a piece is %d" % (j, dst.size, size))
        b = first + j
        o = 0
        for l, off in zip(lay.layers, state.k_offsets):
            w = N * l.k_row
            dst[o:o + w] = u8[off + b * w: off + (b + 1) * w]
            o += w
        if not lay.v_trans:
            for l, off in zip(lay.layers, state.v_offsets):
                w = N * l.v_row
                dst[o:o + w] = u8[off + b * w: off + (b + 1) * w]
                o += w
        else:
            for l, m in zip(lay.layers, v_mats):
                w = N * l.v_el
                dst[o:o + l.n_embd_v * w].reshape(l.n_embd_v, w)[...] = m[:, b * w:(b + 1) * w]
                o += l.n_embd_v * w
        assert o == size
        written += 1
        del dst
    return written


def split_blocks(state: SeqState, block_tokens: int) -> List[bytearray]:
    """One piece (:func:`piece_size` bytes) per full block of ``block_tokens`` cells; a
    trailing partial block is not returned."""
    size = piece_size(state.layout, block_tokens)
    out = [bytearray(size) for _ in range(state.n_tokens // block_tokens)]
    split_blocks_into(state, block_tokens, out)
    return out


def joined_size(layout: StateLayout, n_tokens: int) -> int:
    """Bytes of the ``llama_state_seq_set_data`` buffer for `n_tokens` cells of `layout`
    (what :func:`join_blocks_into` writes)."""
    size = 16 + 12 * n_tokens + 8
    for l in layout.layers:
        # K: i32 type + u64 row size; V: i32 type + u64 row size, or
        # (transposed) i32 type + u32 element size + u32 n_embd_v
        size += 12 + n_tokens * l.k_row
        size += 12 + n_tokens * l.v_row
    return size


def _check_pieces(pieces: Sequence[BufferLike], layout: StateLayout,
                  block_tokens: int) -> List[memoryview]:
    if not isinstance(layout, StateLayout):
        raise TypeError("layout must be a StateLayout")
    size = piece_size(layout, block_tokens)
    if len(pieces) == 0:
        raise ValueError("no pieces to join")
    mvs = [_bytes_view(p) for p in pieces]
    for i, mv in enumerate(mvs):
        if mv.nbytes != size:
            raise ValueError("piece %d is %d bytes; a block of %d tokens of layout %s is %d"
                             % (i, mv.nbytes, block_tokens, layout.layout_id, size))
    return mvs


def join_blocks_into(pieces: Sequence[BufferLike], out: BufferLike, *, layout: StateLayout,
                     block_tokens: int, seq_id: int = 0) -> int:
    """Write the ``llama_state_seq_set_data`` buffer for blocks 0..len-1 into `out` (a
    writable buffer at least ``joined_size(layout, len(pieces) * block_tokens)`` long).

    ``pieces[i]`` must be block i of one sequence (pieces carry no position: the caller's
    prefix-chained keys give the order and contiguity) of `layout` (pieces carry no layout
    either: the caller's keys, salted with the layout's hash, tie them to it). Returns the
    number of bytes written. Raises ValueError if any piece is not exactly :func:`piece_size`
    bytes, or `out` is too small or read-only."""
    mvs = _check_pieces(pieces, layout, block_tokens)
    return _gather(layout, block_tokens, mvs, out, seq_id)


def _gather(layout: StateLayout, N: int, mvs: List[memoryview], out: BufferLike, seq_id: int) -> int:
    nb = len(mvs)
    T = N * nb
    total = joined_size(layout, T)
    dst = np.frombuffer(_bytes_view(out), dtype=np.uint8)
    if not dst.flags.writeable:
        raise ValueError("output buffer is read-only")
    if dst.size < total:
        raise ValueError("output buffer holds %d bytes, %d needed" % (dst.size, total))
    dst = dst[:total]
    hdr = _bytes_view(dst)  # for struct.pack_into

    srcs = [np.frombuffer(mv, dtype=np.uint8) for mv in mvs]

    struct.pack_into("<IiII", hdr, 0, LLAMA_STATE_SEQ_MAGIC, seq_id, 1, T)
    meta = dst[16:16 + 12 * T].view("<i4").reshape(T, 3)
    meta[:, 0] = np.arange(T, dtype=np.int32)
    meta[:, 1] = 1
    meta[:, 2] = seq_id
    off = 16 + 12 * T
    struct.pack_into("<II", hdr, off, int(layout.v_trans), layout.n_layer)
    off += 8

    src_off = 0  # offset of the current layer's data inside every piece
    for l in layout.layers:
        struct.pack_into("<iQ", hdr, off, l.k_type, l.k_row)
        off += 12
        w = N * l.k_row
        for i, s in enumerate(srcs):
            dst[off + i * w: off + (i + 1) * w] = s[src_off: src_off + w]
        off += T * l.k_row
        src_off += w
    for l in layout.layers:
        w = N * l.v_row
        if not layout.v_trans:
            struct.pack_into("<iQ", hdr, off, l.v_type, l.v_row)
            off += 12
            for i, s in enumerate(srcs):
                dst[off + i * w: off + (i + 1) * w] = s[src_off: src_off + w]
        else:
            struct.pack_into("<iII", hdr, off, l.v_type, l.v_el, l.n_embd_v)
            off += 12
            row = N * l.v_el
            m = dst[off: off + T * l.v_row].reshape(l.n_embd_v, nb, row)
            for i, s in enumerate(srcs):
                m[:, i, :] = s[src_off: src_off + w].reshape(l.n_embd_v, row)
        off += T * l.v_row
        src_off += w
    assert off == total
    return total


def join_blocks(pieces: Sequence[BufferLike], *, layout: StateLayout, block_tokens: int,
                seq_id: int = 0) -> bytearray:
    """Like :func:`join_blocks_into` into a new bytearray (bytes-like and writable, so it
    reaches llama.cpp without another copy)."""
    mvs = _check_pieces(pieces, layout, block_tokens)
    out = bytearray(joined_size(layout, block_tokens * len(mvs)))
    _gather(layout, block_tokens, mvs, out, seq_id)
    return out
