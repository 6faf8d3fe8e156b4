"""llmops: a declarative, GitOps engine for the whole lifecycle of an LLM application."""

__version__ = "0.1.0"
