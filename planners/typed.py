"""Answers with a type: ``strategy.run(question, answer_type=SomeModel)`` returns the answer parsed as that type.

A run's answer that already is of the type (``412000`` for ``int``, a dict with the model's fields) is parsed
without a call. Otherwise one model call (the agent ``answer``) writes the answer as JSON of the type's schema,
from the question, the run's answer and its results, constrained to the schema where the engine can
(``json_schema`` capability) and validated by pydantic; a reply that does not validate is asked once more with
pydantic's message, then ``AnswerTypeError`` carries the run's untyped result (nothing is lost) and the reply.
"""

from __future__ import annotations

import json
from typing import Any

from pydantic import TypeAdapter, ValidationError

from tokenomy.errors import RunError
from tokenomy.kernels import Grammar, SamplingParams, Usage, Worker

from .state import RunResult, to_state

__all__ = ["AnswerTypeError", "typed_answer"]

TYPED_RULES = ("Write the answer to the question as JSON that matches the schema, using only the answer and the "
               "results given. Write only the JSON.")
MAX_FACT_CHARS = 1500


class AnswerTypeError(RunError):
    """The answer could not be given as the asked type. ``result`` is the run's result with its untyped answer,
    ``text`` the model's last reply, ``problem`` pydantic's message."""

    def __init__(self, answer_type: Any, result: RunResult, text: str, problem: str) -> None:
        self.answer_type, self.result, self.text, self.problem = answer_type, result, text, problem
        super().__init__(f"the answer could not be given as {getattr(answer_type, '__name__', answer_type)}: "
                         f"{problem} (the model wrote {text[:200]!r}); result.answer keeps the untyped answer")


def _direct(adapter: TypeAdapter[Any], answer: Any) -> tuple[bool, Any]:
    """``answer`` parsed as the type without a model call, where it already is one (or is its JSON)."""
    if answer is None:
        return False, None
    for candidate in (answer, _json_or(answer)):
        try:
            return True, adapter.validate_python(candidate, strict=isinstance(candidate, str))
        except ValidationError:
            continue
    return False, None


def _json_or(value: Any) -> Any:
    if isinstance(value, str):
        try:
            return json.loads(value)
        except ValueError:
            return value
    return value


def typed_answer(worker: Worker, result: RunResult, answer_type: Any, *, max_tokens: int = 256) -> RunResult:
    """``result`` with its answer parsed as ``answer_type`` (see the module); the call's usage is added to
    ``result.usage["answer"]``."""
    adapter: TypeAdapter[Any] = TypeAdapter(answer_type)
    ok, value = _direct(adapter, result.answer)
    if ok:
        result.answer = value
        return result
    schema = adapter.json_schema()
    facts = "\n".join(f"{k} = {json.dumps(to_state(v), ensure_ascii=False)[:300]}" for k, v in result.values.items())
    user = (f"Question: {result.question}\nAnswer: {json.dumps(to_state(result.answer), ensure_ascii=False)}\n"
            f"Results:\n{facts[:MAX_FACT_CHARS] or '(none)'}\nSchema: {json.dumps(schema)}\nJSON:")
    messages = [{"role": "system", "content": TYPED_RULES}, {"role": "user", "content": user}]
    engine = worker.engine
    grammar = Grammar.json_schema(schema) if engine.capabilities.json_schema else None
    spent = Usage.sum([])
    text, problem = "", ""
    for attempt in range(2):  # the answer, then once more with what was wrong
        c = worker.generate(messages, SamplingParams(max_tokens=max_tokens), grammar=grammar, agent="answer",
                            tags=("answer", "typed"))
        spent = c.usage if attempt == 0 else spent + c.usage
        text = c.text.strip()
        try:
            result.answer = adapter.validate_json(_strip_fence(text))
            break
        except ValidationError as exc:
            problem = "; ".join(f"{'.'.join(map(str, e['loc'])) or 'value'}: {e['msg']}" for e in exc.errors())
            messages = [*messages, {"role": "assistant", "content": text},
                        {"role": "user", "content": f"That does not match the schema ({problem}). JSON:"}]
    else:
        result.usage["answer"] = spent
        raise AnswerTypeError(answer_type, result, text, problem)
    result.usage["answer"] = spent
    return result


def _strip_fence(text: str) -> str:
    """A reply's JSON without a Markdown fence around it (models add one unasked)."""
    if text.startswith("```"):
        inner = text.split("\n", 1)[1] if "\n" in text else ""
        return inner.rsplit("```", 1)[0].strip()
    return text
