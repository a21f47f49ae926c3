"""A throwaway kvtierd for tests, examples and benchmarks: `with Daemon() as d: Client(d.socket)`.

Starts the real daemon binary ($KVTIERD, else build/daemon/kvtierd of this checkout, else
`kvtierd` on PATH) with a config in a temporary directory, and waits for its sd_notify READY=1.
The calling uid is the tenant "test"; `ssd_bytes` > 0 adds the encrypted SSD tier.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Optional


def _find(name: str, env: str) -> str:
    if os.environ.get(env):
        return os.environ[env]
    here = Path(__file__).resolve().parents[2] / "build" / "daemon" / name
    if here.exists():
        return str(here)
    found = shutil.which(name)
    if found:
        return found
    raise FileNotFoundError(f"{name} not found: build it or set ${env}")


class Daemon:
    """A kvtierd process of its own (one tenant, "test", for the calling uid)."""

    def __init__(self, *, dram_bytes: int = 256 << 20, ssd_bytes: int = 0,
                 max_block_bytes: int = 64 << 20, slab_bytes: int = 4 << 20,
                 spill_max_block_bytes: int = 4 << 20, segment_bytes: int = 64 << 20,
                 default_ttl_seconds: int = 0, demote_above: float = 0.75,
                 extra_toml: str = "") -> None:
        self.dir = Path(tempfile.mkdtemp(prefix="kvtier-test-"))
        os.chmod(self.dir, 0o700)
        self.socket = str(self.dir / "run" / "kvtierd.sock")
        self.admin_socket = str(self.dir / "run" / "kvtierd-admin.sock")
        self.log_path = self.dir / "kvtierd.log"
        self.tenant = "test"
        cfg = [
            "config_version = 1",
            "[daemon]", 'run_dir = "run"', 'log_level = "info"', "max_sessions = 64",
            "[pool]", f"slab_bytes = {slab_bytes}", f"max_block_bytes = {max_block_bytes}",
            'huge_pages = "try"', 'lock_memory = "try"', "zero_freed = true",
        ]
        if ssd_bytes:
            spill = self.dir / "spill"
            spill.mkdir(mode=0o700)
            cfg += ["[spill]", f'dir = "{spill}"', f'key_file = "{self.dir / "spill.key"}"',
                    "create_key = true", f"segment_bytes = {segment_bytes}",
                    f"max_block_bytes = {spill_max_block_bytes}",
                    f"demote_above = {demote_above}"]
        cfg += ["[admin]", 'audit_log = "run/audit.log"', extra_toml,
                "[[tenant]]", 'name = "test"', f"dram_bytes = {dram_bytes}",
                f"uids = [{os.getuid()}]", f"default_ttl_seconds = {default_ttl_seconds}"]
        if ssd_bytes:
            cfg.append(f"ssd_bytes = {ssd_bytes}")
        (self.dir / "kvtierd.toml").write_text("\n".join(cfg) + "\n")
        self.proc: Optional[subprocess.Popen[bytes]] = None
        self.start()

    def start(self) -> None:
        """Starts (or restarts) kvtierd and returns once it is ready."""
        notify_path = str(self.dir / "notify.sock")
        if os.path.exists(notify_path):
            os.unlink(notify_path)
        notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        notify.bind(notify_path)
        notify.settimeout(0.2)
        env = dict(os.environ, NOTIFY_SOCKET=notify_path)
        log = open(self.log_path, "ab")
        self.proc = subprocess.Popen(
            [_find("kvtierd", "KVTIERD"), "--config", str(self.dir / "kvtierd.toml")],
            stdin=subprocess.DEVNULL, stdout=log, stderr=log, env=env)
        log.close()
        try:
            deadline = time.monotonic() + 60
            while True:
                try:
                    if b"READY=1" in notify.recv(256):
                        return
                except socket.timeout:
                    pass
                if self.proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError("kvtierd did not start:\n" + self.log())
        finally:
            notify.close()

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def ctl(self, *args: str) -> subprocess.CompletedProcess[str]:
        """Runs kvtierctl against this daemon's admin socket; raises if it fails."""
        out = subprocess.run([_find("kvtierctl", "KVTIERCTL"), "--admin-socket", self.admin_socket,
                              *args], capture_output=True, text=True, timeout=120)
        if out.returncode != 0:
            raise RuntimeError(f"kvtierctl {' '.join(args)}: {out.stderr}")
        return out

    def stop(self) -> None:
        """SIGTERM and wait for kvtierd to exit (it zeroes freed slots first)."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            self.proc.wait(timeout=60)
        self.proc = None

    def close(self) -> None:
        self.stop()
        shutil.rmtree(self.dir, ignore_errors=True)

    def __enter__(self) -> "Daemon":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
