"""Correct implementations are never flagged by `check`.

Two families of correct implementations:
- the `reference` target (the float64 oracle rounded to kernel dtypes) for every variant, in
  float16, float32 and bfloat16 (bf16 is fine here: the oracle is torch, not the Triton
  interpreter whose bf16 `tl.dot` is wrong), fp8 in its fp8 dtypes;
- the correct "kernels" the planted bugs are built on (tests/verify/bugs/: `gqa_kernel`,
  `varlen_by_ranges`, `paged_kernel`, `paged_split_kernel` with a correct merge, `fp8_kernel`),
  computing in the input precision: if one of them were flagged, a planted bug's failure would
  prove nothing about its defect.

CI runs a small number of cases per (variant, dtype). `ATTNVERIFY_FALSE_ALARM_CASES=N` spreads
at least N drawn cases over every (variant, dtype) of the reference target instead, for the
>= 500-case false-alarm measurement; the test's output line gives the count and cases/s.
"""

from __future__ import annotations

import math
import os
import time
from pathlib import Path
from typing import Any

import pytest

from attnverify.verify import check
from attnverify.verify.targets import resolve_target

from .bugs import (
    BUGS,
    fp8_kernel,
    gqa_kernel,
    merge_correct,
    paged_kernel,
    paged_split_kernel,
    seq_ranges,
    varlen_by_ranges,
)

CASES_ENV = "ATTNVERIFY_FALSE_ALARM_CASES"
CI_EXAMPLES = 4
FLOAT_DTYPES = ("float16", "float32", "bfloat16")
VARIANT_DTYPES: dict[str, tuple[str, ...]] = {
    "gqa": FLOAT_DTYPES,
    "varlen": FLOAT_DTYPES,
    "paged": FLOAT_DTYPES,
    "merge": FLOAT_DTYPES,
    "fp8": ("float8_e4m3fn", "float8_e5m2"),
}
GRID = [(v, d) for v, dtypes in VARIANT_DTYPES.items() for d in dtypes]


def _examples() -> int:
    """Cases per (variant, dtype): CI_EXAMPLES, or enough for $ATTNVERIFY_FALSE_ALARM_CASES."""
    wanted = int(os.environ.get(CASES_ENV, "0"))
    return max(CI_EXAMPLES, math.ceil(wanted / len(GRID)))


@pytest.mark.parametrize(("variant", "dtype"), GRID, ids=[f"{v}-{d}" for v, d in GRID])
def test_reference_target_never_flagged(variant: str, dtype: str, tmp_path: Path) -> None:
    start = time.perf_counter()
    report = check(
        variant,
        resolve_target("reference", variant),
        dtypes=[dtype],
        examples=_examples(),
        device="cpu",
        profile="ci",
        replay_dir=tmp_path,
    )
    seconds = time.perf_counter() - start
    assert not report.errors, f"check could not run: {report.errors}"
    assert report.num_cases > 0, f"{variant}/{dtype}: no case ran"
    assert report.passed, f"false alarm on the reference target:\n{report}"
    print(
        f"false-alarm {variant}/{dtype}: {report.num_cases} cases, 0 flagged, "
        f"{report.num_cases / seconds:.2f} cases/s"
    )


def _varlen_kernel(
    q: Any, k: Any, v: Any, cu_q: Any, cu_k: Any, max_q: Any = None, max_k: Any = None, **kw: Any
) -> Any:
    return varlen_by_ranges(q, k, v, seq_ranges(cu_q), seq_ranges(cu_k), **kw)


def _paged_split_kernel(*args: Any, **kwargs: Any) -> Any:
    return paged_split_kernel(*args, **kwargs, merge=merge_correct)


BASE_KERNELS = {
    "gqa": gqa_kernel,
    "varlen": _varlen_kernel,
    "paged": paged_kernel,
    "paged-split": _paged_split_kernel,
    "fp8": fp8_kernel,
}
BASE_DTYPES = {"fp8": ("float8_e4m3fn",)}


@pytest.mark.parametrize("name", sorted(BASE_KERNELS))
def test_planted_bug_bases_never_flagged(name: str, tmp_path: Path) -> None:
    variant = name.split("-")[0]
    assert any(b.variant == variant for b in BUGS)
    report = check(
        variant,
        BASE_KERNELS[name],
        dtypes=list(BASE_DTYPES.get(variant, ("float16", "float32"))),
        examples=CI_EXAMPLES * 2,
        device="cpu",
        profile="ci",
        replay_dir=tmp_path,
    )
    assert not report.errors, f"check could not run: {report.errors}"
    assert report.passed, f"the correct base of the {name} planted bugs was flagged:\n{report}"
