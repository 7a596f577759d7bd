"""`check(variant, impl)`: verify any implementation against the float64 oracle.

For each input dtype, hypothesis draws cases from the variant's strategy (metadata only; values
from each case's seed). Every case runs the oracle (float64, with gradients through a seeded
random grad_output when the variant has a backward and `grads=True`), the same-precision
baseline, and the implementation (the allocator NaN-poisoned first, its inputs checked for
writes afterwards), then compares each quantity (`attnverify.verify.compare`). On the first
failing case hypothesis shrinks it to a minimal failing case (bounded by the profile's
`shrink_calls`); the minimal case is written as a replay JSON file and reported. Nothing here
raises for a wrong implementation: a raising implementation is a failed `CaseResult`.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
import time
import traceback
import zlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from hypothesis import HealthCheck, Phase, Verbosity, example, given, settings
from hypothesis import seed as hypothesis_seed

from attnverify.kernels._gate import verifier_calls
from attnverify.verify._common import ImplError, VariantSpec, resolve_device
from attnverify.verify.case import Case, dtype_name
from attnverify.verify.compare import Comparison, compare
from attnverify.verify.profiles import budget, register_profiles
from attnverify.verify.specs import get_spec
from attnverify.verify.tolerance import arch_kind, lookup

# Profiles are registered at import: hypothesis refuses registration inside an @settings test.
register_profiles()

HOME_ENV = "ATTNVERIFY_HOME"
DEFAULT_PROFILE_ENV = "ATTNVERIFY_PROFILE"


@dataclass
class CaseResult:
    """Outcome of one case: its comparisons, or the error that prevented them."""

    case: Case
    comparisons: list[Comparison] = field(default_factory=list)
    passed: bool = False
    error: str | None = None
    replay_path: str | None = None
    seconds: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return {
            "case": self.case.to_dict(),
            "passed": self.passed,
            "error": self.error,
            "replay_path": self.replay_path,
            "seconds": self.seconds,
            "comparisons": [c.to_dict() for c in self.comparisons],
        }

    def __str__(self) -> str:
        head = f"{'PASS' if self.passed else 'FAIL'} {self.case.short()}"
        lines = [head]
        if self.error:
            lines.append(f"  error: {self.error}")
        failing = [str(c) for c in self.comparisons if not c.passed]
        lines.extend(failing)
        if self.replay_path and not failing:
            lines.append(f"  replay: attnverify replay {self.replay_path}")
        return "\n".join(lines)


@dataclass
class Report:
    """All case results of one `check` call."""

    variant: str
    target: str
    results: list[CaseResult] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def passed(self) -> bool:
        return not self.errors and all(r.passed for r in self.results)

    @property
    def failures(self) -> list[CaseResult]:
        return [r for r in self.results if not r.passed]

    @property
    def num_cases(self) -> int:
        return len(self.results)

    def summary(self) -> list[dict[str, Any]]:
        """Rows per (variant, dtype, quantity): cases, failures, worst ratio (impl error over
        baseline error); cases that errored before any comparison count under quantity "*"."""
        rows: dict[tuple[str, str], dict[str, Any]] = {}
        for r in self.results:
            items = [(c.quantity, c.passed, c.ratio) for c in r.comparisons]
            if r.error or not r.comparisons:
                items.append(("*", False, float("inf")))
            for quantity, ok, ratio in items:
                row = rows.setdefault(
                    (r.case.dtype, quantity),
                    {
                        "variant": self.variant,
                        "dtype": r.case.dtype,
                        "quantity": quantity,
                        "cases": 0,
                        "failures": 0,
                        "worst_ratio": 0.0,
                    },
                )
                row["cases"] += 1
                row["failures"] += int(not ok)
                row["worst_ratio"] = max(row["worst_ratio"], ratio)
        return list(rows.values())

    def to_dict(self) -> dict[str, Any]:
        return {
            "variant": self.variant,
            "target": self.target,
            "passed": self.passed,
            "num_cases": self.num_cases,
            "seconds": self.seconds,
            "errors": self.errors,
            "summary": [{k: _json_number(v) for k, v in row.items()} for row in self.summary()],
            "failures": [r.to_dict() for r in self.failures],
        }

    def __str__(self) -> str:
        lines = [
            f"{self.variant} [{self.target}]: {'PASSED' if self.passed else 'FAILED'} "
            f"({self.num_cases} cases, {len(self.failures)} failing, {self.seconds:.1f}s)"
        ]
        lines.append(f"  {'dtype':<14}{'quantity':<9}{'cases':>6}{'fail':>6}{'worst ratio':>13}")
        for row in self.summary():
            lines.append(
                f"  {row['dtype']:<14}{row['quantity']:<9}{row['cases']:>6}{row['failures']:>6}"
                f"{row['worst_ratio']:>13.3g}"
            )
        lines.extend(f"  error: {e}" for e in self.errors)
        lines.extend(str(r) for r in self.failures)
        return "\n".join(lines)


def _json_number(value: Any) -> Any:
    """inf/nan as strings (strict JSON has no such numbers); everything else unchanged."""
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    return value


class _CaseFailed(Exception):
    """Raised inside the hypothesis test so it shrinks the failing case."""


def default_replay_dir() -> Path:
    """$ATTNVERIFY_HOME/failures, or ./attnverify-failures."""
    home = os.environ.get(HOME_ENV)
    return Path(home) / "failures" if home else Path("attnverify-failures")


def run_case(
    spec: VariantSpec,
    case: Case,
    impl: Callable[..., Any],
    *,
    device: torch.device | str | None = None,
    grads: bool = True,
    arch: str | None = None,
) -> CaseResult:
    """Run one case: oracle, baseline, implementation, and every comparison. Never raises."""
    start = time.perf_counter()
    dev = resolve_device(device)
    kind = arch or arch_kind(dev)
    try:
        inputs = spec.make_inputs(case, dev)
        oracle = spec.run_oracle(inputs, case, grads=grads)
        baseline = spec.run_baseline(inputs, case, grads=grads)
        zeros = spec.structural_zeros(case, inputs, oracle)
        magnitudes = spec.magnitudes(case, inputs, oracle)
    except Exception:
        return CaseResult(
            case,
            error=f"harness error (oracle, baseline or spec raised):\n{traceback.format_exc(limit=4)}",
            seconds=time.perf_counter() - start,
        )
    poison = [(tuple(t.shape), spec.quantity_dtype(case, q)) for q, t in oracle.items()]
    try:
        with verifier_calls():  # the gate never stops the verifier (records come from it)
            got = spec.run_impl(impl, inputs, case, grads=grads, poison=poison)
    except ImplError as exc:
        return CaseResult(case, error=str(exc), seconds=time.perf_counter() - start)
    except Exception as exc:
        return CaseResult(
            case, error=f"{type(exc).__name__}: {exc}", seconds=time.perf_counter() - start
        )
    lse = oracle["lse"]
    finite_lse = lse[torch.isfinite(lse)]
    # The scale of the scores' summands (spec magnitude of lse), else max|lse|.
    logit_scale = magnitudes.get(
        "lse", float(finite_lse.abs().max()) if finite_lse.numel() else 0.0
    )
    comparisons = []
    for quantity in spec.quantities(case, grads):
        if quantity not in oracle:
            continue
        comparisons.append(
            compare(
                f"{case.variant}/{case.dtype}/{quantity}",
                quantity,
                got.get(quantity),
                oracle[quantity],
                baseline.get(quantity),
                lookup(case.variant, case.dtype, quantity, kind),
                spec.quantity_dtype(case, quantity),
                zeros=zeros.get(quantity),
                magnitude=magnitudes.get(quantity),
                logit_scale=logit_scale,
            )
        )
    return CaseResult(
        case,
        comparisons,
        passed=all(c.passed for c in comparisons),
        seconds=time.perf_counter() - start,
    )


def write_replay(result: CaseResult, target: str, grads: bool, replay_dir: Path) -> str | None:
    """Write a failing case as replay JSON; returns the path (None if it could not be written:
    the reason goes into the result's error, a replay file is never worth an exception)."""
    digest = hashlib.sha1(result.case.to_json().encode()).hexdigest()[:10]
    path = replay_dir / f"{result.case.variant}-{result.case.dtype}-{digest}.json"
    body = {"case": result.case.to_dict(), "target": target, "grads": grads, **_failure(result)}
    try:
        replay_dir.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(body, indent=1) + "\n")
    except OSError as exc:
        note = f"replay file not written: {exc}"
        result.error = f"{result.error}; {note}" if result.error else note
        return None
    result.replay_path = str(path)
    for c in result.comparisons:
        c.replay_path = str(path)
    return str(path)


def _failure(result: CaseResult) -> dict[str, Any]:
    return {
        "error": result.error,
        "comparisons": [c.to_dict() for c in result.comparisons if not c.passed],
    }


def _with_dtype(case: Case, dtype: str) -> Case:
    """A pinned case in the checked dtype (fp8 pinned cases keep their out_dtype)."""
    return dataclasses.replace(case, dtype=dtype)


def _target_name(impl: Callable[..., Any]) -> str:
    module = getattr(impl, "__module__", None) or ""
    name = getattr(impl, "__qualname__", None) or type(impl).__name__
    return f"{module}:{name}" if module else name


def _draw_and_run(
    spec: VariantSpec,
    impl: Callable[..., Any],
    dtype: str,
    *,
    examples: int,
    seed: int,
    profile: str,
    device: torch.device,
    grads: bool,
    progress: Callable[[int, int | None, CaseResult], None] | None,
    done: list[CaseResult],
    total: int,
    offset: int,
    pinned: Sequence[Case],
) -> tuple[CaseResult | None, str | None]:
    """Run hypothesis over one dtype: the pinned cases (explicit examples), then `examples`
    drawn ones; returns (minimal failure or None, hypothesis error)."""
    shrink_budget = budget(profile).shrink_calls
    state: dict[str, Any] = {"last_failure": None, "shrinks": 0}
    # Hypothesis replays a failing example several times while shrinking and once more at the
    # end: each case runs once, and a replayed case gives its first verdict again (a case that
    # failed once keeps failing, so hypothesis never sees a flaky test).
    seen: dict[Case, CaseResult] = {}

    @settings(
        parent=settings.get_profile(profile),
        max_examples=examples,
        database=None,
        deadline=None,
        derandomize=False,
        phases=[Phase.explicit, Phase.generate, Phase.shrink],
        suppress_health_check=list(HealthCheck),
        verbosity=Verbosity.quiet,
        print_blob=False,
        report_multiple_bugs=False,
    )
    @hypothesis_seed(seed)
    @given(spec.strategy(profile, [dtype]))
    def body(case: Case) -> None:
        result = seen.get(case)
        if result is None:
            last = state["last_failure"]
            if last is not None:
                if state["shrinks"] >= shrink_budget:
                    return
                state["shrinks"] += 1
            result = seen[case] = run_case(spec, case, impl, device=device, grads=grads)
            if last is None:
                done.append(result)
                if progress is not None:
                    progress(offset + len(done), total, result)
        if not result.passed:
            # the last failure hypothesis sees is its minimal one (it replays that last)
            state["last_failure"] = result
            raise _CaseFailed(case.short())  # one raise site: hypothesis keys failures by origin

    for case in pinned:
        body = example(case)(body)
    try:
        body()
    except _CaseFailed:
        pass
    except Exception as exc:
        return state["last_failure"], f"hypothesis stopped: {type(exc).__name__}: {exc}"
    return state["last_failure"], None


def dtype_seed(seed: int, index: int, dtype: str) -> int:
    """The hypothesis seed of the `index`-th dtype of a check: `seed` itself for the first,
    a stable hash of (seed, dtype) for the others, so each dtype explores other shapes."""
    return seed if index == 0 else zlib.crc32(f"{seed}/{dtype}".encode())


def check(
    variant: str,
    impl: Callable[..., Any],
    *,
    examples: int | None = None,
    seed: int = 0,
    device: torch.device | str | None = None,
    dtypes: Sequence[str | torch.dtype] | None = None,
    grads: bool = True,
    cases: Sequence[Case] | None = None,
    profile: str | None = None,
    progress: Callable[[int, int | None, CaseResult], None] | None = None,
    replay_dir: str | Path | None = None,
    target: str | None = None,
    pinned: bool = True,
) -> Report:
    """Verify `impl` (any callable with the variant's public signature) against the oracle.

    Args:
        variant: "varlen" | "gqa" | "fp8" | "paged" | "merge".
        impl: the implementation; called like `attnverify.reference.<function>` without
            `compute_dtype` (with `return_lse=True`); must return (out, lse).
        examples: hypothesis-drawn cases per dtype (None: the profile's max_examples).
        seed: seeds hypothesis (the drawn cases, hence every value): the first dtype draws from
            `seed`, each further dtype from a seed derived from it and its name, so the dtypes
            explore different shapes.
        device: "cpu", "cuda:0", ... (None: cuda if available, else cpu).
        dtypes: input dtypes to draw (None: the variant's defaults on that device; on the CPU
            float16/float32, fp8 variants their fp8 dtypes).
        grads: also compare gradients (varlen, gqa) through a seeded random grad_output.
        cases: run exactly these cases (pinned fixtures, replays) instead of drawing.
        profile: "ci" | "device" | "thorough" (None: $ATTNVERIFY_PROFILE, else "ci" on the CPU
            and "device" on a GPU); sets example count and size budget.
        progress: called as progress(done, total, result) after each counted case.
        replay_dir: where failing cases are written (None: $ATTNVERIFY_HOME/failures or
            ./attnverify-failures).
        target: name shown in the report (None: impl's module:qualname).
        pinned: also run the spec's pinned edge cases (`VariantSpec.pinned_cases`) before
            the drawn ones (they count in the report).

    Returns:
        A `Report`. Drawn runs count every generated case; a failure stops that dtype's draws
        and is replaced by its shrunk minimal failing case.
    """
    register_profiles()
    start = time.perf_counter()
    spec = get_spec(variant)
    dev = resolve_device(device)
    profile = (
        profile or os.environ.get(DEFAULT_PROFILE_ENV) or ("ci" if dev.type == "cpu" else "device")
    )
    budget(profile)
    report = Report(variant=variant, target=target or _target_name(impl))
    out_dir = Path(replay_dir) if replay_dir is not None else default_replay_dir()
    if cases is not None:
        for i, case in enumerate(cases):
            result = run_case(spec, case, impl, device=dev, grads=grads)
            report.results.append(result)
            if not result.passed:
                write_replay(result, report.target, grads, out_dir)
            if progress is not None:
                progress(i + 1, len(cases), result)
        report.seconds = time.perf_counter() - start
        return report
    names = (
        [dtype_name(d) for d in dtypes] if dtypes is not None else list(spec.default_dtypes(dev))
    )
    if not names:
        report.errors.append(
            f"{variant}: no input dtype to check on {dev} (e.g. an arch without fp8); "
            "pass dtypes= to force one"
        )
    count = examples if examples is not None else settings.get_profile(profile).max_examples
    total = (count + (len(spec.pinned_cases()) if pinned else 0)) * len(names)
    for index, dtype in enumerate(names):
        done: list[CaseResult] = []
        minimal, error = _draw_and_run(
            spec,
            impl,
            dtype,
            examples=count,
            seed=dtype_seed(seed, index, dtype),
            profile=profile,
            device=dev,
            grads=grads,
            progress=progress,
            done=done,
            total=total,
            offset=len(report.results),
            pinned=[_with_dtype(c, dtype) for c in spec.pinned_cases()] if pinned else [],
        )
        if error:
            report.errors.append(f"{variant}/{dtype}: {error}")
        if minimal is not None:
            done = [r for r in done if r.passed] + [minimal]
            write_replay(minimal, report.target, grads, out_dir)
        report.results.extend(done)
    report.seconds = time.perf_counter() - start
    return report


def replay(
    path: str | Path,
    impl: Callable[..., Any],
    *,
    device: torch.device | str | None = None,
    grads: bool | None = None,
) -> CaseResult:
    """Re-run a saved case (a replay file written by `check`, or `Case.save` output).

    Args:
        grads: compare gradients (None: as recorded in the replay file, else True).
    """
    data = json.loads(Path(path).read_text())
    case = Case.load(path)
    if grads is None:
        grads = bool(data.get("grads", True)) if isinstance(data, dict) else True
    return run_case(get_spec(case.variant), case, impl, device=device, grads=grads)


__all__ = [
    "CaseResult",
    "Report",
    "check",
    "default_replay_dir",
    "replay",
    "run_case",
    "write_replay",
]
