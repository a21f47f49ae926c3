"""kvtier as an SGLang HiCache storage backend (SGLang 0.5.23): ``KvtierHiCacheStorage``.

SGLang's hierarchical cache keeps KV pages in a host pool (its L2) and, with a storage
backend, in an L3 that outlives requests and is shared by every engine process on the host.
This module makes kvtierd that L3. SGLang loads it through its own backend factory::

    python -m sglang.launch_server ... --enable-hierarchical-cache \\
      --hicache-storage-backend dynamic --hicache-storage-backend-extra-config \\
      '{"backend_name": "kvtier", "module_path": "kvtier.sglang",
        "class_name": "KvtierHiCacheStorage", "interface_v1": 1,
        "socket": "/run/kvtier/kvtierd.sock", "model_fingerprint": "<hash of the weights>"}'

Extra config keys: ``model_fingerprint`` (required: SGLang's model name is only the served
name, see :func:`kvtier.keys.file_fingerprint`), ``socket`` (default ``$KVTIER_SOCKET``, else
kvtierd's default), ``timeout_ms`` (per call, default 30000), ``reconnect_interval_s``
(default 1.0), ``ttl_seconds`` (default: the tenant's). ``"interface_v1": 1`` makes SGLang call
``batch_get_v1``/``batch_set_v1`` with host pool indices; without it SGLang copies every page
through a temporary tensor (``batch_get``/``batch_set``), which works too, with the same keys.

**Mapping.** SGLang names a page by a hex SHA-256 chain over its tokens. A page of the host
pool is one contiguous byte range per component (``get_page_buffer_meta``): K and V for MHA,
one range for MLA, in the ``page_first`` (SGLang's default), ``page_first_direct`` and
``page_head`` layouts. Each range is one kvtier block: the raw 32-byte page key for MLA,
``BLAKE2b-256(page key || component byte)`` (0 = K, 1 = V) for MHA. ``layer_first`` (2 x L
small ranges per page) and the other layouts are refused when the pool is registered. The
namespace holds the weights fingerprint, "sglang" and its version, the pool's dtype, layout,
page size and bytes per range, and the TP/PP/CP ranks (TP counts as 0 of 1 for MLA, whose KV
every TP rank holds alike), so pages of another configuration are never even found.

``batch_exists`` is one ``match_prefix``; ``batch_get_v1`` one ``acquire``, a copy per range
into SGLang's page and one ``verify``; ``batch_set_v1`` one ``put_copy`` (reserve, copy from
the page, commit). Copies are made here, between SGLang's pages and kvtierd's shared pool, so
any host allocator works.

**Failures.** No call raises into SGLang's threads: a failed page is False (0 for
``batch_exists``, None only where SGLang's v0 ``get``/``batch_get`` want a tensor), and since
SGLang uses only the leading run of True, every page after the first False is False too (pages
stored after a failed one are removed again). ``OK`` and ``ALREADY_EXISTS`` are a stored page.
A block over kvtierd's ``max_block_bytes`` fails the call and is logged. A purge of
the tenant during a read (``LeaseRevokedError``: the copied bytes may be zeroes) makes the whole
batch False. When kvtierd is down, restarted or has ended the session, calls return misses and
the session is opened again, at most once per ``reconnect_interval_s`` per thread; a session
found dead during a call is reopened and the call tried once more.

**Threads.** SGLang calls from its prefetch query, prefetch I/O and backup threads; calls on
one kvtier Client are serialized, so each thread gets its own Client (``threading.local``).

Not supported: hybrid models' sidecar pools (Mamba, SWA, indexer: refused when registered),
and ``clear()``, which removes nothing (see there).
"""

from __future__ import annotations

import ctypes
import hashlib
import logging
import threading
import time
from dataclasses import dataclass
from typing import Any, Callable, List, Optional, Sequence, Tuple, TypeVar

import numpy as np
import torch

import sglang  # type: ignore[import-untyped]
from sglang.srt.mem_cache.hicache_storage import (  # type: ignore[import-untyped]
    HiCacheStorage,
    HiCacheStorageConfig,
    HiCacheStorageExtraInfo,
)
from sglang.srt.observability.metrics_collector import (  # type: ignore[import-untyped]
    StorageMetrics,
)

from .client import Client
from .errors import InvalidArgumentError, KvtierError, LeaseRevokedError, StatusCode
from .keys import namespace

__all__ = ["KvtierHiCacheStorage", "StorageCounters", "page_key", "component_keys",
           "SUPPORTED_LAYOUTS"]

log = logging.getLogger("kvtier.sglang")

ENGINE = "sglang"
#: Host pool layouts whose pages are one contiguous range per component.
SUPPORTED_LAYOUTS = ("page_first", "page_first_direct", "page_head")
_STORED = (StatusCode.OK, StatusCode.ALREADY_EXISTS)

Range = Tuple[int, int]  # (address, bytes) of one component of a page
T = TypeVar("T")


def page_key(key: str) -> bytes:
    """SGLang's page key (hex) as kvtier key bytes; any other string is hashed."""
    try:
        raw = bytes.fromhex(key)
        if 1 <= len(raw) <= 32:
            return raw
    except ValueError:
        pass
    return hashlib.blake2b(b"kvtier.sglang/key\0" + key.encode(), digest_size=32).digest()


def component_keys(key: str, components: int) -> List[bytes]:
    """The kvtier keys of one page: the page key itself for one range (MLA), else
    BLAKE2b-256(page key || component index byte) per range (MHA: K, V)."""
    raw = page_key(key)
    if components == 1:
        return [raw]
    return [hashlib.blake2b(raw + bytes([c]), digest_size=32).digest()
            for c in range(components)]


def _bytes_at(address: int, size: int) -> np.ndarray:
    """A uint8 array over `size` bytes at `address` (no copy)."""
    return np.ctypeslib.as_array((ctypes.c_ubyte * size).from_address(address))


@dataclass
class StorageCounters:
    """Pages and events of one backend since it was made (all threads together)."""

    pages_hit: int = 0        #: pages read into the host pool
    pages_missed: int = 0     #: pages asked for and not read (miss or failure)
    pages_stored: int = 0     #: pages stored (OK or ALREADY_EXISTS)
    pages_not_stored: int = 0
    failed_calls: int = 0     #: calls that failed as a whole (kvtierd unreachable, errors)
    revoked_reads: int = 0    #: reads voided by a purge (LeaseRevokedError)
    connects: int = 0         #: kvtier sessions opened (first ones and reconnects)


class _Conn:
    """One thread's session with kvtierd."""

    def __init__(self) -> None:
        self.client: Optional[Client] = None
        self.next_try = 0.0  # time.monotonic() before which no connect is tried
        self.down = False    # the last connect failed (logged once)
        self.thread = threading.current_thread()


class KvtierHiCacheStorage(HiCacheStorage):
    """SGLang HiCache L3 storage in kvtierd. Built by SGLang as ``cls(storage_config, {})``."""

    def __init__(self, storage_config: HiCacheStorageConfig,
                 kwargs: Optional[dict[str, Any]] = None) -> None:
        extra = dict(storage_config.extra_config or {})
        fingerprint = extra.get("model_fingerprint")
        if not isinstance(fingerprint, str) or not fingerprint:
            raise ValueError(
                'kvtier.sglang: --hicache-storage-backend-extra-config needs "model_fingerprint" '
                "(a hash of the model weights, e.g. kvtier.file_fingerprint of the weights "
                "file): SGLang's model name does not tell weights apart")
        self.storage_config = storage_config
        self.model_fingerprint = fingerprint
        self.socket: Optional[str] = extra.get("socket") or None
        self.timeout_ms = int(extra.get("timeout_ms", 30000))
        self.reconnect_interval_s = float(extra.get("reconnect_interval_s", 1.0))
        self.ttl_seconds: Optional[int] = int(extra.get("ttl_seconds", 0)) or None
        if not extra.get("interface_v1"):
            log.warning('kvtier.sglang: without "interface_v1": 1 SGLang copies each page '
                        "through a temporary tensor; add it to the extra config")
        self.mem_pool_host: Any = None
        #: The kvtier namespace of this pool's pages (set by register_mem_pool_host).
        self.namespace: Optional[str] = None
        self.counters = StorageCounters()
        self._sizes: List[int] = []  # bytes of each component range of a page
        self._local = threading.local()
        self._conns: List[_Conn] = []
        self._lock = threading.Lock()
        self._metrics: dict[str, List[float]] = {
            "prefetch_pgs": [], "backup_pgs": [], "prefetch_bandwidth": [],
            "backup_bandwidth": []}

    # --- set-up -----------------------------------------------------------------------------

    def register_mem_pool_host(self, mem_pool_host: Any) -> None:
        """Checks the host pool's layout and fixes the namespace. Raises ValueError for a
        layout kvtier cannot store page by page (SGLang then fails the attach)."""
        layout = getattr(mem_pool_host, "layout", None)
        if layout == "layer_first":
            raise ValueError(
                "kvtier.sglang: the layer_first host layout splits a page into 2 x layers small "
                "ranges; start SGLang with --hicache-mem-layout page_first (the default) or "
                "page_first_direct")
        if layout not in SUPPORTED_LAYOUTS:
            raise ValueError(f"kvtier.sglang: host layout {layout!r} is not supported; "
                             f"use one of {', '.join(SUPPORTED_LAYOUTS)}")
        cfg = self.storage_config
        mla = bool(cfg.is_mla_model)
        page = int(getattr(mem_pool_host, "logical_page_size", mem_pool_host.page_size))
        _, sizes = mem_pool_host.get_page_buffer_meta(torch.arange(page, dtype=torch.int64))
        if len(sizes) != (1 if mla else 2):
            raise ValueError(f"kvtier.sglang: {type(mem_pool_host).__name__} gives "
                             f"{len(sizes)} ranges per page; expected {1 if mla else 2} "
                             f"({'MLA' if mla else 'MHA'})")
        super().register_mem_pool_host(mem_pool_host)
        self._sizes = [int(s) for s in sizes]
        tp_rank, tp_size = (0, 1) if mla else (cfg.tp_rank, cfg.tp_size)
        parts = [f"pp{cfg.pp_rank}of{cfg.pp_size}", f"cp{cfg.attn_cp_rank}of{cfg.attn_cp_size}",
                 f"dcp{cfg.dcp_rank}of{cfg.dcp_size}", f"pool={type(mem_pool_host).__name__}",
                 "bytes=" + ",".join(map(str, self._sizes))]
        tag = getattr(mem_pool_host, "storage_format_tag", None)
        if tag:
            parts.append(f"format={tag}")
        self._close_all()  # sessions of an earlier pool's namespace
        self.namespace = namespace(
            model_fingerprint=self.model_fingerprint, engine=ENGINE,
            engine_version=sglang.__version__,
            kv_dtype=str(mem_pool_host.dtype).replace("torch.", ""),
            kv_layout=f"{layout}/{'mla' if mla else 'mha'}", block_tokens=page,
            tp_rank=tp_rank, tp_size=tp_size, extra=parts)
        log.info("kvtier.sglang: namespace %s, %d range(s) of %s bytes per page", self.namespace,
                 len(self._sizes), "/".join(map(str, self._sizes)))

    def register_mem_host_pool_v2(self, host_pool: Any, host_pool_name: Any) -> None:
        """SGLang registers every pool of its host pool group here, the KV pool included (a
        group of one for plain models); other pools (hybrid models' Mamba/SWA/indexer state)
        are refused."""
        if host_pool is not self.mem_pool_host:
            raise NotImplementedError(
                f"kvtier.sglang stores the KV pool only; pool {host_pool_name!s} "
                "(a hybrid model's sidecar) is not supported")
        super().register_mem_host_pool_v2(host_pool, host_pool_name)

    def close(self) -> None:
        """Ends every thread's session (SGLang calls this on detach)."""
        self._close_all()

    # --- sessions ---------------------------------------------------------------------------

    def _conn(self) -> _Conn:
        conn: Optional[_Conn] = getattr(self._local, "conn", None)
        if conn is None:
            conn = self._local.conn = _Conn()
            # SGLang restarts its storage threads on every flush_cache(): the sessions of
            # threads that have ended are closed here, or each flush would leave them open.
            with self._lock:
                gone = [c for c in self._conns if not c.thread.is_alive()]
                self._conns = [c for c in self._conns if c.thread.is_alive()] + [conn]
            for c in gone:
                self._drop(c)
        return conn

    def _connect(self, conn: _Conn) -> Optional[Client]:
        """A new session, unless one was tried less than reconnect_interval_s ago."""
        now = time.monotonic()
        if self.namespace is None or now < conn.next_try:
            return None
        conn.next_try = now + self.reconnect_interval_s
        try:
            conn.client = Client(self.socket, self.namespace, timeout_ms=self.timeout_ms)
        except KvtierError as e:
            if not conn.down:
                log.warning("kvtier.sglang: kvtierd unreachable (%s); pages are misses, "
                            "retrying every %.1f s", e, self.reconnect_interval_s)
            conn.down = True
            return None
        if max(self._sizes) > conn.client.max_block_bytes:
            log.error("kvtier.sglang: pages have ranges of %d bytes, kvtierd takes blocks of at "
                      "most %d (max_block_bytes): nothing will be stored", max(self._sizes),
                      conn.client.max_block_bytes)
        if conn.down:
            log.info("kvtier.sglang: connected to kvtierd again")
        conn.down = False
        with self._lock:
            self.counters.connects += 1
        return conn.client

    @staticmethod
    def _drop(conn: _Conn) -> None:
        client, conn.client = conn.client, None
        if client is not None:
            try:
                client.close()
            except Exception:  # a dead session closes quietly
                pass

    def _close_all(self) -> None:
        with self._lock:
            conns = list(self._conns)
        for conn in conns:
            self._drop(conn)

    def _call(self, what: str, fn: Callable[[Client], T], failed: T) -> T:
        """fn(this thread's client), never raising: `failed` if there is no session or the
        call fails. A session found dead is reopened and fn tried once more, except after a
        LeaseRevokedError (what was read may be zeroes: the batch is a miss)."""
        conn = self._conn()
        for attempt in range(2):
            had_session = conn.client is not None
            client = conn.client or self._connect(conn)
            if client is None:
                break
            try:
                return fn(client)
            except LeaseRevokedError:
                with self._lock:
                    self.counters.revoked_reads += 1
                log.warning("kvtier.sglang: %s voided by a purge; reconnecting", what)
                self._drop(conn)
                break
            except InvalidArgumentError as e:  # refused for what was asked: the session is fine
                log.warning("kvtier.sglang: %s refused (%s)", what, e)
                break
            except KvtierError as e:
                log.warning("kvtier.sglang: %s failed (%s)", what, e)
                self._drop(conn)
                if not had_session:
                    break
            except Exception:
                log.exception("kvtier.sglang: %s failed", what)
                break
        with self._lock:
            self.counters.failed_calls += 1
        return failed

    # --- the copies -------------------------------------------------------------------------

    def _page_ranges(self, host_indices: torch.Tensor, n: int) -> List[List[Range]]:
        """Each page's component ranges in the host pool (raises if they do not fit)."""
        pool = self.mem_pool_host
        page = int(getattr(pool, "logical_page_size", pool.page_size))
        if int(host_indices.numel()) != n * page:
            raise ValueError(f"{host_indices.numel()} host indices for {n} pages of {page}")
        ptrs, sizes = pool.get_page_buffer_meta(host_indices)
        c = len(self._sizes)
        if len(ptrs) != n * c or [int(s) for s in sizes] != self._sizes * n:
            raise ValueError("get_page_buffer_meta does not match the registered pool")
        return [[(int(ptrs[i * c + j]), self._sizes[j]) for j in range(c)] for i in range(n)]

    def _tensor_ranges(self, t: Any) -> Optional[List[Range]]:
        """A flat page tensor (SGLang's v0 interface: K half, then V half) as ranges."""
        if (not isinstance(t, torch.Tensor) or t.device.type != "cpu" or not t.is_contiguous()
                or t.numel() * t.element_size() != sum(self._sizes)):
            return None
        out, address = [], int(t.data_ptr())
        for size in self._sizes:
            out.append((address, size))
            address += size
        return out

    def _read(self, keys: Sequence[str], pages: Sequence[Sequence[Range]]) -> List[bool]:
        """Copies the leading stored pages into `pages`; True for each of those."""
        n, c = len(keys), len(self._sizes)
        if n == 0:
            return []
        ks = [k for key in keys for k in component_keys(key, c)]
        start = time.perf_counter()

        def read(client: Client) -> int:
            with client.acquire(ks) as leases:
                lead = 0
                while lead < n and all(
                        leases.codes[lead * c + j] == StatusCode.OK
                        and leases.size(lead * c + j) == pages[lead][j][1] for j in range(c)):
                    lead += 1
                for i in range(lead):
                    for j, (address, size) in enumerate(pages[i]):
                        leases.copy_to(i * c + j, address, size)
                leases.verify()  # once, after every copy: a purge meanwhile voids the batch
            return lead

        lead = self._call("get", read, 0)
        self._count(lead, n, start, "prefetch")
        return [True] * lead + [False] * (n - lead)

    def _write(self, keys: Sequence[str], pages: Sequence[Sequence[Range]]) -> List[bool]:
        """Stores the pages; True for the leading ones stored (or already there)."""
        n, c = len(keys), len(self._sizes)
        if n == 0:
            return []
        ks = [k for key in keys for k in component_keys(key, c)]
        values = [_bytes_at(address, size) for page in pages for address, size in page]
        start = time.perf_counter()

        def write(client: Client) -> int:
            codes = client.put_copy(ks, values, self.ttl_seconds)
            lead = 0
            while lead < n and all(codes[lead * c + j] in _STORED for j in range(c)):
                lead += 1
            if lead < n:
                log.warning("kvtier.sglang: stored %d of %d pages (%s)", lead, n,
                            codes[lead * c:(lead + 1) * c])
                # Published after a failed page, no prefix lookup reaches them: give them back.
                orphans = [ks[i] for i in range(lead * c, n * c) if codes[i] == StatusCode.OK]
                try:
                    client.remove(orphans)
                except KvtierError:
                    pass  # eviction takes them later
            return lead

        lead = self._call("set", write, 0)
        self._count(lead, n, start, "backup")
        return [True] * lead + [False] * (n - lead)

    def _count(self, ok: int, n: int, start: float, op: str) -> None:
        seconds = time.perf_counter() - start
        with self._lock:
            if op == "prefetch":
                self.counters.pages_hit += ok
                self.counters.pages_missed += n - ok
            else:
                self.counters.pages_stored += ok
                self.counters.pages_not_stored += n - ok
            if self.storage_config.enable_storage_metrics and ok:
                self._metrics[f"{op}_pgs"].append(ok)
                self._metrics[f"{op}_bandwidth"].append(
                    ok * sum(self._sizes) / max(seconds, 1e-9) / 1e9)

    def _guard(self, what: str, fn: Callable[[], T], failed: T) -> T:
        try:
            return fn()
        except Exception:
            log.exception("kvtier.sglang: %s failed", what)
            return failed

    # --- SGLang's interface: zero-copy (v1) -------------------------------------------------

    def batch_exists(self, keys: List[str],
                     extra_info: Optional[HiCacheStorageExtraInfo] = None) -> int:
        """How many leading pages are stored whole (one match_prefix)."""
        if not keys or self.namespace is None:
            return 0
        c = len(self._sizes)

        def run() -> int:
            ks = [k for key in keys for k in component_keys(key, c)]
            return self._call("exists", lambda client: client.match_prefix(ks).count // c, 0)
        return self._guard("batch_exists", run, 0)

    def batch_get_v1(self, keys: List[str], host_indices: torch.Tensor,
                     extra_info: Optional[HiCacheStorageExtraInfo] = None) -> List[bool]:
        """Reads the pages into the host pool at host_indices (page_size indices per key)."""
        if self.namespace is None:
            return [False] * len(keys)
        return self._guard("batch_get_v1", lambda: self._read(
            keys, self._page_ranges(host_indices, len(keys))), [False] * len(keys))

    def batch_set_v1(self, keys: List[str], host_indices: torch.Tensor,
                     extra_info: Optional[HiCacheStorageExtraInfo] = None) -> List[bool]:
        """Stores the host pool's pages at host_indices under keys."""
        if self.namespace is None:
            return [False] * len(keys)
        return self._guard("batch_set_v1", lambda: self._write(
            keys, self._page_ranges(host_indices, len(keys))), [False] * len(keys))

    # --- SGLang's interface: flat page tensors (v0, and the abstract methods) ---------------

    def batch_get(self, keys: List[str], target_locations: Optional[Any] = None,
                  target_sizes: Optional[Any] = None) -> List[Optional[torch.Tensor]]:
        """Reads each page into a flat page tensor (SGLang's dummy pages if none are given);
        None from the first page not read on."""
        def run() -> List[Optional[torch.Tensor]]:
            if self.namespace is None:
                return [None] * len(keys)
            targets = (list(target_locations) if target_locations is not None
                       else [self.mem_pool_host.get_dummy_flat_data_page() for _ in keys])
            if len(targets) != len(keys):
                return [None] * len(keys)
            ranges = [self._tensor_ranges(t) for t in targets]
            usable = next((i for i, r in enumerate(ranges) if r is None), len(keys))
            done = self._read(keys[:usable], [r for r in ranges[:usable] if r is not None])
            return [t if i < len(done) and done[i] else None for i, t in enumerate(targets)]
        return self._guard("batch_get", run, [None] * len(keys))

    def get(self, key: str, target_location: Optional[Any] = None,
            target_sizes: Optional[Any] = None) -> Optional[torch.Tensor]:
        return self.batch_get([key], None if target_location is None else [target_location])[0]

    def batch_set(self, keys: List[str], values: Optional[Any] = None,
                  target_locations: Optional[Any] = None,
                  target_sizes: Optional[Any] = None) -> bool:
        """Stores flat page tensors; True if every page was stored."""
        def run() -> bool:
            if self.namespace is None or values is None or len(values) != len(keys):
                return False
            ranges = [self._tensor_ranges(v) for v in values]
            if any(r is None for r in ranges):
                return False
            return all(self._write(keys, [r for r in ranges if r is not None]))
        return self._guard("batch_set", run, False)

    def set(self, key: str, value: Optional[Any] = None, target_location: Optional[Any] = None,
            target_sizes: Optional[Any] = None) -> bool:
        return self.batch_set([key], [value])

    def exists(self, key: str) -> bool:
        return self.batch_exists([key]) == 1

    # --- the rest ---------------------------------------------------------------------------

    def clear(self) -> bool:
        """Removes nothing; returns False. kvtierd cannot list a namespace's blocks to a client,
        and the pages are shared with every other engine process of this model on the host.
        To drop them: ``kvtierctl evict --tenant T`` or ``kvtierctl purge T`` (the whole
        tenant), or let eviction and ``ttl_seconds`` age them out."""
        log.warning("kvtier.sglang: clear() removes nothing from kvtierd (shared pages); use "
                    "kvtierctl evict/purge for the tenant")
        return False

    def get_stats(self) -> Any:
        """SGLang's StorageMetrics since the last call (filled with enable_storage_metrics);
        the running totals are in `counters`."""
        metrics = StorageMetrics()
        with self._lock:
            for name, values in self._metrics.items():
                getattr(metrics, name).extend(values)
                values.clear()
        return metrics

    @property
    def open_sessions(self) -> int:
        """kvtier sessions held now (one per SGLang thread that has called)."""
        with self._lock:
            return sum(conn.client is not None for conn in self._conns)
