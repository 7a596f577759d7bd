"""Kernel tests (the root conftest selects the Triton interpreter when there is no GPU; on a
CUDA machine kernels compile).

Fixture `judge` compares a kernel's tensors with the float64 oracle under the project's
tolerance policy (`attnverify.verify.tolerance`, rules b-d, exact structural zeros).
"""

from __future__ import annotations

import pytest
import torch

from attnverify.verify.compare import compare
from attnverify.verify.tolerance import arch_kind, lookup

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
CPU_DTYPES = (torch.float16, torch.float32)  # bf16 tl.dot is wrong under the interpreter


def _judge(
    variant: str,
    got: dict[str, torch.Tensor],
    ref: dict[str, torch.Tensor],
    base: dict[str, torch.Tensor],
    dtype: torch.dtype,
    zeros: dict[str, torch.Tensor] | None = None,
) -> list[str]:
    """Failure messages of every quantity in `got` (empty list: all pass)."""
    name = str(dtype).removeprefix("torch.")
    grads = [n for n in got if n.startswith("d")]
    gmag = max((float(ref[n].abs().max()) for n in grads if ref[n].numel()), default=0.0)
    failures = []
    for quantity, value in got.items():
        rule = lookup(variant, name, quantity, arch_kind(value.device))
        qdtype = torch.float32 if quantity == "lse" else dtype
        c = compare(
            f"{variant}/{name}/{quantity}",
            quantity,
            value,
            ref[quantity],
            base[quantity],
            rule,
            qdtype,
            zeros=(zeros or {}).get(quantity),
            magnitude=gmag if quantity in grads else None,
        )
        if not c.passed:
            failures.append(str(c))
    return failures


@pytest.fixture(scope="session")
def judge():
    """judge(variant, got, ref, base, dtype, zeros=None) -> list of failure messages."""
    return _judge


@pytest.fixture
def op_calls(monkeypatch: pytest.MonkeyPatch):
    """op_calls(module, name) wraps the custom op `module.name` for this test and returns the
    list it fills: per call of the op, whether its first input requires a gradient."""

    def spy(module: object, name: str) -> list[bool]:
        calls: list[bool] = []
        op = getattr(module, name)

        def counted(*args: object) -> object:
            calls.append(args[0].requires_grad)
            return op(*args)

        monkeypatch.setattr(module, name, counted)
        return calls

    return spy
