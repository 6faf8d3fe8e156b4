"""DVC records are read like specs: bounded, alias-free, confined to the repository."""

import time

from llmops_engine.dvcrecords import tracked_files
from llmops_engine.fingerprint import ContentHasher

RECORD = "outs:\n- md5: {md5}\n  path: {path}\n"


def test_records_at_the_root_and_next_to_their_data_are_found(tmp_path):
    (tmp_path / "a.dvc").write_text(RECORD.format(md5="a" * 32, path="a.jsonl"))
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "x.jsonl.dvc").write_text(RECORD.format(md5="b" * 32, path="x.jsonl"))
    (tmp_path / "data" / "dir.dvc").write_text(RECORD.format(md5="c" * 32 + ".dir", path="dir"))
    tracked = tracked_files(tmp_path)
    assert {path: t.md5 for path, t in tracked.items()} == {"a.jsonl": "a" * 32, "data/x.jsonl": "b" * 32, "data/dir": None}


def test_hostile_records_track_nothing(tmp_path):
    bomb = "a: &a [x, x, x, x, x, x, x, x, x]\n" + "".join(
        f"{chr(98 + i)}: &{chr(98 + i)} [{', '.join(['*' + chr(97 + i)] * 9)}]\n" for i in range(8))
    (tmp_path / "bomb.dvc").write_text(bomb + "outs:\n- {path: x}\n")
    (tmp_path / "escape.dvc").write_text(RECORD.format(md5="d" * 32, path="../outside.jsonl"))
    (tmp_path / "deep.dvc").write_text("outs: " + "[" * 500 + "]" * 500 + "\n")
    (tmp_path / "big.dvc").write_text("# " + "x" * 100_000 + "\n" + RECORD.format(md5="e" * 32, path="big"))
    started = time.process_time()
    assert tracked_files(tmp_path) == {}
    assert time.process_time() - started < 1


def test_an_absent_tracked_file_is_identified_by_its_record(tmp_path):
    import hashlib

    content = b'{"q": "1"}\n'
    (tmp_path / "x.jsonl.dvc").write_text(RECORD.format(md5=hashlib.md5(content).hexdigest(), path="x.jsonl"))
    absent = ContentHasher(tmp_path).hash_inputs(["x.jsonl"])
    (tmp_path / "x.jsonl").write_bytes(content)
    present = ContentHasher(tmp_path).hash_inputs(["x.jsonl"])
    assert absent == present == {"x.jsonl": f"dvc-md5:{hashlib.md5(content).hexdigest()}"}
    (tmp_path / "x.jsonl").write_bytes(b'{"q": "2"}\n')  # edited since `dvc add`: its own content counts
    assert ContentHasher(tmp_path).hash_inputs(["x.jsonl"])["x.jsonl"] == hashlib.sha256(b'{"q": "2"}\n').hexdigest()
