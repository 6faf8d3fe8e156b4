"""Dataset processing: sources → examples → transforms → split, validated by GX, run as DVC stages.

Modules, in recipe order: sources (read rows), examples (map columns / chat), transforms,
split, validation (Great Expectations, lazy), pipeline (the whole build), dvc_stage
(dvc.yaml, running DVC), bootstrap (raw data on a fresh clone), cli (`llmops data`).
Nothing heavy is imported at package import time.
"""
