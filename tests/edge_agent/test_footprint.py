"""The vehicle install stays lean: running the agent never imports the coordinator's web stack."""

from __future__ import annotations

import subprocess
import sys

CHECK = """
import sys
import edge_agent.agent, edge_agent.cli, edge_agent.uplink, edge_agent.outbox
heavy = sorted(m for m in ("fastapi", "uvicorn", "starlette", "pydantic", "amqtt", "redis", "coordinator")
               if m in sys.modules)
print(",".join(heavy))
"""


def test_agent_imports_no_cloud_dependencies() -> None:
    done = subprocess.run([sys.executable, "-c", CHECK], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "", f"the agent pulls in {done.stdout.strip()}"
