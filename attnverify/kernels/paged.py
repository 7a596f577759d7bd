"""Paged-KV attention (decode, speculative decode) with split-KV, and attention-state merging.

`paged_attention`: the newest Lq query positions of each request attend over the request's
paged KV cache, causal bottom-right (query i sees key j iff j <= i + seq_len - Lq; Lq = 1 sees
the whole context). Caches are "NHD" (num_blocks, block_size, Hk, D) or "HND"
(num_blocks, Hk, block_size, D), addressed through strides; block sizes 8..256 (powers of two
are the tuned case; any block_size >= 1 is correct). Caches in q's dtype (float16, bfloat16,
float32) or fp8 (float8_e4m3fn / float8_e5m2) with float32 descales () or (Hk,); an fp8 cache
is multiplied in float16 (fp8 -> fp16 is exact; q is rescaled by a power of two into fp16
range), with float32 q in float32; its K / V are read as 32-bit words of 4 fp8 values and
converted in registers (`PagedConfig.fp8_convert`), so no fp8 byte is read on its own. Head
dims: any D in [8, 256] with D % 8 == 0 (the tile is padded to the next power of two with
masked lanes, which load no bytes). LSE: natural log, float32. Block ids are widened to
int64 before any offset is formed.

One program serves one (request, kv head, split): all G = Hq / Hk query heads of the kv head
and all Lq queries form the M rows of the tile (padded to >= 16 for `tl.dot`), so K and V are
read once for the whole group. Beyond MAX_BLOCK_M rows (large G * Lq) the rows are cut into
several tiles, each reading K/V again.

Split-KV (flash-decoding): each request's KV range is cut into `num_splits` chunks (aligned to
the KV tile); each chunk writes a float32 partial (out, lse) and the merge kernel (that of
`merge_attention_states`) combines them; on NVIDIA sm90+ the merge is a programmatic dependent
launch (`PagedConfig.dependent_merge`). With one split the kernel writes the final output
directly.

This module: configs (`PagedConfig`, `pick_config`, `default_num_splits`), launchers
(`launch_paged`, `launch_merge`; they read the kernels from this module's globals), input checks
(`check_inputs`, `plan_paged`) and the public functions. The @triton.jit code (fp8 word
conversion, K/V tile loads, the attention and merge kernels) is in `_paged_kernels.py`.

Oracle: `attnverify.reference.paged`.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from attnverify.arch import Arch, current_arch, interpreter_active
from attnverify.kernels._common import cdiv
from attnverify.kernels._gate import enforce_verified
from attnverify.kernels._paged_kernels import _merge_kernel, _paged_fwd_kernel
from attnverify.validation import check_merge_inputs, check_paged_layout, check_paged_values

LOG2E = 1.4426950408889634
MIN_BLOCK_M = 16  # tl.dot needs M >= 16 ...
MIN_BLOCK_D = 16  # ... and K >= 16 (D = 8 is padded)
MAX_BLOCK_M = 64  # rows (G * Lq) one program holds; more rows -> several row tiles
MAX_SPLITS = 256
WAVES = 4  # default splits aim at WAVES * num_sms programs, at least one KV tile each
MERGE_MAX_BLOCK_S = 256  # splits merged per step (more: a loop)
MERGE_TILE = 4096  # elements of one merge program's (splits x D) tile
FP8_CONVERTS = ("ptx", "bits", "cast")  # `PagedConfig.fp8_convert`


def _next_pow2(x: int) -> int:
    """The smallest power of two >= x, for host code (`triton.next_power_of_2` costs ~3.5 us a
    call, which adds up on the launch path)."""
    return 1 << max(0, x - 1).bit_length()


@dataclass(frozen=True)
class PagedConfig:
    """Launch settings of the attention kernel.

    Attributes:
        block_n: keys per KV tile (a tile spans pages when block_size < block_n).
        num_warps, num_stages: Triton launch settings (stages of the software pipeline).
        maxnreg: registers per thread the compiler may use (None: its own choice); a cap
            lets more programs share an SM.
        fp8_convert: how an fp8 cache becomes float16 (other caches ignore it):
            "ptx": K / V loaded as 32-bit words (4 fp8 each) and converted in registers by
            `cvt.rn.f16x2.e4m3x2` (e4m3) or a byte permute (e5m2) on NVIDIA sm89+ (elsewhere,
            the interpreter included, "bits" runs instead);
            "bits": the same word loads, converted with integer bit operations (portable);
            "cast": fp8 element loads converted by Triton (which stages the fp8 bytes in shared
            memory and reads the dot operands from there byte by byte).
            The word loads need a cache whose D is contiguous and whose other strides and
            storage offset are multiples of 4 elements; others are read as "cast".
        dependent_merge: with several splits, launch the merge as a programmatic dependent of
            the attention kernel (NVIDIA sm90+: the merge's launch overlaps the attention
            kernel's tail; ignored when the interpreter runs the kernels).
    """

    block_n: int
    num_warps: int
    num_stages: int
    maxnreg: int | None = None
    fp8_convert: str = "bits"
    dependent_merge: bool = False

    def __post_init__(self) -> None:
        if self.fp8_convert not in FP8_CONVERTS:
            raise ValueError(f"fp8_convert must be one of {FP8_CONVERTS}; got {self.fp8_convert!r}")


def pick_config(
    block_size: int, head_dim: int, cache_dtype: torch.dtype, arch: Arch, rows: int = 1
) -> PagedConfig:
    """Launch settings for a cache geometry and dtype on `arch` (16-key tiles when interpreted).

    bf16 / fp16 / fp32 caches: 64-key tiles, 4 warps, 3 stages. fp8 caches: 5 stages (two K / V
    buffers in flight). When the `rows` (G * Lq query rows of a kv head) fit one MIN_BLOCK_M
    tile and D <= 128: 2 warps, which on an H100 (ci/notes_paged.md, session-17 sweep, CUDA
    graph replays, Hq 32 / Hk 8, D 128) ran 1.01-1.14x faster than 4 warps under a
    128-register cap, the most with pages of 16 (B 32, ctx 32768: 770 vs 875 us), and never
    slower; else 4 warps, capped at 128 registers per thread when the rows fit one tile (four
    programs per SM; larger row tiles would spill under that cap). Pages shorter than a tile
    are read as 32-bit words converted in registers (PTX on NVIDIA sm89+, integer operations
    elsewhere), longer ones as fp8 elements (`PagedConfig.fp8_convert`): on an H200
    (2026-11-21 sweep, 4 warps) words beat element loads by 2-4% with pages of 16 keys and
    lost by 13-15% with pages of 64. Tiles of half the keys for D > 128. NVIDIA sm90+ launches
    the merge as a programmatic dependent (0.3-0.9 us less per B = 1 call on an H100,
    ci/notes_paged.md, session 18).
    """
    block_n = 16 if arch.is_interpreter else 64 if head_dim <= 128 else 32
    if block_size >= block_n:
        convert = "cast"
    elif arch.vendor == "nvidia" and arch.capability >= (8, 9):
        convert = "ptx"
    else:
        convert = "bits"
    if arch.is_interpreter:
        return PagedConfig(block_n=block_n, num_warps=1, num_stages=1, fp8_convert=convert)
    dependent = arch.vendor == "nvidia" and arch.capability >= (9, 0)
    if cache_dtype.itemsize != 1:
        return PagedConfig(block_n=block_n, num_warps=4, num_stages=3, dependent_merge=dependent)
    if rows <= MIN_BLOCK_M and head_dim <= 128:
        warps, maxnreg = 2, None
    else:
        warps, maxnreg = 4, 128 if rows <= MIN_BLOCK_M else None
    return PagedConfig(
        block_n=block_n,
        num_warps=warps,
        num_stages=5,
        maxnreg=maxnreg,
        fp8_convert=convert,
        dependent_merge=dependent,
    )


def default_num_splits(num_programs: int, max_seq_len: int, block_n: int, num_sms: int) -> int:
    """Splits that give about WAVES * num_sms programs, each of at least one KV tile.

    `num_programs` is the program count without splitting (B * Hk * row tiles). Short
    contexts split down to one tile a split: on an H100 (ci/notes_paged.md, session 18, CUDA
    graph replays, B 1, Hq 32 / Hk 8, D 128) B = 1 ctx 1024 took 13.1 us with 16 splits
    against 16.8 us with 4, and ctx 4096 20.2 us with 64 against 21.7 with 16.
    """
    tiles = cdiv(max_seq_len, block_n)
    want = (WAVES * num_sms) // max(num_programs, 1)  # rounded down: no partial last wave
    return max(1, min(want, tiles, MAX_SPLITS))


# ---------------------------------------------------------------- launchers


def _block_size_and_heads(cache: torch.Tensor, kv_layout: str) -> tuple[int, int]:
    """(block_size, Hk) of a cache in either layout."""
    return (
        (cache.shape[1], cache.shape[2]) if kv_layout == "NHD" else (cache.shape[2], cache.shape[1])
    )


def _cache_strides(cache: torch.Tensor, kv_layout: str) -> tuple[int, int, int, int]:
    """(block, slot, head, d) strides of a cache in either layout."""
    if kv_layout == "NHD":
        return cache.stride(0), cache.stride(1), cache.stride(2), cache.stride(3)
    return cache.stride(0), cache.stride(2), cache.stride(1), cache.stride(3)


def _word_view(cache: torch.Tensor) -> torch.Tensor | None:
    """An fp8 cache as int32 words of 4 values along D (same layout, strides / 4), or None where
    D is not contiguous or a stride / the storage offset is not a multiple of 4."""
    if cache.stride(-1) != 1 or cache.storage_offset() % 4:
        return None
    if any(st % 4 for st in cache.stride()[:-1]) or cache.shape[-1] % 4:
        return None
    return cache.view(torch.int32)


def _fp8_words(
    q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor, convert: str
) -> tuple[torch.Tensor, torch.Tensor, int]:
    """(k, v, FP8_WORDS) as the kernel reads them: int32 word views of fp8 caches with
    FP8_WORDS 2 (PTX conversion: `convert` "ptx" on an NVIDIA sm89+ device, not interpreted)
    or 1 (integer conversion); otherwise the caches themselves and 0 (element loads)."""
    if k_cache.dtype.itemsize != 1 or q.dtype == torch.float32 or convert == "cast":
        return k_cache, v_cache, 0
    k_words, v_words = _word_view(k_cache), _word_view(v_cache)
    if k_words is None or v_words is None:
        return k_cache, v_cache, 0
    ptx = (
        convert == "ptx"
        and q.is_cuda
        and torch.version.hip is None
        and not interpreter_active()
        and torch.cuda.get_device_capability(q.device) >= (8, 9)
    )
    return k_words, v_words, 2 if ptx else 1


def launch_merge(
    out: torch.Tensor,
    lse: torch.Tensor,
    merged: torch.Tensor,
    merged_lse: torch.Tensor,
    *,
    dependent: bool = False,
) -> None:
    """Merge out (R, S, D), lse (R, S) into merged (R, D) and merged_lse (R,) (any strides).

    `dependent`: launch as a programmatic dependent of the kernel before it on the stream
    (NVIDIA sm90+ only; the merge waits for that kernel's writes before reading).
    """
    rows, num_splits, head_dim = out.shape
    if rows == 0:
        return
    block_s = min(_next_pow2(num_splits), MERGE_MAX_BLOCK_S)
    block_d = min(_next_pow2(head_dim), max(16, MERGE_TILE // block_s))
    grid = (rows, cdiv(head_dim, block_d))
    _merge_kernel[grid](
        out,
        lse,
        merged,
        merged_lse,
        *out.stride(),
        *lse.stride(),
        *merged.stride(),
        merged_lse.stride(0),
        num_splits,
        head_dim,
        BLOCK_S=block_s,
        BLOCK_D=block_d,
        WAIT_PRIOR=dependent,
        num_warps=4 if block_s * block_d >= 2048 else 2,
        launch_pdl=dependent,
    )


def launch_paged(
    q: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    block_tables: torch.Tensor,
    seq_lens: torch.Tensor,
    k_descale: torch.Tensor | None,
    v_descale: torch.Tensor | None,
    *,
    scale: float,
    num_splits: int,
    kv_layout: str,
    config: PagedConfig,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Allocate, launch the attention kernel (and the merge when num_splits > 1); no host sync.

    No validation: the inputs must have passed `plan_paged` (or `check_inputs`). Lengths and
    block ids are read on the device, so one launch serves any seq_lens / block_tables values
    of the planned shapes, which makes it capturable in a CUDA graph (the way to reach a few
    microseconds per short decode step; Python launches cost about 25 us)::

        plan = plan_paged(q, k_cache, v_cache, block_tables, seq_lens)  # validates once
        run = lambda: launch_paged(q, k_cache, v_cache, block_tables, seq_lens, None, None,
                                   scale=plan.scale, num_splits=plan.num_splits,
                                   kv_layout="NHD", config=plan.config)
        run()  # compiles the kernels outside the capture
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            out, lse = run()
        # each step: copy the new q / seq_lens / block_tables into the captured tensors, then
        graph.replay()  # out, lse now hold the step's result

    A replay validates nothing: keep seq_lens <= max_blocks * block_size and the ids of the
    pages read in [0, num_blocks). Plan with the longest context the graph will serve; the
    split count it picks is correct for every shorter one.

    Returns out (B, Hq, Lq, D) in q's dtype and lse (B, Hq, Lq) float32.
    """
    b, hq, lq, head_dim = q.shape
    block_size, hk = _block_size_and_heads(k_cache, kv_layout)
    group = hq // hk
    out = torch.empty(b, hq, lq, head_dim, dtype=q.dtype, device=q.device)
    lse = torch.empty(b, hq, lq, dtype=torch.float32, device=q.device)
    if out.numel() == 0:
        return out, lse.fill_(float("-inf"))
    block_m = max(MIN_BLOCK_M, min(_next_pow2(group * lq), MAX_BLOCK_M))
    num_row_tiles = cdiv(group * lq, block_m)
    if num_splits == 1:
        part, part_lse = out.unsqueeze(3), lse.unsqueeze(3)
    else:
        part = torch.empty(b, hq, lq, num_splits, head_dim, dtype=torch.float32, device=q.device)
        part_lse = torch.empty(b, hq, lq, num_splits, dtype=torch.float32, device=q.device)
    k_ds = k_descale if k_descale is not None else lse
    v_ds = v_descale if v_descale is not None else lse
    k_read, v_read, fp8_words = _fp8_words(q, k_cache, v_cache, config.fp8_convert)
    dependent = config.dependent_merge and num_splits > 1 and not interpreter_active()
    grid = (num_splits, hk * num_row_tiles, b)
    _paged_fwd_kernel[grid](
        q,
        k_read,
        v_read,
        block_tables,
        seq_lens,
        k_ds,
        v_ds,
        part,
        part_lse,
        *q.stride(),
        *_cache_strides(k_read, kv_layout),
        *_cache_strides(v_read, kv_layout),
        *block_tables.stride(),
        *part.stride(),
        *part_lse.stride(),
        k_ds.stride(0) if k_ds.dim() else 0,
        v_ds.stride(0) if v_ds.dim() else 0,
        scale * LOG2E,
        group,
        lq,
        num_row_tiles,
        num_splits,
        HEAD_DIM=head_dim,
        BLOCK_SIZE=block_size,
        BLOCK_M=block_m,
        BLOCK_N=config.block_n,
        BLOCK_D=max(MIN_BLOCK_D, _next_pow2(head_dim)),
        HAS_K_DESCALE=k_descale is not None,
        HAS_V_DESCALE=v_descale is not None,
        NUM_STAGES=config.num_stages,
        FP16_DOT=k_cache.dtype.itemsize == 1 and q.dtype != torch.float32,
        DOT_PRECISION="ieee" if q.dtype == torch.float32 else "tf32",  # tf32: the default
        FP8_WORDS=fp8_words,
        FP8_E5M2=k_cache.dtype == torch.float8_e5m2,
        EARLY_DEPENDENTS=dependent,
        num_warps=config.num_warps,
        maxnreg=config.maxnreg,
    )
    if num_splits > 1:
        launch_merge(
            part.view(-1, num_splits, head_dim),
            part_lse.view(-1, num_splits),
            out.view(-1, head_dim),
            lse.view(-1),
            dependent=dependent,
        )
    return out, lse


def _check_paged_values(
    block_tables: torch.Tensor, seq_lens: torch.Tensor, block_size: int, num_blocks: int
) -> int | None:
    """The value rules of `check_paged_inputs` on the device, one host read: the longest
    seq_len, or None where a rule may be broken (0 <= seq_len <= capacity; the first
    ceil(seq_len / block_size) ids of a row in [0, num_blocks)).

    None is exact except for a pool of no blocks (the id filled in for unread entries, 0, is
    then out of range): the caller rechecks on the host, which words the error.
    """
    batch, max_blocks = block_tables.shape
    if batch == 0:
        return 0
    lens_lo, lens_hi = torch.aminmax(seq_lens)
    values = [lens_lo, lens_hi]
    if max_blocks:
        # [B, max_blocks] the entries a request reads: page p holds keys p * block_size..
        first_key = torch.arange(0, max_blocks * block_size, block_size, device=seq_lens.device)
        read = first_key[None, :] < seq_lens[:, None]
        values += torch.aminmax(torch.where(read, block_tables, 0))
    lo_len, hi_len, *ids = torch.stack(values).tolist()  # the one synchronisation
    ok = lo_len >= 0 and hi_len <= max_blocks * block_size
    if ids:
        ok = ok and ids[0] >= 0 and ids[1] < num_blocks
    return hi_len if ok else None


def check_inputs(
    q: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    block_tables: torch.Tensor,
    seq_lens: torch.Tensor,
    scale: float | None,
    k_descale: torch.Tensor | None,
    v_descale: torch.Tensor | None,
    num_splits: int | None,
    kv_layout: str,
) -> tuple[float, int]:
    """`attnverify.validation.check_paged_inputs`, with one host synchronisation and no loop
    over requests: returns (scale, longest seq_len).

    `check_paged_layout` reads no values; the value rules (seq_lens range, ids of the pages
    read) run on the device (`_check_paged_values`). Where one may be broken,
    `check_paged_values` rechecks on the host and raises its own error, before any launch.
    """
    layout = check_paged_layout(
        q, k_cache, v_cache, block_tables, seq_lens, scale, k_descale, v_descale, num_splits,
        kv_layout,
    )  # fmt: skip
    longest = _check_paged_values(block_tables, seq_lens, layout.block_size, layout.num_blocks)
    if longest is None:  # raises check_paged_values's error (or, rarely, passes on the host)
        longest = max(check_paged_values(block_tables, seq_lens, layout), default=0)
    return layout.scale, longest


@dataclass(frozen=True)
class PagedPlan:
    """Everything `launch_paged` needs besides tensors, resolved once per call shape."""

    scale: float
    num_splits: int
    config: PagedConfig


def plan_paged(
    q: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    block_tables: torch.Tensor,
    seq_lens: torch.Tensor,
    *,
    scale: float | None = None,
    k_descale: torch.Tensor | None = None,
    v_descale: torch.Tensor | None = None,
    num_splits: int | None = None,
    kv_layout: str = "NHD",
    config: PagedConfig | None = None,
) -> PagedPlan:
    """Validate inputs (`check_inputs`: one host synchronisation) and resolve the launch plan.

    The default split count follows the longest seq_len of these inputs; any count is correct
    for any lengths, so a plan may serve later calls with other lengths (a CUDA graph: see
    `launch_paged`). With ATTNVERIFY_REQUIRE_VERIFIED=1 the first plan on an unverified device
    raises `UnverifiedKernelError` (`attnverify.kernels._gate`).
    """
    scale, longest = check_inputs(
        q,
        k_cache,
        v_cache,
        block_tables,
        seq_lens,
        scale,
        k_descale,
        v_descale,
        num_splits,
        kv_layout,
    )
    enforce_verified("paged", q.device)
    arch = current_arch(q.device)
    block_size, hk = _block_size_and_heads(k_cache, kv_layout)
    group_rows = (q.shape[1] // hk) * q.shape[2]
    if config is None:
        config = pick_config(block_size, q.shape[-1], k_cache.dtype, arch, group_rows)
    if num_splits is None:
        programs = q.shape[0] * hk * cdiv(group_rows, MAX_BLOCK_M)
        num_splits = default_num_splits(programs, longest, config.block_n, arch.num_sms)
    return PagedPlan(scale=scale, num_splits=num_splits, config=config)


# ---------------------------------------------------------------- public functions


def paged_attention(
    q: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    block_tables: torch.Tensor,
    seq_lens: torch.Tensor,
    *,
    scale: float | None = None,
    k_descale: torch.Tensor | None = None,
    v_descale: torch.Tensor | None = None,
    num_splits: int | None = None,
    kv_layout: str = "NHD",
    return_lse: bool = False,
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """Attention of the newest Lq positions of each request over its paged KV cache.

    Request b's context is its first seq_lens[b] cached tokens (the Lq new tokens included);
    its queries are the last Lq positions, causal bottom-right: query i sees key j iff
    j <= i + seq_len - Lq. For seq_len = 6, Lq = 2 (x = visible)::

        key    0 1 2 3 4 5
        q0     x x x x x .
        q1     x x x x x x

    Query head h reads kv head h // G (G = Hq / Hk); all G heads of a kv head share one read
    of K and V. Scores are scale * <q, k * k_descale>; values are v * v_descale.

    Args:
        q: (B, Hq, Lq, D) float16 | bfloat16 | float32; Lq = 1 is decode.
        k_cache, v_cache: (num_blocks, block_size, Hk, D) for "NHD" or
            (num_blocks, Hk, block_size, D) for "HND"; q's dtype, or float8_e4m3fn /
            float8_e5m2. block_size a power of two; any strides.
        block_tables: (B, max_blocks) int32 physical block of each logical block; entries past
            ceil(seq_len / block_size) are never read (may be -1 or junk).
        seq_lens: (B,) int32 valid cached tokens per request; slots past it are never read
            (may hold NaN).
        scale: multiplies q.k; default 1 / sqrt(D).
        k_descale, v_descale: float32 () or (Hk,), fp8 caches only (None: 1).
        num_splits: KV chunks per request (>= 1; flash-decoding), or None to choose from B,
            Hk, the longest seq_len and the SM count. Results agree for every value up to
            float32 rounding of the partials.
        kv_layout: "NHD" or "HND".
        return_lse: also return the natural-log logsumexp of each row.

    Returns:
        out (B, Hq, Lq, D) in q's dtype, and with return_lse lse (B, Hq, Lq) float32. A row
        with no visible key (seq_len == 0, or seq_len < Lq for the first rows) gives out 0 and
        lse -inf.

    Raises:
        TypeError, ValueError: inputs outside the rules above (see `attnverify.validation`),
            before any launch.
        UnverifiedKernelError: ATTNVERIFY_REQUIRE_VERIFIED=1 and no verification record for this
            kernel source on this device (the message names the `attnverify verify` command).

    Each call validates its inputs (one host synchronisation, `check_inputs`) and launches
    from Python. A decode loop that calls with the same shapes every step can validate once
    (`plan_paged`) and capture `launch_paged` in a CUDA graph (see its docstring): at B = 1,
    context 1024 an H200 ran about 10 us per step instead of about 25 us (ci/notes_paged.md).
    """
    plan = plan_paged(
        q,
        k_cache,
        v_cache,
        block_tables,
        seq_lens,
        scale=scale,
        k_descale=k_descale,
        v_descale=v_descale,
        num_splits=num_splits,
        kv_layout=kv_layout,
    )
    out, lse = launch_paged(
        q,
        k_cache,
        v_cache,
        block_tables,
        seq_lens,
        k_descale,
        v_descale,
        scale=plan.scale,
        num_splits=plan.num_splits,
        kv_layout=kv_layout,
        config=plan.config,
    )
    return (out, lse) if return_lse else out


def merge_attention_states(
    out: torch.Tensor, lse: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Merge S partial attention states (split-KV, or prefix/suffix cascades) into one.

    `lse = logsumexp_s(lse_s)`, `out = sum_s exp(lse_s - lse) * out_s`, in float32. Splits with
    lse -inf contribute nothing (their out is never read, so it may be NaN); all -inf gives
    out 0 and lse -inf.

    Args:
        out: (..., S, D) float16 | bfloat16 | float32 partial outputs, S >= 1, any strides.
        lse: (..., S) float32 natural-log partial lse.

    Returns:
        (out (..., D) in out's dtype, lse (...) float32).

    Raises:
        TypeError, ValueError: shapes or dtypes outside the rules above.
        UnverifiedKernelError: ATTNVERIFY_REQUIRE_VERIFIED=1 and no verification record for this
            kernel source on this device (the message names the `attnverify verify` command).
    """
    check_merge_inputs(out, lse)
    enforce_verified("merge", out.device)
    *lead, num_splits, head_dim = out.shape
    merged = torch.empty(*lead, head_dim, dtype=out.dtype, device=out.device)
    merged_lse = torch.empty(lead, dtype=torch.float32, device=out.device)
    launch_merge(
        out.reshape(-1, num_splits, head_dim),
        lse.reshape(-1, num_splits),
        merged.view(-1, head_dim),
        merged_lse.view(-1),
    )
    return merged, merged_lse


__all__ = [
    "PagedConfig",
    "PagedPlan",
    "default_num_splits",
    "launch_merge",
    "launch_paged",
    "merge_attention_states",
    "paged_attention",
    "pick_config",
    "plan_paged",
]
