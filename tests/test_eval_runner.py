"""The runner's batching and answer reuse, without a model: prompts are decoded in batches of
similar length, every output, token count, latency and loss lands back on its own example, and
an answer is reused only where the same model was asked the same prompt greedily."""

import json

import pytest

from llmops_engine.evaluation import runner
from llmops_engine.evaluation.answers import AnswerBook, model_identity
from llmops_engine.models import Generation

GENERATION = {"max_new_tokens": 4, "do_sample": False, "temperature": 1.0, "top_p": 1.0, "seed": 0, "batch_size": 2}
PROMPTS = ["a" * 9, "b", "c" * 5, "d" * 2, "e" * 7]
EXPECTED = ["x" * n for n in range(1, 6)]


class EchoModel:
    """Answers each prompt with itself reversed; its loss is the expected answer's length."""

    device = "cpu"

    def __init__(self, version="v1"):
        self.version = version
        self.batches: list[list[str]] = []
        self.scored: list[str] = []

    def generate(self, prompts, max_new_tokens, **_):
        self.batches.append(list(prompts))
        return [Generation(p[::-1], len(p), len(p) % 7, "stop") for p in prompts]

    def loss(self, prompts, responses):
        self.scored += prompts
        return [float(len(r)) for r in responses]


def test_batches_are_length_sorted_and_results_keep_the_examples_order():
    model = EchoModel()

    [run] = runner._runs(model, PROMPTS, EXPECTED, GENERATION, repeats=1, losses=True)

    assert run["outputs"] == [p[::-1] for p in PROMPTS]
    assert run["output_tokens"] == [len(p) % 7 for p in PROMPTS]
    assert run["losses"] == [1.0, 2.0, 3.0, 4.0, 5.0]
    timed = model.batches[1:]  # the first call is the untimed warm-up
    assert timed == [["b", "dd"], ["ccccc", "eeeeeee"], ["a" * 9]]
    assert len(run["latencies_ms"]) == len(PROMPTS) and run["reused"] == 0


def test_no_losses_asked_means_none():
    [run] = runner._runs(EchoModel(), ["p", "q"], ["a", "b"], GENERATION, repeats=1, losses=False)
    assert run["losses"] is None and run["outputs"] == ["p", "q"]


def test_a_second_evaluation_reuses_the_answers_and_losses_it_shares_with_the_first(tmp_path):
    first = EchoModel()
    book = AnswerBook(tmp_path, first.version)
    [fresh] = runner._runs(first, PROMPTS[:3], EXPECTED[:3], GENERATION, 1, True, book, threads=2)
    book.save()

    again = EchoModel()
    [reused] = runner._runs(again, PROMPTS, EXPECTED, GENERATION, 1, True, AnswerBook(tmp_path, "v1"), threads=2)

    assert reused["reused"] == 3
    assert sorted(p for batch in again.batches[1:] for p in batch) == ["dd", "eeeeeee"]
    assert sorted(again.scored) == ["dd", "eeeeeee"]
    assert reused["outputs"] == [p[::-1] for p in PROMPTS] and reused["losses"] == [1.0, 2.0, 3.0, 4.0, 5.0]
    assert reused["latencies_ms"][:3] == fresh["latencies_ms"]  # when it was decoded, as it was decoded


@pytest.mark.parametrize("scenario, version, threads, generation, expected, reused", [
    ("same everything", "v1", 2, GENERATION, EXPECTED, 5),
    ("another model version", "v2", 2, GENERATION, EXPECTED, 0),
    ("other threads (latency differs)", "v1", 1, GENERATION, EXPECTED, 0),
    ("longer answers asked", "v1", 2, {**GENERATION, "max_new_tokens": 8}, EXPECTED, 0),
    ("sampling is never reused", "v1", 2, {**GENERATION, "do_sample": True}, EXPECTED, 0),
    ("other expected answers: decodes reused, losses scored", "v1", 2, GENERATION, ["y"] * 5, 5),
])
def test_what_an_answer_is_reused_for(tmp_path, scenario, version, threads, generation, expected, reused):
    book = AnswerBook(tmp_path, "v1")
    runner._runs(EchoModel(), PROMPTS, EXPECTED, GENERATION, 1, True, book, threads=2)
    book.save()

    model = EchoModel(version)
    [run] = runner._runs(model, PROMPTS, expected, generation, 1, True, AnswerBook(tmp_path, version), threads)

    assert run["reused"] == reused, scenario
    assert run["losses"] == [float(len(e)) for e in expected]
    assert len(model.scored) == (0 if (version, expected) == ("v1", EXPECTED) else 5), scenario


@pytest.mark.parametrize("content", ["{not json", "[1, 2]", '{"k": 5}'])
def test_an_unreadable_book_is_empty_and_is_rewritten(tmp_path, content):
    book = AnswerBook(tmp_path, "v1")
    book.path.write_text(content)
    [run] = runner._runs(EchoModel(), PROMPTS, EXPECTED, GENERATION, 1, False, AnswerBook(tmp_path, "v1"), 2)
    assert run["reused"] == 0
    rewritten = AnswerBook(tmp_path, "v1")
    runner._runs(EchoModel(), PROMPTS, EXPECTED, GENERATION, 1, False, rewritten, 2)
    rewritten.save()
    kept = AnswerBook(tmp_path, "v1").answers.values()
    assert len([v for v in kept if isinstance(v, dict) and "output" in v]) == len(PROMPTS)


def test_entries_of_the_wrong_shape_are_answered_again(tmp_path):
    book = AnswerBook(tmp_path, "v1")
    runner._runs(EchoModel(), PROMPTS, EXPECTED, GENERATION, 1, True, book, 2)
    book.save()
    broken = {key: ({"output": 5} if "output" in entry else {"loss": "x"}) for key, entry in book.answers.items()}
    book.path.write_text(json.dumps(broken))

    model = EchoModel()
    [run] = runner._runs(model, PROMPTS, EXPECTED, GENERATION, 1, True, AnswerBook(tmp_path, "v1"), 2)
    assert run["reused"] == 0 and len(model.scored) == len(PROMPTS)
    assert run["outputs"] == [p[::-1] for p in PROMPTS]


def test_an_evaluation_that_reports_latency_keeps_answers_but_reuses_none(tmp_path):
    book = AnswerBook(tmp_path, "v1")
    runner._runs(EchoModel(), PROMPTS[:2], EXPECTED[:2], GENERATION, 1, False, book, 2)
    book.save()

    timing = AnswerBook(tmp_path, "v1", reuse=False)
    [run] = runner._runs(EchoModel(), PROMPTS, EXPECTED, GENERATION, 1, False, timing, 2)
    timing.save()

    assert run["reused"] == 0
    [later] = runner._runs(EchoModel(), PROMPTS, EXPECTED, GENERATION, 1, False, AnswerBook(tmp_path, "v1"), 2)
    assert later["reused"] == len(PROMPTS)  # what both wrote is kept


def test_two_books_saving_the_same_model_keep_each_others_answers(tmp_path):
    first, second = AnswerBook(tmp_path, "v1"), AnswerBook(tmp_path, "v1")
    runner._runs(EchoModel(), PROMPTS[:2], EXPECTED[:2], GENERATION, 1, False, first, 2)
    runner._runs(EchoModel(), PROMPTS[2:], EXPECTED[2:], GENERATION, 1, False, second, 2)
    first.save()
    second.save()
    [run] = runner._runs(EchoModel(), PROMPTS, EXPECTED, GENERATION, 1, False, AnswerBook(tmp_path, "v1"), 2)
    assert run["reused"] == len(PROMPTS)


def test_a_tuned_model_is_known_by_its_files_not_its_version(tmp_path):
    artifact = tmp_path / "artifact"
    (artifact / "adapter").mkdir(parents=True)
    (artifact / "adapter" / "adapter_model.safetensors").write_bytes(b"weights one")
    (artifact / "loss.csv").write_text("step,loss\n")
    first = model_identity("931726a01f91", str(artifact))
    (artifact / "loss.csv").write_text("step,loss\n1,2\n")
    assert model_identity("931726a01f91", str(artifact)) == first  # not what answers
    (artifact / "adapter" / "adapter_model.safetensors").write_bytes(b"weights two")
    assert model_identity("931726a01f91", str(artifact)) != first  # the same spec trained again
    assert model_identity("base:89608ed8f193", None) != model_identity("base:000000000000", None)
