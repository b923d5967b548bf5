"""``fleet-agent doctor``: checks what the agent needs on this vehicle computer, and says how to fix what is
wrong.

Each check ends ``ok``, ``warn`` (the agent runs, but something deserves a look) or ``FAIL`` (the agent will
not do its job); ``doctor`` exits 1 when any check failed. Checks: the serial devices the settings name
(present, a character device, readable and writable by this user), clock synchronisation, free disk beside
the outbox against its cap, the broker (reachable, TLS, credentials accepted), the ONNX execution providers
the hardware profile asks for and the on-board models, and the fleet key for model installs.
"""

from __future__ import annotations

import getpass
import os
import shutil
import socket
import ssl
import stat
import subprocess
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, TextIO

from edge_agent.config import AgentSettings

Verdict = Literal["ok", "warn", "FAIL"]


@dataclass(frozen=True, slots=True)
class Finding:
    verdict: Verdict
    what: str
    fix: str = ""


def _devices(settings: AgentSettings) -> list[tuple[str, str]]:
    from firmware_bridge import parse_device_url

    found = []
    for key, url in (("autopilot.device", settings.autopilot.device), ("gps.device", settings.gps.device),
                     ("terminal.device", settings.terminal.device)):
        if url:
            device = parse_device_url(url)
            if device.scheme == "serial":
                found.append((key, device.path))
    return found


def check_serial(settings: AgentSettings) -> list[Finding]:
    out = []
    for key, path in _devices(settings):
        p = Path(path)
        if not p.exists():
            out.append(Finding("FAIL", f"{key}: {path} does not exist",
                               "check the cable and the device name (ls /dev/serial/by-id/); a udev rule gives it "
                               "a stable name"))
        elif not stat.S_ISCHR(p.stat().st_mode):
            out.append(Finding("FAIL", f"{key}: {path} is not a character device", "point it at the tty device"))
        elif not os.access(path, os.R_OK | os.W_OK):
            user = getpass.getuser()
            out.append(Finding("FAIL", f"{key}: {user} cannot read and write {path}",
                               f"sudo usermod -aG dialout {user} (then log in again), or run as the fleetedge user"))
        else:
            out.append(Finding("ok", f"{key}: {path} is readable and writable"))
    return out


def check_clock() -> list[Finding]:
    timedatectl = shutil.which("timedatectl")
    if timedatectl is None:
        return [Finding("warn", "clock: cannot tell whether it is synchronised (no timedatectl)",
                        "make sure NTP (chrony or systemd-timesyncd) runs: records and command expiries use it")]
    try:
        answer = subprocess.run([timedatectl, "show", "-p", "NTPSynchronized", "--value"], capture_output=True,
                                text=True, timeout=5, check=False).stdout.strip()
    except (OSError, subprocess.TimeoutExpired) as exc:
        return [Finding("warn", f"clock: timedatectl failed ({exc})", "check systemd-timedated")]
    if answer == "yes":
        return [Finding("ok", "clock: synchronised (NTP)")]
    if answer == "no":
        return [Finding("FAIL", "clock: not synchronised",
                        "enable NTP: sudo timedatectl set-ntp true (or install chrony); expiring commands need it")]
    return [Finding("warn", "clock: synchronisation unknown (no systemd here?)", "make sure NTP runs")]


def check_disk(settings: AgentSettings) -> list[Finding]:
    outbox = Path(settings.outbox.path)
    where = outbox.parent if outbox.parent.exists() else Path.cwd()
    free = shutil.disk_usage(where).free
    used = sum(p.stat().st_size for p in outbox.parent.glob(outbox.name + "*")) if outbox.parent.exists() else 0
    cap = settings.outbox.cap_bytes
    if free + used >= cap:
        return [Finding("ok", f"disk: {free / 2**30:.1f} GiB free at {where}, outbox cap {cap / 2**30:.2f} GiB")]
    return [Finding("FAIL", f"disk: {free / 2**30:.2f} GiB free at {where} but outbox.cap_bytes is "
                            f"{cap / 2**30:.2f} GiB: the outbox could fill the disk",
                    "free space, or lower outbox.cap_bytes below what is free")]


def check_broker(settings: AgentSettings, timeout_s: float = 5.0) -> list[Finding]:
    import paho.mqtt.client as mqtt
    from paho.mqtt.enums import CallbackAPIVersion

    address = settings.mqtt.address
    try:
        with socket.create_connection((address.host, address.port), timeout=timeout_s):
            pass
    except OSError as exc:
        return [Finding("FAIL", f"broker: cannot reach {address.host}:{address.port} ({exc.strerror or exc})",
                        "check mqtt.url, the network, and that the broker listens there")]
    # Another client id than the agent's, so a running agent keeps its session.
    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"{settings.vehicle.id}-doctor", clean_session=True)
    password = None
    if settings.mqtt.password_file:
        try:
            password = Path(settings.mqtt.password_file).read_text().strip()
        except OSError as exc:
            return [Finding("FAIL", f"broker: cannot read mqtt.password_file: {exc.strerror}",
                            "check the file and that this user may read it")]
    client.username_pw_set(settings.mqtt.username or settings.vehicle.id, password)
    if address.tls:
        try:
            context = ssl.create_default_context(cafile=settings.mqtt.ca_file or None)
            if settings.mqtt.cert_file:
                context.load_cert_chain(settings.mqtt.cert_file, settings.mqtt.key_file or None)
        except (OSError, ssl.SSLError) as exc:
            return [Finding("FAIL", f"broker: TLS files unusable: {exc}", "check mqtt.ca_file, cert_file, key_file")]
        client.tls_set_context(context)
    answered = threading.Event()
    result: dict[str, str] = {}

    def on_connect(_c: object, _u: object, _f: object, reason: object, _p: object) -> None:
        result["reason"] = str(reason)
        result["ok"] = "yes" if not getattr(reason, "is_failure", False) else ""
        answered.set()

    client.on_connect = on_connect
    try:
        client.connect(address.host, address.port, keepalive=10)
    except (OSError, ssl.SSLError) as exc:
        return [Finding("FAIL", f"broker: {address.host}:{address.port} refused the session: {exc}",
                        "check TLS (mqtts:// and mqtt.ca_file) and the broker's listener")]
    client.loop_start()
    try:
        if not answered.wait(timeout_s):
            return [Finding("FAIL", f"broker: no answer from {address.host}:{address.port} in {timeout_s:g} s",
                            "is it an MQTT broker? is TLS needed (mqtts://)?")]
    finally:
        client.disconnect()
        client.loop_stop()
    if not result.get("ok"):
        return [Finding("FAIL", f"broker: {settings.mqtt.url} refused the credentials: {result['reason']}",
                        "check mqtt.username (default: the vehicle id) and mqtt.password_file against the broker's "
                        "password file and ACL")]
    return [Finding("ok", f"broker: {settings.mqtt.url} accepts {settings.mqtt.username or settings.vehicle.id}")]


def check_models(settings: AgentSettings) -> list[Finding]:
    if not settings.models.enabled:
        return [Finding("ok", "models: none enabled")]
    from edge_agent.errors import ModelError
    from edge_agent.models import available_providers, load_shipped

    out = []
    have = set(available_providers())
    wanted = settings.onnx.execution_providers
    missing = [p for p in wanted if p not in have]
    if missing:
        out.append(Finding("warn", f"onnx: {', '.join(missing)} not in this onnxruntime; models fall back to "
                                   f"{', '.join(p for p in wanted if p in have) or 'CPUExecutionProvider'}",
                           "on a Jetson install NVIDIA's onnxruntime-gpu build for JetPack"))
    else:
        out.append(Finding("ok", f"onnx: providers {', '.join(wanted)} available"))
    for name in settings.models.enabled:
        try:
            model = load_shipped([name], providers=wanted, threads=settings.onnx.intra_op_threads)[name]
            out.append(Finding("ok", f"model {name} {model.version}: loads and passes its health check on "
                                     f"{', '.join(model.providers)}"))
        except ModelError as exc:
            out.append(Finding("FAIL", f"model {name}: {exc}", "reinstall the agent package"))
    if not settings.models.public_key:
        out.append(Finding("warn", "models: no [models] public_key: model updates from the coordinator are refused",
                           "copy the fleet's public key (fleet-coordinator models keygen) and set models.public_key"))
    return out


def check_vehicle(settings: AgentSettings, profile: str | None) -> list[Finding]:
    what = f"vehicle {settings.vehicle.id} ({settings.vehicle.kind})"
    if settings.vehicle.id == "CHANGE-ME":
        return [Finding("FAIL", "vehicle.id is still CHANGE-ME", "set vehicle.id to this vehicle's id (the one "
                                                                  "its broker credentials and ACL use)")]
    devices = [d for d in (settings.autopilot.device, settings.gps.device, settings.terminal.device) if d]
    if not devices and settings.source.kind == "none":
        return [Finding("FAIL", f"{what}: no autopilot, GPS or terminal configured: nothing to record",
                        "set [autopilot] device (or [gps] / [terminal]), or start from a hardware profile (-p)")]
    return [Finding("ok", f"{what}, profile {profile or '(none)'}: {', '.join(devices) or 'simulated source'}")]


def run_checks(settings: AgentSettings, profile: str | None = None) -> list[Finding]:
    return [*check_vehicle(settings, profile), *check_serial(settings), *check_clock(), *check_disk(settings),
            *check_broker(settings), *check_models(settings)]


def report(findings: list[Finding], out: TextIO) -> int:
    for f in findings:
        print(f"{f.verdict:>4}  {f.what}", file=out)
        if f.fix and f.verdict != "ok":
            print(f"      fix: {f.fix}", file=out)
    failed = sum(f.verdict == "FAIL" for f in findings)
    print(f"{failed} failed, {sum(f.verdict == 'warn' for f in findings)} warnings", file=out)
    return 1 if failed else 0
