"""Every planted bug (tests/verify/bugs/) is flagged by `check` within the default `ci` budget.

One test per bug: `check(bug.variant, bug)` with the `ci` profile's example count and size
budget, drawing the bug's dtype (float16, or float32 for bugs that only show in IEEE fp32) on
the CPU. A bug counts as flagged only by a failed comparison or an error of the implementation,
never by a harness error (an oracle or baseline that raised).

Shrinking a failure to a minimal case is the runner's business, not detection's: it is turned
off here (the profile's `shrink_calls` set to 0) so the catalog fits the CI time budget. Which
case flags a bug does not change.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from attnverify.verify import check
from attnverify.verify import profiles as verify_profiles
from attnverify.verify.case import VARIANTS

from .bugs import BUGS, PlantedBug

HARNESS_ERROR = "harness error"
MIN_BUGS = 24


@pytest.fixture
def detection_only(monkeypatch: pytest.MonkeyPatch) -> None:
    """The ci budget with shrinking off (examples and sizes unchanged)."""
    ci = verify_profiles.BUDGETS["ci"]
    monkeypatch.setitem(verify_profiles.BUDGETS, "ci", dataclasses.replace(ci, shrink_calls=0))


@pytest.mark.parametrize("bug", BUGS, ids=[f"{b.variant}-{b.name}" for b in BUGS])
def test_planted_bug_is_flagged(bug: PlantedBug, tmp_path: Path, detection_only: None) -> None:
    report = check(
        bug.variant, bug, dtypes=[bug.dtype], device="cpu", profile="ci", replay_dir=tmp_path
    )
    flagged = [r for r in report.failures if not (r.error or "").startswith(HARNESS_ERROR)]
    assert flagged, (
        f"planted bug {bug.name} ({bug.bug_class}) was not flagged in {report.num_cases} "
        f"{bug.variant}/{bug.dtype} cases of the ci budget:\n{report}"
    )


def test_catalog_is_complete() -> None:
    names = [b.name for b in BUGS]
    assert len(names) >= MIN_BUGS, f"catalog holds {len(names)} bugs; expected >= {MIN_BUGS}"
    assert len(set(names)) == len(names), f"duplicate bug names: {sorted(names)}"
    assert {b.variant for b in BUGS} == set(VARIANTS), (
        f"variants without a planted bug: {set(VARIANTS) - {b.variant for b in BUGS}}"
    )
    undocumented = [b.name for b in BUGS if not b.bug_class]
    assert not undocumented, f"bugs without a one-line bug class docstring: {undocumented}"
