"""What travels with an ONNX model between the training script, the coordinator's registry and the vehicles:
its manifest (JSON beside the ``.onnx`` file).

The manifest names the model's single float32 input ``[N, len(inputs)]`` and output ``[N, 1]``, the range
every input and the output must lie in (a value outside is refused, never fed or trusted), reference inputs
with the outputs the model must give for them (the health check after every install), and the training
distribution of each input and of the score (the drift reference: bin edges and the share of training
samples in each bin).
"""

from __future__ import annotations

import math
from typing import Annotated

import msgspec

from protocols._errors import MalformedMessage

ModelName = Annotated[str, msgspec.Meta(pattern=r"^[a-z][a-z0-9_]{0,39}$")]
ModelVersion = Annotated[str, msgspec.Meta(pattern=r"^[0-9]+\.[0-9]+\.[0-9]+$")]


class InputSpec(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    name: Annotated[str, msgspec.Meta(min_length=1, max_length=64)]
    min: float
    max: float
    unit: str = ""


class Histogram(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """``shares[i]``: the share of training samples in ``[edges[i], edges[i+1])`` (the outer bins open)."""

    edges: list[float]
    shares: list[float]


class HealthCheck(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    inputs: list[list[float]]
    outputs: list[float]
    tolerance: Annotated[float, msgspec.Meta(ge=0)] = 1e-3
    """Largest relative difference allowed (outputs near 0: absolute)."""


class ModelManifest(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    name: ModelName
    version: ModelVersion
    input_name: str
    output_name: str
    inputs: list[InputSpec]
    output: InputSpec
    health_check: HealthCheck
    input_reference: list[Histogram]
    score_reference: Histogram
    hardware: list[str] = msgspec.field(default_factory=lambda: ["any"])
    """Hardware profiles it is built for (``any``: every one)."""
    description: str = ""

    def check(self) -> None:
        """Raises MalformedMessage when the manifest contradicts itself."""
        n = len(self.inputs)
        if n == 0:
            raise MalformedMessage("model manifest", "inputs: at least one input is needed")
        for spec in (*self.inputs, self.output):
            if not (math.isfinite(spec.min) and math.isfinite(spec.max) and spec.min < spec.max):
                raise MalformedMessage("model manifest", f"{spec.name}: min must be below max, both finite")
        if not self.health_check.inputs or len(self.health_check.inputs) != len(self.health_check.outputs):
            raise MalformedMessage("model manifest", "health_check: as many outputs as input rows, at least one")
        if any(len(row) != n for row in self.health_check.inputs):
            raise MalformedMessage("model manifest", f"health_check.inputs: every row needs {n} values")
        if len(self.input_reference) != n:
            raise MalformedMessage("model manifest", f"input_reference: one histogram per input ({n})")
        for hist in (*self.input_reference, self.score_reference):
            if len(hist.shares) != len(hist.edges) + 1:
                raise MalformedMessage("model manifest", "a histogram has one share more than edges")


def decode_manifest(data: bytes) -> ModelManifest:
    """Raises MalformedMessage naming the field."""
    try:
        manifest = msgspec.json.decode(data, type=ModelManifest)
    except (msgspec.ValidationError, msgspec.DecodeError) as exc:
        raise MalformedMessage("model manifest", str(exc)) from None
    manifest.check()
    return manifest


def encode_manifest(manifest: ModelManifest) -> bytes:
    return msgspec.json.format(msgspec.json.encode(manifest), indent=2)
