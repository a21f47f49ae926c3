"""The Python client of kvtierd: libkvclient's C ABI through ctypes, zero copy where it can be.

Every batch call is one call into libkvclient (one round trip per 4096 keys). Its rule, the
same as the C and C++ APIs: a call that fails as a whole raises a KvtierError; what happened to
each key is a StatusCode in the call's result, never an exception.

Zero copy: `Reservation.view(i)` and `Leases.view(i)` are memoryviews of the tenant's shared
pool, so `numpy.frombuffer(view, ...)` and `torch.frombuffer(view, ...)` write or read the
block in place. Each view keeps its reservation or lease, and the client's mapping of the pool,
alive: releasing, aborting or closing waits for the last view to go. Calls that copy say so in
their names (`put_copy`, `get_copy`, `get_copy_into`).

Purges: an operator's purge of the tenant (also a drain or a shutdown of kvtierd) ends the
session and zeroes the pool, leases or not. A block read through a lease is right only if
`Leases.verify()` passes *after* the read; `get_copy`, `get_copy_into`, `Leases.copy_into` and
`kvtier.llama_cpp` check for you.

Restarts: once kvtierd goes away every call raises UnavailableError. With
``Client(..., reconnect=True)`` the next call opens a new session first (``Client.reconnects``
counts them). Reservations and Leases of the lost session are void: their views and copies
raise (FAILED_PRECONDITION), `verify()` fails, and ending them sends nothing; their old views
read zeros (never the new session's pool, never freed memory).
"""

from __future__ import annotations

import ctypes
import os
import threading
import weakref
from dataclasses import dataclass
from typing import Any, Iterable, Iterator, Optional, Sequence, Union

from . import _lib
from ._lib import lib
from .errors import (
    InvalidArgumentError,
    KvtierError,
    LeaseRevokedError,
    StatusCode,
    Tier,
    error_for,
)

Key = Union[bytes, bytearray, memoryview]
Buffer = Any  # anything with the buffer protocol (bytes, bytearray, memoryview, numpy, ...)

DEFAULT_SOCKET = "/run/kvtier/kvtierd.sock"
MAX_BATCH = 4096
_CODES = list(StatusCode)
_TIERS = list(Tier)


def _code(raw: int) -> StatusCode:
    return _CODES[raw] if raw < len(_CODES) else StatusCode.INTERNAL


def _check(status: int) -> None:
    if status != 0:
        message = lib.kvtier_error().decode("utf-8", "replace")
        raise error_for(status, message)


def version() -> str:
    """libkvclient's version, e.g. "0.5.0": the same as the package's."""
    return str(lib.kvtier_version().decode())


def protocol_version() -> int:
    """The wire protocol version libkvclient speaks."""
    return int(lib.kvtier_protocol_version())


def _keys(keys: Sequence[Key]) -> Any:
    """The C array of kvtier_key (33 bytes each: length, then 32 bytes, zero-padded)."""
    n = len(keys)
    parts = []
    for i, k in enumerate(keys):
        k = bytes(k)
        if not 1 <= len(k) <= _lib.KEY_BYTES:
            raise InvalidArgumentError(f"key {i} is {len(k)} bytes; keys are 1..32 bytes")
        parts.append(_LEN_BYTE[len(k)] + k.ljust(_lib.KEY_BYTES, b"\0"))
    return (_lib.KeyStruct * n).from_buffer_copy(b"".join(parts)) if n else (_lib.KeyStruct * 0)()


_LEN_BYTE = [bytes([i]) for i in range(_lib.KEY_BYTES + 1)]


def _u64s(values: Iterable[int], n: int, what: str) -> Any:
    vals = list(values)
    if len(vals) != n:
        raise InvalidArgumentError(f"{what} must be as long as keys ({len(vals)} != {n})")
    return (ctypes.c_uint64 * n)(*vals)


def _ttls(ttl_seconds: Union[None, int, Sequence[int]], n: int) -> Any:
    if ttl_seconds is None:
        return None
    if isinstance(ttl_seconds, int):
        return (ctypes.c_uint32 * n)(*([ttl_seconds] * n))
    vals = list(ttl_seconds)
    if len(vals) != n:
        raise InvalidArgumentError("ttl_seconds must be as long as keys")
    return (ctypes.c_uint32 * n)(*vals)


def _address(buf: Buffer, writable: bool = False) -> tuple[int, int, Any]:
    """(address, nbytes, object keeping it valid) of a C-contiguous buffer, without copying.
    `writable`: the caller writes into it (refused if it is read-only)."""
    if isinstance(buf, bytes):
        if writable:
            raise InvalidArgumentError("bytes are read-only: pass a bytearray or an array")
        return ctypes.cast(ctypes.c_char_p(buf), ctypes.c_void_p).value or 0, len(buf), buf
    ai = getattr(buf, "__array_interface__", None)  # numpy and friends: no memoryview needed
    if ai is not None and ai.get("strides") is None:  # C-contiguous
        address, readonly = ai["data"]
        if writable and readonly:
            raise InvalidArgumentError("the output array is read-only")
        return int(address), int(buf.nbytes), buf
    mv = memoryview(buf)
    if not mv.c_contiguous:
        raise InvalidArgumentError("buffers must be C-contiguous")
    if not mv.readonly:
        arr = (ctypes.c_ubyte * mv.nbytes).from_buffer(mv.cast("B"))
        return ctypes.addressof(arr), mv.nbytes, (arr, mv)
    if writable:
        raise InvalidArgumentError("the output buffer is read-only")
    try:  # a read-only buffer that is not bytes: numpy gives its address
        import numpy as np

        a = np.frombuffer(mv, dtype=np.uint8)
        return int(a.ctypes.data), mv.nbytes, (a, mv)
    except ImportError:
        return _address(bytes(mv))  # without numpy: a copy


def _view(owners: Sequence["_ViewOwner"], address: int, size: int,
          readonly: bool) -> memoryview:
    """A memoryview of `size` bytes at `address` that keeps each of `owners` held while it (or
    anything made from it, such as a numpy array) lives."""
    arr = (ctypes.c_ubyte * size).from_address(address)
    arr._kvtier_owners = tuple(owners)  # type: ignore[attr-defined]
    for owner in owners:
        owner._hold()
        # Not at interpreter exit: memory may still be read then; the OS takes it back.
        weakref.finalize(arr, owner._view_gone).atexit = False
    mv = memoryview(arr).cast("B")
    return mv.toreadonly() if readonly else mv


class _ViewOwner:
    """Something views keep held. `_end()` ends it now, or once the last view is gone
    (`_end_now` runs then, exactly once)."""

    def __init__(self) -> None:
        self._views = 0
        self._lock = threading.Lock()
        self._ending = False  # an end was asked for: no new views
        self._ended = False

    def _hold(self) -> None:
        with self._lock:
            self._views += 1

    def _view_gone(self) -> None:
        with self._lock:
            self._views -= 1
            run = self._views == 0 and self._ending and not self._ended
            if run:
                self._ended = True
        if run:
            self._end_now()

    def _end(self) -> bool:
        """Asks for the end; True if it ran now (no view was alive)."""
        with self._lock:
            if self._ending:
                return False
            self._ending = True
            run = self._views == 0
            if run:
                self._ended = True
        if run:
            self._end_now()
        return run

    def _check_open(self, what: str) -> None:
        if self._ending:
            raise KvtierError(f"the {what} has ended", StatusCode.FAILED_PRECONDITION)

    @property
    def views_alive(self) -> int:
        """How many memoryviews of it still exist (they keep it held)."""
        return self._views

    def _end_now(self) -> None:  # pragma: no cover - overridden
        pass

    def __del__(self) -> None:  # dropped without an end: end it now
        try:
            if getattr(self, "_ended", True) is False:
                self._end()
        except Exception:  # interpreter shutdown: the OS takes everything back
            pass


@dataclass(frozen=True)
class Stats:
    """The tenant's counters (docs/protocol.md, "9 stats")."""

    pool_bytes: int
    used_bytes: int
    slab_bytes_in_use: int
    committed_blocks: int
    reserved_blocks: int
    leased_blocks: int
    index_capacity: int
    index_bytes: int
    hits: int
    misses: int
    evictions: int
    sessions: int
    ssd_quota_bytes: int
    ssd_blocks: int
    ssd_only_blocks: int
    ssd_payload_bytes: int
    dirty_bytes: int
    demotions: int
    promotions: int
    demote_failures: int
    promote_failures: int
    integrity_failures: int
    ssd_dropped: int
    ssd_segments: int
    expirations: int


@dataclass(frozen=True)
class PrefixMatch:
    """How many leading keys are stored, and the tier of each of them; with ``estimate=True``,
    what loading them would cost by kvtierd's estimate (``load_us``: until the whole prefix is
    in this process's memory, of which ``ssd_queue_us`` behind SSD work already queued; None
    from a kvtierd that does not estimate). Compare ``load_us`` with the prefill time of the
    same tokens to choose between loading and recomputing."""

    count: int
    tiers: list[Tier]
    load_us: Optional[int] = None
    ssd_queue_us: Optional[int] = None
    dram_bytes: int = 0
    ssd_bytes: int = 0

    @property
    def dram_blocks(self) -> int:
        return sum(1 for t in self.tiers if t == Tier.DRAM)

    @property
    def ssd_blocks(self) -> int:
        return sum(1 for t in self.tiers if t == Tier.SSD)


@dataclass(frozen=True)
class OnloadResult:
    """One key of an onload: code OK (copied), NOT_FOUND (a miss) or INVALID_ARGUMENT (the
    block, of `size` bytes, does not fit the region there); `tier` it was found in."""

    code: StatusCode
    size: int
    tier: Tier


class Reservation(_ViewOwner):
    """Slots reserved by one `Client.reserve` call: write them (`view(i)`), then `commit()`.

    A context manager: leaving the block without commit() aborts (nothing becomes visible).
    commit() and abort() refuse (BufferError) while views are alive, since a write through a
    view after either could land in a slot that then holds another block; an abort on leaving
    the block waits for the views to go instead.
    """

    def __init__(self, client: "Client", keys: list[bytes], sizes: list[int],
                 offsets: Any, codes: list[StatusCode], refusal: str, packed: Any,
                 generation: int) -> None:
        super().__init__()
        self._client = client
        #: The session it was reserved in (see Client.reconnects).
        self.generation = generation
        self._packed = packed  # the keys as passed to libkvclient
        self.keys = keys
        self.sizes = sizes
        self._offsets = offsets
        self.codes = codes
        #: Why the first RESOURCE_EXHAUSTED key was refused ("" if none was).
        self.refusal = refusal

    def __len__(self) -> int:
        return len(self.keys)

    def __enter__(self) -> "Reservation":
        return self

    def __exit__(self, *exc: object) -> None:
        self._end()  # aborts, now or once the views are gone; no-op after commit()

    def code(self, i: int) -> StatusCode:
        """OK: view(i) is writable. ALREADY_EXISTS: stored or being stored by someone.
        RESOURCE_EXHAUSTED: no room even after eviction (see `refusal`)."""
        return self.codes[i]

    @property
    def all_ok(self) -> bool:
        return all(c == StatusCode.OK for c in self.codes)

    def _slot(self, i: int) -> int:
        self._check_open("reservation")
        self._client._handle()
        if self.codes[i] != StatusCode.OK:
            raise KvtierError(f"key {i} was not reserved ({self.codes[i].name.lower()})",
                              self.codes[i])
        return self._client._base_of(self.generation) + int(self._offsets[i])

    def view(self, i: int) -> memoryview:
        """The reserved slot of key i, writable in place (zero copy)."""
        return _view((self, self._client), self._slot(i), self.sizes[i], False)

    def write(self, i: int, data: Buffer) -> None:
        """Copies `data` (exactly the reserved size) into slot i."""
        addr, n, keep = _address(data)
        if n != self.sizes[i]:
            raise InvalidArgumentError(f"key {i}: {n} bytes for a slot of {self.sizes[i]}")
        lib.kvtier_copy_to_pool(self._slot(i), addr, n)
        del keep

    def _reserved(self) -> list[bytes]:
        return [k for k, c in zip(self.keys, self.codes) if c == StatusCode.OK]

    def _finish(self, op: Any) -> list[StatusCode]:
        with self._lock:
            if self._ending:
                raise KvtierError("the reservation has ended", StatusCode.FAILED_PRECONDITION)
            if self._views:
                raise BufferError(f"{self._views} view(s) of the reservation are alive: drop "
                                  f"them first (a write after this could hit another block)")
            self._ending = self._ended = True
        # Only in the session that reserved them (after a reconnect: FAILED_PRECONDITION).
        gen = self.generation

        def in_session(c: Any, packed: Any, n: int, codes: Any) -> int:
            return int(op(c, gen, packed, n, codes))

        if all(c == StatusCode.OK for c in self.codes):  # the usual case: no repacking
            return self._client._per_key_packed(in_session, self._packed, len(self.keys))
        return self._client._per_key(in_session, self._reserved())

    def commit(self) -> list[StatusCode]:
        """Publishes every reserved key; returns the per-key codes of those (in order)."""
        return self._finish(lib.kvtier_commit_in_session)

    def abort(self) -> list[StatusCode]:
        """Gives the slots back; nothing becomes visible."""
        return self._finish(lib.kvtier_abort_in_session)

    def _end_now(self) -> None:  # the abort of a reservation left without commit()
        self._client._abort_later(self._reserved(), self.generation)


class Leases(_ViewOwner):
    """Read leases from one `Client.acquire` call: each OK block stays put while they live and
    the session is open (a purge ends the session: see `verify`).

    `release()` (or leaving the `with` block) ends them, once no view of them is left.
    """

    def __init__(self, client: "Client", keys: list[bytes], leases: Any,
                 generation: int) -> None:
        super().__init__()
        self._client = client
        #: The session they were taken in (see Client.reconnects).
        self.generation = generation
        self.keys = keys
        self._leases = leases
        self.codes = [_code(l.code) for l in leases]

    def __len__(self) -> int:
        return len(self.keys)

    def __enter__(self) -> "Leases":
        return self

    def __exit__(self, *exc: object) -> None:
        self._end()

    def code(self, i: int) -> StatusCode:
        """OK or NOT_FOUND."""
        return self.codes[i]

    def size(self, i: int) -> int:
        return int(self._leases[i].size)

    def tier(self, i: int) -> Tier:
        """Where the block was found (DRAM, or SSD: then promoted into DRAM for the lease)."""
        return _TIERS[min(int(self._leases[i].tier), 3)]

    @property
    def prefix(self) -> int:
        """Leading keys that are OK: the usable prefix."""
        n = 0
        while n < len(self.codes) and self.codes[n] == StatusCode.OK:
            n += 1
        return n

    def _block(self, i: int) -> int:
        self._check_open("lease")
        self._client._handle()
        if self.codes[i] != StatusCode.OK:
            raise KvtierError(f"key {i} is not leased ({self.codes[i].name.lower()})",
                              self.codes[i])
        return self._client._base_of(self.generation) + int(self._leases[i].offset)

    def view(self, i: int) -> memoryview:
        """Key i's block, read-only, in place (zero copy). Call verify() after reading it."""
        return _view((self, self._client), self._block(i), self._leases[i].size, True)

    def intact(self) -> bool:
        """True if every lease was still held while you read: the bytes read are right.
        Call it after the read (or after the copy has finished, for asynchronous copies)."""
        if self._ended or self._client._c is None:
            return False
        return bool(lib.kvtier_verify_session(self._client._c, self.generation) == 0)

    def verify(self) -> None:
        """Raises LeaseRevokedError unless intact(): call after reading, before using."""
        if not self.intact():
            raise LeaseRevokedError("kvtierd ended this session (tenant purged, daemon draining "
                                    "or stopping, or restarted and the client reconnected): "
                                    "bytes read through these leases may be wrong; treat them "
                                    "as a miss")

    def copy_into(self, i: int, out: Buffer) -> int:
        """Copies key i's block into `out` (at least as large), then verifies; returns its size.
        Raises LeaseRevokedError if the copy may be wrong."""
        src = self._block(i)
        size = int(self._leases[i].size)
        addr, n, keep = _address(out, writable=True)
        if n < size:
            raise InvalidArgumentError(f"key {i}: a buffer of {n} bytes for {size}")
        lib.kvtier_copy_from_pool(addr, src, size)
        del keep
        self.verify()
        return size

    def copy_to(self, i: int, address: int, capacity: int) -> int:
        """Copies key i's block to raw memory at `address` (`capacity` bytes, at least its
        size) and returns its size, without verifying: call verify() once after a batch of
        these, before using what was copied (engines copying many pages per call)."""
        size = int(self._leases[i].size)
        if capacity < size:
            raise InvalidArgumentError(f"key {i}: {capacity} bytes at {address:#x} for {size}")
        lib.kvtier_copy_from_pool(address, self._block(i), size)
        return size

    def read_bytes(self, i: int) -> bytes:
        """A copy of key i's block as bytes (verified)."""
        out = bytearray(self.size(i))
        self.copy_into(i, out)
        return bytes(out)

    def release(self) -> None:
        """Ends the leases, now or once the last view of them is gone."""
        self._end()

    def _end_now(self) -> None:
        self._client._release_later(
            [l.lease_id for l, c in zip(self._leases, self.codes) if c == StatusCode.OK],
            self.generation)


class HostMemory(_ViewOwner):
    """Host memory kvtierd accepts as a region (a sealed memfd), mapped here read-write.

    CPU engines keep KV buffers in one so that onload copies a run of blocks straight into
    place. `view()` is the whole of it as a writable memoryview. close() (or leaving `with`)
    unmaps it once no view of it is left and no client has it registered.
    """

    def __init__(self, size: int) -> None:
        super().__init__()
        fd = ctypes.c_int(-1)
        data = ctypes.c_void_p()
        _check(lib.kvtier_host_memory_create(size, ctypes.byref(fd), ctypes.byref(data)))
        self.fd = fd.value
        self.address = int(data.value or 0)
        self.size = size

    def view(self) -> memoryview:
        self._check_open("host memory")
        return _view((self,), self.address, self.size, False)

    def close(self) -> None:
        self._end()

    def _end_now(self) -> None:
        lib.kvtier_host_memory_free(self.fd, self.address, self.size)
        self.address, self.fd = 0, -1

    def __enter__(self) -> "HostMemory":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class Onload:
    """An onload started with `Client.start_onload`: wait for each layer, then finish()."""

    def __init__(self, client: "Client", n: int, keepalive: Any) -> None:
        self._client = client
        self._n = n
        self._keep = keepalive
        self._finished = False

    def wait_layer(self, layer: int) -> None:
        """Returns once layer `layer` has landed in the region."""
        _check(lib.kvtier_wait_layer(self._client._handle(), layer))

    def finish(self) -> list[OnloadResult]:
        """The per-key results; the client is free for other calls again."""
        out = (_lib.OnloadResultStruct * self._n)()
        self._finished = True
        handle = self._client._handle()
        self._client._onload_open = False
        _check(lib.kvtier_finish_onload(handle, out, self._n))
        return [OnloadResult(_code(r.code), int(r.size), _TIERS[min(r.tier, 3)]) for r in out]

    def __enter__(self) -> "Onload":
        return self

    def __exit__(self, *exc: object) -> None:
        if not self._finished:
            self.finish()


class Client(_ViewOwner):
    """A session with kvtierd for one namespace.

    >>> with kvtier.Client("/run/kvtier/kvtierd.sock", "llama-3.1-8b/bf16/tp1/blk16") as c:
    ...     with c.reserve([key], [size]) as r:
    ...         numpy.frombuffer(r.view(0), numpy.uint8)[:] = kv   # in place
    ...         r.commit()

    Calls from several threads are serialized on the one connection (open one Client per
    thread for parallel requests); close() must not race with them. Closing it (or the
    process dying) gives back every reservation and lease it holds; the pool stays mapped
    until the last view of it is gone.
    """

    def __init__(self, socket_path: Optional[str] = None, namespace: str = "",
                 *, timeout_ms: int = 30000, spin_us: int = 50, reconnect: bool = False) -> None:
        """`reconnect`: after the connection to kvtierd is lost (it stopped, restarted or ended
        this session), the next call opens a new session and then runs; if kvtierd is still
        down it raises UnavailableError at once, and the call after tries again. Off: every
        call after the loss raises UnavailableError."""
        if socket_path is None:
            socket_path = os.environ.get("KVTIER_SOCKET", DEFAULT_SOCKET)
        if not namespace or len(namespace.encode()) > 128:
            raise InvalidArgumentError("namespace must be 1..128 bytes")
        options = _lib.ClientOptionsStruct(ctypes.sizeof(_lib.ClientOptionsStruct), timeout_ms,
                                           spin_us, 1 if reconnect else 0)
        super().__init__()
        self._c: Optional[int] = None
        self._onload_open = False
        # Leases and reservations whose end failed or had to wait (an onload open): sent on the
        # next call. Aborts carry the generation they were reserved in.
        self._pending_release: list[int] = []
        self._pending_abort: list[tuple[int, list[bytes]]] = []
        self._regions: dict[int, tuple[HostMemory, int]] = {}  # id -> (memory, generation)
        self._seen_reconnects = 0
        handle = ctypes.c_void_p()
        _check(lib.kvtier_connect_with(socket_path.encode(), namespace.encode(),
                                       ctypes.byref(options), ctypes.byref(handle)))
        self._c = handle.value
        self.socket_path = socket_path
        self.namespace = namespace
        #: The connect options, for opening another client like this one.
        self.timeout_ms = timeout_ms
        self.spin_us = spin_us
        self.reconnect = reconnect
        self._pool_base = int(lib.kvtier_pool_base(self._c) or 0)  # of the first session

    # --- the current session (after a reconnect: the new one's) ---
    @property
    def pool_size(self) -> int:
        """Bytes of the tenant's pool (the shared mapping)."""
        return int(lib.kvtier_pool_size(self._live()))

    @property
    def max_block_bytes(self) -> int:
        """Largest block reserve and offload accept."""
        return int(lib.kvtier_max_block_bytes(self._live()))

    @property
    def spill_max_block_bytes(self) -> int:
        """Largest block the tenant's SSD tier keeps (0: no SSD tier); larger ones are
        DRAM-only."""
        return int(lib.kvtier_spill_max_block_bytes(self._live()))

    @property
    def reconnects(self) -> int:
        """How many new sessions this client opened after losing one (``reconnect=True``):
        the current session's generation. Compare before and after a call to learn that it
        reconnected; what the earlier session held is void."""
        return int(lib.kvtier_reconnects(self._live()))

    def _generation(self) -> int:
        """The session the calling thread's last call ran in."""
        return int(lib.kvtier_call_generation(self._c))

    def _base_of(self, generation: int) -> int:
        """The pool base of session `generation`; raises once a reconnect replaced it."""
        if not self.reconnect:  # one session only: no call into libkvclient per block
            return self._pool_base
        base = lib.kvtier_pool_base_of(self._c, generation) if self._c is not None else None
        if not base:
            raise KvtierError("this was reserved or leased in an earlier session: kvtierd went "
                              "away and the client reconnected since, so it is void",
                              StatusCode.FAILED_PRECONDITION)
        return int(base)

    # --- lifetime ---
    @property
    def closed(self) -> bool:
        return self._ending

    def _live(self) -> int:
        if self._c is None:
            raise KvtierError("the client is closed", StatusCode.FAILED_PRECONDITION)
        return self._c

    def _handle(self) -> int:
        if self._ending or self._c is None:
            raise KvtierError("the client is closed", StatusCode.FAILED_PRECONDITION)
        if self.reconnect:
            self._sync()
        if (self._pending_release or self._pending_abort) and not self._onload_open:
            self._flush_pending()
        return self._c

    def _sync(self) -> None:
        """After a reconnect: regions of an earlier session are gone, their memory free."""
        n = int(lib.kvtier_reconnects(self._c))
        if n == self._seen_reconnects:
            return
        self._seen_reconnects = n
        for region, (memory, gen) in list(self._regions.items()):
            if gen != n:
                del self._regions[region]
                memory._view_gone()

    def _flush_pending(self) -> None:
        ids, self._pending_release = self._pending_release, []
        aborts, self._pending_abort = self._pending_abort, []
        if ids:  # a failure here means the session is gone, and with it what it held
            lib.kvtier_release(self._c, (ctypes.c_uint64 * len(ids))(*ids), len(ids), None)
        for gen, keys in aborts:  # only in the session that reserved them
            lib.kvtier_abort_in_session(self._c, gen, _keys(keys), len(keys), None)

    def _session_over(self, generation: int) -> bool:
        return (self._c is None or self._ending or
                lib.kvtier_verify_session(self._c, generation) != 0)

    def _release_later(self, ids: list[int], generation: int) -> None:
        """Releases lease ids now if it can (also from a view's finalizer), else on the next
        call. Nothing to do once the session has ended: kvtierd gave them back. (With
        reconnect the ids are libkvclient's own, and releasing those of an ended session only
        makes it forget them: no round trip.)"""
        if not ids or self._c is None or self._ending:
            return
        if not self.reconnect and self._session_over(generation):
            return
        if self._onload_open or lib.kvtier_release(self._c, (ctypes.c_uint64 * len(ids))(*ids),
                                                   len(ids), None) != 0:
            self._pending_release += ids

    def _abort_later(self, keys: list[bytes], generation: int) -> None:
        if not keys or self._session_over(generation):
            return
        if self._onload_open or lib.kvtier_abort_in_session(self._c, generation, _keys(keys),
                                                            len(keys), None) != 0:
            self._pending_abort.append((generation, keys))

    def close(self) -> None:
        """Ends the session (kvtierd gives back everything it held); the pool is unmapped once
        no view of it is left."""
        self._end()

    def _end_now(self) -> None:
        if self._c is not None:
            lib.kvtier_close(self._c)
            self._c = None
        for memory, _ in self._regions.values():
            memory._view_gone()
        self._regions.clear()

    def __enter__(self) -> "Client":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --- blocks ---
    def _per_key(self, fn: Any, keys: Sequence[Key]) -> list[StatusCode]:
        return self._per_key_packed(fn, _keys(keys), len(keys))

    def _per_key_packed(self, fn: Any, packed: Any, n: int) -> list[StatusCode]:
        if n == 0:
            return []
        codes = (ctypes.c_uint16 * n)()
        _check(fn(self._handle(), packed, n, codes))
        return [_code(c) for c in codes]

    def reserve(self, keys: Sequence[Key], sizes: Sequence[int],
                ttl_seconds: Union[None, int, Sequence[int]] = None) -> Reservation:
        """Reserves a pool slot per key (one call); write them, then commit().

        `ttl_seconds` (one, or one per key): seconds from commit until the block expires; 0 or
        None: the tenant's default. Per-key codes: OK, ALREADY_EXISTS, RESOURCE_EXHAUSTED."""
        n = len(keys)
        karr = _keys(keys)
        sarr = _u64s(sizes, n, "sizes")
        offsets = (ctypes.c_uint64 * n)()
        codes = (ctypes.c_uint16 * n)()
        _check(lib.kvtier_reserve_ex(self._handle(), karr, sarr, _ttls(ttl_seconds, n), n,
                                     offsets, codes))
        refusal = lib.kvtier_error().decode("utf-8", "replace")
        return Reservation(self, [bytes(k) for k in keys], list(sizes), offsets,
                           [_code(c) for c in codes], refusal, karr, self._generation())

    def commit(self, keys: Sequence[Key]) -> list[StatusCode]:
        """Publishes reserved keys of this session (Reservation.commit does this for you)."""
        return self._per_key(lib.kvtier_commit, keys)

    def abort(self, keys: Sequence[Key]) -> list[StatusCode]:
        return self._per_key(lib.kvtier_abort, keys)

    def match_prefix(self, keys: Sequence[Key], estimate: bool = False) -> PrefixMatch:
        """How many leading keys are stored (a KV prefix is usable only whole), with tiers;
        ``estimate``: and what loading them would cost (PrefixMatch.load_us)."""
        n = len(keys)
        if n == 0:
            return PrefixMatch(0, [], 0 if estimate else None, 0 if estimate else None)
        matched = ctypes.c_size_t(0)
        tiers = (ctypes.c_uint8 * n)()
        if not estimate:
            _check(lib.kvtier_match_prefix(self._handle(), _keys(keys), n, ctypes.byref(matched),
                                           tiers))
            m = matched.value
            return PrefixMatch(m, [_TIERS[min(t, 3)] for t in tiers[:m]])
        e = _lib.EstimateStruct()
        _check(lib.kvtier_match_prefix_estimate(self._handle(), _keys(keys), n,
                                                ctypes.byref(matched), tiers, ctypes.byref(e)))
        m = matched.value
        ts = [_TIERS[min(t, 3)] for t in tiers[:m]]
        if not e.valid:
            return PrefixMatch(m, ts)
        return PrefixMatch(m, ts, int(e.load_us), int(e.ssd_queue_us), int(e.dram_bytes),
                           int(e.ssd_bytes))

    def acquire(self, keys: Sequence[Key]) -> Leases:
        """Read leases on the stored keys (promoting SSD blocks into DRAM); per-key codes OK or
        NOT_FOUND. Use as a context manager; verify() after reading."""
        n = len(keys)
        out = (_lib.LeaseStruct * n)()
        if n:
            _check(lib.kvtier_acquire(self._handle(), _keys(keys), n, out))
            return Leases(self, [bytes(k) for k in keys], out, self._generation())
        return Leases(self, [], out, int(lib.kvtier_reconnects(self._live())))

    def release(self, lease_ids: Sequence[int]) -> list[StatusCode]:
        """Ends leases by id (Leases.release does this for you)."""
        n = len(lease_ids)
        if n == 0:
            return []
        codes = (ctypes.c_uint16 * n)()
        _check(lib.kvtier_release(self._handle(), (ctypes.c_uint64 * n)(*lease_ids), n, codes))
        return [_code(c) for c in codes]

    def remove(self, keys: Sequence[Key]) -> list[StatusCode]:
        """OK per removed key, NOT_FOUND if it was not stored. Lease holders keep reading."""
        return self._per_key(lib.kvtier_remove, keys)

    def prefetch(self, keys: Sequence[Key]) -> list[StatusCode]:
        """Brings SSD blocks into DRAM ahead of an acquire; OK once there, else NOT_FOUND."""
        return self._per_key(lib.kvtier_prefetch, keys)

    def reuse_soon(self, keys: Sequence[Key]) -> list[StatusCode]:
        """Hint: these keys will be read again soon (keep them; worth an SSD write, also for
        keys stored later). OK per stored key, else NOT_FOUND. FAILED_PRECONDITION (raised)
        from a kvtierd without hints (``has_hints``)."""
        return self._per_key(lib.kvtier_reuse_soon, keys)

    def done_with(self, keys: Sequence[Key]) -> list[StatusCode]:
        """Hint: the request that used these keys is done with them (let them go first).
        OK per stored key, else NOT_FOUND."""
        return self._per_key(lib.kvtier_done_with, keys)

    @property
    def has_hints(self) -> bool:
        """The daemon takes reuse_soon and done_with."""
        return bool(lib.kvtier_has_hints(self._handle()))

    def stats(self) -> Stats:
        s = _lib.StatsStruct()
        _check(lib.kvtier_stats_get(self._handle(), ctypes.byref(s)))
        return Stats(*(int(getattr(s, field[0])) for field in _lib.StatsStruct._fields_))

    # --- copies (named: they copy) ---
    def put_copy(self, keys: Sequence[Key], values: Sequence[Buffer],
                 ttl_seconds: Union[None, int, Sequence[int]] = None) -> list[StatusCode]:
        """Stores each value under its key: reserve, copy into the pool, commit (3 calls for
        the whole batch). Per-key codes: OK, ALREADY_EXISTS, RESOURCE_EXHAUSTED."""
        bufs = [_address(v) for v in values]
        if len(bufs) != len(keys):
            raise InvalidArgumentError("values must be as long as keys")
        r = self.reserve(keys, [b[1] for b in bufs], ttl_seconds)
        base = self._base_of(r.generation)
        copy = lib.kvtier_copy_to_pool
        for i, (addr, n, _) in enumerate(bufs):
            if r.codes[i] == StatusCode.OK:
                copy(base + r._offsets[i], addr, n)
        codes = list(r.codes)
        done = iter(r.commit())
        return [next(done) if c == StatusCode.OK else c for c in codes]

    def get_copy(self, keys: Sequence[Key]) -> list[Optional[bytearray]]:
        """A verified copy of each stored block (None where it is missing): acquire, copy,
        verify, release. Raises LeaseRevokedError if a purge ended the session meanwhile."""
        with self.acquire(keys) as leases:
            out: list[Optional[bytearray]] = []
            base = self._base_of(leases.generation) if leases.codes else 0
            copy = lib.kvtier_copy_from_pool
            for lease, code in zip(leases._leases, leases.codes):
                if code != StatusCode.OK:
                    out.append(None)
                    continue
                buf = bytearray(lease.size)
                addr = ctypes.addressof((ctypes.c_ubyte * lease.size).from_buffer(buf))
                copy(addr, base + lease.offset, lease.size)
                out.append(buf)
            leases.verify()
        return out

    def get_copy_into(self, keys: Sequence[Key], outs: Sequence[Buffer]) -> list[StatusCode]:
        """Copies each stored block into outs[i] (at least as large): acquire, copy, one
        verify for the batch, release. Per-key codes OK or NOT_FOUND; raises
        LeaseRevokedError (nothing copied may be used) if a purge ended the session."""
        if len(outs) != len(keys):
            raise InvalidArgumentError("outs must be as long as keys")
        with self.acquire(keys) as leases:
            base = self._base_of(leases.generation) if leases.codes else 0
            copy = lib.kvtier_copy_from_pool
            for i, (lease, code) in enumerate(zip(leases._leases, leases.codes)):
                if code != StatusCode.OK:
                    continue
                addr, n, keep = _address(outs[i], writable=True)
                if n < lease.size:
                    raise InvalidArgumentError(f"key {i}: a buffer of {n} bytes for {lease.size}")
                copy(addr, base + lease.offset, lease.size)
                del keep
            leases.verify()
            return list(leases.codes)

    # --- daemon-driven copies: regions, offload, onload ---
    def register_host_region(self, memory: HostMemory) -> int:
        """Lets kvtierd copy to and from `memory`; returns the region id."""
        memory._check_open("host memory")
        region = ctypes.c_uint32(0)
        _check(lib.kvtier_register_host_region(self._handle(), memory.fd, memory.size,
                                               memory.address, ctypes.byref(region)))
        # libkvclient waits on progress words in it: it stays mapped while registered.
        memory._hold()
        self._regions[int(region.value)] = (memory, self._generation())
        return int(region.value)

    def register_cuda_region(self, device: int, ipc_handle: bytes, size: int,
                             event_handles: Sequence[bytes] = ()) -> int:
        """Registers CUDA memory by its cudaIpcMemHandle_t (64 bytes) and, for ordering,
        cudaIpcEventHandle_t's (64 bytes each). UNAVAILABLE where kvtierd has no CUDA device."""
        if len(ipc_handle) != 64 or any(len(e) != 64 for e in event_handles):
            raise InvalidArgumentError("CUDA IPC handles are 64 bytes each")
        events = b"".join(event_handles)
        region = ctypes.c_uint32(0)
        _check(lib.kvtier_register_cuda_region(self._handle(), device, ipc_handle, size,
                                               events or None, len(event_handles),
                                               ctypes.byref(region)))
        return int(region.value)

    def deregister_region(self, region: int) -> None:
        """Ends a region. One of an earlier session (before a reconnect) is gone already:
        FAILED_PRECONDITION."""
        status = lib.kvtier_deregister_region(self._handle(), region)
        if status == 0 or status == StatusCode.FAILED_PRECONDITION:
            held = self._regions.pop(region, None)
            if held is not None:
                held[0]._view_gone()
        _check(status)

    @staticmethod
    def _transfer(layers: int, progress: Optional[tuple[int, int]], wait_event: Optional[int],
                  signal_event: Optional[int]) -> Any:
        p_region, p_offset = progress if progress is not None else (0, 0)
        return _lib.TransferOptionsStruct(
            layers, p_region, p_offset,
            _lib.NO_EVENT if wait_event is None else wait_event,
            _lib.NO_EVENT if signal_event is None else signal_event)

    def offload(self, keys: Sequence[Key], region: int, offsets: Sequence[int],
                sizes: Sequence[int], *, layers: int = 1,
                ttl_seconds: Union[None, int, Sequence[int]] = None,
                wait_event: Optional[int] = None) -> list[StatusCode]:
        """kvtierd copies sizes[i] bytes at offsets[i] of the region into the pool as keys[i]
        (committed on return). Per-key codes: OK, ALREADY_EXISTS, RESOURCE_EXHAUSTED."""
        n = len(keys)
        codes = (ctypes.c_uint16 * n)()
        opts = self._transfer(layers, None, wait_event, None)
        _check(lib.kvtier_offload_ex(self._handle(), _keys(keys), _u64s(offsets, n, "offsets"),
                                     _u64s(sizes, n, "sizes"), _ttls(ttl_seconds, n), n,
                                     region, ctypes.byref(opts), codes))
        return [_code(c) for c in codes]

    def onload(self, keys: Sequence[Key], region: int, offsets: Sequence[int], *,
               layers: int = 1, signal_event: Optional[int] = None) -> list[OnloadResult]:
        """kvtierd copies each stored block to offsets[i] of the region (from DRAM or SSD).
        Give consecutive offsets to land a run of blocks contiguously, with no staging copy."""
        n = len(keys)
        out = (_lib.OnloadResultStruct * n)()
        opts = self._transfer(layers, None, None, signal_event)
        _check(lib.kvtier_onload(self._handle(), _keys(keys), _u64s(offsets, n, "offsets"), n,
                                 region, ctypes.byref(opts), out))
        return [OnloadResult(_code(r.code), int(r.size), _TIERS[min(r.tier, 3)]) for r in out]

    def start_onload(self, keys: Sequence[Key], region: int, offsets: Sequence[int], *,
                     layers: int, progress: tuple[int, int],
                     signal_event: Optional[int] = None) -> Onload:
        """An onload in steps: `progress` = (host region id, 4-byte aligned offset) of a zeroed
        progress word; then Onload.wait_layer(i) per layer and Onload.finish()."""
        n = len(keys)
        karr = _keys(keys)
        oarr = _u64s(offsets, n, "offsets")
        opts = self._transfer(layers, progress, None, signal_event)
        _check(lib.kvtier_start_onload(self._handle(), karr, oarr, n, region,
                                       ctypes.byref(opts)))
        self._onload_open = True
        return Onload(self, n, (karr, oarr))

    def pin_pool_for_cuda(self) -> None:
        """Page-locks this process's pool mapping for CUDA copies (UNAVAILABLE without)."""
        _check(lib.kvtier_pin_pool_for_cuda(self._handle()))


def chunks(seq: Sequence[Any], n: int = MAX_BATCH) -> Iterator[Sequence[Any]]:
    """Splits a sequence into batches of at most n (one round trip each)."""
    for i in range(0, len(seq), n):
        yield seq[i : i + n]
