"""Fixtures of the CLI tests: a private records home, and wrong implementations to target."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from attnverify.kernels import _gate

# Importable as "av_cli_impls:<name>" (module:function targets) once `impls` ran.
IMPLS_MODULE = "av_cli_impls"
IMPLS_SOURCE = '''
"""Implementations of merge_attention_states for the CLI tests."""
import os

from attnverify.verify.targets import resolve_target

_merge = resolve_target("reference", "merge")


def doubled_merge(out, lse):
    """Wrong: the merged output times two."""
    merged, merged_lse = _merge(out, lse)
    return merged * 2, merged_lse


def first_worker_dies(out, lse):
    """Correct, except that the first process to call it exits at once (a dying worker)."""
    flag = os.path.join(os.environ["AV_CLI_FLAG_DIR"], "died")
    try:
        os.close(os.open(flag, os.O_CREAT | os.O_EXCL | os.O_WRONLY))
    except FileExistsError:
        return _merge(out, lse)
    os._exit(3)
'''


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A fresh $ATTNVERIFY_HOME, no required-verification, a clean gate cache."""
    path = tmp_path / "home"
    monkeypatch.setenv("ATTNVERIFY_HOME", str(path))
    monkeypatch.delenv(_gate.REQUIRE_ENV, raising=False)
    monkeypatch.delenv("ATTNVERIFY_ARCH", raising=False)
    _gate.clear_cache()
    yield path
    _gate.clear_cache()


@pytest.fixture
def impls(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    """Write the test implementations as an importable module; returns its name."""
    folder = tmp_path / "impls"
    folder.mkdir()
    (folder / f"{IMPLS_MODULE}.py").write_text(IMPLS_SOURCE)
    monkeypatch.syspath_prepend(str(folder))
    monkeypatch.setenv("AV_CLI_FLAG_DIR", str(folder))
    sys.modules.pop(IMPLS_MODULE, None)
    yield IMPLS_MODULE
    sys.modules.pop(IMPLS_MODULE, None)
