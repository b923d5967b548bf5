"""Train the models the edge agent ships with, on simulator data, and export each to ONNX with its manifest.

    .venv/bin/python scripts/train_edge_models.py --seed 7 --out edge_agent/models

- ``battery``: the flight (or drive) time left, in seconds, from the battery's state of charge, voltage and
  current, and the motion (ground speed, climb rate). Samples come from the simulated autopilot's battery
  (``sim_hw.autopilot``: capacity, cells, internal resistance, current by flight state), with sensor noise and
  a future load that varies around the present one. The model is linear in the logarithms of its inputs
  (time left = charge / current is a product of powers), fitted by least squares.
- ``delivery_risk``: the probability that the job under way arrives after its deadline, from the distance
  still to go, the time left, the speed, the stops left and the battery. Samples: trips whose speed ahead
  varies around the present one (traffic, wind) and whose stops each take a random time. Logistic regression
  on the ratio of the speed needed to the speed now, the stops per minute left and the battery, fitted by
  gradient descent.

Both fits are seeded, so the same seed writes the same files. A fifth of the samples is held out; the report
gives the battery model's median relative error and the risk model's log loss, accuracy and calibration on
them. Each model's manifest (``protocols.ModelManifest``) carries its input ranges, reference inputs and
outputs for the health check (computed by onnxruntime on the exported file), and the training deciles of
every input and of the score as the drift reference.
"""

from __future__ import annotations

import argparse
import hashlib
import sys
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from coordinator.onnx_models import save_graph
from protocols import HealthCheck, Histogram, InputSpec, ModelManifest, encode_manifest
from sim_hw.autopilot import CAPACITY_MAH, CELLS, INTERNAL_RESISTANCE_OHM

Floats = npt.NDArray[np.float64]
VERSION = "1.0.0"
BATTERY_INPUTS = [InputSpec("remaining_pct", 0, 100, "%"), InputSpec("voltage_v", 0, 60, "V"),
                  InputSpec("current_a", 0, 200, "A"), InputSpec("groundspeed_m_s", 0, 60, "m/s"),
                  InputSpec("climb_m_s", -30, 30, "m/s")]
RISK_INPUTS = [InputSpec("distance_m", 0, 200_000, "m"), InputSpec("time_left_s", -86_400, 86_400, "s"),
               InputSpec("speed_m_s", 0, 60, "m/s"), InputSpec("stops_left", 0, 10),
               InputSpec("battery_pct", 0, 100, "%")]
FLOOR = 0.05
"""Inputs are floored here before their logarithm (a vehicle standing still, a battery at 0 %)."""


def battery_samples(rng: np.random.Generator, n: int) -> tuple[Floats, Floats]:
    flying = rng.random(n) < 0.7
    speed = np.where(flying, rng.uniform(0, 15, n), rng.uniform(0, 3, n))
    climb = np.where(flying, rng.normal(0, 1.0, n), 0.0)
    current = np.where(flying, 18.0 + 4.0 * np.abs(climb), 2.0 + 1.5 * speed)
    pct = rng.uniform(3, 100, n)
    voltage = CELLS * (3.5 + 0.7 * pct / 100) - current * INTERNAL_RESISTANCE_OHM + rng.normal(0, 0.05, n)
    measured = np.maximum(0.1, current + rng.normal(0, 0.3, n))
    future = current * np.exp(rng.normal(0, 0.08, n))  # the load ahead differs from the load now
    remaining_s = pct / 100 * CAPACITY_MAH / (future * 1000 / 3600)
    return np.column_stack([pct, voltage, measured, speed, climb]), remaining_s


def risk_samples(rng: np.random.Generator, n: int) -> tuple[Floats, Floats]:
    distance = rng.uniform(100, 15_000, n)
    nominal = rng.uniform(3, 15, n)
    stops = rng.integers(1, 3, n).astype(float)
    time_left = distance / nominal * rng.uniform(0.6, 2.5, n) + stops * 40
    speed_now = nominal * rng.uniform(0.5, 1.3, n)
    ahead = nominal * rng.uniform(0.55, 1.15, n)
    holds = stops * rng.uniform(20, 90, n)
    battery = rng.uniform(10, 100, n)
    late = (distance / ahead + holds > time_left).astype(float)
    return np.column_stack([distance, time_left, speed_now, stops, battery]), late


def risk_features(x: Floats) -> Floats:
    """What the risk model's graph computes from its raw inputs (kept in step with ``risk_graph``)."""
    needed = x[:, 0] / np.maximum(x[:, 1], 1.0)
    ratio = needed / np.maximum(x[:, 2], 0.5)
    return np.column_stack([np.log(np.maximum(ratio, 1e-3)), x[:, 3] / np.maximum(x[:, 1] / 60, 0.1),
                            x[:, 4] / 100])


def fit_battery(x: Floats, y: Floats) -> tuple[Floats, float]:
    logs = np.log(np.maximum(np.abs(x), FLOOR))
    design = np.column_stack([logs, np.ones(len(x))])
    coef, *_ = np.linalg.lstsq(design, np.log(y), rcond=None)
    return coef[:-1], float(coef[-1])


def fit_logistic(f: Floats, y: Floats, rng: np.random.Generator, steps: int = 3000) -> tuple[Floats, float]:
    mean, std = f.mean(axis=0), f.std(axis=0) + 1e-9
    z = (f - mean) / std
    w, b = rng.normal(0, 0.01, f.shape[1]), 0.0
    for _ in range(steps):
        p = 1 / (1 + np.exp(-(z @ w + b)))
        grad = p - y
        w -= 0.5 * (z.T @ grad / len(y) + 1e-4 * w)
        b -= 0.5 * float(grad.mean())
    # Undo the scaling: the graph takes the raw features.
    return w / std, b - float((w * mean / std).sum())


def battery_graph(w: Floats, b: float) -> Any:
    from onnx import TensorProto, helper, numpy_helper

    return helper.make_graph(
        [helper.make_node("Abs", ["features"], ["magnitude"]),
         helper.make_node("Max", ["magnitude", "floor"], ["floored"]),
         helper.make_node("Log", ["floored"], ["logs"]),
         helper.make_node("MatMul", ["logs", "weights"], ["product"]),
         helper.make_node("Add", ["product", "bias"], ["log_remaining"]),
         helper.make_node("Exp", ["log_remaining"], ["remaining_s"])],
        "battery",
        [helper.make_tensor_value_info("features", TensorProto.FLOAT, ["N", len(BATTERY_INPUTS)])],
        [helper.make_tensor_value_info("remaining_s", TensorProto.FLOAT, ["N", 1])],
        initializer=[numpy_helper.from_array(np.asarray(w, np.float32).reshape(-1, 1), "weights"),
                     numpy_helper.from_array(np.asarray([b], np.float32), "bias"),
                     numpy_helper.from_array(np.asarray([FLOOR], np.float32), "floor")])


def risk_graph(w: Floats, b: float) -> Any:
    from onnx import TensorProto, helper, numpy_helper

    def const(name: str, value: float) -> Any:
        return numpy_helper.from_array(np.asarray([value], np.float32), name)

    def column(i: int) -> Any:
        return numpy_helper.from_array(np.asarray([i], np.int64), f"col{i}")

    nodes = [helper.make_node("Gather", ["features", f"col{i}"], [f"x{i}"], axis=1) for i in range(5)]
    nodes += [
        helper.make_node("Max", ["x1", "one"], ["time_floor"]),
        helper.make_node("Div", ["x0", "time_floor"], ["needed"]),
        helper.make_node("Max", ["x2", "half"], ["speed_floor"]),
        helper.make_node("Div", ["needed", "speed_floor"], ["ratio"]),
        helper.make_node("Max", ["ratio", "tiny"], ["ratio_floor"]),
        helper.make_node("Log", ["ratio_floor"], ["f0"]),
        helper.make_node("Div", ["x1", "sixty"], ["minutes"]),
        helper.make_node("Max", ["minutes", "tenth"], ["minutes_floor"]),
        helper.make_node("Div", ["x3", "minutes_floor"], ["f1"]),
        helper.make_node("Div", ["x4", "hundred"], ["f2"]),
        helper.make_node("Concat", ["f0", "f1", "f2"], ["engineered"], axis=1),
        helper.make_node("MatMul", ["engineered", "weights"], ["product"]),
        helper.make_node("Add", ["product", "bias"], ["logit"]),
        helper.make_node("Sigmoid", ["logit"], ["late_probability"]),
    ]
    return helper.make_graph(
        nodes, "delivery_risk",
        [helper.make_tensor_value_info("features", TensorProto.FLOAT, ["N", len(RISK_INPUTS)])],
        [helper.make_tensor_value_info("late_probability", TensorProto.FLOAT, ["N", 1])],
        initializer=[*(column(i) for i in range(5)),
                     numpy_helper.from_array(np.asarray(w, np.float32).reshape(-1, 1), "weights"),
                     numpy_helper.from_array(np.asarray([b], np.float32), "bias"),
                     const("one", 1.0), const("half", 0.5), const("tiny", 1e-3), const("sixty", 60.0),
                     const("tenth", 0.1), const("hundred", 100.0)])


def deciles(values: Floats) -> Histogram:
    edges = np.unique(np.quantile(values, np.linspace(0.1, 0.9, 9)))
    counts = np.bincount(np.searchsorted(edges, values, side="right"), minlength=len(edges) + 1)
    return Histogram(edges=[float(e) for e in edges], shares=[float(c) for c in counts / counts.sum()])


def export(name: str, graph: Any, inputs: list[InputSpec], output: InputSpec, train_x: Floats, held_x: Floats,
           out: Path, description: str) -> Floats:
    """Write ``name``'s ONNX file and manifest; the exported model's outputs on ``train_x``."""
    import onnxruntime as ort

    onnx_path = out / f"{name}-{VERSION}.onnx"
    save_graph(graph, onnx_path, "fleetedge scripts/train_edge_models.py")
    session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])

    def run(x: Floats) -> Floats:
        result = session.run(None, {"features": x.astype(np.float32)})[0]
        return np.asarray(result, dtype=np.float64)[:, 0]

    scores = run(train_x)
    probe = held_x[:5]
    manifest = ModelManifest(
        name=name, version=VERSION, input_name="features", output_name=output.name, inputs=inputs, output=output,
        health_check=HealthCheck(inputs=[[float(v) for v in row] for row in probe.astype(np.float32)],
                                 outputs=[float(v) for v in run(probe)], tolerance=1e-4),
        input_reference=[deciles(train_x[:, i]) for i in range(train_x.shape[1])],
        score_reference=deciles(scores), description=description)
    manifest.check()
    (out / f"{name}-{VERSION}.json").write_bytes(encode_manifest(manifest))
    digest = hashlib.sha256(onnx_path.read_bytes()).hexdigest()
    print(f"wrote {onnx_path} (sha256 {digest[:16]}...) and its manifest")
    return scores


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--samples", type=int, default=50_000)
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parent.parent / "edge_agent" / "models")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(args.seed)
    split = int(args.samples * 0.8)

    x, y = battery_samples(rng, args.samples)
    w, b = fit_battery(x[:split], y[:split])
    export("battery", battery_graph(w, b), BATTERY_INPUTS, InputSpec("remaining_s", 0, 86_400, "s"), x[:split],
           x[split:], args.out, "Flight (or drive) time left on the battery at the present load, in seconds.")
    predicted = np.exp(np.log(np.maximum(np.abs(x[split:]), FLOOR)) @ w + b)
    error = np.abs(predicted - y[split:]) / y[split:]
    print(f"battery: held-out median relative error {np.median(error):.1%}, p90 {np.quantile(error, 0.9):.1%}")

    x, y = risk_samples(rng, args.samples)
    f = risk_features(x)
    w, b = fit_logistic(f[:split], y[:split], rng)
    export("delivery_risk", risk_graph(w, b), RISK_INPUTS, InputSpec("late_probability", 0, 1), x[:split],
           x[split:], args.out, "Probability that the job under way reaches its drop-off after the deadline.")
    p = 1 / (1 + np.exp(-(f[split:] @ w + b)))
    truth = y[split:]
    loss = -np.mean(truth * np.log(p + 1e-9) + (1 - truth) * np.log(1 - p + 1e-9))
    base = truth.mean()
    base_loss = -(base * np.log(base) + (1 - base) * np.log(1 - base))
    accuracy = np.mean((p > 0.5) == truth)
    high = p > 0.7
    print(f"delivery_risk: held-out log loss {loss:.3f} (base rate alone {base_loss:.3f}), accuracy "
          f"{accuracy:.1%}; of the jobs scored above 0.7, {truth[high].mean():.1%} were late")


if __name__ == "__main__":
    main()
