"""Flash launches recorded instead of run, and compiled for sm90 without a GPU.

For the checks that only a compiler can make (shared memory, registers, spills, the PTX of a
loop, byte identity of two trees) and for timing a kernel without its host work: the CPU tests
(in a process with TRITON_INTERPRET off) and the ci/ device scripts. `record_launches` runs a
call of the flash core with `_flash._launch` replaced, so every launch it would make is kept
with its exact arguments; `compile_sm90` compiles one of them with Triton's own argument binder
for sm90 (target cuda 90); `ptxas_usage` reads registers and spill bytes from the bundled
ptxas; `ptx_loops` lists the opcodes of each loop of a PTX; `compile_inputs` makes CPU inputs
for such a compile.
"""

from __future__ import annotations

import os
import re
import subprocess
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
import triton

from attnverify.kernels import _flash


@dataclass(frozen=True)
class Launch:
    """One flash kernel launch: the autotuned kernel (`_flash._fwd`, `_dkdv`, `_dq`), its grid,
    the pinned config (None: autotuned) and its keyword arguments."""

    kernel: Any
    grid: tuple[int, int, int]
    config: _flash.FlashConfig | None
    kwargs: dict[str, Any]

    def pinned_kwargs(self) -> dict[str, Any]:
        """kwargs plus the pinned config's BLOCK_INNER, num_warps and num_stages: what the
        plain jit function `kernel.fn` takes.

        Raises:
            ValueError: the launch was autotuned (no config to add).
        """
        if self.config is None:
            raise ValueError("an autotuned launch has no pinned config; pass a FlashConfig")
        c = self.config
        extra = {"BLOCK_INNER": c.block_inner, "num_warps": c.num_warps, "num_stages": c.num_stages}
        return {**self.kwargs, **extra}


def compile_inputs(d: int, varlen: bool) -> tuple[torch.Tensor, _flash.FlashProblem, torch.Tensor]:
    """bf16 q (standing in for k, v, out and dO too), a non-causal problem with 4 query and kv
    heads (varlen: 4 sequences of 1280 tokens in all; dense: B=2, L=512) and a matching lse,
    on the CPU: a compile sees only their types, strides and constexprs."""
    if varlen:
        lens = (256, 512, 384, 128)
        layout = _flash.VarlenLengths.from_seqlens(lens, lens)
        problem = _flash.FlashProblem(True, 1, 4, 4, False, 0.1, lengths=lambda: layout)
        q = torch.randn(sum(lens), 4, d, dtype=torch.bfloat16)
        return q, problem, torch.zeros(4, sum(lens))
    problem = _flash.FlashProblem(False, 2, 4, 4, False, 0.1, seqlen_q=512, seqlen_k=512)
    return torch.randn(2, 4, 512, d, dtype=torch.bfloat16), problem, torch.zeros(2, 4, 512)


def record_launches(call: Callable[[], object], *, stub_mask_tiles: bool = False) -> list[Launch]:
    """Every flash kernel launch `call()` makes, in order, none of them run. With
    `stub_mask_tiles` the mask-tile kernels (`_flash._tile_codes`, `_tile_lists`, which launch
    at once) are replaced by zero tensors of their shapes, so that a masked call records on a
    machine without a GPU."""
    launches: list[Launch] = []

    def record(kernel, grid, config, *, fallback: bool = True, **kwargs) -> None:
        launches.append(Launch(kernel, grid, config, kwargs))

    def codes(mask: torch.Tensor, problem: _flash.FlashProblem, block: int) -> torch.Tensor:
        rows = 1 if mask.shape[2] == 1 else triton.cdiv(problem.seqlen_q, block)
        tiles = triton.cdiv(problem.seqlen_k, block)
        return torch.zeros((*mask.shape[:2], rows, tiles), dtype=torch.uint8)

    def lists(codes: torch.Tensor, problem: _flash.FlashProblem, block: int) -> torch.Tensor:
        rows = triton.cdiv(problem.seqlen_q, block) if problem.causal else codes.shape[2]
        return torch.zeros((*codes.shape[:2], rows, 2 + codes.shape[3]), dtype=torch.int32)

    stubs = {"_launch": record}
    if stub_mask_tiles:
        stubs |= {"_tile_codes": codes, "_tile_lists": lists}
    real = {name: getattr(_flash, name) for name in stubs}
    try:
        for name, stub in stubs.items():
            setattr(_flash, name, stub)
        call()
    finally:
        for name, fn in real.items():
            setattr(_flash, name, fn)
    return launches


def compile_sm90(launch: Launch, **override: Any) -> Any:
    """`launch` (pinned) compiled for sm90 exactly as Triton would launch it, `override`
    replacing arguments; Triton's CompiledKernel (`.asm["ptx"]`, `.metadata.shared`)."""
    from triton.backends.compiler import GPUTarget
    from triton.backends.nvidia.compiler import CUDABackend
    from triton.compiler import ASTSource
    from triton.runtime.jit import create_function_from_signature

    kernel, kwargs = launch.kernel.fn, {**launch.pinned_kwargs(), **override}
    target = GPUTarget("cuda", 90, 32)
    backend = CUDABackend(target)
    binder = create_function_from_signature(kernel.signature, kernel.params, backend)
    bound, spec, opts = binder(**kwargs)
    options, signature, constexprs, attrs = kernel._pack_args(backend, kwargs, bound, spec, opts)
    source = ASTSource(kernel, signature, constexprs, attrs)
    return triton.compile(source, target=target, options=options.__dict__)


def ptxas_usage(ptx: str) -> tuple[int, int]:
    """(registers, spill-store bytes) of a PTX for sm_90a, from the ptxas Triton bundles."""
    ptxas = os.path.join(os.path.dirname(triton.__file__), "backends/nvidia/bin/ptxas")
    info = subprocess.run(
        [ptxas, "-arch=sm_90a", "-v", "-", "-o", os.devnull],
        input=ptx, capture_output=True, text=True, check=True,
    ).stderr  # fmt: skip
    registers = int(re.search(r"Used (\d+) registers", info).group(1))
    return registers, int(re.search(r"(\d+) bytes spill stores", info).group(1))


def ptx_loops(ptx: str) -> list[list[str]]:
    """Opcodes of every PTX loop body (a label some later branch jumps back to), in order;
    predicates, directives, comments and labels left out."""
    lines = ptx.splitlines()
    loops = []
    for i, ln in enumerate(lines):
        if not re.match(r"^\$L__BB0_\d+:", ln):
            continue
        back = re.compile(r"bra(\.uni)?\s+" + re.escape(ln.split(":")[0]) + ";")
        end = next((j for j in range(i + 1, len(lines)) if back.search(lines[j])), None)
        if end is None:
            continue
        body = []
        for text in lines[i + 1 : end + 1]:
            op = re.sub(r"^@!?\S+\s+", "", text.strip()).split()
            if op and not op[0].startswith((".", "//", "$L__", "{", "}")) and op[0][-1] != ":":
                body.append(op[0])
        loops.append(body)
    return loops


__all__ = [
    "Launch",
    "compile_inputs",
    "compile_sm90",
    "ptx_loops",
    "ptxas_usage",
    "record_launches",
]
