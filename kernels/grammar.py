"""Grammar-constrained decoding for the transformers engine.

EBNF, regex and JSON schema compile with xgrammar; Lark grammars compile with llguidance (xgrammar does not
read Lark). Both fill the same packed int32 token bitmask, so the decode loop sees one ``Constraint``:
mask the logits, pick a token, ``accept`` it. Compiled grammars are cached per tokenizer and source.
"""

from __future__ import annotations

import threading
from functools import lru_cache
from typing import Any

from tokenomy.errors import GrammarError, MissingExtra

from .types import Grammar

__all__ = ["GrammarCompiler", "Constraint"]


class Constraint:
    """The state of one request's grammar while decoding."""

    def __init__(self, backend: str, matcher: Any, vocab_size: int) -> None:
        self.backend = backend
        self._m = matcher
        self.vocab_size = vocab_size
        self._bitmask: Any = None

    def mask_logits(self, logits: Any) -> None:
        """Set the logits of tokens the grammar forbids next to -inf (in place; ``logits`` is [1, V])."""
        import torch

        if self.backend == "xgrammar":
            import xgrammar as xgr

            if self._bitmask is None:
                self._bitmask = xgr.allocate_token_bitmask(1, self.vocab_size)
            self._m.fill_next_token_bitmask(self._bitmask)
            xgr.apply_token_bitmask_inplace(logits, self._bitmask.to(logits.device), vocab_size=self.vocab_size)
        else:
            import llguidance.torch as lgt

            if self._bitmask is None:
                self._bitmask = lgt.allocate_token_bitmask(1, self.vocab_size)
            lgt.fill_next_token_bitmask(self._m, self._bitmask, 0)
            # Tokens past the tokenizer's vocabulary (padding rows of the embedding) are never allowed.
            width = min(logits.shape[-1], self.vocab_size)
            allowed = _unpack(self._bitmask, width).to(logits.device)
            logits[..., :width].masked_fill_(~allowed, float("-inf"))
            if logits.shape[-1] > width:
                logits[..., width:] = float("-inf")
        if torch.isinf(logits).all():
            raise GrammarError("the grammar allows no token here (is it satisfiable with this vocabulary?)")

    def accept(self, token_id: int) -> None:
        if self.backend == "xgrammar":
            ok = self._m.accept_token(token_id)
        else:
            ok = self._m.consume_token(token_id)
        if not ok:
            raise GrammarError(f"token {token_id} was rejected by the grammar")

    def rollback(self, tokens: int) -> None:
        """Undo the last ``tokens`` accepted tokens (speculative decoding's draft, once verified)."""
        if tokens > 0:
            self._m.rollback(tokens)

    @property
    def finished(self) -> bool:
        """True once the grammar is complete and only the end of the text may follow."""
        if self.backend == "xgrammar":
            return bool(self._m.is_terminated())
        return bool(self._m.is_stopped())


def _unpack(bitmask: Any, width: int) -> Any:
    import torch

    bits = bitmask[0].to(torch.int64) & 0xFFFFFFFF
    shifts = torch.arange(32, dtype=torch.int64)
    allowed = ((bits.unsqueeze(-1) >> shifts) & 1).bool().reshape(-1)[:width]
    return allowed.unsqueeze(0)


class GrammarCompiler:
    """Compiles grammars for one tokenizer; thread-safe, with a cache."""

    def __init__(self, tokenizer: Any, vocab_size: int, stop_token_ids: list[int]) -> None:
        self._tokenizer = tokenizer
        self.vocab_size = vocab_size
        self._stop_ids = stop_token_ids
        self._lock = threading.Lock()
        self._xgr_compiler: Any = None
        self._ll_tokenizer: Any = None
        self._compiled = lru_cache(maxsize=64)(self._compile)

    def constraint(self, grammar: Grammar) -> Constraint:
        """A fresh matcher for ``grammar``; raises ``GrammarError`` if it does not compile."""
        with self._lock:
            backend, compiled = self._compiled(grammar)
            if backend == "xgrammar":
                import xgrammar as xgr

                return Constraint(backend, xgr.GrammarMatcher(compiled), self.vocab_size)
            import llguidance

            matcher = llguidance.LLMatcher(self._ll_tokenizer, compiled)
            if matcher.is_error():
                raise GrammarError(f"Lark grammar rejected: {matcher.get_error()}")
            return Constraint(backend, matcher, self.vocab_size)

    def _compile(self, grammar: Grammar) -> tuple[str, Any]:
        if grammar.kind == "lark":
            return "llguidance", self._compile_lark(grammar.source)
        try:
            import xgrammar as xgr
        except ImportError as exc:  # a base dependency, but be clear if it is missing
            raise MissingExtra("xgrammar", None, what="Grammar-constrained decoding",
                               install="pip install xgrammar") from exc
        if self._xgr_compiler is None:
            info = xgr.TokenizerInfo.from_huggingface(
                self._tokenizer, vocab_size=self.vocab_size, stop_token_ids=self._stop_ids)
            self._xgr_compiler = xgr.GrammarCompiler(info)
        try:
            if grammar.kind == "ebnf":
                return "xgrammar", self._xgr_compiler.compile_grammar(grammar.source)
            if grammar.kind == "regex":
                return "xgrammar", self._xgr_compiler.compile_regex(grammar.source)
            return "xgrammar", self._xgr_compiler.compile_json_schema(grammar.source)
        except Exception as exc:  # xgrammar raises RuntimeError/ValueError subclasses with the reason
            raise GrammarError(f"{grammar.kind} grammar does not compile: {exc}") from exc

    def _compile_lark(self, source: str) -> Any:
        try:
            import llguidance
            import llguidance.hf
        except ImportError as exc:
            raise MissingExtra("llguidance", None, what="Lark grammars",
                               install="pip install llguidance") from exc
        if self._ll_tokenizer is None:
            self._ll_tokenizer = llguidance.hf.from_tokenizer(self._tokenizer, n_vocab=self.vocab_size)
        grammar = llguidance.LLMatcher.grammar_from_lark(source)
        message = llguidance.LLMatcher.validate_grammar(grammar, self._ll_tokenizer)
        if message:
            raise GrammarError(f"Lark grammar does not compile: {message}")
        return grammar
