"""The Debian packages: the agent's built from this checkout, unpacked into a temporary root, run from there
(`--version`, `doctor`); the systemd units pass `systemd-analyze verify`; installed with dpkg into a
temporary root and upgraded, it keeps the site's config and the outbox; installed for real in a Debian tree
(dpkg in a chroot, its maintainer scripts run), it adds its user and a purge keeps the outbox. The agent's
package for the other
architecture (arm64 on a PC) is cross-built and run under user-mode emulation in a Debian tree of that
architecture. The coordinator's, built the same way, runs from its unpacked tree with its packaged settings."""

from __future__ import annotations

import os
import platform
import shutil
import subprocess
import sys
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.harness import ROOT

PREFIX = "opt/fleetedge/agent"
# The Debian python3 the packages are built on, and depend on.
PYTHON = subprocess.run(["/usr/bin/python3", "-c", "import sys; print('%d.%d' % sys.version_info[:2])"],
                        capture_output=True, text=True, check=True).stdout.strip()
# The other architecture: (Debian's name, the machine, its ELF e_machine).
OTHER = {"amd64": ("arm64", "aarch64", 183), "arm64": ("amd64", "x86_64", 62)}
ELF_MACHINE = {"x86_64": 62, "aarch64": 183}
# A Raspberry Pi 4's processors for the emulated tree: user-mode emulation shows a program the host's
# /proc/cpuinfo, and onnxruntime's CPU detection crashes on a PC's description in an arm64 process.
PI4_CPUINFO = "".join(f"processor\t: {n}\nBogoMIPS\t: 108.00\nFeatures\t: fp asimd evtstrm crc32 cpuid\n"
                      "CPU implementer\t: 0x41\nCPU architecture: 8\nCPU variant\t: 0x0\nCPU part\t: 0xd08\n"
                      "CPU revision\t: 3\n\n" for n in range(4))


def build(package: str, out: Path, *arch: str) -> Path:
    if shutil.which("dpkg-deb") is None:
        pytest.fail("dpkg-deb is missing: this test builds a Debian package (apt-get install dpkg)")
    subprocess.run(["bash", str(ROOT / "packaging" / "build-deb.sh"), "--package", package, "--version", "1.0.0",
                    "--out", str(out), *(("--arch", *arch) if arch else ())], check=True, capture_output=True,
                   timeout=900)
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
    assert "Package: fleetedge-agent" in info and "Version: 1.0.0" in info
    assert f"Depends: python{PYTHON}, adduser, systemd" in info
    files = subprocess.run(["dpkg-deb", "--contents", str(deb)], capture_output=True, text=True, check=True).stdout
    for path in ("./usr/bin/fleet-agent -> /opt/fleetedge/agent/bin/fleet-agent", "./etc/fleetedge/agent.toml",
                 "./lib/systemd/system/fleetedge-agent.service", "./var/lib/fleetedge/",
                 "./usr/share/doc/fleetedge-agent/udev/99-fleetedge.rules", "edge_agent/models/battery-1.0.0.onnx",
                 "./usr/share/doc/fleetedge-agent/copyright", "fleetedge-0.1.0.dist-info/licenses/LICENSE"):
        assert path in files, path
    root = unpack(deb, tmp_path / "root")
    assert "License: Apache-2.0" in (root / "usr/share/doc/fleetedge-agent/copyright").read_text()
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


def release() -> str:
    """This machine's Debian release: the trees are made of the one the packages are built on."""
    return next(line.split("=", 1)[1].strip('"') for line in Path("/etc/os-release").read_text().splitlines()
                if line.startswith("VERSION_CODENAME="))


def debootstrap() -> str:
    found = shutil.which("debootstrap") or "/usr/sbin/debootstrap"
    if not Path(found).exists():
        pytest.fail("debootstrap is missing (apt-get install debootstrap; scripts/install.sh --dev does)")
    return found


def test_a_real_install_adds_the_user_in_dialout_and_a_purge_keeps_the_outbox(deb: Path, tmp_path: Path) -> None:
    if os.geteuid() != 0:
        pytest.fail("this test installs the package with dpkg in a chroot: run the tests as root (CI does)")
    root = tmp_path / "debian"
    subprocess.run([debootstrap(), "--variant=minbase", "--include=adduser,python3", release(), str(root),
                    "http://deb.debian.org/debian"], check=True, capture_output=True, timeout=900)
    shutil.copy(deb, root / "tmp/agent.deb")

    def inside(*command: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(["chroot", str(root), *command], capture_output=True, text=True, timeout=300,
                              check=False)

    # The tree has no systemd (the package depends on it): with none running, the scripts leave the unit be.
    first = inside("dpkg", "-i", "--force-depends", "/tmp/agent.deb")
    assert first.returncode == 0, first.stdout + first.stderr
    _, _, uid, gid, _, home, shell = inside("getent", "passwd", "fleetedge").stdout.strip().split(":")
    assert (home, shell) == ("/var/lib/fleetedge", "/usr/sbin/nologin") and int(uid) < 1000  # a system user
    assert "dialout" in inside("id", "-nG", "fleetedge").stdout.split()  # serial ports
    state = (root / "var/lib/fleetedge").stat()
    assert (state.st_uid, state.st_gid, state.st_mode & 0o777) == (int(uid), int(gid), 0o750)
    config = (root / "etc/fleetedge/agent.toml").stat()
    assert (config.st_uid, config.st_gid, config.st_mode & 0o777) == (0, int(gid), 0o640)
    # The service's user reads its config and runs the agent.
    doctor = inside("runuser", "-u", "fleetedge", "--", "fleet-agent", "doctor", "--config",
                    "/etc/fleetedge/agent.toml")
    assert doctor.returncode == 1 and "FAIL  vehicle.id is still CHANGE-ME" in doctor.stdout, doctor.stderr
    (root / "var/lib/fleetedge/outbox.db").write_bytes(b"flight data not yet synced")
    purge = inside("dpkg", "--purge", "fleetedge-agent")
    assert purge.returncode == 0, purge.stderr
    assert not (root / "opt/fleetedge").exists() and not (root / "etc/fleetedge/agent.toml").exists()
    assert (root / "var/lib/fleetedge/outbox.db").read_bytes() == b"flight data not yet synced"
    again = inside("dpkg", "-i", "--force-depends", "/tmp/agent.deb")  # the user is there already
    assert again.returncode == 0, again.stdout + again.stderr
    assert inside("getent", "passwd", "fleetedge").stdout.split(":")[2] == uid


def elf_machines(tree: Path) -> Counter[int]:
    """How many ELF files under ``tree`` are built for each machine (ELF e_machine)."""
    found: Counter[int] = Counter()
    for path in tree.rglob("*"):
        if path.is_file() and not path.is_symlink():
            with path.open("rb") as f:
                head = f.read(20)
            if head[:4] == b"\x7fELF":
                found[int.from_bytes(head[18:20], "little")] += 1
    return found


@pytest.fixture(scope="module")
def other_arch() -> tuple[str, str, int]:
    host = subprocess.run(["dpkg", "--print-architecture"], capture_output=True, text=True, check=True).stdout.strip()
    if host not in OTHER:
        pytest.fail(f"no cross-build target for a {host} host: the packages are built for amd64 and arm64")
    return OTHER[host]


@pytest.fixture(scope="module")
def other_root(other_arch: tuple[str, str, int], tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A minimal Debian tree of the other architecture, of this machine's release, with its python3."""
    arch, machine, _ = other_arch
    if shutil.which(f"qemu-{machine}-static") is None:
        pytest.fail(f"running the {arch} package needs qemu-{machine}-static "
                    "(apt-get install qemu-user-static; scripts/install.sh --dev does)")
    root = tmp_path_factory.mktemp("other") / "root"
    subprocess.run([debootstrap(), "--foreign", f"--arch={arch}", "--variant=minbase",
                    "--include=python3,libsqlite3-0,libstdc++6", release(), str(root), "http://deb.debian.org/debian"],
                   check=True, capture_output=True, timeout=900)
    # The first stage unpacks the base system and only downloads what --include adds: unpack that too (no
    # maintainer scripts are needed to run python3).
    for package in sorted((root / "var/cache/apt/archives").glob("*.deb")):
        subprocess.run(["dpkg", "-x", str(package), str(root)], check=True)
    if machine == "aarch64":
        (root / "proc").mkdir(exist_ok=True)
        (root / "proc/cpuinfo").write_text(PI4_CPUINFO)
        cpus = root / "sys/devices/system/cpu"
        cpus.mkdir(parents=True, exist_ok=True)
        for name, value in (("possible", "0-3"), ("present", "0-3"), ("online", "0-3"), ("kernel_max", "255")):
            (cpus / name).write_text(value + "\n")
    return root


def test_the_agent_cross_built_for_the_other_architecture_runs_there(
        other_arch: tuple[str, str, int], other_root: Path, tmp_path: Path) -> None:
    arch, machine, e_machine = other_arch
    package = build("agent", tmp_path / "out", arch)
    info = subprocess.run(["dpkg-deb", "--info", str(package)], capture_output=True, text=True, check=True).stdout
    assert f"Architecture: {arch}" in info and f"Depends: python{PYTHON}, adduser, systemd" in info
    unpack(package, other_root)
    # Every native library it carries is for the target, none for this machine.
    machines = elf_machines(other_root / PREFIX)
    assert machines[e_machine] > 20 and set(machines) == {e_machine}, machines
    assert ELF_MACHINE[platform.machine()] != e_machine

    def emulated(*args: str) -> subprocess.CompletedProcess[str]:
        # -L: the target's files first (its python3, libc, the package); -0: the program sees itself as the
        # environment's python, so it finds its pyvenv.cfg and packages as it will on the board.
        return subprocess.run([f"qemu-{machine}-static", "-L", str(other_root), "-0", f"/{PREFIX}/bin/python",
                               str(other_root / f"usr/bin/python{PYTHON}"), f"/{PREFIX}/bin/fleet-agent", *args],
                              capture_output=True, text=True, timeout=300, check=False)

    version = emulated("--version")
    assert version.returncode == 0 and version.stdout.strip() == "fleet-agent 0.1.0", version
    doctor = emulated("doctor", "--config", "/etc/fleetedge/agent.toml")
    assert doctor.returncode == 1, doctor.stdout + doctor.stderr
    assert "FAIL  vehicle.id is still CHANGE-ME" in doctor.stdout
    # onnxruntime's build for the target loads both shipped models and reproduces their reference outputs.
    assert "model battery 1.0.0: loads and passes its health check" in doctor.stdout
    assert "model delivery_risk 1.0.0: loads and passes its health check" in doctor.stdout


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
