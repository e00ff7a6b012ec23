"""tokenomy.agents: ``Agent`` (role, model, system prompt, tools, budget), the standard roles (planner, worker,
solver, critic) and long/short-thought collaboration policies. Empty until the collaboration issue (6) lands;
agents talk to models only through ``tokenomy.kernels``."""
