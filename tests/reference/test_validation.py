"""Every public oracle entry point rejects bad input with a TypeError/ValueError whose message
names the argument, before producing any result (attnverify/validation.py)."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import pytest
import torch

from attnverify.reference import (
    fp8_attention,
    gqa_attention,
    merge_attention_states,
    paged_attention,
    varlen_attention,
)
from attnverify.validation import check_varlen_inputs

F64 = torch.float64
E4M3 = torch.float8_e4m3fn
Kwargs = dict[str, Any]


def t(*shape: int, dtype: torch.dtype = F64) -> torch.Tensor:
    """A tensor of `shape` with values 0.01 * (0, 1, 2, ...) in `dtype`."""
    n = math.prod(shape)
    return (torch.arange(n, dtype=torch.float64) * 0.01).reshape(shape).to(dtype)


def i32(values: list) -> torch.Tensor:
    return torch.tensor(values, dtype=torch.int32)


def meta(x: torch.Tensor) -> torch.Tensor:
    """The same tensor on the meta device: a second device on a CPU-only machine."""
    return x.to("meta")


def varlen_kwargs() -> Kwargs:
    """Valid varlen inputs: 2 sequences, Tq = 6, Tk = 5, Hq = 4, Hk = 2, D = 8."""
    return {
        "q": t(6, 4, 8),
        "k": t(5, 2, 8),
        "v": t(5, 2, 8),
        "cu_seqlens_q": i32([0, 2, 6]),
        "cu_seqlens_k": i32([0, 3, 5]),
    }


def gqa_kwargs() -> Kwargs:
    """Valid gqa inputs: B = 2, Hq = 4, Hk = 2, Lq = 3, Lk = 5, D = 8, mask and bias."""
    return {
        "q": t(2, 4, 3, 8),
        "k": t(2, 2, 5, 8),
        "v": t(2, 2, 5, 8),
        "mask": torch.ones(2, 1, 3, 5, dtype=torch.bool),
        "bias": t(1, 4, 1, 5),
    }


def fp8_kwargs() -> Kwargs:
    """Valid fp8 inputs: shapes of gqa in float8_e4m3fn, per-tensor and per-(B, Hk) descales."""
    return {
        "q": t(2, 4, 3, 8, dtype=E4M3),
        "k": t(2, 2, 5, 8, dtype=E4M3),
        "v": t(2, 2, 5, 8, dtype=E4M3),
        "q_descale": torch.ones((), dtype=torch.float32),
        "k_descale": torch.ones(2, 2, dtype=torch.float32),
        "v_descale": torch.ones((), dtype=torch.float32),
    }


def paged_kwargs() -> Kwargs:
    """Valid paged inputs: B = 2, Hq = 4, Hk = 2, D = 8, 6 blocks of 4, max_blocks = 3."""
    return {
        "q": t(2, 4, 1, 8),
        "k_cache": t(6, 4, 2, 8),
        "v_cache": t(6, 4, 2, 8),
        "block_tables": i32([[0, 1, -1], [2, 3, 4]]),
        "seq_lens": i32([5, 10]),
    }


def paged_fp8_kwargs() -> Kwargs:
    """paged_kwargs with an fp8 cache and (Hk,) descales."""
    kw = paged_kwargs()
    kw["k_cache"], kw["v_cache"] = (kw[n].to(E4M3) for n in ("k_cache", "v_cache"))
    kw["k_descale"] = kw["v_descale"] = torch.ones(2, dtype=torch.float32)
    return kw


def merge_kwargs() -> Kwargs:
    """Valid merge inputs: out (2, 3 splits, 8), lse (2, 3) float32."""
    return {"out": t(2, 3, 8), "lse": t(2, 3, dtype=torch.float32)}


ENTRY_POINTS: dict[str, tuple[Callable[..., Any], Callable[[], Kwargs]]] = {
    "varlen": (varlen_attention, varlen_kwargs),
    "gqa": (gqa_attention, gqa_kwargs),
    "fp8": (fp8_attention, fp8_kwargs),
    "paged": (paged_attention, paged_kwargs),
    "paged_fp8": (paged_attention, paged_fp8_kwargs),
    "merge": (merge_attention_states, merge_kwargs),
}


@dataclass(frozen=True)
class Bad:
    """One bad input: the entry point, a change to its valid kwargs, the error and its message."""

    entry: str
    change: Callable[[Kwargs], Kwargs]
    error: type[Exception]
    match: str


def with_(**changes: Any) -> Callable[[Kwargs], Kwargs]:
    """A change that sets kwargs; a callable value is applied to the current kwargs."""

    def change(kw: Kwargs) -> Kwargs:
        return {**kw, **{k: v(kw) if callable(v) else v for k, v in changes.items()}}

    return change


def shared_qkv_cases(entry: str, ndim: int, dtype: torch.dtype) -> dict[str, Bad]:
    """Bad q/k/v inputs every dense entry point (varlen, gqa, fp8) rejects."""
    q_shape = (6, 4) if ndim == 3 else (2, 4, 3)
    kv_shape = (5, 2) if ndim == 3 else (2, 2, 5)
    kv3_shape = (5, 3) if ndim == 3 else (2, 3, 5)
    other = F64 if dtype == E4M3 else E4M3
    return {
        "q-rank": Bad(entry, with_(q=lambda kw: kw["q"][0]), ValueError, f"q must be {ndim}-D"),
        "k-rank": Bad(entry, with_(k=lambda kw: kw["k"][None]), ValueError, f"k must be {ndim}-D"),
        "v-not-tensor": Bad(
            entry, with_(v=[[0.0]]), TypeError, "v must be a torch.Tensor; got list"
        ),
        "d-mismatch-qk": Bad(
            entry,
            with_(k=t(*kv_shape, 16, dtype=dtype), v=t(*kv_shape, 16, dtype=dtype)),
            ValueError,
            "q, k, v must share the head dim D",
        ),
        "d-mismatch-v": Bad(
            entry, with_(v=t(*kv_shape, 16, dtype=dtype)), ValueError, "share the head dim D"
        ),
        "d-over-256": Bad(
            entry,
            with_(
                q=t(*q_shape, 264, dtype=dtype),
                k=t(*kv_shape, 264, dtype=dtype),
                v=t(*kv_shape, 264, dtype=dtype),
            ),
            ValueError,
            r"q head dim D must be in \[8, 256\] with D % 8 == 0; got D=264",
        ),
        "d-not-multiple-of-8": Bad(
            entry,
            with_(
                q=t(*q_shape, 12, dtype=dtype),
                k=t(*kv_shape, 12, dtype=dtype),
                v=t(*kv_shape, 12, dtype=dtype),
            ),
            ValueError,
            r"head dim D must be in \[8, 256\] with D % 8 == 0; got D=12",
        ),
        "hq-not-multiple-of-hk": Bad(
            entry,
            with_(k=t(*kv3_shape, 8, dtype=dtype), v=t(*kv3_shape, 8, dtype=dtype)),
            ValueError,
            "query heads Hq=4 must be a multiple of kv heads Hk=3",
        ),
        "device-mismatch": Bad(
            entry, with_(k=lambda kw: meta(kw["k"])), ValueError, "q, k, v must share one device"
        ),
        "wrong-dtype-family": Bad(
            entry,
            with_(
                q=lambda kw: kw["q"].to(other),
                k=lambda kw: kw["k"].to(other),
                v=lambda kw: kw["v"].to(other),
            ),
            TypeError,
            "q must have dtype in",
        ),
        "scale-nan": Bad(
            entry, with_(scale=math.nan), ValueError, "scale must be a finite float or None"
        ),
        "scale-inf": Bad(
            entry, with_(scale=math.inf), ValueError, "scale must be a finite float or None"
        ),
        "scale-str": Bad(
            entry, with_(scale="0.1"), ValueError, "scale must be a finite float or None"
        ),
        "scale-tensor-2": Bad(
            entry,
            with_(scale=torch.tensor([0.1, 0.2])),
            ValueError,
            r"scale must be a finite float or None \(1/sqrt\(D\)\); got float32 of shape \(2,\)",
        ),
    }


BAD: dict[str, Bad] = {
    **{f"varlen/{k}": v for k, v in shared_qkv_cases("varlen", 3, F64).items()},
    "varlen/dtype-mismatch": Bad(
        "varlen",
        with_(k=lambda kw: kw["k"].float(), v=lambda kw: kw["v"].float()),
        ValueError,
        "q, k, v must share one dtype",
    ),
    "varlen/cu-not-int32": Bad(
        "varlen",
        with_(cu_seqlens_q=torch.tensor([0, 2, 6])),
        ValueError,
        r"cu_seqlens_q must be int32 of shape \(N\+1,\).*got int64",
    ),
    "varlen/cu-not-1d": Bad(
        "varlen",
        with_(cu_seqlens_k=i32([[0, 3, 5]])),
        ValueError,
        r"cu_seqlens_k must be int32 of shape \(N\+1,\).*shape \(1, 3\)",
    ),
    "varlen/cu-not-tensor": Bad(
        "varlen",
        with_(cu_seqlens_q=[0, 2, 6]),
        TypeError,
        "cu_seqlens_q must be a torch.Tensor; got list",
    ),
    "varlen/cu-not-from-0": Bad(
        "varlen",
        with_(cu_seqlens_q=i32([1, 2, 6])),
        ValueError,
        "cu_seqlens_q .* starting at 0.*got first entry 1",
    ),
    "varlen/cu-decreasing": Bad(
        "varlen",
        with_(cu_seqlens_k=i32([0, 4, 3, 5]), cu_seqlens_q=i32([0, 2, 4, 6])),
        ValueError,
        "cu_seqlens_k .* non-decreasing.*got 4 then 3 at index 2",
    ),
    "varlen/cu-last-not-T": Bad(
        "varlen",
        with_(cu_seqlens_q=i32([0, 2, 5])),
        ValueError,
        "cu_seqlens_q .* ending at T=6; got last entry 5",
    ),
    "varlen/cu-device": Bad(
        "varlen",
        with_(cu_seqlens_k=lambda kw: meta(kw["cu_seqlens_k"])),
        ValueError,
        r"cu_seqlens_k must be on q's device \(cpu\) or on the CPU; got meta",
    ),
    "varlen/cu-count-mismatch": Bad(
        "varlen",
        with_(cu_seqlens_k=i32([0, 5])),
        ValueError,
        "cu_seqlens_q and cu_seqlens_k must describe the same number of sequences N; got 2 and 1",
    ),
    "varlen/max-seqlen-q-too-small": Bad(
        "varlen",
        with_(max_seqlen_q=3),
        ValueError,
        r"max_seqlen_q must be an int >= the longest sequence \(4\)",
    ),
    "varlen/max-seqlen-k-too-small": Bad(
        "varlen",
        with_(max_seqlen_k=2),
        ValueError,
        r"max_seqlen_k must be an int >= the longest sequence \(3\)",
    ),
    "varlen/max-seqlen-tensor-float": Bad(
        "varlen", with_(max_seqlen_q=torch.tensor(4.0)), ValueError, "max_seqlen_q must be an int"
    ),
    "varlen/max-seqlen-bool": Bad(
        "varlen", with_(max_seqlen_q=True), ValueError, "max_seqlen_q must be an int"
    ),
    "varlen/max-seqlen-float": Bad(
        "varlen", with_(max_seqlen_k=3.5), ValueError, "max_seqlen_k must be an int"
    ),
    **{f"gqa/{k}": v for k, v in shared_qkv_cases("gqa", 4, F64).items()},
    "gqa/dtype-mismatch": Bad(
        "gqa",
        with_(v=lambda kw: kw["v"].half()),
        ValueError,
        "q, k, v must share one dtype; got q=torch.float64, k=torch.float64, v=torch.float16",
    ),
    "gqa/batch-mismatch": Bad(
        "gqa",
        with_(k=t(1, 2, 5, 8), v=t(1, 2, 5, 8)),
        ValueError,
        "q and k must share the batch size B; got 2 and 1",
    ),
    "gqa/kv-shape-mismatch": Bad(
        "gqa", with_(v=t(2, 2, 4, 8)), ValueError, "k and v must have the same shape"
    ),
    "gqa/mask-not-bool": Bad(
        "gqa",
        with_(mask=lambda kw: kw["mask"].float()),
        TypeError,
        r"mask must be bool \(True = attend\); got float32",
    ),
    "gqa/mask-not-tensor": Bad(
        "gqa", with_(mask=[[True]]), TypeError, "mask must be a torch.Tensor or None; got list"
    ),
    "gqa/mask-rank": Bad(
        "gqa",
        with_(mask=torch.ones(3, 5, dtype=torch.bool)),
        ValueError,
        r"mask must be 4-D \(Bm, Hm, Lqm, Lkm\).*got shape \(3, 5\)",
    ),
    "gqa/mask-heads": Bad(
        "gqa",
        with_(mask=torch.ones(1, 3, 3, 5, dtype=torch.bool)),
        ValueError,
        r"mask must be 4-D .*Hm in \{1, 2, 4\}.*got shape \(1, 3, 3, 5\)",
    ),
    "gqa/mask-lq": Bad(
        "gqa",
        with_(mask=torch.ones(1, 1, 2, 5, dtype=torch.bool)),
        ValueError,
        r"mask must be .*Lqm in \{1, 3\}",
    ),
    "gqa/mask-device": Bad(
        "gqa", with_(mask=lambda kw: meta(kw["mask"])), ValueError, "q, mask must share one device"
    ),
    "gqa/bias-batch": Bad(
        "gqa",
        with_(bias=t(3, 1, 1, 5)),
        ValueError,
        r"bias must be 4-D .*Bm in \{1, 2\}.*got shape \(3, 1, 1, 5\)",
    ),
    "gqa/bias-lk": Bad(
        "gqa", with_(bias=t(1, 1, 1, 4)), ValueError, r"bias must be .*Lkm in \{1, 5\}"
    ),
    "gqa/bias-dtype": Bad(
        "gqa",
        with_(bias=lambda kw: kw["bias"].half()),
        TypeError,
        r"bias must have dtype in \(float64, float32\); got float16",
    ),
    "gqa/bias-int": Bad(
        "gqa",
        with_(bias=torch.zeros(1, 1, 1, 5, dtype=torch.int32)),
        TypeError,
        "bias must have dtype in",
    ),
    "gqa/bias-device": Bad(
        "gqa", with_(bias=lambda kw: meta(kw["bias"])), ValueError, "q, bias must share one device"
    ),
    "gqa/fp8-input": Bad(
        "gqa",
        with_(
            q=t(2, 4, 3, 8, dtype=E4M3), k=t(2, 2, 5, 8, dtype=E4M3), v=t(2, 2, 5, 8, dtype=E4M3)
        ),
        TypeError,
        "q must have dtype in .*got float8_e4m3fn; fp8 inputs go to fp8_attention",
    ),
    **{f"fp8/{k}": v for k, v in shared_qkv_cases("fp8", 4, E4M3).items()},
    "fp8/non-fp8-input": Bad(
        "fp8",
        with_(q=t(2, 4, 3, 8), k=t(2, 2, 5, 8), v=t(2, 2, 5, 8)),
        TypeError,
        "q must have dtype in .*got float64; non-fp8 inputs go to gqa_attention",
    ),
    "fp8/descale-dtype": Bad(
        "fp8",
        with_(q_descale=torch.ones((), dtype=F64)),
        ValueError,
        r"q_descale must be float32 of shape \(\) or \(2, 2\); got float64",
    ),
    "fp8/descale-shape": Bad(
        "fp8",
        with_(k_descale=torch.ones(2, 4, dtype=torch.float32)),
        ValueError,
        r"k_descale must be float32 of shape \(\) or \(2, 2\); got float32 of shape \(2, 4\)",
    ),
    "fp8/descale-1d": Bad(
        "fp8",
        with_(v_descale=torch.ones(2, dtype=torch.float32)),
        ValueError,
        r"v_descale must be float32 of shape",
    ),
    "fp8/descale-not-tensor": Bad(
        "fp8",
        with_(v_descale=1.0),
        TypeError,
        "v_descale must be a float32 torch.Tensor; got float",
    ),
    "fp8/descale-device": Bad(
        "fp8",
        with_(q_descale=lambda kw: meta(kw["q_descale"])),
        ValueError,
        r"q_descale must be on the device of q \(cpu\)",
    ),
    "fp8/out-dtype": Bad(
        "fp8",
        with_(out_dtype=torch.float32),
        TypeError,
        r"out_dtype must be one of \(bfloat16, float16\); got torch.float32",
    ),
    "fp8/batch-mismatch": Bad(
        "fp8",
        with_(k=t(1, 2, 5, 8, dtype=E4M3), v=t(1, 2, 5, 8, dtype=E4M3)),
        ValueError,
        "q and k must share the batch size B",
    ),
    "paged/q-rank": Bad("paged", with_(q=lambda kw: kw["q"][:, :, 0]), ValueError, "q must be 4-D"),
    "paged/cache-rank": Bad(
        "paged", with_(k_cache=lambda kw: kw["k_cache"][0]), ValueError, "k_cache must be 4-D"
    ),
    "paged/q-fp8": Bad(
        "paged",
        with_(q=lambda kw: kw["q"].to(E4M3)),
        TypeError,
        "q must have dtype in .*fp8 inputs go to fp8_attention",
    ),
    "paged/cache-dtype": Bad(
        "paged",
        with_(k_cache=lambda kw: kw["k_cache"].float(), v_cache=lambda kw: kw["v_cache"].float()),
        TypeError,
        r"k_cache must have dtype in \(float64, float8",
    ),
    "paged/cache-dtype-mismatch": Bad(
        "paged",
        with_(v_cache=lambda kw: kw["v_cache"].to(E4M3)),
        ValueError,
        "k_cache, v_cache must share one dtype",
    ),
    "paged/cache-device": Bad(
        "paged",
        with_(v_cache=lambda kw: meta(kw["v_cache"])),
        ValueError,
        "q, k_cache, v_cache must share one device",
    ),
    "paged/cache-shape-mismatch": Bad(
        "paged",
        with_(v_cache=t(5, 4, 2, 8)),
        ValueError,
        "k_cache and v_cache must have the same shape",
    ),
    "paged/d-mismatch": Bad(
        "paged",
        with_(q=t(2, 4, 1, 16)),
        ValueError,
        "q and k_cache must share the head dim D; got 16 and 8",
    ),
    "paged/d-not-multiple-of-8": Bad(
        "paged",
        with_(q=t(2, 4, 1, 12), k_cache=t(6, 4, 2, 12), v_cache=t(6, 4, 2, 12)),
        ValueError,
        r"head dim D must be in \[8, 256\] with D % 8 == 0; got D=12",
    ),
    "paged/d-over-256": Bad(
        "paged",
        with_(
            q=t(2, 2, 1, 264),
            k_cache=t(2, 4, 2, 264),
            v_cache=t(2, 4, 2, 264),
            block_tables=i32([[0], [1]]),
            seq_lens=i32([1, 1]),
        ),
        ValueError,
        "got D=264",
    ),
    "paged/hq-not-multiple-of-hk": Bad(
        "paged",
        with_(q=t(2, 3, 1, 8)),
        ValueError,
        r"query heads Hq=3 must be a multiple of kv heads Hk=2 \(from k_cache\)",
    ),
    "paged/kv-layout": Bad(
        "paged",
        with_(kv_layout="BHSD"),
        ValueError,
        "kv_layout must be one of 'NHD', 'HND'; got 'BHSD'",
    ),
    "paged/block-tables-int64": Bad(
        "paged",
        with_(block_tables=lambda kw: kw["block_tables"].long()),
        ValueError,
        r"block_tables must be int32 of shape \(B=2, max_blocks\); got int64",
    ),
    "paged/block-tables-shape": Bad(
        "paged",
        with_(block_tables=i32([[0, 1, 2]])),
        ValueError,
        r"block_tables must be int32 of shape \(B=2, max_blocks\); got int32 of shape \(1, 3\)",
    ),
    "paged/block-tables-1d": Bad(
        "paged",
        with_(block_tables=i32([0, 1, 2])),
        ValueError,
        r"block_tables must be int32 of shape \(B=2, max_blocks\)",
    ),
    "paged/block-tables-list": Bad(
        "paged",
        with_(block_tables=[[0, 1, -1], [2, 3, 4]]),
        ValueError,
        r"block_tables must be int32 .*got list",
    ),
    "paged/block-tables-device": Bad(
        "paged",
        with_(block_tables=lambda kw: meta(kw["block_tables"])),
        ValueError,
        "q, block_tables, seq_lens must share one device",
    ),
    "paged/seq-lens-int64": Bad(
        "paged",
        with_(seq_lens=torch.tensor([5, 10])),
        ValueError,
        r"seq_lens must be int32 of shape \(B=2,\); got int64",
    ),
    "paged/seq-lens-shape": Bad(
        "paged",
        with_(seq_lens=i32([5, 10, 1])),
        ValueError,
        r"seq_lens must be int32 of shape \(B=2,\)",
    ),
    "paged/seq-lens-over-capacity": Bad(
        "paged",
        with_(seq_lens=i32([5, 13])),
        ValueError,
        r"seq_lens\[1\] must be in \[0, max_blocks \* block_size = 12\]; got 13",
    ),
    "paged/seq-lens-negative": Bad(
        "paged", with_(seq_lens=i32([-1, 10])), ValueError, r"seq_lens\[0\] must be in \[0, "
    ),
    "paged/used-block-out-of-range": Bad(
        "paged",
        with_(block_tables=i32([[0, 6, -1], [2, 3, 4]])),
        ValueError,
        r"block_tables\[0, 1\] = 6 is used \(seq_lens\[0\] = 5\) and must be a block id in \[0, num_blocks = 6\)",
    ),
    "paged/used-block-negative": Bad(
        "paged",
        with_(block_tables=i32([[0, 1, -1], [2, -1, 4]])),
        ValueError,
        r"block_tables\[1, 1\] = -1 is used",
    ),
    "paged/num-splits-0": Bad(
        "paged",
        with_(num_splits=0),
        ValueError,
        r"num_splits must be an int >= 1 or None \(automatic\); got 0",
    ),
    "paged/num-splits-float": Bad(
        "paged", with_(num_splits=2.0), ValueError, "num_splits must be an int >= 1"
    ),
    "paged/num-splits-bool": Bad(
        "paged", with_(num_splits=True), ValueError, "num_splits must be an int >= 1"
    ),
    "paged/descale-non-fp8-cache": Bad(
        "paged",
        with_(k_descale=torch.ones(2, dtype=torch.float32)),
        ValueError,
        "k_descale applies to fp8 caches only; the cache is float64",
    ),
    "paged/scale-nan": Bad(
        "paged", with_(scale=math.nan), ValueError, "scale must be a finite float"
    ),
    "paged_fp8/descale-shape": Bad(
        "paged_fp8",
        with_(k_descale=torch.ones(4, dtype=torch.float32)),
        ValueError,
        r"k_descale must be float32 of shape \(\) or \(2,\); got float32 of shape \(4,\)",
    ),
    "paged_fp8/descale-dtype": Bad(
        "paged_fp8",
        with_(v_descale=torch.ones(2, dtype=F64)),
        ValueError,
        r"v_descale must be float32 of shape",
    ),
    "paged_fp8/descale-device": Bad(
        "paged_fp8",
        with_(v_descale=lambda kw: meta(kw["v_descale"])),
        ValueError,
        r"v_descale must be on the device of q",
    ),
    "merge/out-rank": Bad(
        "merge",
        with_(out=t(8), lse=t(dtype=torch.float32)),
        ValueError,
        r"out must be \(\.\.\., S, D\) with at least 2 dims",
    ),
    "merge/out-not-tensor": Bad(
        "merge", with_(out=[[0.0]]), TypeError, "out must be a torch.Tensor; got list"
    ),
    "merge/lse-not-tensor": Bad(
        "merge", with_(lse=[0.0]), TypeError, "lse must be a torch.Tensor; got list"
    ),
    "merge/out-int": Bad(
        "merge",
        with_(out=torch.zeros(2, 3, 8, dtype=torch.int32)),
        TypeError,
        "out must have dtype in",
    ),
    "merge/out-fp8": Bad(
        "merge", with_(out=lambda kw: kw["out"].to(E4M3)), TypeError, "out must have dtype in .*fp8"
    ),
    "merge/lse-dtype": Bad(
        "merge",
        with_(lse=lambda kw: kw["lse"].half()),
        TypeError,
        r"lse must be float32 \(float64 for the oracle\); got float16",
    ),
    "merge/lse-shape": Bad(
        "merge",
        with_(lse=t(2, 4, dtype=torch.float32)),
        ValueError,
        r"lse must have shape out.shape\[:-1\] = \(2, 3\); got \(2, 4\)",
    ),
    "merge/no-splits": Bad(
        "merge",
        with_(out=t(2, 0, 8), lse=t(2, 0, dtype=torch.float32)),
        ValueError,
        r"at least one split \(S >= 1\)",
    ),
    "merge/device": Bad(
        "merge", with_(lse=lambda kw: meta(kw["lse"])), ValueError, "out, lse must share one device"
    ),
}


@pytest.mark.parametrize("entry", list(ENTRY_POINTS))
def test_validation_accepts_the_valid_inputs(entry: str) -> None:
    """The valid inputs each bad case starts from pass (so a rejection is the change's doing)."""
    fn, kwargs = ENTRY_POINTS[entry]
    result = fn(**kwargs())
    out = result[0] if isinstance(result, tuple) else result
    assert torch.isfinite(out).all()


@pytest.mark.parametrize("bad", list(BAD.values()), ids=list(BAD))
def test_validation_rejects(bad: Bad) -> None:
    """The bad input raises the expected error type with a message naming the argument."""
    fn, kwargs = ENTRY_POINTS[bad.entry]
    with pytest.raises(bad.error, match=bad.match):
        fn(**bad.change(kwargs()))


@pytest.mark.parametrize(
    "max_seqlen",
    [4, 9, np.int64(4), torch.tensor(4, dtype=torch.int32)],
    ids=["int", "larger", "numpy", "tensor"],
)
def test_validation_accepts_integer_max_seqlen(max_seqlen: object) -> None:
    """max_seqlen_q may be any integer >= the longest sequence (e.g. a `.max()` of lengths)."""
    want = varlen_attention(**varlen_kwargs())
    got = varlen_attention(**varlen_kwargs(), max_seqlen_q=max_seqlen, max_seqlen_k=3)
    assert torch.equal(got, want)


def test_validation_accepts_scalar_tensor_scale() -> None:
    """A one-element float tensor scale acts as the float it holds."""
    want = gqa_attention(**gqa_kwargs(), scale=0.25)
    assert torch.equal(gqa_attention(**gqa_kwargs(), scale=torch.tensor(0.25)), want)


def test_validation_accepts_cu_seqlens_on_the_cpu_beside_a_device_q() -> None:
    """cu_seqlens may stay on the CPU while q, k, v live on a device (meta stands in for one
    here): the values are read on the host and checked as usual, the lengths come back."""
    kw = varlen_kwargs()
    q, k, v = (meta(kw[n]) for n in ("q", "k", "v"))
    cu_q, cu_k = kw["cu_seqlens_q"], kw["cu_seqlens_k"]
    got = check_varlen_inputs(q, k, v, cu_q, cu_k, None, None, None, dtypes=(F64,))
    assert (got.seqlens_q, got.seqlens_k) == ((2, 4), (3, 2))
    with pytest.raises(ValueError, match=r"cu_seqlens_k .* got last entry 4"):
        check_varlen_inputs(q, k, v, cu_q, i32([0, 3, 4]), None, None, None, dtypes=(F64,))


def test_validation_reads_both_cu_seqlens_in_one_host_copy(monkeypatch: pytest.MonkeyPatch) -> None:
    """check_varlen_inputs reads cu_seqlens_q and cu_seqlens_k with one `.tolist()` (one device
    sync on a GPU), after every check that needs no values."""
    reads: list[tuple[int, ...]] = []
    tolist = torch.Tensor.tolist

    def counting(self: torch.Tensor) -> Any:
        reads.append(tuple(self.shape))
        return tolist(self)

    monkeypatch.setattr(torch.Tensor, "tolist", counting)
    kw = varlen_kwargs()
    args = (kw["q"], kw["k"], kw["v"], kw["cu_seqlens_q"], kw["cu_seqlens_k"], None, None, None)
    check_varlen_inputs(*args, dtypes=(F64,))
    n = kw["cu_seqlens_q"].numel() + kw["cu_seqlens_k"].numel()
    assert reads == [(n,)]
