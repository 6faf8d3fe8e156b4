"""Evaluation: score models on a Dataset's eval split (metrics), decide promotion (gates),
run the models on the Ray cluster (runner) and write the results (report).

`metrics` and `gates` are pure and light; `runner` imports Ray and torch inside functions.
"""
