"""Hardware profiles: one TOML file per supported vehicle computer and its devices, shipped as package data.

A profile is a partial agent settings file (no vehicle id). ``fleet-agent run --profile NAME --config
site.toml`` loads the profile, then the site file over it: any key of the profile can be overridden.
The first comment line of a profile describes it (``fleet-agent profiles`` lists them).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from protocols import SettingsError, read_toml

PROFILE_DIR = Path(__file__).resolve().parent


def profile_names() -> list[str]:
    """Names of the shipped profiles (file names without ``.toml``)."""
    return sorted(p.stem for p in PROFILE_DIR.glob("*.toml"))


def describe(name: str) -> str:
    """The profile's one-line description (its first comment)."""
    for line in (PROFILE_DIR / f"{name}.toml").read_text().splitlines():
        if line.startswith("#"):
            return line.lstrip("# ").strip()
    return ""


def load_profile(name: str) -> dict[str, Any]:
    """The profile's settings as a table.

    Raises:
        SettingsError: no such profile (the message lists the shipped ones).
    """
    path = PROFILE_DIR / f"{name}.toml"
    if name not in profile_names():
        raise SettingsError(f"profile {name!r}", None,
                            f"no such hardware profile; shipped: {', '.join(profile_names())}")
    return read_toml(path)
