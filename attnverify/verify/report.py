"""Output of a verification run: progress bar, summary rows, text table, JSON, JUnit, Markdown.

Everything here reads the harness's result objects (`Report`, `CaseResult`, `Comparison`) by
their documented attributes and never runs anything, so the same code serves one `check()` call,
several variants, and the merged results of one worker per GPU (`verify --devices all`).

A `RunResult` is what a `verify` invocation produced for one variant on one device:
its `Report` (possibly merged from shards) plus the device it ran on and the problems that are
not case failures (a worker process that died, with the cases it held).
"""

from __future__ import annotations

import datetime
import json
import math
import sys
import time
import xml.etree.ElementTree as ET
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

ERROR_QUANTITY = "error"


@dataclass
class RunResult:
    """The outcome of verifying one variant on one device.

    Attributes:
        variant: the variant key.
        device: the device string ("cuda:1", "cpu").
        target: the target name as given on the command line.
        results: the `CaseResult`s, in run order.
        problems: failures outside any case: "worker cuda:1 died (exit code -9) holding 12
            cases: ..."; each counts as a failure.
        seconds: wall time of the run.
    """

    variant: str
    device: str
    target: str
    results: list[Any] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def failures(self) -> list[Any]:
        """The failing `CaseResult`s."""
        return [r for r in self.results if not r.passed]

    @property
    def passed(self) -> bool:
        """True when every case passed and nothing else went wrong."""
        return not self.problems and not self.failures


@dataclass(frozen=True)
class SummaryRow:
    """Cases, failures and the worst error ratio of one (variant, dtype, quantity)."""

    variant: str
    dtype: str
    quantity: str
    cases: int
    failures: int
    worst_ratio: float | None

    def to_dict(self) -> dict[str, Any]:
        return {
            "variant": self.variant,
            "dtype": self.dtype,
            "quantity": self.quantity,
            "cases": self.cases,
            "failures": self.failures,
            "worst_ratio": _finite_or_none(self.worst_ratio),
        }


def _finite_or_none(value: float | None) -> float | str | None:
    if value is None:
        return None
    return value if math.isfinite(value) else str(value)


def _worse(a: float | None, b: float | None) -> float | None:
    if a is None or (b is not None and (math.isnan(b) or b > a)):
        return b
    return a


def summary_rows(runs: Iterable[RunResult]) -> list[SummaryRow]:
    """One row per (variant, dtype, quantity) over all runs (devices merged): variants and
    quantities in first-seen order, dtypes sorted.

    A case that raised (`CaseResult.error`) counts in the quantity "error"; a comparison's
    ratio is its `ratio` (impl error over baseline error; None when not applicable).
    """
    table: dict[tuple[str, str, str], list[Any]] = {}
    for run in runs:
        for result in run.results:
            keys = [(result.case.dtype, c.quantity, c.passed, c.ratio) for c in result.comparisons]
            if result.error is not None:
                keys.append((result.case.dtype, ERROR_QUANTITY, False, None))
            for dtype, quantity, passed, ratio in keys:
                row = table.setdefault((run.variant, dtype, quantity), [0, 0, None])
                row[0] += 1
                row[1] += 0 if passed else 1
                row[2] = _worse(row[2], None if ratio is None else float(ratio))
    variants = {key[0]: i for i, key in reversed(list(enumerate(table)))}
    quantities = {key[2]: i for i, key in reversed(list(enumerate(table)))}
    order = sorted(table, key=lambda k: (variants[k[0]], k[1], quantities[k[2]]))
    return [SummaryRow(v, d, q, *table[(v, d, q)]) for v, d, q in order]


def _ratio_text(ratio: float | None) -> str:
    return "-" if ratio is None else f"{ratio:.3g}"


def format_table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """A plain-text table with right-aligned numbers, columns separated by two spaces."""
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(headers)]
    lines = ["  ".join(h.ljust(w) for h, w in zip(headers, widths, strict=True))]
    lines.append("  ".join("-" * w for w in widths))
    for row in rows:
        cells = zip(row, widths, strict=True)
        lines.append("  ".join(c.rjust(w) if _numeric(c) else c.ljust(w) for c, w in cells))
    return "\n".join(line.rstrip() for line in lines)


def _numeric(text: str) -> bool:
    try:
        float(text.rstrip("%x"))
    except ValueError:
        return text == "-"
    return True


def summary_table(rows: Sequence[SummaryRow]) -> str:
    """The end-of-run table: variant, dtype, quantity, cases, failures, worst ratio."""
    headers = ("variant", "dtype", "quantity", "cases", "failures", "worst ratio")
    body = [
        (r.variant, r.dtype, r.quantity, str(r.cases), str(r.failures), _ratio_text(r.worst_ratio))
        for r in rows
    ]
    return format_table(headers, body) if body else "(no cases ran)"


def _comparison_dict(comparison: Any) -> dict[str, Any]:
    data = comparison.to_dict()
    return {k: _finite_or_none(v) if isinstance(v, float) else v for k, v in data.items()}


def case_dict(run: RunResult, result: Any) -> dict[str, Any]:
    """One JSON object for one case: variant, device, verdict, case, comparisons, replay file."""
    return {
        "variant": run.variant,
        "device": run.device,
        "target": run.target,
        "passed": bool(result.passed),
        "error": result.error,
        "seconds": result.seconds,
        "replay_path": result.replay_path,
        "case": result.case.to_dict(),
        "comparisons": [_comparison_dict(c) for c in result.comparisons],
    }


def report_dict(runs: Sequence[RunResult], meta: dict[str, Any]) -> dict[str, Any]:
    """The `--report` JSON: meta, one object per case, problems, summary rows, verdict."""
    return {
        "meta": meta,
        "passed": all(run.passed for run in runs),
        "cases": [case_dict(run, r) for run in runs for r in run.results],
        "problems": [p for run in runs for p in run.problems],
        "summary": [row.to_dict() for row in summary_rows(runs)],
    }


def write_json_report(path: str | Path, runs: Sequence[RunResult], meta: dict[str, Any]) -> Path:
    """Write `report_dict(runs, meta)` to `path` (indent 1; non-finite floats as strings)."""
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report_dict(runs, meta), indent=1) + "\n")
    return out


def _failure_text(result: Any) -> str:
    parts = [f"case: {result.case.to_json()}"]
    if result.replay_path:
        parts.append(f"replay: attnverify replay {result.replay_path}")
    if result.error:
        parts.append(f"error: {result.error}")
    parts.extend(str(c) for c in result.comparisons if not c.passed)
    return "\n".join(parts)


def junit_xml(runs: Sequence[RunResult]) -> ET.ElementTree:
    """JUnit XML: one <testsuite> per variant and device, one <testcase> per case.

    A failing comparison gives <failure>, an implementation that raised gives <error>, and a
    problem outside any case (a dead worker) gives a testcase named "run" with an <error>.
    """
    root = ET.Element("testsuites", name="attnverify")
    totals = {"tests": 0, "failures": 0, "errors": 0}
    for run in runs:
        suite = ET.SubElement(root, "testsuite", name=f"attnverify.{run.variant}.{run.device}")
        counts = {"tests": 0, "failures": 0, "errors": 0}
        for index, result in enumerate(run.results):
            counts["tests"] += 1
            case = ET.SubElement(
                suite,
                "testcase",
                classname=f"attnverify.{run.variant}.{result.case.dtype}",
                name=f"{index:04d} {result.case.short()}",
                time=f"{result.seconds:.3f}",
            )
            if result.error is not None:
                counts["errors"] += 1
                node = ET.SubElement(case, "error", message=str(result.error).splitlines()[0])
                node.text = _failure_text(result)
            elif not result.passed:
                counts["failures"] += 1
                failing = [c.path for c in result.comparisons if not c.passed]
                node = ET.SubElement(case, "failure", message=f"failed: {', '.join(failing)}")
                node.text = _failure_text(result)
        for problem in run.problems:
            counts["tests"] += 1
            counts["errors"] += 1
            case = ET.SubElement(
                suite, "testcase", classname=f"attnverify.{run.variant}", name="run"
            )
            ET.SubElement(case, "error", message=problem.splitlines()[0]).text = problem
        suite.set("time", f"{run.seconds:.3f}")
        for key, value in counts.items():
            suite.set(key, str(value))
            totals[key] += value
    for key, value in totals.items():
        root.set(key, str(value))
    return ET.ElementTree(root)


def write_junit(path: str | Path, runs: Sequence[RunResult]) -> Path:
    """Write `junit_xml(runs)` to `path` with an XML declaration."""
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    tree = junit_xml(runs)
    ET.indent(tree)
    tree.write(out, encoding="utf-8", xml_declaration=True)
    return out


def markdown_summary(runs: Sequence[RunResult], meta: dict[str, Any]) -> str:
    """A Markdown page for a CI job: verdict, environment, summary table, failures to replay."""
    verdict = "passed" if all(run.passed for run in runs) else "FAILED"
    lines = [f"## attnverify verify: {verdict}", ""]
    env = ", ".join(
        f"{k} `{v}`" for k, v in meta.items() if isinstance(v, (str, int, float)) and v != ""
    )
    lines += [env, "", "| variant | dtype | quantity | cases | failures | worst ratio |"]
    lines.append("|---|---|---|---:|---:|---:|")
    for r in summary_rows(runs):
        ratio = _ratio_text(r.worst_ratio)
        lines.append(
            f"| {r.variant} | {r.dtype} | {r.quantity} | {r.cases} | {r.failures} | {ratio} |"
        )
    failures = [(run, r) for run in runs for r in run.failures]
    problems = [p for run in runs for p in run.problems]
    if failures or problems:
        lines += ["", "### Failures", ""]
        lines += [f"- {p}" for p in problems]
        for run, result in failures:
            where = f"`attnverify replay {result.replay_path}`" if result.replay_path else "no file"
            lines.append(f"- {run.variant} on {run.device}: {result.case.short()} — {where}")
    return "\n".join(lines) + "\n"


def write_markdown(path: str | Path, runs: Sequence[RunResult], meta: dict[str, Any]) -> Path:
    """Write `markdown_summary(runs, meta)` to `path`."""
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(markdown_summary(runs, meta))
    return out


class ProgressBar:
    """A plain-text progress bar on stderr (no dependency).

    On a TTY it redraws one line with "\\r" (at most every `redraw_s`); otherwise it prints a
    line each time another tenth of the total is done or `interval_s` passed, and at the end.
    Called as `bar(done, total, result)` (the harness's progress callback); it counts calls
    itself, so `done` is informational.
    """

    def __init__(
        self,
        label: str,
        *,
        stream: TextIO | None = None,
        interval_s: float = 10.0,
        redraw_s: float = 0.1,
    ) -> None:
        self.label = label
        self.stream = stream if stream is not None else sys.stderr
        self.tty = bool(getattr(self.stream, "isatty", lambda: False)())
        self.interval_s = interval_s
        self.redraw_s = redraw_s
        self.count = 0
        self.failures = 0
        self.total: int | None = None
        self.start = time.monotonic()
        self.last_draw = self.start
        self.last_tenth = 0

    def __call__(self, done: int, total: int | None, result: Any = None) -> None:
        self.count += 1
        self.total = total if total is not None else self.total
        if result is not None and not getattr(result, "passed", True):
            self.failures += 1
        now = time.monotonic()
        if self.tty:
            if now - self.last_draw >= self.redraw_s:
                self._draw(now)
            return
        tenth = (10 * self.count // self.total) if self.total else 0
        if tenth > self.last_tenth or now - self.last_draw >= self.interval_s:
            self.last_tenth = tenth
            self._draw(now)

    def line(self, now: float | None = None) -> str:
        """The bar's text: "gqa [#####.....] 12/24 0 failed 3.2s"."""
        elapsed = (now if now is not None else time.monotonic()) - self.start
        if self.total:
            filled = min(20, 20 * self.count // self.total)
            bar = "[" + "#" * filled + "." * (20 - filled) + "]"
            counts = f"{bar} {self.count}/{self.total}"
        else:
            counts = f"{self.count} cases"
        return f"{self.label} {counts} {self.failures} failed {elapsed:.1f}s"

    def _draw(self, now: float) -> None:
        self.last_draw = now
        if self.tty:
            self.stream.write("\r\x1b[K" + self.line(now))
        else:
            self.stream.write(self.line(now) + "\n")
        self.stream.flush()

    def close(self) -> None:
        """Draw the final state and end the line."""
        now = time.monotonic()
        if self.tty:
            self.stream.write("\r\x1b[K" + self.line(now) + "\n")
        else:
            self.stream.write(self.line(now) + " done\n")
        self.stream.flush()


def utc_now() -> str:
    """The current time as ISO 8601 UTC, seconds precision."""
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")


__all__ = [
    "ERROR_QUANTITY",
    "ProgressBar",
    "RunResult",
    "SummaryRow",
    "case_dict",
    "format_table",
    "junit_xml",
    "markdown_summary",
    "report_dict",
    "summary_rows",
    "summary_table",
    "utc_now",
    "write_json_report",
    "write_junit",
    "write_markdown",
]
