"""pytest set-up: find this checkout's libkvclient and kvtierd, and give tests a daemon."""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Iterator

import pytest

ROOT = Path(__file__).resolve().parents[2]
BUILD = Path(os.environ.get("KVTIER_BUILD_DIR", ROOT / "build"))
os.environ.setdefault("KVTIER_LIBKVCLIENT", str(BUILD / "libkvclient" / "libkvclient.so"))
os.environ.setdefault("KVTIERD", str(BUILD / "daemon" / "kvtierd"))
os.environ.setdefault("KVTIERCTL", str(BUILD / "daemon" / "kvtierctl"))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from kvtier.testing import Daemon  # noqa: E402


@pytest.fixture
def daemon() -> Iterator[Daemon]:
    d = Daemon(dram_bytes=64 << 20, max_block_bytes=8 << 20)
    try:
        yield d
    finally:
        d.close()


@pytest.fixture
def ssd_daemon() -> Iterator[Daemon]:
    d = Daemon(dram_bytes=64 << 20, max_block_bytes=8 << 20, ssd_bytes=256 << 20,
               spill_max_block_bytes=4 << 20, segment_bytes=64 << 20, demote_above=0.05)
    try:
        yield d
    finally:
        d.close()
