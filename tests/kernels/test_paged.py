"""Paged-KV attention and merge kernels (`attnverify.kernels.paged`) against the oracle.

Without a GPU the kernels run under the Triton interpreter (TRITON_INTERPRET=1 is set before
triton is imported); float16 / float32 queries, and fp8 caches read with float16 queries
(the interpreter's bfloat16 `tl.dot` is wrong, triton #11584; bf16 is verified on the GPU by
ci/paged_device_check.py).

Randomized cases go through `attnverify.verify.check` (the `paged` and `merge` specs: junk
block-table entries, NaN in unused slots, splits, fp8 caches, strided q). Targeted tests: the
kernel result does not change when unused entries / slots change (bitwise), every split count
agrees with the oracle, HND == NHD bitwise, merge handles -inf exactly, seq_len 0 and
Lq > seq_len rows are exactly 0 / -inf, bad input raises before any launch.
"""

from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass, replace
from pathlib import Path

import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest
import triton
import triton.language as tl
from _jit_process import run_jit_process
from hypothesis import example, given, settings
from hypothesis import strategies as st

from attnverify.arch import CPU_INTERPRETER, arch_from_name
from attnverify.kernels import _gate
from attnverify.kernels import paged as kernel
from attnverify.kernels._paged_kernels import _fp8_words_to_f16
from attnverify.kernels.paged import (
    MERGE_MAX_BLOCK_S,
    WAVES,
    PagedConfig,
    check_inputs,
    default_num_splits,
    launch_paged,
    merge_attention_states,
    paged_attention,
    pick_config,
    plan_paged,
)
from attnverify.reference import paged as ref
from attnverify.validation import check_paged_inputs, check_paged_values
from attnverify.verify import check
from attnverify.verify.case import Case
from attnverify.verify.compare import compare
from attnverify.verify.tolerance import arch_kind, lookup

DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")
REPLAY_DIR = Path(tempfile.gettempdir()) / "attnverify-test-paged-failures"
NEG_INF = float("-inf")
# Small tiles under the interpreter (BLOCK_N = 16): pages of 8 span tiles, pages of 32 hold two.
BLOCK_SIZES = (8, 16, 32)
FP8 = (torch.float8_e4m3fn, torch.float8_e5m2)
NEEDS_CUDA = pytest.mark.skipif(DEVICE.type != "cuda", reason="inline PTX runs on NVIDIA GPUs")


@dataclass(frozen=True)
class PagedInputs:
    """Metadata of one targeted case; `build` makes the tensors from `seed`."""

    seq_lens: tuple[int, ...] = (37, 0, 16)
    hq: int = 4
    hk: int = 2
    lq: int = 1
    head_dim: int = 32
    block_size: int = 8
    dtype: torch.dtype = torch.float16
    cache_dtype: torch.dtype | None = None
    seed: int = 0

    def build(self, *, poison: float = float("nan"), junk: int = -1) -> dict:
        """Tensors: a shuffled pool with 2 spare blocks, `junk` past each request's pages,
        `poison` in every cache slot no request uses."""
        gen = torch.Generator().manual_seed(self.seed)
        pages = [-(-n // self.block_size) for n in self.seq_lens]
        num_blocks = sum(pages) + 2
        max_blocks = max(pages, default=0) + 2
        perm = torch.randperm(num_blocks, generator=gen).tolist()
        tables = torch.full((len(pages), max_blocks), junk, dtype=torch.int32)
        shape = (num_blocks, self.block_size, self.hk, self.head_dim)
        k = torch.full(shape, poison)
        v = torch.full(shape, poison)
        used = 0
        for b, (n, p) in enumerate(zip(self.seq_lens, pages, strict=True)):
            tables[b, :p] = torch.tensor(perm[used : used + p], dtype=torch.int32)
            for t in range(n):
                blk, slot = perm[used + t // self.block_size], t % self.block_size
                k[blk, slot] = torch.randn(self.hk, self.head_dim, generator=gen)
                v[blk, slot] = torch.randn(self.hk, self.head_dim, generator=gen)
            used += p
        q = torch.randn(len(pages), self.hq, self.lq, self.head_dim, generator=gen)
        cache_dtype = self.cache_dtype or self.dtype
        kd = vd = None
        if self.cache_dtype is not None:
            kd = torch.rand(self.hk, generator=gen) + 0.5
            vd = torch.tensor(0.75)
        return {
            "q": q.to(self.dtype).to(DEVICE),
            "k_cache": k.to(cache_dtype).to(DEVICE),
            "v_cache": v.to(cache_dtype).to(DEVICE),
            "block_tables": tables.to(DEVICE),
            "seq_lens": torch.tensor(self.seq_lens, dtype=torch.int32, device=DEVICE),
            "k_descale": None if kd is None else kd.to(DEVICE),
            "v_descale": None if vd is None else vd.to(DEVICE),
        }


def to_hnd(x: dict) -> dict:
    """The same inputs with both caches stored (num_blocks, Hk, block_size, D)."""
    out = dict(x)
    for name in ("k_cache", "v_cache"):
        out[name] = x[name].transpose(1, 2).contiguous()
    return out


def assert_matches_oracle(case: PagedInputs, x: dict, out, lse, **kwargs) -> None:
    """out / lse within the `paged` tolerance of the float64 oracle (baseline: q's dtype)."""
    ref_out, ref_lse = ref.paged_attention(**x, return_lse=True, **kwargs)
    base_out, base_lse = ref.paged_attention(
        **x, return_lse=True, compute_dtype=case.dtype, **kwargs
    )
    name = str(case.dtype).removeprefix("torch.")
    kind = arch_kind(DEVICE)
    for quantity, got, want, base, dtype in (
        ("out", out, ref_out, base_out, case.dtype),
        ("lse", lse, ref_lse, base_lse, torch.float32),
    ):
        rule = lookup("paged", name, quantity, kind)
        c = compare(f"paged/{name}/{quantity}", quantity, got, want, base, rule, dtype)
        assert c.passed, str(c)


def run(x: dict, **kwargs) -> tuple[torch.Tensor, torch.Tensor]:
    return paged_attention(**x, return_lse=True, **kwargs)


# ---------------------------------------------------------------- randomized, via the harness


def _report_ok(report) -> None:
    assert report.num_cases > 0, "no case ran"
    assert report.passed, (
        "\n\n".join(str(r) for r in report.failures) + "\n" + "\n".join(report.errors)
    )


def test_paged_check_passes() -> None:
    """`check("paged", paged_attention)` over the ci profile's draws (float16 and float32)."""
    report = check("paged", paged_attention, examples=5, device=DEVICE, replay_dir=REPLAY_DIR)
    _report_ok(report)


def test_merge_check_passes() -> None:
    """`check("merge", merge_attention_states)` over the ci profile's draws."""
    report = check(
        "merge", merge_attention_states, examples=4, device=DEVICE, replay_dir=REPLAY_DIR
    )
    _report_ok(report)


def test_paged_check_pinned_cases() -> None:
    """Pinned edge cases through the harness: more splits than blocks, block size 1, Lq >
    seq_len, an fp8 cache, junk ids past num_blocks, HND, D = 72, Hk = Hq."""
    base = Case(
        variant="paged",
        dtype="float16",
        seed=3,
        batch=2,
        heads_q=4,
        heads_k=2,
        head_dim=32,
        lq=3,
        seq_lens=(19, 2),
        block_size=8,
        num_blocks=6,
        block_tables=((4, 0, 2, -1), (5, 9, 9, 9)),
    )
    cases = [
        replace(base, num_splits=64),
        replace(base, kv_layout="HND", head_dim=72, num_splits=2),
        replace(base, cache_dtype="float8_e4m3fn", descale="head", num_splits=3),
        replace(base, heads_q=2, lq=1, num_splits=1, dtype="float32"),
        replace(
            base,
            block_size=1,
            num_blocks=23,
            block_tables=((*range(19), 30), (21, 22, *[-1] * 18)),
        ),
    ]
    _report_ok(check("paged", paged_attention, cases=cases, device=DEVICE, replay_dir=REPLAY_DIR))


# ---------------------------------------------------------------- targeted properties


@st.composite
def paged_inputs(draw: st.DrawFn) -> PagedInputs:
    """Small cases; shrinks towards one request of length 0, Lq = 1, Hk = 1, G = 1."""
    hk = draw(st.sampled_from([1, 2]))
    block_size = draw(st.sampled_from(BLOCK_SIZES))
    return PagedInputs(
        seq_lens=tuple(draw(st.lists(st.integers(0, 70), min_size=1, max_size=3))),
        hq=hk * draw(st.sampled_from([1, 2, 4])),
        hk=hk,
        lq=draw(st.sampled_from([1, 2, 5])),
        head_dim=draw(st.sampled_from([16, 40, 64])),
        block_size=block_size,
        dtype=draw(st.sampled_from([torch.float16, torch.float32])),
        seed=draw(st.integers(0, 2**16)),
    )


@settings(max_examples=4)
@given(case=paged_inputs())
@example(case=PagedInputs(seq_lens=(63, 111), block_size=16, hq=2, hk=2))
@example(case=PagedInputs(seq_lens=(5, 0), lq=4, block_size=32, hq=8, hk=1, head_dim=72))
@example(case=PagedInputs(seq_lens=(20,), lq=5, hq=16, hk=1, head_dim=16))  # 80 rows: 2 row tiles
def test_paged_never_reads_unused_entries_or_slots(case: PagedInputs) -> None:
    """Junk block ids (-1, past num_blocks) and NaN / huge values in unused slots change
    nothing: the result equals the clean-cache result bit for bit, and matches the oracle."""
    clean = case.build(poison=0.0, junk=0)
    out, lse = run(clean, num_splits=2)
    for poison, junk in ((float("nan"), -1), (1e30, 2**30)):
        dirty = case.build(poison=poison, junk=junk)
        out2, lse2 = run(dirty, num_splits=2)
        assert torch.equal(out, out2), f"output changed with poison={poison}, junk={junk}"
        assert torch.equal(lse, lse2), f"lse changed with poison={poison}, junk={junk}"
    assert_matches_oracle(case, clean, out, lse)


@pytest.mark.parametrize("block_size", BLOCK_SIZES)
def test_paged_split_counts_agree(block_size: int) -> None:
    """num_splits from 1 to more than the tiles (empty splits) all match the oracle."""
    case = PagedInputs(seq_lens=(45, 3, 0), lq=2, block_size=block_size, seed=block_size)
    x = case.build()
    for num_splits in (1, 2, 3, 7, 40):
        out, lse = run(x, num_splits=num_splits)
        assert_matches_oracle(case, x, out, lse)


def test_paged_hnd_equals_nhd() -> None:
    """The same cache in both layouts gives bitwise equal results."""
    case = PagedInputs(seq_lens=(29, 50), lq=3, hq=4, hk=2, block_size=16)
    x = case.build()
    a = run(x, num_splits=3)
    b = run(to_hnd(x), num_splits=3, kv_layout="HND")
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])


@pytest.mark.parametrize("cache_dtype", [torch.float8_e4m3fn, torch.float8_e5m2])
def test_paged_fp8_cache(cache_dtype: torch.dtype) -> None:
    """fp8 caches with per-kv-head k_descale and scalar v_descale, split and not."""
    case = PagedInputs(seq_lens=(33, 9), lq=2, cache_dtype=cache_dtype, block_size=8)
    x = case.build(poison=0.0)
    for num_splits in (1, 3):
        out, lse = run(x, num_splits=num_splits)
        assert_matches_oracle(case, x, out, lse)


@triton.jit
def _words_to_f16_kernel(words_ptr, out_ptr, E5M2: tl.constexpr, PTX: tl.constexpr):
    """[64, 4] int32 words -> [64, 16] float16 through `_paged_kernels._fp8_words_to_f16`."""
    rows = tl.arange(0, 64)[:, None]
    words = tl.load(words_ptr + rows * 4 + tl.arange(0, 4)[None, :])
    halves = _fp8_words_to_f16(words, E5M2, PTX)
    tl.store(out_ptr + rows * 16 + tl.arange(0, 16)[None, :], halves)


@pytest.mark.parametrize("ptx", [False, pytest.param(True, marks=NEEDS_CUDA)])
@pytest.mark.parametrize("cache_dtype", FP8)
def test_fp8_words_convert_every_byte_exactly(cache_dtype: torch.dtype, ptx: bool) -> None:
    """Every fp8 bit pattern, in every byte position of a word, becomes the float16 of the same
    value (NaN stays NaN, -0 stays -0), in element order 4 * word + byte."""
    gen = torch.Generator().manual_seed(3)
    # 4 shuffles of the 256 patterns: each pattern lands in several byte positions
    raw = torch.cat([torch.randperm(256, generator=gen) for _ in range(4)]).to(torch.uint8)
    want = raw.view(cache_dtype).to(torch.float16).reshape(64, 16)
    got = torch.empty(64, 16, dtype=torch.float16, device=DEVICE)
    _words_to_f16_kernel[(1,)](raw.to(DEVICE).view(torch.int32), got, cache_dtype == FP8[1], ptx)
    got = got.cpu()
    nan = torch.isnan(want)
    assert torch.equal(torch.isnan(got), nan)
    assert torch.equal(got.view(torch.int16)[~nan], want.view(torch.int16)[~nan])


def _shifted(cache: torch.Tensor) -> torch.Tensor:
    """The same values in storage that starts 1 element off a word boundary."""
    store = torch.empty(cache.numel() + 1, dtype=cache.dtype, device=cache.device)
    out = store[1:].view(cache.shape)
    out.copy_(cache)
    return out


@settings(max_examples=6, deadline=None)
@given(
    cache_dtype=st.sampled_from(FP8),
    head_dim=st.sampled_from([8, 24, 32, 48]),
    block_size=st.sampled_from(BLOCK_SIZES),
    seq_lens=st.lists(st.integers(0, 40), min_size=1, max_size=3),
    lq=st.integers(1, 3),
    layout=st.sampled_from(["NHD", "HND"]),
)
@example(torch.float8_e4m3fn, 24, 8, [37, 0], 2, "NHD")
@example(torch.float8_e5m2, 8, 16, [17], 1, "HND")
def test_paged_fp8_word_loads_equal_element_loads(
    cache_dtype: torch.dtype,
    head_dim: int,
    block_size: int,
    seq_lens: list[int],
    lq: int,
    layout: str,
) -> None:
    """fp8 caches read as 32-bit words (converted in registers) give bitwise the results of
    Triton's element loads ("cast"); a cache off the word grid takes the element loads. NaN in
    unused slots: a word path that read them would differ."""
    case = PagedInputs(
        seq_lens=tuple(seq_lens), lq=lq, head_dim=head_dim, block_size=block_size,
        cache_dtype=cache_dtype,
    )  # fmt: skip
    x = case.build()
    if layout == "HND":
        x = to_hnd(x)
    plan = plan_paged(**x, kv_layout=layout, num_splits=2)
    args = [x[n] for n in ("q", "k_cache", "v_cache", "block_tables", "seq_lens")]
    descales = (x["k_descale"], x["v_descale"])
    words = replace(plan.config, fp8_convert="bits")
    results = {}
    for name, config, caches in (
        ("words", words, args[1:3]),
        ("cast", replace(words, fp8_convert="cast"), args[1:3]),
        ("shifted", words, [_shifted(c) for c in args[1:3]]),
    ):
        results[name] = launch_paged(
            args[0], *caches, *args[3:], *descales, scale=plan.scale, num_splits=2,
            kv_layout=layout, config=config,
        )  # fmt: skip
    ptx_here = DEVICE.type == "cuda" and torch.cuda.get_device_capability() >= (8, 9)
    for convert, fp8_words in (("ptx", 2 if ptx_here else 1), ("bits", 1), ("cast", 0)):
        assert kernel._fp8_words(args[0], *args[1:3], convert)[2] == fp8_words, convert
    assert kernel._word_view(_shifted(args[1])) is None
    for name in ("cast", "shifted"):
        for got, want in zip(results[name], results["words"], strict=True):
            assert torch.equal(got, want), name
    assert_matches_oracle(case, x, *results["words"], kv_layout=layout)


def compile_sm90_ptx(
    cache_dtype: torch.dtype, block_size: int, num_splits: int = 1
) -> dict[str, str]:
    """PTX of the kernels `paged_attention` launches on sm90 ("attention", and "merge" with
    num_splits > 1; default config; Hq 32, Hk 8, D 128; fp8 caches in pages shorter than the
    tile read as words), compiled by Triton for sm90 with aligned pointers. Needs a process
    without TRITON_INTERPRET (JIT functions)."""
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource, compile
    from triton.runtime.jit import mangle_type

    class Capture:
        def __init__(self, jit: object) -> None:
            self.jit = jit

        def __getitem__(self, grid: object) -> Capture:
            return self

        def __call__(self, *args: object, **kwargs: object) -> None:
            self.args, self.kwargs = args, kwargs

    k = torch.zeros(8, block_size, 8, 128, dtype=torch.bfloat16).to(cache_dtype)
    descale = torch.tensor(0.5) if cache_dtype in FP8 else None
    captures = {
        "attention": Capture(kernel._paged_fwd_kernel),
        "merge": Capture(kernel._merge_kernel),
    }
    kernel._paged_fwd_kernel, kernel._merge_kernel = captures["attention"], captures["merge"]
    try:
        launch_paged(
            torch.zeros(1, 32, 1, 128, dtype=torch.bfloat16), k, k,
            torch.zeros(1, 8, dtype=torch.int32), torch.full((1,), 64, dtype=torch.int32),
            descale, descale, scale=0.1, num_splits=num_splits, kv_layout="NHD",
            config=pick_config(block_size, 128, cache_dtype, arch_from_name("sm90")),
        )  # fmt: skip
    finally:
        kernel._paged_fwd_kernel = captures["attention"].jit
        kernel._merge_kernel = captures["merge"].jit
    ptx = {}
    for name, capture in captures.items():
        if not hasattr(capture, "kwargs"):
            continue
        jit = capture.jit
        options = {
            n: capture.kwargs.pop(n) for n in ("num_warps", "maxnreg") if n in capture.kwargs
        }
        capture.kwargs.pop("launch_pdl", None)  # a launch attribute, not a compile option
        if "NUM_STAGES" in capture.kwargs:
            options["num_stages"] = capture.kwargs["NUM_STAGES"]
        if capture.kwargs.get("FP8_WORDS"):
            capture.kwargs["FP8_WORDS"] = 2  # CPU tensors here: the GPU launch converts by PTX
        values = dict(zip(jit.arg_names, capture.args, strict=False)) | capture.kwargs
        signature, constexprs, attrs = {}, {}, {}
        for i, arg in enumerate(jit.arg_names):
            kind = "constexpr" if arg in capture.kwargs else mangle_type(values[arg], True)
            signature[arg] = kind
            if kind == "constexpr":
                constexprs[(i,)] = values[arg]
            elif isinstance(values[arg], torch.Tensor):
                attrs[(i,)] = [["tt.divisibility", 16]]
        src = ASTSource(jit, signature, constexprs=constexprs, attrs=attrs)
        ptx[name] = compile(src, target=GPUTarget("cuda", 90, 32), options=options).asm["ptx"]
    return ptx


@pytest.mark.skipif(DEVICE.type == "cuda", reason="the GPU compiles the kernel in other tests")
def test_fp8_cache_reads_no_bytes_from_shared_memory_on_sm90() -> None:
    """The point of the word loads: compiled for sm90, the fp8 kernels read no single bytes from
    shared memory (Triton's element path reads the fp8 dot operands byte by byte) and convert
    with `cvt.rn.f16x2.e4m3x2` (e4m3) or byte permutes (e5m2); the bf16 kernel uses ldmatrix."""
    pytest.importorskip("triton.backends.nvidia.compiler")
    code = (
        "import re, torch, test_paged\n"
        "for name in ('float8_e4m3fn', 'float8_e5m2', 'bfloat16'):\n"
        "    ptx = test_paged.compile_sm90_ptx(getattr(torch, name), 16)['attention']\n"
        "    print(name, len(re.findall(r'ld\\.shared(\\.v\\d)?\\.[bsu]8', ptx)),"
        " ptx.count('cvt.rn.f16x2.e4m3x2'), ptx.count('prmt.b32'), ptx.count('ldmatrix'))\n"
    )
    stdout = run_jit_process(code)
    counts = {
        line.split()[0]: [int(n) for n in line.split()[1:]] for line in stdout.split("\n") if line
    }
    e4m3, e5m2, bf16 = counts["float8_e4m3fn"], counts["float8_e5m2"], counts["bfloat16"]
    assert e4m3[0] == 0 and e4m3[1] > 0, counts
    assert e5m2[0] == 0 and e5m2[2] > 0 and e5m2[1] == 0, counts
    assert bf16[0] == 0 and bf16[3] > 0, counts


@pytest.mark.skipif(DEVICE.type == "cuda", reason="the GPU compiles the kernel in other tests")
def test_split_launch_merges_as_programmatic_dependent_on_sm90() -> None:
    """Compiled for sm90, a split launch's attention kernel signals its dependents and its merge
    waits for the attention kernel's writes before reading (griddepcontrol); one split
    launches no merge and signals nothing."""
    pytest.importorskip("triton.backends.nvidia.compiler")
    code = (
        "import torch, test_paged\n"
        "for splits in (1, 2):\n"
        "    ptx = test_paged.compile_sm90_ptx(torch.bfloat16, 16, splits)\n"
        "    print(splits, ptx['attention'].count('griddepcontrol.launch_dependents'),"
        " ptx.get('merge', '').count('griddepcontrol.wait'), int('merge' in ptx))\n"
    )
    rows = [line.split() for line in run_jit_process(code).split("\n") if line]
    counts = {int(row[0]): [int(n) for n in row[1:]] for row in rows}
    assert counts[1] == [0, 0, 0], counts
    assert counts[2][0] > 0 and counts[2][1] > 0 and counts[2][2] == 1, counts


def test_dependent_merge_gives_the_same_result() -> None:
    """`PagedConfig.dependent_merge` changes how the merge launches, never what it computes:
    bitwise the same out and lse (the interpreter ignores it)."""
    case = PagedInputs(seq_lens=(37, 0, 90), lq=2)
    x = case.build()
    plan = plan_paged(**x, num_splits=3)
    args = [x[n] for n in ("q", "k_cache", "v_cache", "block_tables", "seq_lens")]
    descales = (x["k_descale"], x["v_descale"])
    results = []
    for dependent in (False, True):
        config = replace(plan.config, dependent_merge=dependent)
        results.append(
            launch_paged(
                *args, *descales, scale=plan.scale, num_splits=3, kv_layout="NHD", config=config
            )
        )
    for got, want in zip(results[1], results[0], strict=True):
        assert torch.equal(got, want)
    assert_matches_oracle(case, x, *results[1])


def test_paged_empty_rows_exact() -> None:
    """seq_len 0, and rows i < Lq - seq_len (no visible key): out exactly 0, lse -inf."""
    case = PagedInputs(seq_lens=(0, 2), lq=4, hq=2, hk=1)
    x = case.build()
    for num_splits in (1, 4):
        out, lse = run(x, num_splits=num_splits)
        assert torch.equal(out[0], torch.zeros_like(out[0]))
        assert bool(torch.isneginf(lse[0]).all())
        assert torch.equal(out[1, :, :2], torch.zeros_like(out[1, :, :2]))
        assert bool(torch.isneginf(lse[1, :, :2]).all())
        assert bool(torch.isfinite(lse[1, :, 2:]).all())
        assert_matches_oracle(case, x, out, lse)


def test_merge_infinite_lse_exact() -> None:
    """A state with lse -inf contributes nothing even when its out is NaN; all -inf rows give
    exactly 0 and -inf; a single live state is returned unchanged."""
    gen = torch.Generator().manual_seed(0)
    out = torch.randn(3, 4, 16, generator=gen).to(DEVICE)
    lse = torch.randn(3, 4, generator=gen).to(DEVICE)
    lse[0] = NEG_INF
    out[0] = float("nan")
    lse[1, 1:] = NEG_INF
    out[1, 1:] = float("nan")
    lse[2, 2] = NEG_INF
    out[2, 2] = float("nan")
    merged, merged_lse = merge_attention_states(out, lse)
    assert torch.equal(merged[0], torch.zeros_like(merged[0]))
    assert bool(torch.isneginf(merged_lse[0]))
    assert torch.equal(merged[1], out[1, 0]) and torch.equal(merged_lse[1], lse[1, 0])
    assert bool(torch.isfinite(merged[2]).all())
    want, want_lse = ref.merge_attention_states(out, lse)
    for quantity, got, ref_value in (("out", merged, want), ("lse", merged_lse, want_lse)):
        rule = lookup("merge", "float32", quantity)
        c = compare(
            f"merge/float32/{quantity}", quantity, got, ref_value, None, rule, torch.float32
        )
        assert c.passed, str(c)


def test_merge_returns_dtypes_and_shapes() -> None:
    """(..., S, D) in, (..., D) in out's dtype and (...) float32 out; strided input accepted."""
    gen = torch.Generator().manual_seed(1)
    base = torch.randn(2, 5, 3, 24, generator=gen).to(torch.float16).to(DEVICE)
    out = base.transpose(1, 2)[:, :, :, :16]  # (2, 3, 5, 16), non-contiguous
    lse = torch.randn(2, 3, 5, generator=gen).to(DEVICE)
    merged, merged_lse = merge_attention_states(out, lse)
    assert merged.shape == (2, 3, 16) and merged.dtype == torch.float16
    assert merged_lse.shape == (2, 3) and merged_lse.dtype == torch.float32
    want, _ = ref.merge_attention_states(out, lse)
    rule = lookup("merge", "float16", "out")
    base_out, _ = ref.merge_attention_states(out, lse, compute_dtype=torch.float32)
    c = compare("merge/float16/out", "out", merged, want, base_out.half(), rule, torch.float16)
    assert c.passed, str(c)


def test_merge_more_states_than_one_step() -> None:
    """S beyond MERGE_MAX_BLOCK_S takes several steps of the merge loop; -inf states anywhere."""
    gen = torch.Generator().manual_seed(2)
    s = MERGE_MAX_BLOCK_S + 44
    out = torch.randn(2, s, 16, generator=gen).to(DEVICE)
    lse = (torch.randn(2, s, generator=gen) * 4).to(DEVICE)
    lse[0, ::3] = NEG_INF
    out[0, ::3] = float("nan")
    lse[1, MERGE_MAX_BLOCK_S:] = NEG_INF
    merged, merged_lse = merge_attention_states(out, lse)
    want, want_lse = ref.merge_attention_states(out, lse)
    for quantity, got, ref_value in (("out", merged, want), ("lse", merged_lse, want_lse)):
        rule = lookup("merge", "float32", quantity)
        c = compare(
            f"merge/float32/{quantity}", quantity, got, ref_value, None, rule, torch.float32
        )
        assert c.passed, str(c)


# ---------------------------------------------------------------- split choice, errors


def test_default_num_splits_fills_the_gpu() -> None:
    """Splits bring B * Hk programs up to WAVES whole waves of the SMs (rounded down), never
    below one KV tile per split, and never below 1."""
    sms = arch_from_name("sm90").num_sms
    long_one = default_num_splits(8, 131072, 64, sms)
    assert WAVES * sms - 8 < 8 * long_one <= WAVES * sms, long_one
    assert default_num_splits(32 * 8, 8192, 64, sms) == WAVES * sms // 256
    assert default_num_splits(64 * 8, 8192, 64, sms) == 1
    assert default_num_splits(8, 1024, 64, sms) == 1024 // 64
    assert default_num_splits(8, 100, 64, sms) == 2
    assert default_num_splits(8, 0, 64, sms) == 1


def test_pick_config_by_arch_and_cache() -> None:
    """16-key tiles under the interpreter (pages of 8 span tiles, pages of 32 hold two); on a
    GPU 64-key tiles, D > 128 half; fp8 caches double-buffered (5 stages), on 2 warps while a
    kv head's query rows fit one 16-row tile and D <= 128, else on 4 (under a 128-register cap
    for one row tile); pages shorter than a tile read as words (converted by PTX on NVIDIA
    sm89+, by integer operations elsewhere), longer ones as elements; the merge launches as a
    programmatic dependent on NVIDIA sm90+ only."""
    assert pick_config(16, 128, torch.float16, CPU_INTERPRETER).block_n == 16
    assert pick_config(8, 128, torch.float8_e4m3fn, CPU_INTERPRETER).fp8_convert == "bits"
    assert pick_config(16, 128, torch.float8_e4m3fn, CPU_INTERPRETER).fp8_convert == "cast"
    sm90 = arch_from_name("sm90")
    bf16 = pick_config(16, 128, torch.bfloat16, sm90)
    assert (bf16.block_n, bf16.num_stages, bf16.maxnreg) == (64, 3, None)
    fp8 = pick_config(16, 128, torch.float8_e4m3fn, sm90)
    assert fp8 == PagedConfig(
        block_n=64, num_warps=2, num_stages=5, fp8_convert="ptx", dependent_merge=True
    )
    assert bf16.dependent_merge
    assert pick_config(16, 128, torch.bfloat16, arch_from_name("sm100")).dependent_merge
    for other in ("sm89", "sm80", "gfx950"):
        assert not pick_config(16, 128, torch.bfloat16, arch_from_name(other)).dependent_merge
    assert not pick_config(16, 128, torch.bfloat16, CPU_INTERPRETER).dependent_merge
    assert pick_config(64, 128, torch.float8_e4m3fn, sm90).fp8_convert == "cast"
    wide = pick_config(32, 256, torch.float8_e4m3fn, sm90)
    assert (wide.num_warps, wide.maxnreg, wide.fp8_convert) == (4, 128, "cast")
    many_rows = pick_config(16, 128, torch.float8_e4m3fn, sm90, rows=32)
    assert (many_rows.num_warps, many_rows.maxnreg) == (4, None)
    assert pick_config(16, 256, torch.bfloat16, sm90).block_n == bf16.block_n // 2
    assert pick_config(16, 128, torch.float8_e5m2, arch_from_name("sm80")).fp8_convert == "bits"
    assert pick_config(16, 128, torch.float8_e5m2, arch_from_name("gfx950")).fp8_convert == "bits"


def test_paged_config_rejects_unknown_fp8_convert() -> None:
    with pytest.raises(ValueError, match="fp8_convert must be one of"):
        PagedConfig(block_n=64, num_warps=4, num_stages=3, fp8_convert="fast")


@pytest.mark.parametrize(
    ("change", "error"),
    [
        ({"block_tables": "used_out_of_range"}, ValueError),
        ({"seq_lens": "too_long"}, ValueError),
        ({"num_splits": 0}, ValueError),
        ({"kv_layout": "NDH"}, ValueError),
        ({"k_descale": "on_fp16_cache"}, ValueError),
        ({"q": "int"}, TypeError),
    ],
    ids=lambda v: next(iter(v.values())) if isinstance(v, dict) else v.__name__,
)
def test_paged_bad_input_raises(change: dict, error: type) -> None:
    """Bad input raises a ValueError / TypeError naming the argument before any launch."""
    x = PagedInputs(seq_lens=(20, 4)).build(poison=0.0)
    kwargs: dict = {}
    key, what = next(iter(change.items()))
    if what == "used_out_of_range":
        x["block_tables"] = x["block_tables"].clone()
        x["block_tables"][0, 1] = 999
    elif what == "too_long":
        x["seq_lens"] = torch.tensor([20, 10_000], dtype=torch.int32, device=DEVICE)
    elif what == "on_fp16_cache":
        x["k_descale"] = torch.tensor(1.0, device=DEVICE)
    elif what == "int":
        x["q"] = x["q"].to(torch.int32)
    else:
        kwargs[key] = what
    with pytest.raises(error, match=key.split("_")[0] if key != "q" else "q"):
        paged_attention(**x, **kwargs)


@pytest.mark.parametrize("variant", ["paged", "merge"])
def test_gate_refuses_unverified(variant: str, monkeypatch, tmp_path) -> None:
    """With ATTNVERIFY_REQUIRE_VERIFIED=1 and no record, the first call raises."""
    monkeypatch.setenv("ATTNVERIFY_HOME", str(tmp_path))
    monkeypatch.setenv(_gate.REQUIRE_ENV, "1")
    _gate.clear_cache()
    try:
        with pytest.raises(_gate.UnverifiedKernelError, match=variant):
            if variant == "paged":
                paged_attention(**PagedInputs(seq_lens=(3,)).build(poison=0.0))
            else:
                merge_attention_states(torch.zeros(1, 2, 8), torch.zeros(1, 2))
    finally:
        _gate.clear_cache()


def test_merge_bad_input_raises() -> None:
    """lse of the wrong shape or dtype raises before any launch."""
    out = torch.zeros(2, 3, 16, device=DEVICE)
    with pytest.raises(ValueError, match="lse"):
        merge_attention_states(out, torch.zeros(2, 4, device=DEVICE))
    with pytest.raises(TypeError, match="lse"):
        merge_attention_states(out, torch.zeros(2, 3, device=DEVICE, dtype=torch.float16))


# ---------------------------------------------------------------- validation on the device


def _outcome(fn, *args) -> tuple:
    """(error type, message) if fn raises TypeError / ValueError, else ("ok", result)."""
    try:
        return ("ok", fn(*args))
    except (TypeError, ValueError) as exc:
        return (type(exc), str(exc))


def _check_args(x: dict, **changes) -> tuple:
    """check_paged_inputs's positional arguments for the inputs `x` with `changes`."""
    x = {**x, **changes}
    return (
        *(x[n] for n in ("q", "k_cache", "v_cache", "block_tables", "seq_lens")),
        x.get("scale"),
        x["k_descale"],
        x["v_descale"],
        x.get("num_splits"),
        x.get("kv_layout", "NHD"),
    )


@st.composite
def table_values(draw: st.DrawFn) -> tuple:
    """Tables and lengths that break the value rules now and then: lengths in
    [-1, capacity + 1], ids in [-2, num_blocks + 1]; shrinks towards valid single requests."""
    block_size = draw(st.sampled_from([1, 4, 8]))
    num_blocks = draw(st.integers(0, 6))
    max_blocks = draw(st.integers(0, 4))
    batch = draw(st.integers(0, 3))
    lens = draw(st.lists(st.integers(0, max_blocks * block_size), min_size=batch, max_size=batch))
    if batch and draw(st.booleans()):
        lens[draw(st.integers(0, batch - 1))] = draw(
            st.sampled_from([-1, max_blocks * block_size + 1])
        )
    ids = st.integers(0, max(num_blocks - 1, 0)) | st.sampled_from(
        [-2, -1, num_blocks, num_blocks + 1]
    )
    tables = draw(
        st.lists(
            st.lists(ids, min_size=max_blocks, max_size=max_blocks), min_size=batch, max_size=batch
        )
    )
    return block_size, num_blocks, max_blocks, lens, tables


@settings(max_examples=40)
@given(values=table_values())
@example(values=(8, 0, 1, [0], [[-1]]))  # no pool at all: valid, every entry unread
@example(values=(8, 3, 2, [9, 0], [[0, 3], [-1, -1]]))  # the second page read is past the pool
@example(values=(4, 2, 2, [8, -1], [[0, 1], [0, 1]]))  # negative length
@example(values=(4, 2, 2, [9], [[0, 1]]))  # past capacity
def test_paged_device_checks_agree_with_host_checks(values: tuple) -> None:
    """`check_inputs` (value rules on the device, one host read) accepts exactly what
    `check_paged_inputs` accepts, returns its scale and longest length, and raises its error;
    valid input takes the device path."""
    block_size, num_blocks, max_blocks, lens, tables = values
    batch = len(lens)
    x = {
        "q": torch.zeros(batch, 2, 1, 8, device=DEVICE),
        "k_cache": torch.zeros(num_blocks, block_size, 1, 8, device=DEVICE),
        "v_cache": torch.zeros(num_blocks, block_size, 1, 8, device=DEVICE),
        "block_tables": torch.tensor(tables, dtype=torch.int32, device=DEVICE).reshape(
            batch, max_blocks
        ),
        "seq_lens": torch.tensor(lens, dtype=torch.int32, device=DEVICE),
        "k_descale": None,
        "v_descale": None,
    }
    args = _check_args(x)
    want = _outcome(check_paged_inputs, *args)
    host_reads = []  # calls of the host value check (the fallback)

    def spy(*a):
        host_reads.append(a)
        return check_paged_values(*a)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(kernel, "check_paged_values", spy)
        got = _outcome(check_inputs, *args)
    if want[0] == "ok":
        assert got == ("ok", (want[1].scale, max(want[1].seq_lens, default=0)))
        # valid input never falls back to reading tables on the host (but for an empty pool)
        assert not host_reads or (num_blocks == 0 and max_blocks), host_reads
    else:
        assert got == want


@pytest.mark.parametrize(
    "change",
    [
        {"block_tables": lambda t: t.long()},
        {"seq_lens": lambda t: t[:1]},
        {"block_tables": lambda t: t.to("meta")},
        {"num_splits": 0},
        {"kv_layout": "NDH"},
        {"k_descale": torch.tensor(1.0, device=DEVICE)},
        {"scale": float("nan")},
        {"q": lambda t: t.to(torch.int32)},
        {"v_cache": lambda t: t[:, :4]},
    ],
    ids=[
        "tables-int64",
        "lens-shape",
        "tables-device",
        "splits",
        "layout",
        "descale",
        "scale",
        "q-int",
        "v-shape",
    ],
)
def test_paged_shape_checks_raise_the_host_error(change: dict) -> None:
    """Shape / dtype / device / option errors are check_paged_inputs's own errors (its
    value-free part, check_paged_layout), raised before any launch."""
    x = PagedInputs(seq_lens=(20, 4)).build(poison=0.0)
    key, value = next(iter(change.items()))
    args = _check_args(x, **{key: value(x[key]) if callable(value) else value})
    want = _outcome(check_paged_inputs, *args)
    assert want[0] in (TypeError, ValueError)
    assert _outcome(check_inputs, *args) == want


def test_paged_bad_values_raise_before_any_launch(monkeypatch) -> None:
    """A used block id past the pool raises check_paged_inputs's message; nothing launches."""
    launches = []
    monkeypatch.setattr(kernel, "launch_paged", lambda *a, **k: launches.append(a))
    x = PagedInputs(seq_lens=(20, 4)).build(poison=0.0)
    x["block_tables"][1, 0] = 99
    want = _outcome(check_paged_inputs, *_check_args(x))
    assert want[0] is ValueError and "block_tables[1, 0] = 99" in want[1]
    assert _outcome(lambda: paged_attention(**x)) == want
    assert launches == []


def test_paged_valid_input_reads_the_device_once(monkeypatch) -> None:
    """Valid input: no host value check (no table read on the host), and the values come back
    in exactly one read of the inputs' device."""
    host_reads, reads = [], []
    tolist = torch.Tensor.tolist

    def spy_tolist(self):
        reads.append(self.shape)
        return tolist(self)

    x = PagedInputs(seq_lens=(37, 0, 16)).build()
    monkeypatch.setattr(kernel, "check_paged_values", lambda *a: host_reads.append(a))
    monkeypatch.setattr(torch.Tensor, "tolist", spy_tolist)
    plan = plan_paged(**x)
    assert host_reads == [], host_reads
    assert len(reads) == 1, reads
    assert plan.num_splits == default_num_splits(
        3 * 2, 37, plan.config.block_n, CPU_INTERPRETER.num_sms
    )
