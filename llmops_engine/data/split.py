"""Deterministic train/eval split by content hash, not by position.

A row goes to eval when a seeded SHA-256 of its (instruction, input, output) falls below
eval_fraction. The decision depends only on the row and the seed: stable across runs,
machines and Python versions, unaffected by file order or by rows added elsewhere
(adding data never moves an existing row between splits).
"""

from __future__ import annotations

from ..specs.dataset import Split
from .examples import Example
from .transforms import content_hash, content_hashes

_SCALE = float(2**64)


def is_eval(example: Example, split: Split) -> bool:
    # An eval-only Dataset keeps every row: hashes near 2**64 round up to 1.0 as floats,
    # so `< 1.0` alone would send a rare row to train.
    if split.eval_only():
        return True
    return content_hash(["split", split.seed], example) / _SCALE < split.eval_fraction


def eval_mask(batch, split: Split) -> list[bool]:
    """is_eval for each row of an Arrow batch of examples."""
    if split.eval_only():
        return [True] * batch.num_rows
    return [digest / _SCALE < split.eval_fraction for digest in content_hashes(["split", split.seed], batch)]
