"""ci/agreement.py: equal verdicts agree; a verdict that differs, or a case one side lacks, is
listed."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
_spec = importlib.util.spec_from_file_location("agreement", ROOT / "ci" / "agreement.py")
agreement = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(agreement)


def _report(path: Path, verdicts: dict[int, bool]) -> Path:
    cases = [
        {
            "case": {"variant": "gqa", "dtype": "float16", "seed": seed},
            "passed": passed,
            "error": None,
            "comparisons": [
                {"path": "gqa/float16/out", "ratio": 0.5 if passed else 9.0, "reason": "r"}
            ],
        }
        for seed, passed in verdicts.items()
    ]
    path.write_text(json.dumps({"cases": cases}))
    return path


def test_agreement_equal_verdicts(tmp_path: Path) -> None:
    a = _report(tmp_path / "a.json", {1: True, 2: False})
    b = _report(tmp_path / "b.json", {1: True, 2: False})
    assert agreement.compare_reports(a, b) == (2, [])


def test_agreement_lists_disagreements_and_unmatched(tmp_path: Path) -> None:
    a = _report(tmp_path / "a.json", {1: True, 2: True, 3: True})
    b = _report(tmp_path / "b.json", {1: True, 2: False, 4: True})
    compared, lines = agreement.compare_reports(a, b)
    assert compared == 2
    assert len(lines) == 3, lines
    assert lines[0].startswith("DISAGREE") and '"seed": 2' in lines[0] and "ratio 9.0" in lines[0]
    assert '"seed": 3' in lines[1] and lines[1].startswith("only on the interpreter")
    assert '"seed": 4' in lines[2] and lines[2].startswith("only on the gpu")
