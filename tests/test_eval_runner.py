"""The runner's batching, without a model: prompts are decoded in batches of similar length and
every output, token count, latency and loss lands back on its own example."""

from llmops_engine.evaluation import runner
from llmops_engine.models import Generation

GENERATION = {"max_new_tokens": 4, "do_sample": False, "temperature": 1.0, "top_p": 1.0, "seed": 0, "batch_size": 2}


class EchoModel:
    """Answers each prompt with itself reversed; its loss is the expected answer's length."""

    def __init__(self):
        self.batches: list[list[str]] = []

    def generate(self, prompts, max_new_tokens, **_):
        self.batches.append(list(prompts))
        return [Generation(p[::-1], len(p), len(p) % 7, "stop") for p in prompts]

    def loss(self, prompts, responses):
        return [float(len(r)) for r in responses]


def test_batches_are_length_sorted_and_results_keep_the_examples_order():
    prompts = ["a" * 9, "b", "c" * 5, "d" * 2, "e" * 7]
    expected = ["x" * n for n in range(1, 6)]
    model = EchoModel()

    [run] = runner._runs(model, prompts, expected, GENERATION, repeats=1, losses=True)

    assert run["outputs"] == [p[::-1] for p in prompts]
    assert run["output_tokens"] == [len(p) % 7 for p in prompts]
    assert run["losses"] == [1.0, 2.0, 3.0, 4.0, 5.0]
    timed = model.batches[1:]  # the first call is the untimed warm-up
    assert timed == [["b", "dd"], ["ccccc", "eeeeeee"], ["a" * 9]]
    assert len(run["latencies_ms"]) == len(prompts)


def test_no_losses_asked_means_none():
    [run] = runner._runs(EchoModel(), ["p", "q"], ["a", "b"], GENERATION, repeats=1, losses=False)
    assert run["losses"] is None and run["outputs"] == ["p", "q"]
