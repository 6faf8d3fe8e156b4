"""Guardrails at runtime: the checks a Deployment's Guardrails run on requests and answers.

Pure Python, no Ray, nothing heavy at import (jsonschema and the tokenizer load on first use):
serving replicas and the Guardrail controller's test cases run the same code. See policy.py
for the semantics, stream.py for streamed answers, pii.py for what personal data is found.
"""

from __future__ import annotations

from .policy import Policy
from .stream import OutputGuard
from .verdicts import Finding, Verdict

__all__ = ["Finding", "OutputGuard", "Policy", "Verdict"]
