"""tokenomy.agents: ``Agent`` (name, role, model, system prompt, tools, token limit), the standard roles (worker,
solver, critic, planner), and the reasoning policies that decide how much model to spend on a question:

- ``tokenomy.agents.collab``: a long and a short model sharing the reasoning (``ThoughtInject``, ``PlanExpand``,
  ``StepRoute``, ``SentenceLead``, ``AlternatingTurns``, ``Consensus``);
- ``tokenomy.agents.budget``: difficulty routers and budgets (``EntropyRouter``, ``ProbeRouter``, ``TaleBudget``,
  ``PlanAndBudget``, ``BudgetForcing``, ``ThinkingCap``);
- ``tokenomy.agents.answers``: reading a reply's answer (``normalize_answer`` by kind: number, text, yes/no,
  list) and comparing answers (``canonical``, ``answer_matches``);
- self-consistency with early stopping: ``tokenomy.agents.sampling`` (``Sample``, votes),
  ``tokenomy.agents.stopping`` (``FixedN``, ``ESC``, ``AdaptiveConsistency``, ``ShortMK``),
  ``tokenomy.agents.consistency`` (``SelfConsistency`` on an engine) and ``tokenomy.agents.replay`` (``replay``
  on stored samples).

Every policy is usable as an agent's model (``policy.as_engine()``). Agents talk to models only through
``tokenomy.kernels``.
"""

if __name__ != "tokenomy.agents":  # found as a top-level package from the repository root
    from tokenomy._toplevel import defer_to_installed

    defer_to_installed(__name__)
else:
    from .agent import ROLES, Agent, Role
    from .policy import Format, Policy, PolicyEngine, PolicyResult, Problem

__all__ = ["Agent", "Role", "ROLES", "Problem", "Format", "Policy", "PolicyEngine", "PolicyResult"]
