"""Test cases of the oracle tests: metadata dataclasses, hypothesis strategies, seeded inputs.

Strategies draw metadata only (shapes, lengths, flags, broadcast shapes, block tables); the
values come from a `torch.Generator` seeded with the case's seed. Each strategy shrinks
towards one small sequence / one head / D = 8 / no mask, bias, causal or split.

`ORACLE_AGREEMENT` (attnverify/verify/tolerance.py, with its evidence) is the one comparison
bound these tests use: two float64 computations of the same attention (the torch oracle against
the numpy cross-oracle, or against itself rearranged) must agree to it, relative to the
magnitude of the values.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

import numpy as np
import torch
from hypothesis import strategies as st

from attnverify.reference import quantize_fp8
from attnverify.verify.tolerance import ORACLE_AGREEMENT

HEAD_DIMS = (8, 16, 24, 72)
HEAD_PAIRS = ((1, 1), (2, 1), (2, 2), (4, 1), (4, 2), (6, 3))
FP8_NAMES = ("float8_e4m3fn", "float8_e5m2", "float8_e4m3fnuz", "float8_e5m2fnuz")


def generator(seed: int) -> torch.Generator:
    """A CPU generator seeded with `seed` (every tensor value of a case comes from one)."""
    return torch.Generator().manual_seed(seed)


def randn(gen: torch.Generator, *shape: int) -> torch.Tensor:
    """Standard normal float64 values from `gen`."""
    return torch.randn(*shape, generator=gen, dtype=torch.float64)


def max_abs_diff(got: torch.Tensor | np.ndarray, want: torch.Tensor | np.ndarray) -> float:
    """Largest |got - want| over finite entries; inf when shapes or non-finite patterns differ.

    Non-finite entries (lse -inf of empty rows, NaN) must be equal in both, bit for bit in kind.
    """
    a = got.detach().to(torch.float64).numpy() if isinstance(got, torch.Tensor) else got
    b = want.detach().to(torch.float64).numpy() if isinstance(want, torch.Tensor) else want
    if a.shape != b.shape:
        return math.inf
    finite = np.isfinite(b)
    same_special = np.array_equal(a[~finite], b[~finite], equal_nan=True)
    if not same_special or not np.isfinite(a[finite]).all():
        return math.inf
    return float(np.abs(a[finite] - b[finite]).max(initial=0.0))


def assert_agree(
    path: str,
    got: torch.Tensor | np.ndarray,
    want: torch.Tensor | np.ndarray,
    condition: float = 1.0,
) -> float:
    """Assert two float64 results agree to ORACLE_AGREEMENT * condition * max(1, max |want|).

    `condition` is the size of the largest score (see `score_condition`) where it exceeds 1:
    rounding a score s costs ~eps * |s| in exp(s - lse), so huge scores (fp8 values near the
    format's max with unit descales) legitimately separate two correct float64 computations.
    Returns the max abs difference, so callers can report it.
    """
    diff = max_abs_diff(got, want)
    b = want.detach().numpy() if isinstance(want, torch.Tensor) else want
    finite = b[np.isfinite(b)]
    bound = (
        ORACLE_AGREEMENT * max(1.0, condition) * max(1.0, float(np.abs(finite).max(initial=0.0)))
    )
    assert diff <= bound, (
        f"{path}: max abs diff {diff:.3e} > {bound:.3e} (shape {tuple(b.shape)}; inf means the "
        "shapes or the NaN/inf patterns differ)"
    )
    return diff


def score_condition(q: torch.Tensor, k: torch.Tensor, scale: float | None = None) -> float:
    """An upper bound of the largest |score| scale * <q_i, k_j> over all rows and heads, >= 1."""
    d = q.shape[-1]
    scale = 1.0 / math.sqrt(d) if scale is None else scale
    rows_q = q.detach().to(torch.float64).reshape(-1, d)
    rows_k = k.detach().to(torch.float64).reshape(-1, d)
    if rows_q.numel() == 0 or rows_k.numel() == 0:
        return 1.0
    return max(1.0, float((rows_q @ rows_k.T).abs().max()) * abs(scale))


TINY_HEAD_PAIRS = ((1, 1), (2, 1), (2, 2))


# ---------------------------------------------------------------- varlen


@dataclass(frozen=True)
class VarlenCase:
    """Packed sequences: lengths per sequence, heads, head dim, causal flag, value seed."""

    seqlens_q: tuple[int, ...]
    seqlens_k: tuple[int, ...]
    hq: int = 2
    hk: int = 1
    d: int = 8
    causal: bool = False
    seed: int = 0

    @property
    def cu_seqlens_q(self) -> list[int]:
        return np.concatenate([[0], np.cumsum(self.seqlens_q, dtype=np.int64)]).tolist()

    @property
    def cu_seqlens_k(self) -> list[int]:
        return np.concatenate([[0], np.cumsum(self.seqlens_k, dtype=np.int64)]).tolist()


@st.composite
def varlen_cases(
    draw: st.DrawFn,
    max_len: int = 12,
    max_seqs: int = 4,
    heads: tuple[tuple[int, int], ...] = HEAD_PAIRS,
    head_dims: tuple[int, ...] = HEAD_DIMS,
) -> VarlenCase:
    """Packed cases with 1..max_seqs sequences of 0..max_len tokens; self- or cross-lengths.

    (Hq, Hk) from `heads` (MHA, GQA, MQA), D from `head_dims`.
    """
    n = draw(st.integers(1, max_seqs))
    lengths = st.lists(st.integers(0, max_len), min_size=n, max_size=n)
    seqlens_q = tuple(draw(lengths))
    seqlens_k = seqlens_q if draw(st.booleans()) else tuple(draw(lengths))
    hq, hk = draw(st.sampled_from(heads))
    return VarlenCase(
        seqlens_q=seqlens_q,
        seqlens_k=seqlens_k,
        hq=hq,
        hk=hk,
        d=draw(st.sampled_from(head_dims)),
        causal=draw(st.booleans()),
        seed=draw(st.integers(0, 2**16)),
    )


def varlen_inputs(case: VarlenCase) -> dict[str, torch.Tensor]:
    """float64 q (Tq, Hq, D), k, v (Tk, Hk, D) and int32 cu_seqlens for `case`."""
    gen = generator(case.seed)
    tq, tk = sum(case.seqlens_q), sum(case.seqlens_k)
    return {
        "q": randn(gen, tq, case.hq, case.d),
        "k": randn(gen, tk, case.hk, case.d),
        "v": randn(gen, tk, case.hk, case.d),
        "cu_seqlens_q": torch.tensor(case.cu_seqlens_q, dtype=torch.int32),
        "cu_seqlens_k": torch.tensor(case.cu_seqlens_k, dtype=torch.int32),
    }


# ---------------------------------------------------------------- gqa


@dataclass(frozen=True)
class GqaCase:
    """(B, Hq/Hk, Lq, Lk, D), causal, broadcast mask/bias shapes, a blanked query row, seed.

    `empty_row` blanks query row 0 of the mask (every row when the mask has Lqm = 1), giving
    rows with no visible key.
    """

    b: int = 1
    hq: int = 2
    hk: int = 1
    lq: int = 3
    lk: int = 4
    d: int = 8
    causal: bool = False
    mask_shape: tuple[int, int, int, int] | None = None
    bias_shape: tuple[int, int, int, int] | None = None
    empty_row: bool = False
    seed: int = 0


def broadcast_shapes(case: GqaCase) -> st.SearchStrategy[tuple[int, int, int, int]]:
    """4-D shapes (Bm, Hm, Lqm, Lkm) inside the gqa broadcast rules of `case`."""
    return st.tuples(
        st.sampled_from(sorted({1, case.b})),
        st.sampled_from(sorted({1, case.hk, case.hq})),
        st.sampled_from(sorted({1, case.lq})),
        st.sampled_from(sorted({1, case.lk})),
    )


@st.composite
def gqa_cases(
    draw: st.DrawFn,
    max_len: int = 10,
    with_mask: bool = True,
    with_bias: bool = True,
    heads: tuple[tuple[int, int], ...] = HEAD_PAIRS,
    head_dims: tuple[int, ...] = HEAD_DIMS,
) -> GqaCase:
    """gqa cases with optional broadcast mask and bias; Lq in 1..max_len, Lk in 0..max_len."""
    hq, hk = draw(st.sampled_from(heads))
    base = GqaCase(
        b=draw(st.integers(1, 2)),
        hq=hq,
        hk=hk,
        lq=draw(st.integers(1, max_len)),
        lk=draw(st.integers(0, max_len)),
        d=draw(st.sampled_from(head_dims)),
        causal=draw(st.booleans()),
        seed=draw(st.integers(0, 2**16)),
    )
    mask_shape = draw(st.none() | broadcast_shapes(base)) if with_mask else None
    bias_shape = draw(st.none() | broadcast_shapes(base)) if with_bias else None
    empty_row = draw(st.booleans()) if mask_shape is not None else False
    return dataclasses.replace(
        base, mask_shape=mask_shape, bias_shape=bias_shape, empty_row=empty_row
    )


def gqa_inputs(case: GqaCase) -> dict[str, torch.Tensor | None]:
    """float64 q, k, v, bool mask (or None) and float64 bias (or None) for `case`."""
    gen = generator(case.seed)
    q = randn(gen, case.b, case.hq, case.lq, case.d)
    k = randn(gen, case.b, case.hk, case.lk, case.d)
    v = randn(gen, case.b, case.hk, case.lk, case.d)
    mask = bias = None
    if case.mask_shape is not None:
        mask = torch.rand(*case.mask_shape, generator=gen, dtype=torch.float64) < 0.75
        if case.empty_row:
            mask[:, :, 0, :] = False
    if case.bias_shape is not None:
        bias = randn(gen, *case.bias_shape)
    return {"q": q, "k": k, "v": v, "mask": mask, "bias": bias}


def expand_to_query_heads(x: torch.Tensor, case: GqaCase) -> torch.Tensor:
    """A broadcast mask/bias made explicit: (B, Hq, Lq, Lk), kv-headed read at h // G."""
    if x.shape[1] == case.hk and case.hk != case.hq:
        x = x.repeat_interleave(case.hq // case.hk, dim=1)
    return x.expand(case.b, case.hq, case.lq, case.lk).clone()


# ---------------------------------------------------------------- fp8


@dataclass(frozen=True)
class Fp8Case:
    """fp8 attention: shapes as gqa, the fp8 format, descale granularity, magnitude, seed.

    `near_max` draws raw fp8 values in [max/2, max] with unit descales instead of quantizing
    normal values: the largest scores the format can produce.
    """

    b: int = 1
    hq: int = 2
    hk: int = 1
    lq: int = 3
    lk: int = 4
    d: int = 8
    causal: bool = False
    dtype: str = "float8_e4m3fn"
    granularity: str = "tensor"
    near_max: bool = False
    seed: int = 0


@st.composite
def fp8_cases(draw: st.DrawFn, max_len: int = 10) -> Fp8Case:
    """fp8 cases over the four fp8 formats and both descale granularities."""
    hq, hk = draw(st.sampled_from(HEAD_PAIRS))
    return Fp8Case(
        b=draw(st.integers(1, 2)),
        hq=hq,
        hk=hk,
        lq=draw(st.integers(1, max_len)),
        lk=draw(st.integers(0, max_len)),
        d=draw(st.sampled_from(HEAD_DIMS)),
        causal=draw(st.booleans()),
        dtype=draw(st.sampled_from(FP8_NAMES)),
        granularity=draw(st.sampled_from(("tensor", "head"))),
        near_max=draw(st.booleans()),
        seed=draw(st.integers(0, 2**16)),
    )


def fp8_raw_near_max(gen: torch.Generator, dtype: torch.dtype, *shape: int) -> torch.Tensor:
    """fp8 values with magnitudes in [max/2, max] and random signs."""
    fmax = torch.finfo(dtype).max
    magnitude = (0.5 + 0.5 * torch.rand(*shape, generator=gen, dtype=torch.float64)) * fmax
    sign = torch.where(torch.rand(*shape, generator=gen) < 0.5, -1.0, 1.0)
    return (sign * magnitude).to(torch.float32).clamp(-fmax, fmax).to(dtype)


def fp8_case_inputs(case: Fp8Case) -> dict[str, torch.Tensor]:
    """fp8 q, k, v and float32 descales for `case` (quantized normal values, or raw near max)."""
    gen = generator(case.seed)
    dtype = getattr(torch, case.dtype)
    shapes = {
        "q": (case.b, case.hq, case.lq, case.d),
        "k": (case.b, case.hk, case.lk, case.d),
        "v": (case.b, case.hk, case.lk, case.d),
    }
    descale_shape = () if case.granularity == "tensor" else (case.b, case.hk)
    x = {}
    for name, shape in shapes.items():
        if case.near_max:
            x[name] = fp8_raw_near_max(gen, dtype, *shape)
            x[f"{name}_descale"] = torch.ones(descale_shape, dtype=torch.float32)
        else:
            x[name], x[f"{name}_descale"] = quantize_fp8(
                randn(gen, *shape), dtype, case.granularity, kv_heads=case.hk
            )
    return x


# ---------------------------------------------------------------- paged


@dataclass(frozen=True)
class PagedCase:
    """A paged decode/prefill batch: lengths, cache geometry, splits, layout, junk, fp8, seed.

    `spare_blocks` unused physical blocks sit in the pool; `extra_entries` unused block-table
    columns per request hold junk (`junk` = "negative": -1, "range": ids >= num_blocks).
    `cache_dtype` None keeps the cache float64, else an fp8 format name with random descales.
    """

    seq_lens: tuple[int, ...] = (5,)
    hq: int = 2
    hk: int = 1
    d: int = 8
    lq: int = 1
    block_size: int = 4
    spare_blocks: int = 1
    extra_entries: int = 1
    num_splits: int | None = None
    kv_layout: str = "NHD"
    junk: str = "negative"
    cache_dtype: str | None = None
    seed: int = 0

    @property
    def blocks_needed(self) -> list[int]:
        return [-(-n // self.block_size) for n in self.seq_lens]

    @property
    def max_blocks(self) -> int:
        return max(self.blocks_needed, default=0) + self.extra_entries

    @property
    def num_blocks(self) -> int:
        return sum(self.blocks_needed) + self.spare_blocks


@st.composite
def paged_cases(draw: st.DrawFn, max_len: int = 40, fp8: bool = True) -> PagedCase:
    """Paged cases: block sizes 1..16, 1..3 requests, Lq 1..4, splits None or 1..8."""
    hq, hk = draw(st.sampled_from(HEAD_PAIRS))
    return PagedCase(
        seq_lens=tuple(draw(st.lists(st.integers(0, max_len), min_size=1, max_size=3))),
        hq=hq,
        hk=hk,
        d=draw(st.sampled_from(HEAD_DIMS)),
        lq=draw(st.integers(1, 4)),
        block_size=draw(st.sampled_from((1, 3, 4, 16))),
        spare_blocks=draw(st.integers(0, 3)),
        extra_entries=draw(st.integers(0, 2)),
        num_splits=draw(st.none() | st.integers(1, 8)),
        kv_layout=draw(st.sampled_from(("NHD", "HND"))),
        junk=draw(st.sampled_from(("negative", "range"))),
        cache_dtype=draw(st.none() | st.sampled_from(FP8_NAMES)) if fp8 else None,
        seed=draw(st.integers(0, 2**16)),
    )


@dataclass
class PagedInputs:
    """Paged tensors plus the logical (contiguous) K/V each request's cache holds."""

    q: torch.Tensor
    k_cache: torch.Tensor
    v_cache: torch.Tensor
    block_tables: torch.Tensor
    seq_lens: torch.Tensor
    k_descale: torch.Tensor | None
    v_descale: torch.Tensor | None
    k_logical: list[torch.Tensor]
    v_logical: list[torch.Tensor]

    def oracle_args(self) -> tuple[torch.Tensor, ...]:
        return self.q, self.k_cache, self.v_cache, self.block_tables, self.seq_lens


def paged_inputs(case: PagedCase) -> PagedInputs:
    """Build a paged cache: blocks at a random permutation of the pool, NaN in every slot not
    holding a valid token, junk in unused block-table entries.

    k_logical[b], v_logical[b]: (Hk, seq_lens[b], D) float64, the real values of request b's
    keys/values (dequantized for an fp8 cache).
    """
    gen = generator(case.seed)
    bs, hk, d = case.block_size, case.hk, case.d
    q = randn(gen, len(case.seq_lens), case.hq, case.lq, case.d)
    perm = torch.randperm(case.num_blocks, generator=gen).tolist()
    tables = torch.full((len(case.seq_lens), case.max_blocks), -1, dtype=torch.int32)
    if case.junk == "range":
        tables.random_(case.num_blocks, case.num_blocks + 1000, generator=gen)
    caches = [torch.full((case.num_blocks, bs, hk, d), math.nan, dtype=torch.float64) for _ in "kv"]
    logical: list[list[torch.Tensor]] = [[], []]
    for b, (n, needed) in enumerate(zip(case.seq_lens, case.blocks_needed, strict=True)):
        ids, perm = perm[:needed], perm[needed:]
        tables[b, :needed] = torch.tensor(ids, dtype=torch.int32)
        for cache, store in zip(caches, logical, strict=True):
            tokens = randn(gen, n, hk, d)
            padded = torch.cat([tokens, tokens.new_full((needed * bs - n, hk, d), math.nan)])
            cache[ids] = padded.reshape(needed, bs, hk, d)
            store.append(tokens.transpose(0, 1))
    descales: list[torch.Tensor | None] = [None, None]
    if case.cache_dtype is not None:
        dtype = getattr(torch, case.cache_dtype)
        for i in range(2):
            descale = 0.5 + torch.rand(hk, generator=gen, dtype=torch.float32)
            caches[i] = (caches[i] / descale[:, None].double()).to(torch.float32).to(dtype)
            descales[i] = descale
        logical = [
            [
                _gather(caches[i], tables[b], n).to(torch.float64)
                * descales[i].double()[:, None, None]
                for b, n in enumerate(case.seq_lens)
            ]
            for i in range(2)
        ]
    if case.kv_layout == "HND":
        caches = [c.transpose(1, 2).contiguous() for c in caches]
    return PagedInputs(
        q=q,
        k_cache=caches[0],
        v_cache=caches[1],
        block_tables=tables,
        seq_lens=torch.tensor(case.seq_lens, dtype=torch.int32),
        k_descale=descales[0],
        v_descale=descales[1],
        k_logical=logical[0],
        v_logical=logical[1],
    )


def _gather(cache: torch.Tensor, table: torch.Tensor, n: int) -> torch.Tensor:
    """(Hk, n, D) tokens of an NHD cache, token by token."""
    bs = cache.shape[1]
    tokens = [cache[int(table[t // bs]), t % bs] for t in range(n)]
    if not tokens:
        return cache.new_zeros((cache.shape[2], 0, cache.shape[3]))
    return torch.stack(tokens, dim=1)
