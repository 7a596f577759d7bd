"""Verification spec of `gqa_attention`: q (B, Hq, Lq, D); k, v (B, Hk, Lk, D); broadcast
mask/bias (Bm, Hm, Lqm, Lkm); causal bottom-right; gradients dq, dk, dv, dbias.

Cases reach: G in {1, 2, 3, 4, 5, 8} with Hk in {1..4}; D powers of two and not; Lq, Lk on and
off block edges, Lq = 1, Lq != Lk both ways; masks and biases of every broadcast shape
(`hypothesis.extra.numpy.broadcastable_shapes` over (B, Hq, Lq, Lk), head dim 1 / Hk / Hq);
masks with random holes, whole blank tiles, fully masked rows; bias in q's dtype or float32;
broadcast mask/bias passed as stride-0 expanded views (`broadcast_views`: then dbias has the
expanded shape, as autograd gives for an expanded leaf);
normal, peaked and outlier values; contiguous, transposed, packed-qkv and offset layouts.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
from hypothesis import strategies as st
from hypothesis.extra.numpy import broadcastable_shapes

from attnverify.reference import gqa_attention
from attnverify.reference._common import causal_visible, expand_heads
from attnverify.verify._common import VariantSpec, generator, place_qkv, resolve_device, values
from attnverify.verify.case import DISTRIBUTIONS, LAYOUTS, Case
from attnverify.verify.profiles import budget as profile_budget
from attnverify.verify.profiles import heads_room, tiles
from attnverify.verify.strategies import TILE_SIZES, head_counts, head_dims, lengths, seeds

MASK_KEEP = {"random": 0.5, "tiles": 0.8, "rows": 0.8}
BLANK_TILE_P = 0.5
SPARSE_BLANK_P = 0.9  # "sparse": #6's block-sparse bench mask (90% of tiles all False)
BLANK_ROW_P = 0.3


@st.composite
def gqa_cases(draw: st.DrawFn, profile: str = "ci", dtypes: Sequence[str] = ("float16",)) -> Case:
    """GQA cases within the profile's budget; shrinks towards B = 1, Hq = Hk = 1, D = 64,
    Lq = Lk = 1, no mask, no bias, non-causal, normal values, contiguous memory."""
    b = profile_budget(profile)
    dtype = draw(st.sampled_from(list(dtypes)))
    d = draw(head_dims(b))
    causal = draw(st.booleans())
    # A third of causal cases decode-like (Lq <= 16 queries at the end of Lk keys): where a
    # top-left or ignored causal mask shows.
    short_q = causal and draw(st.sampled_from([False, False, True]))
    lq = draw(lengths(16 if short_q else min(b.max_len, max(1, b.max_work // d))))
    lk = draw(lengths(min(b.max_len, max(1, b.max_work // (d * lq)))))
    room = heads_room(b, d, lq * lk, tiles(lq, lk))
    hq, hk = draw(head_counts(min(b.max_heads_q, room)))
    batch = draw(st.integers(1, max(1, min(b.max_batch, room // hq))))
    full = (batch, hq, lq, lk)
    mask_shape = bias_shape = None
    mask_kind, mask_tile, bias_dtype = "none", 0, None
    if draw(st.booleans()):
        mask_shape = _broadcast_shape(draw, full, hk)
        mask_kind = draw(st.sampled_from(["random", "tiles", "rows"]))
        mask_tile = draw(st.sampled_from(TILE_SIZES)) if mask_kind == "tiles" else 0
    if draw(st.booleans()):
        bias_shape = _broadcast_shape(draw, full, hk, keys_full_p=0.75)
        bias_dtype = draw(st.sampled_from([dtype, "float32"]))
    has_broadcast = any(x is not None and 1 in x for x in (mask_shape, bias_shape))
    return Case(
        variant="gqa",
        dtype=dtype,
        seed=draw(seeds()),
        batch=batch,
        heads_q=hq,
        heads_k=hk,
        head_dim=d,
        lq=lq,
        lk=lk,
        causal=causal,
        scale=draw(st.sampled_from([None, 0.5, 0.05])),
        distribution=draw(st.sampled_from(DISTRIBUTIONS)),
        layout=draw(st.sampled_from(LAYOUTS)),
        mask_shape=mask_shape,
        mask_kind=mask_kind,
        mask_tile=mask_tile,
        bias_shape=bias_shape,
        bias_dtype=bias_dtype,
        broadcast_views=has_broadcast and draw(st.booleans()),
    )


def _broadcast_shape(
    draw: st.DrawFn, full: tuple[int, int, int, int], hk: int, keys_full_p: float = 0.5
) -> tuple[int, ...]:
    """(Bm, Hm, Lqm, Lkm): each dim 1 or full (broadcastable_shapes), the head dim 1, Hk or Hq.

    Hm = Hk (read at h // G) is drawn about half the time: the kv-headed class where a head
    mapping goes wrong. With probability `keys_full_p` Lkm = Lk: a bias constant along keys
    has an identically zero gradient, which hides every dbias bug.
    """
    drawn = draw(broadcastable_shapes(full, min_dims=4, max_dims=4, min_side=1))
    # Where the full side is 1, broadcastable_shapes may draw any side; keep 1 there.
    shape = [s if s == f else 1 for s, f in zip(drawn, full, strict=True)]
    heads = draw(st.sampled_from([full[1], hk, hk, 1]))
    keys_full = draw(st.integers(0, 99)) < 100 * keys_full_p
    return (shape[0], heads, shape[2], full[3] if keys_full else shape[3])


def expanded(x: torch.Tensor, case: Case) -> torch.Tensor:
    """A mask/bias (Bm, Hm, Lqm, Lkm) as a stride-0 view expanded over its broadcast B, Lq and
    Lk dims (as `mask.expand(B, Hm, Lq, Lk)` from a caller gives): same values, full shape."""
    return x.expand(case.batch, x.shape[1], case.lq, case.lk)


def make_mask(case: Case, gen: torch.Generator) -> torch.Tensor:
    """The case's bool mask (True = attend) of shape `case.mask_shape`, on the CPU.

    "random": each element kept with probability MASK_KEEP. "tiles": aligned mask_tile x
    mask_tile blocks blanked whole with probability BLANK_TILE_P (kernels skip those tiles),
    random holes elsewhere. "rows": random holes plus whole rows blanked (empty rows).
    "sparse" (bench): tiles blanked whole with probability SPARSE_BLANK_P, no other holes.
    """
    shape = tuple(case.mask_shape or ())
    if case.mask_kind == "sparse":
        keep = torch.ones(shape, dtype=torch.bool)
    else:
        keep = torch.rand(shape, generator=gen) < MASK_KEEP[case.mask_kind]
    if case.mask_kind in ("tiles", "sparse"):
        t = case.mask_tile
        grid = (*shape[:2], -(-shape[2] // t), -(-shape[3] // t))
        p_blank = SPARSE_BLANK_P if case.mask_kind == "sparse" else BLANK_TILE_P
        blank = torch.rand(grid, generator=gen) < p_blank
        blank = blank.repeat_interleave(t, 2).repeat_interleave(t, 3)[..., : shape[2], : shape[3]]
        keep &= ~blank
    elif case.mask_kind == "rows":
        rows = torch.rand((*shape[:3], 1), generator=gen) < BLANK_ROW_P
        keep &= ~rows
    return keep


class GqaSpec(VariantSpec):
    """Spec of `gqa_attention` (see module docstring)."""

    name = "gqa"
    positional = ("q", "k", "v")
    grad_inputs = ("q", "k", "v", "bias")

    def strategy(
        self, profile: str = "ci", dtypes: Sequence[str] | None = None
    ) -> st.SearchStrategy[Case]:
        return gqa_cases(profile, tuple(dtypes or ("float16", "float32")))

    def oracle(self) -> Callable[..., Any]:
        return gqa_attention

    def make_inputs(self, case: Case, device: torch.device | str | None = None) -> dict[str, Any]:
        """q, k, v, mask, bias, causal, scale for the case (values from the case seed)."""
        dev = resolve_device(device)
        gen = generator(case.seed)
        dtype = case.torch_dtype
        q = values((case.batch, case.heads_q, case.lq, case.head_dim), case.distribution, gen)
        k = values((case.batch, case.heads_k, case.lk, case.head_dim), case.distribution, gen)
        v = values(
            (case.batch, case.heads_k, case.lk, case.head_dim), case.distribution, gen, peaked=False
        )
        q, k, v = place_qkv(q, k, v, case.layout, dtype, dev)
        mask = make_mask(case, generator(case.seed, 1)).to(dev) if case.mask_shape else None
        bias = None
        if case.bias_shape:
            bias = values(case.bias_shape, case.distribution, generator(case.seed, 2))
            bias = bias.to(
                device=dev, dtype=torch.float32 if case.bias_dtype == "float32" else dtype
            )
        if case.broadcast_views:
            mask, bias = (None if x is None else expanded(x, case) for x in (mask, bias))
        return {
            "q": q,
            "k": k,
            "v": v,
            "mask": mask,
            "bias": bias,
            "causal": case.causal,
            "scale": case.scale,
        }

    def structural_zeros(
        self, case: Case, inputs: dict[str, Any], oracle: dict[str, torch.Tensor]
    ) -> dict[str, torch.Tensor]:
        """Empty rows (out, dq), keys no query of the group sees (dk, dv), and bias entries
        every broadcast partner of which is hidden (dbias)."""
        zeros = super().structural_zeros(case, inputs, oracle)
        seen = visibility(case, inputs)
        b, hq, _, lk = seen.shape
        hk = case.heads_k
        keys = seen.any(dim=2).reshape(b, hk, hq // hk, lk).any(dim=2)
        zeros["dk"] = zeros["dv"] = ~keys.unsqueeze(-1)
        if case.bias_shape is not None:
            zeros["dbias"] = ~reduce_to(seen, tuple(inputs["bias"].shape), hk)
        return zeros

    def magnitudes(
        self, case: Case, inputs: dict[str, Any], oracle: dict[str, torch.Tensor]
    ) -> dict[str, float]:
        """Largest summands of out and of each gradient (see `term_magnitudes`)."""
        f64 = torch.float64
        q, k, v = (inputs[n].detach().to(f64) for n in ("q", "k", "v"))
        bias = inputs["bias"]
        # Gradient magnitudes only when gradients are compared (the oracle has them).
        dout = (
            self.grad_output(case, oracle["out"].shape, q.device).to(f64)
            if "dq" in oracle
            else None
        )
        scale = case.scale if case.scale is not None else case.head_dim**-0.5
        return term_magnitudes(
            q,
            k,
            v,
            dout,
            oracle["out"],
            oracle["lse"],
            visibility(case, inputs).to(q.device),
            None if bias is None else bias.detach().to(f64),
            scale,
        )

    def quantity_dtype(self, case: Case, quantity: str) -> torch.dtype:
        if quantity == "lse":
            return torch.float32
        if quantity == "dbias" and case.bias_dtype == "float32":
            return torch.float32
        return case.torch_dtype

    def pinned_cases(self) -> list[Case]:
        """Decode with causal (Lq = 1 < Lk), Lq > Lk causal (empty rows), Lk = 65 with G = 8,
        kv-headed mask with blank rows plus a kv-headed float32 bias broadcast over B, small
        Lq > 1 causal (speculative decode), blank tiles, a bias broadcast over Lq with causal
        and D = 136, an explicit scale on offset memory."""
        pin = {"variant": "gqa", "dtype": "float16", "seed": 11}
        return [
            Case(**pin, heads_q=4, heads_k=2, lq=1, lk=77, causal=True),
            Case(**pin, head_dim=72, lq=40, lk=17, causal=True),
            Case(**pin, heads_q=8, heads_k=1, head_dim=80, lq=63, lk=65),
            Case(
                **pin,
                batch=2,
                heads_q=6,
                heads_k=3,
                lq=33,
                lk=40,
                mask_shape=(2, 3, 33, 40),
                mask_kind="rows",
                bias_shape=(1, 3, 33, 40),
                bias_dtype="float32",
            ),
            Case(**pin, heads_q=4, heads_k=1, head_dim=32, lq=5, lk=37, causal=True),
            Case(
                **pin,
                heads_q=2,
                heads_k=2,
                lq=48,
                lk=96,
                mask_shape=(1, 2, 48, 96),
                mask_kind="tiles",
                mask_tile=16,
                layout="transposed",
                distribution="peaked",
            ),
            Case(
                **pin,
                batch=2,
                head_dim=136,
                lq=20,
                lk=20,
                causal=True,
                bias_shape=(2, 1, 1, 20),
                bias_dtype="float16",
                layout="packed",
            ),
            Case(
                **pin,
                heads_q=3,
                heads_k=3,
                lq=17,
                lk=129,
                scale=0.3,
                layout="offset",
                distribution="outliers",
            ),
        ]

    def flops(self, case: Case) -> float:
        """4 * visible (query, key) pairs * Hq * D over the batch (mask holes not subtracted)."""
        return (
            4.0
            * case.batch
            * case.heads_q
            * case.head_dim
            * visible_pairs(case.lq, case.lk, case.causal)
        )

    def bytes_moved(self, case: Case) -> float:
        """q, k, v read and out written once (plus the bias, if any)."""
        size = torch.finfo(case.torch_dtype).bits // 8
        qo = 2 * case.batch * case.heads_q * case.lq * case.head_dim
        kv = 2 * case.batch * case.heads_k * case.lk * case.head_dim
        bias = 0
        if case.bias_shape:
            bias_size = 4 if case.bias_dtype == "float32" else size
            bias = bias_size * int(torch.Size(case.bias_shape).numel())
        return float(size * (qo + kv) + bias)

    def bench_cases(self) -> list[Case]:
        """Decoder GQA shapes (D 128, B 1, Hq 16, Hk 16 / 4, L 8192), bf16 and fp16: causal
        without a bias, and a (1, 1, L, L) bias; in bf16 also the dense non-causal forward and
        (Hk 16) a block-sparse mask with 90% of its 128 x 128 tiles all False (#6's targets)."""
        base = dict(variant="gqa", seed=0, heads_q=16, head_dim=128, lq=8192, lk=8192)
        out = []
        for dtype in ("bfloat16", "float16"):
            for hk in (16, 4):
                if dtype == "bfloat16":
                    out.append(Case(**base, dtype=dtype, heads_k=hk))
                out.append(Case(**base, dtype=dtype, heads_k=hk, causal=True))
                out.append(
                    Case(
                        **base,
                        dtype=dtype,
                        heads_k=hk,
                        bias_shape=(1, 1, 8192, 8192),
                        bias_dtype=dtype,
                    )
                )
        sparse = dict(mask_shape=(1, 1, 8192, 8192), mask_kind="sparse", mask_tile=128)
        out.append(Case(**base, dtype="bfloat16", heads_k=16, **sparse))
        return out

    def bench_backward(self, case: Case) -> bool:
        """bf16, non-causal, unmasked shapes (with a bias and without): #6's backward target
        is the bias one against SDPA flash's backward without a bias."""
        return case.dtype == "bfloat16" and not case.causal and case.mask_shape is None


def term_magnitudes(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    dout: torch.Tensor | None,
    out: torch.Tensor,
    lse: torch.Tensor,
    seen: torch.Tensor,
    bias: torch.Tensor | None,
    scale: float,
) -> dict[str, float]:
    """Largest absolute summand behind out, lse, dq, dk, dv, dbias (float64, (B, H, L, D)
    inputs); out and lse only when `dout` is None (no gradients compared).

    lse ~ the score summands scale * |q| . |k| + |bias| (and |lse|): a score that cancels to ~0
    still carries the rounding of its summands; the runner also uses it as the logit scale.
    With P the softmax, dP = dO V^T, delta = rowsum(dO * O), C = P * (|dP| + |delta|):
    out ~ P |V|, dv ~ P^T |dO|, dq ~ scale C |K|, dk ~ scale C^T |Q|, dbias ~ C summed over its
    broadcast dims. A quantity that cancels to ~0 (dq with one key, dbias broadcast over Lk)
    keeps a floor at the rounding scale of its summands instead of 0.
    """
    hq, hk = q.shape[1], k.shape[1]
    ke, ve = expand_heads(k, hq, hk), expand_heads(v, hq, hk)
    s = torch.matmul(q, ke.transpose(-1, -2)) * scale
    if bias is not None:
        s = s + expand_heads(bias, hq, hk)
    finite = torch.isfinite(lse).unsqueeze(-1) & seen
    p = torch.where(finite, torch.exp(s - torch.where(finite, lse.unsqueeze(-1), 0.0)), 0.0)
    out_mag = torch.matmul(p, ve.abs())
    score_mag = torch.matmul(q.abs(), ke.abs().transpose(-1, -2)) * abs(scale)
    if bias is not None:
        score_mag = score_mag + expand_heads(bias, hq, hk).abs()
    score_mag = torch.where(finite, score_mag, 0.0)
    lse_abs = torch.where(torch.isfinite(lse), lse.abs(), 0.0)
    # Lk = 0: no summand at all (amax over an empty dim would raise)
    lse_mag = torch.maximum(score_mag.amax(dim=-1), lse_abs) if score_mag.shape[-1] else lse_abs
    if dout is None:
        return {
            name: float(x.max()) if x.numel() else 0.0
            for name, x in (("out", out_mag), ("lse", lse_mag))
        }
    dp = torch.matmul(dout, ve.transpose(-1, -2)).abs()
    delta = (dout * out).sum(dim=-1, keepdim=True).abs()
    c = p * (dp + delta)
    b, lk = q.shape[0], k.shape[2]

    def grouped(x: torch.Tensor) -> torch.Tensor:
        return x.reshape(b, hk, hq // hk, lk, x.shape[-1]).sum(dim=2)

    mags = {
        "out": out_mag,
        "lse": lse_mag,
        "dv": grouped(torch.matmul(p.transpose(-1, -2), dout.abs())),
        "dq": scale * torch.matmul(c, ke.abs()),
        "dk": scale * grouped(torch.matmul(c.transpose(-1, -2), q.abs())),
    }
    if bias is not None:
        mags["dbias"] = sum_to(c, tuple(bias.shape), hk)
    return {name: float(x.max()) if x.numel() else 0.0 for name, x in mags.items()}


def sum_to(x: torch.Tensor, shape: Sequence[int], hk: int) -> torch.Tensor:
    """`x` (B, Hq, Lq, Lk) summed to a broadcast shape (Bm, Hm, Lqm, Lkm) (kv-headed: groups)."""
    b, hq = x.shape[:2]
    if shape[1] == hk and hk != hq:
        x = x.reshape(b, hk, hq // hk, *x.shape[2:]).sum(dim=2)
    for dim, size in enumerate(shape):
        if size == 1 and x.shape[dim] != 1:
            x = x.sum(dim=dim, keepdim=True)
    return x


def visibility(case: Case, inputs: dict[str, Any]) -> torch.Tensor:
    """(B, Hq, Lq, Lk) bool on the CPU: which keys each query sees (mask and causal)."""
    full = (case.batch, case.heads_q, case.lq, case.lk)
    seen = torch.ones(full, dtype=torch.bool)
    mask = inputs.get("mask")
    if mask is not None:
        seen = seen & expand_heads(mask.cpu(), case.heads_q, case.heads_k)
    if case.causal:
        seen = seen & causal_visible(case.lq, case.lk, torch.device("cpu"))
    return seen


def reduce_to(seen: torch.Tensor, shape: Sequence[int], hk: int) -> torch.Tensor:
    """`seen` (B, Hq, Lq, Lk) reduced with any() to a broadcast shape (Bm, Hm, Lqm, Lkm)."""
    b, hq = seen.shape[:2]
    if shape[1] == hk and hk != hq:
        seen = seen.reshape(b, hk, hq // hk, *seen.shape[2:]).any(dim=2)
    for dim, size in enumerate(shape):
        if size == 1 and seen.shape[dim] != 1:
            seen = seen.any(dim=dim, keepdim=True)
    return seen


def visible_pairs(lq: int, lk: int, causal: bool) -> int:
    """Number of (i, j) pairs a query sees: Lq * Lk, or the bottom-right causal count."""
    if not causal:
        return lq * lk
    return sum(min(max(i + lk - lq + 1, 0), lk) for i in range(lq))


SPEC = GqaSpec()

__all__ = [
    "SPEC",
    "GqaSpec",
    "gqa_cases",
    "make_mask",
    "reduce_to",
    "sum_to",
    "term_magnitudes",
    "visibility",
    "visible_pairs",
]
