"""Prompts as token ids, laid out for prefix reuse.

Two rules decide whether a prefix cache hits (research/serving.md, measured: header-first 0% hits, the same
prompts reordered 78%):

1. **Static to dynamic.** Tool schemas and system text first (canonical JSON, sorted keys), then shared task
   context, then the agent's role, its history, and the new turn last. ``PromptBuilder`` sorts segments by
   rank, stably, so callers can add them in any order.
2. **Never re-tokenize history.** BPE merges across boundaries, and a model's reply re-tokenized from its text
   may differ from the ids it generated. Each segment is tokenized on its own and generated replies are kept as
   the exact ids the engine produced (``ChatTranscript.add_reply``), so turn n+1's prompt starts with turn n's
   prompt and reply token for token.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from enum import IntEnum
from typing import Any

from tokenomy.errors import UserError

from .types import Completion

__all__ = ["Rank", "PromptBuilder", "ChatTranscript"]


class Rank(IntEnum):
    """Where a segment goes: lower ranks first."""

    TOOLS = 0
    SYSTEM = 1
    CONTEXT = 2
    ROLE = 3
    HISTORY = 4
    TURN = 5


@dataclass
class _Segment:
    rank: Rank
    text: str | None
    ids: list[int] | None


class PromptBuilder:
    """Build a raw prompt (token ids) from ranked segments, each tokenized on its own.

    Args:
        tokenizer: a transformers tokenizer (``engine.tokenizer`` of the transformers engine).
    """

    def __init__(self, tokenizer: Any) -> None:
        self.tokenizer = tokenizer
        self._segments: list[_Segment] = []
        self._memo: dict[str, list[int]] = {}

    def add(self, content: str | Sequence[int], rank: Rank = Rank.TURN) -> PromptBuilder:
        if isinstance(content, str):
            self._segments.append(_Segment(Rank(rank), content, None))
        else:
            self._segments.append(_Segment(Rank(rank), None, [int(t) for t in content]))
        return self

    def tools(self, schemas: Sequence[Mapping[str, Any]]) -> PromptBuilder:
        """Tool schemas as canonical JSON (sorted keys, sorted by name), so equal tool sets give equal ids."""
        lines = sorted(json.dumps(s, sort_keys=True, separators=(",", ":")) for s in schemas)
        return self.add("Tools:\n" + "\n".join(lines) + "\n", Rank.TOOLS)

    def system(self, text: str) -> PromptBuilder:
        return self.add(text, Rank.SYSTEM)

    def context(self, text: str) -> PromptBuilder:
        return self.add(text, Rank.CONTEXT)

    def role(self, text: str) -> PromptBuilder:
        return self.add(text, Rank.ROLE)

    def history(self, content: str | Sequence[int]) -> PromptBuilder:
        return self.add(content, Rank.HISTORY)

    def reply(self, completion: Completion) -> PromptBuilder:
        """A generated reply, as the exact ids the engine produced."""
        return self.add(completion.token_ids, Rank.HISTORY)

    def turn(self, text: str) -> PromptBuilder:
        return self.add(text, Rank.TURN)

    def build(self) -> list[int]:
        ids: list[int] = []
        for seg in sorted(self._segments, key=lambda s: s.rank):  # sorted() is stable
            ids += seg.ids if seg.ids is not None else self._encode(seg.text or "")
        return ids

    def _encode(self, text: str) -> list[int]:
        if text not in self._memo:
            self._memo[text] = list(self.tokenizer(text, add_special_tokens=False)["input_ids"])
        return self._memo[text]


class ChatTranscript:
    """A chat kept as token ids, message by message, rendered with the model's chat template.

    Each message's piece of the template is tokenized once, on its own; a reply added with ``add_reply`` keeps
    the ids the model generated. ``ids()`` is the prompt for the next turn, and it always extends the previous
    turn's prompt plus reply, so a prefix cache reuses all of it. Templates that are not incremental (rendering
    more messages changes the text of earlier ones) fall back to rendering the whole chat, and say so in
    ``incremental``.
    """

    def __init__(self, tokenizer: Any, messages: Sequence[Mapping[str, Any]] = ()) -> None:
        if getattr(tokenizer, "chat_template", None) is None:
            raise UserError("ChatTranscript needs a tokenizer with a chat template")
        self.tokenizer = tokenizer
        self.messages: list[dict[str, Any]] = []
        self._ids: list[int] = []
        self._rendered = ""
        self.incremental = True
        for m in messages:
            self.add(m["role"], m["content"])

    def _render(self, messages: list[dict[str, Any]], generation_prompt: bool) -> str:
        if not messages:
            return ""
        return str(self.tokenizer.apply_chat_template(messages, tokenize=False,
                                                      add_generation_prompt=generation_prompt))

    def _encode(self, text: str) -> list[int]:
        return list(self.tokenizer(text, add_special_tokens=False)["input_ids"]) if text else []

    def add(self, role: str, content: str) -> ChatTranscript:
        """Append a message (its template piece is tokenized on its own)."""
        messages = self.messages + [{"role": role, "content": content}]
        text = self._render(messages, False)
        if self.incremental and text.startswith(self._rendered):
            self._ids += self._encode(text[len(self._rendered):])
        else:
            self.incremental = False
            self._ids = self._encode(text)
        self.messages, self._rendered = messages, text
        return self

    def add_reply(self, completion: Completion) -> ChatTranscript:
        """Append the assistant's reply, keeping the ids the model generated for it."""
        header = self._render(self.messages, True)[len(self._rendered):]
        messages = self.messages + [{"role": "assistant", "content": completion.text}]
        text = self._render(messages, False)
        piece = text[len(self._rendered):]
        gen = list(completion.token_ids)
        # Keep the generated ids only where they are exactly the reply's text (not cut at a stop string).
        same_text = self.tokenizer.decode(gen, skip_special_tokens=True) == completion.text
        if not (same_text and self.incremental and text.startswith(self._rendered) and header
                and piece.startswith(header + completion.text)):
            return self.add("assistant", completion.text)
        tail = piece[len(header) + len(completion.text):]
        eos = self.tokenizer.eos_token
        if eos and gen and gen[-1] == self.tokenizer.eos_token_id and tail.startswith(eos):
            tail = tail[len(eos):]  # the model already generated the end-of-turn token
        self._ids += self._encode(header) + gen + self._encode(tail)
        self.messages, self._rendered = messages, text
        return self

    def ids(self, add_generation_prompt: bool = True) -> list[int]:
        """The prompt ids: every message, and the assistant header when ``add_generation_prompt``."""
        if not add_generation_prompt:
            return list(self._ids)
        header = self._render(self.messages, True)[len(self._rendered):]
        return self._ids + self._encode(header)
