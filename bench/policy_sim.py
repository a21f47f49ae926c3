"""Two-tier (DRAM + SSD log) KV block cache simulator for issue 14's policy research.

    python3 bench/policy_sim.py TRACE.jsonl ... [--percent 1,5,10,20,50] [--policy NAME ...]

Model (the daemon's, see docs/cache-policy.md): per request the engine looks its blocks up in
prefix order; the usable prefix is the leading run of blocks cached in DRAM or on SSD; SSD hits
in it are promoted (copied) into DRAM, the SSD copy stays. Then the engine puts the request's
blocks past the usable prefix; the cache may refuse them. Capacity C = p% of the trace's unique
blocks, DRAM D = C // 5, SSD S = C - D. The SSD is a log: blocks are appended and reclaimed
oldest-first; a block leaves DRAM either written to the SSD (a demotion, one write) or dropped.

Prints, per trace and capacity, Belady's MIN (from build/bench/kvtier-trace-bounds, one tier of
C blocks; computed here if the tool is missing) and each policy's usable-prefix ratio, its
fraction of MIN, DRAM / SSD hits (usable ones), SSD writes and writes per SSD hit.
"""

from __future__ import annotations

import argparse
import collections
import heapq
import json
import os
import subprocess
from collections import OrderedDict
from pathlib import Path

BOUNDS = Path(__file__).resolve().parents[1] / "build" / "bench" / "kvtier-trace-bounds"


def load(path: str) -> list[tuple[int, list[int]]]:
    out = []
    with open(path) as f:
        for line in f:
            if line.strip():
                r = json.loads(line)
                out.append((int(r.get("timestamp", 0)), list(r["hash_ids"])))
    return out


# ---------------------------------------------------------------------------------------------
# Belady MIN with bypass, one tier (fallback when kvtier-trace-bounds is absent)

def belady(trace, cap: int) -> float:
    seq = [b for _, r in trace for b in r]
    nxt = [0] * len(seq)
    last: dict[int, int] = {}
    inf = len(seq) + 1
    for i in range(len(seq) - 1, -1, -1):
        nxt[i] = last.get(seq[i], inf)
        last[seq[i]] = i
    cache: dict[int, int] = {}
    heap: list[tuple[int, int]] = []
    usable = i = 0
    for _, r in trace:
        pre = True
        for b in r:
            hit = b in cache
            pre = pre and hit
            usable += pre
            n = nxt[i]
            i += 1
            if hit:
                cache[b] = n
                heapq.heappush(heap, (-n, b))
            elif n < inf and cap:
                if len(cache) >= cap:
                    while True:
                        nn, v = heap[0]
                        if cache.get(v) == -nn:
                            break
                        heapq.heappop(heap)
                    if -nn <= n:
                        continue
                    heapq.heappop(heap)
                    del cache[v]
                cache[b] = n
                heapq.heappush(heap, (-n, b))
    return usable / len(seq) if seq else 0.0


def min_ratio(path: str, pct: float, trace, cap: int) -> float:
    if BOUNDS.exists():
        try:
            out = subprocess.run([str(BOUNDS), path, "--percent", f"{pct:g}"],
                                 capture_output=True, text=True, check=True).stdout
            row = next(line for line in out.splitlines() if line.startswith(f"| {pct:g}%"))
            return float(row.split("|")[3])
        except (subprocess.CalledProcessError, StopIteration, ValueError, OSError):
            pass
    return belady(trace, cap)


# ---------------------------------------------------------------------------------------------
# Tiers and counters shared by the policies

class Tiers:
    """DRAM (an OrderedDict, order owned by the policy) and the SSD log (write order)."""

    def __init__(self, cap: int) -> None:
        self.D = cap // 5
        self.S = cap - self.D
        self.dram: OrderedDict[int, None] = OrderedDict()
        self.ssd: OrderedDict[int, None] = OrderedDict()
        self.dram_hits = self.ssd_hits = self.writes = self.usable = self.blocks = 0

    def cached(self, b: int) -> bool:
        return b in self.dram or b in self.ssd


class Policy:
    name = "?"

    def __init__(self, cap: int) -> None:
        self.t = Tiers(cap)
        self.now = 0  # trace clock (ms)

    def run(self, trace) -> Tiers:
        t = self.t
        for ts, r in trace:
            self.now = ts
            n = 0
            for b in r:
                if b in t.dram:
                    t.dram_hits += 1
                elif b in t.ssd:
                    t.ssd_hits += 1
                else:
                    break
                n += 1
            t.usable += n
            t.blocks += len(r)
            self.request(r, n)
        return t

    def request(self, r: list[int], n: int) -> None:
        """r: the request's keys in prefix order; r[:n] is the usable prefix (cached)."""
        raise NotImplementedError


# ---------------------------------------------------------------------------------------------
# lru: kvtier today

class Lru(Policy):
    """Every put admitted to DRAM, DRAM LRU (touched in prefix order), every block leaving DRAM
    that has no SSD copy is written to the SSD log; SSD reclaim drops the oldest write."""
    name = "lru"

    def _ssd_write(self, b: int) -> None:
        t = self.t
        if t.S <= 0:
            return
        if len(t.ssd) >= t.S:
            t.ssd.popitem(last=False)
        t.ssd[b] = None
        t.writes += 1

    def _dram_insert(self, b: int) -> None:
        t = self.t
        if t.D <= 0:
            if b not in t.ssd:
                self._ssd_write(b)
            return
        if len(t.dram) >= t.D:
            v, _ = t.dram.popitem(last=False)
            if v not in t.ssd:
                self._ssd_write(v)
        t.dram[b] = None

    def request(self, r, n):
        t = self.t
        for b in r[:n]:
            if b in t.dram:
                t.dram.move_to_end(b)
            else:
                self._dram_insert(b)  # promotion; the SSD copy stays
        for b in r[n:]:
            if b in t.dram:
                t.dram.move_to_end(b)
            elif b not in t.ssd:
                self._dram_insert(b)


# ---------------------------------------------------------------------------------------------
# Frequency sketch: an idealised count-min (exact counts, 4-bit saturating, halved every
# `sample` increments, as TinyLFU / Caffeine do with sample = 10 x capacity)

class Sketch:
    def __init__(self, sample: int) -> None:
        self.f: dict[int, int] = {}
        self.n = 0
        self.sample = max(16, sample)

    def get(self, b: int) -> int:
        return self.f.get(b, 0)

    def inc(self, b: int) -> None:
        v = self.f.get(b, 0)
        if v < 15:
            self.f[b] = v + 1
        self.n += 1
        if self.n >= self.sample:
            self.n //= 2
            self.f = {k: v >> 1 for k, v in self.f.items() if v > 1}


# ---------------------------------------------------------------------------------------------
# Candidate: prefix-aware exclusive tiers with proven-reuse SSD admission

class Pra(Policy):
    """See docs/cache-policy.md. Flags select the variants measured there."""
    name = "pra"

    def __init__(self, cap: int, leaf_first=True, clean_first=True, admit="proven",
                 second_chance=True, sample_mul=10, parent_check=False, free_admit=True,
                 adaptive=False, admit_cold_head=False, admit_family=False, name=None) -> None:
        super().__init__(cap)
        self.leaf_first, self.clean_first, self.admit = leaf_first, clean_first, admit
        self.second_chance, self.parent_check, self.free_admit = second_chance, parent_check, free_admit
        self.adaptive = adaptive
        self.admit_cold_head = admit_cold_head
        self.admit_family = admit_family
        self.R = self.A = 0.0            # regrets: rejected-then-reused, admitted-then-unused
        self.ghost: OrderedDict[int, None] = OrderedDict()  # rejected unproven keys, <= C
        self.gcap = max(1, cap)
        self.unproven: dict[int, bool] = {}
        self.last_age = 0
        self.sk = Sketch(sample_mul * cap)
        self.clean: OrderedDict[int, None] = OrderedDict()  # DRAM blocks with an SSD copy
        self.dirty: OrderedDict[int, None] = OrderedDict()  # DRAM blocks without one
        self.hit: dict[int, bool] = {}   # SSD block hit since its write (reference bit)
        self.parent: dict[int, int] = {}  # parent key of a cached block (-1 for a root)
        if name:
            self.name = name

    # -- SSD log
    def _reclaim_one(self) -> None:
        t = self.t
        while True:
            h, _ = t.ssd.popitem(last=False)
            if self.second_chance and self.hit.get(h):
                self.hit[h] = False
                t.ssd[h] = None  # rewritten at the tail
                t.writes += 1
                continue
            if self.unproven.pop(h, False) and not self.hit.get(h):
                self.A += 1
            self.hit.pop(h, None)
            if h in self.clean:  # its DRAM copy is now the only one
                del self.clean[h]
                self.dirty[h] = None
            return

    def _ssd_write(self, b: int) -> None:
        t = self.t
        if t.S <= 0:
            return
        if len(t.ssd) >= t.S:
            self._reclaim_one()
        t.ssd[b] = None
        self.hit[b] = False
        t.writes += 1
        if self._mark_unproven:
            self.unproven[b] = True
            self._mark_unproven = False

    _mark_unproven = False

    def _admit_ssd(self, b: int) -> bool:
        t = self.t
        if t.S <= 0:
            return False
        if self.parent_check:
            p = self.parent.get(b, -1)
            if p != -1 and not (p in t.ssd if self.parent_check == "ssd" else t.cached(p)):
                return False
        if self.free_admit and len(t.ssd) < t.S:
            return True
        if self.admit == "all":
            return True
        if self.admit == "oracle":  # research only: admit iff the block is requested again
            return bool(self.future.get(b))
        f = self.sk.get(b)
        if self.admit == "proven":
            if f >= 2:
                return True
            if self.admit_family:
                p = self.parent.get(b, -1)
                if p != -1 and self.sk.get(p) >= 2:
                    return True
            if self.admit_cold_head:
                h = next(iter(t.ssd))
                if self.sk.get(h) < 2 and not self.hit.get(h):
                    return True
            if self.adaptive:
                p = self.R / (self.R + self.A) if self.R + self.A > 0 else 1.0
                if (b * 2654435761) % 4096 < p * 4096:
                    self._mark_unproven = True
                    return True
                self.ghost[b] = None
                if len(self.ghost) > self.gcap:
                    self.ghost.popitem(last=False)
            return False
        if self.admit == "vs-head":
            h = next(iter(t.ssd))
            return f > self.sk.get(h)
        if self.admit == "proven-vs-head":
            h = next(iter(t.ssd))
            return f >= 2 and f > self.sk.get(h)
        raise ValueError(self.admit)

    # -- DRAM
    def _dram_evict(self) -> None:
        t = self.t
        if self.clean_first and self.clean:
            v, _ = self.clean.popitem(last=False)
        else:
            # the oldest of the two lists
            if self.clean and (not self.dirty or self._older(next(iter(self.clean)), next(iter(self.dirty)))):
                v, _ = self.clean.popitem(last=False)
            else:
                v, _ = self.dirty.popitem(last=False)
                if self._admit_ssd(v):
                    self._ssd_write(v)
        del t.dram[v]
        if v not in t.dram and not t.cached(v):
            self.parent.pop(v, None)

    def _older(self, a, b) -> bool:
        return self.stamp.get(a, 0) < self.stamp.get(b, 0)

    def _dram_put(self, b: int, clean: bool) -> None:
        t = self.t
        if t.D <= 0:
            if not clean and self._admit_ssd(b):
                self._ssd_write(b)
            return
        while len(t.dram) >= t.D:
            if self.clean_first and self.clean:
                v, _ = self.clean.popitem(last=False)
            elif self.dirty:
                v, _ = self.dirty.popitem(last=False)
                if self._admit_ssd(v):
                    self._ssd_write(v)
            else:
                v, _ = self.clean.popitem(last=False)
            del t.dram[v]
        t.dram[b] = None
        (self.clean if clean else self.dirty)[b] = None

    def _touch(self, b: int) -> None:
        if b in self.clean:
            self.clean.move_to_end(b)
        elif b in self.dirty:
            self.dirty.move_to_end(b)
        self.t.dram.move_to_end(b)

    future: dict = {}

    def run(self, trace) -> Tiers:
        if self.admit == "oracle":
            self.future = collections.defaultdict(collections.deque)
            for _, r in trace:
                for b in r:
                    self.future[b].append(1)
        return super().run(trace)

    def request(self, r, n):
        t = self.t
        if self.admit == "oracle":
            for b in r:
                self.future[b].popleft()
        for i, b in enumerate(r):
            if self.adaptive:
                if b in self.ghost and not t.cached(b):
                    del self.ghost[b]
                    self.R += 1
                if self.sk.n < self.last_age:  # the sketch aged: age the regrets with it
                    self.R /= 2
                    self.A /= 2
                self.last_age = self.sk.n
            self.sk.inc(b)
            self.parent[b] = r[i - 1] if i else -1
        order = range(len(r) - 1, -1, -1) if self.leaf_first else range(len(r))
        for i in order:
            b = r[i]
            if i < n:  # usable hit
                if b in t.ssd:
                    self.hit[b] = True
                if b in t.dram:
                    self._touch(b)
                else:
                    self._dram_put(b, clean=True)  # promotion
            else:
                if b in t.dram:
                    self._touch(b)
                elif b in t.ssd:
                    pass
                else:
                    self._dram_put(b, clean=False)


POLICIES = {
    "lru": lambda c: Lru(c),
    # the recommendation (docs/cache-policy.md)
    "pra": lambda c: Pra(c, leaf_first=False, name="pra"),
    # variants, for the record
    "pra-leaf-first": lambda c: Pra(c, leaf_first=True, name="pra-leaf-first"),
    "pra-no-second-chance": lambda c: Pra(c, leaf_first=False, second_chance=False,
                                          name="pra-no-second-chance"),
    "pra-vs-head": lambda c: Pra(c, leaf_first=False, admit="vs-head", name="pra-vs-head"),
    "pra-adaptive": lambda c: Pra(c, leaf_first=False, adaptive=True, name="pra-adaptive"),
    "pra-family": lambda c: Pra(c, leaf_first=False, admit_family=True, name="pra-family"),
    "pra-lru-dram": lambda c: Pra(c, leaf_first=False, clean_first=False, name="pra-lru-dram"),
    # not online: SSD admission by the future (is the block requested again?), for evidence
    "oracle-admit": lambda c: Pra(c, leaf_first=False, admit="oracle", free_admit=False,
                                  name="oracle-admit"),
}
DEFAULT = ["lru", "pra"]


def fmt_row(name, t, bound):
    v = t.usable / t.blocks if t.blocks else 0.0
    wph = f"{t.writes / t.ssd_hits:.1f}" if t.ssd_hits else "(no hit)"
    return (f"| {name} | {v:.3f} | {v / bound if bound else 0:.2f} | {t.dram_hits:,} / {t.ssd_hits:,} "
            f"| {t.writes:,} | {wph} |")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("traces", nargs="+")
    ap.add_argument("--percent", default="1,5,10,20,50")
    ap.add_argument("--policy", nargs="*", default=None)
    a = ap.parse_args()
    names = a.policy or DEFAULT
    for path in a.traces:
        trace = load(path)
        unique = len({b for _, r in trace for b in r})
        print(f"\n### {os.path.basename(path)}: {len(trace)} requests, "
              f"{sum(len(r) for _, r in trace)} block requests, {unique} unique blocks\n")
        print("| capacity | DRAM + SSD | MIN | policy | usable prefix | of MIN | hits DRAM / SSD "
              "| SSD writes | writes per SSD hit |")
        print("| --- | --- | --- | --- | --- | --- | --- | --- | --- |")
        for pct in [float(p) for p in a.percent.split(",")]:
            cap = int(unique * pct / 100)
            bound = min_ratio(path, pct, trace, cap)
            for name in names:
                t = POLICIES[name](cap).run(trace)
                print(f"| {pct:g}% | {t.D} + {t.S} | {bound:.3f} " + fmt_row(name, t, bound))


if __name__ == "__main__":
    main()
