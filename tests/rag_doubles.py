"""Test doubles for the RAG tests (named so): an embedder without a model."""

from __future__ import annotations

import hashlib
import re

import numpy as np


class HashEmbedder:
    """Test double: a hashed bag of words, L2-normed (deterministic, no model)."""

    def __init__(self, name: str = "hash-bow", dim: int = 64) -> None:
        self.name, self.dim, self.calls = name, dim, 0

    def encode(self, texts):
        self.calls += 1
        out = np.zeros((len(texts), self.dim), dtype=np.float32)
        for row, text in enumerate(texts):
            for word in re.findall(r"\w+", text.lower()):
                h = int.from_bytes(hashlib.sha1(word.encode()).digest()[:4], "big")
                out[row, h % self.dim] += 1.0 if h & 1 << 31 else -1.0
        norms = np.linalg.norm(out, axis=1, keepdims=True)
        return out / np.where(norms == 0, 1, norms)
