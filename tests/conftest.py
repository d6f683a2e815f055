"""Shared test helpers: the reference fixtures live in ../shared/fixtures beside the repo."""

import os
from pathlib import Path

import numpy as np
import pytest

# Tests are bound by XLA compile time, not run time: LLVM at -O0 compiles ~2x faster here.
# Program semantics do not depend on the optimization level (rounding may); XLA_FLAGS overrides.
if "xla_backend_optimization_level" not in os.environ.get("XLA_FLAGS", ""):
    os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " --xla_backend_optimization_level=0").strip()

FIXTURES = Path(__file__).resolve().parents[1].parent / "shared" / "fixtures"


def fixture(name: str) -> Path:
    """Path of a reference fixture; when it is absent, skips the test (with the reason), or fails it
    where ``JAXEDIT_REQUIRE_FIXTURES=1`` (CI)."""
    path = FIXTURES / name
    if not path.exists():
        missing = f"reference fixture {name} not found (expected ../shared/fixtures beside the repo: {FIXTURES})"
        if os.environ.get("JAXEDIT_REQUIRE_FIXTURES") == "1":
            pytest.fail(missing)
        pytest.skip(missing)
    return path


def ref(name: str) -> dict[str, np.ndarray]:
    return dict(np.load(fixture(name)))


def max_abs(a, b) -> float:
    return float(np.max(np.abs(np.asarray(a, np.float64) - np.asarray(b, np.float64))))


@pytest.fixture(scope="session", autouse=True)
def _session_compilation_cache(tmp_path_factory):
    """One fresh persistent XLA cache per test run, shared by the pytest-xdist workers (and by the
    CLI, via ``JAXEDIT_CACHE``): a program jitted by several tests or workers compiles once, and no
    run depends on a cache an earlier run left in ``~/.cache``."""
    root = tmp_path_factory.getbasetemp()
    if os.environ.get("PYTEST_XDIST_WORKER"):
        root = root.parent  # the run's directory, common to its workers
    cache = root / "xla-cache"
    cache.mkdir(exist_ok=True)
    os.environ["JAXEDIT_CACHE"] = str(cache)
    from jaxedit.config import enable_compilation_cache

    enable_compilation_cache()
