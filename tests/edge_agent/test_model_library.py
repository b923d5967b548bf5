"""The vehicle's model library against a real HTTP server: what an install must be to be kept, the copy kept
for a rollback, and what loads at start when an installed file is damaged."""

from __future__ import annotations

from pathlib import Path

import msgspec
import pytest

from edge_agent.errors import ModelError
from edge_agent.model_library import ModelLibrary
from edge_agent.models import SHIPPED
from protocols import (
    InstallModelParams,
    decode_manifest,
    encode_manifest,
    generate_key,
    sha256_hex,
    sign,
    signed_message,
)

ONNX = (SHIPPED / "battery-1.0.0.onnx").read_bytes()




@pytest.fixture
def key() -> tuple[bytes, bytes]:
    return generate_key()


def publish(root: Path, base: str, private: bytes, version: str, *, onnx: bytes = ONNX,
            signed_version: str | None = None, hardware: list[str] | None = None) -> InstallModelParams:
    shipped = decode_manifest((SHIPPED / "battery-1.0.0.json").read_bytes())
    manifest = encode_manifest(msgspec.structs.replace(shipped, version=version,
                                                       hardware=hardware or shipped.hardware))
    (root / f"{version}.onnx").write_bytes(onnx)
    (root / f"{version}.json").write_bytes(manifest)
    signature = sign(private, signed_message("battery", signed_version or version, sha256_hex(onnx),
                                             sha256_hex(manifest)))
    return InstallModelParams(name="battery", version=version, onnx_url=f"{base}/{version}.onnx",
                              onnx_sha256=sha256_hex(onnx), manifest_url=f"{base}/{version}.json",
                              manifest_sha256=sha256_hex(manifest), signature=signature, size_bytes=len(onnx))


def library(tmp_path: Path, public: bytes | None, max_bytes: int = 1 << 20, hardware: str = "") -> ModelLibrary:
    return ModelLibrary(tmp_path / "models", providers=["CPUExecutionProvider"], threads=1, public_key=public,
                        max_bytes=max_bytes, timeout_s=5, hardware=hardware)


def test_a_signed_version_installs_runs_and_is_kept_for_a_rollback(tmp_path: Path, served: tuple[Path, str],
                                                                   key: tuple[bytes, bytes]) -> None:
    root, base = served
    lib = library(tmp_path, key[1])
    assert lib.load("battery").version == "1.0.0"  # nothing installed: the shipped one
    params = publish(root, base, key[0], "1.1.0")
    model = lib.install(params)
    lib.activate(model, "1.0.0")
    assert model.version == "1.1.0" and lib.active()["battery"] == {"version": "1.1.0", "previous": "1.0.0"}
    assert lib.load("battery").version == "1.1.0"  # what a restarted agent runs
    # The files are gone from the server: installing the same version again uses the kept copy.
    for f in root.iterdir():
        f.unlink()
    assert lib.install(params).version == "1.1.0"


@pytest.mark.parametrize(("problem", "match"), [
    ("forged", "does not match the fleet key"),
    ("renamed", "does not match the fleet key"),
    ("tampered", "does not match its sha256"),
    ("too_big", "larger than"),
    ("missing", "HTTP 404"),
    ("no_key", "no fleet public key"),
])
def test_a_version_that_fails_any_check_is_refused_and_nothing_is_kept(
        tmp_path: Path, served: tuple[Path, str], key: tuple[bytes, bytes], problem: str, match: str) -> None:
    root, base = served
    lib = library(tmp_path, None if problem == "no_key" else key[1], max_bytes=100 if problem == "too_big" else 1 << 20)
    params = publish(root, base, generate_key()[0] if problem == "forged" else key[0], "1.2.0",
                     signed_version="9.9.9" if problem == "renamed" else None)
    if problem == "tampered":
        data = bytearray(ONNX)
        data[-5] ^= 1
        (root / "1.2.0.onnx").write_bytes(bytes(data))
    if problem == "missing":
        (root / "1.2.0.json").unlink()
    if problem == "too_big":
        params = msgspec.structs.replace(params, size_bytes=50)
    with pytest.raises(ModelError, match=match):
        lib.install(params)
    assert not list((tmp_path / "models").glob("battery-1.2.0*")) and lib.active() == {}


def test_a_damaged_active_version_falls_back_to_the_previous_then_the_shipped(
        tmp_path: Path, served: tuple[Path, str], key: tuple[bytes, bytes]) -> None:
    root, base = served
    lib = library(tmp_path, key[1])
    for version, previous in (("1.1.0", "1.0.0"), ("1.2.0", "1.1.0")):
        lib.activate(lib.install(publish(root, base, key[0], version)), previous)
    assert lib.load("battery").version == "1.2.0"
    (tmp_path / "models" / "battery-1.2.0.onnx").write_bytes(b"damaged")
    assert lib.load("battery").version == "1.1.0"
    (tmp_path / "models" / "battery-1.1.0.sig").write_text("00" * 64)
    assert lib.load("battery").version == "1.0.0"  # the shipped one


def test_a_model_built_for_other_hardware_is_refused(tmp_path: Path, served: tuple[Path, str],
                                                     key: tuple[bytes, bytes]) -> None:
    root, base = served
    jetson_only = publish(root, base, key[0], "1.3.0", hardware=["jetson-orin-px4"])
    pi = library(tmp_path / "pi", key[1], hardware="rpi-pixhawk-ardupilot")
    with pytest.raises(ModelError, match="built for jetson-orin-px4, and this vehicle is rpi-pixhawk-ardupilot"):
        pi.install(jetson_only)
    assert not list((tmp_path / "pi" / "models").glob("battery-1.3.0*"))
    with pytest.raises(ModelError, match=r"no declared hardware \(set \[vehicle\] hardware\)"):
        library(tmp_path / "unknown", key[1]).install(jetson_only)
    assert library(tmp_path / "jetson", key[1], hardware="jetson-orin-px4").install(jetson_only).version == "1.3.0"
    # Built for any hardware: every vehicle takes it.
    assert pi.install(publish(root, base, key[0], "1.4.0")).version == "1.4.0"
