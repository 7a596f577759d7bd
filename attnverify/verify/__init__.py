"""Randomized verification of attention implementations against the float64 oracles.

    from attnverify.verify import check
    report = check("gqa", my_gqa_attention)   # any callable with gqa_attention's signature
    assert report.passed, report

See `attnverify.verify.runner.check` for the options, `attnverify.verify.tolerance` for the
rules, and `attnverify.verify.pytest_plugin` for the pytest fixture.
"""

from attnverify.verify.case import Case
from attnverify.verify.compare import Comparison
from attnverify.verify.runner import CaseResult, Report, check, replay

__all__ = ["Case", "CaseResult", "Comparison", "Report", "check", "replay"]
