#!/usr/bin/env python3
"""What a restart costs with and without keeping the DRAM tier (docs/design.md, decision 21).

Plays systemd for kvtierd: a notify socket (READY=1, and the FDSTORE=1 fds of a clean stop),
then the stored fds passed to the next start as LISTEN_FDS. Measures, on one pool of --gib GiB
filled with 2 MiB blocks:
  cold start   kvtierd to READY=1 with a fresh pool: allocating and pre-faulting it, the
               physical limit a restart without kept DRAM pays (the kernel zeroing every page)
  stop         SIGTERM to exit, the index snapshot and the hand-over included
  warm start   kvtierd to READY=1 taking the pool over: verify, adopt every block, zero the rest
and checks that every block comes back byte-exact (its first and last 8 bytes name it).

  build/venv/bin/python bench/warm_restart_bench.py [--gib 4] [--kvtierd build/daemon/kvtierd]
(the venv from scripts/python-env.sh has the kvtier package).
"""

from __future__ import annotations

import argparse
import array
import os
import signal
import socket
import struct
import sys
import tempfile
import time
from pathlib import Path

import kvtier

BLOCK = 2 << 20


def wait_ready(notify: socket.socket, proc: "Forked") -> float:
    """Seconds until READY=1."""
    start = time.monotonic()
    while True:
        if proc.poll() is not None:
            sys.exit(f"kvtierd exited with {proc.returncode} before READY=1")
        notify.settimeout(0.5)
        try:
            msg, _, _, _ = notify.recvmsg(4096, socket.CMSG_SPACE(16 * 4))
        except socket.timeout:
            continue
        if b"READY=1" in msg:
            return time.monotonic() - start


def collect(notify: socket.socket, proc: "Forked") -> tuple[list, float]:
    """SIGTERM, then the FDSTORE fds it sends until it exits; (fds as (name, fd)), seconds."""
    start = time.monotonic()
    proc.send_signal(signal.SIGTERM)
    stored = []
    notify.settimeout(0.05)
    while True:
        try:
            msg, anc, _, _ = notify.recvmsg(4096, socket.CMSG_SPACE(16 * 4))
        except socket.timeout:
            if proc.poll() is not None:
                break
            continue
        text = msg.decode(errors="replace")
        for level, kind, data in anc:
            if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
                fds = array.array("i")
                fds.frombytes(data[: len(data) - len(data) % fds.itemsize])
                name = "stored"
                for line in text.split("\n"):
                    if line.startswith("FDNAME="):
                        name = line[len("FDNAME="):]
                stored += [(name, fd) for fd in fds]
    elapsed = time.monotonic() - start
    if proc.returncode != 0:
        sys.exit(f"kvtierd exited with {proc.returncode} at the stop")
    return stored, elapsed


class Forked:
    """The Popen calls used here, for a child started by fork + execve."""

    def __init__(self, pid: int) -> None:
        self.pid, self.returncode = pid, None

    def poll(self):
        if self.returncode is None:
            done, status = os.waitpid(self.pid, os.WNOHANG)
            if done:
                self.returncode = os.waitstatus_to_exitcode(status)
        return self.returncode

    def send_signal(self, sig: int) -> None:
        os.kill(self.pid, sig)


def start(kvtierd: str, config: Path, notify_path: str, log, passed=()) -> Forked:
    """kvtierd with $NOTIFY_SOCKET, and `passed` (name, fd) at fd 3, 4, ... as LISTEN_FDS."""
    env = dict(os.environ, NOTIFY_SOCKET=notify_path)
    if passed:
        env["LISTEN_FDS"] = str(len(passed))
        env["LISTEN_FDNAMES"] = ":".join(name for name, _ in passed)
    pid = os.fork()
    if pid == 0:
        try:
            os.dup2(log.fileno(), 2)
            # Out of the way first, so that no dup2 overwrites an fd still to be moved.
            for i, (_, fd) in enumerate(passed):
                os.dup2(fd, 1000 + i)
            for i in range(len(passed)):
                os.dup2(1000 + i, 3 + i, inheritable=True)
            env["LISTEN_PID"] = str(os.getpid())
            os.execve(kvtierd, [kvtierd, "--config", str(config)], env)
        finally:
            os._exit(127)
    return Forked(pid)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--gib", type=int, default=4)
    ap.add_argument("--kvtierd", default=str(Path(__file__).resolve().parents[1] / "build" /
                                             "daemon" / "kvtierd"))
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="kvtier-warm-") as tmp:
        d = Path(tmp)
        (d / "run").mkdir()
        config = d / "kvtierd.toml"
        config.write_text(f"""config_version = 1
[daemon]
run_dir = "run"
default_tenant = "bench"
[pool]
slab_bytes = "4MiB"
max_block_bytes = "2MiB"
[admin]
audit_log = "run/audit.log"
[[tenant]]
name = "bench"
dram_bytes = "{args.gib}GiB"
""")
        notify_path = str(d / "notify.sock")
        notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        notify.bind(notify_path)
        log = open(d / "kvtierd.log", "w")
        proc = start(args.kvtierd, config, notify_path, log)
        cold = wait_ready(notify, proc)
        sock = str(d / "run" / "kvtierd.sock")
        keys = [struct.pack("<Q", i) for i in range(args.gib * 1024 * 1024 * 1024 // BLOCK)]
        with kvtier.Client(sock, "bench") as c:
            for at in range(0, len(keys), 64):
                batch = keys[at:at + 64]
                with c.reserve(batch, [BLOCK] * len(batch)) as r:
                    for i, k in enumerate(batch):
                        view = r.view(i)
                        view[:8] = k
                        view[BLOCK - 8:] = k
                        del view
                    r.commit()
        stored, stop = collect(notify, proc)
        proc = start(args.kvtierd, config, notify_path, log, stored)
        warm = wait_ready(notify, proc)
        exact = 0
        with kvtier.Client(sock, "bench") as c:
            for at in range(0, len(keys), 64):
                batch = keys[at:at + 64]
                with c.acquire(batch) as leases:
                    for i, k in enumerate(batch):
                        if leases.codes[i] != kvtier.StatusCode.OK:
                            continue
                        view = leases.view(i)
                        exact += bytes(view[:8]) == k and bytes(view[BLOCK - 8:]) == k
                        del view
                    leases.verify()
        collect(notify, proc)
        for _, fd in stored:
            os.close(fd)
    print(f"warm restart, {args.gib} GiB pool of 2 MiB blocks ({len(keys)} blocks):")
    print(f"  {'cold start (fresh pool, pre-faulted: the limit)':<50} {cold * 1e3:9.1f} ms")
    print(f"  {'stop (snapshot and hand-over)':<50} {stop * 1e3:9.1f} ms")
    print(f"  {'warm start (pool taken over, blocks adopted)':<50} {warm * 1e3:9.1f} ms"
          f"   {warm / cold:5.2f}x of cold")
    print(f"  blocks served byte-exact after the restart: {exact} of {len(keys)}")
    if exact != len(keys):
        sys.exit("some blocks did not come back")


if __name__ == "__main__":
    main()
