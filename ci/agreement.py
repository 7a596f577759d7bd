"""Interpreter vs GPU agreement (issue 9): the same cases, verified both ways, judged alike.

`ci/device.sh` runs `attnverify verify --profile ci` twice with one seed, once with
`--device cpu` (the Triton interpreter) and once on the GPU, for float16/float32 (the
interpreter cannot run bfloat16 dots, triton#11584), and hands both JSON reports here.
Cases are drawn from the same seed and budget, so both reports hold the same cases.

A case agrees when both verdicts are equal: each side is judged against the float64 oracle by
the tolerance table, so two passing sides agree within it. Every disagreement is listed with
both sides' worst quantity, and cases only one side ran are listed too.

Usage: python ci/agreement.py INTERPRETER.json GPU.json
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any


def _cases(path: Path) -> dict[str, dict[str, Any]]:
    """Report cases keyed by their case fields (variant, dtype, seed, shapes, ...)."""
    report = json.loads(path.read_text())
    return {json.dumps(c["case"], sort_keys=True): c for c in report["cases"]}


def _worst(case: dict[str, Any]) -> str:
    comparisons = case.get("comparisons") or []
    if not comparisons:
        return f"error: {case.get('error')}"
    worst = max(comparisons, key=lambda c: float(c["ratio"]) if c["ratio"] != "inf" else 1e300)
    return f"{worst['path']} ratio {worst['ratio']} ({worst['reason']})"


def compare_reports(interpreter: Path, gpu: Path) -> tuple[int, list[str]]:
    """(cases compared, lines describing each disagreement or unmatched case)."""
    a, b = _cases(interpreter), _cases(gpu)
    lines = []
    for key in sorted(a.keys() & b.keys()):
        if a[key]["passed"] != b[key]["passed"]:
            lines.append(
                f"DISAGREE {key}\n  interpreter: {'pass' if a[key]['passed'] else 'FAIL'} "
                f"{_worst(a[key])}\n  gpu: {'pass' if b[key]['passed'] else 'FAIL'} {_worst(b[key])}"
            )
    lines += [f"only on the interpreter: {k}" for k in sorted(a.keys() - b.keys())]
    lines += [f"only on the gpu: {k}" for k in sorted(b.keys() - a.keys())]
    return len(a.keys() & b.keys()), lines


def main(argv: list[str]) -> int:
    if len(argv) != 2:
        print(__doc__, file=sys.stderr)
        return 2
    compared, lines = compare_reports(Path(argv[0]), Path(argv[1]))
    for line in lines:
        print(line)
    print(f"{compared} cases compared, {len(lines)} disagreements or unmatched cases")
    return int(bool(lines))


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
