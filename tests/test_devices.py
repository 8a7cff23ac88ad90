"""Device rules: native / emulated per device and precision, the CPU probe, and what results carry."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from harness import devices
from harness.api import DeviceInfo

T4 = DeviceInfo("cuda", "Tesla T4", capability=(7, 5))
P40 = DeviceInfo("cuda", "Tesla P40", capability=(6, 1))
P100 = DeviceInfo("cuda", "Tesla P100-PCIE-16GB", capability=(6, 0))
H100 = DeviceInfo("cuda", "NVIDIA H100 80GB HBM3", capability=(9, 0), bf16_native=True)
AVX2 = DeviceInfo("cpu", "AMD EPYC 7B13", isa="AVX2")
AMX = DeviceInfo("cpu", "Intel Xeon Platinum 8481C", bf16_native=True, isa="AVX512")


@pytest.mark.parametrize(("device", "precision", "level"), [
    (T4, "fp32", "native"), (T4, "fp16", "native"), (T4, "bf16", "emulated"),
    (P40, "fp16", "emulated"), (P40, "bf16", "emulated"), (P100, "fp16", "native"),
    (H100, "bf16", "native"), (H100, "bf16-autocast", "native"), (T4, "bf16-autocast", "emulated"),
    (AVX2, "bf16", "emulated"), (AVX2, "fp16", "emulated"), (AVX2, "fp32", "native"),
    (AMX, "bf16", "native"), (AMX, "fp16", "emulated"), (AMX, "int8", "unsupported"),
])
def test_levels(device: DeviceInfo, precision: str, level: str) -> None:
    assert devices.support(device, precision).level == level


def test_refusal_names_the_device_the_missing_feature_and_the_slowdown() -> None:
    support = devices.support(AVX2, "bf16")
    reason = support.refusal(allow_emulated=False)
    assert reason is not None
    assert reason.startswith("bf16 on AMD EPYC 7B13 is emulated: no AVX512-BF16 or AMX-BF16 "
                             "(torch CPU capability AVX2)")
    assert "10-50x slower than fp32" in reason and "--allow-emulated" in reason
    assert support.refusal(allow_emulated=True) is None
    assert devices.support(P40, "fp16").refusal(False).startswith("fp16 on Tesla P40 (sm_61) has no fast fp16")
    unknown = "precision 'int8': unknown dtype 'int8' (known: fp32, fp16, bf16)"
    assert devices.support(AMX, "int8").refusal(True) == unknown


def probe(forced: str | None) -> dict[str, str]:
    """The probe's verdicts in a fresh interpreter, with the override set or not."""
    env = {k: v for k, v in os.environ.items() if k != devices.FORCE_CPU_BF16}
    if forced:
        env[devices.FORCE_CPU_BF16] = forced
    code = "from harness import envinfo, devices; print(devices.verdicts(envinfo.device_info('cpu'))['bf16'])"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env)
    return {"stdout": out.stdout.strip(), "stderr": out.stderr}


def test_the_cpu_probe_reads_the_flags_and_can_be_forced_both_ways() -> None:
    flags = devices.cpu_flags()
    expected = "native" if flags & {"avx512_bf16", "amx_bf16", "bf16"} else "emulated"
    assert probe(None)["stdout"] == expected
    assert probe("emulated")["stdout"] == "emulated"
    assert probe("native")["stdout"] == "native"
    assert "HARNESS_CPU_BF16='fast': expected 'native' or 'emulated'" in probe("fast")["stderr"]


def test_results_carry_the_verdict_and_old_gpu_results_are_judged_by_capability() -> None:
    assert devices.recorded_support({"precision_support": {"bf16": "emulated"}}, "bf16-autocast") == "emulated"
    old_t4 = {"device_type": "cuda", "device_name": "Tesla T4", "device_capability": "7.5"}
    assert devices.recorded_support(old_t4, "bf16") == "emulated"
    assert devices.recorded_support({"device_type": "cuda", "device_name": "Tesla P40"}, "fp16") == "emulated"
    assert devices.recorded_support({"device_type": "cpu"}, "bf16") is None  # unknowable: not guessed
