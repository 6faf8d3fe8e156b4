"""Each metric against values computed by hand (the arithmetic is in the comments)."""

import math

import pytest

from llmops_engine.evaluation.metrics import ModelRun, aggregate, normalize, percentile, score
from llmops_engine.specs.evaluation import MetricOptions

DEFAULT = MetricOptions()


def run(outputs, losses=None, latencies=None, tokens=None):
    n = len(outputs)
    return ModelRun(
        outputs=list(outputs),
        output_tokens=tokens or [1] * n,
        latencies_ms=latencies or [1.0] * n,
        losses=losses,
    )


def value(metric, expected, model_run, options=DEFAULT):
    scores = score([metric], expected, model_run, options)
    assert not scores.errors, scores.errors
    return scores.values[metric], [row[metric] for row in scores.per_example]


@pytest.mark.parametrize(
    "options, expected_value",
    [
        (MetricOptions(), 2 / 3),  # "Paris." ~ "paris", " berlin " ~ "Berlin"; Rome != Madrid
        (MetricOptions(ignore_case=False), 0.0),  # case now differs in both
        (MetricOptions(ignore_punctuation=False), 1 / 3),  # only berlin matches ("paris." != "paris")
        (MetricOptions(normalize_whitespace=False), 1 / 3),  # only Paris matches (" berlin " keeps spaces)
    ],
)
def test_exact_match_normalization(options, expected_value):
    got, _ = value("exact_match", ["paris", "Berlin", "Madrid"], run(["Paris.", " berlin ", "Rome"]), options)
    assert got == pytest.approx(expected_value)


def test_normalize_handles_unicode_punctuation_and_whitespace():
    assert normalize("  «Héllo,\tWORLD!»  ", DEFAULT) == "héllo world"


def test_contains():
    got, per = value("contains", ["paris", "Paris"], run(["The capital is Paris.", "It is Lyon"]))
    assert (got, per) == (0.5, [1.0, 0.0])


def test_regex_match_with_pattern_and_with_expected_as_pattern():
    got, _ = value("regex_match", ["x", "y"], run(["in 1999", "never"]), MetricOptions(regex=r"\d{4}"))
    assert got == 0.5
    got, _ = value("regex_match", ["b.d", "^no$"], run(["a BAD day", "not"]))  # ignore_case by default
    assert got == 0.5


def test_regex_match_reports_invalid_expected_pattern_as_metric_error():
    scores = score(["regex_match", "contains"], ["(unclosed"], run(["x"]), DEFAULT)
    assert scores.values["regex_match"] is None
    assert "not a valid regular expression" in scores.errors["regex_match"]
    assert scores.values["contains"] == 0.0  # other metrics still computed


def test_rouge_l():
    # "the cat on the mat" vs reference "the cat sat on the mat": LCS = 5 tokens,
    # P = 5/5, R = 5/6, F = 2PR/(P+R) = 10/11. Second example shares nothing: 0.
    got, per = value("rouge_l", ["the cat sat on the mat", "hello world"], run(["the cat on the mat", "goodbye"]))
    assert per == pytest.approx([10 / 11, 0.0])
    assert got == pytest.approx(5 / 11)


def test_bleu_corpus():
    # hyp "the cat sat on the mat" vs ref "the cat sat on a mat" (6 tokens each, BP = 1):
    # clipped n-gram precisions 5/6, 3/5, 2/4, 1/3 -> geometric mean = (1/12)^(1/4)
    got, per = value("bleu", ["the cat sat on a mat"], run(["the cat sat on the mat"]))
    assert got == pytest.approx((1 / 12) ** 0.25, abs=1e-6)
    got, per = value("bleu", ["exactly this"], run(["exactly this"]))
    assert got == pytest.approx(1.0) and per == pytest.approx([1.0])


def test_chrf():
    # characters of "abc" vs "abd": 1-grams 2/3 match, 2-grams 1/2, 3-grams 0/1, no longer
    # n-grams exist; P = R per order, so chrF = mean over orders = (2/3 + 1/2 + 0) / 3 = 7/18
    got, _ = value("chrf", ["abd"], run(["abc"]))
    assert got == pytest.approx(7 / 18, abs=1e-6)


def test_eval_loss_and_perplexity():
    model_run = run(["a", "b"], losses=[1.0, 2.0])
    assert value("eval_loss", ["a", "b"], model_run)[0] == pytest.approx(1.5)
    # perplexity = exp(mean loss), not the mean of per-example perplexities
    got, per = value("perplexity", ["a", "b"], model_run)
    assert got == pytest.approx(math.exp(1.5))
    assert per == pytest.approx([math.e, math.e**2])


def test_loss_metrics_need_losses():
    scores = score(["eval_loss", "perplexity"], ["a"], run(["a"], losses=None), DEFAULT)
    assert scores.values == {"eval_loss": None, "perplexity": None}
    assert "no losses" in scores.errors["eval_loss"]
    scores = score(["eval_loss"], ["a"], run(["a"], losses=[float("nan")]), DEFAULT)
    assert scores.values["eval_loss"] is None


def test_latency_percentiles_and_output_tokens():
    latencies = [40.0, 10.0, 100.0, 30.0, 20.0]
    model_run = run(["a"] * 5, latencies=latencies, tokens=[3, 5, 4, 4, 4])
    # sorted 10 20 30 40 100: p50 = 30; p95 at rank 0.95*4 = 3.8 -> 40 + 0.8*(100-40) = 88
    assert value("latency_p50_ms", ["a"] * 5, model_run)[0] == 30.0
    assert value("latency_p95_ms", ["a"] * 5, model_run)[0] == pytest.approx(88.0)
    assert value("output_tokens_mean", ["a"] * 5, model_run)[0] == 4.0
    assert percentile([7.0], 95) == 7.0


def test_no_examples_makes_every_metric_missing():
    names = ["exact_match", "rouge_l", "bleu", "chrf", "latency_p95_ms", "eval_loss", "output_tokens_mean"]
    scores = score(names, [], ModelRun([], [], [], losses=[]), DEFAULT)
    assert all(scores.values[n] is None for n in names)
    assert scores.errors["rouge_l"] == "no examples to score"


def test_aggregate_repeats():
    repeats = [
        {"rouge_l": 0.4, "eval_loss": 1.0, "bleu": 0.1},
        {"rouge_l": 0.6, "eval_loss": 3.0, "bleu": None},
    ]
    assert aggregate(repeats, "mean") == pytest.approx({"rouge_l": 0.5, "eval_loss": 2.0, "bleu": None})
    # min is the pessimistic repeat: lowest rouge_l, highest loss
    assert aggregate(repeats, "min") == {"rouge_l": 0.4, "eval_loss": 3.0, "bleu": None}


def test_a_catastrophic_expected_pattern_is_a_metric_error_not_a_hang():
    scores = score(["regex_match"], ["(a+)+$"], run(["a" * 40 + "!"]), DEFAULT)
    assert scores.values["regex_match"] is None
    assert "refused as a regular expression" in scores.errors["regex_match"]
