"""``Agent``: who speaks in a multi-agent workflow (name, role, model, system prompt, tools, token limit).

An agent is a value: it holds no engine. Whoever runs it (a graph, a strategy) resolves ``model`` (a model spec
such as ``embedded`` or ``vllm:/models/qwen``; ``None`` means the runner's default) through ``tokenomy.kernels``,
so agents that name the same model share one engine and its prefix cache.

The standard roles (``ROLES``) give an agent its default system prompt and say whether it speaks in codified
messages: a ``planner`` (with tools) writes and runs a plan and passes on the plan with its results; a ``critic``
and a ``solver`` pass on ``answer = "..."``; a ``worker`` passes on its reply as written.
"""

from __future__ import annotations

import re
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

__all__ = ["Agent", "ROLES", "Role"]

_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_-]{0,63}$")


class Role(BaseModel):
    """A standard role: its default system prompt and whether its messages are codified."""

    model_config = ConfigDict(frozen=True)

    prompt: str
    codified: bool


ROLES: dict[str, Role] = {
    "worker": Role(prompt="Work out the answer to the question. Be brief; end with a line 'answer: <answer>'.",
                   codified=False),
    "solver": Role(prompt="Give the answer to the question, using what the others said where it helps.",
                   codified=True),
    "critic": Role(prompt="Check the answers the others gave and give the answer you find right.", codified=True),
    "planner": Role(prompt="Plan which tools to call to answer the question.", codified=True),
}


class Agent(BaseModel):
    """One agent.

    Args:
        name: unique in its team; letters, digits, ``_`` and ``-``.
        role: a standard role (``worker``, ``solver``, ``critic``, ``planner``) or any other word (then ``prompt``
            is required).
        model: a model spec (``embedded``, ``hf:<dir>``, ``vllm:<dir>``, ``openai:<model>@<url>``); ``None``: the
            runner's default model.
        prompt: the system prompt (default: the role's).
        tools: names of the tools it may use (a ``planner`` with tools writes and runs a plan).
        codified: whether its messages are codified (``answer = "..."`` or a plan); default: the role's.
        max_tokens: the most tokens one of its replies may have.
        budget: the completion tokens it grants the agents it speaks to: its codified messages carry
            ``budget = N``, and an agent answers within the smallest budget it receives (and its own
            ``max_tokens``). Budgets so flow along a graph's edges, from planners and critics to workers.
    """

    model_config = ConfigDict(frozen=True)

    name: str
    role: str = "worker"
    model: str | None = None
    prompt: str = ""
    tools: tuple[str, ...] = ()
    codified: bool | None = None
    max_tokens: int = Field(default=64, ge=1)
    budget: int | None = Field(default=None, ge=1)

    @field_validator("name")
    @classmethod
    def _check_name(cls, v: str) -> str:
        if not _NAME.match(v):
            raise ValueError(f"agent name {v!r} must be letters, digits, '_' or '-' (starting with a letter or '_')")
        return v

    @model_validator(mode="after")
    def _check_role(self) -> Agent:
        if self.role not in ROLES and not self.prompt.strip():
            raise ValueError(f"agent {self.name!r} has role {self.role!r}, which is not one of "
                             f"{', '.join(ROLES)}: give it a prompt")
        return self

    @property
    def system_prompt(self) -> str:
        return self.prompt.strip() or ROLES[self.role].prompt

    @property
    def is_codified(self) -> bool:
        if self.codified is not None:
            return self.codified
        role = ROLES.get(self.role)
        return role.codified if role is not None else False

    @property
    def plans(self) -> bool:
        """Whether it writes and runs a plan (a ``planner`` that has tools)."""
        return self.role == "planner" and bool(self.tools)

    def describe(self) -> dict[str, Any]:
        return self.model_dump(mode="json")
