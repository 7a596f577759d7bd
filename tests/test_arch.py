"""Unit tests of attnverify/arch.py with fake arches: fp8 support and V-layout policy per arch,
the ATTNVERIFY_ARCH override, detection from (faked) device properties, bad names."""

from __future__ import annotations

from collections.abc import Iterator
from types import SimpleNamespace

import pytest
import torch

from attnverify import arch
from attnverify.arch import (
    ARCH_ENV,
    CPU_INTERPRETER,
    FNUZ_FP8,
    OCP_FP8,
    arch_from_name,
    current_arch,
)

# name -> (vendor, fp8 dtypes, fp8_v_k_major, is_interpreter)
EXPECTED = {
    "sm80": ("nvidia", (), False, False),
    "sm86": ("nvidia", (), False, False),
    "sm89": ("nvidia", OCP_FP8, True, False),
    "sm90": ("nvidia", OCP_FP8, True, False),
    "sm100": ("nvidia", OCP_FP8, False, False),
    "sm120": ("nvidia", OCP_FP8, False, False),
    "gfx90a": ("amd", (), False, False),
    "gfx942": ("amd", FNUZ_FP8, False, False),
    "gfx950": ("amd", OCP_FP8, False, False),
    "gfx1100": ("amd", (), False, False),
    "gfx1151": ("amd", (), False, False),
    "gfx1201": ("amd", OCP_FP8, False, False),
    "cpu-interpreter": ("cpu", OCP_FP8, False, True),
}


@pytest.mark.parametrize("name", list(EXPECTED))
def test_arch_policies(name: str) -> None:
    """fp8 dtypes and the K-major V rule (NVIDIA sm89 <= cc < sm100 only) per arch."""
    vendor, fp8, k_major, interpreter = EXPECTED[name]
    a = arch_from_name(name)
    assert (a.name, a.vendor) == (name, vendor)
    assert a.fp8_dtypes == fp8 and a.has_fp8 == bool(fp8)
    assert a.fp8_v_k_major is k_major
    assert a.is_interpreter is interpreter
    expected_names = ", ".join(str(d).removeprefix("torch.") for d in fp8) or "none"
    assert a.fp8_dtype_names() == expected_names


@pytest.mark.parametrize(
    ("name", "capability"),
    [("sm80", (8, 0)), ("sm89", (8, 9)), ("sm90", (9, 0)), ("sm100", (10, 0)), ("sm120", (12, 0))],
)
def test_arch_nvidia_capability(name: str, capability: tuple[int, int]) -> None:
    """smNN / smNNN names give torch.cuda.get_device_capability()'s (major, minor)."""
    assert arch_from_name(name).capability == capability


@pytest.mark.parametrize(("name", "capability"), [("gfx942", (9, 4)), ("gfx1151", (11, 5))])
def test_arch_amd_capability_matches_torch(name: str, capability: tuple[int, int]) -> None:
    """gfx<major><minor><stepping>: the capability is (major, minor), as torch on ROCm reports."""
    assert arch_from_name(name).capability == capability


@pytest.mark.parametrize("name", ["cpu", "interpreter", "CPU-Interpreter", " cpu-interpreter "])
def test_arch_cpu_aliases(name: str) -> None:
    assert arch_from_name(name) == CPU_INTERPRETER


@pytest.mark.parametrize("name", ["SM90", " sm90 ", "Gfx942"])
def test_arch_names_are_case_and_space_insensitive(name: str) -> None:
    assert arch_from_name(name) == arch_from_name(name.strip().lower())


@pytest.mark.parametrize("name", ["", "sm", "sm8", "sm9x", "gfx", "gfx12", "gfx94z", "tpu", "h100"])
def test_arch_bad_name(name: str) -> None:
    """A bad name raises ValueError naming ATTNVERIFY_ARCH and the valid forms."""
    with pytest.raises(
        ValueError, match=f"{ARCH_ENV} / arch name must be one of smNN.*got {name!r}"
    ):
        arch_from_name(name)


def test_arch_bad_gfx_major_names_the_variable() -> None:
    with pytest.raises(ValueError, match=ARCH_ENV):
        arch_from_name("gfxa42")


@pytest.mark.parametrize("name", ["sm90", "gfx942", "gfx1151", "gfx1201", "sm100"])
def test_arch_env_override(monkeypatch: pytest.MonkeyPatch, name: str) -> None:
    """ATTNVERIFY_ARCH overrides detection, for any device argument."""
    monkeypatch.setenv(ARCH_ENV, name)
    assert current_arch() == arch_from_name(name)
    assert current_arch("cpu") == arch_from_name(name)


def test_arch_env_override_bad_name(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(ARCH_ENV, "sm9000x")
    with pytest.raises(ValueError, match=f"{ARCH_ENV}.*got 'sm9000x'"):
        current_arch()


def test_arch_without_gpu_is_the_interpreter(monkeypatch: pytest.MonkeyPatch) -> None:
    """No override and no GPU (or a CPU device) means the Triton interpreter."""
    monkeypatch.delenv(ARCH_ENV, raising=False)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert current_arch() == CPU_INTERPRETER
    assert current_arch(torch.device("cpu")) == CPU_INTERPRETER
    monkeypatch.setenv(ARCH_ENV, "")
    assert current_arch() == CPU_INTERPRETER


@pytest.fixture(autouse=True)
def fresh_detection() -> Iterator[None]:
    """`current_arch` reads a GPU's properties once per process; each fake GPU needs a fresh
    read, and the real one after the test."""
    arch._detected.cache_clear()
    yield
    arch._detected.cache_clear()


def test_arch_reads_gpu_properties_once(monkeypatch: pytest.MonkeyPatch) -> None:
    """Launch paths ask for the arch on every call: the properties are read once per GPU."""
    fake_gpu(monkeypatch, None, major=9, minor=0, multi_processor_count=132, name="H100")
    reads = []
    props = torch.cuda.get_device_properties
    monkeypatch.setattr(
        torch.cuda, "get_device_properties", lambda index: reads.append(index) or props(index)
    )
    assert current_arch().name == current_arch().name == "sm90"
    assert reads == [0]


def fake_gpu(monkeypatch: pytest.MonkeyPatch, hip: str | None, **props: object) -> None:
    """Pretend one GPU with `props` is visible (CUDA, or ROCm when `hip` is a version)."""
    monkeypatch.delenv(ARCH_ENV, raising=False)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)
    monkeypatch.setattr(torch.cuda, "get_device_properties", lambda index: SimpleNamespace(**props))
    monkeypatch.setattr(arch.torch.version, "hip", hip)


@pytest.mark.parametrize(
    ("props", "name", "k_major"),
    [
        (
            {"major": 9, "minor": 0, "multi_processor_count": 132, "name": "NVIDIA H100 80GB HBM3"},
            "sm90",
            True,
        ),
        (
            {"major": 8, "minor": 9, "multi_processor_count": 128, "name": "NVIDIA L40S"},
            "sm89",
            True,
        ),
        (
            {"major": 10, "minor": 0, "multi_processor_count": 148, "name": "NVIDIA B200"},
            "sm100",
            False,
        ),
        (
            {"major": 8, "minor": 0, "multi_processor_count": 108, "name": "NVIDIA A100-SXM4-80GB"},
            "sm80",
            False,
        ),
    ],
)
def test_arch_detects_nvidia(
    monkeypatch: pytest.MonkeyPatch, props: dict, name: str, k_major: bool
) -> None:
    fake_gpu(monkeypatch, None, **props)
    a = current_arch()
    assert (a.name, a.vendor, a.fp8_v_k_major) == (name, "nvidia", k_major)
    assert a.num_sms == props["multi_processor_count"] and a.device_name == props["name"]
    assert current_arch("cuda:0") == a


@pytest.mark.parametrize(
    ("gcn", "name", "fp8"),
    [
        ("gfx942:sramecc+:xnack-", "gfx942", FNUZ_FP8),
        ("gfx1151", "gfx1151", ()),
        ("gfx1201", "gfx1201", OCP_FP8),
    ],
)
def test_arch_detects_amd(monkeypatch: pytest.MonkeyPatch, gcn: str, name: str, fp8: tuple) -> None:
    fake_gpu(
        monkeypatch,
        "6.2",
        major=9,
        minor=4,
        multi_processor_count=304,
        name="AMD GPU",
        gcnArchName=gcn,
    )
    a = current_arch()
    assert (a.name, a.vendor, a.fp8_dtypes, a.fp8_v_k_major) == (name, "amd", fp8, False)
    assert a.num_sms == 304 and a.device_name == "AMD GPU"
