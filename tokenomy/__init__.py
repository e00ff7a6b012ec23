"""tokenomy: multi-agent LLM workflows that spend as few tokens as the task allows."""
