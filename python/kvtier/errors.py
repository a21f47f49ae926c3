"""Status codes and the exceptions they map to.

A whole call that fails raises a KvtierError subclass, one per code, carrying kvtierd's or
libkvclient's message. What happens to each key of a batch is never an exception: it is the
per-key StatusCode in the call's result (see Client).
"""

from __future__ import annotations

import enum


class StatusCode(enum.IntEnum):
    """The wire's status codes (kvclient/status.h); values never change."""

    OK = 0
    INVALID_ARGUMENT = 1
    NOT_FOUND = 2
    ALREADY_EXISTS = 3
    RESOURCE_EXHAUSTED = 4
    PERMISSION_DENIED = 5
    UNAVAILABLE = 6
    VERSION_MISMATCH = 7
    PROTOCOL_ERROR = 8
    FAILED_PRECONDITION = 9
    DATA_LOSS = 10
    INTERNAL = 11
    IO_ERROR = 12
    TIMED_OUT = 13


class Tier(enum.IntEnum):
    """Where a block lives."""

    NONE = 0
    GPU = 1
    DRAM = 2
    SSD = 3


class KvtierError(Exception):
    """Base class: a call that failed as a whole. `code` is its StatusCode."""

    code: StatusCode = StatusCode.INTERNAL

    def __init__(self, message: str, code: StatusCode | None = None) -> None:
        super().__init__(message)
        if code is not None:
            self.code = code
        self.message = message

    def __str__(self) -> str:
        return f"{self.code.name.lower()}: {self.message}"


class InvalidArgumentError(KvtierError):
    code = StatusCode.INVALID_ARGUMENT


class NotFoundError(KvtierError):
    code = StatusCode.NOT_FOUND


class AlreadyExistsError(KvtierError):
    code = StatusCode.ALREADY_EXISTS


class ResourceExhaustedError(KvtierError):
    code = StatusCode.RESOURCE_EXHAUSTED


class PermissionDeniedError(KvtierError):
    code = StatusCode.PERMISSION_DENIED


class UnavailableError(KvtierError):
    code = StatusCode.UNAVAILABLE


class VersionMismatchError(KvtierError):
    code = StatusCode.VERSION_MISMATCH


class ProtocolError(KvtierError):
    code = StatusCode.PROTOCOL_ERROR


class FailedPreconditionError(KvtierError):
    code = StatusCode.FAILED_PRECONDITION


class LeaseRevokedError(FailedPreconditionError):
    """Leased bytes were read after kvtierd ended the session (a purge of the tenant, a drain,
    a shutdown): they may be wrong. Treat the blocks as a miss and recompute."""


class DataLossError(KvtierError):
    code = StatusCode.DATA_LOSS


class InternalError(KvtierError):
    code = StatusCode.INTERNAL


class IoError(KvtierError):
    code = StatusCode.IO_ERROR


class TimedOutError(KvtierError):
    code = StatusCode.TIMED_OUT


_BY_CODE: dict[int, type[KvtierError]] = {
    cls.code.value: cls
    for cls in (
        InvalidArgumentError, NotFoundError, AlreadyExistsError, ResourceExhaustedError,
        PermissionDeniedError, UnavailableError, VersionMismatchError, ProtocolError,
        FailedPreconditionError, DataLossError, InternalError, IoError, TimedOutError,
    )
}


def error_for(code: int, message: str) -> KvtierError:
    """The exception for a failed call's status `code`."""
    cls = _BY_CODE.get(code)
    if cls is None:
        return InternalError(f"unknown status {code}: {message}")
    return cls(message)
