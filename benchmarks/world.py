"""A seeded synthetic world for multi-hop tool-use tasks: no model can answer its questions from memory.

``World(seed)`` makes fictional companies, people, cities, rivers and products with typed attributes (years,
counts, lengths, prices) and relations (a company's founder, a person's birthplace, a city's mayor ...), writes
them as a corpus of paragraphs (with distractor entities whose names resemble the real ones), and offers the
tools ``search(entity)`` (the entity's paragraph), ``lookup(entity, attribute)`` (one value) and
``calc(expression)`` (a number) over it. ``World.task(hops, branches)`` draws a question with its gold program:
``branches`` independent chains of ``hops`` lookups each (a chain follows relations, then reads a number), added
up by ``calc`` when there are several::

    from tokenomy.benchmarks.world import World
    world = World(seed=7)
    task = world.task(hops=3)
    task.question   # 'What is the population of the birthplace of the founder of Kelmar Works?'
    task.program    # the gold codified plan; task.answer: '412000'
    tools = world.tools(obs_tokens=200, failure_rate=0.1)

Knobs of the tools: ``obs_tokens`` (about how many tokens, o200k_base, each ``lookup`` observation has: the
value, then ``[notes: ...]`` that a model reading it must skip; the tools themselves ignore notes in their
inputs, so evidence can be passed on whole, as ReWOO's paper format does), ``failure_rate`` (a deterministic
share of tool calls that fail with a transient error; trying the same call again may succeed), ``latency_s``.

Everything is deterministic in ``seed``: the same seed gives the same world, tasks, observations and failures.
"""

from __future__ import annotations

import asyncio
import hashlib
import random
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tokenomy.planners.exemplars import Exemplar
from tokenomy.tools.builtin.prose import resolve_attribute

__all__ = ["World", "Task", "GoldStep", "plain", "slug"]

# type -> relation -> target type
RELATIONS: dict[str, dict[str, str]] = {
    "company": {"founder": "person", "headquarters": "city", "product": "product"},
    "person": {"birthplace": "city", "employer": "company"},
    "city": {"mayor": "person", "river": "river"},
    "river": {"source": "city"},
    "product": {"maker": "company"},
}
# type -> numeric attribute -> (low, high)
NUMBERS: dict[str, dict[str, tuple[int, int]]] = {
    "company": {"founded": (1850, 2010), "employees": (40, 90000)},
    "person": {"born": (1900, 1995)},
    "city": {"population": (8000, 3000000)},
    "river": {"length": (40, 2400)},
    "product": {"released": (1950, 2024), "price": (5, 900)},
}
REL_PHRASE = {"founder": "the founder", "headquarters": "the headquarters city", "product": "the main product",
              "birthplace": "the birthplace", "employer": "the employer", "mayor": "the mayor",
              "river": "the river", "source": "the source town", "maker": "the maker"}
NUM_PHRASE = {"founded": "the founding year", "employees": "the number of employees", "born": "the birth year",
              "population": "the population", "length": "the length in kilometres",
              "released": "the release year", "price": "the price in crowns"}

_SYL = ["ka", "lo", "mar", "ven", "tor", "ri", "sel", "an", "dru", "pel", "zar", "vo", "quin", "hal", "bre", "mos",
        "tal", "ny", "gor", "ise", "ur", "wen", "fa", "ko", "lem", "dav", "or", "syl", "thu", "ba"]
_COMPANY = ["Motors", "Instruments", "Works", "Foods", "Labs", "Textiles", "Shipping", "Optics"]
_NOTE_WORDS = ["archive", "registry", "ledger", "survey", "record", "index", "volume", "entry", "clerk", "office",
               "season", "harbour", "market", "council", "charter", "atlas", "gazette", "census", "chapter", "folio"]
_NOTES = re.compile(r"\s*\[notes:[^\]]*\]")


def plain(text: Any) -> str:
    """A tool input as the world's tools read it: ``[notes: ...]`` removed, whitespace and quotes trimmed."""
    return _NOTES.sub("", str(text)).strip().strip("\"'").strip()


@dataclass(frozen=True)
class GoldStep:
    """One tool call of a gold program.

    Attributes:
        name: its result's name in the codified plan.
        tool, args: the call (``args`` as plan-language expressions: ``'"Telmar"'`` or a name).
        value: the value the step yields (without notes).
        reads: the names of earlier steps it reads.
        subject: the entity (or, for ``calc``, the expression) the step is about, with values filled in.
        phrase: what it finds, as a noun phrase over the question's names ("the mayor of the birthplace of X").
        attribute: the looked-up attribute ("" for ``calc``).
    """

    name: str
    tool: str
    args: tuple[tuple[str, str], ...]
    value: str
    reads: tuple[str, ...]
    subject: str
    phrase: str
    attribute: str = ""


@dataclass(frozen=True)
class Task:
    """A question, its gold program (``steps`` in order), and its answer."""

    id: str
    question: str
    steps: tuple[GoldStep, ...]
    answer: str
    hops: int
    branches: int
    answer_name: str = ""

    @property
    def program(self) -> str:
        """The gold program as a codified plan (results numbered ``e1``, ``e2`` ..., arguments by keyword, as
        the ``rewoo`` planner is shown plans)."""
        return self.numbered()[0]

    @property
    def shortest_program(self) -> str:
        """The gold program in the plan language's shortest form (arguments by position)."""
        return self.numbered(keywords=False)[0]

    def numbered(self, known: Mapping[int, str] | None = None, first: int = 1, *,
                 keywords: bool = True) -> tuple[str, dict[int, str]]:
        """The program, or with ``known`` (step index -> the name its result has) only the steps still missing,
        as a re-plan writes them: new results named from ``e<first>`` on; arguments by keyword or by position.
        Returns the text and every step's result name."""
        from tokenomy.planners import parse_plan, print_plan
        from tokenomy.planners.validate import number_results

        known = dict(known or {})
        rest = [s for i, s in enumerate(self.steps) if i not in known]
        lines = [f"{s.name} = {s.tool}({', '.join(f'{k}={v}' for k, v in s.args)})" for s in rest]
        plan, new = number_results(parse_plan("\n".join([*lines, f"answer({self.answer_name})"])), first,
                                   {self.steps[i].name: n for i, n in known.items()})
        if not keywords:  # the shortest form: gold arguments are in the tools' order, so by position
            plan = plan.model_copy(update={"body": [_positional(st) for st in plan.body]})
        index = {s.name: i for i, s in enumerate(self.steps)}
        return print_plan(plan), {**known, **{index[gold]: name for name, gold in new.items()}}

    def _eid(self) -> dict[str, str]:
        return {s.name: f"#E{i}" for i, s in enumerate(self.steps, 1)}

    def nl_input(self, step: GoldStep) -> str:
        """The step's input in ReWOO's paper format (earlier results as ``#E<n>``)."""
        eid = self._eid()
        if step.tool == "calc":
            return " + ".join(eid[r] for r in step.reads)
        entity = eid[step.reads[0]] if step.reads else step.subject
        return f"{entity}, {step.attribute}"

    @property
    def nl_plan(self) -> str:
        """The gold program in ReWOO's paper format."""
        eid = self._eid()
        out = []
        for s in self.steps:
            if s.tool == "calc":
                what = "Add up " + " and ".join(eid[r] for r in s.reads) + "."
            else:
                subj = eid[s.reads[0]] if s.reads else s.subject
                what = f"Find {_noun(s.attribute)} of {subj}."
            out += [f"Plan: {what}", f"{eid[s.name]} = {s.tool}[{self.nl_input(s)}]"]
        return "\n".join(out)

    def text_input(self, step: GoldStep) -> str:
        """The step's input as ReAct and plan-and-execute write it, with the values they have read."""
        return step.subject if step.tool == "calc" else f"{step.subject}, {step.attribute}"

    def thought(self, step: GoldStep) -> str:
        if step.tool == "calc":
            return f"Now add them up: {step.subject}."
        return f"I need {_noun(step.attribute)} of {step.subject}."

    def description(self, step: GoldStep) -> str:
        """The step as plan-and-execute's planner writes it (over the question's names, not the values)."""
        if step.tool == "calc":
            return "Add up the " + " and the ".join(_noun(s.attribute).removeprefix("the ") + " found"
                                                    for s in self.steps if s.name in step.reads) + "."
        return f"Look up {step.phrase}."

    def exemplar(self, observations: dict[str, str]) -> Exemplar:
        """This task as a worked exemplar in every strategy's format (``observations``: each step's tool output,
        as the tools return it)."""
        react = [f"Question: {self.question}"]
        for s in self.steps:
            obs = observations[s.name].replace("\n", " ")
            react += [f"Thought: {self.thought(s)}", f"Action: {s.tool}[{self.text_input(s)}]", f"Observation: {obs}"]
        react += ["Thought: I know the answer", f"Final Answer: {self.answer}"]
        first = self.steps[0]
        return Exemplar(question=self.question, program=self.program, nl_plan=self.nl_plan, react="\n".join(react),
                        steps=tuple(self.description(s) for s in self.steps),
                        action=f"{first.tool}[{self.text_input(first)}]")


def _positional(stmt: Any) -> Any:
    """An assignment of a call with its arguments by position (other statements as they are)."""
    from tokenomy.planners import ast as A

    if not (isinstance(stmt, A.Assign) and isinstance(stmt.value, A.Call)):
        return stmt
    call = stmt.value.model_copy(update={"args": [("", v) for _, v in stmt.value.args]})
    return stmt.model_copy(update={"value": call})


def _noun(attribute: str) -> str:
    return REL_PHRASE.get(attribute) or NUM_PHRASE.get(attribute) or f"the {attribute}"


@dataclass
class Entity:
    name: str
    type: str
    facts: dict[str, Any] = field(default_factory=dict)


class World:
    """A seeded world of entities, its corpus, tools and tasks.

    Args:
        seed: everything is a function of it.
        per_type: entities of each type (distractors come on top: one per five, with a similar name).
    """

    def __init__(self, seed: int = 0, per_type: int = 30) -> None:
        self.seed = seed
        rng = random.Random(f"world-{seed}")
        self.entities: dict[str, Entity] = {}
        by_type: dict[str, list[str]] = {t: [] for t in RELATIONS}
        for typ in RELATIONS:
            for _ in range(per_type):
                name = self._new_name(rng, typ)
                self.entities[name] = Entity(name, typ)
                by_type[typ].append(name)
        self.by_type = by_type
        for e in list(self.entities.values()):
            for rel, target in RELATIONS[e.type].items():
                e.facts[rel] = rng.choice([n for n in by_type[target] if n != e.name])
            for num, (lo, hi) in NUMBERS[e.type].items():
                e.facts[num] = rng.randint(lo, hi)
        # Distractors: similar names, other facts, never in a task.
        self.distractors: list[Entity] = []
        for typ, names in by_type.items():
            for name in names[: max(1, per_type // 5)]:
                twin = Entity(_twin(name, rng), typ)
                for rel, target in RELATIONS[typ].items():
                    twin.facts[rel] = rng.choice(by_type[target])
                for num, (lo, hi) in NUMBERS[typ].items():
                    twin.facts[num] = rng.randint(lo, hi)
                if twin.name not in self.entities:
                    self.distractors.append(twin)
        self._all = {e.name.lower(): e for e in [*self.entities.values(), *self.distractors]}
        self._tasks = 0

    def _new_name(self, rng: random.Random, typ: str) -> str:
        while True:
            stem = "".join(rng.choice(_SYL) for _ in range(rng.randint(2, 3))).capitalize()
            name = {"company": f"{stem} {rng.choice(_COMPANY)}", "river": f"River {stem}",
                    "product": f"{stem} {rng.randint(2, 99)}",
                    "person": f"{''.join(rng.choice(_SYL) for _ in range(2)).capitalize()} {stem}"}.get(typ, stem)
            if name.lower() not in {n.lower() for n in self.entities}:
                return name

    # -- facts and text ------------------------------------------------------------------------------------

    def entity(self, name: str) -> Entity:
        e = self._all.get(plain(name).lower())
        if e is None:
            raise LookupError(f"no entity named {plain(name)!r}")
        return e

    def fact(self, entity: str, attribute: str) -> Any:
        e = self.entity(entity)
        attr = plain(attribute).lower().replace(" ", "_")
        if attr not in e.facts:  # "birth year" is born, as the prose lookup reads it
            attr = resolve_attribute(plain(attribute), e.facts) or attr
        if attr not in e.facts:
            raise LookupError(f"{e.name} has no attribute {attr!r}; it has: {', '.join(sorted(e.facts))}")
        return e.facts[attr]

    def paragraph(self, e: Entity) -> str:
        f = e.facts
        if e.type == "company":
            return (f"{e.name} is a company founded in {f['founded']} by {f['founder']}. Its headquarters city is "
                    f"{f['headquarters']}. Its main product is {f['product']}. It has {f['employees']} employees.")
        if e.type == "person":
            return (f"{e.name} was born in {f['born']}. The birthplace of {e.name} is {f['birthplace']}. "
                    f"{e.name} works for {f['employer']}.")
        if e.type == "city":
            return (f"{e.name} is a city of {f['population']} people. Its mayor is {f['mayor']}. "
                    f"The river of {e.name} is the {f['river']}.")
        if e.type == "river":
            return f"The {e.name} is {f['length']} kilometres long. Its source town is {f['source']}."
        return (f"{e.name} is a product made by {f['maker']}. It was released in {f['released']} and its price is "
                f"{f['price']} crowns.")

    def write_corpus(self, directory: str | Path) -> Path:
        """The world as one Markdown file per entity (distractors included), for the built-in search tools."""
        out = Path(directory)
        out.mkdir(parents=True, exist_ok=True)
        for e in [*self.entities.values(), *self.distractors]:
            (out / f"{slug(e.name)}.md").write_text(f"# {e.name}\n\n{self.paragraph(e)}\n", encoding="utf-8")
        return out

    def notes(self, key: str, tokens: int) -> str:
        """Deterministic filler (no commas or brackets) of about ``tokens`` o200k_base tokens."""
        from tokenomy.kernels.tokens import count_text

        if tokens <= 0:
            return ""
        rng = random.Random(f"notes-{self.seed}-{key}")
        words: list[str] = []
        text = ""
        while count_text(text) < tokens:
            words.extend(rng.choice(_NOTE_WORDS) for _ in range(8))
            text = " ".join(words)
        while len(words) > 1 and count_text(" ".join(words)) > tokens:
            words.pop()
        return " ".join(words)

    def observation(self, entity: str, attribute: str, value: Any, obs_tokens: int) -> str:
        """What ``lookup`` returns: the value, then notes filling it up to about ``obs_tokens`` tokens."""
        from tokenomy.kernels.tokens import count_text

        text = str(value)
        room = obs_tokens - count_text(text) - 4
        if room <= 0:
            return text
        return f"{text} [notes: {self.notes(f'{entity}/{attribute}', room)}]"

    # -- tools ---------------------------------------------------------------------------------------------

    def tools(self, *, obs_tokens: int = 20, failure_rate: float = 0.0, latency_s: float = 0.0) -> list[Any]:
        """``search``, ``lookup`` and ``calc`` over this world (fresh instances; failures count per instance)."""
        from tokenomy.tools import tool

        attempts: dict[str, int] = {}

        async def maybe_fail(key: str) -> None:
            if latency_s:
                await asyncio.sleep(latency_s)
            n = attempts.get(key, 0)
            attempts[key] = n + 1
            digest = hashlib.sha256(f"{self.seed}/{key}/{n}".encode()).digest()
            if failure_rate and int.from_bytes(digest[:4], "big") / 2**32 < failure_rate:
                raise ConnectionError("the registry did not answer (transient); try again")

        @tool(name="search")
        async def search(entity: str) -> str:
            """The paragraph about an entity.

            Args:
                entity: its name.
            """
            await maybe_fail(f"search/{plain(entity).lower()}")
            return self.search_text(entity)

        @tool(name="lookup")
        async def lookup(entity: str, attribute: str) -> str:
            """One attribute of an entity.

            Args:
                entity: its name.
                attribute: e.g. founder, population, length.
            """
            await maybe_fail(f"lookup/{plain(entity).lower()}/{plain(attribute).lower()}")
            return self.lookup_text(entity, attribute, obs_tokens)

        @tool(name="calc")
        async def calc(expression: str | float) -> int | float:
            """Evaluate an arithmetic expression.

            Args:
                expression: e.g. "1969 - 1921".
            """
            await maybe_fail(f"calc/{plain(expression) if isinstance(expression, str) else expression}")
            return calc_value(expression)

        return [search, lookup, calc]

    def search_text(self, entity: str) -> str:
        """What the ``search`` tool returns: the entity's paragraph (``LookupError`` for an unknown name)."""
        return self.paragraph(self.entity(entity))

    def lookup_text(self, entity: str, attribute: str, obs_tokens: int = 20) -> str:
        """What the ``lookup`` tool returns: one attribute's observation (``LookupError`` for an unknown one)."""
        value = self.fact(entity, attribute)
        return self.observation(self.entity(entity).name, plain(attribute).lower(), value, obs_tokens)

    # -- tasks ---------------------------------------------------------------------------------------------

    def task(self, hops: int = 2, branches: int = 1, *, rng: random.Random | None = None) -> Task:
        """A task of ``branches`` chains of ``hops`` lookups (1-6 and 1-4), added up by ``calc`` if several."""
        if not 1 <= hops <= 8 or not 1 <= branches <= 4:
            raise ValueError("hops must be 1-8 and branches 1-4")
        self._tasks += 1
        rng = rng or random.Random(f"task-{self.seed}-{hops}-{branches}-{self._tasks}")
        steps: list[GoldStep] = []
        finals: list[tuple[str, str, str]] = []
        used: set[str] = set()
        starts = rng.sample(sorted(self.entities), k=len(self.entities))
        for b in range(branches):
            chain = self._chain(rng, hops, starts, used)
            start, rels, num = chain
            used.add(start)
            subject, phrase, prev = start, start, None
            for attr in [*rels, num]:
                value = self.entities[subject].facts[attr]
                name = attr if branches == 1 else f"{attr}_{b + 1}"
                while any(s.name == name for s in steps):
                    name += "_2"
                phrase = f"{_noun(attr)} of {phrase}"
                entity_arg = prev if prev else f'"{subject}"'
                steps.append(GoldStep(name=name, tool="lookup", args=(("entity", entity_arg),
                                                                      ("attribute", f'"{attr}"')),
                                      value=str(value), reads=(prev,) if prev else (), subject=subject,
                                      phrase=phrase, attribute=attr))
                prev, subject = name, str(value)
            finals.append((prev or "", phrase, subject))
        if branches == 1:
            question = f"What is {finals[0][1]}?"
            answer, answer_name = finals[0][2], finals[0][0]
        else:
            total = sum(int(v) for _, _, v in finals)
            names = [n for n, _, _ in finals]
            expr = ' + " + " + '.join(names)
            steps.append(GoldStep(name="total", tool="calc", args=(("expression", expr),), value=str(total),
                                  reads=tuple(names), subject=" + ".join(v for _, _, v in finals),
                                  phrase="the sum"))
            question = "What is the sum of " + " and ".join(p for _, p, _ in finals) + "?"
            answer, answer_name = str(total), "total"
        digest = hashlib.sha1(question.encode()).hexdigest()[:8]
        return Task(id=f"h{hops}b{branches}-{digest}", question=question, steps=tuple(steps),
                    answer=answer, hops=hops, branches=branches, answer_name=answer_name)

    def _chain(self, rng: random.Random, hops: int, starts: list[str], used: set[str]) -> tuple[str, list[str], str]:
        for start in starts:
            if start in used:
                continue
            e, rels, seen = self.entities[start], [], {start}
            ok = True
            for _ in range(hops - 1):
                options = [r for r, _ in RELATIONS[e.type].items() if e.facts[r] not in seen]
                if not options:
                    ok = False
                    break
                rel = rng.choice(options)
                rels.append(rel)
                e = self.entities[e.facts[rel]]
                seen.add(e.name)
            if ok:
                return start, rels, rng.choice(sorted(NUMBERS[e.type]))
        raise ValueError(f"no chain of {hops} hops left in this world")

    def tasks(self, n: int, hops: int, branches: int = 1, *, salt: str = "") -> list[Task]:
        """``n`` tasks of the same shape, deterministic in the seed (another ``salt``, other tasks)."""
        rng = random.Random(f"tasks-{self.seed}-{hops}-{branches}-{salt}")
        return [self.task(hops, branches, rng=rng) for _ in range(n)]

    def observations(self, task: Task, obs_tokens: int = 20) -> dict[str, str]:
        """Each gold step's tool output, as the tools return it."""
        out = {}
        for s in task.steps:
            out[s.name] = s.value if s.tool == "calc" else self.observation(s.subject, s.attribute, s.value,
                                                                            obs_tokens)
        return out

    def exemplars(self, k: int, obs_tokens: int = 20) -> list[Exemplar]:
        """``k`` worked tasks (from a different part of the seed than ``tasks``): a 2-branch task of 2 hops
        first (chaining, parallel branches and ``calc`` in one), then chains of 3, 2, 4 ... hops."""
        rng = random.Random(f"exemplars-{self.seed}")
        shapes = [(2, 2), (3, 1), (2, 1), (4, 1), (1, 2), (3, 2)]
        out = []
        for hops, branches in shapes[:k]:
            t = self.task(hops, branches, rng=rng)
            out.append(t.exemplar(self.observations(t, obs_tokens)))
        return out


def _twin(name: str, rng: random.Random) -> str:
    head, _, tail = name.partition(" ")
    return f"{head}{rng.choice(_SYL)} {tail}".strip() if tail else name + rng.choice(_SYL)


def calc_value(expression: str | float) -> int | float:
    """What the ``calc`` tool returns: the expression's value, an integer where it is whole."""
    from tokenomy.tools.builtin.calculator import evaluate

    value = evaluate(plain(expression) if isinstance(expression, str) else expression)
    return int(value) if float(value).is_integer() else value


def slug(name: str) -> str:
    """The file stem of an entity in ``World.write_corpus``: ``"Kelmar Works"`` -> ``"kelmar-works"``."""
    return re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")
