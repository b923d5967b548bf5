"""The vehicle's model versions: the shipped ones, the ones installed from the coordinator, and which runs.

An install downloads the ONNX file and its manifest (unless this version is already here: a rollback needs no
link), and refuses it unless both match their sha256, the fleet's Ed25519 signature over name, version and
both hashes verifies with ``models.public_key``, the manifest names that model and version, and the model
loads and passes its health check. Only then is it written (a temporary file, fsync, rename) and made the
running version in ``active.json`` (written the same way), with the version it replaced kept as
``previous``. At start the active version of each model loads with the same checks; if it fails them, the
previous one does, then the shipped one.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import ssl
import tempfile
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from edge_agent.errors import ModelError
from edge_agent.models import EdgeModel, load_shipped, read_manifest
from protocols import (
    InstallModelParams,
    MalformedMessage,
    SignatureError,
    decode_manifest,
    sha256_hex,
    signed_message,
    verify,
)

log = logging.getLogger(__name__)

ACTIVE = "active.json"


def write_atomically(path: Path, data: bytes) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "wb") as out:
            out.write(data)
            out.flush()
            os.fsync(out.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


class ModelLibrary:
    def __init__(self, directory: Path, *, providers: list[str], threads: int, public_key: bytes | None,
                 max_bytes: int, timeout_s: float, ca_file: str = "", hardware: str = "") -> None:
        self.directory = directory
        self.hardware = hardware
        """This computer's hardware profile: a model built for others is refused."""
        self.providers = providers
        self.threads = threads
        self.public_key = public_key
        self.max_bytes = max_bytes
        self.timeout_s = timeout_s
        # HTTPS downloads trust the system's CAs, or the fleet's own CA when the broker uses one.
        self._tls = ssl.create_default_context(cafile=ca_file or None)
        directory.mkdir(parents=True, exist_ok=True)

    # -- what runs ----------------------------------------------------------------------------------

    def active(self) -> dict[str, dict[str, Any]]:
        try:
            found = json.loads((self.directory / ACTIVE).read_bytes())
        except FileNotFoundError:
            return {}
        except (OSError, ValueError) as exc:
            log.error("%s is unreadable (%s); running the shipped models", self.directory / ACTIVE, exc)
            return {}
        return found if isinstance(found, dict) else {}

    def _set_active(self, name: str, version: str, previous: str | None) -> None:
        active = self.active()
        active[name] = {"version": version, "previous": previous}
        write_atomically(self.directory / ACTIVE, json.dumps(active, indent=2).encode())

    def load(self, name: str) -> EdgeModel:
        """The version of ``name`` that should run: the active installed one, else the one before it, else the
        shipped one.

        Raises:
            ModelError: not even the shipped version loads.
        """
        entry = self.active().get(name) or {}
        for version in (entry.get("version"), entry.get("previous")):
            if not isinstance(version, str):
                continue
            try:
                return self._load_installed(name, version)
            except ModelError as exc:
                log.error("installed %s %s does not load (%s); trying the one before", name, version, exc)
        return load_shipped([name], providers=self.providers, threads=self.threads)[name]

    def _files(self, name: str, version: str) -> tuple[Path, Path, Path]:
        stem = f"{name}-{version}"  # not Path.with_suffix: a version has dots
        return (self.directory / f"{stem}.onnx", self.directory / f"{stem}.json", self.directory / f"{stem}.sig")

    def _load_installed(self, name: str, version: str) -> EdgeModel:
        onnx_path, manifest_path, sig_path = self._files(name, version)
        try:
            onnx, manifest_json, signature = (onnx_path.read_bytes(), manifest_path.read_bytes(),
                                              sig_path.read_text().strip())
        except OSError as exc:
            raise ModelError(f"{name} {version}: {exc}") from None
        self._verify(name, version, onnx, manifest_json, signature)
        return EdgeModel.load(onnx_path, read_manifest(manifest_path), providers=self.providers,
                              threads=self.threads, sha256=sha256_hex(onnx))

    def _verify(self, name: str, version: str, onnx: bytes, manifest_json: bytes, signature: str) -> None:
        if self.public_key is None:
            raise ModelError("no fleet public key ([models] public_key): models from the coordinator cannot be "
                             "verified, so none is installed")
        try:
            verify(self.public_key, signed_message(name, version, sha256_hex(onnx), sha256_hex(manifest_json)),
                   signature)
        except SignatureError as exc:
            raise ModelError(f"{name} {version}: {exc}") from None

    # -- installing ---------------------------------------------------------------------------------

    def _download(self, url: str, sha256: str, limit: int, what: str) -> bytes:
        try:
            with urllib.request.urlopen(url, timeout=self.timeout_s) as response:
                data: bytes = response.read(limit + 1)
        except urllib.error.HTTPError as exc:
            raise ModelError(f"downloading the {what} failed: HTTP {exc.code} {exc.reason}") from None
        except (urllib.error.URLError, OSError, TimeoutError) as exc:
            raise ModelError(f"downloading the {what} failed: {getattr(exc, 'reason', exc)}") from None
        if len(data) > limit:
            raise ModelError(f"the {what} is larger than {limit} bytes")
        if sha256_hex(data) != sha256:
            raise ModelError(f"the {what} does not match its sha256 (tampered with or corrupted)")
        return data

    def install(self, params: InstallModelParams) -> EdgeModel:
        """Fetch, check and keep ``params``'s version, and return it loaded (not yet running).

        Raises:
            ModelError: why it was refused; nothing of it is kept.
        """
        onnx_path, manifest_path, sig_path = self._files(params.name, params.version)
        if onnx_path.exists() and manifest_path.exists() and sig_path.exists():
            try:
                model = self._load_installed(params.name, params.version)
                if model.path.exists() and sha256_hex(onnx_path.read_bytes()) == params.onnx_sha256:
                    return model
            except ModelError as exc:
                log.warning("the kept copy of %s %s is unusable (%s); downloading it again", params.name,
                            params.version, exc)
        if params.size_bytes > self.max_bytes:
            raise ModelError(f"{params.name} {params.version} is {params.size_bytes} bytes, above "
                             f"[models] max_download_mb")
        onnx = self._download(params.onnx_url, params.onnx_sha256, min(params.size_bytes, self.max_bytes), "model")
        manifest_json = self._download(params.manifest_url, params.manifest_sha256, 1 << 20, "manifest")
        self._verify(params.name, params.version, onnx, manifest_json, params.signature)
        try:
            manifest = decode_manifest(manifest_json)
        except MalformedMessage as exc:
            raise ModelError(str(exc)) from None
        if (manifest.name, manifest.version) != (params.name, params.version):
            raise ModelError(f"the manifest is for {manifest.name} {manifest.version}, not {params.name} "
                             f"{params.version}")
        if "any" not in manifest.hardware and self.hardware not in manifest.hardware:
            raise ModelError(f"{params.name} {params.version} is built for {', '.join(manifest.hardware)}, and this "
                             f"vehicle is {self.hardware or 'of no declared hardware (set [vehicle] hardware)'}")
        with tempfile.TemporaryDirectory(dir=self.directory, prefix=".check-") as tmp:
            probe = Path(tmp) / "model.onnx"
            probe.write_bytes(onnx)
            EdgeModel.load(probe, manifest, providers=self.providers, threads=self.threads,
                           sha256=params.onnx_sha256)
        write_atomically(onnx_path, onnx)
        write_atomically(manifest_path, manifest_json)
        write_atomically(sig_path, params.signature.encode())
        return EdgeModel.load(onnx_path, manifest, providers=self.providers, threads=self.threads,
                              sha256=params.onnx_sha256)

    def activate(self, model: EdgeModel, previous: str | None) -> None:
        self._set_active(model.name, model.version, previous)
