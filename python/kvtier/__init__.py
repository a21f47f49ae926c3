"""kvtier: the Python client of kvtierd, the per-host KV-cache tier.

    import kvtier, numpy as np
    with kvtier.Client("/run/kvtier/kvtierd.sock", "my-model/f16/blk256") as c:
        keys = kvtier.block_keys(tokens, 256)
        with c.reserve(keys[:1], [kv.nbytes]) as r:
            np.frombuffer(r.view(0), np.uint8)[:] = kv.view(np.uint8).ravel()  # in place
            r.commit()
        with c.acquire(keys[:1]) as leases:
            out = np.frombuffer(leases.view(0), np.uint8).copy()
            leases.verify()            # before using `out`: raises if a purge revoked it

See README.md ("Python") and docs/engines.md.
"""

from .client import (
    DEFAULT_SOCKET,
    MAX_BATCH,
    Client,
    HostMemory,
    Leases,
    Onload,
    OnloadResult,
    PrefixMatch,
    Reservation,
    Stats,
    chunks,
    protocol_version,
    version,
)
from .errors import (
    AlreadyExistsError,
    DataLossError,
    FailedPreconditionError,
    InternalError,
    InvalidArgumentError,
    IoError,
    KvtierError,
    LeaseRevokedError,
    NotFoundError,
    PermissionDeniedError,
    ProtocolError,
    ResourceExhaustedError,
    StatusCode,
    Tier,
    TimedOutError,
    UnavailableError,
    VersionMismatchError,
)
from .keys import block_keys, file_fingerprint, namespace

__version__ = "0.5.0"

__all__ = [
    "DEFAULT_SOCKET", "MAX_BATCH", "Client", "HostMemory", "Leases", "Onload", "OnloadResult",
    "PrefixMatch", "Reservation", "Stats", "chunks", "protocol_version", "version",
    "AlreadyExistsError", "DataLossError", "FailedPreconditionError", "InternalError",
    "InvalidArgumentError", "IoError", "KvtierError", "LeaseRevokedError", "NotFoundError",
    "PermissionDeniedError", "ProtocolError", "ResourceExhaustedError", "StatusCode", "Tier",
    "TimedOutError", "UnavailableError", "VersionMismatchError",
    "block_keys", "file_fingerprint", "namespace",
]
