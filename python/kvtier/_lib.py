"""ctypes declarations of libkvclient's C ABI (libkvclient/include/kvclient/c_api.h).

Private: the public surface is kvtier.Client and friends. The library is found, in order, at
$KVTIER_LIBKVCLIENT, next to this package (a wheel that bundles it), then by the dynamic
loader's own search (libkvclient.so.1 installed by `cmake --install`, LD_LIBRARY_PATH).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
from pathlib import Path
from typing import Any

c_size_t = ctypes.c_size_t
c_uint8 = ctypes.c_uint8
c_uint16 = ctypes.c_uint16
c_uint32 = ctypes.c_uint32
c_uint64 = ctypes.c_uint64
c_int = ctypes.c_int
c_int32 = ctypes.c_int32
c_void_p = ctypes.c_void_p
c_char_p = ctypes.c_char_p
POINTER = ctypes.POINTER

KEY_BYTES = 32
NO_EVENT = 0xFFFFFFFF


class KeyStruct(ctypes.Structure):
    _fields_ = [("len", c_uint8), ("bytes", c_uint8 * KEY_BYTES)]


assert ctypes.sizeof(KeyStruct) == 33


class LeaseStruct(ctypes.Structure):
    _fields_ = [
        ("lease_id", c_uint64),
        ("offset", c_uint64),
        ("size", c_uint64),
        ("code", c_uint16),
        ("tier", c_uint8),
    ]


class EstimateStruct(ctypes.Structure):
    _fields_ = [("valid", ctypes.c_uint32), ("dram_blocks", ctypes.c_uint32),
                ("ssd_blocks", ctypes.c_uint32), ("reserved", ctypes.c_uint32),
                ("dram_bytes", c_uint64), ("ssd_bytes", c_uint64), ("load_us", c_uint64),
                ("ssd_queue_us", c_uint64), ("dram_mb_per_s", ctypes.c_uint32),
                ("ssd_mb_per_s", ctypes.c_uint32)]


class StatsStruct(ctypes.Structure):
    _fields_ = [
        (name, c_uint64)
        for name in (
            "pool_bytes used_bytes slab_bytes_in_use committed_blocks reserved_blocks "
            "leased_blocks index_capacity index_bytes hits misses evictions sessions "
            "ssd_quota_bytes ssd_blocks ssd_only_blocks ssd_payload_bytes dirty_bytes "
            "demotions promotions demote_failures promote_failures integrity_failures "
            "ssd_dropped ssd_segments expirations"
        ).split()
    ]


class ConnectOptionsStruct(ctypes.Structure):
    _fields_ = [("timeout_ms", c_int32), ("spin_us", c_uint32)]


class ClientOptionsStruct(ctypes.Structure):
    """kvtier_client_options: versioned by struct_size (set it to ctypes.sizeof of this)."""
    _fields_ = [("struct_size", c_uint32), ("timeout_ms", c_int32), ("spin_us", c_uint32),
                ("reconnect", c_uint32)]


class TransferOptionsStruct(ctypes.Structure):
    _fields_ = [
        ("layers", c_uint32),
        ("progress_region", c_uint32),
        ("progress_offset", c_uint64),
        ("wait_event", c_uint32),
        ("signal_event", c_uint32),
    ]


class OnloadResultStruct(ctypes.Structure):
    _fields_ = [("size", c_uint64), ("code", c_uint16), ("tier", c_uint8)]


def _candidates() -> list[str]:
    out = []
    if os.environ.get("KVTIER_LIBKVCLIENT"):
        out.append(os.environ["KVTIER_LIBKVCLIENT"])
    here = Path(__file__).resolve().parent
    out += [str(here / "lib" / "libkvclient.so"), str(here / "libkvclient.so")]
    found = ctypes.util.find_library("kvclient")
    if found:
        out.append(found)
    out += ["libkvclient.so.1", "libkvclient.so"]
    return out


def _load() -> ctypes.CDLL:
    errors = []
    for path in _candidates():
        if "/" in path and not os.path.exists(path):
            continue
        try:
            return ctypes.CDLL(path)
        except OSError as e:  # try the next one, report all if none loads
            errors.append(f"{path}: {e}")
    raise ImportError(
        "kvtier: cannot load libkvclient.so. Build it (cmake --build build) and set "
        "KVTIER_LIBKVCLIENT=/path/to/build/libkvclient/libkvclient.so, or install it "
        "(cmake --install build). Tried: " + "; ".join(errors or ["nothing found"])
    )


lib: Any = _load()

_PROTOS: dict[str, tuple[Any, list[Any]]] = {
    "kvtier_connect_ex": (c_int, [c_char_p, c_char_p, POINTER(ConnectOptionsStruct),
                                  POINTER(c_void_p)]),
    "kvtier_connect_with": (c_int, [c_char_p, c_char_p, POINTER(ClientOptionsStruct),
                                    POINTER(c_void_p)]),
    "kvtier_reconnects": (c_uint64, [c_void_p]),
    "kvtier_call_generation": (c_uint64, [c_void_p]),
    "kvtier_pool_base_of": (c_void_p, [c_void_p, c_uint64]),
    "kvtier_verify_session": (c_int, [c_void_p, c_uint64]),
    "kvtier_commit_in_session": (c_int, [c_void_p, c_uint64, c_void_p, c_size_t, c_void_p]),
    "kvtier_abort_in_session": (c_int, [c_void_p, c_uint64, c_void_p, c_size_t, c_void_p]),
    "kvtier_close": (None, [c_void_p]),
    "kvtier_error": (c_char_p, []),
    "kvtier_status_name": (c_char_p, [c_int]),
    "kvtier_version": (c_char_p, []),
    "kvtier_protocol_version": (c_uint32, []),
    "kvtier_pool_base": (c_void_p, [c_void_p]),
    "kvtier_pool_size": (c_uint64, [c_void_p]),
    "kvtier_max_block_bytes": (c_uint64, [c_void_p]),
    "kvtier_spill_max_block_bytes": (c_uint64, [c_void_p]),
    "kvtier_reserve_ex": (c_int, [c_void_p, c_void_p, c_void_p, c_void_p, c_size_t, c_void_p,
                                  c_void_p]),
    "kvtier_commit": (c_int, [c_void_p, c_void_p, c_size_t, c_void_p]),
    "kvtier_abort": (c_int, [c_void_p, c_void_p, c_size_t, c_void_p]),
    "kvtier_match_prefix": (c_int, [c_void_p, c_void_p, c_size_t, POINTER(c_size_t), c_void_p]),
    "kvtier_acquire": (c_int, [c_void_p, c_void_p, c_size_t, c_void_p]),
    "kvtier_release": (c_int, [c_void_p, c_void_p, c_size_t, c_void_p]),
    "kvtier_verify_leases": (c_int, [c_void_p]),
    "kvtier_remove": (c_int, [c_void_p, c_void_p, c_size_t, c_void_p]),
    "kvtier_prefetch": (c_int, [c_void_p, c_void_p, c_size_t, c_void_p]),
    "kvtier_reuse_soon": (c_int, [c_void_p, c_void_p, c_size_t, c_void_p]),
    "kvtier_done_with": (c_int, [c_void_p, c_void_p, c_size_t, c_void_p]),
    "kvtier_has_hints": (c_int, [c_void_p]),
    "kvtier_stats_get": (c_int, [c_void_p, POINTER(StatsStruct)]),
    "kvtier_match_prefix_estimate": (c_int, [c_void_p, c_void_p, c_size_t, POINTER(c_size_t),
                                             c_void_p, POINTER(EstimateStruct)]),
    "kvtier_host_memory_create": (c_int, [c_uint64, POINTER(c_int), POINTER(c_void_p)]),
    "kvtier_host_memory_free": (None, [c_int, c_void_p, c_uint64]),
    "kvtier_register_host_region": (c_int, [c_void_p, c_int, c_uint64, c_void_p,
                                            POINTER(c_uint32)]),
    "kvtier_register_cuda_region": (c_int, [c_void_p, c_int, c_void_p, c_uint64, c_void_p,
                                            c_size_t, POINTER(c_uint32)]),
    "kvtier_deregister_region": (c_int, [c_void_p, c_uint32]),
    "kvtier_offload_ex": (c_int, [c_void_p, c_void_p, c_void_p, c_void_p, c_void_p, c_size_t,
                                  c_uint32, POINTER(TransferOptionsStruct), c_void_p]),
    "kvtier_onload": (c_int, [c_void_p, c_void_p, c_void_p, c_size_t, c_uint32,
                              POINTER(TransferOptionsStruct), c_void_p]),
    "kvtier_start_onload": (c_int, [c_void_p, c_void_p, c_void_p, c_size_t, c_uint32,
                                    POINTER(TransferOptionsStruct)]),
    "kvtier_wait_layer": (c_int, [c_void_p, c_uint32]),
    "kvtier_finish_onload": (c_int, [c_void_p, c_void_p, c_size_t]),
    "kvtier_pin_pool_for_cuda": (c_int, [c_void_p]),
    "kvtier_copy_to_pool": (None, [c_void_p, c_void_p, c_size_t]),
    "kvtier_copy_from_pool": (None, [c_void_p, c_void_p, c_size_t]),
}

for _name, (_res, _args) in _PROTOS.items():
    _fn = getattr(lib, _name)  # AttributeError here: libkvclient is older than this package
    _fn.restype = _res
    _fn.argtypes = _args
