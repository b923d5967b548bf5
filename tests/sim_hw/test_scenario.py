"""``fleet-sim scenario``: a scenario file's errors name the key, the seed decides the plan, and a short run on
the real stack injects its failures and reports what the fleet did: nothing lost across a link outage."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from sim_hw.scenario import ScenarioError, load_scenario, plan
from tests.harness import ROOT

SHORT = """
name = "short"
seed = {seed}
duration_s = 36
speedup = 8
sample_s = 1.0

[fleet]
copter = 1
taxi = 1

[demand]
orders_every_s = 2.0

[[failures]]
kind = "link_outage"
vehicle = "taxi-02"
at_s = 8
for_s = 8

[[failures]]
kind = "gps_lost"
vehicle = "copter-01"
at_s = 12
for_s = 6
"""


def write(tmp_path: Path, text: str, name: str = "s.toml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def test_the_seed_decides_the_plan(tmp_path: Path) -> None:
    one = load_scenario(write(tmp_path, SHORT.format(seed=3), "a.toml"))
    again = load_scenario(write(tmp_path, SHORT.format(seed=3), "b.toml"))
    other = load_scenario(write(tmp_path, SHORT.format(seed=4), "c.toml"))
    assert plan(one) == plan(again) and plan(one) != plan(other)
    planned = plan(one)
    assert planned["vehicles"] == ["copter-01", "taxi-02"] and len(planned["orders"]) >= 5
    assert all(o["at_s"] < 36 * 0.8 for o in planned["orders"])
    assert [f["kind"] for f in planned["failures"]] == ["link_outage", "gps_lost"]


@pytest.mark.parametrize(("change", "message"), [
    (("copter = 1", "boat = 1"), "key 'fleet': unknown kinds ['boat']"),
    (('vehicle = "taxi-02"', 'vehicle = "taxi-09"'), "key 'failures[0].vehicle': 'taxi-09' is not in the fleet"),
    (('kind = "gps_lost"', 'kind = "meteor"'), "failures[1].kind"),
    (("for_s = 8", "for_s = -1"), "failures[0].for_s"),
    (("[demand]", "[demand"), "not TOML"),
])
def test_a_bad_scenario_names_the_file_and_the_key(tmp_path: Path, change: tuple[str, str], message: str) -> None:
    path = write(tmp_path, SHORT.format(seed=1).replace(*change))
    with pytest.raises(ScenarioError) as bad:
        load_scenario(path)
    assert str(path) in str(bad.value) and message in str(bad.value)
    done = subprocess.run([sys.executable, "-m", "sim_hw", "scenario", str(path)], cwd=ROOT, capture_output=True,
                          text=True, check=False)
    assert done.returncode == 2 and message in done.stderr


def test_a_short_scenario_runs_injects_its_failures_and_reports(tmp_path: Path) -> None:
    path = write(tmp_path, SHORT.format(seed=5))
    out = tmp_path / "report"
    done = subprocess.run([sys.executable, "-m", "sim_hw", "scenario", str(path), "--out", str(out), "--workdir",
                           str(tmp_path / "work")], cwd=ROOT, capture_output=True, text=True, timeout=150, check=False)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "inject link_outage on taxi-02 for 8 s" in done.stdout and "scenario 'short' done" in done.stdout
    report = json.loads((out / "report.json").read_text())
    assert report["plan"] == plan(load_scenario(path))
    kpis = report["kpis"]
    assert kpis["orders_placed"] == len(report["plan"]["orders"])
    assert kpis["telemetry_delivered"] > 200 and kpis["telemetry_lost"] == 0  # the outbox kept the outage's records
    assert kpis["alerts_by_kind"].get("gps.fix_lost", 0) >= 1
    assert set(kpis) >= {"served_share", "mean_pickup_s", "p90_pickup_s", "utilisation", "empty_km",
                         "incentives_earned", "alerts", "telemetry_lost"}
    assert [f["kind"] for f in report["failures_applied"]] == ["link_outage", "gps_lost"]
    outage = report["failures_applied"][0]
    during = [r["online"] for r in report["timeline"] if outage["from_s"] + 3 < r["t"] < outage["to_s"]]
    assert during and min(during) == 1  # the taxi's Last Will told the coordinator it was gone
    assert report["timeline"][-1]["online"] == 2
    assert (out / "kpis.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
