"""Paged KV caches through kvtier: the engine-independent half of the engine connectors.

An engine with a paged KV cache keeps it in one allocation where layer l's page of block b
starts at `layer_offsets[l] + b * block_stride` and is `page_bytes` long (vLLM's
`KVCacheTensor`; SGLang's and others' device pools can be described the same way). One page is
one kvtier block, keyed by the engine's block hash and the layer (`key_fn`).

`PagedKV` moves pages between such an allocation and kvtierd:
  - **CUDA** (the allocation is a CUDA tensor): kvtierd copies. The allocation is registered as
    a CUDA region (its `cudaIpcMemHandle_t`) with L + 1 interprocess events. A load in the step
    is one `onload` per 4096 pages with `signal_event`: kvtierd records event l on its stream
    once layer l has landed, and `wait_for_layer(l)` makes the engine's current stream wait
    for it (the GPU waits; no engine thread blocks, no engine stream copies). A store records
    event L on the engine's stream after the forward and then, on a background thread, has
    kvtierd's stream wait for it before copying (`offload(..., wait_event=L)`).
  - **CPU** (a CPU tensor: tests, CPU inference): the client copies through kvtier's shared
    pool (acquire, copy, verify; reserve, copy, commit).

Failures are never wrong bytes: `load` returns the blocks to recompute, each transfer's first
block with a page that did not land and every later one; a store that fails is a future miss;
a lost connection is re-opened at most once per `retry_seconds`.
"""

from __future__ import annotations

import ctypes
import logging
import queue
import threading
import time
from dataclasses import dataclass
from typing import Callable, Optional

import torch

from .client import MAX_BATCH, Client
from .errors import KvtierError, StatusCode

log = logging.getLogger("kvtier.paged")

KeyFn = Callable[[bytes, int], bytes]


@dataclass
class Transfer:
    """Blocks of one request to move: the engine's hash and the cache's block id of each."""
    req_id: str
    hashes: list[bytes]
    block_ids: list[int]


@dataclass
class PageLayout:
    """Where pages are in the allocation (byte offsets from its start)."""
    layer_offsets: list[int]
    block_stride: int
    page_bytes: int

    @property
    def layers(self) -> int:
        return len(self.layer_offsets)


class Reconnecting:
    """Clients for fixed namespaces that come back after kvtierd restarts (at most one try per
    `retry_seconds`); the caller drops them on any KvtierError. `timeout_ms` bounds each call,
    so a kvtierd that hangs stalls an engine thread at most that long."""

    def __init__(self, socket: str, namespaces: list[str], retry_seconds: float,
                 timeout_ms: int = 2000) -> None:
        self.socket, self.namespaces, self.retry = socket, namespaces, retry_seconds
        self.timeout_ms = timeout_ms
        self.clients: Optional[list[Client]] = None
        self.next_try = 0.0
        self.region = 0  # a CUDA region of this connection's session (0: none yet)

    def get(self) -> Optional[list[Client]]:
        if self.clients is None and time.monotonic() >= self.next_try:
            self.next_try = time.monotonic() + self.retry
            try:
                self.clients = [Client(self.socket, ns, timeout_ms=self.timeout_ms)
                                for ns in self.namespaces]
            except KvtierError as e:
                log.warning("kvtier: cannot reach kvtierd at %s: %s", self.socket, e)
        return self.clients

    def drop(self, error: Exception) -> None:
        log.warning("kvtier: %s; reconnecting", error)
        self.close()
        self.next_try = time.monotonic() + self.retry  # a hung kvtierd: not again at once

    def close(self) -> None:
        for c in self.clients or []:
            c.close()
        self.clients = None
        self.region = 0


_CUDA: Optional[ctypes.CDLL] = None


def cuda_ipc_handle(ptr: int) -> tuple[bytes, int, int]:
    """(cudaIpcMemHandle_t of the allocation holding device address `ptr`, `ptr`'s offset in
    it, the allocation's size), through the CUDA driver API on the current context.

    Not torch's `_share_cuda_()`: its handle field is torch's own format (a version byte,
    then 'c' and the 64-byte handle, or 'e' and an expandable-segment export), and it swaps the storage for a reference-counted IPC one that kvtierd would never release.
    Fails, naming the call, for memory that has no legacy IPC handle (cuMem/VMM allocations:
    PyTorch's expandable segments, vLLM's sleep-mode allocator)."""
    global _CUDA
    if _CUDA is None:
        _CUDA = ctypes.CDLL("libcuda.so.1")
    base, size = ctypes.c_uint64(0), ctypes.c_size_t(0)
    rc = _CUDA.cuMemGetAddressRange_v2(ctypes.byref(base), ctypes.byref(size),
                                       ctypes.c_uint64(ptr))
    if rc != 0:
        raise RuntimeError(f"kvtier: cuMemGetAddressRange failed (CUresult {rc}) for {ptr:#x}")
    handle = (ctypes.c_ubyte * 64)()
    rc = _CUDA.cuIpcGetMemHandle(handle, ctypes.c_uint64(base.value))
    if rc != 0:
        raise RuntimeError(f"kvtier: cuIpcGetMemHandle failed (CUresult {rc}): the KV cache "
                           "must be plain cudaMalloc memory (no expandable segments, no "
                           "cuMem/VMM allocator)")
    return bytes(handle), ptr - base.value, int(size.value)


class PagedKV:
    """Loads and stores pages of one KV allocation (see the module docstring).

    Loads in the step run on the caller's thread with its connection; async loads and stores
    run, in order, on one background thread with a connection of its own. Thread-safe for one
    engine thread plus that background thread."""

    def __init__(self, kv: torch.Tensor, layout: PageLayout, *, socket: str, namespace: str,
                 key_fn: KeyFn, ttl_seconds: Optional[int] = None, layerwise: bool = True,
                 retry_seconds: float = 1.0, timeout_ms: int = 2000) -> None:
        """`kv`: any tensor on the allocation's storage (e.g. one layer's view)."""
        self.layout = layout
        self.L = layout.layers
        self.page = layout.page_bytes
        self.key_fn = key_fn
        self.ttl = ttl_seconds
        self.layerwise = layerwise
        self.conn = Reconnecting(socket, [namespace], retry_seconds, timeout_ms)
        storage = kv.untyped_storage()
        self.on_gpu = bool(kv.is_cuda)
        self.lock = threading.Lock()
        self.load_errors: set[int] = set()          # guarded by lock
        self.pending_stores: dict[str, int] = {}    # guarded by lock: request -> stores left
        self.finished_asked: set[str] = set()       # guarded by lock: finished, still storing
        self.recved: set[str] = set()               # guarded by lock: async loads ended
        self.held: list[tuple[Transfer, set[int]]] = []  # engine thread: stores on hold
        self.waited = self.L - 1                    # last layer the stream waits for (step)
        self.base = int(storage.data_ptr())         # CPU: page address = base + offset
        self.offset = 0                             # CUDA: the storage's offset in its allocation
        need = max(layout.layer_offsets) + layout.page_bytes
        if storage.nbytes() < need:
            raise ValueError(f"the KV storage has {storage.nbytes()} bytes; block 0 of the "
                             f"last layer ends at {need}")
        if self.on_gpu:
            self.device = int(kv.device.index or 0)
            with torch.cuda.device(kv.device):
                self.ipc_handle, self.offset, self.region_bytes = cuda_ipc_handle(
                    int(storage.data_ptr()))
                # Events 0..L-1: layer l has landed (kvtierd records them). Event L: the
                # forward that wrote the pages to store is done (this process records it).
                self.events = [torch.cuda.Event(interprocess=True) for _ in range(self.L + 1)]
                self.event_handles = [bytes(e.ipc_handle()) for e in self.events]
        self.jobs: "queue.Queue[Optional[Callable[[Reconnecting], None]]]" = queue.Queue()
        self.thread = threading.Thread(target=self._run, name="kvtier-paged", daemon=True)
        self.thread.start()

    # --- where pages are ---
    def pages(self, transfers: list[Transfer], layer_major: bool
              ) -> tuple[list[bytes], list[int], list[tuple[int, int]]]:
        """Keys, region offsets and (block id, layer) of every page of the transfers."""
        lay = self.layout
        blocks = [(h, b) for t in transfers for h, b in zip(t.hashes, t.block_ids)]
        order = ([(l, hb) for l in range(self.L) for hb in blocks] if layer_major
                 else [(l, hb) for hb in blocks for l in range(self.L)])
        keys = [self.key_fn(h, l) for l, (h, _) in order]
        offsets = [self.offset + lay.layer_offsets[l] + b * lay.block_stride
                   for l, (_, b) in order]
        return keys, offsets, [(b, l) for l, (_, b) in order]

    def region(self, conn: Reconnecting, client: Client) -> int:
        """The KV allocation as a CUDA region of this connection's session."""
        if not conn.region:
            conn.region = client.register_cuda_region(self.device, self.ipc_handle,
                                                      self.region_bytes, self.event_handles)
        return conn.region

    # --- loads ---
    def load(self, loads: list[Transfer]) -> set[int]:
        """Loads before the step's forward; returns the block ids to recompute (also kept for
        `take_load_errors`). On the GPU the forward's stream must then wait per layer
        (`wait_for_layer`); with layerwise=False it already waits for all of them."""
        self.waited = -1
        failed = self._load(self.conn, loads, in_step=True)
        if self.on_gpu and not self.layerwise:
            self.wait_for_layer(self.L - 1)
        with self.lock:
            self.load_errors |= failed
        return failed

    def _load(self, conn: Reconnecting, loads: list[Transfer], in_step: bool) -> set[int]:
        landed: set[tuple[int, int]] = set()
        clients = conn.get()
        if clients is not None:
            try:
                landed = self._copy_in(conn, clients[0], loads, in_step)
            except KvtierError as e:
                conn.drop(e)
                landed = set()
        failed: set[int] = set()
        for t in loads:
            bad = False
            for b in t.block_ids:
                bad = bad or any((b, l) not in landed for l in range(self.L))
                if bad:
                    failed.add(b)
        return failed

    def _copy_in(self, conn: Reconnecting, client: Client, loads: list[Transfer],
                 in_step: bool) -> set[tuple[int, int]]:
        landed: set[tuple[int, int]] = set()
        blocks = [Transfer(t.req_id, [h], [b]) for t in loads
                  for h, b in zip(t.hashes, t.block_ids)]
        per_call = max(1, MAX_BATCH // self.L)  # a layered onload is one request
        for i in range(0, len(blocks), per_call):
            keys, offsets, where = self.pages(blocks[i : i + per_call], layer_major=True)
            if self.on_gpu:
                results = client.onload(keys, self.region(conn, client), offsets, layers=self.L,
                                        signal_event=0 if in_step else None)
                ok = [r.code == StatusCode.OK and r.size == self.page for r in results]
            else:
                with client.acquire(keys) as leases:
                    ok = [c == StatusCode.OK and leases.size(j) == self.page
                          for j, c in enumerate(leases.codes)]
                    for j, o in enumerate(offsets):
                        if ok[j]:
                            leases.copy_to(j, self.base + o, self.page)
                    leases.verify()  # one check for the batch: raises if a purge intervened
            landed.update(w for w, good in zip(where, ok) if good)
        return landed

    def wait_for_layer(self, layer: int) -> None:
        """The current stream waits (on the GPU, not this thread) for layer `layer` to land."""
        if not self.on_gpu or layer <= self.waited:
            return
        torch.cuda.current_stream().wait_event(self.events[layer])
        self.waited = layer

    def submit_async_loads(self, loads: list[Transfer]) -> None:
        """Loads in the background; `finished` reports the requests once they have ended and
        `take_load_errors` the blocks that did not load."""
        def job(conn: Reconnecting) -> None:
            failed: set[int] = {b for t in loads for b in t.block_ids}
            try:
                failed = self._load(conn, loads, in_step=False)
            finally:
                with self.lock:
                    self.load_errors |= failed
                    self.recved.update(t.req_id for t in loads)
        self.jobs.put(job)

    # --- stores ---
    def submit_stores(self, stores: list[Transfer]) -> None:
        """Stores after the forward now queued on the current stream; the pages must not change
        until `finished` reports their request."""
        with self.lock:
            for t in stores:
                self.pending_stores[t.req_id] = self.pending_stores.get(t.req_id, 0) + 1
        if self.on_gpu:  # kvtierd's stream waits for this step's forward before copying
            self.events[self.L].record(torch.cuda.current_stream())

        def job(conn: Reconnecting) -> None:
            try:
                clients = conn.get()
                if clients is not None:
                    self._copy_out(conn, clients[0], stores)
            except KvtierError as e:
                conn.drop(e)
            finally:
                with self.lock:
                    for t in stores:
                        self.pending_stores[t.req_id] -= 1
        self.jobs.put(job)

    def hold(self, store: Transfer, conditions: list[int]) -> None:
        """A store kept until `resolve` has confirmed every condition (e.g. the in-step loads
        its KV was computed over), dropped if one fails; `finished` waits for it either way."""
        with self.lock:
            self.pending_stores[store.req_id] = self.pending_stores.get(store.req_id, 0) + 1
        self.held.append((store, set(conditions)))

    def resolve(self, confirmed: list[int], failed: list[int]) -> None:
        """Submits the held stores whose conditions are all confirmed; drops those with a
        failed one."""
        if not self.held or not (confirmed or failed):
            return
        ok, bad = set(confirmed), set(failed)
        release, keep, dropped = [], [], []
        for store, conditions in self.held:
            if conditions & bad:
                dropped.append(store)
            elif conditions - ok:
                keep.append((store, conditions - ok))
            else:
                release.append(store)
        self.held = keep
        with self.lock:
            for store in release + dropped:
                self.pending_stores[store.req_id] -= 1
        if release:
            self.submit_stores(release)

    def forget(self, req_ids: set[str]) -> None:
        """Drops what is kept for these requests (their blocks are being freed without a
        finished report: a preemption). Call after `drain`."""
        self.held = [(s, c) for s, c in self.held if s.req_id not in req_ids]
        with self.lock:
            for r in req_ids:
                self.pending_stores.pop(r, None)
                self.finished_asked.discard(r)

    def _copy_out(self, conn: Reconnecting, client: Client, stores: list[Transfer]) -> None:
        keys, offsets, _ = self.pages(stores, layer_major=False)
        for i in range(0, len(keys), MAX_BATCH):
            k, o = keys[i : i + MAX_BATCH], offsets[i : i + MAX_BATCH]
            if self.on_gpu:
                client.offload(k, self.region(conn, client), o, [self.page] * len(k),
                               ttl_seconds=self.ttl, wait_event=self.L)
            else:
                client.put_copy(k, [(ctypes.c_ubyte * self.page).from_address(self.base + x)
                                    for x in o], ttl_seconds=self.ttl)

    # --- the background thread ---
    def _run(self) -> None:
        # Off the engine's thread: stores may wait for demotions, loads for SSD reads.
        conn = Reconnecting(self.conn.socket, self.conn.namespaces, self.conn.retry,
                            max(self.conn.timeout_ms, 30000))
        while True:
            job = self.jobs.get()
            try:
                if job is None:
                    conn.close()
                    return
                job(conn)
            except Exception:  # noqa: BLE001 - a failed transfer is a miss; the thread lives on
                log.exception("kvtier: a background transfer failed")
            finally:
                self.jobs.task_done()

    def drain(self) -> None:
        """Returns once every store and async load submitted so far has ended."""
        self.jobs.join()

    def finished(self, finished_req_ids: set[str]
                 ) -> tuple[Optional[set[str]], Optional[set[str]]]:
        """(requests finished in the engine whose stores have all ended, requests whose async
        loads ended since the last call)."""
        with self.lock:
            self.finished_asked |= finished_req_ids & set(self.pending_stores)
            sent = {r for r in self.finished_asked if self.pending_stores[r] == 0}
            for r in sent:
                self.finished_asked.discard(r)
                del self.pending_stores[r]
            recved, self.recved = self.recved, set()
        return sent or None, recved or None

    def take_load_errors(self) -> set[int]:
        with self.lock:
            errors, self.load_errors = self.load_errors, set()
        return errors

    def close(self) -> None:
        self.jobs.put(None)
        self.thread.join(timeout=60)
        self.conn.close()

