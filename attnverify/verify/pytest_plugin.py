"""pytest plugin: verify your own attention kernel in your own test suite in a few lines.

Installed with attnverify (entry point `pytest11`), so nothing needs registering::

    # test_my_kernel.py
    from my_project.attention import my_gqa_attention   # gqa_attention's signature

    def test_my_gqa_attention(attnverify_check):
        attnverify_check("gqa", my_gqa_attention)        # fails with the minimal failing case

    def test_my_decode(attnverify_check):
        report = attnverify_check(
            "paged", my_paged_attention, examples=50, dtypes=["bfloat16"], assert_passed=False
        )
        assert report.passed, report                     # a Report: summary(), failures, ...

`attnverify_check(variant, impl, **options)` calls `attnverify.verify.check` (same options:
examples, seed, device, dtypes, grads, cases, profile, ...) and fails the test with the
report — summary table, each failing quantity's errors with indices, and the replay file of
the shrunk minimal case (`attnverify replay FILE --target module:function` re-runs it). Pass
`assert_passed=False` to get the `Report` back without failing.

Command-line options:
    --attnverify-profile {ci,device,thorough}  example count and size budget (default: ci on
                                               the CPU, device on a GPU; $ATTNVERIFY_PROFILE)
    --attnverify-examples N                    cases per dtype, overriding the profile
    --attnverify-device DEVICE                 "cpu", "cuda:0", ... (default: cuda if present)
    --attnverify-replay-dir DIR                where failing cases are written (default:
                                               $ATTNVERIFY_HOME/failures or ./attnverify-failures)

The plugin also registers the hypothesis profiles `ci`, `device`, `thorough` (select one for
your own @given tests with `--hypothesis-profile`).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from attnverify.verify.profiles import BUDGETS, register_profiles
from attnverify.verify.runner import Report, check


def pytest_addoption(parser: pytest.Parser) -> None:
    """Register the --attnverify-* options."""
    group = parser.getgroup("attnverify", "attention kernel verification (attnverify)")
    group.addoption(
        "--attnverify-profile",
        choices=sorted(BUDGETS),
        default=None,
        help="example count and case-size budget for attnverify_check (default: ci on CPU, "
        "device on GPU)",
    )
    group.addoption(
        "--attnverify-examples",
        type=int,
        default=None,
        help="cases per dtype for attnverify_check, overriding the profile's count",
    )
    group.addoption(
        "--attnverify-device", default=None, help="device for attnverify_check (cpu, cuda:0, ...)"
    )
    group.addoption(
        "--attnverify-replay-dir",
        default=None,
        help="directory for failing cases' replay files",
    )


def pytest_configure(config: pytest.Config) -> None:
    """Register the hypothesis profiles (idempotent)."""
    register_profiles()


@pytest.fixture
def attnverify_check(request: pytest.FixtureRequest) -> Callable[..., Report]:
    """`attnverify_check(variant, impl, *, assert_passed=True, **check_options) -> Report`.

    Runs `attnverify.verify.check` with the command line's profile, example count, device and
    replay directory as defaults, and fails the test with the report unless it passed.
    """
    config = request.config
    defaults = {
        "profile": config.getoption("--attnverify-profile"),
        "examples": config.getoption("--attnverify-examples"),
        "device": config.getoption("--attnverify-device"),
        "replay_dir": config.getoption("--attnverify-replay-dir"),
    }

    def run(
        variant: str, impl: Callable[..., Any], *, assert_passed: bool = True, **options: Any
    ) -> Report:
        for key, value in defaults.items():
            if value is not None:
                options.setdefault(key, value)
        report = check(variant, impl, **options)
        if assert_passed and not report.passed:
            pytest.fail(str(report), pytrace=False)
        return report

    return run


__all__ = ["attnverify_check", "pytest_addoption", "pytest_configure"]
