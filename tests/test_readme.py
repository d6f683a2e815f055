"""Every ```python block of README.md runs as it is, in a fresh interpreter in an empty folder.

A block that cannot (a fragment, or files users must bring) has ``<!-- no-test: reason -->`` on the
line right before its fence; it is reported as skipped with that reason.
"""

import re
import subprocess
import sys
from pathlib import Path

import pytest

README = Path(__file__).resolve().parents[1] / "README.md"
BLOCK = re.compile(r"^(?:<!-- no-test: (?P<reason>[^\n]*?) -->\n)?```python\n(?P<code>.*?)^```$", re.M | re.S)


def _blocks() -> list:
    text = README.read_text()
    out = []
    for m in BLOCK.finditer(text):
        line = text.count("\n", 0, m.start("code")) + 1
        marks = [pytest.mark.skip(reason=f"README.md:{line}: no-test: {m['reason']}")] if m["reason"] else []
        out.append(pytest.param(m["code"], marks=marks, id=f"README.md:{line}"))
    return out


BLOCKS = _blocks()


def test_readme_has_runnable_python_blocks():
    assert sum(not p.marks for p in BLOCKS) >= 2
    assert "<!-- no-test -->" not in README.read_text(), "a no-test marker needs a reason: <!-- no-test: why -->"


@pytest.mark.parametrize("code", BLOCKS)
def test_readme_block_runs(code, tmp_path):
    run = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=900)
    assert run.returncode == 0, f"README block failed:\n{code}\n--- stderr ---\n{run.stderr[-4000:]}"
