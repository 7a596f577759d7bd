"""Verification spec of `varlen_attention`: q (Tq, Hq, D); k, v (Tk, Hk, D); sequences from
cu_seqlens (N+1,) int32; causal bottom-right per sequence; gradients dq, dk, dv.

Cases reach: 1-4 sequences whose lengths are on and off block edges, zero-length sequences (on
the query side, the key side, or both), Lq != Lk per sequence both ways, self-attention
(Lq_n = Lk_n), G in {1, 2, 3, 4, 5, 8}, D powers of two and not, normal / peaked / outlier
values, contiguous / transposed / packed-qkv / offset memory, max_seqlen exact or loose.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
from hypothesis import strategies as st

from attnverify.reference import varlen_attention
from attnverify.reference._common import causal_visible
from attnverify.verify._common import VariantSpec, generator, place_qkv, resolve_device, values
from attnverify.verify.case import DISTRIBUTIONS, LAYOUTS, Case
from attnverify.verify.gqa import term_magnitudes, visible_pairs
from attnverify.verify.profiles import budget as profile_budget
from attnverify.verify.profiles import heads_room, tiles
from attnverify.verify.strategies import head_counts, head_dims, lengths, seeds

# max_seqlen_q/k are upper bounds: callers pass the exact maximum or a looser one (a batch's
# padded maximum); kernels must not size anything but the grid from them.
SEQLEN_SLACK = (0, 0, 7, 64)


@st.composite
def varlen_cases(
    draw: st.DrawFn, profile: str = "ci", dtypes: Sequence[str] = ("float16",)
) -> Case:
    """Varlen cases within the profile's budget; shrinks towards one sequence of length 1 each
    side, Hq = Hk = 1, D = 64, non-causal, normal values, contiguous memory."""
    b = profile_budget(profile)
    dtype = draw(st.sampled_from(list(dtypes)))
    d = draw(head_dims(b))
    num_seqs = draw(st.integers(1, b.max_batch + 1))
    is_self = draw(st.booleans())
    seqlens_q: list[int] = []
    seqlens_k: list[int] = []
    work = 0
    for _ in range(num_seqs):
        room = max(0, b.max_work // d - work)
        lq = draw(lengths(min(b.max_len, room), min_len=0))
        if is_self:
            lk = min(lq, room // max(lq, 1))
        else:
            lk = draw(lengths(min(b.max_len, room // max(lq, 1)), min_len=0))
        seqlens_q.append(lq)
        seqlens_k.append(lk)
        work += lq * lk
    num_tiles = sum(tiles(lq, lk) for lq, lk in zip(seqlens_q, seqlens_k, strict=True))
    room = heads_room(b, d, work, num_tiles)
    hq, hk = draw(head_counts(min(b.max_heads_q, room)))
    return Case(
        variant="varlen",
        dtype=dtype,
        seed=draw(seeds()),
        heads_q=hq,
        heads_k=hk,
        head_dim=d,
        seqlens_q=tuple(seqlens_q),
        seqlens_k=tuple(seqlens_k),
        causal=draw(st.booleans()),
        scale=draw(st.sampled_from([None, 0.5, 0.05])),
        distribution=draw(st.sampled_from(DISTRIBUTIONS)),
        layout=draw(st.sampled_from(LAYOUTS)),
        max_seqlen_slack=draw(st.sampled_from(SEQLEN_SLACK)),
    )


def cu_seqlens(seqlens: Sequence[int], device: torch.device) -> torch.Tensor:
    """(N+1,) int32 cumulative lengths starting at 0."""
    cu = [0]
    for n in seqlens:
        cu.append(cu[-1] + n)
    return torch.tensor(cu, dtype=torch.int32, device=device)


class VarlenSpec(VariantSpec):
    """Spec of `varlen_attention` (see module docstring)."""

    name = "varlen"
    positional = ("q", "k", "v", "cu_seqlens_q", "cu_seqlens_k", "max_seqlen_q", "max_seqlen_k")
    grad_inputs = ("q", "k", "v")

    def strategy(
        self, profile: str = "ci", dtypes: Sequence[str] | None = None
    ) -> st.SearchStrategy[Case]:
        return varlen_cases(profile, tuple(dtypes or ("float16", "float32")))

    def oracle(self) -> Callable[..., Any]:
        return varlen_attention

    def make_inputs(self, case: Case, device: torch.device | str | None = None) -> dict[str, Any]:
        """q, k, v, cu_seqlens_q/k, max_seqlen_q/k, causal, scale (values from the case seed)."""
        dev = resolve_device(device)
        gen = generator(case.seed)
        tq, tk = sum(case.seqlens_q), sum(case.seqlens_k)
        q = values((tq, case.heads_q, case.head_dim), case.distribution, gen)
        k = values((tk, case.heads_k, case.head_dim), case.distribution, gen)
        v = values((tk, case.heads_k, case.head_dim), case.distribution, gen, peaked=False)
        q, k, v = place_qkv(q, k, v, case.layout, case.torch_dtype, dev)
        return {
            "q": q,
            "k": k,
            "v": v,
            "cu_seqlens_q": cu_seqlens(case.seqlens_q, dev),
            "cu_seqlens_k": cu_seqlens(case.seqlens_k, dev),
            "max_seqlen_q": max(case.seqlens_q, default=0) + case.max_seqlen_slack,
            "max_seqlen_k": max(case.seqlens_k, default=0) + case.max_seqlen_slack,
            "causal": case.causal,
            "scale": case.scale,
        }

    def structural_zeros(
        self, case: Case, inputs: dict[str, Any], oracle: dict[str, torch.Tensor]
    ) -> dict[str, torch.Tensor]:
        """Empty rows (out, dq; lse is (Hq, Tq)), and keys of sequences without queries (dk,
        dv): with at least one query, every key of a sequence is seen (causal is bottom-right)."""
        empty = torch.isneginf(oracle["lse"]).t().unsqueeze(-1)
        unseen = torch.cat(
            [
                torch.full((lk,), lq == 0, dtype=torch.bool)
                for lq, lk in zip(case.seqlens_q, case.seqlens_k, strict=True)
            ]
            or [torch.zeros(0, dtype=torch.bool)]
        )
        keys = unseen[:, None, None]
        return {"out": empty, "dq": empty, "dk": keys, "dv": keys}

    def magnitudes(
        self, case: Case, inputs: dict[str, Any], oracle: dict[str, torch.Tensor]
    ) -> dict[str, float]:
        """Largest summands of out and each gradient, over every sequence (`term_magnitudes`)."""
        f64 = torch.float64
        q, k, v = (inputs[n].detach().to(f64) for n in ("q", "k", "v"))
        # Gradient magnitudes only when gradients are compared (the oracle has them).
        dout = (
            self.grad_output(case, oracle["out"].shape, q.device).to(f64)
            if "dq" in oracle
            else None
        )
        scale = case.scale if case.scale is not None else case.head_dim**-0.5
        out, lse = oracle["out"], oracle["lse"]
        best: dict[str, float] = {}
        sq = sk = 0
        for lq, lk in zip(case.seqlens_q, case.seqlens_k, strict=True):
            if lq and lk:

                def seq(x: torch.Tensor | None, start: int, n: int) -> torch.Tensor | None:
                    return None if x is None else x[start : start + n].transpose(0, 1).unsqueeze(0)

                seen = (
                    causal_visible(lq, lk, q.device)
                    if case.causal
                    else torch.ones(lq, lk, dtype=torch.bool, device=q.device)
                )
                mags = term_magnitudes(
                    seq(q, sq, lq),
                    seq(k, sk, lk),
                    seq(v, sk, lk),
                    seq(dout, sq, lq),
                    seq(out, sq, lq),
                    lse[:, sq : sq + lq].unsqueeze(0),
                    seen,
                    None,
                    scale,
                )
                for name, value in mags.items():
                    best[name] = max(best.get(name, 0.0), value)
            sq, sk = sq + lq, sk + lk
        return best

    def pinned_cases(self) -> list[Case]:
        """Zero-length sequences on either side with Lq != Lk and causal, lengths 63/111 with
        G = 3 packed, Lq > Lk causal (empty rows) after a sequence with no queries."""
        pin = {"variant": "varlen", "dtype": "float16", "seed": 11}
        return [
            Case(
                **pin,
                heads_q=4,
                heads_k=2,
                head_dim=72,
                seqlens_q=(17, 0, 64, 1),
                seqlens_k=(17, 5, 65, 30),
                causal=True,
            ),
            Case(
                **pin,
                heads_q=3,
                heads_k=1,
                head_dim=80,
                seqlens_q=(63, 111),
                seqlens_k=(63, 111),
                layout="packed",
            ),
            Case(**pin, seqlens_q=(0, 40), seqlens_k=(3, 15), causal=True),
        ]

    def flops(self, case: Case) -> float:
        """4 * sum over sequences of visible pairs * Hq * D."""
        pairs = sum(
            visible_pairs(lq, lk, case.causal)
            for lq, lk in zip(case.seqlens_q, case.seqlens_k, strict=True)
        )
        return 4.0 * pairs * case.heads_q * case.head_dim

    def bytes_moved(self, case: Case) -> float:
        """q, k, v read and out written once."""
        size = torch.finfo(case.torch_dtype).bits // 8
        tq, tk = sum(case.seqlens_q), sum(case.seqlens_k)
        return float(size * case.head_dim * (2 * tq * case.heads_q + 2 * tk * case.heads_k))

    def bench_cases(self) -> list[Case]:
        """Vision-encoder shapes: Hq = Hk = 16, D = 80 (Qwen2-VL ViT) and 72 (SigLIP-so400m),
        per-image sequences of 1k-8k patches (8 and 16 images of 1k: 8k and 16k tokens, the
        floor of #5's batches), non-causal, bf16 and fp16; then D = 128 (bf16, the mixed batch
        and one 8k image), the power-of-two reference for the other two."""
        images = [(1024, 2304, 4096, 8192), (1024,) * 8, (8192,), (1024,) * 16]
        shapes = [(dtype, d, lens) for dtype in ("bfloat16", "float16") for d in (80, 72)
                  for lens in images]  # fmt: skip
        shapes += [("bfloat16", 128, images[0]), ("bfloat16", 128, images[2])]
        return [
            Case(
                variant="varlen",
                dtype=dtype,
                seed=0,
                heads_q=16,
                heads_k=16,
                head_dim=d,
                seqlens_q=lens,
                seqlens_k=lens,
            )
            for dtype, d, lens in shapes
        ]

    def bench_backward(self, case: Case) -> bool:
        """D = 128: #5's backward target (against SDPA flash's backward on the same tokens as
        a dense equal-length batch)."""
        return case.head_dim == 128


SPEC = VarlenSpec()

__all__ = ["SPEC", "VarlenSpec", "cu_seqlens", "varlen_cases"]
