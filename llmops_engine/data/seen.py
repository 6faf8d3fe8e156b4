"""Which 128-bit keys a stream has seen, in 16 bytes each: `dedupe` at ten million rows.

A Python set of 16-byte digests costs ~80 bytes per entry (800 MB for 10 M distinct keys); here
a key is two 64-bit halves, and the keys live in a few runs of NumPy arrays sorted by the high half (a log-structured merge:
a new run is merged into an older one of similar size, so there are O(log n) runs and each
digest is re-sorted O(log n) times). A batch is answered with one binary search per run.

Keys that share their high half (odds ~n²/2**65: 3 in a million at 10 M distinct keys) sit next
to each other in a run; the few searches that land on such a group compare each of its keys.
"""

from __future__ import annotations

from typing import Any


class SeenDigests:
    def __init__(self) -> None:
        self._runs: list[tuple[Any, Any]] = []  # (first 8 bytes sorted, last 8 bytes), largest first

    def first_seen(self, high: Any, low: Any) -> Any:
        """For each key (NumPy uint64 halves), whether this is its first appearance (earlier
        batches, then earlier in this batch); records them all. A NumPy bool array."""
        import numpy as np

        first = np.zeros(len(high), dtype=bool)
        if not len(high):
            return first
        order = np.lexsort((low, high))  # stable: a key's first position leads its group
        sorted_high, sorted_low = high[order], low[order]
        leads = np.ones(len(order), dtype=bool)  # sorted by high: the searches walk each run in order
        leads[1:] = (sorted_high[1:] != sorted_high[:-1]) | (sorted_low[1:] != sorted_low[:-1])
        unique_high, unique_low, positions = sorted_high[leads], sorted_low[leads], order[leads]
        fresh = ~self._contains(unique_high, unique_low)
        first[positions[fresh]] = True
        self._add(unique_high[fresh], unique_low[fresh])
        return first

    def __len__(self) -> int:
        return sum(len(high) for high, _ in self._runs)

    def _contains(self, high: Any, low: Any) -> Any:
        import numpy as np

        found = np.zeros(len(high), dtype=bool)
        for run_high, run_low in self._runs:
            first = np.searchsorted(run_high, high, side="left")
            last = np.searchsorted(run_high, high, side="right")
            single = last - first == 1
            found[single] |= run_low[first[single]] == low[single]
            for index in np.flatnonzero(last - first > 1):  # a shared high half: compare each
                found[index] |= bool((run_low[first[index]:last[index]] == low[index]).any())
        return found

    def _add(self, high: Any, low: Any) -> None:
        if not len(high):
            return
        while self._runs and len(self._runs[-1][0]) <= 2 * len(high):
            high, low = _merged(*self._runs.pop(), high, low)
        self._runs.append((high, low))


def _merged(high_a: Any, low_a: Any, high_b: Any, low_b: Any) -> tuple[Any, Any]:
    """Two runs sorted by `high` as one, without sorting again (memory: the result)."""
    import numpy as np

    slots = np.searchsorted(high_a, high_b) + np.arange(len(high_b))
    from_a = np.ones(len(high_a) + len(high_b), dtype=bool)
    from_a[slots] = False
    high, low = np.empty(len(from_a), dtype=np.uint64), np.empty(len(from_a), dtype=np.uint64)
    high[slots], low[slots] = high_b, low_b
    high[from_a], low[from_a] = high_a, low_a
    return high, low
