"""kvtier for llama.cpp, through llama-cpp-python (0.3.36).

Two ways to use it:

``LlamaKVStore`` stores the KV cache of one sequence as per-block pieces (``block_tokens``
tokens each, see :mod:`kvtier.llama_state`) and restores the longest stored prefix of a prompt
into a context. A piece is exactly the block's K/V bytes (a power of two for the usual block
sizes, so it fills a pool slot exactly). Its key is the prefix hash chain of the tokens up to
the end of the block, salted with the hash of the layout the piece was cut with
(:func:`piece_keys`): a restore only ever finds pieces of the layout it joins them with::

    ns = llama_namespace(llm, model_path, 256)
    kv = LlamaKVStore(kvtier.Client(socket, ns), llm, block_tokens=256)
    n = kv.restore(tokens)          # tokens [0, n) are in the KV cache now (n may be 0)
    llm.eval(tokens[n:])            # compute the rest (restore set llm.n_tokens = n)
    kv.store(tokens)                # publish the full blocks for other engines/processes

A context knows its layout once it has stored or restored (its own state tells it). Until
then a restore first reads the namespace's layout block (:data:`LAYOUT_KEY`, written by
stores) to learn which layout's keys to look up: one more round trip per restore. The layout
block is only that hint: a missing or damaged one makes such a restore a miss, one of another
layout finds no pieces, or pieces of that other layout which llama.cpp then refuses to load
into this context; never pieces joined with a layout they were not cut with.

``KvtierLlamaCache`` plugs into ``Llama.set_cache`` and stores whole ``LlamaState`` objects
(one per prompt, see its docstring for the cost)::

    llm.set_cache(KvtierLlamaCache(kvtier.Client(socket, llama_namespace(llm, path, 64)),
                                   llm=llm))

Both never hand llama.cpp bytes that are not verified: a read through a lease counts only if
``Leases.verify()`` passes after the copy (a purge zeroes the pool). LlamaKVStore joins only
pieces found under its layout's keys, each exactly the size that layout gives a block
(:func:`kvtier.llama_state.join_blocks_into`), and llama.cpp itself refuses a state of another
layout than its context's. Any of these is a miss: the sequence is cleared and the engine
recomputes, so the worst case is the time of a recompute, never wrong logits.
"""

from __future__ import annotations

import ctypes
import dataclasses
import hashlib
import logging
import struct
import time
import warnings
from dataclasses import dataclass
from typing import Any, Callable, Iterable, List, Optional, Sequence, Set, Tuple

import numpy as np

import llama_cpp
import llama_cpp.llama
from llama_cpp.llama_cache import BaseLlamaCache

from . import llama_state as ls
from .client import Client, Leases
from .errors import KvtierError, LeaseRevokedError, StatusCode, UnavailableError
from .keys import block_keys, file_fingerprint, namespace

__all__ = [
    "BlockTooLargeError",
    "KVStoreStats",
    "RestoreTimings",
    "LlamaKVStore",
    "LAYOUT_KEY",
    "piece_keys",
    "CacheStats",
    "KvtierLlamaCache",
    "llama_namespace",
    "max_block_tokens",
]

log = logging.getLogger("kvtier.llama_cpp")

ENGINE = "llama.cpp"

#: Key of the layout block, one per namespace: :meth:`kvtier.llama_state.StateLayout.to_bytes`
#: of the layout of the first store() that found it missing. A hint for contexts that do not
#: know their own layout yet (pieces are keyed by their own layout, see :func:`piece_keys`).
#: 26 bytes: never equal to a 32-byte block key.
LAYOUT_KEY = b"kvtier.llama_cpp/layout/v1"


# --------------------------------------------------------------------------
# helpers

def _ctx_ptr(llm_or_ctx: Any) -> Any:
    """The raw llama_context pointer of a Llama (or the pointer itself)."""
    inner = getattr(llm_or_ctx, "_ctx", None)
    if inner is not None:
        return inner.ctx
    return llm_or_ctx


def _ggml_type_name(t: int) -> str:
    info = ls.GGML_TYPES.get(int(t))
    return info[0] if info else "ggml%d" % int(t)


def _seq_rm(ctx: Any, seq_id: int) -> None:
    llama_cpp.llama_memory_seq_rm(llama_cpp.llama_get_memory(ctx), seq_id, -1, -1)


class _Session:
    """The Client a plug-in talks through, opened again after kvtierd ended its session.

    A purge, a drain or a restart of kvtierd ends every session of the tenant; the Client
    cannot be used again (each call raises UnavailableError). With `reconnect` the plug-in
    opens a new Client for the same socket, namespace and connect options (``timeout_ms``,
    ``spin_us``, ``reconnect``) on its next call (closing the dead one); `client` is always the
    current one. (A Client made with ``reconnect=True`` opens a new session itself.)
    While the session is lost, at most one reconnect is tried per :attr:`reconnect_interval_s`
    (a kvtierd that hangs would otherwise hold every call for its connect timeout); calls in
    between fail at once with UnavailableError, which the plug-ins turn into a miss or a
    skipped store.
    """

    #: Seconds between two reconnect attempts while the session is lost.
    reconnect_interval_s: float = 1.0

    def __init__(self, client: Client, reconnect: bool) -> None:
        self.client = client
        self.reconnect = reconnect
        self._lost = False
        self._next_reconnect = 0.0  # time.monotonic() before which no reconnect is tried

    def _lose(self) -> None:
        self._lost = True

    def _current(self) -> Client:
        if self._lost and self.reconnect:
            old = self.client
            now = time.monotonic()
            if now < self._next_reconnect:
                raise UnavailableError("the session with kvtierd ended; the next reconnect is "
                                       "tried in %.1f s" % (self._next_reconnect - now))
            self._next_reconnect = now + self.reconnect_interval_s
            # raises if kvtierd refuses (or does not answer): next try reconnect_interval_s later
            fresh = Client(old.socket_path, old.namespace, timeout_ms=old.timeout_ms,
                           spin_us=old.spin_us, **({"reconnect": True} if old.reconnect else {}))
            try:
                old.close()
            except Exception:  # pragma: no cover - a dead session closes quietly
                pass
            self.client = fresh
            self._lost = False
            log.info("kvtier: reconnected to %s (namespace %s)", old.socket_path, old.namespace)
        return self.client

    def _call(self, fn: Callable[[Client], Any]) -> Any:
        """fn(client); if the session turns out to be gone, reconnect and try once more."""
        try:
            return fn(self._current())
        except UnavailableError:
            was_lost = self._lost  # then no reconnect was due, or it failed: no second try
            self._lose()
            if not self.reconnect or was_lost:
                raise
            return fn(self._current())


def _release_quietly(leases: Optional[Leases]) -> None:
    if leases is None:
        return
    try:
        leases.release()
    except KvtierError:  # the session is gone (purge): kvtierd already ended the leases
        pass


# --------------------------------------------------------------------------
# namespace

def llama_namespace(llm: "llama_cpp.Llama", model_path: str, block_tokens: int, *,
                    tp_rank: int = 0, tp_size: int = 1, extra: Iterable[str] = (),
                    model_fingerprint: Optional[str] = None,
                    flash_attn: Optional[bool] = None) -> str:
    """The kvtier namespace for KV blocks of `llm` (a ``llama_cpp.Llama``).

    Everything that makes llama.cpp's KV bytes of the same tokens differ, or their byte layout
    differ, is folded in, so that KV of one configuration is never even *found* by another
    (kvtierd keeps namespaces apart):

    - the model file's fingerprint (a hash of its bytes, :func:`kvtier.keys.file_fingerprint`;
      pass ``model_fingerprint`` if you have it, hashing reads the whole file): other weights,
      a fine-tune or a requantization of the same model give other KV;
    - the engine, ``llama.cpp``, and llama-cpp-python's version: the state format
      (``llama_state_seq_get_data``) is llama.cpp's and may change between releases; also the
      version of kvtier's block piece format (:data:`kvtier.llama_state.PIECE_VERSION`);
    - the K and V cache types (``type_k``/``type_v``: f16, q8_0, ...): the bytes per element;
    - the KV layout: with flash attention V is stored as rows, without it transposed
      (``v_trans``); llama.cpp refuses to restore a state saved under the other layout. Read
      from ``llm.context_params.flash_attn_type``; for "auto" (llama.cpp decides when it
      creates the context and does not tell) pass ``flash_attn`` yourself;
    - ``block_tokens``: the block size in tokens (a block key covers a whole block);
    - the model's n_layer, n_embd and n_head_kv (already implied by the fingerprint; cheap,
      and readable in a debugger);
    - the RoPE settings of the context (scaling type, base and scale, YaRN parameters): K is
      stored after RoPE, so other RoPE settings give other K for the same tokens;
    - a LoRA adapter (``llm.lora_path``: its file's fingerprint and ``lora_scale``): an
      adapter changes K and V;
    - ``tp_rank``/``tp_size`` and ``extra`` (anything else that changes KV: control vectors,
      another adapter set up outside Llama()).

    Not included: n_ctx, n_batch and the thread count. Different batch boundaries change the
    low bits of the KV (a state computed in other batches is still a valid cache of the same
    tokens, as in any engine with prefix caching); a bit-exact restore needs the source's
    batch boundaries to fall on block boundaries (``n_batch`` a multiple of the block size).
    """
    if block_tokens <= 0:
        raise ValueError("block_tokens must be positive")
    cp = llm.context_params
    if flash_attn is None:
        fa_type = int(cp.flash_attn_type)
        if fa_type == llama_cpp.LLAMA_FLASH_ATTN_TYPE_AUTO:
            raise ValueError("the context's flash attention is 'auto' (llama.cpp decides at start "
                             "and does not tell): pass flash_attn=True/False")
        flash_attn = fa_type == llama_cpp.LLAMA_FLASH_ATTN_TYPE_ENABLED
    fingerprint = model_fingerprint or file_fingerprint(model_path)
    model = llama_cpp.llama_get_model(_ctx_ptr(llm))
    kv_dtype = "k=%s,v=%s" % (_ggml_type_name(cp.type_k), _ggml_type_name(cp.type_v))
    kv_layout = "seq-state/v_trans=%d/pieces-v%d" % (0 if flash_attn else 1, ls.PIECE_VERSION)
    parts = [
        "n_layer=%d" % llama_cpp.llama_model_n_layer(model),
        "n_embd=%d" % llama_cpp.llama_model_n_embd(model),
        "n_head_kv=%d" % llama_cpp.llama_model_n_head_kv(model),
        "rope=%d/%r/%r" % (cp.rope_scaling_type, cp.rope_freq_base, cp.rope_freq_scale),
        "yarn=%r/%r/%r/%r/%d" % (cp.yarn_ext_factor, cp.yarn_attn_factor, cp.yarn_beta_fast,
                                 cp.yarn_beta_slow, cp.yarn_orig_ctx),
    ]
    lora_path = getattr(llm, "lora_path", None)
    if lora_path:
        parts.append("lora=%s@%r" % (file_fingerprint(lora_path), getattr(llm, "lora_scale", 1.0)))
    return namespace(model_fingerprint=fingerprint, engine=ENGINE,
                     engine_version=llama_cpp.__version__, kv_dtype=kv_dtype, kv_layout=kv_layout,
                     block_tokens=block_tokens, tp_rank=tp_rank, tp_size=tp_size,
                     extra=[*parts, *extra])


# --------------------------------------------------------------------------
# LlamaKVStore

class BlockTooLargeError(ValueError):
    """A block piece is larger than kvtierd accepts (``Client.max_block_bytes``)."""


def max_block_tokens(layout: ls.StateLayout, max_bytes: int) -> int:
    """The largest block size (tokens) whose pieces fit in `max_bytes` (a piece is exactly
    ``block_tokens * layout.bytes_per_token`` bytes)."""
    return max(0, max_bytes // layout.bytes_per_token)


def piece_keys(tokens: Sequence[int], block_tokens: int, layout: ls.StateLayout) -> List[bytes]:
    """The keys of the pieces of the full blocks of `tokens` cut with `layout`.

    Key i is the prefix hash chain over tokens [0, (i+1)*block_tokens)
    (:func:`kvtier.keys.block_keys`) salted with ``layout.layout_hash``: pieces of one layout
    are never found by a lookup for another, even under one namespace."""
    return block_keys(tokens, block_tokens, salt=layout.layout_hash)


@dataclass
class KVStoreStats:
    """Counters of a LlamaKVStore (since it was made)."""

    stores: int = 0            #: store() calls
    blocks_stored: int = 0     #: blocks this store published
    bytes_stored: int = 0
    store_refused: int = 0     #: blocks kvtierd had no room for (RESOURCE_EXHAUSTED)
    restores: int = 0          #: restore() calls
    hits: int = 0              #: restores that restored >= 1 block
    misses: int = 0            #: restores that restored nothing (any reason below included)
    blocks_restored: int = 0
    tokens_restored: int = 0
    revoked: int = 0           #: reads thrown away because verify() failed (purge, drain)
    no_layout: int = 0         #: restores that needed the layout block and found none
    bad_layout: int = 0        #: layout blocks refused as damaged (restores that needed one)
    bad_pieces: int = 0        #: pieces refused by the join (not the layout's piece size)
    refused_by_llama: int = 0  #: states llama_state_seq_set_data refused
    #: stores that found the namespace's layout block damaged or of another layout than this
    #: context's (they store their pieces all the same: under their own layout's keys)
    layout_conflicts: int = 0
    errors: int = 0            #: kvtier calls that failed as a whole


@dataclass
class RestoreTimings:
    """Where the last restore's time went (seconds)."""

    keys: float = 0.0       #: piece_keys (hashing the tokens)
    match: float = 0.0      #: match_prefix
    acquire: float = 0.0    #: acquire of the blocks (incl. SSD promotion)
    join: float = 0.0       #: join_blocks_into from the lease views into the buffer
    verify: float = 0.0     #: Leases.verify + release
    set_state: float = 0.0  #: llama_state_seq_set_data
    layout: float = 0.0     #: reading the layout block (0 once the context knows its layout)

    @property
    def total(self) -> float:
        return (self.layout + self.keys + self.match + self.acquire + self.join + self.verify
                + self.set_state)


class LlamaKVStore(_Session):
    """Stores and restores one sequence's KV cache in kvtier, as blocks of `block_tokens`.

    `client` must be opened with the namespace of :func:`llama_namespace` for this context
    and `block_tokens`. `llm_or_ctx` is a ``llama_cpp.Llama`` or a raw ``llama_context_p``;
    with a Llama (and seq_id 0) restore() also sets ``llm.n_tokens``/``llm.input_ids`` so that
    ``llm.eval(tokens[n:])`` continues after the restored prefix, and store() checks the
    tokens it is given against ``llm.input_ids``.

    Bit-exactness: a restored prefix followed by computing the rest gives the same logits as
    computing everything only if the batch boundaries agree; prefill with ``n_batch`` a
    multiple of `block_tokens` (llama.cpp's KV of a token depends on which tokens shared its
    batch only in the low bits, but it does).

    Layout: pieces are the K/V bytes only; how to join them (v_trans, per-layer types and row
    sizes, llama.cpp's state format) is the :class:`kvtier.llama_state.StateLayout` they were
    cut with, and every piece is stored under a key salted with that layout's hash
    (:func:`piece_keys`). store() knows the layout from its sequence's state; restore() joins
    with the layout whose keys found the pieces, so a piece is only ever joined with its own
    layout. A context learns its layout from its first store(), or from a restore() that
    llama.cpp accepted (:attr:`layout`); until then restore() reads the namespace's layout
    block (:data:`LAYOUT_KEY`) first to learn which keys to look up (one more round trip).
    That block is a hint, written without a TTL (the tenant's default applies) by a store()
    that finds it missing: without it such a restore is a miss, and a layout block of another
    layout (a misconfigured engine sharing the namespace) finds no pieces, or pieces of that
    layout which llama.cpp refuses for this context: a miss either way.

    Not thread-safe (one store per context, as the context itself).
    """

    def __init__(self, client: Client, llm_or_ctx: Any, *, block_tokens: int = 256,
                 seq_id: int = 0, ttl_seconds: Optional[int] = None,
                 reconnect: bool = True) -> None:
        if block_tokens <= 0:
            raise ValueError("block_tokens must be positive")
        super().__init__(client, reconnect)
        self.llm = llm_or_ctx if hasattr(llm_or_ctx, "_ctx") else None
        self.ctx = _ctx_ptr(llm_or_ctx)
        self.block_tokens = block_tokens
        self.seq_id = seq_id
        self.ttl_seconds = ttl_seconds
        self.stats = KVStoreStats()
        self.last_restore = RestoreTimings()
        #: Test hook: called with the Leases after the blocks were copied out of the pool and
        #: before verify() (e.g. to purge the tenant in between).
        self._after_copy: Optional[Callable[[Leases], None]] = None
        self._layout: Optional[ls.StateLayout] = None  # learnt from this context's own state
        self._buf: Any = None                          # ctypes uint8 array, grown as needed
        self._spill_warned = False
        self._conflict_warned = False

    @property
    def layout(self) -> Optional[ls.StateLayout]:
        """This context's layout, once known (from a store(), or a restore() that llama.cpp
        accepted); None before."""
        return self._layout

    # --- store ---
    def _read_seq_state(self) -> bytearray:
        size = int(llama_cpp.llama_state_seq_get_size(self.ctx, self.seq_id))
        if size == 0:
            raise ValueError("sequence %d is empty: evaluate the tokens before store()"
                             % self.seq_id)
        buf = bytearray(size)
        arr = (ctypes.c_uint8 * size).from_buffer(buf)
        n = int(llama_cpp.llama_state_seq_get_data(self.ctx, arr, size, self.seq_id))
        del arr
        if n != size:
            raise RuntimeError("llama_state_seq_get_data wrote %d of %d bytes" % (n, size))
        return buf

    def _check_size(self, layout: ls.StateLayout, piece_bytes: int, client: Client) -> None:
        if piece_bytes > client.max_block_bytes:
            raise BlockTooLargeError(
                "a block of %d tokens is %d bytes (%d per token), more than kvtierd's "
                "max_block_bytes %d: use block_tokens <= %d (a new namespace), or raise "
                "[pool] max_block_bytes" % (
                    self.block_tokens, piece_bytes, layout.bytes_per_token,
                    client.max_block_bytes, max_block_tokens(layout, client.max_block_bytes)))
        spill = client.spill_max_block_bytes
        if spill and piece_bytes > spill and not self._spill_warned:
            self._spill_warned = True
            msg = ("kvtier: blocks of %d tokens are %d bytes, more than the SSD tier's "
                   "max_block_bytes %d: they stay in DRAM only and are dropped when evicted "
                   "(block_tokens <= %d would reach SSD)" % (
                       self.block_tokens, piece_bytes, spill, max_block_tokens(layout, spill)))
            warnings.warn(msg, RuntimeWarning, stacklevel=3)
            log.warning(msg)

    def _check_tokens(self, tokens: Sequence[int], n: int) -> None:
        """With a Llama that tracks what it evaluated (seq 0, ``llm.n_tokens`` > 0): refuses
        tokens [0, n) that are not what it evaluated (their KV would be published under the
        keys of other tokens)."""
        llm = self.llm
        if llm is None or self.seq_id != 0:
            return
        held = int(llm.n_tokens)
        if held <= 0:
            return
        if held < n:
            raise ValueError("the Llama holds %d tokens (llm.n_tokens); store() of %d tokens "
                             "needs its %d tokens in full blocks evaluated"
                             % (held, len(tokens), n))
        have = np.asarray(llm.input_ids[:n])
        want = np.asarray([int(t) for t in tokens[:n]], dtype=have.dtype)
        bad = np.flatnonzero(have != want)
        if bad.size:
            i = int(bad[0])
            raise ValueError("token %d given to store() is %d, the Llama evaluated %d there "
                             "(llm.input_ids): its KV is not the KV of these tokens"
                             % (i, int(want[i]), int(have[i])))

    def _read_layout_block(self, client: Client) -> Optional[ls.StateLayout]:
        """The layout in the namespace's layout block, None if there is none. Raises
        _LayoutRefused if the block is not an intact layout block, LeaseRevokedError if a
        purge ended the session during the read."""
        leases = client.acquire([LAYOUT_KEY])
        try:
            if leases.codes[0] != StatusCode.OK:
                return None
            raw = bytes(leases.view(0))
            leases.verify()
        finally:
            _release_quietly(leases)
        try:
            return ls.StateLayout.from_bytes(raw)
        except ValueError as e:
            raise _LayoutRefused(str(e)) from None

    def _note_layout_block(self, layout: ls.StateLayout) -> None:
        """Diagnostics: counts and warns (once) if the namespace's layout block is damaged or
        of another layout. It stays as it is (another layout's restores rely on it); this
        context's pieces are stored under its own layout's keys all the same, and only fresh
        contexts of this layout miss until their first store."""
        try:
            stored = self._call(self._read_layout_block)
            why = "" if stored is None or stored == layout else "layout %s" % stored.layout_id
        except _LayoutRefused as e:
            why = "a damaged layout block (%s)" % str(e)
        except LeaseRevokedError:  # a purge: the store's next call reconnects
            self._lose()
            return
        if not why:
            return
        self.stats.layout_conflicts += 1
        level = logging.DEBUG if self._conflict_warned else logging.WARNING
        self._conflict_warned = True
        log.log(level, "kvtier: the layout block of namespace %s holds %s, this context has %s "
                "(a namespace shared by differently configured engines?): contexts of this "
                "layout restore only once they know it (after a store)",
                self.client.namespace, why, layout.layout_id)

    def store(self, tokens: Sequence[int], *, ttl_seconds: Optional[int] = None) -> int:
        """Publishes the full blocks of `tokens` that kvtier does not have yet, and the
        namespace's layout block if it is missing.

        The engine must have evaluated `tokens` (at least their full blocks) in this sequence,
        from position 0; with a Llama (seq 0) whose ``n_tokens`` is set, `tokens` must be what
        it evaluated (``llm.input_ids``), else ValueError. Returns the number of blocks this
        call stored (0 if all were there). Each block is one piece of exactly ``block_tokens *
        bytes_per_token`` bytes under its :func:`piece_keys` key, copied once, from the
        sequence state straight into its reserved pool slot, with `ttl_seconds` (default: the
        store's). A missing layout block (:data:`LAYOUT_KEY`) is reserved in the same call,
        without a TTL (ALREADY_EXISTS: another store wrote it); one of another layout is left
        as it is (``stats.layout_conflicts``). Raises BlockTooLargeError if a block does not
        fit kvtierd's max_block_bytes, UnsupportedStateLayout for KV caches kvtier.llama_state
        does not handle (SWA, recurrent, several streams), KvtierError if kvtierd fails the
        calls.
        """
        N = self.block_tokens
        self.stats.stores += 1
        n = len(tokens) // N * N
        if n == 0:
            return 0
        self._check_tokens(tokens, n)
        state: Optional[ls.SeqState] = None
        layout = self._layout
        if layout is None:  # learnt once, from the sequence's own state
            state = ls.parse_seq_state(self._read_seq_state())
            layout = self._layout = state.layout
        keys = piece_keys(tokens[:n], N, layout)
        # [layout block, block 0, ...]: the layout block and every block stored is the common
        # case (any layout block: whose layout it is does not matter for this store's keys)
        found = self._call(lambda c: c.match_prefix([LAYOUT_KEY, *keys])).count
        if found == 1 + len(keys):
            return 0
        have = found - 1 if found else self._call(lambda c: c.match_prefix(keys)).count
        piece = ls.piece_size(layout, N)
        self._check_size(layout, piece, self._current())
        todo = keys[have:]
        if todo:
            if state is None:
                state = ls.parse_seq_state(self._read_seq_state())
            if state.layout != layout:  # a context's cache never changes its layout
                raise RuntimeError("sequence %d's state has layout %s, it had %s"
                                   % (self.seq_id, state.layout.layout_id, layout.layout_id))
            if state.n_tokens < n:
                raise ValueError("sequence %d holds %d tokens; store() of %d tokens needs them "
                                 "evaluated" % (self.seq_id, state.n_tokens, len(tokens)))
            if found:
                self._note_layout_block(layout)
        layout_block = None if found else layout.to_bytes()
        ttl = self.ttl_seconds if ttl_seconds is None else ttl_seconds

        def publish(c: Client) -> int:
            stored = 0
            head = [] if layout_block is None else [LAYOUT_KEY]
            first = len(head)  # index of the first block in the reservation
            sizes = [len(layout_block or b"")] * first + [piece] * len(todo)
            ttls = [0] * first + [ttl or 0] * len(todo)  # 0: the tenant's default
            with c.reserve([*head, *todo], sizes, ttls) as r:
                if layout_block is not None and r.codes[0] == StatusCode.OK:
                    r.write(0, layout_block)
                codes = r.codes[first:]
                for i, code in enumerate(codes):
                    if code == StatusCode.RESOURCE_EXHAUSTED:
                        self.stats.store_refused += 1
                        log.debug("kvtier: no room for block %d: %s", have + i, r.refusal)
                if state is not None and todo:
                    outs = [r.view(first + i) if code == StatusCode.OK else None
                            for i, code in enumerate(codes)]
                    ls.split_blocks_into(state, N, outs, first=have)
                    outs.clear()  # commit() refuses while views of the slots are alive
                reserved = [i for i, code in enumerate(r.codes) if code == StatusCode.OK]
                if reserved:
                    for i, code in zip(reserved, r.commit()):
                        if code == StatusCode.OK and i >= first:
                            stored += 1
                            self.stats.bytes_stored += piece
            return stored

        stored = int(self._call(publish))
        self.stats.blocks_stored += stored
        return stored

    # --- restore ---
    def _buffer(self, size: int) -> Any:
        if self._buf is None or len(self._buf) < size:
            self._buf = (ctypes.c_uint8 * size)()
        return self._buf

    def _miss(self) -> int:
        _seq_rm(self.ctx, self.seq_id)
        if self.llm is not None and self.seq_id == 0:
            self.llm.n_tokens = 0
        self.stats.misses += 1
        return 0

    def restore(self, tokens: Sequence[int]) -> int:
        """Loads the longest stored prefix of whole blocks of `tokens` into the sequence.

        At most ``(len(tokens) - 1) // block_tokens`` blocks, so that at least one token is
        left to evaluate (its logits are the next-token prediction). Returns the number of
        tokens restored; the sequence then holds exactly tokens [0, n).

        A context that knows its layout (:attr:`layout`) looks up its layout's
        :func:`piece_keys`; one that does not first reads the namespace's layout block and
        looks up that layout's keys. One acquire leases the stored run of blocks; the pieces
        are joined with the layout of their keys straight from the pool, then verify() checks
        that no purge ended the leases during the copy. On any miss or failure (nothing stored,
        a block gone, no layout block or a damaged one when it was needed, a piece not of the
        layout's size, kvtierd unreachable, a purge during a read, llama.cpp refusing the state,
        e.g. pieces of another layout than this context's) it returns 0 with the sequence
        cleared: the engine recomputes. Never raises for kvtier trouble.
        """
        N = self.block_tokens
        t = RestoreTimings()
        self.last_restore = t
        self.stats.restores += 1
        n_max = max(0, (len(tokens) - 1) // N)
        if n_max <= 0:
            return self._miss()
        leases: Optional[Leases] = None
        views: List[memoryview] = []
        try:
            t0 = time.perf_counter()
            layout = self._layout
            if layout is None:
                layout = self._call(self._read_layout_block)
                if layout is None:
                    self.stats.no_layout += 1
                    log.info("kvtier: no layout block in the namespace (evicted or expired; the "
                             "next store() puts it back) and this context does not know its "
                             "layout yet: recomputing")
                    return self._miss()
            t1 = time.perf_counter()
            t.layout = t1 - t0
            keys = piece_keys(tokens[:n_max * N], N, layout)
            t2 = time.perf_counter()
            t.keys = t2 - t1
            have = self._call(lambda c: c.match_prefix(keys)).count
            t3 = time.perf_counter()
            t.match = t3 - t2
            if have == 0:
                return self._miss()
            leases = self._current().acquire(keys[:have])
            t4 = time.perf_counter()
            t.acquire = t4 - t3
            n_blocks = leases.prefix
            if n_blocks <= 0:
                return self._miss()
            views = [leases.view(i) for i in range(n_blocks)]
            size = ls.joined_size(layout, n_blocks * N)
            buf = self._buffer(size)
            ls.join_blocks_into(views, buf, layout=layout, block_tokens=N, seq_id=self.seq_id)
            views.clear()  # no view may outlive the verify: release waits for them
            t5 = time.perf_counter()
            t.join = t5 - t4
            if self._after_copy is not None:
                self._after_copy(leases)
            leases.verify()
            _release_quietly(leases)
            leases = None
            t6 = time.perf_counter()
            t.verify = t6 - t5
        except LeaseRevokedError:
            self.stats.revoked += 1
            self._lose()
            return self._miss()
        except KvtierError as e:
            self.stats.errors += 1
            if isinstance(e, UnavailableError):
                self._lose()
            log.warning("kvtier: restore failed, recomputing: %s", str(e))
            return self._miss()
        except ValueError as e:  # the layout block or a piece refused
            # log str(e), not e: a log record holding the exception would keep its traceback
            # alive, and with it the frames holding the lease views (and so the leases)
            views.clear()
            if leases is not None and not leases.intact():  # read while a purge zeroed it
                self.stats.revoked += 1
                self._lose()
                return self._miss()
            if isinstance(e, _LayoutRefused):
                self.stats.bad_layout += 1
                log.warning("kvtier: the namespace's layout block refused, recomputing: %s",
                            str(e))
            else:
                self.stats.bad_pieces += 1
                log.warning("kvtier: stored blocks refused, recomputing: %s", str(e))
            return self._miss()
        finally:
            views.clear()
            _release_quietly(leases)

        n_read = int(llama_cpp.llama_state_seq_set_data(self.ctx, buf, size, self.seq_id))
        t.set_state = time.perf_counter() - t6
        if n_read != size:
            self.stats.refused_by_llama += 1
            log.warning("kvtier: llama.cpp refused the restored state (%d of %d bytes read)",
                        n_read, size)
            return self._miss()
        self._layout = layout  # llama.cpp checked it against its own cache: this context's
        n = n_blocks * N
        if self.llm is not None and self.seq_id == 0:
            self.llm.input_ids[:n] = tokens[:n]
            self.llm.n_tokens = n
            if hasattr(self.llm, "_requires_eval"):
                self.llm._requires_eval = True
        self.stats.hits += 1
        self.stats.blocks_restored += n_blocks
        self.stats.tokens_restored += n
        return n


class _LayoutRefused(ValueError):
    """The namespace's layout block is damaged."""


# --------------------------------------------------------------------------
# KvtierLlamaCache

# A stored LlamaState: its payload, input_ids[:n_tokens] (int32) | scores (float32, only with
# _FLAG_SCORES) | llama_state, cut in chunks of chunk_bytes, chunk i under _chunk_key(nonce,
# i) with a random nonce per stored state (so two writers never mix chunks); then, published
# after every chunk is committed, one manifest per full block k of its tokens under
# _manifest_key(block key k), the first writer of a key winning.
_MANIFEST = struct.Struct("<4sHHI16sQQqQQQQQII")
# magic, version, flags, n_chunks, nonce, payload_len, n_tokens, seed, input_ids_len,
# scores_rows, scores_cols, llama_state_size, chunk_bytes, anchor_blocks, block_tokens
_MANIFEST_MAGIC = b"KVLC"
_MANIFEST_VERSION = 1
_FLAG_SCORES = 1


@dataclass(frozen=True)
class _Manifest:
    flags: int
    n_chunks: int
    nonce: bytes
    payload_len: int
    n_tokens: int
    seed: int
    input_ids_len: int
    scores_rows: int
    scores_cols: int
    llama_state_size: int
    chunk_bytes: int
    anchor_blocks: int
    block_tokens: int

    def pack(self) -> bytes:
        return _MANIFEST.pack(_MANIFEST_MAGIC, _MANIFEST_VERSION, self.flags, self.n_chunks,
                              self.nonce, self.payload_len, self.n_tokens, self.seed,
                              self.input_ids_len, self.scores_rows, self.scores_cols,
                              self.llama_state_size, self.chunk_bytes, self.anchor_blocks,
                              self.block_tokens)

    @classmethod
    def unpack(cls, raw: bytes) -> "_Manifest":
        if len(raw) != _MANIFEST.size:
            raise ValueError("manifest is %d bytes, expected %d" % (len(raw), _MANIFEST.size))
        magic, ver, *rest = _MANIFEST.unpack(raw)
        if magic != _MANIFEST_MAGIC or ver != _MANIFEST_VERSION:
            raise ValueError("not a version %d manifest" % _MANIFEST_VERSION)
        m = cls(*rest)
        scores = m.scores_rows * m.scores_cols * 4 if m.flags & _FLAG_SCORES else 0
        if (m.payload_len != 4 * m.n_tokens + scores + m.llama_state_size
                or m.n_tokens > m.input_ids_len or m.chunk_bytes == 0
                or m.n_chunks != -(-m.payload_len // m.chunk_bytes)):
            raise ValueError("manifest fields are inconsistent")
        return m

    def payload_offsets(self) -> Tuple[int, int]:
        """Offsets of the scores and of the llama state in the payload."""
        scores_off = 4 * self.n_tokens
        scores = self.scores_rows * self.scores_cols * 4 if self.flags & _FLAG_SCORES else 0
        return scores_off, scores_off + scores


def _manifest_key(anchor: bytes) -> bytes:
    return hashlib.blake2b(b"kvtier-llama-cache-manifest-v1" + anchor, digest_size=32).digest()


def _chunk_key(nonce: bytes, i: int) -> bytes:
    return hashlib.blake2b(b"kvtier-llama-cache-chunk-v1" + nonce + struct.pack("<I", i),
                           digest_size=32).digest()


@dataclass
class CacheStats:
    """Counters of a KvtierLlamaCache."""

    lookups: int = 0        #: __getitem__ calls
    hits: int = 0           #: states returned
    misses: int = 0         #: KeyErrors raised
    stale: int = 0          #: manifests whose chunks were gone (removed, next one tried)
    unreadable: int = 0     #: states whose chunks could not be read now (kept, next one tried)
    #: states skipped because they cannot load into this cache's Llama (another n_ctx, or a
    #: scores shape its ``scores`` cannot take: another n_batch or logits_all)
    incompatible: int = 0
    revoked: int = 0        #: reads thrown away because verify() failed
    stores: int = 0         #: states stored (at least one new manifest)
    store_skipped: int = 0  #: __setitem__ with nothing new to store (or too short a prefix)
    store_failed: int = 0   #: __setitem__ that kvtier had no room for, or failed
    errors: int = 0         #: kvtier calls that failed as a whole
    bytes_stored: int = 0
    bytes_loaded: int = 0


class KvtierLlamaCache(_Session, BaseLlamaCache):
    """A ``Llama.set_cache`` cache whose states live in kvtierd (DRAM, then SSD).

    ``llm.set_cache(KvtierLlamaCache(kvtier.Client(socket, llama_namespace(llm, path, 64)),
    llm=llm))``

    llama-cpp-python's cache interface is per prefix: ``cache[prompt + completion] =
    llm.save_state()`` after each completion, and ``cache[prompt]`` returns a whole
    ``LlamaState`` (the context's full state from ``llama_state_get_data``: the KV of every
    cell, the logits, plus ``input_ids``, ``scores``, ``n_tokens``, ``seed``) which
    ``Llama.load_state`` restores at once before generate() truncates it to the part that
    matches the new prompt. The state is opaque (the whole context, not one sequence), so
    this class stores it whole: serialized, in chunks of exactly :attr:`chunk_bytes` (the
    largest power of two not above ``max_block_bytes`` and ``spill_max_block_bytes``: chunks
    reach the SSD tier and fill their pool slots exactly) but the last, under random chunk keys,
    and publishes it under one small manifest per full block of the state's tokens. The
    manifest of block k sits at a key derived from the hash-chain key of the first k blocks,
    so a lookup acquires the manifests of all of the prompt's block keys in one call and takes
    the longest one stored; the first state stored for a prefix wins (later ones only add
    manifests for longer prefixes).

    The cost compared with LlamaKVStore (which stores each block of KV once and shares it
    among all prompts): every stored state repeats the KV of its whole prefix, so a T-token
    conversation stored after each turn costs O(T^2) bytes, and a hit moves the whole state
    (KV of all its tokens, logits, and with `keep_scores` its ``scores``). The gain is that it
    works with ``create_completion``/``__call__`` as they are.

    `block_tokens` is the granularity of prefix matches (a hit covers whole blocks; prompts
    shorter than one block are never cached). ``cache_size`` is the tenant's DRAM pool bytes
    in use (kvtierd evicts, not this class; ``capacity_bytes`` is the pool size).

    A whole-context state also carries the shape of the Llama that saved it, which
    ``Llama.load_state`` needs to match: ``input_ids`` of n_ctx entries, ``scores`` of
    min(n_tokens, n_ctx with logits_all or else n_batch) rows, at most n_ctx tokens of KV;
    a state that does not fit makes load_state raise, or leave the Llama holding tokens
    without their KV. Give the Llama the cache is set on as `llm`: a stored state that
    cannot load into it is then a miss (``stats.incompatible``) and its prompt is computed.
    Without `llm` every state is returned as stored, so all Llamas sharing the namespace must
    be configured alike (n_ctx, n_batch, logits_all). Either way, Llamas that differ there
    are better kept apart (``extra=["n_ctx=%d" % llm.n_ctx(), ...]`` in
    :func:`llama_namespace`): they do not hit each other's states, and the first state stored
    for a prefix keeps the others' from being stored. llama.cpp itself still refuses a state of
    another n_seq_max (load_state raises RuntimeError).

    `keep_scores`: store ``scores`` (n x n_vocab floats) with the state; without them a hit
    loads zeros there. They are only written by a Llama with ``logits_all`` (otherwise they
    are uninitialised memory, and only logprobs read them, which need logits_all), so the
    default is ``llm``'s logits_all, or True without `llm`.

    Lookups and stores never raise for kvtier trouble (a lookup is then a KeyError, a
    store is skipped; see ``stats``).
    """

    def __init__(self, client: Client, block_tokens: int = 64, *,
                 llm: Optional["llama_cpp.Llama"] = None, ttl_seconds: Optional[int] = None,
                 keep_scores: Optional[bool] = None, reconnect: bool = True) -> None:
        if block_tokens <= 0:
            raise ValueError("block_tokens must be positive")
        _Session.__init__(self, client, reconnect)
        BaseLlamaCache.__init__(self, capacity_bytes=client.pool_size)
        self.block_tokens = block_tokens
        self.llm = llm
        self.ttl_seconds = ttl_seconds
        if keep_scores is None:
            keep_scores = bool(getattr(llm, "_logits_all", True)) if llm is not None else True
        self.keep_scores = keep_scores
        self.stats = CacheStats()
        #: Test hook, as LlamaKVStore._after_copy: runs after the state's chunks were copied.
        self._after_copy: Optional[Callable[[Leases], None]] = None

    @property
    def chunk_bytes(self) -> int:
        """The size of every chunk of a stored state but its last (see :func:`_chunk_bytes`)."""
        return _chunk_bytes(self._current())

    @property
    def cache_size(self) -> int:
        try:
            return int(self._call(lambda c: c.stats()).used_bytes)
        except KvtierError:
            return 0

    def _manifest_keys(self, tokens: Sequence[int]) -> List[bytes]:
        return [_manifest_key(a) for a in block_keys(list(tokens), self.block_tokens)]

    # --- store ---
    def __setitem__(self, key: Sequence[int], value: "llama_cpp.llama.LlamaState") -> None:
        try:
            self._store(value)
        except KvtierError as e:
            self.stats.errors += 1
            self.stats.store_failed += 1
            if isinstance(e, UnavailableError):
                self._lose()
            log.warning("kvtier: could not store a llama state: %s", str(e))

    def _store(self, value: "llama_cpp.llama.LlamaState") -> None:
        n_tokens = int(value.n_tokens)
        ids = np.ascontiguousarray(np.asarray(value.input_ids)[:n_tokens], dtype="<i4")
        mkeys = self._manifest_keys(ids.tolist())
        if not mkeys:
            self.stats.store_skipped += 1
            return
        scores = np.ascontiguousarray(np.asarray(value.scores), dtype="<f4")
        if scores.ndim != 2:
            raise ValueError("LlamaState.scores must be 2-D (n x n_vocab)")
        rows, cols = scores.shape
        state = memoryview(value.llama_state).cast("B")[: int(value.llama_state_size)]
        parts = [ids.data.cast("B")]
        flags = 0
        if self.keep_scores:
            parts.append(scores.data.cast("B"))
            flags |= _FLAG_SCORES
        parts.append(state)
        payload_len = sum(p.nbytes for p in parts)
        client = self._current()
        chunk = _chunk_bytes(client)
        n_chunks = -(-payload_len // chunk)
        nonce = np.random.default_rng().bytes(16)
        base = _Manifest(flags, n_chunks, nonce, payload_len, n_tokens, int(value.seed),
                         int(np.asarray(value.input_ids).shape[0]), rows, cols, state.nbytes,
                         chunk, 0, self.block_tokens)
        ttl = self.ttl_seconds

        with client.reserve(mkeys, [_MANIFEST.size] * len(mkeys), ttl) as rm:
            new = [i for i, c in enumerate(rm.codes) if c == StatusCode.OK]
            if not new:  # every prefix of this state already has a state
                self.stats.store_skipped += 1
                return
            ckeys = [_chunk_key(nonce, i) for i in range(n_chunks)]
            sizes = [min(chunk, payload_len - i * chunk) for i in range(n_chunks)]
            with client.reserve(ckeys, sizes, ttl) as rc:
                if not rc.all_ok:
                    self.stats.store_failed += 1
                    log.warning("kvtier: no room for a %d-byte llama state: %s", payload_len,
                                rc.refusal)
                    return  # both reservations abort on leaving their blocks
                _scatter(parts, [rc.view(i) for i in range(n_chunks)])
                if any(c != StatusCode.OK for c in rc.commit()):
                    self.stats.store_failed += 1
                    return
            for i in new:
                rm.write(i, dataclasses.replace(base, anchor_blocks=i + 1).pack())
            rm.commit()
        self.stats.stores += 1
        self.stats.bytes_stored += payload_len

    # --- load ---
    def __getitem__(self, key: Sequence[int]) -> "llama_cpp.llama.LlamaState":
        self.stats.lookups += 1
        try:
            state = self._lookup(list(key))
        except KvtierError as e:
            self.stats.errors += 1
            if isinstance(e, LeaseRevokedError):
                self.stats.revoked += 1
            if isinstance(e, (UnavailableError, LeaseRevokedError)):
                self._lose()
            log.warning("kvtier: cache lookup failed: %s", str(e))
            state = None
        if state is None:
            self.stats.misses += 1
            raise KeyError("no stored llama state for a prefix of these tokens")
        self.stats.hits += 1
        return state

    def __contains__(self, key: object) -> bool:
        """Whether a state is stored for a prefix of `key` (one round trip; the state is
        neither read nor checked against ``llm``: ``cache[key]`` may still miss)."""
        try:
            mkeys = self._manifest_keys(list(key))  # type: ignore[call-overload]
            if not mkeys:
                return False
            leases = self._call(lambda c: c.acquire(mkeys))
            found = any(c == StatusCode.OK for c in leases.codes)
            _release_quietly(leases)
            return found
        except KvtierError:
            return False

    def _read_manifests(self, mkeys: List[bytes]) -> List[Tuple[int, bytes]]:
        """(block count, manifest bytes) of every stored manifest, longest first; one acquire."""
        leases = self._call(lambda c: c.acquire(mkeys))
        try:
            found = [(i + 1, bytes(leases.view(i))) for i in reversed(range(len(mkeys)))
                     if leases.codes[i] == StatusCode.OK]
            leases.verify()
            return found
        finally:
            _release_quietly(leases)

    def _incompatible(self, m: _Manifest) -> str:
        """Why the state of `m` cannot load into ``self.llm`` ("" if it can, or no llm)."""
        llm = self.llm
        if llm is None:
            return ""
        n_ctx = int(llm.n_ctx())
        if m.n_tokens > n_ctx:
            return "%d tokens, the Llama's n_ctx is %d" % (m.n_tokens, n_ctx)
        if m.input_ids_len != len(llm.input_ids):
            return "input_ids of %d, the Llama's are %d" % (m.input_ids_len, len(llm.input_ids))
        fits = tuple(llm.scores[:m.n_tokens, :].shape)
        if (m.scores_rows, m.scores_cols) != fits:
            return "scores of %dx%d, the Llama takes %dx%d" % (
                m.scores_rows, m.scores_cols, fits[0], fits[1])
        return ""

    def _lookup(self, tokens: List[int]) -> Optional["llama_cpp.llama.LlamaState"]:
        mkeys = self._manifest_keys(tokens)
        if not mkeys:
            return None
        dead: Set[bytes] = set()     # nonces of states found incomplete: forget their manifests
        skipped: Set[bytes] = set()  # nonces of states not usable now, or not here: keep them
        for k, raw in self._read_manifests(mkeys):
            try:
                m = _Manifest.unpack(raw)
                if m.anchor_blocks != k or m.block_tokens != self.block_tokens:
                    raise ValueError("manifest of another prefix")
            except ValueError as e:
                log.warning("kvtier: dropping a bad manifest: %s", str(e))
                self._current().remove([mkeys[k - 1]])
                continue
            if m.nonce in dead:
                self._current().remove([mkeys[k - 1]])
                continue
            if m.nonce in skipped:
                continue
            why = self._incompatible(m)
            if why:
                self.stats.incompatible += 1
                skipped.add(m.nonce)
                log.info("kvtier: a stored state cannot load into this Llama (%s): skipped", why)
                continue
            try:
                state = self._load(m)
            except _StateGone:  # a chunk was evicted, expired or removed: forget the manifest
                self.stats.stale += 1
                dead.add(m.nonce)
                self._current().remove([mkeys[k - 1]])
                continue
            if state is None:  # not readable now (a failed promotion...): kept for later
                self.stats.unreadable += 1
                skipped.add(m.nonce)
                continue
            n = k * self.block_tokens
            if state.input_ids[:n].tolist() != tokens[:n]:  # never: the keys cover the tokens
                log.warning("kvtier: a stored state's tokens do not match its key; ignored")
                continue
            return state
        return None

    def _load(self, m: _Manifest) -> Optional["llama_cpp.llama.LlamaState"]:
        """The state of `m`. Raises _StateGone if one of its chunks is not stored (NOT_FOUND),
        LeaseRevokedError if a purge ended the leases during the copy; None if the chunks are
        there but could not be read now, or are not the manifest's sizes."""
        ckeys = [_chunk_key(m.nonce, i) for i in range(m.n_chunks)]
        client = self._current()
        leases = client.acquire(ckeys)
        try:
            if leases.prefix != m.n_chunks:
                code = leases.codes[leases.prefix]
                if code == StatusCode.NOT_FOUND:
                    raise _StateGone()
                log.warning("kvtier: chunk %d of a stored llama state could not be read (%s)",
                            leases.prefix, code.name.lower())
                return None
            sizes = [leases.size(i) for i in range(m.n_chunks)]
            if sum(sizes) != m.payload_len or any(sz > m.chunk_bytes for sz in sizes):
                log.warning("kvtier: the chunks of a stored llama state are not its manifest's "
                            "sizes; ignored")
                return None
            payload = bytearray(m.payload_len)
            dst = memoryview(payload)
            off = 0
            for i in range(m.n_chunks):
                v = leases.view(i)
                dst[off:off + v.nbytes] = v
                off += v.nbytes
                del v
            if self._after_copy is not None:
                self._after_copy(leases)
            leases.verify()  # LeaseRevokedError: the caller's miss
        finally:
            _release_quietly(leases)
        self.stats.bytes_loaded += m.payload_len
        scores_off, state_off = m.payload_offsets()
        input_ids = np.zeros(m.input_ids_len, dtype=np.intc)
        input_ids[:m.n_tokens] = np.frombuffer(payload, dtype="<i4", count=m.n_tokens)
        if m.flags & _FLAG_SCORES:
            scores = np.frombuffer(payload, dtype="<f4", count=m.scores_rows * m.scores_cols,
                                   offset=scores_off).reshape(m.scores_rows, m.scores_cols)
        else:
            scores = np.zeros((m.scores_rows, m.scores_cols), dtype=np.single)
        # llama_state is a read-only memoryview of the payload, not bytes: bytes-like for
        # Llama.load_state (which copies it with from_buffer_copy) without another copy here.
        llama_state: Any = dst[state_off:state_off + m.llama_state_size].toreadonly()
        return llama_cpp.llama.LlamaState(
            input_ids=input_ids, scores=scores, n_tokens=m.n_tokens, llama_state=llama_state,
            llama_state_size=m.llama_state_size, seed=m.seed)


class _StateGone(Exception):
    """A chunk of a stored state is not stored any more (evicted, expired, removed)."""


def _chunk_bytes(client: Client) -> int:
    """The largest power of two that is at most ``max_block_bytes`` and (with an SSD tier)
    ``spill_max_block_bytes``: chunks of it reach the SSD tier and fill their pool slot
    exactly (a power of two is one of kvtierd's slot size classes, or whole slabs)."""
    limit = min(client.max_block_bytes, client.spill_max_block_bytes or client.max_block_bytes)
    return 1 << (max(1, limit).bit_length() - 1)


def _scatter(parts: Sequence[memoryview], dsts: List[memoryview]) -> None:
    """Copies the concatenation of `parts` into the consecutive buffers `dsts` (no join)."""
    di, doff = 0, 0
    for p in parts:
        poff = 0
        while poff < p.nbytes:
            d = dsts[di]
            n = min(p.nbytes - poff, d.nbytes - doff)
            d[doff:doff + n] = p[poff:poff + n]
            poff += n
            doff += n
            if doff == d.nbytes:
                di, doff = di + 1, 0
    dsts.clear()
