"""Real local services for tests and benchmarks: Mosquitto on a free loopback port, and the coordinator
and agents as real processes with their own SQLite files."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

ROOT = Path(__file__).resolve().parent.parent
REDIS_CONF = ROOT / "packaging" / "docker" / "redis.conf"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_until(predicate: Callable[[], Any], timeout: float, what: str, interval: float = 0.05) -> Any:
    """Poll ``predicate`` until it returns something truthy; fail naming ``what`` after ``timeout``."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise TimeoutError(f"timed out after {timeout:.0f} s waiting for {what}")


def _port_open(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(0.2)
        return s.connect_ex(("127.0.0.1", port)) == 0


@dataclass
class Mosquitto:
    """A real Mosquitto broker that a test can stop and start again on the same port and persistence."""

    workdir: Path
    port: int = field(default_factory=free_port)
    process: subprocess.Popen[bytes] | None = None
    extra_config: str = ""
    """Configuration lines for TLS, password file and ACL; empty means anonymous access."""
    scheme: str = "mqtt"

    @property
    def url(self) -> str:
        host = "localhost" if self.scheme == "mqtts" else "127.0.0.1"
        return f"{self.scheme}://{host}:{self.port}"

    def start(self) -> None:
        conf = self.workdir / "mosquitto.conf"
        conf.write_text(
            f"listener {self.port} 127.0.0.1\n"
            + (self.extra_config or "allow_anonymous true\n") +
            # Started as root, Mosquitto drops to user mosquitto, who cannot write pytest's private tmp dir;
            # without its persistence file a restart would forget the coordinator's session.
            "user root\n"
            "persistence true\n"
            f"persistence_location {self.workdir}/\n"
            # Never drop a persistent session's queued QoS 1 messages in tests.
            "max_queued_messages 0\n"
            "max_inflight_messages 20\n"
            "set_tcp_nodelay true\n"
        )
        with open(self.workdir / "mosquitto.log", "ab") as log:
            self.process = subprocess.Popen([shutil.which("mosquitto") or "/usr/sbin/mosquitto", "-c", str(conf)],
                                            stdout=log, stderr=log)
        wait_until(lambda: _port_open(self.port), 10, f"mosquitto on port {self.port}")

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            self.process.wait(10)
        self.process = None


@dataclass
class RedisServer:
    """A real redis-server on a free loopback port, configured as we ship it (``packaging/docker/redis.conf``:
    an append-only file, so a restart keeps its data)."""

    workdir: Path
    port: int = field(default_factory=free_port)
    process: subprocess.Popen[bytes] | None = None
    extra_args: tuple[str, ...] = ()
    """Further ``redis-server`` options for the next start."""

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        binary = shutil.which("redis-server") or "/usr/bin/redis-server"
        with open(self.workdir / "redis.log", "ab") as log:
            self.process = subprocess.Popen(
                [binary, str(REDIS_CONF), "--port", str(self.port), "--bind", "127.0.0.1", "--dir", str(self.workdir),
                 "--protected-mode", "yes", "--daemonize", "no", *self.extra_args], stdout=log, stderr=log)
        wait_until(lambda: _port_open(self.port), 10, f"redis-server on port {self.port}")

    def stop(self) -> None:
        """A clean shutdown (the append-only file is flushed)."""
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            self.process.wait(10)
        self.process = None


def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("FLEETEDGE_")}
    env["PYTHONPATH"] = str(ROOT)
    return env


@dataclass
class CoordinatorProcess:
    """``fleet-coordinator run`` as a real process, with a viewer API key."""

    workdir: Path
    broker_url: str
    api_port: int = field(default_factory=free_port)
    process: subprocess.Popen[bytes] | None = None
    key: str = ""
    env: dict[str, str] = field(default_factory=dict)

    @property
    def store_path(self) -> Path:
        return self.workdir / "coordinator.db"

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.api_port}"

    def start(self) -> None:
        if not self.key:
            self.key = self.create_key("viewer")
        args = [sys.executable, "-m", "coordinator", "run", "--store", str(self.store_path),
                "--listen", f"127.0.0.1:{self.api_port}"]
        if self.broker_url:
            args += ["--broker", self.broker_url]
        with open(self.workdir / "coordinator.log", "ab") as log:
            # Tests poll the API far harder than people do; the per-key limit has tests of its own.
            env = {**_env(), "FLEETEDGE_COORDINATOR__API__RATE_LIMIT_PER_S": "1000", **self.env}
            self.process = subprocess.Popen(args, env=env, stdout=log, stderr=log)
        wait_until(self._healthy, 20, "the coordinator's /healthz with a broker connection")

    def _healthy(self) -> bool:
        assert self.process is not None
        if self.process.poll() is not None:
            raise RuntimeError(f"coordinator exited with {self.process.returncode}: "
                        f"{(self.workdir / 'coordinator.log').read_text()[-2000:]}")
        try:
            return bool(httpx.get(f"{self.base_url}/healthz", timeout=1).json()["broker_connected"])
        except httpx.HTTPError:
            return False

    def get(self, path: str, **params: Any) -> Any:
        response = httpx.get(f"{self.base_url}{path}", params=params, headers={"Authorization": f"Bearer {self.key}"},
                             timeout=10)
        response.raise_for_status()
        return response.json()

    def create_key(self, role: str) -> str:
        out = subprocess.run([sys.executable, "-m", "coordinator", "keys", "create", "--role", role,
                              "--store", str(self.store_path)], env={**_env(), **self.env}, check=True,
                             capture_output=True)
        return out.stdout.decode().strip()

    def post(self, path: str, body: dict[str, Any], key: str) -> httpx.Response:
        return httpx.post(f"{self.base_url}{path}", json=body, headers={"Authorization": f"Bearer {key}"}, timeout=10)

    def vehicle_stats(self, vehicle_id: str) -> dict[str, int]:
        stats: dict[str, int] = self.get("/v1/stats")["vehicles"].get(vehicle_id, {})
        return stats

    def received_seqs(self, vehicle_id: str) -> list[int]:
        with sqlite3.connect(f"file:{self.store_path}?mode=ro", uri=True) as db:
            return [r[0] for r in db.execute("SELECT seq FROM telemetry WHERE vehicle_id = ? ORDER BY seq", (vehicle_id,))]

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.process = None


@dataclass
class AgentProcess:
    """``fleet-agent run`` as a real process with its own outbox file."""

    workdir: Path
    vehicle_id: str
    broker_url: str
    settings: dict[str, dict[str, Any]]
    process: subprocess.Popen[bytes] | None = None
    profile: str = ""

    @property
    def outbox_path(self) -> Path:
        return self.workdir / "outbox.db"

    @property
    def config_path(self) -> Path:
        return self.workdir / "agent.toml"

    def write_config(self) -> None:
        sections: dict[str, dict[str, Any]] = {
            "vehicle": {"id": self.vehicle_id},
            # Tests commit often to run fast; a profile's own commit interval is left alone.
            "outbox": {"path": str(self.outbox_path), **({} if self.profile else {"flush_interval_ms": 20})},
            "mqtt": {"url": self.broker_url, "reconnect_min_s": 0.2, "reconnect_max_s": 1.0, "keepalive_s": 5},
            "uplink": {"publish_timeout_s": 5.0},
            "source": {"kind": "simulated", "rate_hz": 200.0},
        }
        for name, values in self.settings.items():
            sections.setdefault(name, {}).update(values)
        lines = []
        for name, values in sections.items():
            lines.append(f"[{name}]")
            lines += [f"{k} = {_toml(v)}" for k, v in values.items()]
        self.config_path.write_text("\n".join(lines) + "\n")

    def start(self, **env: str) -> None:
        self.write_config()
        with open(self.workdir / "agent.log", "ab") as log:
            profile = ["--profile", self.profile] if self.profile else []
            self.process = subprocess.Popen([sys.executable, "-m", "edge_agent", "run", "-c", str(self.config_path),
                                             *profile],
                                            env={**_env(), **env}, stdout=log, stderr=log)

    def kill(self) -> None:
        assert self.process is not None
        self.process.kill()
        self.process.wait()
        self.process = None

    def stop(self) -> int:
        """SIGTERM and wait: a clean shutdown commits what is pending."""
        if self.process is None:
            return 0
        self.process.send_signal(signal.SIGTERM)
        code = self.process.wait(20)
        self.process = None
        return code

    def outbox_counts(self) -> dict[str, int]:
        """Records in the outbox and its counters, read straight from the SQLite file."""
        with sqlite3.connect(f"file:{self.outbox_path}?mode=ro", uri=True) as db:
            counts = dict(db.execute("SELECT name, value FROM counters"))
            counts["records"] = db.execute("SELECT count(*) FROM outbox").fetchone()[0]
        return counts


def _toml(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
    if isinstance(value, dict):
        return "{ " + ", ".join(f"{k} = {_toml(v)}" for k, v in value.items()) + " }"
    if isinstance(value, list):
        return "[" + ", ".join(_toml(v) for v in value) + "]"
    return repr(value)
