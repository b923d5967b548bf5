"""ONNX models on the vehicle: loaded with the execution providers the hardware profile names, checked against
their manifest and health check before they run, and guarded on every call.

A model loads only if its file has the sha256 given (when one is), takes one float32 input of
``[N, len(manifest.inputs)]`` and gives ``[N, 1]``, and reproduces its manifest's reference outputs. Each
prediction's inputs are checked first (count, finite, within the manifest's ranges): unfit ones are skipped
and counted, never fed. Latency and counts are kept per model.

Providers: the profile lists them in order of preference (TensorRT, CUDA, CPU on a Jetson); those this
onnxruntime does not have are skipped, and if a session cannot be made with the first one left (a TensorRT
engine that fails to build), it is tried again without it, down to the CPU.
"""

from __future__ import annotations

import hashlib
import logging
import math
import time
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from edge_agent.errors import InvalidInput, ModelError
from protocols import MalformedMessage, ModelManifest, decode_manifest

log = logging.getLogger(__name__)

SHIPPED = Path(__file__).resolve().parent / "models"
"""The models the agent ships with (``scripts/train_edge_models.py``)."""
LATENCY_WINDOW = 2048


@dataclass(slots=True)
class ModelCounters:
    calls: int = 0
    skipped: int = 0
    """Predictions refused for their inputs."""
    errors: int = 0
    """Predictions that failed in onnxruntime or gave an output outside the manifest's range."""
    latencies_ms: deque[float] = field(default_factory=lambda: deque(maxlen=LATENCY_WINDOW))

    def snapshot(self) -> dict[str, float]:
        ordered = sorted(self.latencies_ms)

        def pct(q: float) -> float:
            return round(ordered[min(len(ordered) - 1, int(q * len(ordered)))], 4) if ordered else 0.0

        return {"calls": self.calls, "skipped": self.skipped, "errors": self.errors, "p50_ms": pct(0.5),
                "p99_ms": pct(0.99)}


def available_providers() -> list[str]:
    import onnxruntime as ort

    return list(ort.get_available_providers())


def open_session(path: Path, providers: Sequence[str], threads: int) -> tuple[Any, list[str]]:
    """An onnxruntime session on the first of ``providers`` that works, and the providers it runs on.

    Raises:
        ModelError: no provider could load the file.
    """
    import onnxruntime as ort

    have = set(available_providers())
    usable = [p for p in providers if p in have]
    skipped = [p for p in providers if p not in have]
    if skipped:
        log.info("%s: execution providers not in this onnxruntime, skipped: %s", path.name, ", ".join(skipped))
    if "CPUExecutionProvider" not in usable:
        usable.append("CPUExecutionProvider")  # always there, and the last resort
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    last: Exception | None = None
    while usable:
        try:
            session = ort.InferenceSession(str(path), sess_options=options, providers=usable)
            return session, list(session.get_providers())
        except Exception as exc:  # onnxruntime raises its own, undocumented exception types
            last = exc
            log.warning("%s: cannot start on %s (%s); trying without it", path.name, usable[0], exc)
            usable = usable[1:]
    raise ModelError(f"{path}: no execution provider could load it: {last}")


class EdgeModel:
    """One loaded, checked model."""

    def __init__(self, manifest: ModelManifest, path: Path, session: Any, providers: list[str]) -> None:
        self.manifest = manifest
        self.path = path
        self.session = session
        self.providers = providers
        self.counters = ModelCounters()
        self._lows = [spec.min for spec in manifest.inputs]
        self._highs = [spec.max for spec in manifest.inputs]

    @property
    def name(self) -> str:
        return self.manifest.name

    @property
    def version(self) -> str:
        return self.manifest.version

    @classmethod
    def load(cls, path: Path, manifest: ModelManifest, *, providers: Sequence[str], threads: int = 0,
             sha256: str | None = None) -> EdgeModel:
        """Load ``path`` and check it against ``manifest`` (and ``sha256``) and its health check.

        Raises:
            ModelError: saying what is wrong; the model must not run.
        """
        try:
            data = path.read_bytes()
        except OSError as exc:
            raise ModelError(f"{manifest.name} {manifest.version}: cannot read {path}: {exc}") from None
        if sha256 is not None and hashlib.sha256(data).hexdigest() != sha256:
            raise ModelError(f"{manifest.name} {manifest.version}: {path.name} does not match its sha256")
        session, used = open_session(path, providers, threads)
        inputs, outputs = session.get_inputs(), session.get_outputs()
        width = len(manifest.inputs)
        if (len(inputs) != 1 or inputs[0].name != manifest.input_name or inputs[0].type != "tensor(float)"
                or len(inputs[0].shape) != 2 or inputs[0].shape[1] != width):
            raise ModelError(f"{manifest.name} {manifest.version}: the model must take one float32 input "
                             f"{manifest.input_name!r} of shape [N, {width}]; it takes "
                             f"{[(i.name, i.type, i.shape) for i in inputs]}")
        if len(outputs) != 1 or outputs[0].name != manifest.output_name or outputs[0].type != "tensor(float)":
            raise ModelError(f"{manifest.name} {manifest.version}: the model must give one float32 output "
                             f"{manifest.output_name!r}; it gives {[(o.name, o.type) for o in outputs]}")
        model = cls(manifest, path, session, used)
        model.health_check()
        return model

    def health_check(self) -> None:
        """Raises ModelError unless the model reproduces its manifest's reference outputs."""
        check = self.manifest.health_check
        for row, expected in zip(check.inputs, check.outputs, strict=True):
            try:
                got = self._run(row)
            except Exception as exc:
                raise ModelError(f"{self.name} {self.version}: health check failed: {exc}") from None
            scale = max(1.0, abs(expected))
            if not math.isfinite(got) or abs(got - expected) > check.tolerance * scale:
                raise ModelError(f"{self.name} {self.version}: health check failed: {got!r} for {row}, "
                                 f"expected {expected!r}")

    def _run(self, row: Sequence[float]) -> float:
        import numpy as np

        out = self.session.run(None, {self.manifest.input_name: np.asarray([row], dtype=np.float32)})[0]
        return float(out.reshape(-1)[0])

    def check_inputs(self, values: Sequence[float]) -> None:
        """Raises InvalidInput naming the first unfit value."""
        if len(values) != len(self._lows):
            raise InvalidInput(f"{self.name}: {len(values)} inputs, the model takes {len(self._lows)}")
        for spec, value, low, high in zip(self.manifest.inputs, values, self._lows, self._highs, strict=True):
            if not isinstance(value, int | float) or isinstance(value, bool):
                raise InvalidInput(f"{self.name}: {spec.name} is {type(value).__name__}, not a number")
            if not math.isfinite(value):
                raise InvalidInput(f"{self.name}: {spec.name} is {value}")
            if not low <= value <= high:
                raise InvalidInput(f"{self.name}: {spec.name} = {value:g} is outside [{low:g}, {high:g}]")

    def predict(self, values: Sequence[float]) -> float:
        """The model's output for one row of inputs.

        Raises:
            InvalidInput: the inputs do not fit (counted as skipped; the model never saw them).
            ModelError: onnxruntime failed, or the output is not finite or outside its range (counted).
        """
        try:
            self.check_inputs(values)
        except InvalidInput:
            self.counters.skipped += 1
            raise
        started = time.perf_counter()
        try:
            out = self._run(values)
        except Exception as exc:
            self.counters.errors += 1
            raise ModelError(f"{self.name} {self.version}: inference failed: {exc}") from None
        self.counters.latencies_ms.append((time.perf_counter() - started) * 1000)
        self.counters.calls += 1
        spec = self.manifest.output
        if not (math.isfinite(out) and spec.min <= out <= spec.max):
            self.counters.errors += 1
            raise ModelError(f"{self.name} {self.version}: output {out!r} outside [{spec.min:g}, {spec.max:g}]")
        return out


def read_manifest(path: Path) -> ModelManifest:
    """Raises ModelError naming the file."""
    try:
        return decode_manifest(path.read_bytes())
    except (OSError, MalformedMessage) as exc:
        raise ModelError(f"{path}: {exc}") from None


def load_shipped(names: Sequence[str], *, providers: Sequence[str], threads: int = 0,
                 directory: Path = SHIPPED) -> dict[str, EdgeModel]:
    """The newest shipped version of each model in ``names``.

    Raises:
        ModelError: a named model is missing or fails its checks.
    """
    found: dict[str, EdgeModel] = {}
    for name in names:
        manifests = sorted(directory.glob(f"{name}-*.json"),
                           key=lambda p: tuple(int(x) for x in p.stem.rsplit("-", 1)[1].split(".")))
        if not manifests:
            raise ModelError(f"no model {name!r} in {directory}")
        manifest = read_manifest(manifests[-1])
        found[name] = EdgeModel.load(manifests[-1].with_suffix(".onnx"), manifest, providers=providers,
                                     threads=threads)
    return found
