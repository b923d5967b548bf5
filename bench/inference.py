"""On-board inference cost: latency per call of each shipped model, and the agent's memory with them loaded.

For each model the agent ships (``edge_agent/models``), in this one process and run, interleaved in rounds
so a noisy neighbour hits every variant alike:

- ``agent``: ``EdgeModel.predict`` as the agent calls it (input checks, onnxruntime, output checks), one row;
- ``ort_floor``: onnxruntime's own minimum, a one-node Identity model of the same input, one row;
- ``numpy``: the same computation written out in numpy (what the graph does, from the weights in the file).

Then a real ``fleet-agent run`` process (a simulated telemetry source, both models enabled and checked, the
models' loop running, no broker needed) is started, and its resident memory read a few seconds after the
models have loaded.

Target: p99 <= 2 ms per call, agent RSS <= 120 MB. Last line: {"p99_ms": {model: ms}, "agent_rss_mb", ...}.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import numpy as np
import onnx
import onnxruntime as ort
import psutil
from onnx import numpy_helper

from edge_agent.models import SHIPPED, EdgeModel, load_shipped

ROOT = Path(__file__).resolve().parent.parent


def numpy_version(model: EdgeModel) -> Callable[[list[float]], float]:
    """The model's graph, evaluated with numpy from the weights in its file."""
    weights = {t.name: numpy_helper.to_array(t) for t in onnx.load(str(model.path)).graph.initializer}
    w, b = weights["weights"].astype(np.float64), weights["bias"].astype(np.float64)
    if model.name == "battery":
        floor = float(weights["floor"][0])

        def battery(row: list[float]) -> float:
            x = np.log(np.maximum(np.abs(np.asarray(row, dtype=np.float64)), floor))
            return float(np.exp(x @ w + b)[0])
        return battery

    def risk(row: list[float]) -> float:
        x = np.asarray(row, dtype=np.float64)
        ratio = x[0] / max(x[1], 1.0) / max(x[2], 0.5)
        f = np.array([np.log(max(ratio, 1e-3)), x[3] / max(x[1] / 60, 0.1), x[4] / 100])
        return float(1 / (1 + np.exp(-(f @ w + b)[0])))
    return risk


def identity_floor(width: int, path: Path) -> Callable[[list[float]], float]:
    from onnx import TensorProto, helper

    graph = helper.make_graph([helper.make_node("Identity", ["x"], ["y"])], "floor",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", width])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", width])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    onnx.save(model, str(path))
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.inter_op_num_threads = 1
    session = ort.InferenceSession(str(path), sess_options=options, providers=["CPUExecutionProvider"])

    def run(row: list[float]) -> float:
        return float(session.run(None, {"x": np.asarray([row], dtype=np.float32)})[0][0, 0])
    return run


def percentiles(samples: list[float]) -> dict[str, float]:
    ordered = sorted(samples)
    return {"p50_ms": round(ordered[len(ordered) // 2], 4), "p99_ms": round(ordered[int(0.99 * len(ordered))], 4),
            "mean_ms": round(statistics.fmean(ordered), 4)}


def agent_rss_mb(seconds: float) -> tuple[float, str]:
    """RSS of a real agent process with both models loaded."""
    with tempfile.TemporaryDirectory(prefix="fleetedge-inference-") as tmp:
        config = Path(tmp) / "agent.toml"
        config.write_text(f"""
[vehicle]
id = "bench-1"
kind = "copter"

[outbox]
path = "{tmp}/outbox.db"

[mqtt]
url = "mqtt://127.0.0.1:9"

[source]
kind = "simulated"
rate_hz = 10

[models]
enabled = ["battery", "delivery_risk"]
interval_s = 0.1
""")
        log = Path(tmp) / "agent.log"
        with open(log, "wb") as out:
            proc = subprocess.Popen([sys.executable, "-m", "edge_agent", "run", "--config", str(config)], cwd=ROOT,
                                    stdout=out, stderr=subprocess.STDOUT)
        try:
            deadline = time.monotonic() + 30
            while "model delivery_risk" not in log.read_text(errors="replace"):
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"the agent did not load its models: {log.read_text()[-2000:]}")
                time.sleep(0.2)
            time.sleep(seconds)
            rss = psutil.Process(proc.pid).memory_info().rss / 2**20
            loaded = ", ".join(line.split("edge_agent.agent: ")[-1] for line in log.read_text().splitlines()
                               if "edge_agent.agent: model " in line)
            return rss, loaded
        finally:
            proc.terminate()
            proc.wait(10)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--calls", type=int, default=20_000, help="calls per model and variant (default 20000)")
    parser.add_argument("--rounds", type=int, default=10, help="interleaved rounds the calls are split into")
    parser.add_argument("--rss-after-s", type=float, default=5.0, help="seconds the agent runs before its RSS is read")
    args = parser.parse_args()
    models = load_shipped(["battery", "delivery_risk"], providers=["CPUExecutionProvider"], threads=1)
    rng = np.random.default_rng(3)
    summary: dict[str, Any] = {"p99_ms": {}, "models": {}}
    with tempfile.TemporaryDirectory() as tmp:
        for name, model in models.items():
            specs = model.manifest.inputs
            # Realistic rows: the risk model over its whole range, the battery within what a battery reports.
            rows = [[float(rng.uniform(s.min, s.max) if name == "delivery_risk" else
                           rng.uniform(max(s.min, 0.5), min(s.max, 40))) for s in specs] for _ in range(1000)]
            variants = {"agent": model.predict, "ort_floor": identity_floor(len(rows[0]), Path(tmp) / f"{name}.onnx"),
                        "numpy": numpy_version(model)}
            # The numpy version computes what the graph does: check before timing it.
            for row in rows[:50]:
                assert abs(variants["numpy"](row) - model.predict(row)) <= 1e-3 * max(1.0, abs(model.predict(row)))
            times: dict[str, list[float]] = {v: [] for v in variants}
            per_round = args.calls // args.rounds
            for _ in range(args.rounds):
                for variant, fn in variants.items():
                    for i in range(per_round):
                        row = rows[i % len(rows)]
                        started = time.perf_counter()
                        fn(row)
                        times[variant].append((time.perf_counter() - started) * 1000)
            figures = {v: percentiles(t) for v, t in times.items()}
            summary["models"][name] = {"version": model.version, **figures}
            summary["p99_ms"][name] = figures["agent"]["p99_ms"]
            print(f"{name} {model.version}: agent p50 {figures['agent']['p50_ms']:.3f} ms p99 "
                  f"{figures['agent']['p99_ms']:.3f} ms | onnxruntime floor p50 {figures['ort_floor']['p50_ms']:.3f} "
                  f"p99 {figures['ort_floor']['p99_ms']:.3f} | numpy p50 {figures['numpy']['p50_ms']:.3f} "
                  f"p99 {figures['numpy']['p99_ms']:.3f}", flush=True)
    rss, loaded = agent_rss_mb(args.rss_after_s)
    summary["agent_rss_mb"] = round(rss, 1)
    summary["agent_models"] = loaded
    summary["shipped"] = sorted(p.name for p in SHIPPED.glob("*.onnx"))
    print(f"agent RSS with the models loaded: {rss:.1f} MB ({loaded})", flush=True)
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
