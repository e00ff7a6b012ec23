"""tokenomy.agents: ``Agent`` (name, role, model, system prompt, tools, token limit) and the standard roles
(worker, solver, critic, planner). Long/short-thought collaboration policies come with issue 6. Agents talk to
models only through ``tokenomy.kernels``."""

from .agent import ROLES, Agent, Role

__all__ = ["Agent", "Role", "ROLES"]
