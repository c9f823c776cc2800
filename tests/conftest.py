"""Shared fixtures. Real components only: servers bind 127.0.0.1, processes are real processes."""

from __future__ import annotations

import os
import socket
import sys
from pathlib import Path

import pytest

from jobs import compat

compat.install()

ROOT = Path(__file__).resolve().parent.parent
VENV_BIN = Path(sys.executable).parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def deepfusion_cmd() -> list[str]:
    """The installed console script, as a user runs it."""
    exe = VENV_BIN / "deepfusion"
    return [str(exe)] if exe.exists() else [sys.executable, "-m", "jobs.cli"]


@pytest.fixture
def port() -> int:
    return free_port()


@pytest.fixture(scope="session")
def artifacts_dir() -> Path:
    """Where tests leave files worth looking at after a run (screenshots, grids, reports)."""
    path = Path(os.environ.get("DEEPFUSION_TEST_ARTIFACTS", ROOT / "artifacts"))
    path.mkdir(parents=True, exist_ok=True)
    return path
