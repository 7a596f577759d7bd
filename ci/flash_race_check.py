"""Every backward config of the flash core, and every fallback config, each pass pinned in
turn on gqa cases: repeats of one launch must be bitwise equal (a moving result is a race: a
compiler scheduling race shows as a few wrong rows that move between runs), and each
gradient's max difference to the same pass under a reference config. Then, with --time, each
config's backward time at the bench shape (B=1, H=16, L=8192, D=128, bf16), without and with a
(1, 1, L, L) bias. GPU only.

Usage: PYTHONPATH=. python3 ci/flash_race_check.py [--repeats 5] [--time] [--configs a,b,c,d ...]
"""

from __future__ import annotations

import argparse
import functools
import itertools

import torch
import triton

from attnverify.kernels import gqa as G
from attnverify.kernels._flash import FlashConfig
from attnverify.kernels._flash_tiles import BWD_CONFIGS, FALLBACK_CONFIGS

# B, Hq, Hk, Lq, Lk, D, dtype, bias shape (float32) or None, causal, transposed layout
CASES = [
    (4, 1, 1, 65, 68, 128, torch.bfloat16, (1, 1, 1, 68), False, True),
    (4, 1, 1, 65, 68, 128, torch.bfloat16, None, False, True),
    (4, 1, 1, 65, 68, 128, torch.bfloat16, (1, 1, 1, 68), False, False),
    (4, 1, 1, 65, 68, 128, torch.float16, (1, 1, 1, 68), False, True),
    (2, 4, 1, 65, 68, 128, torch.bfloat16, None, True, False),
    (2, 4, 2, 200, 300, 64, torch.bfloat16, None, False, False),
    (1, 4, 4, 1024, 1024, 128, torch.bfloat16, (1, 1, 1024, 1024), True, False),
]
REFERENCE = FlashConfig(64, 64, 4, 2)
DEVICE = "cuda"


def _inputs(b, hq, hk, lq, lk, d, dtype, bias_shape, transposed):
    gen = torch.Generator(device=DEVICE).manual_seed(0)

    def rand(*shape, dt=dtype):
        if transposed:  # (B, L, H, D) storage seen as (B, H, L, D)
            x = torch.randn(shape[0], shape[2], shape[1], shape[3], generator=gen, device=DEVICE)
            return x.to(dt).transpose(1, 2)
        return torch.randn(*shape, generator=gen, device=DEVICE).to(dt)

    q, do = rand(b, hq, lq, d), rand(b, hq, lq, d)
    k, v = rand(b, hk, lk, d), rand(b, hk, lk, d)
    bias = None
    if bias_shape is not None:
        bias = torch.randn(bias_shape, generator=gen, device=DEVICE)
    return q, k, v, do, bias


def _backward(args: tuple, dkdv: FlashConfig, dq: FlashConfig) -> tuple:
    return G.gqa_backward(*args, config_dkdv=dkdv, config_dq=dq)


def _configs(names: list[str] | None) -> list[FlashConfig]:
    if names:
        return [FlashConfig(*map(int, n.split(","))) for n in names]
    every = (*BWD_CONFIGS, *FALLBACK_CONFIGS)  # fallbacks launch where no config fits
    return [FlashConfig(outer, *c) for c, outer in itertools.product(every, (64, 128))]


def races(repeats: int, configs: list[FlashConfig]) -> None:
    for b, hq, hk, lq, lk, d, dtype, bias_shape, causal, transposed in CASES:
        q, k, v, do, bias = _inputs(b, hq, hk, lq, lk, d, dtype, bias_shape, transposed)
        scale = d**-0.5
        out, lse = G.gqa_forward(q, k, v, None, bias, causal, scale, config=REFERENCE)

        grads = functools.partial(
            _backward, (do, None, q, k, v, out, lse, None, bias, causal, scale, bias is not None)
        )
        ref = grads(REFERENCE, REFERENCE)
        label = f"B{b} H{hq}/{hk} L{lq}/{lk} D{d} {str(dtype)[6:]} bias={bias_shape} "
        label += f"causal={causal} transposed={transposed}"
        for config, pass_ in itertools.product(configs, ("dkdv", "dq")):
            pinned = (config, REFERENCE) if pass_ == "dkdv" else (REFERENCE, config)
            try:
                runs = [grads(*pinned) for _ in range(repeats)]
            except triton.runtime.errors.OutOfResources:
                print(f"{label} {pass_} {tuple(config.__dict__.values())}: out of resources")
                continue
            names = ("dq", "dk", "dv", "dbias")
            moving = [
                n for i, n in enumerate(names)
                if runs[0][i] is not None and any(not torch.equal(r[i], runs[0][i]) for r in runs)
            ]  # fmt: skip
            diff = {
                n: round((runs[0][i].float() - ref[i].float()).abs().max().item(), 4)
                for i, n in enumerate(names) if ref[i] is not None
            }  # fmt: skip
            verdict = f"MOVING {moving}" if moving else "steady"
            print(f"{label} {pass_} {tuple(config.__dict__.values())}: {verdict} vs ref {diff}",
                  flush=True)  # fmt: skip


def timings(configs: list[FlashConfig]) -> None:
    b, h, length, d = 1, 16, 8192, 128
    flops = 2.5 * 4 * b * h * length * length * d
    for with_bias in (False, True):
        q, k, v, do, bias = _inputs(
            b, h, h, length, length, d, torch.bfloat16,
            (1, 1, length, length) if with_bias else None, False,
        )  # fmt: skip
        scale = d**-0.5
        out, lse = G.gqa_forward(q, k, v, None, bias, False, scale)
        for config in configs:
            call = functools.partial(
                _backward,
                (do, None, q, k, v, out, lse, None, bias, False, scale, with_bias),
                config,
                config,
            )
            try:
                ms = triton.testing.do_bench(call, warmup=5, rep=30)
            except triton.runtime.errors.OutOfResources:
                print(f"time bias={with_bias} {tuple(config.__dict__.values())}: out of resources")
                continue
            print(f"time bias={with_bias} {tuple(config.__dict__.values())}: {ms:.3f} ms "
                  f"{flops / ms * 1e-9:.1f} TFLOP/s", flush=True)  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--time", action="store_true")
    parser.add_argument("--configs", nargs="*", help="outer,inner,warps,stages each")
    args = parser.parse_args()
    configs = _configs(args.configs)
    races(args.repeats, configs)
    if args.time:
        timings(configs)


if __name__ == "__main__":
    main()
