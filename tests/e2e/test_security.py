"""A production-like broker: TLS, a password per device and an ACL per vehicle namespace. Agents and the
coordinator connect with their own credentials; a vehicle cannot publish as another one."""

from __future__ import annotations

import contextlib
import ssl
import subprocess
from collections.abc import Iterator
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from protocols import Channel, TelemetryBatch, TelemetryRecord, encode, topic_for
from tests.harness import AgentProcess, CoordinatorProcess, Mosquitto, wait_until

ACL = """\
user coordinator
topic read fleetedge/v1/+/up/#
topic read fleetedge/v1/+/status
topic write fleetedge/v1/+/down/#

pattern write fleetedge/v1/%u/up/#
pattern readwrite fleetedge/v1/%u/status
pattern read fleetedge/v1/%u/down/#
"""


def openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True)


def make_pki(d: Path) -> None:
    openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj", "/CN=FleetEdge test CA",
            "-keyout", "ca.key", "-out", "ca.crt", cwd=d)
    openssl("req", "-newkey", "rsa:2048", "-nodes", "-subj", "/CN=localhost", "-keyout", "server.key",
            "-out", "server.csr", cwd=d)
    (d / "san.ext").write_text("subjectAltName = DNS:localhost, IP:127.0.0.1\n")
    openssl("x509", "-req", "-in", "server.csr", "-CA", "ca.crt", "-CAkey", "ca.key", "-CAcreateserial", "-days", "2",
            "-extfile", "san.ext", "-out", "server.crt", cwd=d)


@pytest.fixture
def secure_broker(tmp_path: Path) -> Iterator[Mosquitto]:
    d = tmp_path / "broker"
    d.mkdir()
    make_pki(d)
    users = {"coordinator": "c-secret", "drone-a": "a-secret", "drone-b": "b-secret"}
    for n, (user, password) in enumerate(users.items()):
        subprocess.run(["mosquitto_passwd", "-b", *(["-c"] if n == 0 else []), str(d / "passwd"), user, password],
                       check=True, capture_output=True)
        (d / f"{user}.password").write_text(password + "\n")
    (d / "acl").write_text(ACL)
    broker = Mosquitto(d, scheme="mqtts", extra_config=(
        f"cafile {d}/ca.crt\ncertfile {d}/server.crt\nkeyfile {d}/server.key\n"
        f"allow_anonymous false\npassword_file {d}/passwd\nacl_file {d}/acl\n"))
    broker.start()
    yield broker
    broker.stop()


def test_tls_credentials_and_acl_confine_each_vehicle(tmp_path: Path, secure_broker: Mosquitto) -> None:
    d = secure_broker.workdir
    (tmp_path / "coordinator").mkdir()
    coordinator = CoordinatorProcess(tmp_path / "coordinator", secure_broker.url, env={
        "FLEETEDGE_COORDINATOR__BROKER__CA_FILE": str(d / "ca.crt"),
        "FLEETEDGE_COORDINATOR__BROKER__PASSWORD_FILE": str(d / "coordinator.password"),
    })
    coordinator.start()
    (tmp_path / "agent-a").mkdir()
    agent = AgentProcess(tmp_path / "agent-a", "drone-a", secure_broker.url, {
        "mqtt": {"ca_file": str(d / "ca.crt"), "password_file": str(d / "drone-a.password")}})
    try:
        agent.start()
        wait_until(lambda: coordinator.vehicle_stats("drone-a").get("accepted", 0) > 50, 20,
                   "drone-a's telemetry over TLS with its own credentials")
        assert coordinator.get("/v1/vehicles/drone-a")["online"] is True

        # drone-b holds valid credentials but tries to speak for drone-a: the ACL drops the message (and
        # Mosquitto may also drop the session). Then, in a fresh session, drone-b speaks for itself.
        forged = TelemetryBatch(vehicle_id="drone-a", records=[TelemetryRecord(seq=10**9, ts=1.0, kind="position")])
        own = TelemetryBatch(vehicle_id="drone-b", records=[TelemetryRecord(seq=1, ts=1.0, kind="position")])
        for topic, batch in ((topic_for("drone-a", Channel.TELEMETRY), forged),
                             (topic_for("drone-b", Channel.TELEMETRY), own)):
            client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="drone-b")
            client.username_pw_set("drone-b", "b-secret")
            client.tls_set_context(ssl.create_default_context(cafile=str(d / "ca.crt")))
            client.connect("localhost", secure_broker.port)
            client.loop_start()
            wait_until(client.is_connected, 10, "drone-b's session")
            info = client.publish(topic, encode(batch), qos=1)
            with contextlib.suppress(RuntimeError):  # the broker may cut a session that broke its ACL
                info.wait_for_publish(10)
            client.loop_stop()
            client.disconnect()
        wait_until(lambda: coordinator.vehicle_stats("drone-b").get("accepted") == 1, 20, "drone-b's own record")
        assert coordinator.vehicle_stats("drone-a")["max_seq"] < 10**9, "a forged record must never land"

        # A wrong password never gets a session.
        intruder = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="drone-a-intruder")
        intruder.username_pw_set("drone-a", "guess")
        intruder.tls_set_context(ssl.create_default_context(cafile=str(d / "ca.crt")))
        refused: list[object] = []
        intruder.on_connect = lambda c, u, f, reason, p: refused.append(reason)
        intruder.connect("localhost", secure_broker.port)
        intruder.loop_start()
        wait_until(lambda: refused, 10, "the broker's answer to a wrong password")
        intruder.loop_stop()
        assert getattr(refused[0], "is_failure", False), f"a wrong password must be refused, got {refused[0]}"
    finally:
        if agent.process is not None:
            agent.kill()
        coordinator.stop()
