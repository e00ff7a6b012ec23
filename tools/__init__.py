"""tokenomy.tools: the ``Tool`` type, the ``@tool`` decorator, the ``ToolRegistry``, adapters to LangChain tools
and OpenAI function schemas, and the built-in tools (``calc``, ``search``, ``lookup``, ``llm``).

Importing this package imports neither LangChain nor torch/transformers: the LangChain adapters import
``langchain-core`` when called.
"""

if __name__ != "tokenomy.tools":  # found as a top-level package from the repository root
    from tokenomy._toplevel import defer_to_installed

    defer_to_installed(__name__)
else:
    from .base import Tool, ToolArgumentError, ToolError, ToolTimeout
    from .builtin import CorpusIndex, calc, example_corpus_dir, llm_tool, lookup_tool, search_tool
    from .decorator import tool
    from .langchain import from_langchain, to_langchain
    from .registry import DuplicateTool, SideEffectsNotAllowed, ToolRegistry, UnknownTool, as_tool

__all__ = [
    "Tool",
    "tool",
    "ToolRegistry",
    "ToolError",
    "ToolTimeout",
    "ToolArgumentError",
    "UnknownTool",
    "SideEffectsNotAllowed",
    "as_tool",
    "DuplicateTool",
    "from_langchain",
    "to_langchain",
    "calc",
    "search_tool",
    "lookup_tool",
    "llm_tool",
    "example_corpus_dir",
    "CorpusIndex",
]
