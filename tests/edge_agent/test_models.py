"""The on-board models: the shipped files come from the training script, load with provider fallback, pass
their health check, predict what the simulator's physics says, refuse unfit inputs, and refuse to load at all
when tampered with, wrongly shaped or failing their health check."""

from __future__ import annotations

import math
import shutil
import subprocess
import sys
from pathlib import Path

import msgspec
import pytest

from edge_agent.errors import InvalidInput, ModelError
from edge_agent.models import SHIPPED, EdgeModel, available_providers, load_shipped, read_manifest
from protocols import encode_manifest
from sim_hw.autopilot import CAPACITY_MAH
from tests.harness import ROOT

JETSON = ["TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"]


@pytest.fixture(scope="module")
def models() -> dict[str, EdgeModel]:
    return load_shipped(["battery", "delivery_risk"], providers=JETSON, threads=1)


def test_the_shipped_models_are_what_the_seeded_training_script_writes(tmp_path: Path) -> None:
    subprocess.run([sys.executable, "scripts/train_edge_models.py", "--out", str(tmp_path)], cwd=ROOT, check=True,
                   capture_output=True)
    shipped = sorted(p.name for p in SHIPPED.iterdir())
    assert shipped == sorted(p.name for p in tmp_path.iterdir())
    for name in shipped:
        assert (tmp_path / name).read_bytes() == (SHIPPED / name).read_bytes(), name


def test_missing_providers_fall_back_in_order_to_the_cpu(models: dict[str, EdgeModel]) -> None:
    expected = [p for p in JETSON if p in available_providers()]
    for model in models.values():
        assert model.providers == expected and model.providers[-1] == "CPUExecutionProvider"


def test_the_battery_model_knows_the_simulated_battery(models: dict[str, EdgeModel]) -> None:
    battery = models["battery"]
    for pct, current, speed, climb in ((50, 20.0, 10.0, 0.5), (80, 18.0, 0.0, 0.0), (20, 26.0, 12.0, 2.0),
                                       (60, 5.0, 2.0, 0.0)):
        voltage = 4 * (3.5 + 0.7 * pct / 100) - current * 0.02
        truth = pct / 100 * CAPACITY_MAH / (current * 1000 / 3600)
        assert battery.predict([pct, voltage, current, speed, climb]) == pytest.approx(truth, rel=0.15)
    # Less charge, less time; more load, less time.
    assert battery.predict([30, 14.7, 20, 10, 0]) < battery.predict([60, 15.5, 20, 10, 0])
    assert battery.predict([60, 15.5, 30, 10, 0]) < battery.predict([60, 15.5, 20, 10, 0])


def test_the_risk_model_rises_as_the_deadline_nears(models: dict[str, EdgeModel]) -> None:
    risk = models["delivery_risk"]
    scores = [risk.predict([3000, left, 10, 1, 80]) for left in (2000, 600, 300, 250, 100, -60)]
    assert scores == sorted(scores) and scores[0] < 0.1 and scores[-1] > 0.95
    assert all(0 <= s <= 1 for s in scores)


@pytest.mark.parametrize(("values", "problem"), [
    ([50, 15.0, 20.0, 10.0], "4 inputs"),
    ([50, 15.0, math.nan, 10.0, 0.0], "current_a is nan"),
    ([50, 15.0, 20.0, math.inf, 0.0], "groundspeed_m_s is inf"),
    ([150, 15.0, 20.0, 10.0, 0.0], "remaining_pct = 150 is outside [0, 100]"),
    ([50, 15.0, -3.0, 10.0, 0.0], "current_a = -3 is outside"),
    ([50, "15", 20.0, 10.0, 0.0], "voltage_v is str"),
])
def test_unfit_inputs_are_skipped_and_counted_never_fed(models: dict[str, EdgeModel], values: list[object],
                                                        problem: str) -> None:
    battery = models["battery"]
    calls, skipped = battery.counters.calls, battery.counters.skipped
    with pytest.raises(InvalidInput, match=problem.replace("[", r"\[")):
        battery.predict(values)  # type: ignore[arg-type]
    assert battery.counters.calls == calls and battery.counters.skipped == skipped + 1
    assert battery.predict([50, 15.0, 20.0, 10.0, 0.0]) > 0  # and the next good one runs


def copy_model(tmp_path: Path, name: str) -> tuple[Path, Path]:
    manifest = next(SHIPPED.glob(f"{name}-*.json"))
    shutil.copy(manifest, tmp_path / manifest.name)
    shutil.copy(manifest.with_suffix(".onnx"), tmp_path / manifest.with_suffix(".onnx").name)
    return tmp_path / manifest.name, tmp_path / manifest.with_suffix(".onnx").name


def test_a_tampered_file_a_wrong_shape_and_a_failed_health_check_never_load(tmp_path: Path) -> None:
    import hashlib

    manifest_path, onnx_path = copy_model(tmp_path, "battery")
    manifest = read_manifest(manifest_path)
    good = hashlib.sha256(onnx_path.read_bytes()).hexdigest()
    assert EdgeModel.load(onnx_path, manifest, providers=["CPUExecutionProvider"], sha256=good).version == "1.0.0"

    tampered = bytearray(onnx_path.read_bytes())
    tampered[-5] ^= 0x01
    onnx_path.write_bytes(bytes(tampered))
    with pytest.raises(ModelError, match="does not match its sha256"):
        EdgeModel.load(onnx_path, manifest, providers=["CPUExecutionProvider"], sha256=good)

    _, risk_onnx = copy_model(tmp_path, "delivery_risk")
    wrong_input = msgspec.structs.replace(manifest, input_name="features", output_name="remaining_s")
    with pytest.raises(ModelError, match="must give one float32 output 'remaining_s'"):
        EdgeModel.load(risk_onnx, wrong_input, providers=["CPUExecutionProvider"])

    manifest_path, onnx_path = copy_model(tmp_path, "battery")
    check = msgspec.structs.replace(manifest.health_check,
                                    outputs=[v * 1.5 for v in manifest.health_check.outputs])
    broken = msgspec.structs.replace(manifest, health_check=check)
    manifest_path.write_bytes(encode_manifest(broken))
    with pytest.raises(ModelError, match="health check failed"):
        EdgeModel.load(onnx_path, read_manifest(manifest_path), providers=["CPUExecutionProvider"])

    (tmp_path / "junk.onnx").write_bytes(b"not a model")
    with pytest.raises(ModelError, match="no execution provider could load it"):
        EdgeModel.load(tmp_path / "junk.onnx", manifest, providers=["CPUExecutionProvider"])


def test_a_broken_manifest_names_the_field(tmp_path: Path) -> None:
    manifest_path, _ = copy_model(tmp_path, "battery")
    raw = msgspec.json.decode(manifest_path.read_bytes())
    raw["inputs"][0]["min"] = "zero"
    manifest_path.write_bytes(msgspec.json.encode(raw))
    with pytest.raises(ModelError, match=r"inputs\[0\]\.min"):
        read_manifest(manifest_path)
