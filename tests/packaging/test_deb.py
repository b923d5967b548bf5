"""The Debian packages: the agent's built from this checkout, unpacked into a temporary root, run from there
(`--version`, `doctor`); the systemd units pass `systemd-analyze verify`; installed with dpkg into a
temporary root and upgraded, it keeps the site's config and the outbox. The coordinator's, built the same
way, runs from its unpacked tree with its packaged settings."""

from __future__ import annotations

import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.harness import ROOT

PREFIX = "opt/fleetedge/agent"


def build(package: str, out: Path) -> Path:
    if shutil.which("dpkg-deb") is None:
        pytest.fail("dpkg-deb is missing: this test builds a Debian package (apt-get install dpkg)")
    subprocess.run(["bash", str(ROOT / "packaging" / "build-deb.sh"), "--package", package, "--version", "1.0.0",
                    "--out", str(out)], check=True, capture_output=True, timeout=900)
    [built] = out.glob(f"fleetedge-{package}_1.0.0_*.deb")
    return built


@pytest.fixture(scope="module")
def deb(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    yield build("agent", tmp_path_factory.mktemp("deb"))


def unpack(deb: Path, root: Path) -> Path:
    subprocess.run(["dpkg", "-x", str(deb), str(root)], check=True)
    return root


def installed(root: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """Run the installed agent from ``root`` (its scripts name /opt/...: run them with the tree's python)."""
    return subprocess.run([str(root / PREFIX / "bin" / "python"), str(root / PREFIX / "bin" / "fleet-agent"), *args],
                          capture_output=True, text=True, timeout=120, check=False)


def test_the_package_holds_a_working_agent(deb: Path, tmp_path: Path) -> None:
    info = subprocess.run(["dpkg-deb", "--info", str(deb)], capture_output=True, text=True, check=True).stdout
    assert "Package: fleetedge-agent" in info and "Version: 1.0.0" in info and "python3 (>= 3.11)" in info
    files = subprocess.run(["dpkg-deb", "--contents", str(deb)], capture_output=True, text=True, check=True).stdout
    for path in ("./usr/bin/fleet-agent -> /opt/fleetedge/agent/bin/fleet-agent", "./etc/fleetedge/agent.toml",
                 "./lib/systemd/system/fleetedge-agent.service", "./var/lib/fleetedge/",
                 "./usr/share/doc/fleetedge-agent/udev/99-fleetedge.rules", "edge_agent/models/battery-1.0.0.onnx"):
        assert path in files, path
    root = unpack(deb, tmp_path / "root")
    version = installed(root, "--version")
    assert version.returncode == 0 and version.stdout.strip() == "fleet-agent 0.1.0", version
    # The packaged config as shipped (before a site fills it in): doctor runs from the installed tree and says
    # what to fix.
    doctor = installed(root, "doctor", "--config", str(root / "etc/fleetedge/agent.toml"))
    assert doctor.returncode == 1, doctor.stdout + doctor.stderr
    assert "FAIL  vehicle.id is still CHANGE-ME" in doctor.stdout
    assert "FAIL  autopilot.device: /dev/fleetedge/autopilot does not exist" in doctor.stdout
    assert "model battery 1.0.0: loads and passes its health check" in doctor.stdout
    assert "FAIL  broker:" in doctor.stdout


def test_the_units_pass_systemd_analyze_verify(deb: Path, tmp_path: Path) -> None:
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        pytest.fail("systemd-analyze is missing (apt-get install systemd; scripts/install.sh --dev does)")
    root = unpack(deb, tmp_path / "root")
    coordinator = str(Path(sys.executable).parent / "fleet-coordinator")  # this environment's
    # verify checks that ExecStart's program exists: point it at the unpacked agent and this checkout's
    # coordinator (the units name /usr/bin, where the packages put them).
    units = tmp_path / "units"
    units.mkdir()
    for name, program in (("fleetedge-agent.service", str(root / PREFIX / "bin" / "fleet-agent")),
                          ("fleetedge-coordinator.service", coordinator)):
        text = (ROOT / "packaging" / "systemd" / name).read_text()
        binary = "/usr/bin/fleet-agent" if "agent" in name else "/usr/bin/fleet-coordinator"
        assert binary in text
        (units / name).write_text(text.replace(binary, program))
        done = subprocess.run([analyze, "verify", str(units / name)], capture_output=True, text=True, check=False)
        assert done.returncode == 0 and done.stderr.strip() == "", (name, done.stderr)
    agent_unit = (ROOT / "packaging" / "systemd" / "fleetedge-agent.service").read_text()
    for hardening in ("Type=notify", "WatchdogSec=", "Restart=on-failure", "ProtectSystem=strict", "PrivateTmp=true",
                      "NoNewPrivileges=true", "SupplementaryGroups=dialout", "User=fleetedge"):
        assert hardening in agent_unit, hardening


def test_an_upgrade_keeps_the_sites_config_and_the_outbox(deb: Path, tmp_path: Path) -> None:
    root = tmp_path / "root"
    for d in ("var/lib/dpkg/info", "var/lib/dpkg/updates", "var/lib/dpkg/triggers"):
        (root / d).mkdir(parents=True)
    for f in ("var/lib/dpkg/status", "var/lib/dpkg/available"):
        (root / f).touch()

    def dpkg_install(package: Path) -> None:
        # Maintainer scripts run outside a chroot and honour DPKG_ROOT (they add no users there).
        subprocess.run(["dpkg", f"--root={root}", "--force-script-chrootless", "--force-depends", "-i",
                        str(package)], check=True, capture_output=True, env={"DPKG_ROOT": str(root),
                                                                               "PATH": "/usr/sbin:/usr/bin:/sbin:/bin"})

    dpkg_install(deb)
    config = root / "etc/fleetedge/agent.toml"
    config.write_text(config.read_text().replace('id = "CHANGE-ME"', 'id = "drone-42"'))
    outbox = root / "var/lib/fleetedge/outbox.db"
    outbox.write_bytes(b"flight data not yet synced")
    newer = tmp_path / "newer"
    subprocess.run(["dpkg-deb", "-R", str(deb), str(newer)], check=True)
    control = newer / "DEBIAN/control"
    control.write_text(control.read_text().replace("Version: 1.0.0", "Version: 1.0.1"))
    upgrade = tmp_path / "fleetedge-agent_1.0.1.deb"
    subprocess.run(["dpkg-deb", "--root-owner-group", "-b", str(newer), str(upgrade)], check=True,
                   capture_output=True)
    dpkg_install(upgrade)
    status = subprocess.run(["dpkg", f"--root={root}", "-s", "fleetedge-agent"], capture_output=True, text=True,
                            check=True).stdout
    assert "Version: 1.0.1" in status and "install ok installed" in status
    assert 'id = "drone-42"' in config.read_text()  # the conffile as the site left it
    assert outbox.read_bytes() == b"flight data not yet synced"
    assert installed(root, "--version").stdout.strip() == "fleet-agent 0.1.0"


def test_the_coordinator_package_runs_from_its_tree(tmp_path: Path) -> None:
    package = build("coordinator", tmp_path / "out")
    files = subprocess.run(["dpkg-deb", "--contents", str(package)], capture_output=True, text=True,
                           check=True).stdout
    for path in ("./usr/bin/fleet-coordinator -> /opt/fleetedge/coordinator/bin/fleet-coordinator",
                 "./etc/fleetedge/coordinator.toml", "./lib/systemd/system/fleetedge-coordinator.service",
                 "coordinator/dashboard/index.html"):
        assert path in files, path
    root = unpack(package, tmp_path / "root")
    tree = root / "opt/fleetedge/coordinator/bin"

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([str(tree / "python"), str(tree / "fleet-coordinator"), *args], capture_output=True,
                              text=True, timeout=120, check=False)

    assert run("--version").stdout.strip() == "fleet-coordinator 0.1.0"
    shown = run("config", "--config", str(root / "etc/fleetedge/coordinator.toml"))
    assert shown.returncode == 0 and '"path": "/var/lib/fleetedge/coordinator.db"' in shown.stdout, shown.stderr
    control = subprocess.run(["dpkg-deb", "-e", str(package), str(tmp_path / "control")], check=True)
    assert control.returncode == 0
    postinst = (tmp_path / "control" / "postinst").read_text()
    assert "fleetedge-coordinator.service" in postinst and '"no" = "yes"' in postinst  # no dialout for it
