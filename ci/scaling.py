"""Multi-GPU verification scaling (issue 9): cases per second of `verify --devices all` against
one GPU, from the two runs' JSON reports (the same cases: one seed, one profile).

The runs must hold the same cases, all passed, and the sharded run must reach
`--min-efficiency` (default 0.9) times the GPU count in speed-up: 1.8x on two GPUs.

Usage: python ci/scaling.py ONE_GPU.json ALL_GPUS.json [--min-efficiency 0.9]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any


def _load(path: Path) -> dict[str, Any]:
    report = json.loads(path.read_text())
    if "seconds" not in report["meta"]:
        raise SystemExit(f"{path}: no meta.seconds (written by an older attnverify)")
    return report


def _case_keys(report: dict[str, Any]) -> list[str]:
    return sorted(json.dumps(c["case"], sort_keys=True) for c in report["cases"])


def _busy(report: dict[str, Any]) -> str:
    """Per device, the seconds its cases took (compiles included), and the run's wall time
    beyond the busiest device (process start, drawing, merging)."""
    busy: dict[str, float] = {}
    for case in report["cases"]:
        busy[case["device"]] = busy.get(case["device"], 0.0) + case["seconds"]
    per_device = ", ".join(f"{d} {s:.1f} s" for d, s in sorted(busy.items()))
    rest = report["meta"]["seconds"] - max(busy.values(), default=0.0)
    return f"busy {per_device}; outside cases {rest:.1f} s"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("one", type=Path, help="report of the run on one GPU")
    parser.add_argument("all", type=Path, help="report of the run with --devices all")
    parser.add_argument("--min-efficiency", type=float, default=0.9)
    args = parser.parse_args()
    one, every = _load(args.one), _load(args.all)
    gpus = len({c["device"] for c in every["cases"]})
    rates = [len(r["cases"]) / r["meta"]["seconds"] for r in (one, every)]
    speedup = rates[1] / rates[0]
    need = args.min_efficiency * gpus
    same = _case_keys(one) == _case_keys(every)
    passed = one["passed"] and every["passed"]
    for name, report, rate in (("1 GPU", one, rates[0]), (f"{gpus} GPUs", every, rates[1])):
        meta = report["meta"]
        print(
            f"{name:>7}: {len(report['cases'])} cases in {meta['seconds']:.1f} s = "
            f"{rate:.2f} cases/s ({meta['devices']}; passed: {report['passed']}); "
            f"{_busy(report)}"
        )
    print(f"speed-up {speedup:.2f}x on {gpus} GPUs (need >= {need:.2f}x); same cases: {same}")
    ok = same and passed and speedup >= need
    print("ok" if ok else "FAIL")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
