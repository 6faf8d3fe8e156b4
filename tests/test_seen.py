"""SeenDigests (dedupe's memory) against a Python set, and the row keys it is given."""

from __future__ import annotations

import random

import numpy as np
import pyarrow as pa
import pytest

from llmops_engine.data.seen import SeenDigests
from llmops_engine.data.transforms import row_keys


def halves(keys: list[int]) -> tuple[np.ndarray, np.ndarray]:
    return (np.array([k >> 64 for k in keys], dtype=np.uint64),
            np.array([k & (2**64 - 1) for k in keys], dtype=np.uint64))


@pytest.mark.parametrize("distinct, batches, size", [(50, 5, 40), (3000, 40, 500), (20000, 12, 4000)])
def test_first_seen_equals_a_set_across_batches_and_within_one(distinct, batches, size):
    rng = random.Random(distinct)
    pool = [rng.getrandbits(128) for _ in range(distinct)]
    pool += [pool[0] ^ 1, pool[1] & ~(2**64 - 1)]  # keys sharing a high half with another key
    seen, expected = SeenDigests(), set()
    for _ in range(batches):
        batch = [rng.choice(pool) for _ in range(size)]
        want = []
        for key in batch:
            want.append(key not in expected)
            expected.add(key)
        assert seen.first_seen(*halves(batch)).tolist() == want
    assert len(seen) == len(expected)


def test_runs_stay_few_and_sorted():
    seen = SeenDigests()
    rng = random.Random(1)
    for _ in range(64):
        seen.first_seen(*halves([rng.getrandbits(128) for _ in range(100)]))
    assert len(seen) == 6400 and len(seen._runs) <= 8
    assert all((np.diff(high.astype(np.float64)) >= 0).all() for high, _ in seen._runs)


def test_an_empty_batch_is_fine():
    assert SeenDigests().first_seen(np.array([], np.uint64), np.array([], np.uint64)).tolist() == []


def test_row_keys_tell_null_empty_and_the_word_none_apart_and_depend_on_order():
    batch = pa.RecordBatch.from_pylist(
        [{"a": None, "b": "x"}, {"a": "None", "b": "x"}, {"a": "", "b": "x"}, {"a": "x", "b": None},
         {"a": None, "b": "x"}, {"a": "x", "b": ""}],
        schema=pa.schema([("a", pa.string()), ("b", pa.string())]))
    high, low = row_keys(batch, ["a", "b"])
    keys = list(zip(high.tolist(), low.tolist()))
    assert keys[0] == keys[4]
    assert len(set(keys)) == 5
    swapped = row_keys(pa.RecordBatch.from_pylist([{"a": "p", "b": "q"}, {"a": "q", "b": "p"}]), ["a", "b"])
    assert swapped[0][0] != swapped[0][1]
