#!/usr/bin/env python3
"""Time to first token of a 2,048-token prompt with llama.cpp: recompute vs kvtier hits.

The request is a stored 2,048-token prompt plus one new token (the next turn of a chat, or
the same prompt asked again): its first token's logits need the KV of the 2,048 tokens and one
decode step. Four ways to get there, each timed from "request in" to "logits out":

  recompute            prefill all 2,049 tokens (n_batch 512)
  kvtier DRAM hit      LlamaKVStore.restore (keys salted with the context's layout, which
                       it knows from its store; match_prefix, acquire of the blocks, join the
                       blocks straight from the shared pool, verify,
                       llama_state_seq_set_data), then decode the new token
  kvtier SSD hit       the same after `kvtierctl evict --tier dram`: acquire promotes the
                       blocks from the encrypted SSD tier (no prefetch)
  in-memory restore    llama_state_seq_set_data from the state already in this process's RAM,
                       then decode the new token: the limit of any restore

All four produce bit-identical logits (checked). Prints a table of medians with ratios, the
split of a DRAM hit, and the size of a stored block (exactly its KV bytes: a power of two for
the default shape, one pool slot exactly). Starts its own kvtierd (kvtier.testing.Daemon, with an SSD tier) unless
--socket is given (then no SSD row: evicting needs the admin socket of your own daemon), and
writes a random-weight llama model of the given shape unless --model is given.

    KVTIER_LIBKVCLIENT=build/libkvclient/libkvclient.so \\
        build/venv/bin/python python/examples/ttft.py [--runs 5] [--model PATH]
"""

from __future__ import annotations

import argparse
import ctypes
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable, Dict, List, Optional

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE.parent), str(HERE.parent / "tests")]

import llama_cpp  # noqa: E402

import kvtier  # noqa: E402
from kvtier import llama_state as ls  # noqa: E402
from kvtier.llama_cpp import LAYOUT_KEY, LlamaKVStore, llama_namespace, piece_keys  # noqa: E402
from kvtier.testing import Daemon  # noqa: E402

# The random-weight GGUF writer and the thin llama.cpp wrappers the tests use.
import llama_model as lm  # noqa: E402

MiB = 1 << 20


def median_time(fn: Callable[[], None], runs: int, before: Callable[[], None]) -> float:
    """Median wall time of fn() over `runs`, each after before() and a short pause.

    The pause lets llama.cpp's worker threads, which spin for a while after a decode, go
    idle, as they are when a request arrives; back to back, on few cores they would steal
    the CPU from kvtierd's event loop and this process's first kvtier call."""
    times = []
    for _ in range(runs):
        before()
        time.sleep(0.05)
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def push_to_ssd(d: Daemon, client: kvtier.Client, keys: List[bytes]) -> None:
    """Gets `keys` written to the SSD tier, then drops their DRAM copies.

    kvtierd writes dirty blocks to SSD (least recently used first) once dirty bytes pass
    spill.demote_above (0.75) of the pool, until they are below it again; so fill the rest
    of the pool with throwaway blocks of another namespace (the pool must be >= 4x the
    blocks for all of them to go), wait for the demotions, and evict DRAM, which keeps
    blocks that have an SSD copy and drops the others (the filler)."""
    s = client.stats()
    filler = kvtier.Client(d.socket, "ttft-filler")
    n = (s.pool_bytes - s.used_bytes) // MiB - 2
    filler.put_copy([os.urandom(32) for _ in range(n)], [bytes(MiB)] * n)
    end = time.monotonic() + 120
    while client.stats().dirty_bytes > 0.75 * s.pool_bytes:
        if time.monotonic() > end:
            raise RuntimeError("kvtierd did not demote blocks to SSD")
        time.sleep(0.05)
    filler.close()
    d.ctl("evict", "--tenant", "test", "--tier", "dram")
    tiers = client.match_prefix(keys).tiers
    if len(tiers) != len(keys) or set(tiers) != {kvtier.Tier.SSD}:
        raise RuntimeError("only %d of %d blocks reached SSD" % (tiers.count(kvtier.Tier.SSD),
                                                                  len(keys)))


def fs_type(path: Path) -> str:
    """The file system type of `path` (from /proc/mounts), e.g. ext4 or tmpfs."""
    best, kind = "", "?"
    try:
        for line in Path("/proc/mounts").read_text().splitlines():
            mnt, typ = line.split()[1:3]
            if str(path.resolve()).startswith(mnt) and len(mnt) > len(best):
                best, kind = mnt, typ
    except OSError:
        pass
    return kind


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--socket", help="use this kvtierd (default: start one)")
    ap.add_argument("--model", help="a GGUF model (default: write a random one)")
    ap.add_argument("--layers", type=int, default=8)
    ap.add_argument("--width", type=int, default=1024)
    ap.add_argument("--heads", type=int, default=8)
    # The defaults keep Llama-3-8B's proportions (GQA 4:1, FFN 3.5x the width) at 1/4 of its
    # width and 1/4 of its layers, so compute per byte of KV is of the same order as there.
    ap.add_argument("--kv-heads", type=int, default=2)
    ap.add_argument("--ff", type=int, default=3584)
    ap.add_argument("--vocab", type=int, default=32000)
    ap.add_argument("--dtype", choices=["f16", "f32"], default="f16")
    ap.add_argument("--tokens", type=int, default=2048, help="prompt length (stored)")
    ap.add_argument("--block", type=int, default=256, help="block size in tokens")
    ap.add_argument("--n-batch", type=int, default=512)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--flash-attn", action="store_true")
    ap.add_argument("--runs", type=int, default=5)
    args = ap.parse_args()
    if args.tokens % args.block or args.n_batch % args.block:
        ap.error("--tokens and --n-batch must be multiples of --block (block-aligned batches)")

    tmp = Path(tempfile.mkdtemp(prefix="kvtier-ttft-"))
    daemon: Optional[Daemon] = None
    try:
        model_path = args.model
        if model_path is None:
            cfg = lm.TinyLlamaConfig(n_layer=args.layers, n_embd=args.width, n_head=args.heads,
                                     n_head_kv=args.kv_heads, n_ff=args.ff, n_vocab=args.vocab,
                                     n_ctx_train=max(4096, args.tokens + 1), dtype=args.dtype)
            model_path = str(tmp / "random-llama.gguf")
            print("writing a random %d-layer, %d-wide %s llama model ..."
                  % (args.layers, args.width, args.dtype), file=sys.stderr)
            lm.write_tiny_llama_gguf(model_path, cfg)

        llm = lm.open_llama(model_path, flash_attn=args.flash_attn, n_ctx=args.tokens + 64,
                            n_batch=args.n_batch, n_threads=args.threads)
        ctx = lm.ctx_of(llm)
        n_vocab = lm.n_vocab_of(llm)
        T, N = args.tokens, args.block
        prompt = lm.random_tokens(T + 1, seed=11, n_vocab=n_vocab)  # T stored + 1 new token

        # --- recompute (and the reference logits) ---
        outs: Dict[str, List[bytes]] = {}  # every run's logits, per path

        def recompute() -> None:
            lm.prefill(llm, prompt, args.n_batch)
            outs.setdefault("recompute", []).append(lm.last_logits(llm))

        lm.prefill(llm, prompt[:256], args.n_batch)  # warm up threads and buffers
        t_recompute = median_time(recompute, max(1, min(args.runs, 3)),
                                  before=lambda: lm.seq_rm(llm))
        reference = outs["recompute"][0]

        # the stored state: the prompt without its new token
        lm.seq_rm(llm)
        lm.prefill(llm, prompt[:T], args.n_batch)
        state = lm.get_seq_state(llm)
        state_buf = (ctypes.c_uint8 * len(state)).from_buffer_copy(state)
        piece = ls.piece_size(ls.parse_seq_state(state).layout, N)  # bytes of a stored block

        # --- in-memory restore: the limit ---
        def in_memory() -> None:
            n = llama_cpp.llama_state_seq_set_data(ctx, state_buf, len(state), 0)
            assert n == len(state)
            outs.setdefault("in-memory", []).append(lm.next_logits(llm, prompt[T], T))

        t_limit = median_time(in_memory, args.runs, before=lambda: lm.seq_rm(llm))

        # --- kvtier ---
        if args.socket:
            socket = args.socket
            print("no SSD row: evicting to SSD needs the admin socket of a daemon of our own",
                  file=sys.stderr)
        else:
            # A block is one pool slot: slabs at least as large as a block (blocks larger than
            # a slab take whole slabs), and a pool large enough that demoting every block of
            # the prompt to SSD stays under spill.demote_above (see push_to_ssd).
            slab = max(4 * MiB, 1 << (piece - 1).bit_length())
            pool = -(-max(128 * MiB, 6 * len(state)) // slab) * slab
            daemon = Daemon(dram_bytes=pool, ssd_bytes=max(512 * MiB, 2 * pool), slab_bytes=slab,
                            max_block_bytes=slab, spill_max_block_bytes=slab,
                            segment_bytes=128 * MiB)
            socket = daemon.socket
        ns = llama_namespace(llm, model_path, N)
        kv = LlamaKVStore(kvtier.Client(socket, ns), llm, block_tokens=N)
        stored = kv.store(prompt[:T])
        print("stored %d blocks of %d tokens (%.1f MiB of KV) in %s"
              % (stored, N, len(state) / MiB, socket), file=sys.stderr)
        if kv.layout is None:  # the store learnt it from the sequence's state
            raise RuntimeError("store() did not learn the context's layout")
        keys = piece_keys(prompt[:T], N, kv.layout)
        with kv.client.acquire([LAYOUT_KEY, *keys]) as leases:
            if leases.prefix != 1 + T // N:
                raise RuntimeError("the layout block or a block is missing after store()")
            block_sizes = {leases.size(i) for i in range(1, len(leases))}
            layout_size = leases.size(0)
        slot_bytes = kv.client.stats().used_bytes  # pool slots of the blocks + the layout block
        if block_sizes != {piece}:
            raise AssertionError("stored blocks of %s bytes, expected %d" % (block_sizes, piece))
        splits: List[kvtier.llama_cpp.RestoreTimings] = []
        evals: List[float] = []

        path = ["warm-up"]

        def hit() -> None:
            n = kv.restore(prompt)
            assert n == T, "restored %d of %d tokens" % (n, T)
            t = time.perf_counter()
            outs.setdefault(path[0], []).append(lm.next_logits(llm, prompt[T], T))
            evals.append(time.perf_counter() - t)
            splits.append(kv.last_restore)

        hit()  # warm: the restore buffer, the pool pages of this process
        splits.clear()
        evals.clear()
        path[0] = "DRAM hit"
        t_dram = median_time(hit, args.runs, before=lambda: lm.seq_rm(llm))
        dram_splits, dram_evals = list(splits), list(evals)

        t_ssd: Optional[float] = None
        ssd_splits: List[kvtier.llama_cpp.RestoreTimings] = []
        ssd_evals: List[float] = []
        if daemon is not None:
            push_to_ssd(daemon, kv.client, keys)

            def evict() -> None:
                lm.seq_rm(llm)
                daemon.ctl("evict", "--tenant", "test", "--tier", "dram")  # type: ignore
                assert set(kv.client.match_prefix(keys).tiers) == {kvtier.Tier.SSD}

            splits.clear()
            evals.clear()
            path[0] = "SSD hit"
            t_ssd = median_time(hit, args.runs, before=evict)
            ssd_splits, ssd_evals = list(splits), list(evals)

        # --- report ---
        for name, logits in outs.items():
            if any(x != reference for x in logits):
                raise AssertionError("%s gave other logits than the recompute" % name)
        model_desc = ("%s (%d-layer, %d-wide)" % (Path(model_path).name, args.layers, args.width)
                      if args.model is None else model_path)
        print()
        print("TTFT: %d-token stored prompt + 1 new token; model %s, %.1f MiB of KV, "
              "blocks of %d tokens, flash attention %s, %d threads; median of %d runs"
              % (T, model_desc, len(state) / MiB, N, "on" if args.flash_attn else "off",
                 args.threads, args.runs))
        rows = [("recompute (prefill)", t_recompute), ("kvtier DRAM hit", t_dram)]
        if t_ssd is not None:
            rows.append(("kvtier SSD hit (promote)", t_ssd))
        rows.append(("in-memory restore (limit)", t_limit))
        print("%-27s %10s %14s %16s" % ("path", "TTFT ms", "vs recompute", "of the limit"))
        for name, t in rows:
            print("%-27s %10.1f %13.1fx %15.2fx" % (name, t * 1e3, t_recompute / t, t_limit / t))
        print("every run of every path gave bit-identical logits (%d runs)"
              % sum(len(x) for x in outs.values()))
        print("stored block: %d bytes (%s) for %d tokens x %d bytes of KV per token, "
              "exactly its KV; plus one %d-byte layout block per namespace; pool slots in use "
              "after the store: %d bytes for %d bytes stored"
              % (piece, "a power of two" if piece & (piece - 1) == 0 else "not a power of two",
                 N, piece // N, layout_size, slot_bytes, (T // N) * piece + layout_size))
        if daemon is not None:
            print("SSD tier: %s (%s)" % (daemon.dir / "spill", fs_type(daemon.dir)))

        def med(xs: List[float]) -> float:
            return statistics.median(xs) * 1e3

        def split(name: str, xs: List[kvtier.llama_cpp.RestoreTimings], ev: List[float]) -> None:
            print("%s hit split (median ms): keys %.2f, match_prefix %.2f, acquire %.2f, "
                  "join %.2f, verify+release %.2f, set_seq_state %.2f, eval of the new token %.2f"
                  % (name, med([s.keys for s in xs]), med([s.match for s in xs]),
                     med([s.acquire for s in xs]), med([s.join for s in xs]),
                     med([s.verify for s in xs]), med([s.set_state for s in xs]), med(ev)))

        print()
        split("DRAM", dram_splits, dram_evals)
        if ssd_splits:
            split("SSD", ssd_splits, ssd_evals)
        print("targets: DRAM hit >= 100x faster than recompute: %s (%.0fx); "
              ">= 0.5x of the in-memory limit: %s (%.2fx)"
              % ("yes" if t_recompute / t_dram >= 100 else "NO", t_recompute / t_dram,
                 "yes" if t_limit / t_dram >= 0.5 else "NO", t_limit / t_dram))
        return 0
    finally:
        if daemon is not None:
            daemon.close()
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
