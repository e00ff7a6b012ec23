"""tokenomy.graphs: ``AgentGraph`` on networkx, its compilation to a LangGraph ``StateGraph``, pruning policies
and rendering. Empty until the graph issue (5) lands."""
