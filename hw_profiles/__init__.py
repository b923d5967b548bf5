"""Hardware profiles: one TOML file per supported vehicle computer and autopilot, shipped as package data."""

from __future__ import annotations

from pathlib import Path

PROFILE_DIR = Path(__file__).resolve().parent


def profile_names() -> list[str]:
    """Names of the shipped profiles (file names without ``.toml``)."""
    return sorted(p.stem for p in PROFILE_DIR.glob("*.toml"))
