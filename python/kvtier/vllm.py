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
block, keyed `BLAKE2b-224(vLLM block hash) || layer` (`page_key`). vLLM's block hash is a sha256 chain over
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

**Worker side** (one per GPU): `kvtier.paged.PagedKV` over vLLM's KV allocation. On the GPU,
kvtierd copies through CUDA IPC: in-step loads are `onload`s that record one interprocess event
per layer, and `wait_for_layer_load` makes the forward's stream wait for that layer's event (no
engine thread blocks, no engine stream copies; hence `requires_piecewise_for_cudagraph`).
Stores go after the forward, on a background thread, behind an event the forward's stream
records. Async loads run on that thread too. CPU tensors are copied by the client.

**Failures never give wrong KV.** A page that does not load (evicted since the match, a purge,
kvtierd gone) makes its block and every later block of the request a load error
(`get_block_ids_with_load_errors`); vLLM, with `kv_load_failure_policy: "recompute"` (required
here), recomputes from the first of them. A store that fails is a future miss. When kvtierd is
unreachable, every lookup is a miss and calls retry the connection at most once a second.
"""

from __future__ import annotations

import functools
import hashlib
import logging
import os
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Optional

import torch
import vllm
from vllm.distributed.kv_transfer.kv_connector.v1.base import (
    KVConnectorBase_V1,
    KVConnectorMetadata,
    KVConnectorRole,
    KVConnectorWorkerMetadata,
)
from vllm.v1.core.sched.output import SchedulerOutput
from vllm.v1.outputs import KVConnectorOutput

from .client import DEFAULT_SOCKET, MAX_BATCH, Client
from .errors import KvtierError, Tier
from .keys import file_fingerprint, namespace
from .paged import PagedKV, PageLayout, Reconnecting, Transfer

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
    """The kvtier key of one layer's page of one vLLM block: 28 bytes of BLAKE2b over the block
    hash (112-bit collision resistance), then the layer. The hash is computed once per block
    (cached): the scheduler builds L keys per block on every lookup, ~0.1 us each this way
    against ~1 us for a hash per page."""
    return _block_key(bytes(block_hash)) + _LAYER[layer]


@functools.lru_cache(maxsize=1 << 16)
def _block_key(block_hash: bytes) -> bytes:
    return hashlib.blake2b(block_hash, digest_size=28, person=b"kvtier-vllm-v1").digest()


_LAYER = [layer.to_bytes(4, "little") for layer in range(4096)]


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
        h.update(os.path.basename(f).encode() + b"\0" + _cached_fingerprint(f).encode())
    return h.hexdigest()


def _cached_fingerprint(path: str) -> str:
    """file_fingerprint, remembered per (path, size, mtime, inode) in the user's cache: the
    scheduler and every worker fingerprint the same weights (about 1 s per GB)."""
    st = os.stat(path)
    ident = f"{os.path.realpath(path)}|{st.st_size}|{st.st_mtime_ns}|{st.st_ino}"
    cache = os.path.join(os.environ.get("XDG_CACHE_HOME", os.path.expanduser("~/.cache")),
                         "kvtier", "fingerprints")
    entry = os.path.join(cache, hashlib.blake2b(ident.encode(), digest_size=16).hexdigest())
    try:
        with open(entry) as f:
            return f.read().strip()
    except OSError:
        pass
    value = file_fingerprint(path)
    try:
        os.makedirs(cache, mode=0o700, exist_ok=True)
        tmp = f"{entry}.{os.getpid()}"
        with open(tmp, "w") as f:
            f.write(value)
        os.replace(tmp, entry)
    except OSError:
        pass  # no cache: computed again next time
    return value


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
class KvtierConnectorMetadata(KVConnectorMetadata):
    """What the scheduler tells the workers for one step."""
    step: int = 0
    loads: list[Transfer] = field(default_factory=list)        # before this step's forward
    async_loads: list[Transfer] = field(default_factory=list)  # in the background
    stores: list[Transfer] = field(default_factory=list)       # after this step's forward
    #: Stores of blocks computed over blocks whose in-step load is not confirmed yet: kept
    #: until every step listed is confirmed, dropped if one failed.
    held: list[tuple[Transfer, list[int]]] = field(default_factory=list)
    confirmed: list[int] = field(default_factory=list)  # steps whose loads landed everywhere
    failed: list[int] = field(default_factory=list)     # steps with a load error somewhere
    preempted: list[str] = field(default_factory=list)


@dataclass
class KvtierWorkerMetadata(KVConnectorWorkerMetadata):
    """What the workers tell the scheduler: per step with in-step loads, whether every page
    landed (aggregated over the workers: on all of them)."""
    loads: dict[int, bool] = field(default_factory=dict)

    def aggregate(self, other: KVConnectorWorkerMetadata) -> KVConnectorWorkerMetadata:
        assert isinstance(other, KvtierWorkerMetadata)
        merged = dict(self.loads)
        for step, ok in other.loads.items():
            merged[step] = merged.get(step, True) and ok
        return KvtierWorkerMetadata(merged)


@dataclass
class _ReqState:
    request: "Request"
    first_block: int = 0     # vLLM's own hit, in blocks, at the last lookup
    load_async: bool = False  # what the last lookup answered
    stored_blocks: int = 0   # blocks whose store the workers were given
    has_stores: bool = False
    loaded: list[int] = field(default_factory=list)  # GPU block ids of the last load


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
        if vllm_config.lora_config is not None:
            raise ValueError("kvtier.vllm does not support LoRA yet: vLLM's block hash names an "
                             "adapter by name and path, not by its weights, and kvtier keeps "
                             "blocks across restarts")
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
        timeout_ms = int(extra.get("timeout_ms", 2000))  # a hung kvtierd stalls a step this long
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
        self._L = len(self._layout.layer_names)
        # Scheduler state.
        self._reqs: dict[str, _ReqState] = {}
        self._pending_loads: list[tuple[Transfer, bool]] = []
        self._step = 0
        self._unconfirmed: dict[int, set[int]] = {}  # step -> GPU blocks loaded in it
        self._held_by_step: dict[int, list[tuple[str, int]]] = {}  # -> (request, first block)
        self._confirmed: list[int] = []
        self._failed: list[int] = []
        self._finishing: set[str] = set()  # finished, blocks kept until their stores end
        # Worker state.
        self._worker: Optional[PagedKV] = None
        self._load_report: dict[int, bool] = {}
        self._layer_index = {n: i for i, n in enumerate(self._layout.layer_names)}
        if role == KVConnectorRole.SCHEDULER:
            self._conn = Reconnecting(self._socket, [ns(r) for r in range(self._tp_size)], retry,
                                      timeout_ms)
        else:
            self._conn = Reconnecting(self._socket, [ns(_tp_rank(self._tp_size))], retry,
                                      timeout_ms)

    @classmethod
    def supports_sleep_mode(cls, kv_transfer_config: Any) -> bool:
        # Sleep mode allocates the KV cache from vLLM's cuMem pool, which has no legacy CUDA
        # IPC handle for kvtierd to open.
        return False

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
        load = Transfer(request.request_id, self._hashes(request, first, first + n), block_ids)
        self._pending_loads.append((load, st.load_async))
        st.loaded = list(block_ids)
        st.stored_blocks = max(st.stored_blocks, first + n)  # already in kvtier

    def build_connector_meta(self, scheduler_output: SchedulerOutput) -> KVConnectorMetadata:
        self._step += 1
        step = self._step
        meta = KvtierConnectorMetadata(step=step, confirmed=self._confirmed, failed=self._failed,
                                       preempted=sorted(scheduler_output.preempted_req_ids or ()))
        self._confirmed, self._failed = [], []
        for req_id in meta.preempted:  # the workers wait for its stores and forget them
            st = self._reqs.get(req_id)
            if st is not None:
                st.has_stores = False
        for load, is_async in self._pending_loads:
            (meta.async_loads if is_async else meta.loads).append(load)
            if not is_async:  # its outcome comes back with this step's output
                self._unconfirmed.setdefault(step, set()).update(load.block_ids)
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
            store = Transfer(req_id, self._hashes(st.request, st.stored_blocks, done),
                             block_ids[st.stored_blocks : done])
            # KV computed over a block whose load may yet fail (in this step or one still in
            # flight, under async scheduling) may be wrong: it waits for the loads' outcome.
            prefix = set(block_ids[:done])
            deps = sorted(s for s, ids in self._unconfirmed.items() if not ids.isdisjoint(prefix))
            if deps:
                meta.held.append((store, deps))
                for s in deps:
                    self._held_by_step.setdefault(s, []).append((req_id, st.stored_blocks))
            else:
                meta.stores.append(store)
            st.stored_blocks = done
            st.has_stores = True
        return meta

    def update_connector_output(self, connector_output: KVConnectorOutput) -> None:
        wm = connector_output.kv_connector_worker_meta
        if isinstance(wm, KvtierWorkerMetadata):
            for step, ok in sorted(wm.loads.items()):
                self._unconfirmed.pop(step, None)
                held = self._held_by_step.pop(step, [])
                (self._confirmed if ok else self._failed).append(step)
                if not ok:  # the held stores are dropped: store those blocks once recomputed
                    for req_id, first in held:
                        st = self._reqs.get(req_id)
                        if st is not None:
                            st.stored_blocks = min(st.stored_blocks, first)
        invalid = connector_output.invalid_block_ids
        if invalid:  # loaded blocks that did not land are recomputed: store them then
            for st in self._reqs.values():
                bad = [i for i, b in enumerate(st.loaded) if b in invalid]
                if bad:
                    st.stored_blocks = min(st.stored_blocks, st.first_block + bad[0])
                    st.loaded = []
        self._finishing -= connector_output.finished_sending or set()

    def request_finished(self, request: "Request",
                         block_ids: list[int]) -> tuple[bool, Optional[dict[str, Any]]]:
        st = self._reqs.pop(request.request_id, None)
        if st is None or not st.has_stores:
            return False, None
        # Workers report the request in finished_sending once its stores are done (or
        # dropped); vLLM keeps its blocks until then, and keeps stepping (has_pending_push_work).
        self._finishing.add(request.request_id)
        return True, None

    def has_pending_push_work(self) -> bool:
        # Held stores resolve, and finished requests are reported, only in later steps.
        return bool(self._finishing)

    def shutdown(self) -> None:
        if self._worker is not None:
            self._worker.close()
        self._conn.close()

    # ---------------------------------------------------------------- worker side
    def register_kv_caches(self, kv_caches: dict[str, torch.Tensor]) -> None:
        lay = self._layout
        missing = [n for n in lay.layer_names if n not in kv_caches]
        if missing:
            raise ValueError(f"kvtier.vllm: no KV cache for layers {missing}")
        self._worker = PagedKV(kv_caches[lay.layer_names[0]],
                               PageLayout(lay.layer_offsets, lay.block_stride, lay.page_bytes),
                               socket=self._socket, namespace=self._conn.namespaces[0],
                               key_fn=page_key, ttl_seconds=self._ttl,
                               layerwise=self._layerwise, retry_seconds=self._conn.retry,
                               timeout_ms=self._conn.timeout_ms)

    def start_load_kv(self, forward_context: "ForwardContext", **kwargs: Any) -> None:
        meta = self._get_connector_metadata()
        assert isinstance(meta, KvtierConnectorMetadata) and self._worker is not None
        if meta.async_loads:
            self._worker.submit_async_loads(meta.async_loads)
        if meta.loads:
            self._load_report[meta.step] = not self._worker.load(meta.loads)

    def wait_for_layer_load(self, layer_name: str) -> None:
        layer = self._layer_index.get(layer_name)
        if self._worker is not None and layer is not None:
            self._worker.wait_for_layer(layer)

    def save_kv_layer(self, layer_name: str, kv_layer: torch.Tensor,
                      attn_metadata: "AttentionMetadata", **kwargs: Any) -> None:
        return  # stores go in one batch after the forward (wait_for_save)

    def wait_for_save(self) -> None:
        if self._worker is None or not self.has_connector_metadata():
            return
        meta = self._get_connector_metadata()
        assert isinstance(meta, KvtierConnectorMetadata)
        self._worker.resolve(meta.confirmed, meta.failed)
        if meta.stores:
            self._worker.submit_stores(meta.stores)
        for store, deps in meta.held:
            self._worker.hold(store, deps)

    def build_connector_worker_meta(self) -> Optional[KVConnectorWorkerMetadata]:
        if not self._load_report:
            return None
        report, self._load_report = KvtierWorkerMetadata(self._load_report), {}
        return report

    def handle_preemptions(self, kv_connector_metadata: KVConnectorMetadata) -> None:
        # Preempted requests' blocks may be reused by this step: finish reading them first,
        # and forget their stores (vLLM frees their blocks without asking us).
        assert isinstance(kv_connector_metadata, KvtierConnectorMetadata)
        if kv_connector_metadata.preempted and self._worker is not None:
            self._worker.drain()
            self._worker.forget(set(kv_connector_metadata.preempted))

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


