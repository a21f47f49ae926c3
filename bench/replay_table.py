"""The policy table of docs/cache-policy.md: every trace through kvtier-replay (the daemon's own
tier code) at total capacities that are percentages of the trace's unique blocks, DRAM a fifth
of it and SSD the rest, for each policy, beside Belady's MIN at the same total capacity.

    python3 bench/replay_table.py ../shared/traces/*.jsonl [--percent 1,5,10,20,50]
        [--policies reuse,lru] [--replay build/bench/kvtier-replay]

Columns: usable-prefix hit ratio and its fraction of MIN per policy, and SSD writes per SSD hit.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def replay(tool: str, trace: str, dram: int, ssd: int, policy: str) -> dict:
    out = subprocess.run([tool, trace, "--dram-blocks", str(dram), "--ssd-blocks", str(ssd),
                          "--policy", policy, "--json"], capture_output=True, text=True, check=True)
    return json.loads(out.stdout)


def unique_blocks(trace: str) -> int:
    seen: set[int] = set()
    with open(trace) as f:
        for line in f:
            if line.strip():
                seen.update(json.loads(line)["hash_ids"])
    return len(seen)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("traces", nargs="+")
    ap.add_argument("--percent", default="1,5,10,20,50")
    ap.add_argument("--policies", default="reuse,lru")
    ap.add_argument("--replay", default=str(ROOT / "build" / "bench" / "kvtier-replay"))
    a = ap.parse_args()
    policies = a.policies.split(",")
    head = "| trace | capacity | MIN | " + " | ".join(
        f"{p} (of MIN) | {p} writes/SSD hit" for p in policies) + " |"
    print(head)
    print("|" + " --- |" * (3 + 2 * len(policies)))
    for trace in a.traces:
        unique = unique_blocks(trace)
        for pct in (float(p) for p in a.percent.split(",")):
            total = max(2, int(unique * pct / 100))
            dram = max(1, total // 5)
            cells = []
            bound = 0.0
            for policy in policies:
                r = replay(a.replay, trace, dram, total - dram, policy)
                bound = r["min_usable_prefix_hit_ratio"]
                ratio = r["usable_prefix_hit_ratio"]
                frac = ratio / bound if bound else 0.0
                wph = (f"{r['ssd_write_blocks'] / r['ssd_hits']:.1f}" if r["ssd_hits"]
                       else f"({r['ssd_write_blocks']} writes, no hit)")
                cells += [f"{ratio:.3f} ({frac:.2f})", wph]
            name = os.path.basename(trace).removesuffix(".jsonl")
            print(f"| {name} | {pct:g}% | {bound:.3f} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
