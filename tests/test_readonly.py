"""Reading is read-only: `validate`, `plan`, `status` and `history` on a fresh clone of this
repository change nothing outside `.llmops/` — no restored data, no DVC cache, no processes."""

import json
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
LLMOPS = Path(sys.executable).parent / "llmops"


def run(root: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([str(LLMOPS), *args], cwd=root, capture_output=True, text=True, timeout=120)


def test_reading_commands_write_nothing_outside_the_state_dir(tmp_path):
    clone = tmp_path / "clone"
    subprocess.run(["git", "clone", "-q", str(REPO), str(clone)], check=True)
    assert not (clone / "data" / "support_tickets.jsonl").exists()  # DVC-tracked, absent on a fresh clone

    for args in (["validate"], ["plan"], ["plan", "--json"], ["status"], ["history"]):
        done = run(clone, *args)
        assert done.returncode == 0, (args, done.stdout, done.stderr)

    changed = subprocess.run(["git", "status", "--porcelain", "--ignored"], cwd=clone,
                             capture_output=True, text=True, check=True).stdout.splitlines()
    assert changed == ["!! .llmops/"]


def test_absent_dvc_tracked_file_plans_the_same_as_the_restored_one(tmp_path):
    clone = tmp_path / "clone"
    subprocess.run(["git", "clone", "-q", str(REPO), str(clone)], check=True)
    before = json.loads(run(clone, "plan", "--json").stdout)
    done = run(clone, "data", "ensure-raw")
    assert done.returncode == 0 and (clone / "data" / "support_tickets.jsonl").is_file(), done.stderr
    after = json.loads(run(clone, "plan", "--json").stdout)
    assert before["desired_digest"] == after["desired_digest"]
    assert [a["fingerprint"] for a in before["actions"]] == [a["fingerprint"] for a in after["actions"]]
