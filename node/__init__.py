"""The telemetry ingestor node."""

from __future__ import annotations

import tomllib
from importlib import metadata
from pathlib import Path

DISTRIBUTION = "telemetry-ingestor"
PYPROJECT = Path(__file__).resolve().parents[1] / "pyproject.toml"


def version(pyproject: Path | None = None) -> str:
    """The installed package's version, else the one pyproject.toml declares (said once, there)."""
    try:
        return metadata.version(DISTRIBUTION)
    except metadata.PackageNotFoundError:
        pass
    try:
        with (pyproject or PYPROJECT).open("rb") as f:
            return str(tomllib.load(f)["project"]["version"])
    except (OSError, KeyError, tomllib.TOMLDecodeError):
        return "unknown"
