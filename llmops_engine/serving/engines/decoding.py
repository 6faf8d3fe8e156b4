"""The transformers engine: one decode loop per replica, requests joining between decode steps.

Continuous (iteration-level) batching: a decode thread holds the active sequences in one
batch with one KV cache and runs one forward pass per new token for all of them. A request
that arrives while others decode is prefilled on its own and joins the batch before the next
step — it does not wait for the batch to finish (measured against request-level batching in
bench/batching_bench.py). Each new token leaves as soon as it is sampled, so time to first
token is one prefill, not a whole answer.

The batch is left-padded: rows of different lengths share one cache whose columns a row has
not used are masked out, and every position id comes from the row's own token count. A row
that finishes (end of turn, max_new_tokens, a stop string, its client left) is dropped from
the cache at once, and leading columns no row uses any more are cut.

A batch is shared by many clients, so one request's failure must not fail the others: each
row samples on its own (its own seeded generator: a seed gives the same answer whatever it
is batched with), a prefill that raises is retried one request at a time so only the request
at fault fails, and only a failed decode step (the model itself) fails the rows it held.
"""

from __future__ import annotations

import asyncio
import threading
import time
from dataclasses import dataclass, field
from typing import Any, AsyncIterator, Callable

from ...errors import EngineError
from .text import AnswerText


@dataclass(eq=False)
class Sequence:
    """One prompt being answered: what the decode thread needs, and where its events go."""

    prompt_ids: list[int]
    params: dict[str, Any]
    answer: AnswerText
    deliver: Callable[[dict[str, Any]], None]
    generator: Any = None  # a torch.Generator for sampled rows
    generated: int = 0
    cancelled: bool = False  # the client left: dropped at the next step
    submitted: float = field(default_factory=time.perf_counter)


@dataclass
class Batch:
    rows: list[Sequence]
    cache: Any  # DynamicCache, one row per sequence, left-padded
    mask: Any  # attention mask (rows, columns)
    last: Any  # the token each row feeds next (rows,)


class TransformersEngine:
    """The model of this replica behind a continuous-batching decode loop (a daemon thread)."""

    def __init__(self, model, max_batch_size: int = 8, batch_wait_timeout_s: float = 0.02) -> None:
        self.model = model  # a LoadedModel
        self.max_batch_size, self.batch_wait_timeout_s = max_batch_size, batch_wait_timeout_s
        self.stop_ids = set(model.stop_ids())
        self._pending: list[Sequence] = []
        self._wake = threading.Condition()
        self._closing = False
        self._thread: threading.Thread | None = None
        self._batch: Batch | None = None
        self.steps = self.stepped_rows = 0  # how full steps get (mean_batch_size)
        self.generated_tokens = 0
        self.peak_batch_tokens = 0  # most cache positions (rows x columns) one step held

    def configure(self, max_batch_size: int, batch_wait_timeout_s: float) -> None:
        self.max_batch_size, self.batch_wait_timeout_s = max_batch_size, batch_wait_timeout_s

    def count_tokens(self, text: str) -> int:
        return len(self.model.encode(text))

    def info(self) -> dict[str, Any]:
        batch = self._batch
        return {"engine": "transformers", "batches": self.steps,
                "mean_batch_size": self.stepped_rows / self.steps if self.steps else 0.0,
                "peak_batch_tokens": self.peak_batch_tokens, "generated_tokens": self.generated_tokens,
                "active": len(batch.rows) if batch else 0, "waiting": len(self._pending)}

    def close(self) -> None:
        """Take no new request; the decode thread ends once the requests it has are answered
        (a version swapped out mid-request still finishes that request)."""
        with self._wake:
            self._closing = True
            self._wake.notify_all()

    async def stream(self, prompt: str, params: dict[str, Any], stops: list[str]) -> AsyncIterator[dict[str, Any]]:
        loop, queue = asyncio.get_running_loop(), asyncio.Queue()

        def deliver(event: dict[str, Any]) -> None:
            try:
                loop.call_soon_threadsafe(queue.put_nowait, event)
            except RuntimeError:  # the replica's loop is gone: nobody is waiting any more
                pass

        decode = lambda ids: self.model.tokenizer.decode(ids, skip_special_tokens=True)  # noqa: E731
        sequence = Sequence(self.model.encode(prompt), params, AnswerText(decode, stops), deliver)
        self._submit(sequence)
        try:
            while True:
                event = await queue.get()
                if "failure" in event:
                    raise EngineError(event["failure"])
                yield event
                if "done" in event:
                    return
        finally:
            sequence.cancelled = True  # a client that left stops its row at the next step

    # the decode thread ------------------------------------------------------------------
    def _submit(self, sequence: Sequence) -> None:
        with self._wake:
            if self._closing:
                raise EngineError("this model version is being unloaded")
            self._pending.append(sequence)
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="llmops-decode", daemon=True)
                self._thread.start()
            self._wake.notify_all()

    def _run(self) -> None:
        import torch

        with torch.inference_mode():
            while True:
                joining = self._joining()
                if joining is None:
                    return
                try:
                    if joining:
                        self._admit(joining)
                    if self._batch is not None:
                        self._step()
                except Exception as exc:  # noqa: BLE001 - a bug or no memory: fail what it held, keep serving
                    # A dead decode thread would leave every later request of the replica waiting.
                    held = (self._batch.rows if self._batch else []) + joining
                    self._fail([row for row in held if not row.cancelled], f"{type(exc).__name__}: {exc}")
                    for row in held:
                        row.cancelled = True
                    self._batch = None

    def _joining(self) -> list[Sequence] | None:
        """The waiting sequences that fit in the batch now; None once the engine is closed and has
        answered everything it took. While idle it waits for a first request, then up to
        batch_wait_timeout_s for others to arrive with it (one prefill for all of them)."""
        with self._wake:
            if self._batch is None:
                while not self._pending and not self._closing:
                    self._wake.wait()
                if not self._pending:
                    return None
                deadline = time.monotonic() + self.batch_wait_timeout_s
                while len(self._pending) < self.max_batch_size and not self._closing:
                    left = deadline - time.monotonic()
                    if left <= 0:
                        break
                    self._wake.wait(left)
            self._pending = [s for s in self._pending if not s.cancelled]
            # never negative: max_batch_size can be lowered live while more rows are active
            room = max(0, self.max_batch_size - (len(self._batch.rows) if self._batch else 0))
            joining, self._pending = self._pending[:room], self._pending[room:]
            return joining

    def _admit(self, joining: list[Sequence]) -> None:
        """Prefill the joining sequences and add them to the batch; a prefill that raises is
        retried one sequence at a time, so only the sequence at fault fails."""
        try:
            prefilled = self._prefill(joining)
        except Exception as exc:  # noqa: BLE001 - isolated below
            if len(joining) == 1:
                self._fail(joining, f"{type(exc).__name__}: {exc}")
                return
            for sequence in joining:
                self._admit([sequence])
            return
        self._merge(*prefilled)

    def _prefill(self, rows: list[Sequence]) -> tuple[list[Sequence], Any, Any, Any]:
        import torch
        from transformers import DynamicCache

        for row in rows:
            row.generator = _generator(row.params)
        width = max(len(row.prompt_ids) for row in rows)
        pad = self.model.tokenizer.pad_token_id
        ids = torch.tensor([[pad] * (width - len(r.prompt_ids)) + r.prompt_ids for r in rows])
        mask = torch.tensor([[0] * (width - len(r.prompt_ids)) + [1] * len(r.prompt_ids) for r in rows])
        positions = (mask.cumsum(-1) - 1).clamp(min=0)
        cache = DynamicCache()
        logits = self.model.model(input_ids=ids.to(self.model.device), attention_mask=mask.to(self.model.device),
                                  position_ids=positions.to(self.model.device), cache=cache,
                                  use_cache=True, logits_to_keep=1).logits[:, -1, :]
        tokens = [self._sample(row, logits[index]) for index, row in enumerate(rows)]  # raises: retried per row
        return rows, cache, mask, tokens

    def _merge(self, rows: list[Sequence], cache, mask, tokens: list[int]) -> None:
        import torch
        from transformers import DynamicCache

        last = torch.tensor(tokens)
        batch = self._batch
        if batch is None:
            self._batch = Batch(rows, cache, mask, last)
        else:
            columns = max(batch.mask.shape[1], mask.shape[1])
            layers = [(torch.cat([_left_pad(a.keys, columns), _left_pad(b.keys, columns)]),
                       torch.cat([_left_pad(a.values, columns), _left_pad(b.values, columns)]))
                      for a, b in zip(batch.cache.layers, cache.layers)]
            self._batch = Batch(batch.rows + rows, DynamicCache(ddp_cache_data=layers),
                                torch.cat([_left_pad(batch.mask, columns), _left_pad(mask, columns)]),
                                torch.cat([batch.last, last]))
        self._advance(dict(zip(range(len(self._batch.rows) - len(rows), len(self._batch.rows)), tokens)))

    def _step(self) -> None:
        """One token for every active row."""
        import torch

        batch = self._batch
        rows = len(batch.rows)
        mask = torch.cat([batch.mask, torch.ones(rows, 1, dtype=batch.mask.dtype)], dim=1)
        self.steps += 1
        self.stepped_rows += rows
        self.peak_batch_tokens = max(self.peak_batch_tokens, rows * mask.shape[1])
        try:
            logits = self.model.model(input_ids=batch.last[:, None].to(self.model.device),
                                      attention_mask=mask.to(self.model.device),
                                      position_ids=batch.mask.sum(dim=1, keepdim=True).to(self.model.device),
                                      cache=batch.cache, use_cache=True).logits[:, -1, :]
        except Exception as exc:  # noqa: BLE001 - the model failed: the rows it held fail, the loop goes on
            self._fail(batch.rows, f"{type(exc).__name__}: {exc}")
            self._batch = None
            return
        batch.mask = mask
        greedy = logits.argmax(dim=-1).tolist()
        chosen = {}
        for index, row in enumerate(batch.rows):
            try:
                chosen[index] = greedy[index] if not row.params["do_sample"] else self._sample(row, logits[index])
            except Exception as exc:  # noqa: BLE001 - this row's settings, not the batch's
                self._fail([row], f"{type(exc).__name__}: {exc}")
                row.cancelled = True
        batch.last = torch.tensor([chosen.get(index, 0) for index in range(rows)])
        self._advance(chosen)

    def _advance(self, chosen: dict[int, int]) -> None:
        """Hand each row its new token; drop the rows that finished or whose client left."""
        batch = self._batch
        for index, token in chosen.items():
            row = batch.rows[index]
            if not row.cancelled and self._emit(row, token):
                row.cancelled = True  # finished: leaves the batch like a row whose client left
        keep = [index for index, row in enumerate(batch.rows) if not row.cancelled]
        if len(keep) == len(batch.rows):
            return
        if not keep:
            self._batch = None
            return
        self._batch = _kept(batch, keep)

    def _emit(self, row: Sequence, token: int) -> bool:
        """Deliver the text `token` completes; True when the answer is finished."""
        row.generated += 1
        self.generated_tokens += 1
        if token in self.stop_ids:
            return self._finish(row, "stop", row.generated)
        piece = row.answer.feed(token)
        if piece:
            row.deliver({"text": piece})
        if row.answer.stopped:  # a stop string: the answer's tokens are those of its text
            return self._finish(row, "stop", self.count_tokens(row.answer.text))
        if row.generated >= row.params["max_new_tokens"]:
            return self._finish(row, "length", row.generated)
        return False

    def _finish(self, row: Sequence, reason: str, completion_tokens: int) -> bool:
        piece = row.answer.finish()
        if piece:
            row.deliver({"text": piece})
        row.deliver({"done": {"text": row.answer.text, "prompt_tokens": len(row.prompt_ids),
                              "completion_tokens": completion_tokens, "finish_reason": reason}})
        return True

    def _sample(self, row: Sequence, logits) -> int:
        import torch

        params = row.params
        if not params["do_sample"]:
            return int(logits.argmax())
        probs = torch.softmax(logits.float() / params["temperature"], dim=-1)
        if params["top_p"] < 1.0:
            ordered, order = probs.sort(descending=True)
            outside = ordered.cumsum(-1) - ordered > params["top_p"]  # keep the smallest head reaching top_p
            probs = probs.scatter(0, order, ordered.masked_fill(outside, 0.0))
        return int(torch.multinomial(probs, 1, generator=row.generator))

    @staticmethod
    def _fail(rows: list[Sequence], message: str) -> None:
        for row in rows:
            row.deliver({"failure": message[:500]})


def _generator(params: dict[str, Any]):
    """A row's own random stream: its answer depends on its seed, not on what it is batched with."""
    import torch

    if not params["do_sample"]:
        return None
    generator = torch.Generator()
    generator.manual_seed(params["seed"])
    return generator


def _left_pad(tensor, columns: int):
    """Zeros in front along the sequence axis (dim 1 of a mask, dim 2 of a cache tensor) up to `columns`."""
    import torch.nn.functional as F

    missing = columns - tensor.shape[-1 if tensor.dim() == 2 else -2]
    if missing == 0:
        return tensor
    return F.pad(tensor, (missing, 0)) if tensor.dim() == 2 else F.pad(tensor, (0, 0, missing, 0))


def _kept(batch: Batch, keep: list[int]) -> Batch:
    """The batch without the rows not in `keep`, and without leading columns none of them uses."""
    import torch
    from transformers import DynamicCache

    index = torch.tensor(keep)
    mask = batch.mask[index]
    first = int((mask.sum(dim=0) > 0).nonzero()[0])
    layers = [(layer.keys[index, :, first:], layer.values[index, :, first:]) for layer in batch.cache.layers]
    return Batch([batch.rows[i] for i in keep], DynamicCache(ddp_cache_data=layers), mask[:, first:], batch.last[index])
