"""vLLM through kvtier: a `KVConnectorBase_V1` connector that vLLM loads by configuration.

    vllm serve MODEL --kv-transfer-config '{"kv_connector": "KvtierConnector",
        "kv_connector_module_path": "kvtier.vllm", "kv_role": "kv_both",
        "kv_load_failure_policy": "recompute",
        "kv_connector_extra_config": {"socket": "/run/kvtier/kvtierd.sock"}}'

Written against vLLM 0.33.0 (its connector API changes between minor releases). docs/engines.md
("vLLM") says why this plug-in point and not vLLM's offloading framework; this is the mapping.

**Pages and keys.** vLLM places layer l's page of block b at `offset + l * layer_stride +
b * block_stride` of one allocation (`KVCacheTensor`). In the block-compact layouts (LBNHC,
vLLM's default, and LBHNC, BLNHC, BLHNC) every page is one contiguous run, and it is one kvtier
block, keyed `BLAKE2b-256(vLLM block hash || layer)`. vLLM's block hash is a sha256 chain over
the tokens (and LoRA, multimodal inputs, cache salt) but covers neither the weights nor the
layout, so the namespace (`kvtier.namespace`) holds the weights' fingerprint, vLLM's version,
the KV dtype, layout, page shape and block size, and the TP rank.

**Scheduler side** (one process): `get_num_new_matched_tokens` is one `match_prefix` per TP
rank over the request's pages beyond vLLM's local hit, block-major, leaving at least one token
to compute; whole blocks only; no side effects. Hits in the SSD tier load asynchronously (the
request waits off the batch), DRAM hits in the step. `build_connector_meta` hands the workers
the load plan (block hashes, GPU block ids) and the store plan: each block that this step's
forward completes, once per request. `request_finished` keeps a request's blocks until the
workers' stores from them are done.

**Worker side** (one per GPU): `register_kv_caches` registers the KV allocation with kvtierd
as a CUDA region (its IPC handle) with one interprocess event per layer and one for stores.
Loads in the step are one `onload` per 4096 pages with `signal_event`: kvtierd records event l
on its own stream once layer l has landed, and `wait_for_layer_load` makes the forward's stream
wait for it, so no engine thread blocks and no engine stream copies. Stores run on a background
thread: `wait_for_save` records the store event after the forward, and the thread's `offload`
makes kvtierd's stream wait for it before copying. CPU tensors (tests, vLLM's CPU backend) are
copied by the client through kvtier's shared pool instead.

**Failures never give wrong KV.** A page that does not load (evicted since the match, a purge,
kvtierd gone) makes its block and every later block of the request a load error
(`get_block_ids_with_load_errors`); vLLM, with `kv_load_failure_policy: "recompute"` (required
here), recomputes from the first of them. A store that fails is a future miss. When kvtierd is
unreachable, every lookup is a miss and calls retry the connection at most once a second.
"""

from __future__ import annotations

import ctypes
import hashlib
import logging
import os
import queue
import threading
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable, Optional

import torch
import vllm
from vllm.distributed.kv_transfer.kv_connector.v1.base import (
    KVConnectorBase_V1,
    KVConnectorMetadata,
    KVConnectorRole,
)
from vllm.v1.core.sched.output import SchedulerOutput

from .client import DEFAULT_SOCKET, MAX_BATCH, Client
from .errors import KvtierError, StatusCode, Tier
from .keys import file_fingerprint, namespace

if TYPE_CHECKING:
    from vllm.config import VllmConfig
    from vllm.forward_context import ForwardContext
    from vllm.v1.attention.backend import AttentionMetadata
    from vllm.v1.core.kv_cache_manager import KVCacheBlocks
    from vllm.v1.kv_cache_interface import KVCacheConfig
    from vllm.v1.request import Request

log = logging.getLogger("kvtier.vllm")

#: Layouts in which each (layer, block) page is one contiguous run.
BLOCK_COMPACT_LAYOUTS = ("LBNHC", "LBHNC", "BLNHC", "BLHNC")
_WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".gguf")


def page_key(block_hash: bytes, layer: int) -> bytes:
    """The kvtier key of one layer's page of one vLLM block."""
    h = hashlib.blake2b(bytes(block_hash), digest_size=32, person=b"kvtier-vllm-v1")
    h.update(layer.to_bytes(4, "little"))
    return h.digest()


def model_fingerprint(model: str, revision: Optional[str] = None) -> str:
    """A fingerprint of the weights vLLM serves: BLAKE2b over the weight files of a local model
    directory (or of the Hugging Face cache's snapshot of a hub id), names and contents."""
    path = model
    if not os.path.exists(path):
        try:
            from huggingface_hub import snapshot_download
            path = snapshot_download(model, revision=revision, local_files_only=True)
        except Exception as e:  # noqa: BLE001 - any failure means: cannot fingerprint
            raise ValueError(
                f"kvtier: cannot find the weights of {model!r} to fingerprint them ({e}); set "
                "kv_connector_extra_config.model_fingerprint") from None
    files = [path] if os.path.isfile(path) else sorted(
        os.path.join(path, f) for f in os.listdir(path) if f.endswith(_WEIGHT_SUFFIXES))
    if not files:
        raise ValueError(f"kvtier: no weight files in {path}; set "
                         "kv_connector_extra_config.model_fingerprint")
    h = hashlib.blake2b(digest_size=16)
    for f in files:
        h.update(os.path.basename(f).encode() + b"\0" + file_fingerprint(f).encode())
    return h.hexdigest()


@dataclass
class _Layout:
    """Where each page lives: layers in order, the page size, and per layer the byte offset of
    block 0 and the stride between blocks, in the one KV allocation."""
    layer_names: list[str]
    page_bytes: int
    layer_offsets: list[int]
    block_stride: int

    @classmethod
    def from_config(cls, kv_cache_config: "KVCacheConfig") -> "_Layout":
        groups = kv_cache_config.kv_cache_groups
        if len(groups) != 1 or len(kv_cache_config.kv_cache_tensors) != 1:
            raise ValueError("kvtier.vllm supports one KV cache group in one tensor (full "
                             f"attention models); this model has {len(groups)} groups")
        t = kv_cache_config.kv_cache_tensors[0]
        page = int(groups[0].kv_cache_spec.page_size_bytes)
        if page > min(t.block_stride, t.layer_stride if len(t.layers) > 1 else page):
            raise ValueError(f"KV pages of {page} bytes are not contiguous (block stride "
                             f"{t.block_stride}, layer stride {t.layer_stride})")
        return cls(list(t.layers), page,
                   [t.offset + i * t.layer_stride for i in range(len(t.layers))], t.block_stride)

    def describe(self) -> str:
        return f"{len(self.layer_names)}x{self.page_bytes}"


@dataclass
class _Transfer:
    req_id: str
    hashes: list[bytes]
    block_ids: list[int]


@dataclass
class KvtierConnectorMetadata(KVConnectorMetadata):
    """What the scheduler tells the workers for one step."""
    loads: list[_Transfer] = field(default_factory=list)        # before this step's forward
    async_loads: list[_Transfer] = field(default_factory=list)  # in the background
    stores: list[_Transfer] = field(default_factory=list)       # after this step's forward
    preempted: bool = False


@dataclass
class _ReqState:
    request: "Request"
    first_block: int = 0     # vLLM's own hit, in blocks, at the last lookup
    load_async: bool = False  # what the last lookup answered
    stored_blocks: int = 0   # blocks whose store the workers were given
    has_stores: bool = False


class _Reconnecting:
    """Clients for fixed namespaces that come back after kvtierd restarts (at most one try per
    `retry_seconds`); every KvtierError drops the connection."""

    def __init__(self, socket: str, namespaces: list[str], retry_seconds: float) -> None:
        self.socket, self.namespaces, self.retry = socket, namespaces, retry_seconds
        self.clients: Optional[list[Client]] = None
        self.next_try = 0.0
        self.region = 0  # the worker's CUDA region in this connection's session (0: none yet)

    def get(self) -> Optional[list[Client]]:
        if self.clients is None and time.monotonic() >= self.next_try:
            self.next_try = time.monotonic() + self.retry
            try:
                self.clients = [Client(self.socket, ns) for ns in self.namespaces]
            except KvtierError as e:
                log.warning("kvtier: cannot reach kvtierd at %s: %s", self.socket, e)
        return self.clients

    def drop(self, error: Exception) -> None:
        log.warning("kvtier: %s; reconnecting", error)
        self.close()

    def close(self) -> None:
        for c in self.clients or []:
            c.close()
        self.clients = None
        self.region = 0


class KvtierConnector(KVConnectorBase_V1):
    """vLLM's KV connector for kvtierd (see the module docstring)."""

    def __init__(self, vllm_config: "VllmConfig", role: KVConnectorRole,
                 kv_cache_config: "KVCacheConfig") -> None:
        super().__init__(vllm_config, role, kv_cache_config)
        tc = self._kv_transfer_config
        extra: dict[str, Any] = dict(tc.kv_connector_extra_config or {})
        if tc.kv_load_failure_policy != "recompute":
            raise ValueError('kvtier.vllm needs "kv_load_failure_policy": "recompute" (with '
                             "vLLM's default, an evicted block would fail the request)")
        cache = vllm_config.cache_config
        if cache.prefix_caching_hash_algo not in ("sha256", "sha256_cbor"):
            raise ValueError("kvtier.vllm keeps blocks across processes and restarts: it needs "
                             "prefix_caching_hash_algo sha256 or sha256_cbor (vLLM's default), "
                             f"not {cache.prefix_caching_hash_algo!r}")
        parallel = vllm_config.parallel_config
        if parallel.pipeline_parallel_size != 1:
            raise ValueError("kvtier.vllm does not support pipeline parallelism yet")
        layout_name = str(kv_cache_config.kv_cache_layout or cache.kv_cache_layout or "LBNHC")
        if layout_name not in BLOCK_COMPACT_LAYOUTS:
            raise ValueError(f"kvtier.vllm needs a KV layout with contiguous pages "
                             f"({', '.join(BLOCK_COMPACT_LAYOUTS)}), not {layout_name}")
        self._layout = _Layout.from_config(kv_cache_config)
        self._block_size = int(cache.block_size)
        hash_block = int(kv_cache_config.hash_block_size or self._block_size)
        if self._block_size % hash_block:
            raise ValueError(f"block size {self._block_size} is not a multiple of the hash "
                             f"block size {hash_block}")
        self._hashes_per_block = self._block_size // hash_block
        self._socket = str(extra.get("socket") or os.environ.get("KVTIER_SOCKET", DEFAULT_SOCKET))
        self._load_mode = str(extra.get("load_mode", "auto"))
        if self._load_mode not in ("auto", "sync", "async"):
            raise ValueError(f"load_mode must be auto, sync or async, not {self._load_mode!r}")
        self._layerwise = bool(extra.get("layerwise", True))
        self._ttl = int(extra.get("ttl_seconds", 0)) or None
        retry = float(extra.get("reconnect_seconds", 1.0))
        model = vllm_config.model_config
        fingerprint = str(extra.get("model_fingerprint") or
                          model_fingerprint(model.model, getattr(model, "revision", None)))
        self._tp_size = int(parallel.tensor_parallel_size)

        def ns(rank: int) -> str:
            return namespace(model_fingerprint=fingerprint, engine="vllm",
                             engine_version=vllm.__version__, kv_dtype=str(cache.cache_dtype)
                             + "/" + str(model.dtype), kv_layout=layout_name,
                             block_tokens=self._block_size, tp_rank=rank, tp_size=self._tp_size,
                             extra=[self._layout.describe()])
        self._ns = ns
        self._L = len(self._layout.layer_names)
        # Scheduler state.
        self._reqs: dict[str, _ReqState] = {}
        self._pending_loads: list[tuple[_Transfer, bool]] = []
        # Worker state.
        self._worker: Optional[_Worker] = None
        if role == KVConnectorRole.SCHEDULER:
            self._conn = _Reconnecting(self._socket, [ns(r) for r in range(self._tp_size)], retry)
        else:
            self._conn = _Reconnecting(self._socket, [ns(_tp_rank(self._tp_size))], retry)

    @classmethod
    def requires_piecewise_for_cudagraph(cls, extra_config: dict[str, Any]) -> bool:
        # wait_for_layer_load runs between layers: it must not be captured in a CUDA graph.
        return bool(extra_config.get("layerwise", True))

    @property
    def requires_kv_delivery(self) -> bool:
        return False  # a cache: a store that does not happen is a future miss

    # ---------------------------------------------------------------- scheduler side
    def _hashes(self, request: "Request", first: int, last: int) -> list[bytes]:
        k = self._hashes_per_block  # a block's hash is the last of its hash blocks' chain
        return [bytes(request.block_hashes[(b + 1) * k - 1]) for b in range(first, last)]

    def get_num_new_matched_tokens(self, request: "Request",
                                   num_computed_tokens: int) -> tuple[Optional[int], bool]:
        st = self._reqs.setdefault(request.request_id, _ReqState(request))
        bs = self._block_size
        first = num_computed_tokens // bs
        st.first_block = first
        last = min(len(request.block_hashes) // self._hashes_per_block,
                   (request.num_tokens - 1) // bs)  # leave one token to compute
        if last <= first:
            return 0, False
        clients = self._conn.get()
        if clients is None:
            return 0, False
        hashes = self._hashes(request, first, last)
        hits, on_ssd = len(hashes), False
        try:
            for c in clients:  # every TP rank must have the block
                n, ssd = self._match(c, hashes[:hits])
                hits, on_ssd = n, on_ssd or ssd
                if hits == 0:
                    break
        except KvtierError as e:
            self._conn.drop(e)
            return 0, False
        if hits == 0:
            return 0, False
        st.load_async = self._load_mode == "async" or (self._load_mode == "auto" and on_ssd)
        return hits * bs, st.load_async

    def _match(self, c: Client, hashes: list[bytes]) -> tuple[int, bool]:
        """Leading blocks whose every page is stored, and whether any is on SSD."""
        per_call = max(1, MAX_BATCH // self._L)
        hits, ssd = 0, False
        for i in range(0, len(hashes), per_call):
            chunk = hashes[i : i + per_call]
            m = c.match_prefix([page_key(h, l) for h in chunk for l in range(self._L)])
            whole = m.count // self._L
            hits += whole
            ssd = ssd or Tier.SSD in m.tiers[: whole * self._L]
            if whole < len(chunk):
                break
        return hits, ssd

    def update_state_after_alloc(self, request: "Request", blocks: "KVCacheBlocks",
                                 num_external_tokens: int) -> None:
        st = self._reqs.setdefault(request.request_id, _ReqState(request))
        if num_external_tokens <= 0:
            return
        n = num_external_tokens // self._block_size
        first = st.first_block
        block_ids = blocks.get_block_ids()[0][first : first + n]
        load = _Transfer(request.request_id, self._hashes(request, first, first + n), block_ids)
        self._pending_loads.append((load, st.load_async))
        st.stored_blocks = max(st.stored_blocks, first + n)  # already in kvtier

    def build_connector_meta(self, scheduler_output: SchedulerOutput) -> KVConnectorMetadata:
        meta = KvtierConnectorMetadata(preempted=bool(scheduler_output.preempted_req_ids))
        for load, is_async in self._pending_loads:
            (meta.async_loads if is_async else meta.loads).append(load)
        self._pending_loads = []
        computed: dict[str, int] = {r.req_id: r.num_computed_tokens
                                    for r in scheduler_output.scheduled_new_reqs}
        cached = scheduler_output.scheduled_cached_reqs
        computed.update(zip(cached.req_ids, cached.num_computed_tokens))
        for req_id, scheduled in scheduler_output.num_scheduled_tokens.items():
            st = self._reqs.get(req_id)
            if st is None or self._kv_cache_manager is None:
                continue
            done = (computed.get(req_id, 0) + scheduled) // self._block_size
            done = min(done, len(st.request.block_hashes) // self._hashes_per_block)
            if done <= st.stored_blocks:
                continue
            block_ids = self._kv_cache_manager.get_block_ids(req_id)[0]
            meta.stores.append(_Transfer(req_id, self._hashes(st.request, st.stored_blocks, done),
                                         block_ids[st.stored_blocks : done]))
            st.stored_blocks = done
            st.has_stores = True
        return meta

    def request_finished(self, request: "Request",
                         block_ids: list[int]) -> tuple[bool, Optional[dict[str, Any]]]:
        st = self._reqs.pop(request.request_id, None)
        # Workers report the request in finished_sending once its stores are done.
        return (st is not None and st.has_stores), None

    def shutdown(self) -> None:
        if self._worker is not None:
            self._worker.close()
        self._conn.close()

    # ---------------------------------------------------------------- worker side
    def register_kv_caches(self, kv_caches: dict[str, torch.Tensor]) -> None:
        self._worker = _Worker(self, kv_caches)

    def start_load_kv(self, forward_context: "ForwardContext", **kwargs: Any) -> None:
        meta = self._get_connector_metadata()
        assert isinstance(meta, KvtierConnectorMetadata) and self._worker is not None
        if meta.async_loads:
            self._worker.submit_async_loads(meta.async_loads)
        if meta.loads:
            self._worker.load(meta.loads)

    def wait_for_layer_load(self, layer_name: str) -> None:
        if self._worker is not None:
            self._worker.wait_for_layer(layer_name)

    def save_kv_layer(self, layer_name: str, kv_layer: torch.Tensor,
                      attn_metadata: "AttentionMetadata", **kwargs: Any) -> None:
        return  # stores go in one batch after the forward (wait_for_save)

    def wait_for_save(self) -> None:
        if self._worker is None or not self.has_connector_metadata():
            return
        meta = self._get_connector_metadata()
        assert isinstance(meta, KvtierConnectorMetadata)
        if meta.stores:
            self._worker.submit_stores(meta.stores)

    def handle_preemptions(self, kv_connector_metadata: KVConnectorMetadata) -> None:
        # Preempted requests' blocks may be reused by this step: finish reading them first.
        assert isinstance(kv_connector_metadata, KvtierConnectorMetadata)
        if kv_connector_metadata.preempted and self._worker is not None:
            self._worker.drain()

    def get_finished(self, finished_req_ids: set[str]
                     ) -> tuple[Optional[set[str]], Optional[set[str]]]:
        if self._worker is None:
            return None, None
        return self._worker.finished(finished_req_ids)

    def get_block_ids_with_load_errors(self) -> set[int]:
        return self._worker.take_load_errors() if self._worker is not None else set()


def _tp_rank(tp_size: int) -> int:
    if tp_size == 1:
        return 0
    from vllm.distributed.parallel_state import get_tensor_model_parallel_rank
    return int(get_tensor_model_parallel_rank())


class _Worker:
    """The worker half: where pages are, how they move, and what is still in flight.

    Loads in the step run on the engine's thread with its connection; async loads and stores
    run, in order, on one background thread with a connection of its own."""

    def __init__(self, conn: KvtierConnector, kv_caches: dict[str, torch.Tensor]) -> None:
        self.c = conn
        self.L = conn._L
        self.page = conn._layout.page_bytes
        missing = [n for n in conn._layout.layer_names if n not in kv_caches]
        if missing:
            raise ValueError(f"kvtier.vllm: no KV cache for layers {missing}")
        first = kv_caches[conn._layout.layer_names[0]]
        storage = first.untyped_storage()
        self.on_gpu = bool(first.is_cuda)
        self.layer_index = {n: i for i, n in enumerate(conn._layout.layer_names)}
        self.lock = threading.Lock()
        self.load_errors: set[int] = set()          # guarded by lock
        self.pending_stores: dict[str, int] = {}    # guarded by lock: request -> stores left
        self.finished_asked: set[str] = set()       # guarded by lock: finished, still storing
        self.recved: set[str] = set()               # guarded by lock: async loads ended
        self.waited = self.L - 1                    # last layer the forward waits for (step)
        self.base = int(storage.data_ptr())         # CPU: page address = base + offset
        self.offset = 0                             # CUDA: the storage's offset in its allocation
        if self.on_gpu:
            # (device, cudaIpcMemHandle_t of the allocation, bytes, offset in it, ...)
            shared = storage._share_cuda_()
            self.ipc_handle = bytes(shared[1])
            self.offset = int(shared[3])
            self.region_bytes = self.offset + int(shared[2])
            self.device = int(first.device.index or 0)
            with torch.cuda.device(first.device):
                # Events 0..L-1: layer l has landed (kvtierd records them). Event L: the
                # forward that wrote the pages to store is done (this process records it).
                self.events = [torch.cuda.Event(interprocess=True) for _ in range(self.L + 1)]
            self.event_handles = [bytes(e.ipc_handle()) for e in self.events]
        self.jobs: "queue.Queue[Optional[Callable[[_Reconnecting], None]]]" = queue.Queue()
        self.thread = threading.Thread(target=self._run, name="kvtier-vllm", daemon=True)
        self.thread.start()

    # --- where pages are ---
    def pages(self, transfers: list[_Transfer], layer_major: bool
              ) -> tuple[list[bytes], list[int], list[tuple[int, int]]]:
        """Keys, offsets and (block id, layer) of every page of the transfers."""
        lay = self.c._layout
        blocks = [(h, b) for t in transfers for h, b in zip(t.hashes, t.block_ids)]
        order = ([(l, hb) for l in range(self.L) for hb in blocks] if layer_major
                 else [(l, hb) for hb in blocks for l in range(self.L)])
        keys = [page_key(h, l) for l, (h, _) in order]
        offsets = [self.offset + lay.layer_offsets[l] + b * lay.block_stride
                   for l, (_, b) in order]
        return keys, offsets, [(b, l) for l, (_, b) in order]

    def region(self, conn: _Reconnecting, client: Client) -> int:
        """The KV allocation as a CUDA region of this connection's session."""
        if not conn.region:
            conn.region = client.register_cuda_region(self.device, self.ipc_handle,
                                                      self.region_bytes, self.event_handles)
        return conn.region

    # --- loads ---
    def load(self, loads: list[_Transfer]) -> None:
        """Loads before this step's forward; the forward waits per layer (wait_for_layer)."""
        self.waited = -1
        failed = self._load(self.c._conn, loads, in_step=True)
        if self.on_gpu and not self.c._layerwise:
            self.wait_for_layer(self.c._layout.layer_names[-1])
        with self.lock:
            self.load_errors |= failed

    def _load(self, conn: _Reconnecting, loads: list[_Transfer], in_step: bool) -> set[int]:
        """Copies every page in; returns the block ids to recompute: each request's first
        block with a page that did not load, and every later block of it."""
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

    def _copy_in(self, conn: _Reconnecting, client: Client, loads: list[_Transfer],
                 in_step: bool) -> set[tuple[int, int]]:
        landed: set[tuple[int, int]] = set()
        blocks = [_Transfer(t.req_id, [h], [b]) for t in loads
                  for h, b in zip(t.hashes, t.block_ids)]
        per_call = max(1, MAX_BATCH // self.L)  # a layered onload is one request
        for i in range(0, len(blocks), per_call):
            keys, offsets, where = self.pages(blocks[i : i + per_call], layer_major=True)
            if self.on_gpu:
                results = client.onload(keys, self.region(conn, client), offsets, layers=self.L,
                                        signal_event=0 if in_step else None)
                ok = [r.code == StatusCode.OK and r.size == self.page for r in results]
            else:
                outs = [(ctypes.c_ubyte * self.page).from_address(self.base + o) for o in offsets]
                ok = [c == StatusCode.OK for c in client.get_copy_into(keys, outs)]
            landed.update(w for w, good in zip(where, ok) if good)
        return landed

    def wait_for_layer(self, layer_name: str) -> None:
        """The forward's stream waits (on the GPU, not this thread) for layer l to land."""
        l = self.layer_index.get(layer_name)
        if not self.on_gpu or l is None or l <= self.waited:
            return
        torch.cuda.current_stream().wait_event(self.events[l])
        self.waited = l

    def submit_async_loads(self, loads: list[_Transfer]) -> None:
        def job(conn: _Reconnecting) -> None:
            failed: set[int] = {b for t in loads for b in t.block_ids}
            try:
                failed = self._load(conn, loads, in_step=False)
            finally:
                with self.lock:
                    self.load_errors |= failed
                    self.recved.update(t.req_id for t in loads)
        self.jobs.put(job)

    # --- stores ---
    def submit_stores(self, stores: list[_Transfer]) -> None:
        with self.lock:
            for t in stores:
                self.pending_stores[t.req_id] = self.pending_stores.get(t.req_id, 0) + 1
        if self.on_gpu:  # kvtierd's stream waits for this step's forward before copying
            self.events[self.L].record(torch.cuda.current_stream())

        def job(conn: _Reconnecting) -> None:
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

    def _copy_out(self, conn: _Reconnecting, client: Client, stores: list[_Transfer]) -> None:
        keys, offsets, _ = self.pages(stores, layer_major=False)
        ttl = self.c._ttl
        for i in range(0, len(keys), MAX_BATCH):
            k, o = keys[i : i + MAX_BATCH], offsets[i : i + MAX_BATCH]
            if self.on_gpu:
                client.offload(k, self.region(conn, client), o, [self.page] * len(k),
                               ttl_seconds=ttl, wait_event=self.L)
            else:
                client.put_copy(k, [(ctypes.c_ubyte * self.page).from_address(self.base + x)
                                    for x in o], ttl_seconds=ttl)

    # --- the background thread ---
    def _run(self) -> None:
        conn = _Reconnecting(self.c._socket, self.c._conn.namespaces, self.c._conn.retry)
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
