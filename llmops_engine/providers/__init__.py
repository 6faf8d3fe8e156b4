"""Hosted OpenAI-compatible models ("providers") as llmops uses them.

Deployments, evaluations and `plan` all call a provider the same way: through
`providers.client`, the one place where HTTP to a hosted model happens, where retries,
rate limits and bounded reads are decided, and where every HTTP failure becomes a
`ProviderError` with an OpenAI-style code and no secret in its message.
"""
