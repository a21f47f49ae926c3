"""GPU check of kvtier.paged, the page mover under the vLLM connector (and the next engines):
runs with plain PyTorch (no vLLM needed) against the kvtierd that tests/gpu/run.sh started.

    python3 tests/gpu/paged_check.py SOCKET

A 1 GiB KV allocation on the GPU laid out as vLLM's LBNHC (32 layers x 512 blocks x 64 KiB
pages, Llama-3-8B's page for 16 tokens) is filled with random bytes and checked:
  1. stores: 125 blocks (2000 tokens, 4000 pages) go to kvtierd through CUDA IPC, behind the
     event the engine's stream records;
  2. in-step load into other blocks: the current stream waits per layer on kvtierd's events,
     and each layer's comparison is queued on that stream right after its wait (no host
     synchronization before it);
  3. async load (no events): bit-exact once reported finished;
  4. a page removed from kvtierd: the load reports exactly that block and every later one;
  5. speed: the in-step load and the store against the bare pinned-host <-> GPU copy of the
     same bytes (the PCIe limit they compete with), as ratios.
Exit status 0 when every check holds, 1 otherwise.
"""

from __future__ import annotations

import hashlib
import os
import sys
import time

import torch

import kvtier
from kvtier.paged import PagedKV, PageLayout, Transfer

L, BLOCKS, PAGE = 32, 512, 64 << 10
N = 125                       # blocks moved: 2000 tokens of 16
NS = "gpu-paged-check"
failures: list[str] = []


def check(ok: bool, what: str) -> None:
    print(f"{'ok  ' if ok else 'FAIL'} {what}")
    if not ok:
        failures.append(what)


def key(block_hash: bytes, layer: int) -> bytes:
    return hashlib.blake2b(block_hash + layer.to_bytes(4, "little"), digest_size=32).digest()


def pages(kv: torch.Tensor, layer: int, first: int, n: int) -> torch.Tensor:
    return kv.view(L, BLOCKS, PAGE)[layer, first : first + n]


def main() -> int:
    # KVT_PAGED_CHECK_CPU=1 runs the same checks on a CPU tensor (client copies, no speed
    # table): a dry run of this script where there is no GPU.
    cpu = os.environ.get("KVT_PAGED_CHECK_CPU") == "1"
    if not cpu and not torch.cuda.is_available():
        print("no GPU")
        return 77
    socket = sys.argv[1]
    device = "cpu" if cpu else "cuda"
    kv = torch.randint(0, 256, (L * BLOCKS * PAGE,), dtype=torch.uint8, device=device)
    layout = PageLayout([l * BLOCKS * PAGE for l in range(L)], PAGE, PAGE)
    p = PagedKV(kv, layout, socket=socket, namespace=NS, key_fn=key, retry_seconds=0)
    hashes = [os.urandom(32) for _ in range(N)]

    # 1. Stores (the background thread's offload waits for the event this stream records).
    t0 = time.perf_counter()
    p.submit_stores([Transfer("store", hashes, list(range(N)))])
    p.drain()
    store_s = time.perf_counter() - t0
    sent, _ = p.finished({"store"})
    check(sent == {"store"}, "stores of 4000 pages reported finished")
    with kvtier.Client(socket, NS) as c:
        check(c.match_prefix([key(h, l) for h in hashes for l in range(L)]).count == N * L,
              "every page is in kvtierd")

    # 2. In-step load into blocks 200.., each layer compared after the stream waits for it.
    def sync() -> None:
        if not cpu:
            torch.cuda.synchronize()

    def load_in_step(dst: int) -> tuple[set[int], float]:
        sync()
        t = time.perf_counter()
        failed = p.load([Transfer("load", hashes, list(range(dst, dst + N)))])
        for l in range(L):
            p.wait_for_layer(l)
        sync()
        return failed, time.perf_counter() - t

    kv.view(L, BLOCKS, PAGE)[:, 200 : 200 + N].zero_()
    sync()
    failed = p.load([Transfer("load", hashes, list(range(200, 200 + N)))])
    check(not failed, "in-step load: no load errors")
    # Each comparison is queued on the current stream right after that layer's wait, with no
    # host synchronization in between: it sees layer l only if event l orders it after the copy.
    same = []
    for l in range(L):
        p.wait_for_layer(l)
        same.append(torch.eq(pages(kv, l, 200, N), pages(kv, l, 0, N)).all())
    check(all(bool(x) for x in same), "in-step load: each layer bit-exact right after its event")

    # 3. Async load (reply once the bytes are in place) into blocks 350..
    kv.view(L, BLOCKS, PAGE)[:, 350 : 350 + N].zero_()
    p.submit_async_loads([Transfer("async", hashes, list(range(350, 350 + N)))])
    p.drain()
    _, recved = p.finished(set())
    check(recved == {"async"} and not p.take_load_errors(), "async load reported, no errors")
    check(all(torch.equal(pages(kv, l, 350, N), pages(kv, l, 0, N)) for l in range(L)),
          "async load: bit-exact")

    # 5. Speed, before the removal below: best of 5 against the bare copies of the same bytes.
    if not cpu:
        speed([load_in_step(200)[1] for _ in range(5)], store_s)

    # 4. A page gone since the match: that block and every later one are load errors.
    with kvtier.Client(socket, NS) as c:
        c.remove([key(hashes[10], 5)])
    failed, _ = load_in_step(200)
    check(failed == set(range(210, 200 + N)), "a removed page: blocks 10.. reported")

    return finish(p)


def speed(loads: list[float], store_s: float) -> None:
    nbytes = N * L * PAGE
    host = torch.empty(nbytes, dtype=torch.uint8, pin_memory=True)
    dev = torch.empty(nbytes, dtype=torch.uint8, device="cuda")

    def bare(dst: torch.Tensor, src: torch.Tensor) -> float:
        best = 1e9
        for _ in range(5):
            torch.cuda.synchronize()
            t = time.perf_counter()
            dst.copy_(src, non_blocking=True)
            torch.cuda.synchronize()
            best = min(best, time.perf_counter() - t)
        return best
    h2d, d2h = bare(dev, host), bare(host, dev)
    gb = nbytes / 1e9
    print(f"\n{'what':<34}{'GB/s':>8}{'limit GB/s':>12}{'ratio':>8}")
    print(f"{'load in step (4000 x 64 KiB)':<34}{gb / min(loads):>8.1f}{gb / h2d:>12.1f}"
          f"{h2d / min(loads):>8.2f}")
    print(f"{'store (first, incl. reserve)':<34}{gb / store_s:>8.1f}{gb / d2h:>12.1f}"
          f"{d2h / store_s:>8.2f}\n")


def finish(p: PagedKV) -> int:
    p.close()
    print("paged check:", "all passed" if not failures else f"{len(failures)} FAILED")
    return 0 if not failures else 1


if __name__ == "__main__":
    sys.exit(main())
