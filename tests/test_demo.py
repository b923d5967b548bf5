"""The README's main command: the demo starts, records arrive, and it shuts down cleanly."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path


def test_demo_runs_shows_records_arriving_and_stops_cleanly(tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "sim_hw", "demo", "--vehicles", "3", "--duration", "6", "--api-port", "0",
         "--workdir", str(tmp_path / "demo")],
        capture_output=True, text=True, timeout=90, check=False)
    assert done.returncode == 0, done.stderr
    out = done.stdout
    assert re.search(r"viewer key: fe_\w+", out), out
    progress = re.findall(r"vehicles online (\d+)/3, records received (\d+), duplicates dropped \d+, gaps (\d+)", out)
    assert progress, out
    online, received, gaps = progress[-1]
    assert online == "3" and int(received) > 100 and gaps == "0", out
    assert "demo stopped cleanly" in out
    assert "Traceback" not in done.stderr, done.stderr
