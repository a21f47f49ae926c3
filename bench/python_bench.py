#!/usr/bin/env python3
"""Python client beside the C++ client: put/get GB/s on the same kvtierd, in the same run.

    build/venv/bin/python bench/python_bench.py [--build build] [--quick]

Starts its own kvtierd (kvtier.testing.Daemon, 2 GiB pool), then for each block size and batch
measures, best of a few rounds each:
  - copy:   the better of numpy.copyto and libkvclient's streaming-store copy of one batch
            between private buffers (the physical limit: one core's memory bandwidth);
  - C++:    build/bench/kvtier-putget (Reserve -> CopyToPool -> Commit; Acquire ->
            CopyFromPool -> Verify -> Release), the same keys and sizes;
  - Python: Client.put_copy and Client.get_copy_into, the same steps through ctypes.
and prints each with the ratio Python / C++ (target >= 0.9 at 2 MiB, batch 64) and C++ / memcpy.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]


def best(fn, rounds: int) -> float:
    return max(fn() for _ in range(rounds))


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--build", default=str(ROOT / "build"))
    ap.add_argument("--quick", action="store_true", help="small totals: checks that it runs")
    args = ap.parse_args()
    build = Path(args.build).resolve()
    os.environ.setdefault("KVTIER_LIBKVCLIENT", str(build / "libkvclient" / "libkvclient.so"))
    os.environ.setdefault("KVTIERD", str(build / "daemon" / "kvtierd"))
    import kvtier
    from kvtier._lib import lib
    from kvtier.testing import Daemon

    rounds = 2 if args.quick else 5
    total = (64 << 20) if args.quick else (1 << 30)
    cases = [(2 << 20, 64), (64 << 10, 64), (64 << 10, 1024)]
    rows = []
    with Daemon(dram_bytes=2 << 30, max_block_bytes=4 << 20) as d:
        c = kvtier.Client(d.socket, "python-bench")
        for block, batch in cases:
            blocks = max(batch, total // block)
            src = np.ones(batch * block, np.uint8)
            dst = np.zeros(batch * block, np.uint8)
            keys = [f"py-{i}".encode() for i in range(blocks)]

            def memcpy() -> float:  # the better of a cached and a streaming-store copy
                t = time.perf_counter()
                for _ in range(0, blocks, batch):
                    np.copyto(dst, src)
                cached = blocks * block / (time.perf_counter() - t) / 1e9
                t = time.perf_counter()
                for _ in range(0, blocks, batch):
                    lib.kvtier_copy_to_pool(dst.ctypes.data, src.ctypes.data, dst.nbytes)
                return max(cached, blocks * block / (time.perf_counter() - t) / 1e9)

            srcs = [src[j * block : (j + 1) * block] for j in range(batch)]
            dsts = [dst[j * block : (j + 1) * block] for j in range(batch)]
            py_put, py_get = 0.0, 0.0
            for _ in range(rounds):
                t = time.perf_counter()
                for first in range(0, blocks, batch):
                    ks = keys[first : first + batch]
                    codes = c.put_copy(ks, srcs[: len(ks)])
                    assert all(x == kvtier.StatusCode.OK for x in codes), codes
                py_put = max(py_put, blocks * block / (time.perf_counter() - t) / 1e9)
                t = time.perf_counter()
                for first in range(0, blocks, batch):
                    ks = keys[first : first + batch]
                    codes = c.get_copy_into(ks, dsts[: len(ks)])
                    assert all(x == kvtier.StatusCode.OK for x in codes), codes
                py_get = max(py_get, blocks * block / (time.perf_counter() - t) / 1e9)
                c.remove(keys)
            cpp = subprocess.run(
                [str(build / "bench" / "kvtier-putget"), "--socket", d.socket, "--namespace",
                 "cpp-bench", "--block-bytes", str(block), "--batch", str(batch), "--blocks",
                 str(blocks), "--rounds", str(rounds)],
                capture_output=True, text=True, check=True).stdout.split()
            cpp_put, cpp_get = float(cpp[1]), float(cpp[3])
            limit = best(memcpy, rounds)
            rows.append((block, batch, limit, cpp_put, py_put, cpp_get, py_get))
        c.close()

    print(f"Python client vs C++ client, same kvtierd, same run ({os.cpu_count()} CPUs)")
    print(f"{'block':>8} {'batch':>5} {'copy':>8} | {'C++ put':>8} {'Py put':>8} {'Py/C++':>6}"
          f" | {'C++ get':>8} {'Py get':>8} {'Py/C++':>6} | {'C++/copy put,get':>18}")
    for block, batch, limit, cp, pp, cg, pg in rows:
        size = f"{block >> 20} MiB" if block >= 1 << 20 else f"{block >> 10} KiB"
        print(f"{size:>8} {batch:>5} {limit:7.2f}G | {cp:7.2f}G {pp:7.2f}G {pp / cp:6.2f}"
              f" | {cg:7.2f}G {pg:7.2f}G {pg / cg:6.2f} | {cp / limit:8.2f} {cg / limit:8.2f}")
    print("GB/s = 1e9 bytes/s; target: Python >= 0.9x C++ at 2 MiB, batch 64")
    return 0


if __name__ == "__main__":
    sys.exit(main())
