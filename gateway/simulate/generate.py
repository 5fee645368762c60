"""Deterministic stand-ins for a model's output: token counts, completions, embeddings.

Same prompt and seed, same output, in any process: two simulators started with the
same `--seed` agree (a shadow comparison sees agreement), different seeds disagree.
"""

from __future__ import annotations

import math
import random
import struct
import zlib
from collections.abc import Iterable
from typing import Final

VOCABULARY_SIZE: Final = 1000


def count_words(text: str) -> int:
    """The simulator's token count: whitespace-separated words (cheap, deterministic)."""
    return len(text.split())


class TextModel:
    """Produces completion tokens and embedding vectors from a prompt key and a seed.

    Tokens are words `tok0` ... `tok999`; each after the first carries its leading space,
    so streamed deltas concatenate to exactly the non-streamed content.
    """

    __slots__ = ("_seed_mix", "_words")

    def __init__(self, seed: int | None = None) -> None:
        # Knuth's multiplicative hash spreads nearby seeds over the vocabulary.
        self._seed_mix = ((seed or 0) * 2654435761) & 0xFFFFFFFF
        self._words = tuple(f" tok{i}" for i in range(VOCABULARY_SIZE))

    def key(self, texts: Iterable[str]) -> int:
        """A stable 32-bit key for prompt text (crc32: fast and the same in every process)."""
        crc = 0
        for text in texts:
            crc = zlib.crc32(text.encode(), crc)
        return crc ^ self._seed_mix

    def tokens(self, key: int, count: int) -> list[str]:
        """`count` completion tokens for the prompt `key`."""
        if count <= 0:
            return []
        words = self._words
        start = key % VOCABULARY_SIZE
        out = [words[(start + i) % VOCABULARY_SIZE] for i in range(count)]
        out[0] = out[0][1:]
        return out

    def embedding(self, key: int, dimensions: int) -> list[float]:
        """A unit-length vector of `dimensions` float32 values for the input `key`."""
        rng = random.Random(key)
        values = [rng.gauss(0.0, 1.0) for _ in range(dimensions)]
        norm = math.sqrt(sum(v * v for v in values)) or 1.0
        # Round through float32 so the float and base64 encodings carry identical numbers.
        packed = struct.pack(f"<{dimensions}f", *(v / norm for v in values))
        return list(struct.unpack(f"<{dimensions}f", packed))


def float32_le(values: list[float]) -> bytes:
    """Little-endian float32 bytes, as `encoding_format: base64` carries them."""
    return struct.pack(f"<{len(values)}f", *values)
