"""ci/scaling.py on real reports: `verify --jobs 2` (two workers on one device) runs the same
cases as one process, the report carries the wall seconds, and the scaling check compares
rates, insists on the same cases and on the speed-up it was given."""

from __future__ import annotations

import io
import json
import subprocess
import sys
from pathlib import Path

import pytest

from attnverify.kernels import _gate
from attnverify.verify.cli import main

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def reports(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[Path, Path]:
    monkeypatch.setenv("ATTNVERIFY_HOME", str(tmp_path / "home"))
    monkeypatch.delenv(_gate.REQUIRE_ENV, raising=False)
    paths = tmp_path / "one.json", tmp_path / "two.json"
    for path, extra in zip(paths, ([], ["--jobs", "2"]), strict=True):
        argv = ["verify", "--variant", "merge", "--examples", "2", "--device", "cpu", "--report"]
        assert main([*argv, str(path), *extra], out=io.StringIO()) == 0
    return paths


def _scaling(one: Path, two: Path, efficiency: float) -> subprocess.CompletedProcess:
    script = str(ROOT / "ci" / "scaling.py")
    argv = [sys.executable, script, str(one), str(two), "--min-efficiency", str(efficiency)]
    return subprocess.run(argv, capture_output=True, text=True, check=False)


def test_jobs_run_the_same_cases_and_scaling_reads_them(reports: tuple[Path, Path]) -> None:
    one, two = reports
    bodies = [json.loads(p.read_text()) for p in reports]
    assert all(b["meta"]["seconds"] > 0 for b in bodies)
    assert bodies[1]["meta"]["devices"] == "cpu, cpu"
    done = _scaling(one, two, 0.0)
    assert done.returncode == 0, done.stdout
    assert "same cases: True" in done.stdout
    # One device seen in the sharded report: a speed-up of 1000x per device cannot be met.
    assert _scaling(one, two, 1000.0).returncode == 1


def test_scaling_fails_on_different_cases(reports: tuple[Path, Path], tmp_path: Path) -> None:
    one, two = reports
    body = json.loads(two.read_text())
    body["cases"] = body["cases"][1:]
    fewer = tmp_path / "fewer.json"
    fewer.write_text(json.dumps(body))
    done = _scaling(one, fewer, 0.0)
    assert done.returncode == 1 and "same cases: False" in done.stdout
