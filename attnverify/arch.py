"""Device and architecture model: what an arch supports and which policies apply to it.

`current_arch()` detects the arch of a device (CUDA, ROCm, or the Triton CPU interpreter).
`ATTNVERIFY_ARCH=<name>` overrides detection (e.g. `sm90`, `gfx1151`, `cpu-interpreter`) so the
policy rules below are unit-tested on a CPU machine with fake arches.

Policies that live here and nowhere else:
- which fp8 dtypes an arch's matrix units take (`Arch.fp8_dtypes`);
- whether fp8 V must be stored sequence-contiguous (K-major B operand of P @ V):
  NVIDIA sm89 <= cc < sm100 (Ada, Hopper) only (`Arch.fp8_v_k_major`);
- the matrix unit's K granularity, to which head dims are padded (`Arch.mma_k`).
"""

from __future__ import annotations

import functools
import os
from dataclasses import dataclass, replace

import torch

ARCH_ENV = "ATTNVERIFY_ARCH"

OCP_FP8 = (torch.float8_e4m3fn, torch.float8_e5m2)
FNUZ_FP8 = (torch.float8_e4m3fnuz, torch.float8_e5m2fnuz)
ALL_FP8 = OCP_FP8 + FNUZ_FP8


@dataclass(frozen=True)
class Arch:
    """One GPU architecture (or the CPU interpreter) and the policies that depend on it.

    Attributes:
        vendor: "nvidia", "amd" or "cpu".
        name: "sm90", "gfx942", "cpu-interpreter", ...
        capability: (major, minor) for NVIDIA; (gfx major, minor) for AMD; (0, 0) for cpu.
        fp8_dtypes: fp8 dtypes the matrix units accept; empty when the arch has no fp8.
        fp8_v_k_major: fp8 P @ V needs V sequence-contiguous (`v.stride(-2) == 1`).
        mma_k: K granularity of the matrix unit; head dims are padded to a multiple of it.
        num_sms: multiprocessors (compute units); used for split and grid choices.
        is_interpreter: kernels run through `TRITON_INTERPRET=1` on the CPU.
        device_name: the device's marketing name where detected ("" for fake arches).
    """

    vendor: str
    name: str
    capability: tuple[int, int]
    fp8_dtypes: tuple[torch.dtype, ...] = ()
    fp8_v_k_major: bool = False
    mma_k: int = 16
    num_sms: int = 1
    is_interpreter: bool = False
    device_name: str = ""

    @property
    def has_fp8(self) -> bool:
        return bool(self.fp8_dtypes)

    def fp8_dtype_names(self) -> str:
        """Comma-separated names of the supported fp8 dtypes ("none" if the arch has no fp8)."""
        return ", ".join(str(d).removeprefix("torch.") for d in self.fp8_dtypes) or "none"


def _nvidia(major: int, minor: int, num_sms: int = 132) -> Arch:
    cc = major * 10 + minor
    fp8 = OCP_FP8 if cc >= 89 else ()
    return Arch(
        vendor="nvidia",
        name=f"sm{cc}",
        capability=(major, minor),
        fp8_dtypes=fp8,
        fp8_v_k_major=89 <= cc < 100,
        mma_k=16,
        num_sms=num_sms,
    )


def _amd(name: str, num_sms: int = 304) -> Arch:
    digits = name.removeprefix("gfx")  # major (decimal), minor (hex digit), stepping (hex digit)
    major, minor = int(digits[:-2]), int(digits[-2], 16)
    if name in ("gfx940", "gfx941", "gfx942"):
        fp8 = FNUZ_FP8
    elif name == "gfx950" or major >= 12:
        fp8 = OCP_FP8
    else:
        fp8 = ()
    return Arch(
        vendor="amd",
        name=name,
        capability=(major, minor),
        fp8_dtypes=fp8,
        fp8_v_k_major=False,
        mma_k=16,
        num_sms=num_sms,
    )


CPU_INTERPRETER = Arch(
    vendor="cpu",
    name="cpu-interpreter",
    capability=(0, 0),
    fp8_dtypes=OCP_FP8,
    fp8_v_k_major=False,
    mma_k=16,
    num_sms=4,
    is_interpreter=True,
)


def arch_from_name(name: str) -> Arch:
    """Build the `Arch` for a name such as `sm90`, `sm89`, `gfx942`, `gfx1151`, `cpu-interpreter`.

    Raises:
        ValueError: the name is none of `smNN`, `smNNN`, `gfxNNN[N]`, `cpu-interpreter`.
    """
    key = name.strip().lower()
    if key in ("cpu", "cpu-interpreter", "interpreter"):
        return CPU_INTERPRETER
    if key.startswith("sm") and key[2:].isdigit() and len(key) >= 4:
        cc = int(key[2:])
        return _nvidia(cc // 10, cc % 10)
    digits = key[3:]
    if (
        key.startswith("gfx")
        and len(digits) >= 3
        and digits[:-2].isdigit()
        and all(c in "0123456789abcdef" for c in digits[-2:])
    ):
        return _amd(key)
    raise ValueError(
        f"{ARCH_ENV} / arch name must be one of smNN (e.g. sm80, sm90, sm100), gfxNNN "
        f"(e.g. gfx942, gfx1151) or cpu-interpreter; got {name!r}"
    )


def interpreter_active() -> bool:
    """True when Triton kernels run through the CPU interpreter (`TRITON_INTERPRET=1`)."""
    return os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")


def current_arch(device: torch.device | str | None = None) -> Arch:
    """The arch kernels run on for `device` (default: the current CUDA device, else the CPU).

    `ATTNVERIFY_ARCH` overrides detection; its policies then apply to whatever device runs.
    A CPU device, or no GPU, means the Triton interpreter.
    """
    override = os.environ.get(ARCH_ENV)
    if override:
        return arch_from_name(override)
    dev = torch.device(device) if device is not None else None
    if dev is not None and dev.type == "cpu":
        return CPU_INTERPRETER
    if not torch.cuda.is_available():
        return CPU_INTERPRETER
    index = dev.index if dev is not None and dev.index is not None else torch.cuda.current_device()
    return _detected(index)


@functools.cache
def _detected(index: int) -> Arch:
    """The arch of GPU `index`, read from its properties once per process (launch paths ask on
    every call; the properties do not change)."""
    props = torch.cuda.get_device_properties(index)
    if torch.version.hip:
        gcn = getattr(props, "gcnArchName", "gfx000").split(":")[0]
        arch = _amd(gcn, props.multi_processor_count)
    else:
        arch = _nvidia(props.major, props.minor, props.multi_processor_count)
    return replace(arch, device_name=props.name)


__all__ = [
    "ALL_FP8",
    "ARCH_ENV",
    "CPU_INTERPRETER",
    "FNUZ_FP8",
    "OCP_FP8",
    "Arch",
    "arch_from_name",
    "current_arch",
    "interpreter_active",
]
