"""Shared test helpers: the reference fixtures live in ../shared/fixtures beside the repo."""

from pathlib import Path

import numpy as np
import pytest

FIXTURES = Path(__file__).resolve().parents[1].parent / "shared" / "fixtures"


def fixture(name: str) -> Path:
    """Path of a reference fixture; skips the test (with the reason) when fixtures are absent."""
    path = FIXTURES / name
    if not path.exists():
        pytest.skip(f"reference fixture {name} not found (expected ../shared/fixtures beside the repo: {FIXTURES})")
    return path


def ref(name: str) -> dict[str, np.ndarray]:
    return dict(np.load(fixture(name)))


def max_abs(a, b) -> float:
    return float(np.max(np.abs(np.asarray(a, np.float64) - np.asarray(b, np.float64))))
