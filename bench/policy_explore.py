"""Quick exploration of cache-policy principles on request traces, before they go into the
daemon's tier code (issue 14). Python, block units, one tier, no bytes: for ideas, not for the
record (kvtier-trace-bounds and, later, kvtier-replay are the tools of record).

    python3 bench/policy_explore.py ../shared/traces/*.jsonl [--percent 1,5,10,20,50]

Prints each policy's usable-prefix hit ratio and its fraction of Belady's MIN (from
build/bench/kvtier-trace-bounds) per trace and capacity. Policies:
  lru       plain LRU (kvtier today, per size class)
  lru-leaf  LRU touching a request's blocks last-first, so a prefix's root is the most recent
            and leaves go first
  s3fifo    S3-FIFO: a small probationary FIFO, a main FIFO with reinsertion, a ghost queue
  tinylfu   lru-leaf order, and a new block replaces the LRU victim only if seen more often
            (counts halved every `window` x capacity accesses): scan resistance by admission
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import subprocess
from pathlib import Path
from typing import Iterable

BOUNDS = Path(__file__).resolve().parents[1] / "build" / "bench" / "kvtier-trace-bounds"


def load(path: str) -> list[list[int]]:
    with open(path) as f:
        return [json.loads(line)["hash_ids"] for line in f if line.strip()]


def usable_prefix_ratio(trace: list[list[int]], policy: "Policy") -> float:
    requests = usable = 0
    for r in trace:
        prefix = True
        for b in r:
            prefix = prefix and policy.has(b)
            usable += prefix
        requests += len(r)
        policy.request(r)
    return usable / requests if requests else 0.0


class Policy:
    def has(self, b: int) -> bool: ...
    def request(self, r: list[int]) -> None: ...


class Lru(Policy):
    def __init__(self, cap: int, leaf_first: bool = False) -> None:
        self.cap, self.leaf_first = cap, leaf_first
        self.order: collections.OrderedDict[int, None] = collections.OrderedDict()

    def has(self, b: int) -> bool:
        return b in self.order

    def request(self, r: list[int]) -> None:
        for b in (reversed(r) if self.leaf_first else r):
            if b in self.order:
                self.order.move_to_end(b)
            elif self.cap:
                if len(self.order) >= self.cap:
                    self.order.popitem(last=False)
                self.order[b] = None


class S3Fifo(Policy):
    def __init__(self, cap: int, small: float = 0.1) -> None:
        self.scap = max(1, int(cap * small))
        self.mcap = max(0, cap - self.scap)
        self.cap = cap
        self.small: collections.OrderedDict[int, None] = collections.OrderedDict()
        self.main: collections.OrderedDict[int, None] = collections.OrderedDict()
        self.ghost: collections.OrderedDict[int, None] = collections.OrderedDict()
        self.freq: dict[int, int] = {}

    def has(self, b: int) -> bool:
        return b in self.small or b in self.main

    def _evict_main(self) -> None:
        while self.main:
            b, _ = self.main.popitem(last=False)
            if self.freq.get(b, 0) > 0:
                self.freq[b] -= 1
                self.main[b] = None
            else:
                self.freq.pop(b, None)
                return

    def _evict_small(self) -> None:
        while self.small:
            b, _ = self.small.popitem(last=False)
            if self.freq.get(b, 0) > 0:
                if len(self.main) >= self.mcap:
                    self._evict_main()
                self.main[b] = None
                self.freq[b] = 0
            else:
                self.freq.pop(b, None)
                self.ghost[b] = None
                if len(self.ghost) > self.mcap:
                    self.ghost.popitem(last=False)
                return

    def request(self, r: list[int]) -> None:
        if not self.cap:
            return
        for b in r:
            if self.has(b):
                self.freq[b] = min(3, self.freq.get(b, 0) + 1)
            elif b in self.ghost:
                del self.ghost[b]
                if len(self.main) >= self.mcap:
                    self._evict_main()
                self.main[b] = None
                self.freq[b] = 0
            else:
                while len(self.small) >= self.scap and self.small:
                    self._evict_small()
                self.small[b] = None
                self.freq[b] = 0


class TinyLfu(Lru):
    def __init__(self, cap: int, window: int = 10) -> None:
        super().__init__(cap, leaf_first=True)
        self.freq: collections.Counter[int] = collections.Counter()
        self.seen, self.window = 0, max(100, window * cap)

    def request(self, r: list[int]) -> None:
        self.freq.update(r)
        self.seen += len(r)
        if self.seen >= self.window:
            self.freq = collections.Counter({k: v // 2 for k, v in self.freq.items() if v > 1})
            self.seen = 0
        for b in reversed(r):
            if b in self.order:
                self.order.move_to_end(b)
            elif self.cap:
                if len(self.order) >= self.cap:
                    victim = next(iter(self.order))
                    if self.freq[b] <= self.freq[victim]:
                        continue  # not admitted: the victim is at least as likely to be reused
                    self.order.popitem(last=False)
                self.order[b] = None


def min_ratio(path: str, pct: float) -> float:
    out = subprocess.run([str(BOUNDS), path, "--percent", f"{pct:g}"], capture_output=True,
                         text=True, check=True).stdout
    row = next(line for line in out.splitlines() if line.startswith(f"| {pct:g}%"))
    return float(row.split("|")[3])


def main(paths: Iterable[str], percents: list[float]) -> None:
    for path in paths:
        trace = load(path)
        unique = len({b for r in trace for b in r})
        print(f"\n{os.path.basename(path)}: {unique} unique blocks")
        print("| capacity | MIN | lru | lru-leaf | s3fifo | tinylfu |\n| --- | --- | --- | --- | --- | --- |")
        for pct in percents:
            cap = int(unique * pct / 100)
            bound = min_ratio(path, pct)
            cells = []
            for policy in (Lru(cap), Lru(cap, leaf_first=True), S3Fifo(cap), TinyLfu(cap)):
                v = usable_prefix_ratio(trace, policy)
                cells.append(f"{v:.3f} ({v / bound if bound else 0:.2f})")
            print(f"| {pct:g}% | {bound:.3f} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    ap = argparse.ArgumentParser()
    ap.add_argument("traces", nargs="+")
    ap.add_argument("--percent", default="1,5,10,20,50")
    a = ap.parse_args()
    main(a.traces, [float(p) for p in a.percent.split(",")])
