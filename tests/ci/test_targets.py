"""ci/targets.py on synthetic bench rows (made by the bench's own row builder from the specs'
bench shapes): every issue target finds its rows, a run where ours is fast meets them all, one
slow row is reported missed (exit 1), and a missing baseline is "no row", not a failure."""

from __future__ import annotations

import dataclasses
import functools
import importlib.util
import json
import sys
from pathlib import Path

import pytest

from attnverify.verify import bench
from attnverify.verify.specs import get_spec

ROOT = Path(__file__).resolve().parents[2]
_spec = importlib.util.spec_from_file_location("ci_targets", ROOT / "ci" / "targets.py")
targets = importlib.util.module_from_spec(_spec)
sys.modules["ci_targets"] = targets  # its dataclasses look their module up while defined
_spec.loader.exec_module(targets)

PEAKS = bench.Peaks(matmul_tflops=800.0, copy_gbps=4000.0)
# ours-like rows are fast (1.5x the peak: synthetic); every baseline 5x slower than that
OURS = {
    "attnverify",
    "attnverify-host-cu",
    "attnverify-planned",
    "attnverify-graph",
    "attnverify-dense",
    "attnverify-dense-graph",
}
BASELINES = ["torch-varlen", "flex-compiled", "sdpa-cudnn", "sdpa-efficient",
             "sdpa-flash-no-bias", "sdpa-flash-dense", "flex-compiled-fp8",
             "sdpa-cudnn-contiguous", "sdpa-flash-contiguous"]  # fmt: skip


@functools.cache
def _body() -> str:
    """Rows at every bench shape of every variant, as JSON: ours 1.5x faster than the peak
    allows (every floor met), fp8 twice our bf16 speed, the sparse mask at the time a tenth of
    the tiles take (an fp8 cache's bytes are half already), every baseline 5x slower."""
    rows = []
    for variant in ("varlen", "gqa", "fp8", "paged"):
        spec = get_spec(variant)
        for case in spec.bench_cases():
            directions = [False, True] if spec.bench_backward(case) else [False]
            for backward in directions:
                work = spec.flops(case) if variant != "paged" else spec.bytes_moved(case)
                peak = PEAKS.copy_gbps * 1e9 if variant == "paged" else PEAKS.matmul_tflops * 1e12
                ideal_ms = work * (2.5 if backward else 1.0) / peak * 1e3
                if variant == "gqa" and case.mask_kind == "sparse":
                    ideal_ms *= 0.1  # the kernel skips 90% of the tiles
                if variant == "fp8":
                    ideal_ms *= 0.5
                for impl in [*OURS, *BASELINES]:
                    ms = ideal_ms / 1.5 * (1 if impl in OURS else 5)
                    if variant == "paged":
                        ms = min(ms, 0.01) if max(case.seq_lens) == 1024 else ms
                    row = bench._row(spec, case, impl, ms, "ok", PEAKS, backward=backward)
                    rows.append(dataclasses.asdict(row))
    return json.dumps({"meta": {"device_name": "test"}, "rows": rows})


def _rows() -> list[dict]:
    return json.loads(_body())["rows"]


def test_targets_find_their_rows_and_are_met_by_a_fast_run() -> None:
    rows = targets.load_rows({"rows": _rows()})
    results = [targets.evaluate(t, rows) for t in targets.TARGETS]
    missing = [r.target.text for r in results if r.met is None]
    assert missing == [], missing
    assert all(r.met for r in results if r.met is not None), targets.table(results)


def test_targets_report_a_slow_row_as_missed(tmp_path: Path) -> None:
    rows = _rows()
    for row in rows:  # the D = 72 varlen forward at 300 TFLOP/s
        host_cu = row["variant"] == "varlen" and row["impl"] == "attnverify-host-cu"
        if host_cu and row["case"]["head_dim"] == 72 and len(row["case"]["seqlens_q"]) == 4:
            row["ms"] *= row["value"] / 300
            row["value"] = 300.0
    out = tmp_path / "targets.md"
    assert targets.main([_write(tmp_path / "bench.json", rows), "--markdown", str(out)]) == 1
    text = out.read_text()
    assert "| #5 | D=72 forward >= 350 TFLOP/s | 300 | **MISSED** |" in text
    assert "D=72 within 15% of D=80 per FLOP" in text


def _write(path: Path, rows: list[dict]) -> str:
    path.write_text(json.dumps({"meta": {"device_name": "test"}, "rows": rows}))
    return str(path)


def test_targets_read_several_runs_and_never_mix_two_in_one_ratio(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    rows = _rows()
    varlen = _write(tmp_path / "varlen.json", [r for r in rows if r["variant"] == "varlen"])
    rest = _write(tmp_path / "rest.json", [r for r in rows if r["variant"] != "varlen"])
    assert targets.main([varlen, rest]) == 0
    assert "no row" not in capsys.readouterr().out
    # fp8's ratio to our bf16 gqa forward needs both in one run
    fp8 = _write(tmp_path / "fp8.json", [r for r in rows if r["variant"] == "fp8"])
    gqa = _write(tmp_path / "gqa.json", [r for r in rows if r["variant"] == "gqa"])
    assert targets.main([fp8, gqa]) == 0
    text = capsys.readouterr().out
    assert "| #7 | >= 1.5x our bf16 gqa forward, same shape | - | no row |" in text
    assert "| #7 | e4m3 forward >= 800 TFLOP/s |" in text and "| #6 |" in text


def test_targets_without_a_baseline_row_say_so() -> None:
    rows = [r for r in _rows() if r["impl"] != "torch-varlen"]
    result = targets.evaluate(targets.TARGETS[1], targets.load_rows({"rows": rows}))
    assert result.met is None and result.detail == "no row: varlen torch-varlen"


def test_targets_unknown_kind_raises() -> None:
    bad = dataclasses.replace(targets.TARGETS[0], kind="nope")
    with pytest.raises(ValueError, match="target kind"):
        targets.evaluate(bad, targets.load_rows({"rows": _rows()}))
