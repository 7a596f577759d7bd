"""Device reliability checks for every kernel (issue 9), run by `ci/device.sh`.

Subcommands (each prints one line per check and exits non-zero if any check failed):
    cases        run the representative case set once: forward + backward of every kernel on
                 lengths that are not block multiples, empty rows and sequences, partial last
                 pages, GQA groups crossing tiles, strided inputs. This is what the
                 compute-sanitizer tools (memcheck, racecheck, initcheck, synccheck) execute.
    determinism  the same case set `--repeats` times: outputs, lse and gradients bitwise equal.
    offsets      tensors with more than 2^31 elements / index * stride past 2^31 through
                 views, checked against the float64 oracle on sampled rows.
    bad-input    the oracle's bad-input catalog (tests/reference/test_validation.py) against the
                 kernels on the GPU: same error, no CUDA error left, next valid call correct.

Usage: PYTHONPATH=. python ci/reliability.py cases|determinism|offsets|bad-input [--repeats N]
RELIABILITY_DEVICE=cpu TRITON_INTERPRET=1 runs the same code through the interpreter (a dry run).
"""

from __future__ import annotations

import argparse
import math
import os
import sys
from collections.abc import Callable
from pathlib import Path

import torch

from attnverify import kernels as K
from attnverify import reference as R
from attnverify.verify.compare import compare
from attnverify.verify.tolerance import lookup

ROOT = Path(__file__).resolve().parents[1]
DEV = torch.device(os.environ.get("RELIABILITY_DEVICE", "cuda"))
Outputs = list[torch.Tensor]


def _sync() -> None:
    if DEV.type == "cuda":
        torch.cuda.synchronize()


def _gen(seed: int) -> torch.Generator:
    return torch.Generator(device=DEV).manual_seed(seed)


def _randn(*shape: int, dtype: torch.dtype, seed: int) -> torch.Tensor:
    return torch.randn(*shape, generator=_gen(seed), device=DEV, dtype=torch.float32).to(dtype)


def _grads(out: torch.Tensor, inputs: list[torch.Tensor], seed: int) -> Outputs:
    grad_out = _randn(*out.shape, dtype=out.dtype, seed=seed)
    return list(torch.autograd.grad(out, inputs, grad_out))


def case_varlen(dtype: torch.dtype, causal: bool) -> Callable[[], Outputs]:
    """Packed 77 / 0 / 123 / 1 tokens, Hq=6, Hk=2, D=72, q sliced from a packed qkv buffer."""
    cu = torch.tensor([0, 77, 77, 200, 201], dtype=torch.int32, device=DEV)
    qkv = _randn(201, 10, 72, dtype=dtype, seed=1)

    def run() -> Outputs:
        q, k, v = (t.detach().requires_grad_() for t in qkv.split([6, 2, 2], dim=1))
        out, lse = K.varlen_attention(q, k, v, cu, cu, causal=causal, return_lse=True)
        return [out, lse, *_grads(out, [q, k, v], 2)]

    return run


def case_gqa(dtype: torch.dtype, causal: bool) -> Callable[[], Outputs]:
    """B=2, Hq=6, Hk=2, Lq=77, Lk=133, D=80; kv-headed mask with a blank tile and an empty row,
    a (1, 1, Lq, 1) bias; q transposed from (B, Lq, Hq, D)."""
    q0 = _randn(2, 77, 6, 80, dtype=dtype, seed=3).transpose(1, 2)
    k0 = _randn(2, 2, 133, 80, dtype=dtype, seed=4)
    v0 = _randn(2, 2, 133, 80, dtype=dtype, seed=5)
    mask = torch.rand(2, 2, 77, 133, generator=_gen(6), device=DEV) > 0.3
    mask[:, :, :, 64:128] = False
    mask[0, 1, 5] = False
    bias0 = _randn(1, 1, 77, 1, dtype=dtype, seed=7)

    def run() -> Outputs:
        q, k, v, bias = (t.detach().requires_grad_() for t in (q0, k0, v0, bias0))
        out, lse = K.gqa_attention(q, k, v, mask=mask, bias=bias, causal=causal, return_lse=True)
        return [out, lse, *_grads(out, [q, k, v, bias], 8)]

    return run


def case_fp8(causal: bool) -> Callable[[], Outputs]:
    """B=2, Hq=4, Hk=2, Lq=100, Lk=150, D=80, per-(B, Hk) descales, row-major V."""
    e4m3 = torch.float8_e4m3fn
    q, qd = R.quantize_fp8(
        _randn(2, 4, 100, 80, dtype=torch.float32, seed=9), e4m3, "head", kv_heads=2
    )
    k, kd = R.quantize_fp8(_randn(2, 2, 150, 80, dtype=torch.float32, seed=10), e4m3, "head")
    v, vd = R.quantize_fp8(_randn(2, 2, 150, 80, dtype=torch.float32, seed=11), e4m3, "head")

    def run() -> Outputs:
        return list(K.fp8_attention(q, k, v, qd, kd, vd, causal=causal, return_lse=True))

    return run


def case_paged(
    cache_dtype: torch.dtype, lq: int, num_splits: int | None, layout: str
) -> Callable[[], Outputs]:
    """B=3 with seq_lens 0 / 17 / 300, block 16, Hq=8, Hk=2, D=128; unused slots NaN, unused
    block-table entries -1, blocks permuted over a pool with spares."""
    block, hk, d, nblocks = 16, 2, 128, 40
    shape = (nblocks, block, hk, d) if layout == "NHD" else (nblocks, hk, block, d)
    k_cache = _randn(*shape, dtype=torch.float32, seed=12)
    v_cache = _randn(*shape, dtype=torch.float32, seed=13)
    seq_lens = torch.tensor([0, 17, 300], dtype=torch.int32, device=DEV)
    perm = torch.randperm(nblocks, generator=torch.Generator().manual_seed(14)).to(DEV, torch.int32)
    tables = torch.full((3, 20), -1, dtype=torch.int32, device=DEV)
    tables[1, :2] = perm[:2]
    tables[2, :19] = perm[2:21]
    for cache in (k_cache, v_cache):
        _poison_unused(cache, tables, seq_lens, block, layout)
    q = _randn(3, 8, lq, d, dtype=torch.bfloat16, seed=15)
    kd = vd = None
    if cache_dtype == torch.bfloat16:
        k_cache, v_cache = k_cache.to(cache_dtype), v_cache.to(cache_dtype)
    else:
        kd = torch.tensor([0.5, 0.3], device=DEV)
        vd = torch.tensor([0.7, 0.2], device=DEV)
        k_cache = (k_cache / _per_head(kd, layout)).to(cache_dtype)
        v_cache = (v_cache / _per_head(vd, layout)).to(cache_dtype)

    def run() -> Outputs:
        return list(
            K.paged_attention(
                q,
                k_cache,
                v_cache,
                tables,
                seq_lens,
                k_descale=kd,
                v_descale=vd,
                num_splits=num_splits,
                kv_layout=layout,
                return_lse=True,
            )
        )

    return run


def _per_head(descale: torch.Tensor, layout: str) -> torch.Tensor:
    """A (Hk,) descale shaped to broadcast over a cache of `layout`."""
    return descale.view(1, 1, -1, 1) if layout == "NHD" else descale.view(1, -1, 1, 1)


def _poison_unused(
    cache: torch.Tensor, tables: torch.Tensor, seq_lens: torch.Tensor, block: int, layout: str
) -> None:
    used = torch.zeros(cache.shape[0], block, dtype=torch.bool, device=DEV)
    for b, n in enumerate(seq_lens.tolist()):
        for j in range(n):
            used[tables[b, j // block], j % block] = True
    slots = cache if layout == "NHD" else cache.transpose(1, 2)
    slots[~used] = float("nan")


def case_merge() -> Callable[[], Outputs]:
    """out (3, 8, 5, 128) with whole -inf splits (out NaN there) and an all -inf row."""
    out = _randn(3, 8, 5, 128, dtype=torch.float32, seed=16)
    lse = _randn(3, 8, 5, dtype=torch.float32, seed=17)
    lse[:, :, 2] = -math.inf
    out[:, :, 2] = float("nan")
    lse[1, 3] = -math.inf

    def run() -> Outputs:
        return list(K.merge_attention_states(out, lse))

    return run


def representative_cases() -> dict[str, Callable[[], Outputs]]:
    """Every kernel, forward and backward, on the shapes where out-of-bounds and races live."""
    cases: dict[str, Callable[[], Outputs]] = {}
    for dtype in (torch.bfloat16, torch.float16):
        for causal in (False, True):
            tag = f"{str(dtype)[6:]}/{'causal' if causal else 'full'}"
            cases[f"varlen/{tag}"] = case_varlen(dtype, causal)
            cases[f"gqa/{tag}"] = case_gqa(dtype, causal)
    cases["gqa/float32/full"] = case_gqa(torch.float32, False)
    for causal in (False, True):
        cases[f"fp8/e4m3/{'causal' if causal else 'full'}"] = case_fp8(causal)
    for cache_dtype in (torch.bfloat16, torch.float8_e4m3fn):
        for lq, splits, layout in ((1, None, "NHD"), (4, 3, "HND"), (1, 64, "NHD"), (3, 1, "NHD")):
            name = f"paged/{str(cache_dtype)[6:]}/lq{lq}/splits{splits}/{layout}"
            cases[name] = case_paged(cache_dtype, lq, splits, layout)
    cases["merge/float32"] = case_merge()
    return cases


def run_cases(_: argparse.Namespace) -> int:
    for name, run in representative_cases().items():
        outs = run()
        _sync()
        print(f"ran {name}: {len(outs)} tensors")
    return 0


def _bitwise_equal(a: torch.Tensor, b: torch.Tensor) -> bool:
    """Equal bit patterns (NaN payloads included), whatever the strides."""
    return torch.equal(a.contiguous().view(torch.uint8), b.contiguous().view(torch.uint8))


def run_determinism(args: argparse.Namespace) -> int:
    failed = 0
    for name, run in representative_cases().items():
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
    """Views whose index * stride passes 2^31 elements, checked on sampled rows."""
    failed = 0
    big = 2**31 + 2**20
    # gqa / fp8: batch stride past 2^31 elements (B=2, the second batch starts beyond 2^31).
    buf = torch.randn(big, device=DEV, dtype=torch.bfloat16)
    hq, L, d = 4, 256, 128
    q = buf.as_strided((2, hq, L, d), (2**31, L * d, d, 1))
    k = buf.as_strided((2, 2, L, d), (2**31, L * d, d, 1), storage_offset=hq * L * d)
    v = buf.as_strided((2, 2, L, d), (2**31, L * d, d, 1), storage_offset=(hq + 2) * L * d)
    out = K.gqa_attention(q, k, v, causal=True)
    args = (q[1:].cpu(), k[1:].cpu(), v[1:].cpu())
    failed += _judge("gqa", "batch stride 2^31", out[1:], R.gqa_attention, args, {"causal": True})
    del buf, q, k, v, out
    # varlen: Tq * Hq * D > 2^31 elements (2^31 / (16 * 128) = 1M tokens of 1024-token sequences).
    hq, d, seq = 16, 128, 1024
    total = 2**31 // (hq * d) + seq
    cu = torch.arange(0, total + 1, seq, dtype=torch.int32, device=DEV)
    q = torch.randn(total, hq, d, device=DEV, dtype=torch.bfloat16)
    out = K.varlen_attention(q, q, q, cu, cu)
    last = q[total - seq :].cpu()
    args = (last, last, last, cu[:2].cpu(), cu[:2].cpu())
    name = f"Tq*Hq*D = {total * hq * d}"
    failed += _judge("varlen", name, out[total - seq :], R.varlen_attention, args, {})
    del q, out
    # paged: num_blocks * block_size * Hk * D > 2^31, the request reads the last blocks.
    block, hk, dd = 16, 8, 128
    nblocks = 2**31 // (block * hk * dd) + 64
    cache = torch.randn(nblocks, block, hk, dd, device=DEV, dtype=torch.bfloat16)
    tables = torch.arange(nblocks - 64, nblocks, dtype=torch.int32, device=DEV)[None]
    lens = torch.tensor([1000], dtype=torch.int32, device=DEV)
    qd = torch.randn(1, 32, 1, dd, device=DEV, dtype=torch.bfloat16)
    out = K.paged_attention(qd, cache, cache, tables, lens)
    kv = cache[nblocks - 64 :].cpu()
    args = (qd.cpu(), kv, kv, torch.arange(64, dtype=torch.int32)[None], lens.cpu())
    name = f"num_blocks*block*Hk*D = {nblocks * block * hk * dd}"
    failed += _judge("paged", name, out, R.paged_attention, args, {})
    return int(failed > 0)


def _judge(
    variant: str, name: str, out: torch.Tensor, oracle: Callable, args: tuple, kw: dict
) -> int:
    """Compare `out` with the float64 oracle under the tolerance table's rule for `out`,
    relative to the oracle run in the input dtype (the same-precision baseline)."""
    dtype = out.dtype
    ref = oracle(*args, **kw)
    baseline = oracle(*args, **kw, compute_dtype=dtype)
    rule = lookup(variant, str(dtype).removeprefix("torch."), "out", "gpu")
    result = compare(f"{variant}/{name}/out", "out", out.cpu(), ref, baseline, rule, dtype)
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
    args = parser.parse_args()
    return COMMANDS[args.command](args)


if __name__ == "__main__":
    sys.exit(main())
