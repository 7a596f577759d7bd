"""Every backward config of the flash core pinned in turn on varlen cases, three repeats each:
dq/dk/dv max error against the float64 oracle (a moving error is a race). GPU only.

Usage: PYTHONPATH=. python3 ci/flash_configs_check.py
"""

from __future__ import annotations

import torch

from attnverify import reference as R
from attnverify.kernels import varlen as V
from attnverify.kernels._flash import BWD_CONFIGS, FlashConfig

CASES = [  # seqlens_q, seqlens_k, heads, head dim (causal)
    ([0, 40], [3, 15], 1, 64),
    ([69, 63, 200, 336], [1100, 160, 256, 63], 3, 128),
]
FORWARD = FlashConfig(128, 64, 4, 2)


def _cu(lengths: list[int]) -> torch.Tensor:
    return torch.tensor([0, *torch.tensor(lengths).cumsum(0).tolist()], dtype=torch.int32)


def main() -> None:
    torch.manual_seed(0)
    for lq, lk, heads, d in CASES:
        cq, ck = _cu(lq).cuda(), _cu(lk).cuda()
        q, do = (torch.randn(sum(lq), heads, d, dtype=torch.float16, device="cuda") for _ in "12")
        k, v = (torch.randn(sum(lk), heads, d, dtype=torch.float16, device="cuda") for _ in "12")
        ref = [x.double().requires_grad_() for x in (q, k, v)]
        R.varlen_attention(*ref, cq, ck, causal=True).backward(do.double())
        out, lse = V.varlen_forward(q, k, v, cq, ck, True, d**-0.5, config=FORWARD)
        for inner, warps, stages in BWD_CONFIGS:
            for outer in (64, 128):
                config = FlashConfig(outer, inner, warps, stages)
                errors = []
                for _ in range(3):
                    grads = V.varlen_backward(
                        do, None, q, k, v, out, lse, cq, ck, True, d**-0.5,
                        config_dkdv=config, config_dq=config,
                    )  # fmt: skip
                    errors.append(
                        tuple(round((g.double() - r.grad).abs().max().item(), 4)
                              for g, r in zip(grads, ref, strict=True))
                    )  # fmt: skip
                moving = "MOVING" if len(set(errors)) > 1 else "steady"
                print(f"{lq} {lk} bwd {config}: dq/dk/dv max error {errors} {moving}", flush=True)


if __name__ == "__main__":
    main()
