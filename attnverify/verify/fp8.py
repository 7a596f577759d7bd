"""Verification spec of `fp8_attention`: fp8 q (B, Hq, Lq, D), k, v (B, Hk, Lk, D); descales
float32 () or (B, Hk); out in out_dtype; forward only (out, lse).

Values are real N(0, 1) / peaked / outlier tensors quantized with `quantize_fp8`, so each
tensor's (or each (batch, kv head)'s) largest magnitude sits at the format's max; descales are
then amax / fmax: non-unit, not reciprocals of each other, different per (batch, kv head).
Baseline: the dequantized inputs attended in float32 with P rounded through V's fp8 dtype
(as the kernel's fp8 P @ V does) and out rounded to out_dtype.
Layouts add "v_seq_contiguous": V stored with v.stride(-2) == 1 (`prepare_fp8_v`'s layout).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
from hypothesis import strategies as st

from attnverify.arch import current_arch
from attnverify.reference import fp8_attention
from attnverify.reference._common import attend, causal_visible
from attnverify.reference.fp8 import dequantize, quantize_fp8
from attnverify.verify._common import VariantSpec, generator, place_qkv, resolve_device, values
from attnverify.verify.case import DISTRIBUTIONS, LAYOUTS, Case, dtype_from_name
from attnverify.verify.gqa import term_magnitudes, visible_pairs
from attnverify.verify.profiles import budget as profile_budget
from attnverify.verify.profiles import heads_room, tiles
from attnverify.verify.strategies import head_counts, head_dims, lengths, seeds

FP8_LAYOUTS = (*LAYOUTS, "v_seq_contiguous")
CPU_FP8 = ("float8_e4m3fn", "float8_e5m2")
# fp8 matrix units take K in multiples of 32 bytes; `check_fp8_inputs(head_dim_multiple=16)` is
# how the fp8 kernel states it, so fp8 cases draw D % 16 == 0 (80, 96, 112, 144 non-powers).
FP8_HEAD_DIM_MULTIPLE = 16


@st.composite
def fp8_cases(
    draw: st.DrawFn, profile: str = "ci", dtypes: Sequence[str] = ("float8_e4m3fn",)
) -> Case:
    """fp8 cases within the profile's budget; shrinks towards B = 1, Hq = Hk = 1, D = 64,
    Lq = Lk = 1, per-tensor descales, float16 out, contiguous memory. The `ci` profile draws
    out_dtype float16 only (bf16 under the interpreter: triton #11584)."""
    b = profile_budget(profile)
    dtype = draw(st.sampled_from(list(dtypes)))
    d = draw(head_dims(b, FP8_HEAD_DIM_MULTIPLE))
    lq = draw(lengths(min(b.max_len, max(1, b.max_work // d))))
    lk = draw(lengths(min(b.max_len, max(1, b.max_work // (d * lq)))))
    room = heads_room(b, d, lq * lk, tiles(lq, lk))
    hq, hk = draw(head_counts(min(b.max_heads_q, room)))
    batch = draw(st.integers(1, max(1, min(b.max_batch, room // hq))))
    out_dtypes = ["float16"] if profile == "ci" else ["bfloat16", "float16"]
    return Case(
        variant="fp8",
        dtype=dtype,
        seed=draw(seeds()),
        batch=batch,
        heads_q=hq,
        heads_k=hk,
        head_dim=d,
        lq=lq,
        lk=lk,
        causal=draw(st.booleans()),
        scale=draw(st.sampled_from([None, 0.5, 0.05])),
        distribution=draw(st.sampled_from(DISTRIBUTIONS)),
        layout=draw(st.sampled_from(FP8_LAYOUTS)),
        out_dtype=draw(st.sampled_from(out_dtypes)),
        descale=draw(st.sampled_from(["tensor", "head"])),
    )


class Fp8Spec(VariantSpec):
    """Spec of `fp8_attention` (see module docstring)."""

    name = "fp8"
    positional = ("q", "k", "v", "q_descale", "k_descale", "v_descale")

    def strategy(
        self, profile: str = "ci", dtypes: Sequence[str] | None = None
    ) -> st.SearchStrategy[Case]:
        return fp8_cases(profile, tuple(dtypes or CPU_FP8))

    def default_dtypes(self, device: torch.device) -> tuple[str, ...]:
        """The fp8 dtypes the device's arch takes (CPU interpreter: e4m3fn, e5m2)."""
        if device.type == "cpu":
            return CPU_FP8
        return tuple(str(d).removeprefix("torch.") for d in current_arch(device).fp8_dtypes)

    def oracle(self) -> Callable[..., Any]:
        return fp8_attention

    def baseline(self, case: Case) -> Callable[..., tuple[torch.Tensor, torch.Tensor]]:
        """Dequantized inputs in float32, P rounded through V's fp8 dtype, out in out_dtype."""

        def run(
            q: torch.Tensor,
            k: torch.Tensor,
            v: torch.Tensor,
            q_descale: torch.Tensor,
            k_descale: torch.Tensor,
            v_descale: torch.Tensor,
            *,
            causal: bool,
            scale: float | None,
            out_dtype: torch.dtype,
            return_lse: bool = True,
        ) -> tuple[torch.Tensor, torch.Tensor]:
            f32 = torch.float32
            qd, kd, vd = (
                dequantize(x, s, f32) for x, s in ((q, q_descale), (k, k_descale), (v, v_descale))
            )
            sc = scale if scale is not None else q.shape[-1] ** -0.5
            out, lse = attend(
                qd, kd, vd, scale=sc, causal=causal, compute_dtype=f32, p_dtype=v.dtype
            )
            return out.to(out_dtype), lse

        return run

    def make_inputs(self, case: Case, device: torch.device | str | None = None) -> dict[str, Any]:
        """fp8 q, k, v (quantized from the case's distribution), descales, flags."""
        dev = resolve_device(device)
        gen = generator(case.seed)
        dtype = case.torch_dtype
        shape_q = (case.batch, case.heads_q, case.lq, case.head_dim)
        shape_k = (case.batch, case.heads_k, case.lk, case.head_dim)
        real = [
            values(shape_q, case.distribution, gen),
            values(shape_k, case.distribution, gen),
            values(shape_k, case.distribution, gen, peaked=False),
        ]
        quant = [quantize_fp8(x, dtype, case.descale, kv_heads=case.heads_k) for x in real]
        (q, qs), (k, ks), (v, vs) = quant
        layout = "contiguous" if case.layout == "v_seq_contiguous" else case.layout
        q, k, v = place_qkv(q, k, v, layout, dtype, dev)
        if case.layout == "v_seq_contiguous":
            v = v.transpose(-1, -2).contiguous().transpose(-1, -2)
        return {
            "q": q,
            "k": k,
            "v": v,
            "q_descale": qs.to(dev),
            "k_descale": ks.to(dev),
            "v_descale": vs.to(dev),
            "causal": case.causal,
            "scale": case.scale,
            "out_dtype": dtype_from_name(case.out_dtype or "bfloat16"),
        }

    def magnitudes(
        self, case: Case, inputs: dict[str, Any], oracle: dict[str, torch.Tensor]
    ) -> dict[str, float]:
        """Largest summands of out and lse from the dequantized inputs (`term_magnitudes`)."""
        f64 = torch.float64
        q, k, v = (dequantize(inputs[n], inputs[f"{n}_descale"], f64) for n in ("q", "k", "v"))
        scale = case.scale if case.scale is not None else case.head_dim**-0.5
        seen = torch.ones((case.lq, case.lk), dtype=torch.bool, device=q.device)
        if case.causal:
            seen = causal_visible(case.lq, case.lk, q.device)
        return term_magnitudes(q, k, v, None, oracle["out"], oracle["lse"], seen, None, scale)

    def quantity_dtype(self, case: Case, quantity: str) -> torch.dtype:
        if quantity == "lse":
            return torch.float32
        return dtype_from_name(case.out_dtype or "bfloat16")

    def compile_affinity(self, case: Case) -> tuple:
        """The head dim alone: the V transpose kernel moves bytes, so one compile serves both
        fp8 dtypes, causal and not, every out dtype (the default key would deal those cases
        to different workers, each compiling it)."""
        return (case.variant, case.head_dim)

    def pinned_cases(self) -> list[Case]:
        """Decode with causal and per-head descales, Lq > Lk causal (empty rows), 65 keys
        with V sequence-contiguous."""
        pin = {"variant": "fp8", "dtype": "float8_e4m3fn", "seed": 11, "out_dtype": "float16"}
        return [
            Case(**pin, batch=2, heads_q=4, heads_k=2, lq=1, lk=70, causal=True, descale="head"),
            Case(**pin, head_dim=80, lq=40, lk=17, causal=True),
            Case(
                **pin,
                heads_q=2,
                heads_k=2,
                head_dim=128,
                lq=65,
                lk=65,
                descale="head",
                layout="v_seq_contiguous",
            ),
        ]

    def flops(self, case: Case) -> float:
        """4 * visible pairs * Hq * D over the batch."""
        pairs = visible_pairs(case.lq, case.lk, case.causal)
        return 4.0 * case.batch * case.heads_q * case.head_dim * pairs

    def bytes_moved(self, case: Case) -> float:
        """fp8 q, k, v read (1 byte each) and out written in out_dtype."""
        out_size = torch.finfo(dtype_from_name(case.out_dtype or "bfloat16")).bits // 8
        q = case.batch * case.heads_q * case.lq * case.head_dim
        kv = 2 * case.batch * case.heads_k * case.lk * case.head_dim
        return float(q + kv + out_size * q)

    def bench_cases(self) -> list[Case]:
        """B = 1, H = 16, D = 128, L = 8192, e4m3, bf16 out, causal and not, per-tensor and
        per-head descales."""
        return [
            Case(
                variant="fp8",
                dtype="float8_e4m3fn",
                seed=0,
                heads_q=16,
                heads_k=16,
                head_dim=128,
                lq=8192,
                lk=8192,
                causal=causal,
                out_dtype="bfloat16",
                descale=descale,
            )
            for causal in (False, True)
            for descale in ("tensor", "head")
        ]


SPEC = Fp8Spec()

__all__ = ["FP8_LAYOUTS", "SPEC", "Fp8Spec", "fp8_cases"]
