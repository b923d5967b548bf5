"""Key management over REST, roles, the audit log of state-changing calls, and JSON logs."""

from __future__ import annotations

import json
import logging
from pathlib import Path

from fastapi.testclient import TestClient

from coordinator.api.app import create_app
from coordinator.auth import Role, create_key
from coordinator.embedded_store import EmbeddedStore
from coordinator.ingest_counters import IngestCounters
from coordinator.log_format import JsonFormatter


def test_admins_manage_keys_and_every_state_change_is_audited(tmp_path: Path) -> None:
    store = EmbeddedStore(tmp_path / "c.db")
    admin = {"Authorization": f"Bearer {create_key(store, Role.ADMIN, 'alice')}"}
    viewer = {"Authorization": f"Bearer {create_key(store, Role.VIEWER, 'wall-screen')}"}
    with TestClient(create_app(store, IngestCounters())) as client:
        refused = client.post("/v1/keys", json={"role": "admin", "name": "sneaky"}, headers=viewer)
        assert refused.status_code == 403 and "needs the admin role" in refused.json()["detail"]
        anonymous = client.post("/v1/keys", json={"role": "admin", "name": "anon"})
        assert anonymous.status_code == 401
        bad = client.post("/v1/keys", json={"role": "superuser", "name": ""}, headers=admin)
        assert bad.status_code == 422 and "role" in bad.text and "name" in bad.text

        created = client.post("/v1/keys", json={"role": "operator", "name": "dispatch"}, headers=admin)
        assert created.status_code == 201
        new = created.json()
        new_key = {"Authorization": f"Bearer {new['key']}"}
        assert client.get("/v1/vehicles", headers=new_key).status_code == 200
        listed = client.get("/v1/keys", headers=admin).json()
        assert {k["name"] for k in listed} == {"alice", "wall-screen", "dispatch"}
        assert all("key" not in k and "secret_hash" not in k for k in listed), "secrets never leave"

        assert client.delete(f"/v1/keys/{new['key_id']}", headers=admin).status_code == 204
        assert client.get("/v1/vehicles", headers=new_key).status_code == 401
        assert client.delete(f"/v1/keys/{new['key_id']}", headers=admin).status_code == 404

        assert client.get("/v1/audit", headers=viewer).status_code == 403
        audit = client.get("/v1/audit", headers=admin).json()
    trail = [(e["key_name"], e["method"], e["path"], e["status"]) for e in reversed(audit)]
    assert trail == [
        ("wall-screen", "POST", "/v1/keys", 403),
        ("(no valid key)", "POST", "/v1/keys", 401),
        ("alice", "POST", "/v1/keys", 422),
        ("alice", "POST", "/v1/keys", 201),
        ("alice", "DELETE", f"/v1/keys/{new['key_id']}", 204),
        ("alice", "DELETE", f"/v1/keys/{new['key_id']}", 404),
    ], "reads are not audited; every state-changing call is, refused ones too"
    assert all(e["at"] > 1_700_000_000 for e in audit)


def test_json_log_lines_carry_time_level_logger_and_message() -> None:
    record = logging.LogRecord("coordinator.ingest", logging.WARNING, __file__, 1, "rejected %d messages", (3,), None)
    line = json.loads(JsonFormatter().format(record))
    assert line["level"] == "warning" and line["logger"] == "coordinator.ingest"
    assert line["msg"] == "rejected 3 messages" and line["ts"].endswith("+00:00")
