"""tokenomy.tools: the ``Tool`` type, the ``@tool`` decorator and registry, adapters, built-in tools and
retrieval. Empty until the tools part of the planner issue (3) lands; planners accept any object with
``name``, ``args_model`` (pydantic) and ``async ainvoke(**kwargs)`` meanwhile."""
