"""The verified-kernel gate: is_verified, require_verified, enforce_verified."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch

import attnverify.kernels
from attnverify import records
from attnverify.kernels import _gate

CPU = torch.device("cpu")


def _verify(variant: str) -> None:
    env = records.current_environment(CPU, git=False)
    records.append_record(records.make_record(variant, env, cases=1, seed=0))


def test_gate_exported_by_kernels_package() -> None:
    assert attnverify.kernels.is_verified is _gate.is_verified
    assert attnverify.kernels.require_verified is _gate.require_verified
    assert attnverify.kernels.UnverifiedKernelError is _gate.UnverifiedKernelError
    assert issubclass(_gate.UnverifiedKernelError, RuntimeError)


@pytest.mark.parametrize("variant", records.VARIANTS)
def test_gate_raises_naming_the_command_then_passes(home: Path, variant: str) -> None:
    assert not _gate.is_verified(variant, CPU)
    with pytest.raises(_gate.UnverifiedKernelError) as info:
        _gate.require_verified(variant, CPU)
    message = str(info.value)
    assert f"attnverify verify --variant {variant} --device cpu" in message
    assert "missing" in message and str(records.records_path()) in message
    _verify(variant)
    assert _gate.is_verified(variant, CPU)
    _gate.require_verified(variant, CPU)


def test_gate_stale_message_names_changed_field(
    home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _verify("gqa")
    monkeypatch.setattr(torch, "__version__", "0.0.0")
    with pytest.raises(_gate.UnverifiedKernelError, match=r"stale \(torch_version '.*' -> '0.0.0'"):
        _gate.require_verified("gqa", CPU)


def test_gate_enforce_is_noop_unless_required(home: Path) -> None:
    _gate.enforce_verified("varlen", CPU)
    _gate.enforce_verified("varlen", CPU)


def test_gate_enforce_raises_until_verified_then_caches(
    home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(_gate.REQUIRE_ENV, "1")
    for _ in range(2):
        with pytest.raises(_gate.UnverifiedKernelError, match="--variant paged --device cpu"):
            _gate.enforce_verified("paged", CPU)
    _verify("paged")
    _gate.enforce_verified("paged", CPU)
    records.records_path().unlink()
    _gate.enforce_verified("paged", CPU)
    with pytest.raises(_gate.UnverifiedKernelError):
        _gate.enforce_verified("merge", CPU)


def test_gate_reports_corrupt_records_in_its_message(
    home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _verify("gqa")
    with records.records_path().open("a") as handle:
        handle.write("{broken\n")
    assert _gate.is_verified("gqa", CPU)
    with pytest.raises(_gate.UnverifiedKernelError, match=r"records\.jsonl:2: corrupt record"):
        _gate.require_verified("fp8", CPU)


def test_gate_imports_no_verifier_and_no_triton() -> None:
    code = (
        "import sys, attnverify.kernels._gate as g; g.is_verified('gqa', 'cpu');"
        "bad = [m for m in sys.modules if m.startswith(('attnverify.verify', 'triton'))];"
        "assert not bad, bad"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_gate_lets_the_verifier_through_and_still_guards_other_calls(
    home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With ATTNVERIFY_REQUIRE_VERIFIED=1 and no record, `check` (what `attnverify verify`
    runs) can still call the kernel, and a plain call afterwards is still refused."""
    from attnverify.kernels import merge_attention_states
    from attnverify.verify import check

    monkeypatch.setenv(_gate.REQUIRE_ENV, "1")
    report = check("merge", merge_attention_states, examples=2, device="cpu", pinned=False)
    assert report.passed, str(report)
    out, lse = torch.randn(2, 3, 16), torch.randn(2, 3)
    with pytest.raises(_gate.UnverifiedKernelError, match="--variant merge"):
        merge_attention_states(out, lse)
