"""Long/short-thought collaboration: two models share the reasoning, the long one only where it pays.

Every policy here is training-free and text-level (the two models may have different tokenizers); each says at
construction which engine capabilities it needs. See ``../shared/research/longshort.md`` for the papers.

=====================  ================================================================  ===========================
policy                 what it does                                                      needs
=====================  ================================================================  ===========================
``ThoughtInject``      ThoughtMani: the short model's steps go into the long model's      long: prefill
                       thinking block; the long model answers after it. A short model
                       that writes ``STOP`` (or nothing) hands over: the long model
                       thinks normally.
``PlanExpand``         Hawkeye: the long model writes concise instructions, the short     (chat-level only)
                       model expands them into reasoning and answers.
``StepRoute``          RSD/Arbitrage: the short model proposes each step; the long        long: prompt_logprobs
                       model's mean log-probability of the step (or a yes/no judge          (scorer="logprob")
                       prompt) accepts it or the long model rewrites it. Rejected
                       tokens are counted as discarded.
``SentenceLead``       FoReaL at text level: the long model writes the first ``n``        stop strings
                       tokens of a sentence (with probability ``p``), the short one
                       finishes it.
``AlternatingTurns``   Long-Short protocol: the long model thinks a turn, the short       stop strings
                       model answers or asks for another turn; ``max_turns`` ends it.
``Consensus``          ARM's consensus: the short model answers in cheap formats; the     (chat-level only)
                       long model reasons only when they disagree.
=====================  ================================================================  ===========================
"""

from __future__ import annotations

import random
import re
from collections.abc import Mapping
from typing import Any, ClassVar

from tokenomy.errors import UserError
from tokenomy.kernels.engine import Engine

from .answers import Normalizer, normalize_text
from .policy import Format, Policy, Problem, _Run, first_line

__all__ = ["PairPolicy", "ThoughtInject", "PlanExpand", "StepRoute", "SentenceLead", "AlternatingTurns",
           "Consensus", "LongOnly", "ShortOnly", "COLLAB_POLICIES"]


class PairPolicy(Policy):
    """A policy over a ``long`` and a ``short`` model."""

    roles: ClassVar[tuple[str, ...]] = ("long", "short")

    def __init__(self, long: Engine, short: Engine, *, normalizer: Normalizer | None = None,
                 fmt: Format | None = None) -> None:
        super().__init__({"long": long, "short": short}, normalizer=normalizer, fmt=fmt)

    @property
    def long(self) -> Engine:
        return self.engines["long"]

    @property
    def short(self) -> Engine:
        return self.engines["short"]


class _Alone(PairPolicy):
    role: ClassVar[str] = "long"

    def __init__(self, long: Engine, short: Engine, *, think: int = 0, answer_tokens: int = 24, **kw: Any) -> None:
        super().__init__(long, short, **kw)
        self.think, self.answer_tokens = think, answer_tokens

    def _solve(self, run: _Run, p: Problem) -> str:
        run.escalated = self.role == "long"
        if not self.think:
            return self._direct(run, self.role, p, self.answer_tokens).text
        thought = self._think(run, self.role, p, self.think)
        return self._answer_after(run, self.role, p, thought.text, self.answer_tokens).text


class LongOnly(_Alone):
    """The long model alone (a control): direct, or thinking up to ``think`` tokens first."""

    name = "long"
    role = "long"


class ShortOnly(_Alone):
    """The short model alone (a control)."""

    name = "short"
    role = "short"


class ThoughtInject(PairPolicy):
    """ThoughtMani: the short model's high-level steps fill the long model's thinking block.

    Args:
        steps_tokens: the most tokens of the short model's steps.
        think: the long model's own thinking budget when the short model hands over (``STOP`` or nothing).
    """

    name = "thought-inject"
    needs: ClassVar[Mapping[str, tuple[str, ...]]] = {"long": ("prefill",)}
    STEPS = "Write the key steps to solve it, one per line, without the answer. If you cannot, write STOP.\n"

    def __init__(self, long: Engine, short: Engine, *, steps_tokens: int = 64, think: int = 128,
                 answer_tokens: int = 24, **kw: Any) -> None:
        super().__init__(long, short, **kw)
        self.steps_tokens, self.think, self.answer_tokens = steps_tokens, think, answer_tokens

    def _solve(self, run: _Run, p: Problem) -> str:
        steps = run.call("short", f"{self.fmt.head(p)}{self.STEPS}Steps:\n", kind="steps",
                         max_tokens=self.steps_tokens, stop=("\n\n", *self.fmt.think_stops)).text.strip()
        if not steps or "STOP" in steps:
            run.notes.append("short model handed over (STOP or no steps): the long model thinks normally")
            run.escalated = True
            thought = self._think(run, "long", p, self.think).text
            return self._answer_after(run, "long", p, thought, self.answer_tokens).text
        return self._answer_after(run, "long", p, steps, self.answer_tokens).text


class PlanExpand(PairPolicy):
    """Hawkeye-style: the long model writes concise instructions, the short model expands them and answers."""

    name = "plan-expand"
    PLAN = "Write brief instructions (a few words per step) to solve it, without the answer.\nInstructions:\n"

    def __init__(self, long: Engine, short: Engine, *, plan_tokens: int = 32, expand_tokens: int = 96,
                 answer_tokens: int = 24, **kw: Any) -> None:
        super().__init__(long, short, **kw)
        self.plan_tokens, self.expand_tokens, self.answer_tokens = plan_tokens, expand_tokens, answer_tokens

    def _solve(self, run: _Run, p: Problem) -> str:
        plan = run.call("long", f"{self.fmt.head(p)}{self.PLAN}", kind="plan", max_tokens=self.plan_tokens,
                        stop=("\n\n",)).text.strip()
        run.escalated = True
        if not plan:
            run.notes.append("the long model wrote no instructions: the short model reasons alone")
        expanded = self._think(run, "short", p, self.expand_tokens,
                               so_far=f"Instructions: {plan}\n" if plan else "", kind="expand")
        thinking = (f"Instructions: {plan}\n" if plan else "") + expanded.text
        return self._answer_after(run, "short", p, thinking, self.answer_tokens).text


class StepRoute(PairPolicy):
    """RSD-style step routing: the short model drafts each reasoning step (a line), the long model scores it.

    Args:
        scorer: ``logprob`` (the long model's mean log-probability of the step's tokens; needs the
            ``prompt_logprobs`` capability) or ``judge`` (the long model answers yes/no to "is this step right").
        threshold: a ``logprob`` step is accepted at mean log-probability >= ``threshold``.
        max_steps: the most reasoning steps; then the answer is forced.
        step_tokens: the most tokens of one step.
    """

    name = "step-route"

    def __init__(self, long: Engine, short: Engine, *, scorer: str = "logprob", threshold: float = -2.0,
                 max_steps: int = 6, step_tokens: int = 32, answer_tokens: int = 24, **kw: Any) -> None:
        if scorer not in ("logprob", "judge"):
            raise UserError(f"StepRoute scorer must be 'logprob' or 'judge', got {scorer!r}")
        self.scorer = scorer
        super().__init__(long, short, **kw)
        self.threshold, self.max_steps = threshold, max_steps
        self.step_tokens, self.answer_tokens = step_tokens, answer_tokens

    def needs_for(self, role: str) -> tuple[str, ...]:
        return ("prompt_logprobs",) if role == "long" and self.scorer == "logprob" else ("stop_strings",)

    def _accept(self, run: _Run, prefix: str, step: str) -> bool:
        if self.scorer == "logprob":
            return run.score("long", prefix, step, kind="score") >= self.threshold
        verdict = run.call("long", f"{prefix}{step}\nIs the last line correct? Answer yes or no.\nAnswer:",
                           kind="judge", max_tokens=2, stop=("\n",)).text.strip().lower()
        return verdict.startswith("y")

    def _solve(self, run: _Run, p: Problem) -> str:
        thinking = ""
        for _ in range(self.max_steps):
            prefix = self.fmt.reasoning(p, thinking)
            draft = run.call("short", prefix, kind="step", max_tokens=self.step_tokens,
                             stop=("\n", self.fmt.close_tag))
            step = draft.text.strip()
            if not step:  # the short model closed its thinking
                break
            if self._accept(run, prefix, draft.text):
                thinking += step + "\n"
                continue
            run.discard("short", draft)
            run.escalated = True
            step = run.call("long", prefix, kind="step", max_tokens=self.step_tokens,
                            stop=("\n", self.fmt.close_tag)).text.strip()
            if not step:
                break
            thinking += step + "\n"
        else:
            run.notes.append(f"step cap ({self.max_steps}) reached: answer forced")
        prompt = self.fmt.after_thinking(p, thinking)
        answer = run.call("short", prompt, kind="answer", max_tokens=self.answer_tokens, stop=p.stop)
        if answer.text.strip() and self._accept(run, prompt, answer.text):
            return answer.text
        run.discard("short", answer)
        run.escalated = True
        return run.call("long", prompt, kind="answer", max_tokens=self.answer_tokens, stop=p.stop).text


class SentenceLead(PairPolicy):
    """FoReaL-style leading at text level: for each sentence of the reasoning, with probability ``p`` the long
    model writes its first ``lead`` tokens and the short model finishes it; otherwise the short model writes it.

    Args:
        lead: tokens the long model writes at the start of a led sentence.
        p: the probability that a sentence is led (seeded per question by ``seed``).
        max_sentences: the most sentences before the answer is forced.
    """

    name = "sentence-lead"
    needs: ClassVar[Mapping[str, tuple[str, ...]]] = {"long": ("stop_strings",), "short": ("stop_strings",)}
    SENTENCE_END = (". ", ".\n", "\n")

    def __init__(self, long: Engine, short: Engine, *, lead: int = 4, p: float = 1.0, max_sentences: int = 6,
                 sentence_tokens: int = 32, answer_tokens: int = 24, seed: int = 0, **kw: Any) -> None:
        if not 0 <= p <= 1:
            raise UserError(f"SentenceLead p must be in [0, 1], got {p}")
        super().__init__(long, short, **kw)
        self.lead, self.p, self.max_sentences = lead, p, max_sentences
        self.sentence_tokens, self.answer_tokens, self.seed = sentence_tokens, answer_tokens, seed

    def _solve(self, run: _Run, p: Problem) -> str:
        rng = random.Random(f"{self.seed}-{p.question}")
        thinking = ""
        stops = (*self.SENTENCE_END, self.fmt.close_tag)
        for _ in range(self.max_sentences):
            head = ""
            if rng.random() < self.p:
                run.escalated = True
                head = run.call("long", self.fmt.reasoning(p, thinking), kind="lead", max_tokens=self.lead,
                                stop=stops).text
                if not head.strip():
                    break
            rest = run.call("short", self.fmt.reasoning(p, thinking + head), kind="finish",
                            max_tokens=self.sentence_tokens, stop=stops).text
            sentence = (head + rest).strip()
            if not sentence:
                break
            thinking += sentence + ("" if sentence.endswith(".") else ".") + " "
        else:
            run.notes.append(f"sentence cap ({self.max_sentences}) reached: answer forced")
        prompt = self.fmt.after_thinking(p, thinking)
        head = run.call("long", prompt, kind="lead", max_tokens=min(self.lead, self.answer_tokens), stop=p.stop)
        if head.finish_reason == "stop":  # the long model wrote the whole (short) answer
            return head.text
        rest = run.call("short", prompt + head.text, kind="finish", max_tokens=self.answer_tokens, stop=p.stop)
        return head.text + rest.text


class AlternatingTurns(PairPolicy):
    """The Long-Short protocol without its training: the long model thinks a turn; the short model reads the
    thoughts and either answers (``Answer: ...``) or asks for another turn (``Rethink``). ``max_turns`` ends it
    (the released Long-Short loop has no cap): the short model must then answer. A reply with neither tag is
    taken as the answer, and a note says so.
    """

    name = "alternating"
    needs: ClassVar[Mapping[str, tuple[str, ...]]] = {"long": ("stop_strings",), "short": ("stop_strings",)}
    ASK = "If these thoughts are enough, write 'Answer: <answer>'; otherwise write 'Rethink'.\n"
    _TAG = re.compile(r"^\s*(answer\s*:|rethink)", re.IGNORECASE)

    def __init__(self, long: Engine, short: Engine, *, max_turns: int = 3, turn_tokens: int = 64,
                 answer_tokens: int = 24, **kw: Any) -> None:
        if max_turns < 1:
            raise UserError("AlternatingTurns needs max_turns >= 1")
        super().__init__(long, short, **kw)
        self.max_turns, self.turn_tokens, self.answer_tokens = max_turns, turn_tokens, answer_tokens

    def _solve(self, run: _Run, p: Problem) -> str:
        thoughts = ""
        run.escalated = True
        for turn in range(self.max_turns):
            more = run.call("long", self.fmt.reasoning(p, thoughts), kind="think", max_tokens=self.turn_tokens,
                            stop=self.fmt.think_stops).text.strip()
            thoughts += more + "\n"
            last = turn == self.max_turns - 1
            ask = f"{self.fmt.head(p)}Thoughts:\n{thoughts}{self.ASK}" + ("Answer:" if last else "")
            reply = run.call("short", ask, kind="turn", max_tokens=self.answer_tokens, stop=("\n",)).text
            if last:
                run.notes.append(f"turn cap ({self.max_turns}) reached: the short model answered")
                return reply
            m = self._TAG.match(reply)
            if m is None:
                run.notes.append("the short model's reply had no tag: taken as the answer")
                return reply
            if m.group(1).lower().startswith("answer"):
                return reply[m.end():]
        raise AssertionError("unreachable")


class Consensus(PairPolicy):
    """ARM's consensus mode, untrained: the short model answers in cheap formats (direct, with a short
    reasoning, with a different cue); if their normalized answers agree the policy answers, otherwise the long
    model reasons and answers. Code is not one of the formats: model-written code never runs in the host."""

    name = "consensus"

    def __init__(self, long: Engine, short: Engine, *, think: int = 128, short_think: int = 48,
                 answer_tokens: int = 24, normalizer: Normalizer | None = None, **kw: Any) -> None:
        super().__init__(long, short, normalizer=normalizer, **kw)
        self.think, self.short_think, self.answer_tokens = think, short_think, answer_tokens

    def _solve(self, run: _Run, p: Problem) -> str:
        norm = p.normalizer or self.normalizer or normalize_text
        direct = self._direct(run, "short", p, self.answer_tokens, kind="direct").text
        thought = self._think(run, "short", p, self.short_think, kind="cot").text
        cot = self._answer_after(run, "short", p, thought, self.answer_tokens).text
        cue = run.call("short", f"{self.fmt.head(p)}The answer is", kind="cue", max_tokens=self.answer_tokens,
                       stop=p.stop).text
        answers = [norm(first_line(t)) for t in (direct, cot, cue)]
        if answers[0] is not None and all(a == answers[0] for a in answers):
            return direct
        run.escalated = True
        run.notes.append(f"formats disagreed ({answers}): the long model reasons")
        long_thought = self._think(run, "long", p, self.think).text
        return self._answer_after(run, "long", p, long_thought, self.answer_tokens).text


COLLAB_POLICIES: dict[str, type[PairPolicy]] = {
    c.name: c for c in (LongOnly, ShortOnly, ThoughtInject, PlanExpand, StepRoute, SentenceLead, AlternatingTurns,
                        Consensus)
}
