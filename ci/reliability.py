"""Device reliability checks for every kernel (issue 9), run by `ci/device.sh`.

Subcommands (each prints one line per check and exits non-zero if any check failed):
    cases        run the representative case set once: forward + backward of every kernel on
                 the harness's pinned edge cases (lengths off the block sizes, empty rows and
                 sequences, partial last pages, GQA groups crossing tiles, strided inputs).
                 This is what the compute-sanitizer tools (memcheck, racecheck, initcheck,
                 synccheck) execute.
    determinism  the same case set `--repeats` times: outputs, lse and gradients bitwise equal.
    offsets      tensors with more than 2^31 elements / index * stride past 2^31 through
                 views, checked against the float64 oracle on sampled rows.
    bad-input    the oracle's bad-input catalog (tests/reference/test_validation.py) against the
                 kernels on the GPU: same error, no CUDA error left, next valid call correct.

Usage: PYTHONPATH=. python ci/reliability.py cases|determinism|offsets|bad-input [--repeats N]
       [--variant V ...]
RELIABILITY_DEVICE=cpu TRITON_INTERPRET=1 runs the same code through the interpreter (a dry run;
RELIABILITY_OFFSET_LIMIT=65536 shrinks the offsets checks' 2^31 to fit a CPU).
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch

from attnverify import kernels as K
from attnverify import reference as R
from attnverify.arch import current_arch
from attnverify.verify.case import VARIANTS
from attnverify.verify.compare import compare
from attnverify.verify.specs import get_spec
from attnverify.verify.targets import resolve_target
from attnverify.verify.tolerance import lookup

ROOT = Path(__file__).resolve().parents[1]
DEV = torch.device(os.environ.get("RELIABILITY_DEVICE", "cuda"))
Outputs = list[torch.Tensor]


def _sync() -> None:
    if DEV.type == "cuda":
        torch.cuda.synchronize()


def representative_cases(variants: Sequence[str] = VARIANTS) -> dict[str, Callable[[], Outputs]]:
    """Every kernel, forward and backward, on the harness's pinned edge cases (each variant
    spec's `pinned_cases()`: lengths off the block sizes, empty rows and sequences, partial
    last pages, more splits than blocks, GQA groups crossing tiles, strided and packed inputs,
    NaN in unused cache slots) in every dtype the variant takes on this device."""
    cases: dict[str, Callable[[], Outputs]] = {}
    for variant in variants:
        spec = get_spec(variant)
        impl = resolve_target("attnverify", variant)
        for dtype in spec.default_dtypes(DEV):
            for index, pinned in enumerate(spec.pinned_cases()):
                case = dataclasses.replace(pinned, dtype=dtype)
                inputs = spec.make_inputs(case, DEV)
                cases[f"{variant}/{dtype}/pinned{index}"] = functools.partial(
                    _run_impl, spec, impl, inputs, case
                )
    return cases


def _run_impl(spec: Any, impl: Callable[..., Any], inputs: dict, case: Any) -> Outputs:
    return list(spec.run_impl(impl, inputs, case, grads=True).values())


def run_cases(args: argparse.Namespace) -> int:
    for name, run in representative_cases(args.variant or VARIANTS).items():
        outs = run()
        _sync()
        print(f"ran {name}: {len(outs)} tensors")
    return 0


def _bitwise_equal(a: torch.Tensor, b: torch.Tensor) -> bool:
    """Equal bit patterns (NaN payloads included), whatever the strides."""
    return torch.equal(a.contiguous().view(torch.uint8), b.contiguous().view(torch.uint8))


def run_determinism(args: argparse.Namespace) -> int:
    failed = 0
    for name, run in representative_cases(args.variant or VARIANTS).items():
        first = [o.clone() for o in run()]
        moved = 0
        for _ in range(args.repeats - 1):
            for a, b in zip(first, run(), strict=True):
                moved += int(not _bitwise_equal(a, b))
        failed += bool(moved)
        print(
            f"{'FAIL' if moved else 'ok  '} determinism {name}: {moved} differing tensors over {args.repeats} runs"
        )
    return int(failed > 0)


def run_offsets(_: argparse.Namespace) -> int:
    """Tensors or views whose index * stride passes 2^31 elements, one check per kernel, each
    against the float64 oracle on sampled rows; a check that raises (an illegal address, say)
    is a failure and the others still run."""
    checks = {
        "gqa batch stride 2^31": _offsets_gqa,
        "fp8 batch stride 2^31": _offsets_fp8,
        "varlen Tq*Hq*D > 2^31": _offsets_varlen,
        "paged num_blocks*block*Hk*D > 2^31": _offsets_paged,
        "merge R*S*D > 2^31": _offsets_merge,
    }
    failed = 0
    for name, check in checks.items():
        try:
            failed += check()
        except Exception as err:  # an illegal address is what this check looks for
            failed += 1
            print(f"FAIL offsets {name}: raised {type(err).__name__}: {err}")
        _sync()
        if DEV.type == "cuda":
            torch.cuda.empty_cache()
    return int(failed > 0)


# The element count the offsets checks pass: 2^31 (a CPU dry run may lower it).
LIMIT = int(os.environ.get("RELIABILITY_OFFSET_LIMIT", 2**31))
# bfloat16 on a GPU; float16 for a CPU dry run (the interpreter's bf16 dot is wrong, triton#11584)
HALF = torch.bfloat16 if DEV.type == "cuda" else torch.float16


def _batch_stride_views(dtype: torch.dtype, hq: int, hk: int, length: int, d: int) -> tuple:
    """q (2, hq, length, d) and k, v (2, hk, length, d) over one buffer with batch stride LIMIT
    elements: every element of batch 1 sits past LIMIT."""
    buf = torch.randn(LIMIT + (hq + 2 * hk) * length * d, device=DEV).to(dtype)
    shape_q, shape_k = (2, hq, length, d), (2, hk, length, d)
    stride = (LIMIT, length * d, d, 1)
    q = buf.as_strided(shape_q, stride)
    k = buf.as_strided(shape_k, stride, storage_offset=hq * length * d)
    v = buf.as_strided(shape_k, stride, storage_offset=(hq + hk) * length * d)
    return q, k, v


def _offsets_gqa() -> int:
    q, k, v = _batch_stride_views(HALF, 4, 2, 256, 128)
    out = K.gqa_attention(q, k, v, causal=True)
    args = (q[1:].cpu(), k[1:].cpu(), v[1:].cpu())
    return _judge("gqa", "batch stride 2^31", out[1:], R.gqa_attention, args, {"causal": True})


def _offsets_fp8() -> int:
    dtype = current_arch(DEV).fp8_dtypes[0] if DEV.type == "cuda" else torch.float8_e4m3fn
    q, k, v = _batch_stride_views(dtype, 4, 2, 256, 128)
    one = torch.ones((), device=DEV)
    out = K.fp8_attention(q, k, v, one, one, one, causal=True)
    args = (q[1:].cpu(), k[1:].cpu(), v[1:].cpu(), one.cpu(), one.cpu(), one.cpu())
    spec = get_spec("fp8")
    baseline = spec.baseline(spec.pinned_cases()[0])  # the fp8 baseline ignores the case's shape
    kw = {"causal": True, "scale": None, "out_dtype": torch.bfloat16}
    return _judge("fp8", "batch stride 2^31", out[1:], R.fp8_attention, args, kw, baseline)


def _offsets_varlen() -> int:
    # Tq * Hq * D > LIMIT elements (2^31 / (16 * 128) = 1M tokens of 1024-token sequences).
    hq, d, seq = 16, 128, 1024
    total = (LIMIT // (hq * d) // seq + 1) * seq
    cu = torch.arange(0, total + 1, seq, dtype=torch.int32, device=DEV)
    q = torch.randn(total, hq, d, device=DEV, dtype=HALF)
    out = K.varlen_attention(q, q, q, cu, cu)
    last = q[total - seq :].cpu()
    args = (last, last, last, cu[:2].cpu(), cu[:2].cpu())
    name = f"Tq*Hq*D = {total * hq * d}"
    return _judge("varlen", name, out[total - seq :], R.varlen_attention, args, {})


def _offsets_paged() -> int:
    # num_blocks * block_size * Hk * D > LIMIT; the request reads the last blocks.
    block, hk, d = 16, 8, 128
    nblocks = LIMIT // (block * hk * d) + 64
    cache = torch.randn(nblocks, block, hk, d, device=DEV, dtype=HALF)
    tables = torch.arange(nblocks - 64, nblocks, dtype=torch.int32, device=DEV)[None]
    lens = torch.tensor([1000], dtype=torch.int32, device=DEV)
    q = torch.randn(1, 32, 1, d, device=DEV, dtype=HALF)
    out = K.paged_attention(q, cache, cache, tables, lens)
    kv = cache[nblocks - 64 :].cpu()
    args = (q.cpu(), kv, kv, torch.arange(64, dtype=torch.int32)[None], lens.cpu())
    name = f"num_blocks*block*Hk*D = {nblocks * block * hk * d}"
    return _judge("paged", name, out, R.paged_attention, args, {})


def _offsets_merge() -> int:
    # (R, S, D) partials with R * S * D > LIMIT: the last rows are checked.
    splits, d = 4, 128
    rows = LIMIT // (splits * d) + 256
    out = torch.randn(rows, splits, d, device=DEV, dtype=HALF)
    lse = torch.randn(rows, splits, device=DEV, dtype=torch.float32)
    merged, _ = K.merge_attention_states(out, lse)
    args = (out[-256:].cpu(), lse[-256:].cpu())
    name = f"R*S*D = {rows * splits * d}"
    return _judge("merge", name, merged[-256:], _merged_out(R.merge_attention_states), args, {})


def _merged_out(merge: Callable) -> Callable:
    """The merge oracle's out alone (its lse is compared by the harness, not here)."""
    return lambda *args, **kw: merge(*args, **kw)[0]


def _judge(
    variant: str,
    name: str,
    out: torch.Tensor,
    oracle: Callable,
    args: tuple,
    kw: dict,
    baseline: Callable | None = None,
) -> int:
    """Compare `out` with the float64 oracle under the tolerance table's rule for `out`,
    relative to the same-precision baseline (default: the oracle run in out's dtype)."""
    dtype = out.dtype
    ref = oracle(*args, **kw)
    if baseline is None:
        base = oracle(*args, **kw, compute_dtype=dtype)
    else:
        base = baseline(*args, **kw)
    ref, base = (x[0] if isinstance(x, tuple) else x for x in (ref, base))
    name_dtype = str(args[0].dtype if variant == "fp8" else dtype).removeprefix("torch.")
    rule = lookup(variant, name_dtype, "out", "gpu")
    result = compare(f"{variant}/{name}/out", "out", out.cpu(), ref, base, rule, dtype)
    print(f"{'ok  ' if result.passed else 'FAIL'} offsets {variant} {name}: {result}")
    return int(not result.passed)


def _on_device(kw: dict) -> dict:
    """The catalog's CPU kwargs on DEV, float64 as bfloat16 (the kernels take no float64; the
    catalog's own dtype faults are float16 and float32, which stay faults against bfloat16)."""
    moved = {}
    for key, value in kw.items():
        if isinstance(value, torch.Tensor) and value.device.type == "cpu":
            value = value.to(DEV)
            if value.dtype == torch.float64:
                value = value.to(torch.bfloat16)
        moved[key] = value
    return moved


def _kernel_valid(entry: str, kw: dict) -> dict:
    """Valid kernel inputs from the catalog's: fp8's D = 8 widened to 32 (the fp8 kernel takes
    D % 16 == 0), so each fault stays the only fault."""
    if entry == "fp8":
        kw = {**kw, **{n: torch.cat([kw[n]] * 4, dim=-1) for n in ("q", "k", "v")}}
    return _on_device(kw)


def run_bad_input(_: argparse.Namespace) -> int:
    sys.path.insert(0, str(ROOT / "tests" / "reference"))
    import test_validation as catalog

    kernel_fns = {
        "varlen": K.varlen_attention,
        "gqa": K.gqa_attention,
        "fp8": K.fp8_attention,
        "paged": K.paged_attention,
        "paged_fp8": K.paged_attention,
        "merge": K.merge_attention_states,
    }
    failed = 0
    for case_id, bad in catalog.BAD.items():
        _, valid = catalog.ENTRY_POINTS[bad.entry]
        fn = kernel_fns[bad.entry]
        kw = _on_device(bad.change(_kernel_valid(bad.entry, valid())))
        try:
            fn(**kw)
            outcome = "returned a result"
        except (TypeError, ValueError) as err:
            outcome = "ok" if isinstance(err, bad.error) else f"raised {type(err).__name__}: {err}"
        except Exception as err:  # a crash or a CUDA error is exactly what this check looks for
            outcome = f"raised {type(err).__name__}: {err}"
        _sync()
        failed += outcome != "ok"
        print(f"{'ok  ' if outcome == 'ok' else 'FAIL'} bad-input {case_id}: {outcome}")
    # The next valid call in the same process is still correct.
    q = torch.randn(1, 4, 64, 64, device=DEV, dtype=torch.float16)
    args = (q.cpu(), q.cpu(), q.cpu())
    failed += _judge(
        "gqa", "valid call after the catalog", K.gqa_attention(q, q, q), R.gqa_attention, args, {}
    )
    return int(failed > 0)


COMMANDS = {
    "cases": run_cases,
    "determinism": run_determinism,
    "offsets": run_offsets,
    "bad-input": run_bad_input,
}


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("command", choices=sorted(COMMANDS))
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument(
        "--variant", action="append", choices=VARIANTS, help="cases/determinism: only these"
    )
    args = parser.parse_args()
    return COMMANDS[args.command](args)


if __name__ == "__main__":
    sys.exit(main())
