"""Verification specs of `paged_attention` and `merge_attention_states` (forward only).

paged: q (B, Hq, Lq, D), the newest Lq positions of each request (causal bottom-right);
k_cache, v_cache (num_blocks, block_size, Hk, D) "NHD" or (num_blocks, Hk, block_size, D) "HND";
block_tables (B, max_blocks) int32; seq_lens (B,) int32. Cases reach: decode (Lq = 1) and
small Lq > 1 (also Lq > seq_len: empty rows), seq_len 0, partial last blocks, block tables that
are random permutations over a pool with spare blocks, junk past each request's last block
(-1, ids past num_blocks, other requests' blocks), NaN in every unused cache slot, more splits
than blocks, fp8 caches with per-tensor or per-kv-head descales, K and V sliced from one
(num_blocks, 2, ...) buffer ("packed"), transposed / offset q.

merge: out (..., S, D), lse (..., S) float32. Cases reach: one to many states, lse spreads from
equal to 100s apart, states with lse -inf whose out is NaN, rows whose states are all -inf.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import torch
from hypothesis import strategies as st

from attnverify.reference import merge_attention_states, paged_attention
from attnverify.verify._common import NAN, VariantSpec, generator, physical, resolve_device, values
from attnverify.verify.case import DISTRIBUTIONS, Case, dtype_from_name
from attnverify.verify.gqa import visible_pairs
from attnverify.verify.profiles import budget as profile_budget
from attnverify.verify.profiles import heads_room, tiles
from attnverify.verify.strategies import head_counts, head_dims, lengths, seeds

BLOCK_SIZES = (16, 8, 32, 1, 64)
SPLITS = (None, 1, 2, 3, 8, 64)
QUERY_LENGTHS = (1, 2, 3, 4, 7)
Q_LAYOUTS = ("contiguous", "transposed", "offset", "packed")
JUNK = ("minus_one", "past_end", "other_block")
STATE_KINDS = ("normal", "spread", "empty", "all_empty")
STATE_COUNTS = (1, 2, 3, 4, 8, 16, 33)
LSE_SPREAD = {"normal": 3.0, "spread": 60.0, "empty": 3.0, "all_empty": 3.0}
EMPTY_STATE_P = 0.3
EMPTY_ROW_P = 0.3


@st.composite
def paged_cases(draw: st.DrawFn, profile: str = "ci", dtypes: Sequence[str] = ("float16",)) -> Case:
    """Paged cases within the profile's budget; shrinks towards one request, Lq = 1, seq_len 1,
    block size 16, identity-like tables, no splits, NHD, q-dtype cache."""
    b = profile_budget(profile)
    dtype = draw(st.sampled_from(list(dtypes)))
    d = draw(head_dims(b))
    block_size = draw(st.sampled_from(BLOCK_SIZES))
    lq = draw(st.sampled_from(QUERY_LENGTHS))
    batch = draw(st.integers(1, b.max_batch + 1))
    seq_lens = []
    blocks_left = b.max_blocks
    for _ in range(batch):
        cap = min(b.max_len, blocks_left * block_size, b.max_work // (d * lq * batch))
        n = draw(lengths(cap, min_len=0))
        seq_lens.append(n)
        blocks_left -= -(-n // block_size)
    needed = [-(-n // block_size) for n in seq_lens]
    spare = draw(st.integers(0, 3))
    num_blocks = max(1, sum(needed) + spare)
    pool = draw(st.permutations(range(num_blocks)))
    extra_cols = draw(st.integers(0, 2))
    max_blocks = max(1, max(needed) + extra_cols)
    junk = draw(st.sampled_from(JUNK))
    tables, start = [], 0
    for i, n in enumerate(needed):
        row = list(pool[start : start + n])
        start += n
        for j in range(n, max_blocks):
            row.append(_junk(junk, num_blocks, pool, i + j))
        tables.append(tuple(row))
    num_tiles = sum(tiles(lq, n) for n in seq_lens)
    room = heads_room(b, d, lq * max(1, sum(seq_lens)), num_tiles)
    hq, hk = draw(head_counts(min(b.max_heads_q, room)))
    cache_dtype = draw(st.sampled_from([None, "float8_e4m3fn"]))
    return Case(
        variant="paged",
        dtype=dtype,
        seed=draw(seeds()),
        batch=batch,
        heads_q=hq,
        heads_k=hk,
        head_dim=d,
        lq=lq,
        seq_lens=tuple(seq_lens),
        block_size=block_size,
        num_blocks=num_blocks,
        block_tables=tuple(tables),
        kv_layout=draw(st.sampled_from(["NHD", "HND"])),
        num_splits=draw(st.sampled_from(SPLITS)),
        cache_dtype=cache_dtype,
        descale=draw(st.sampled_from(["tensor", "head"])) if cache_dtype else "tensor",
        scale=draw(st.sampled_from([None, 0.5, 0.05])),
        distribution=draw(st.sampled_from(DISTRIBUTIONS)),
        layout=draw(st.sampled_from(Q_LAYOUTS)),
    )


def _junk(kind: str, num_blocks: int, pool: Sequence[int], salt: int) -> int:
    """A block-table entry past a request's last block: never read by a correct kernel."""
    if kind == "minus_one":
        return -1
    if kind == "past_end":
        return num_blocks + 7 + salt
    return pool[salt % len(pool)]


def _fill_cache(case: Case, gen: torch.Generator, peaked: bool) -> torch.Tensor:
    """(num_blocks, block_size, Hk, D) float32: each request's tokens at its table's slots,
    NaN in every slot no request uses."""
    cache = torch.full((case.num_blocks, case.block_size, case.heads_k, case.head_dim), NAN)
    for table, n in zip(case.block_tables, case.seq_lens, strict=True):
        tokens = values((n, case.heads_k, case.head_dim), case.distribution, gen, peaked=peaked)
        for t in range(0, n, case.block_size):
            chunk = tokens[t : t + case.block_size]
            cache[table[t // case.block_size], : chunk.shape[0]] = chunk
    return cache


def _quantize_cache(
    cache: torch.Tensor, dtype: torch.dtype, granularity: str
) -> tuple[torch.Tensor, torch.Tensor]:
    """fp8 cache (NaN slots stay NaN) and its float32 descale, () or (Hk,)."""
    fmax = torch.finfo(dtype).max
    finite = torch.nan_to_num(cache, nan=0.0).abs()
    amax = finite.amax() if granularity == "tensor" else finite.amax(dim=(0, 1, 3))
    descale = torch.where(amax > 0, amax / fmax, 1.0).to(torch.float32)
    scale = descale if granularity == "tensor" else descale[None, None, :, None]
    return (cache / scale).clamp(-fmax, fmax).to(dtype), descale


class PagedSpec(VariantSpec):
    """Spec of `paged_attention` (see module docstring)."""

    name = "paged"
    positional = ("q", "k_cache", "v_cache", "block_tables", "seq_lens")

    def strategy(
        self, profile: str = "ci", dtypes: Sequence[str] | None = None
    ) -> st.SearchStrategy[Case]:
        return paged_cases(profile, tuple(dtypes or ("float16", "float32")))

    def oracle(self) -> Callable[..., Any]:
        def run(*args: Any, num_splits: int | None = None, **kwargs: Any) -> Any:
            # The oracle never splits: splitting is exact in float64 and not part of "correct".
            return paged_attention(*args, **kwargs)

        return run

    def baseline(self, case: Case) -> Callable[..., tuple[torch.Tensor, torch.Tensor]]:
        """The oracle in q's dtype with the case's splits (partial states in that dtype)."""

        def run(*args: Any, **kwargs: Any) -> tuple[torch.Tensor, torch.Tensor]:
            return paged_attention(*args, **kwargs, compute_dtype=case.torch_dtype)

        return run

    def make_inputs(self, case: Case, device: torch.device | str | None = None) -> dict[str, Any]:
        """q, caches (NaN in unused slots), block_tables, seq_lens, descales, flags."""
        dev = resolve_device(device)
        gen = generator(case.seed)
        dtype = case.torch_dtype
        q = values((case.batch, case.heads_q, case.lq, case.head_dim), case.distribution, gen)
        q = physical(q, "contiguous" if case.layout == "packed" else case.layout, dtype, dev)
        caches = [_fill_cache(case, gen, True), _fill_cache(case, gen, False)]
        descales: list[torch.Tensor | None] = [None, None]
        cache_dtype = dtype_from_name(case.cache_dtype) if case.cache_dtype else dtype
        if case.cache_dtype:
            for i, c in enumerate(caches):
                caches[i], descales[i] = _quantize_cache(c, cache_dtype, case.descale)
        if case.kv_layout == "HND":
            caches = [c.transpose(1, 2) for c in caches]
        if case.layout == "packed":
            kv = torch.stack(caches, dim=1).to(device=dev, dtype=cache_dtype)
            k_cache, v_cache = kv[:, 0], kv[:, 1]
        else:
            k_cache, v_cache = (c.to(device=dev, dtype=cache_dtype).contiguous() for c in caches)
        return {
            "q": q,
            "k_cache": k_cache,
            "v_cache": v_cache,
            "block_tables": torch.tensor(case.block_tables, dtype=torch.int32, device=dev),
            "seq_lens": torch.tensor(case.seq_lens, dtype=torch.int32, device=dev),
            "scale": case.scale,
            "k_descale": None if descales[0] is None else descales[0].to(dev),
            "v_descale": None if descales[1] is None else descales[1].to(dev),
            "num_splits": case.num_splits,
            "kv_layout": case.kv_layout,
        }

    def pinned_cases(self) -> list[Case]:
        """Decode over shuffled blocks with spare blocks, -1 junk, seq_len 0 and more splits
        than blocks; Lq = 4 > seq_len (empty rows) on an fp8 HND cache with per-head descales
        and ids past num_blocks; block size 1, D = 80, K/V from one buffer."""
        pin = {"variant": "paged", "dtype": "float16", "seed": 11}
        return [
            Case(
                **pin,
                batch=3,
                heads_q=8,
                heads_k=2,
                seq_lens=(33, 0, 16),
                block_size=16,
                num_blocks=6,
                block_tables=((4, 1, 5, -1), (-1, -1, -1, -1), (0, -1, -1, -1)),
                num_splits=8,
            ),
            Case(
                **pin,
                batch=2,
                heads_q=4,
                heads_k=4,
                lq=4,
                seq_lens=(3, 50),
                block_size=8,
                num_blocks=9,
                block_tables=((7, 16, 17, 18, 19, 20, 21, 22), (2, 8, 0, 5, 1, 3, 6, 23)),
                kv_layout="HND",
                cache_dtype="float8_e4m3fn",
                descale="head",
                num_splits=3,
            ),
            Case(
                **pin,
                heads_q=2,
                heads_k=1,
                head_dim=80,
                seq_lens=(5,),
                block_size=1,
                num_blocks=7,
                block_tables=((6, 0, 3, 1, 2, 4),),
                layout="packed",
            ),
        ]

    def flops(self, case: Case) -> float:
        """4 * visible (query, key) pairs (bottom-right causal over the context) * Hq * D."""
        pairs = sum(visible_pairs(case.lq, n, True) for n in case.seq_lens)
        return 4.0 * pairs * case.heads_q * case.head_dim

    def bytes_moved(self, case: Case) -> float:
        """K and V bytes actually read (seq_len tokens per request) + q read + out written."""
        size = torch.finfo(case.torch_dtype).bits // 8
        cache_size = torch.finfo(dtype_from_name(case.cache_dtype or case.dtype)).bits // 8
        kv = 2 * sum(case.seq_lens) * case.heads_k * case.head_dim * cache_size
        qo = 2 * case.batch * case.heads_q * case.lq * case.head_dim * size
        return float(kv + qo)

    def bench_cases(self) -> list[Case]:
        """Hq = 32, Hk = 8, D = 128, block size 16 and 64, blocks in a random order (issue 8's
        grid): decode B = 32 at context 8192 and B = 1 at 131072 (bf16 and fp16 caches);
        speculative decode Lq = 4 at B = 32, 8192; fp8 (e4m3) caches at B = 1 and B = 32,
        context 32768, beside the same in bf16; B = 1 at context 1024 (launch-bound)."""
        grid = [
            (dtype, block, batch, ctx, 1, None)
            for dtype in ("bfloat16", "float16")
            for block in (16, 64)
            for batch, ctx in ((32, 8192), (1, 131072))
        ]
        for block in (16, 64):
            grid.append(("bfloat16", block, 32, 8192, 4, None))
            for batch in (1, 32):
                grid.append(("bfloat16", block, batch, 32768, 1, None))
                grid.append(("bfloat16", block, batch, 32768, 1, "float8_e4m3fn"))
            grid.append(("bfloat16", block, 1, 1024, 1, None))
        return [_decode_case(*row) for row in grid]


def _decode_case(
    dtype: str, block_size: int, batch: int, ctx: int, lq: int, cache_dtype: str | None
) -> Case:
    """A paged bench case: every request at context `ctx`, its pages a random permutation."""
    per = ctx // block_size
    pool = torch.randperm(batch * per, generator=generator(0)).tolist()
    return Case(
        variant="paged",
        dtype=dtype,
        seed=0,
        batch=batch,
        heads_q=32,
        heads_k=8,
        head_dim=128,
        lq=lq,
        seq_lens=(ctx,) * batch,
        block_size=block_size,
        num_blocks=batch * per,
        block_tables=tuple(tuple(pool[i * per : (i + 1) * per]) for i in range(batch)),
        cache_dtype=cache_dtype,
    )


@st.composite
def merge_cases(draw: st.DrawFn, profile: str = "ci", dtypes: Sequence[str] = ("float16",)) -> Case:
    """merge cases; shrinks towards lead shape (1,), one state, D = 64, normal lse."""
    b = profile_budget(profile)
    dtype = draw(st.sampled_from(list(dtypes)))
    d = draw(head_dims(b))
    lead = draw(st.lists(st.integers(1, 8), min_size=1, max_size=3))
    return Case(
        variant="merge",
        dtype=dtype,
        seed=draw(seeds()),
        head_dim=d,
        lead_shape=tuple(lead),
        num_states=draw(st.sampled_from(STATE_COUNTS)),
        state_kind=draw(st.sampled_from(STATE_KINDS)),
        layout=draw(st.sampled_from(["contiguous", "transposed", "offset"])),
    )


class MergeSpec(VariantSpec):
    """Spec of `merge_attention_states` (see module docstring)."""

    name = "merge"
    positional = ("out", "lse")
    returns_lse_flag = False

    def strategy(
        self, profile: str = "ci", dtypes: Sequence[str] | None = None
    ) -> st.SearchStrategy[Case]:
        return merge_cases(profile, tuple(dtypes or ("float16", "float32")))

    def oracle(self) -> Callable[..., Any]:
        return merge_attention_states

    def baseline(self, case: Case) -> Callable[..., tuple[torch.Tensor, torch.Tensor]]:
        """Merge in float32 (as kernels do), out rounded to the states' dtype."""

        def run(out: torch.Tensor, lse: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            o, s = merge_attention_states(out, lse, compute_dtype=torch.float32)
            return o.to(out.dtype), s

        return run

    def make_inputs(self, case: Case, device: torch.device | str | None = None) -> dict[str, Any]:
        """out (..., S, D) in the case dtype (NaN where a state is empty), lse (..., S) float32."""
        dev = resolve_device(device)
        gen = generator(case.seed)
        lead, s, d = tuple(case.lead_shape), case.num_states, case.head_dim
        out = values((*lead, s, d), "normal", gen)
        lse = torch.randn((*lead, s), generator=gen) * LSE_SPREAD[case.state_kind]
        if case.state_kind in ("empty", "all_empty"):
            empty = torch.rand((*lead, s), generator=gen) < EMPTY_STATE_P
            if case.state_kind == "all_empty":
                empty |= torch.rand((*lead, 1), generator=gen) < EMPTY_ROW_P
            lse = torch.where(empty, -math.inf, lse)
            out = torch.where(empty.unsqueeze(-1), NAN, out)
        return {
            "out": physical(out, case.layout, case.torch_dtype, dev),
            "lse": physical(lse, case.layout, torch.float32, dev),
        }

    def pinned_cases(self) -> list[Case]:
        """Rows whose states are all empty, lse 100s apart over 16 states, a single state."""
        pin = {"variant": "merge", "dtype": "float16", "seed": 11}
        return [
            Case(**pin, lead_shape=(3, 4), num_states=5, state_kind="all_empty"),
            Case(**pin, head_dim=128, lead_shape=(2,), num_states=16, state_kind="spread"),
            Case(**pin, head_dim=72, lead_shape=(4,), num_states=1, layout="transposed"),
        ]

    def flops(self, case: Case) -> float:
        """About 3 flops per state element (scale, add) plus the weights."""
        return 3.0 * math.prod(case.lead_shape) * case.num_states * case.head_dim

    def bytes_moved(self, case: Case) -> float:
        """States and lse read, merged out and lse written."""
        size = torch.finfo(case.torch_dtype).bits // 8
        rows = math.prod(case.lead_shape)
        return float(
            rows * (case.num_states * (case.head_dim * size + 4) + case.head_dim * size + 4)
        )

    def bench_cases(self) -> list[Case]:
        """Split-KV decode merges: (B = 32, Hq = 32) rows, S in {4, 16}, D = 128, bf16."""
        return [
            Case(
                variant="merge",
                dtype=dtype,
                seed=0,
                head_dim=128,
                lead_shape=(32, 32),
                num_states=s,
            )
            for dtype in ("bfloat16", "float16")
            for s in (4, 16)
        ]


SPEC = PagedSpec()
MERGE_SPEC = MergeSpec()

__all__ = ["MERGE_SPEC", "SPEC", "MergeSpec", "PagedSpec", "merge_cases", "paged_cases"]
