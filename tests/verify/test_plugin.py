"""The pytest plugin: a user's test verifies their kernel in a few lines; failures carry the report."""

from __future__ import annotations

import pytest

import attnverify.verify.pytest_plugin as plugin

pytest_plugins = ("pytester",)

USER_TESTS = """
import torch
from attnverify.reference import gqa_attention


def my_gqa(q, k, v, **kwargs):
    out, lse = gqa_attention(q, k, v, compute_dtype=torch.float32, **kwargs)
    return out.to(q.dtype), lse


def my_buggy_gqa(q, k, v, *, scale=None, **kwargs):
    scale = (q.shape[-1] ** -0.5 if scale is None else scale) * 1.01
    return my_gqa(q, k, v, scale=scale, **kwargs)


def test_mine(attnverify_check):
    report = attnverify_check("gqa", my_gqa, grads=False, pinned=False)
    assert report.num_cases == 2 * 3


def test_buggy(attnverify_check):
    attnverify_check("gqa", my_buggy_gqa, grads=False)


def test_buggy_report(attnverify_check):
    report = attnverify_check("gqa", my_buggy_gqa, grads=False, assert_passed=False)
    assert not report.passed and report.failures[0].replay_path
"""


def _plugin_args(request: pytest.FixtureRequest) -> list[str]:
    """Load the plugin by module name unless the installed entry point already did."""
    if request.config.pluginmanager.is_registered(plugin):
        return []
    return ["-p", "attnverify.verify.pytest_plugin"]


def test_plugin_fixture_passes_and_fails_with_report(
    pytester: pytest.Pytester, request: pytest.FixtureRequest
) -> None:
    pytester.makepyfile(test_user=USER_TESTS)
    replay_dir = pytester.path / "failures"
    result = pytester.runpytest_inprocess(
        *_plugin_args(request),
        "--attnverify-profile=ci",
        "--attnverify-examples=3",
        "--attnverify-device=cpu",
        f"--attnverify-replay-dir={replay_dir}",
        "-p",
        "no:cacheprovider",
        "-W",
        "ignore::pytest.PytestAssertRewriteWarning",
    )
    result.assert_outcomes(passed=2, failed=1)
    result.stdout.fnmatch_lines(["*gqa*FAILED*", "*gqa/float*: MISMATCH*", "*attnverify replay*"])
    assert list(replay_dir.glob("gqa-*.json")), "no replay file written"


def test_plugin_help_lists_options(
    pytester: pytest.Pytester, request: pytest.FixtureRequest
) -> None:
    result = pytester.runpytest_inprocess(*_plugin_args(request), "--help")
    result.stdout.fnmatch_lines(["*--attnverify-profile*", "*--attnverify-replay-dir*"])
