"""Block keys and namespaces: what makes a stored KV block the right one to reuse.

An engine that loads a KV block computed for other tokens, another model or another layout
gives wrong answers *silently*: nothing crashes, the output is just worse. Two things rule
that out.

Block keys (`block_keys`) are a hash chain over token ids: the key of block i covers every
token up to the end of block i, not only its own N tokens, because a transformer's KV at a
position depends on the whole prefix before it. Equal keys therefore mean equal prefixes, and
the first differing token changes every later key. Only full blocks get keys (a partial block
would be overwritten in place as the sequence grows). BLAKE2b-256 makes an accidental or
crafted collision impractical; the key is the whole 32-byte digest.

The namespace (`namespace`) separates what must never meet even for equal tokens. kvtierd
keeps namespaces apart (a key in one is invisible in another), so each part below must be in
it:
  - model fingerprint: other weights give other KV (a fine-tune of the same architecture
    too, hence a hash of the weights file, not its name);
  - engine name and version: the byte layout of a block is the engine's (llama.cpp's state
    format, vLLM's paged layout) and may change between versions;
  - KV dtype and layout: f16 vs q8_0, flash-attention's V layout, block size in tokens;
  - tensor-parallel rank and size: each rank holds other heads of the same tokens;
  - anything else that changes KV (RoPE scaling, LoRA adapters): pass it in `extra`.
"""

from __future__ import annotations

import hashlib
import os
from array import array
from typing import Iterable, Sequence

_DIGEST = 32


def _token_bytes(tokens: Sequence[int]) -> bytes:
    return array("i", tokens).tobytes()  # int32, native order: keys never leave the host


def block_keys(tokens: Sequence[int], block_tokens: int, salt: bytes = b"") -> list[bytes]:
    """Keys of the full blocks of `tokens`: key i = H(key i-1 || tokens of block i).

    `salt` seeds the chain (e.g. a per-adapter id); the namespace already separates models.
    """
    if block_tokens <= 0:
        raise ValueError("block_tokens must be positive")
    keys = []
    prev = hashlib.blake2b(b"kvtier-chain-v1" + salt, digest_size=_DIGEST).digest()
    for start in range(0, len(tokens) - block_tokens + 1, block_tokens):
        h = hashlib.blake2b(prev, digest_size=_DIGEST)
        h.update(_token_bytes(tokens[start : start + block_tokens]))
        prev = h.digest()
        keys.append(prev)
    return keys


def file_fingerprint(path: str | os.PathLike[str], chunk: int = 16 << 20) -> str:
    """BLAKE2b-128 of a weights file's bytes (hex). Reads the whole file once (~1 s per GB);
    cache it next to the model if start-up time matters."""
    h = hashlib.blake2b(digest_size=16)
    with open(path, "rb") as f:
        while True:
            b = f.read(chunk)
            if not b:
                break
            h.update(b)
    return h.hexdigest()


def namespace(*, model_fingerprint: str, engine: str, engine_version: str, kv_dtype: str,
              kv_layout: str, block_tokens: int, tp_rank: int = 0, tp_size: int = 1,
              extra: Iterable[str] = ()) -> str:
    """A namespace (<= 128 bytes) that differs whenever stored KV would be incompatible.

    Readable head ("llama.cpp-0.3.36/tp0of1/blk256/") for logs, then a hash of every part.
    """
    parts = [model_fingerprint, engine, engine_version, kv_dtype, kv_layout,
             str(block_tokens), str(tp_rank), str(tp_size), *extra]
    for p in parts:
        if "\0" in p:
            raise ValueError("namespace parts must not contain NUL")
    digest = hashlib.blake2b("\0".join(parts).encode(), digest_size=16).hexdigest()
    head = f"{engine}-{engine_version}/tp{tp_rank}of{tp_size}/blk{block_tokens}/"
    return head[: 128 - len(digest)] + digest
