"""Test helper: a tiny random-weight llama model and thin llama.cpp wrappers.

Nothing here downloads anything. ``write_tiny_llama_gguf`` writes a small
llama-architecture GGUF with the ``gguf`` package (deterministic weights from
a fixed seed), ``open_llama`` opens it with ``llama_cpp.Llama`` and the other
helpers drive the low-level C API directly with token ids (never text), so
the tests control exactly which tokens are decoded in which batches.

The wrappers around ``llama_state_seq_get_data`` / ``llama_state_seq_set_data``
are the only llama.cpp calls the KV block code needs; they live here because
``kvtier.llama_state`` itself is pure byte manipulation and must import
without llama_cpp.
"""

from __future__ import annotations

import ctypes
import os
from dataclasses import dataclass
from typing import Iterable, Optional, Sequence

import numpy as np


@dataclass(frozen=True)
class TinyLlamaConfig:
    n_layer: int = 4
    n_embd: int = 128
    n_head: int = 4
    n_head_kv: int = 2          # GQA: 2 kv heads for 4 query heads
    n_ff: int = 256
    n_vocab: int = 256
    n_ctx_train: int = 4096
    seed: int = 1234
    dtype: str = "f32"          # "f32" or "f16" weights (norms stay f32)

    @property
    def head_dim(self) -> int:
        return self.n_embd // self.n_head


def write_tiny_llama_gguf(path: str, cfg: TinyLlamaConfig = TinyLlamaConfig()) -> str:
    """Write a small random llama GGUF to ``path`` and return the path."""
    import gguf

    rng = np.random.default_rng(cfg.seed)
    wdt = np.float32 if cfg.dtype == "f32" else np.float16
    hd = cfg.head_dim
    n_embd_kv = hd * cfg.n_head_kv

    w = gguf.GGUFWriter(path, "llama")
    w.add_context_length(cfg.n_ctx_train)
    w.add_embedding_length(cfg.n_embd)
    w.add_block_count(cfg.n_layer)
    w.add_feed_forward_length(cfg.n_ff)
    w.add_head_count(cfg.n_head)
    w.add_head_count_kv(cfg.n_head_kv)
    w.add_rope_dimension_count(hd)
    w.add_rope_freq_base(10000.0)
    w.add_layer_norm_rms_eps(1e-5)
    w.add_vocab_size(cfg.n_vocab)
    w.add_file_type(0 if cfg.dtype == "f32" else 1)

    # 'llama' (SentencePiece) tokenizer: 3 specials, the newline byte token
    # (llama.cpp looks it up for SPM vocabs) and plain tokens for the rest.
    tokens = [b"<unk>", b"<s>", b"</s>", b"<0x0A>"]
    types = [gguf.TokenType.UNKNOWN, gguf.TokenType.CONTROL, gguf.TokenType.CONTROL,
             gguf.TokenType.BYTE]
    for i in range(len(tokens), cfg.n_vocab):
        tokens.append(("\u2581t%d" % i).encode())
        types.append(gguf.TokenType.NORMAL)
    w.add_tokenizer_model("llama")
    w.add_token_list(tokens)
    w.add_token_scores([-float(i) for i in range(cfg.n_vocab)])
    w.add_token_types(types)
    w.add_unk_token_id(0)
    w.add_bos_token_id(1)
    w.add_eos_token_id(2)
    w.add_add_bos_token(False)
    w.add_add_eos_token(False)

    def mat(n_out: int, n_in: int) -> np.ndarray:
        # numpy shape (out, in) == ggml ne (in, out)
        return (rng.standard_normal((n_out, n_in), dtype=np.float32) / np.sqrt(n_in)).astype(wdt)

    def norm(n: int) -> np.ndarray:
        return (1.0 + 0.1 * rng.standard_normal(n, dtype=np.float32)).astype(np.float32)

    w.add_tensor("token_embd.weight", rng.standard_normal((cfg.n_vocab, cfg.n_embd), dtype=np.float32).astype(wdt))
    for il in range(cfg.n_layer):
        p = "blk.%d." % il
        w.add_tensor(p + "attn_norm.weight", norm(cfg.n_embd))
        w.add_tensor(p + "attn_q.weight", mat(cfg.n_embd, cfg.n_embd))
        w.add_tensor(p + "attn_k.weight", mat(n_embd_kv, cfg.n_embd))
        w.add_tensor(p + "attn_v.weight", mat(n_embd_kv, cfg.n_embd))
        w.add_tensor(p + "attn_output.weight", mat(cfg.n_embd, cfg.n_embd))
        w.add_tensor(p + "ffn_norm.weight", norm(cfg.n_embd))
        w.add_tensor(p + "ffn_gate.weight", mat(cfg.n_ff, cfg.n_embd))
        w.add_tensor(p + "ffn_up.weight", mat(cfg.n_ff, cfg.n_embd))
        w.add_tensor(p + "ffn_down.weight", mat(cfg.n_embd, cfg.n_ff))
    w.add_tensor("output_norm.weight", norm(cfg.n_embd))
    w.add_tensor("output.weight", mat(cfg.n_vocab, cfg.n_embd))

    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


def random_tokens(n: int, seed: int = 7, n_vocab: int = 256) -> list[int]:
    """Deterministic token ids, avoiding the 4 special/byte ids."""
    rng = np.random.default_rng(seed)
    return [int(t) for t in rng.integers(4, n_vocab, size=n)]


# --------------------------------------------------------------------------
# llama_cpp wrappers

def open_llama(model_path: str, *, flash_attn: bool = False, n_ctx: int = 4096,
               n_batch: int = 512, n_threads: int = 2, **kw):
    """Open the model with llama_cpp.Llama; one sequence, one KV stream."""
    import llama_cpp

    return llama_cpp.Llama(
        model_path=model_path,
        n_ctx=n_ctx,
        n_batch=n_batch,
        n_ubatch=n_batch,
        n_threads=n_threads,
        n_threads_batch=n_threads,
        logits_all=False,
        flash_attn=flash_attn,
        verbose=False,
        **kw,
    )


def ctx_of(llm_or_ctx):
    """The raw llama_context pointer of a Llama object (or the pointer itself)."""
    inner = getattr(llm_or_ctx, "_ctx", None)
    if inner is not None:
        return inner.ctx
    return llm_or_ctx


def n_vocab_of(llm_or_ctx) -> int:
    import llama_cpp

    ctx = ctx_of(llm_or_ctx)
    model = llama_cpp.llama_get_model(ctx)
    vocab = llama_cpp.llama_model_get_vocab(model)
    return int(llama_cpp.llama_vocab_n_tokens(vocab))


def decode(llm_or_ctx, tokens: Sequence[int], pos0: int, *, seq_id: int = 0,
           logits_last: bool = True) -> None:
    """One llama_decode call for ``tokens`` at positions pos0.. in ``seq_id``."""
    import llama_cpp

    ctx = ctx_of(llm_or_ctx)
    n = len(tokens)
    batch = llama_cpp.llama_batch_init(n, 0, 1)
    try:
        batch.n_tokens = n
        for i, t in enumerate(tokens):
            batch.token[i] = int(t)
            batch.pos[i] = pos0 + i
            batch.n_seq_id[i] = 1
            batch.seq_id[i][0] = seq_id
            batch.logits[i] = 1 if (logits_last and i == n - 1) else 0
        rc = llama_cpp.llama_decode(ctx, batch)
        if rc != 0:
            raise RuntimeError("llama_decode returned %d" % rc)
    finally:
        llama_cpp.llama_batch_free(batch)


def prefill(llm_or_ctx, tokens: Sequence[int], split: Optional[int] = None, *,
            pos0: int = 0, seq_id: int = 0) -> None:
    """Decode ``tokens`` starting at ``pos0`` in batches of ``split`` tokens.

    split=None means the context's n_batch. Batch boundaries are at multiples
    of ``split`` counted from ``pos0``; two runs with the same boundaries give
    bit-identical KV data. The last token's logits are requested.
    """
    import llama_cpp

    ctx = ctx_of(llm_or_ctx)
    if split is None:
        split = int(llama_cpp.llama_n_batch(ctx))
    for i in range(0, len(tokens), split):
        chunk = tokens[i:i + split]
        decode(ctx, chunk, pos0 + i, seq_id=seq_id, logits_last=(i + split >= len(tokens)))


def last_logits(llm_or_ctx) -> bytes:
    """The logits of the last token of the last decode, as raw float32 bytes."""
    import llama_cpp

    ctx = ctx_of(llm_or_ctx)
    n = n_vocab_of(ctx)
    p = llama_cpp.llama_get_logits_ith(ctx, -1)
    if not p:
        raise RuntimeError("no logits for the last token")
    return ctypes.string_at(p, n * 4)


def next_logits(llm_or_ctx, token: int, pos: int, *, seq_id: int = 0) -> bytes:
    """Decode one token at ``pos`` and return its logits as float32 bytes.

    Compare the bytes, not max-abs differences: NaN != NaN would hide there.
    """
    decode(llm_or_ctx, [token], pos, seq_id=seq_id)
    return last_logits(llm_or_ctx)


def seq_rm(llm_or_ctx, seq_id: int = 0, p0: int = -1, p1: int = -1) -> bool:
    import llama_cpp

    ctx = ctx_of(llm_or_ctx)
    mem = llama_cpp.llama_get_memory(ctx)
    return bool(llama_cpp.llama_memory_seq_rm(mem, seq_id, p0, p1))


def seq_pos_max(llm_or_ctx, seq_id: int = 0) -> int:
    import llama_cpp

    ctx = ctx_of(llm_or_ctx)
    return int(llama_cpp.llama_memory_seq_pos_max(llama_cpp.llama_get_memory(ctx), seq_id))


def get_seq_state(llm_or_ctx, seq_id: int = 0) -> bytes:
    """``llama_state_seq_get_data`` for one sequence, as bytes."""
    import llama_cpp

    ctx = ctx_of(llm_or_ctx)
    size = int(llama_cpp.llama_state_seq_get_size(ctx, seq_id))
    if size == 0:
        raise RuntimeError("llama_state_seq_get_size returned 0")
    buf = (ctypes.c_uint8 * size)()
    n = int(llama_cpp.llama_state_seq_get_data(ctx, buf, size, seq_id))
    if n != size:
        raise RuntimeError("llama_state_seq_get_data wrote %d of %d bytes" % (n, size))
    return bytes(buf)


def set_seq_state(llm_or_ctx, buf, seq_id: int = 0) -> int:
    """``llama_state_seq_set_data`` from any buffer (bytes, bytearray,
    memoryview, numpy array). Returns the bytes read; 0 means llama.cpp refused.

    Writable buffers are passed without a copy; read-only ones (bytes) are
    copied once into a ctypes array, since the ctypes signature wants a
    mutable uint8 pointer.
    """
    import llama_cpp

    ctx = ctx_of(llm_or_ctx)
    mv = memoryview(buf).cast("B")
    size = mv.nbytes
    if mv.readonly:
        arr = (ctypes.c_uint8 * size).from_buffer_copy(mv)
    else:
        arr = (ctypes.c_uint8 * size).from_buffer(mv)
    return int(llama_cpp.llama_state_seq_set_data(ctx, arr, size, seq_id))
