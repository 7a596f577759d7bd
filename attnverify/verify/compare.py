"""Compare one quantity of an implementation with the float64 oracle and the baseline.

`compare(...)` returns a `Comparison` holding everything needed to debug without rerunning:
the path (`gqa/float16/dq`), greatest absolute and relative error with their indices and the
values there, how many elements exceed the bound, the baseline's error, the ratio, NaN/Inf
disagreements, exact-zero violations, RMS errors, the verdict and its reason. It never raises:
a wrong shape, a missing tensor or a foreign dtype is a failed comparison, not an exception.
The rules themselves are documented in `attnverify.verify.tolerance`.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

import torch

from attnverify.verify.tolerance import Rule, eps


@dataclass
class Comparison:
    """Verdict on one quantity of one case (see module docstring)."""

    path: str
    quantity: str
    passed: bool
    reason: str
    numel: int = 0
    max_abs: float = 0.0
    max_abs_index: tuple[int, ...] = ()
    impl_value: float = 0.0
    ref_value: float = 0.0
    max_rel: float = 0.0
    max_rel_index: tuple[int, ...] = ()
    mismatches: int = 0
    baseline_max_abs: float = 0.0
    bound: float = 0.0
    ratio: float = 0.0
    rms: float = 0.0
    baseline_rms: float = 0.0
    rms_bound: float = 0.0
    nan_disagreements: int = 0
    first_nan_disagreement: tuple[int, ...] = ()
    zero_violations: int = 0
    first_zero_violation: tuple[int, ...] = ()
    replay_path: str | None = None

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-able dict (tuples as lists, inf as strings)."""
        out = asdict(self)
        for key, value in out.items():
            if isinstance(value, tuple):
                out[key] = list(value)
            elif isinstance(value, float) and not math.isfinite(value):
                out[key] = str(value)
        return out

    def __str__(self) -> str:
        verdict = "ok" if self.passed else "MISMATCH"
        pct = 100.0 * self.mismatches / self.numel if self.numel else 0.0
        lines = [
            f"{self.path}: {verdict} ({self.reason})",
            f"  mismatched elements: {self.mismatches} / {self.numel} ({pct:.3g}%)",
            f"  greatest abs error: {self.max_abs:.4g} at index {self.max_abs_index} "
            f"(impl {self.impl_value:.6g}, oracle {self.ref_value:.6g})",
            f"  greatest rel error: {self.max_rel:.4g} at index {self.max_rel_index}",
            f"  baseline abs error: {self.baseline_max_abs:.4g}; bound {self.bound:.4g}; "
            f"ratio {self.ratio:.3g}",
            f"  rms error: {self.rms:.4g} (baseline {self.baseline_rms:.4g}, bound {self.rms_bound:.4g})",
        ]
        if self.nan_disagreements:
            lines.append(
                f"  NaN/Inf pattern differs at {self.nan_disagreements} elements, first at "
                f"{self.first_nan_disagreement}"
            )
        if self.zero_violations:
            lines.append(
                f"  {self.zero_violations} elements must be exactly 0 (oracle is 0) but are not, "
                f"first at {self.first_zero_violation}"
            )
        if self.replay_path:
            lines.append(f"  replay: attnverify replay {self.replay_path}")
        return "\n".join(lines)


def _index(flat: int, shape: torch.Size) -> tuple[int, ...]:
    idx = []
    for size in reversed(shape):
        idx.append(flat % size if size else 0)
        flat = flat // size if size else 0
    return tuple(reversed(idx))


def _first(mask: torch.Tensor) -> tuple[int, ...]:
    flat = torch.nonzero(mask.reshape(-1))
    return _index(int(flat[0]), mask.shape) if flat.numel() else ()


def _errors(x: torch.Tensor, ref: torch.Tensor, finite_ref: torch.Tensor) -> torch.Tensor:
    """|x - ref| where ref is finite (0 elsewhere); non-finite x there gives inf."""
    err = (x - ref).abs()
    err = torch.where(torch.isnan(err), math.inf, err)
    return torch.where(finite_ref, err, 0.0)


def _rms(x: torch.Tensor) -> float:
    return float(x.square().mean().sqrt()) if x.numel() else 0.0


def compare(
    path: str,
    quantity: str,
    impl: object,
    ref: torch.Tensor,
    baseline: torch.Tensor | None,
    rule: Rule,
    dtype: torch.dtype,
    *,
    zeros: torch.Tensor | None = None,
    magnitude: float | None = None,
    logit_scale: float = 0.0,
) -> Comparison:
    """Judge `impl` against the float64 oracle `ref`, relative to `baseline`'s error.

    Args:
        path: "variant/dtype/quantity" prefix for messages.
        quantity: "out", "lse", "dq", ...
        impl: the implementation's tensor (any dtype/device/strides) or anything else (fails).
        ref: the float64 oracle's tensor.
        baseline: the same-precision baseline's tensor (None: treated as error 0).
        rule: the tolerance rule (`attnverify.verify.tolerance.lookup`).
        dtype: the quantity's dtype in a kernel (out dtype, float32 for lse, input dtype for
            gradients); sets the floor's ulp.
        zeros: bool mask (broadcastable to ref) of elements that must be exactly 0: structural
            zeros such as empty rows (None: no exact-zero rule).
        magnitude: the scale floor and cap are relative to (None: max|ref|). Specs pass the
            largest magnitude over a family (e.g. all gradients) so that a quantity which is
            mathematically 0 but not structurally (dq with one key) gets a non-zero floor.
        logit_scale: the case's logit scale S, lse's summand magnitude or else max|lse|
            (scales the rule's logit_ulps and logit_rel).

    Returns:
        A `Comparison`; never raises.
    """
    try:
        return _compare(
            path, quantity, impl, ref, baseline, rule, dtype, zeros, magnitude, logit_scale
        )
    except Exception as exc:  # a comparison never raises; the failure carries the error
        return Comparison(path, quantity, False, f"comparison failed: {exc!r}")


def _compare(
    path: str,
    quantity: str,
    impl: object,
    ref: torch.Tensor,
    baseline: torch.Tensor | None,
    rule: Rule,
    dtype: torch.dtype,
    zeros: torch.Tensor | None,
    magnitude: float | None,
    logit_scale: float,
) -> Comparison:
    if not isinstance(impl, torch.Tensor):
        return Comparison(
            path, quantity, False, f"expected a tensor, got {type(impl).__name__}", ref.numel()
        )
    if tuple(impl.shape) != tuple(ref.shape):
        return Comparison(
            path,
            quantity,
            False,
            f"shape {tuple(impl.shape)} differs from the oracle's {tuple(ref.shape)}",
            ref.numel(),
        )
    if impl.is_complex() or impl.dtype == torch.bool:
        return Comparison(path, quantity, False, f"unexpected dtype {impl.dtype}", ref.numel())
    ref = ref.detach().to("cpu", torch.float64)
    x = impl.detach().to("cpu", torch.float64)
    base = ref if baseline is None else baseline.detach().to("cpu", torch.float64)
    numel = ref.numel()
    finite_ref = torch.isfinite(ref)
    same_special = (torch.isnan(ref) & torch.isnan(x)) | (
        ~finite_ref & ~torch.isnan(ref) & (x == ref)
    )
    nan_bad = (finite_ref & ~torch.isfinite(x)) | (~finite_ref & ~same_special)
    if zeros is not None:
        zero_bad = zeros.to("cpu").expand_as(ref) & (x != 0)
    else:
        zero_bad = torch.zeros_like(finite_ref)
    err = _errors(x, ref, finite_ref)
    base_err = _errors(base, ref, finite_ref)
    ref_abs = torch.where(finite_ref, ref.abs(), 0.0)
    ref_max = float(ref_abs.max()) if numel else 0.0
    ref_rms = _rms(ref_abs)
    if magnitude is not None and magnitude > ref_max:
        ref_rms = ref_rms * magnitude / ref_max if ref_max > 0 else magnitude
        ref_max = magnitude
    e = eps(dtype)
    relative = (rule.floor_ulps + rule.logit_ulps * logit_scale) * e
    relative += rule.logit_rel * logit_scale
    floor = relative * ref_max
    rms_floor = relative * ref_rms
    max_abs = float(err.max()) if numel else 0.0
    base_max = float(base_err.max()) if numel else 0.0
    rms, base_rms = _rms(err), _rms(base_err)
    bound = min(rule.ratio * base_max + floor, rule.cap * ref_max + floor)
    rms_bound = min(rule.rms_ratio * base_rms + rms_floor, rule.cap * ref_rms + rms_floor)
    if not math.isfinite(bound):
        bound = rule.cap * ref_max + floor
    if not math.isfinite(rms_bound):
        rms_bound = rule.cap * ref_rms + rms_floor
    flat_err = err.reshape(-1)
    arg = int(flat_err.argmax()) if numel else 0
    rel = torch.where(ref_abs > 0, err / ref_abs.clamp_min(1e-300), 0.0).reshape(-1)
    rel_arg = int(rel.argmax()) if numel else 0
    n_nan, n_zero = int(nan_bad.sum()), int(zero_bad.sum())
    mismatches = int(((err > bound) | nan_bad.reshape(err.shape) | zero_bad).sum())
    denom = max(base_max, floor)
    ratio = max_abs / denom if denom > 0 else (0.0 if max_abs == 0 else math.inf)
    reasons = []
    if n_nan:
        reasons.append(f"NaN/Inf pattern differs from the oracle at {n_nan} elements")
    if n_zero:
        reasons.append(f"{n_zero} elements not exactly 0 where the oracle is 0")
    if max_abs > bound:
        reasons.append(f"max abs error {max_abs:.4g} > bound {bound:.4g}")
    if rms > rms_bound:
        reasons.append(f"rms error {rms:.4g} > bound {rms_bound:.4g}")
    passed = not reasons
    return Comparison(
        path=path,
        quantity=quantity,
        passed=passed,
        reason="; ".join(reasons)
        if reasons
        else f"within {ratio:.3g}x baseline (bound {bound:.3g})",
        numel=numel,
        max_abs=max_abs,
        max_abs_index=_index(arg, ref.shape) if numel else (),
        impl_value=float(x.reshape(-1)[arg]) if numel else 0.0,
        ref_value=float(ref.reshape(-1)[arg]) if numel else 0.0,
        max_rel=float(rel[rel_arg]) if numel else 0.0,
        max_rel_index=_index(rel_arg, ref.shape) if numel else (),
        mismatches=mismatches,
        baseline_max_abs=base_max,
        bound=bound,
        ratio=ratio,
        rms=rms,
        baseline_rms=base_rms,
        rms_bound=rms_bound,
        nan_disagreements=n_nan,
        first_nan_disagreement=_first(nan_bad),
        zero_violations=n_zero,
        first_zero_violation=_first(zero_bad),
    )


__all__ = ["Comparison", "compare"]
