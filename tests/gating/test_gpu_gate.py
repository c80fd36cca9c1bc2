"""The T4 throughput gate's verdict and data, and the GPU identity recorded
beside every figure (the gpu layer runs them on a GPU; here, what decides them)."""

from __future__ import annotations

import math

import pytest

from m2det_impl.environment import parse_nvidia_smi
from m2det_impl.exit_codes import EXIT_GATE_FAILED, EXIT_OK
from m2det_impl.gating.gates import min_throughput_gate
from m2det_impl.gating.machine import MACHINE_KEYS, machine_identity
from m2det_impl.published import throughput_table
from m2det_impl.resources import read_data_json

pytestmark = pytest.mark.cpu


@pytest.mark.parametrize("measured, code", [
    (None, EXIT_GATE_FAILED),  # not measured: fails, never passes
    (math.nan, EXIT_GATE_FAILED),
    (math.inf, EXIT_GATE_FAILED),
    (44.99, EXIT_GATE_FAILED),
    (45.0, EXIT_OK),  # exactly the floor
    (90.0, EXIT_OK),
])
def test_the_throughput_gate_fails_below_the_floor_and_when_unmeasured(measured, code):
    verdict = min_throughput_gate(measured, 50.0, 0.1, "tensorrt batch 1", "the engine did not build")
    assert verdict.code == code
    assert verdict.message.startswith("gate passed" if code == EXIT_OK else "gate FAILED")
    if measured is None:
        assert "the engine did not build" in verdict.message and "floor 45.000" in verdict.message


def test_the_gpu_gate_is_data_against_the_guides_t4_table():
    gates = read_data_json("gates.json")
    gate = gates["throughput_gpu"]
    assert (gate["backend"], gate["platform"], gate["published"]) == ("tensorrt", "T4", "guide")
    assert gate["reason"].strip()
    assert 0 < gate["relative_tolerance"] < 0.5 and gate["warmup"] >= 1 and gate["repeats"] >= 3
    t4 = throughput_table(gate["published"], gate["platform"])
    assert set(t4) == {1, 4, 8, 16, 32} and all(v > 0 for v in t4.values())
    assert gates["throughput"]["platform"] == "310P3"  # next to the 310P's, not instead of it


def test_nvidia_smi_gives_model_driver_and_cuda():
    banner = ("| NVIDIA-SMI 535.104.05   Driver Version: 535.104.05   CUDA Version: 12.2     |\n"
              "| GPU  Name                 Persistence-M | Bus-Id        Disp.A |")
    assert parse_nvidia_smi("Tesla T4, 535.104.05\n", banner) == {"gpu": "Tesla T4", "driver": "535.104.05",
                                                                  "cuda": "12.2"}
    assert parse_nvidia_smi("NVIDIA H200, 550.54.15", None) == {"gpu": "NVIDIA H200", "driver": "550.54.15"}
    failed = "NVIDIA-SMI has failed because it couldn't communicate with the NVIDIA driver."
    assert parse_nvidia_smi(failed, failed) == {}
    assert parse_nvidia_smi("Failed to initialize NVML: Unknown Error, 8", None) == {}  # a comma, no driver version
    assert parse_nvidia_smi(None, None) == {}


def test_the_machine_identity_carries_the_gpu_software():
    gpu = {"gpu": "Tesla T4", "driver": "535.104.05", "cuda": "12.2", "tensorrt": "10.3.0"}
    identity = machine_identity(npu={}, gpu=gpu)
    assert {k: identity[k] for k in ("gpu", "gpu_driver", "cuda", "tensorrt")} == {
        "gpu": "Tesla T4", "gpu_driver": "535.104.05", "cuda": "12.2", "tensorrt": "10.3.0"}
    assert set(MACHINE_KEYS) == set(identity)  # a baseline can state each of them
