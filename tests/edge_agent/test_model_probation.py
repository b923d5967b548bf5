"""A newly installed model version is on probation: one that passes its health check but then fails its first
predictions is rolled back to the version it replaced, and the vehicle says so (a real outbox, a real HTTP
download, the fleet's signature)."""

from __future__ import annotations

import asyncio
from pathlib import Path

import msgspec

from edge_agent.config import ModelSettings
from edge_agent.inference import ROLLBACK_AFTER_ERRORS, OnboardModels
from edge_agent.model_library import ModelLibrary
from edge_agent.models import SHIPPED, load_shipped
from edge_agent.outbox import TelemetryOutbox
from protocols import (
    InstallModelParams,
    decode_manifest,
    encode_manifest,
    generate_key,
    sha256_hex,
    sign,
    signed_message,
)


async def test_a_version_failing_its_first_predictions_is_rolled_back(tmp_path: Path,
                                                                     served: tuple[Path, str]) -> None:
    root, base = served
    private, public = generate_key()
    shipped = decode_manifest((SHIPPED / "battery-1.0.0.json").read_bytes())
    # Passes its health check (its reference outputs are in range) but claims outputs never pass 1.2 x the
    # largest of them: ordinary flights produce more, and each such prediction is an error.
    tight = msgspec.structs.replace(shipped.output, max=max(shipped.health_check.outputs) * 1.2)
    manifest = encode_manifest(msgspec.structs.replace(shipped, version="1.1.0", output=tight))
    onnx = (SHIPPED / "battery-1.0.0.onnx").read_bytes()
    (root / "m.onnx").write_bytes(onnx)
    (root / "m.json").write_bytes(manifest)
    params = InstallModelParams(
        name="battery", version="1.1.0", onnx_url=f"{base}/m.onnx", onnx_sha256=sha256_hex(onnx),
        manifest_url=f"{base}/m.json", manifest_sha256=sha256_hex(manifest), size_bytes=len(onnx),
        signature=sign(private, signed_message("battery", "1.1.0", sha256_hex(onnx), sha256_hex(manifest))))
    library = ModelLibrary(tmp_path / "models", providers=["CPUExecutionProvider"], threads=1, public_key=public,
                           max_bytes=1 << 20, timeout_s=5)
    outbox = TelemetryOutbox.open(tmp_path / "outbox.db", cap_bytes=64 << 20)
    try:
        onboard = OnboardModels(ModelSettings(), load_shipped(["battery"], providers=["CPUExecutionProvider"]),
                                outbox, autopilot=None, gps=None, active_job=lambda: None, position=lambda: None,
                                library=library)
        done = await onboard.install(params)
        assert "battery 1.1.0 runs (was 1.0.0)" in done and onboard.models["battery"].version == "1.1.0"
        long_flight = [95.0, 16.5, 0.5, 0.0, 0.0]  # parked, nearly full: hours left, far above the claimed range
        for _ in range(ROLLBACK_AFTER_ERRORS):
            assert onboard._predict("battery", long_flight, 0.0) is None
        assert onboard.models["battery"].version == "1.0.0"
        assert onboard.failed["battery"]["version"] == "1.1.0"
        assert "rolled back to 1.0.0" in str(onboard.failed["battery"]["reason"])
        assert library.active()["battery"]["version"] == "1.0.0"  # a restart runs 1.0.0 too
        assert onboard._predict("battery", long_flight, 0.0) is not None  # and it predicts again
        outbox.commit()
        kinds = [c.kind for c in _drain(outbox)]
        assert "model.rolled_back" in kinds and kinds.count("models") >= 2
    finally:
        await asyncio.to_thread(outbox.close)


def _drain(outbox: TelemetryOutbox) -> list[object]:
    rows: list[object] = []
    while (claim := outbox.claim(max_records=10_000, max_bytes=1 << 26)) is not None:
        rows.extend(claim.rows)
        outbox.acknowledge(claim)
    return rows
