"""The verified-kernel gate: refuse to run a kernel that was not verified on this device.

`is_verified(variant)` and `require_verified(variant)` read the verification records
(`attnverify.records`). With `ATTNVERIFY_REQUIRE_VERIFIED=1`, every public kernel function calls
`enforce_verified(variant, device)` and its first call on an unverified (kernel source, arch,
versions) raises `UnverifiedKernelError` naming the command that fixes it. The check runs once
per (variant, device) and process; later calls cost one set lookup. The environment variable is
read at that first call.

The verifier itself must call unverified kernels (that is how a record comes to exist):
`attnverify.verify.check` and `attnverify bench` run inside `verifier_calls()`, where the gate
lets calls through without remembering them, so `ATTNVERIFY_REQUIRE_VERIFIED=1` set for a whole
environment never stops the command its error message names.

Never imports `attnverify.verify` (kernels do not depend on the verifier).
"""

from __future__ import annotations

import contextlib
import os
import threading
from collections.abc import Iterator

import torch

from attnverify.records import load_records, normalize_device, record_status, records_path

REQUIRE_ENV = "ATTNVERIFY_REQUIRE_VERIFIED"

_checked: set[tuple[str, torch.device | str]] = set()
_verifier = threading.local()


class UnverifiedKernelError(RuntimeError):
    """A kernel was called without a valid verification record for this device."""


def verify_command(variant: str, device: torch.device | str | None = None) -> str:
    """The exact command that verifies `variant` on `device`: "attnverify verify --variant gqa --device cuda:0"."""
    return f"attnverify verify --variant {variant} --device {normalize_device(device)}"


def is_verified(variant: str, device: torch.device | str | None = None) -> bool:
    """True if a valid record exists for `variant` on `device` (None: cuda if available, else cpu).

    Valid: same kernel source sha256, arch, device name, torch and triton versions.

    Raises:
        ValueError: unknown variant (valid: varlen, gqa, fp8, paged, merge).
    """
    return record_status(variant, device).state == "verified"


def require_verified(variant: str, device: torch.device | str | None = None) -> None:
    """Raise `UnverifiedKernelError` unless `variant` is verified on `device`.

    The message says whether the record is missing or stale (and which fields changed), where
    the records live, and the command to run.

    Raises:
        UnverifiedKernelError: no valid record.
        ValueError: unknown variant.
    """
    records, problems = load_records()
    status = record_status(variant, device, records=records)
    if status.state == "verified":
        return
    lines = [
        f"attnverify kernel {variant!r} is not verified on {normalize_device(device)}: "
        f"{status.describe()}.",
        f"Records: {records_path()}.",
        *problems,
        f"Run: {verify_command(variant, device)}",
    ]
    raise UnverifiedKernelError("\n".join(lines))


def enforce_verified(variant: str, device: torch.device) -> None:
    """Called by every public kernel function: with `ATTNVERIFY_REQUIRE_VERIFIED=1`, the first
    call per (variant, device) runs `require_verified`; otherwise, and afterwards, a no-op.

    A failed check is not cached: every later call raises again until a record exists. Inside
    `verifier_calls()` it returns at once and caches nothing.
    """
    key = (variant, device)
    if key in _checked or getattr(_verifier, "depth", 0):
        return
    if os.environ.get(REQUIRE_ENV, "0") == "1":
        require_verified(variant, device)
    _checked.add(key)


@contextlib.contextmanager
def verifier_calls() -> Iterator[None]:
    """Kernel calls inside are the verifier's own (check, bench): the gate lets them through and
    remembers nothing, so later calls outside are still checked. Nests; per thread."""
    _verifier.depth = getattr(_verifier, "depth", 0) + 1
    try:
        yield
    finally:
        _verifier.depth -= 1


def clear_cache() -> None:
    """Forget which (variant, device) pairs were checked (the next call checks again)."""
    _checked.clear()


__all__ = [
    "REQUIRE_ENV",
    "UnverifiedKernelError",
    "clear_cache",
    "enforce_verified",
    "is_verified",
    "require_verified",
    "verifier_calls",
    "verify_command",
]
