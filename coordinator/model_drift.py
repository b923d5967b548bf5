"""Drift of a model version in the field: the distribution of its inputs and scores, from the predictions the
vehicles synced (``prediction`` records), against the training reference in its manifest.

The measure is the population stability index over the manifest's bins (the training deciles):
``PSI = sum((actual - expected) * ln(actual / expected))``, shares floored at ``FLOOR`` so an empty bin
stays finite. Common reading: below 0.1 stable, 0.1 to 0.25 a moderate shift, above 0.25 a major one; above
``models.drift_psi_alert`` (default 0.2) an input or the score raises an alert.
"""

from __future__ import annotations

import math
import time
from bisect import bisect_right
from collections.abc import Sequence
from typing import Any

from coordinator.store import FleetStore
from protocols import Histogram, ModelManifest, decode_manifest

FLOOR = 1e-4
MAX_RECORDS_PER_VEHICLE = 20_000


def psi(reference: Histogram, values: Sequence[float]) -> float | None:
    """The PSI of ``values`` against ``reference`` (None without values)."""
    if not values:
        return None
    counts = [0] * (len(reference.edges) + 1)
    for v in values:
        counts[bisect_right(reference.edges, v)] += 1
    total = len(values)
    score = 0.0
    for count, expected in zip(counts, reference.shares, strict=True):
        actual = max(count / total, FLOOR)
        expected = max(expected, FLOOR)
        score += (actual - expected) * math.log(actual / expected)
    return score


def manifest_of(store: FleetStore, name: str, version: str) -> ModelManifest | None:
    record = store.model(name, version)
    if record is None:
        return None
    data = store.blob(record["manifest_sha256"])
    return None if data is None else decode_manifest(data)


def drift_report(store: FleetStore, manifest: ModelManifest, *, since: float, threshold: float,
                 until: float | None = None) -> dict[str, Any]:
    """PSI of every input and of the score for ``manifest``'s version, from predictions since ``since``."""
    inputs: list[list[float]] = [[] for _ in manifest.inputs]
    scores: list[float] = []
    vehicles = set()
    for vehicle in store.vehicles():
        vid = vehicle["vehicle_id"]
        for record in store.telemetry(vid, since=since, until=until, limit=MAX_RECORDS_PER_VEHICLE, kind="prediction"):
            data = record["data"]
            if data.get("model") != manifest.name or data.get("version") != manifest.version:
                continue
            row, output = data.get("inputs"), data.get("output")
            if not isinstance(row, list) or len(row) != len(inputs) or not isinstance(output, int | float):
                continue
            vehicles.add(vid)
            scores.append(float(output))
            for column, value in zip(inputs, row, strict=True):
                column.append(float(value))
    per_input = {spec.name: psi(ref, column)
                 for spec, ref, column in zip(manifest.inputs, manifest.input_reference, inputs, strict=True)}
    score_psi = psi(manifest.score_reference, scores)
    alerts = [{"what": what, "psi": round(value, 4)} for what, value in
              (*((f"input {k}", v) for k, v in per_input.items()), ("score", score_psi))
              if value is not None and value > threshold]
    return {"name": manifest.name, "version": manifest.version, "since": since, "until": until or time.time(),
            "samples": len(scores), "vehicles": len(vehicles), "threshold": threshold,
            "score_psi": None if score_psi is None else round(score_psi, 4),
            "inputs_psi": {k: None if v is None else round(v, 4) for k, v in per_input.items()},
            "alerts": alerts}
