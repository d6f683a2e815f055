"""The README's numbers are the latest results: every marked table renders from its JSON
(``experiments/readme_tables.py``), and every other table is listed here with the reason it is not."""

import importlib.util
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
_spec = importlib.util.spec_from_file_location("readme_tables", ROOT / "experiments" / "readme_tables.py")
readme_tables = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(readme_tables)

# Tables that hold no measured numbers (features, code layout, what is reproduced), by header line.
HAND_WRITTEN = [
    "| piece | where | status |",
    "| layer | what |",
    "| family | code | what is exact |",
    "| method | `jaxedit/edits/text/` | what is reproduced and tested |",
]
# Measured, but no experiment script writes these numbers yet: the converters' errors against the
# reference fixtures, measured by the tests (tests/test_*parity*, test_tf_pickles, ...).
NOT_YET_COVERED = [
    "| source format | command | measured error vs the reference |",
]


@pytest.fixture(scope="session", autouse=True)
def _session_compilation_cache():
    """Replaces conftest's XLA cache set-up (an ``import jax``): this file reads JSON and text only."""


SEPARATOR = re.compile(r"^\|(\s*:?-{3,}:?\s*\|)+$")


def _tables(text):
    """(section heading, header line, marked) of every markdown table outside code blocks."""
    lines = text.split("\n")
    section, fenced, out = None, False, []
    for i, line in enumerate(lines[:-1]):
        if line.startswith("```"):
            fenced = not fenced
        elif not fenced and line.startswith("#"):
            section = line.lstrip("#").strip()
        elif not fenced and line.startswith("|") and SEPARATOR.match(lines[i + 1]) and not lines[i - 1].startswith("|"):
            out.append((section, line, lines[i - 1].startswith("<!-- table: ")))
    return out


README = readme_tables.README.read_text()
MARKED = list(readme_tables.MARKED.finditer(README))


def test_readme_has_marked_tables():
    assert len(MARKED) >= 12


@pytest.mark.parametrize("marked", MARKED, ids=[m["spec"].split()[-1] for m in MARKED])
def test_marked_table_matches_its_json(marked):
    assert all(line.startswith("|") for line in marked["body"].splitlines()), "a marker holds one table only"
    rendered = readme_tables.render(marked["spec"])
    assert marked["body"] == rendered, (
        f"README table {marked['spec']!r} differs from its JSON; run python experiments/readme_tables.py --write\n"
        f"README:\n{marked['body']}rendered:\n{rendered}"
    )


def test_every_table_is_generated_or_listed():
    unlisted = [
        f"{section}: {header}"
        for section, header, marked in _tables(README)
        if not marked and header not in HAND_WRITTEN + NOT_YET_COVERED
    ]
    assert not unlisted, (
        "README tables with measured numbers are written by experiments/readme_tables.py from a JSON "
        "(add a formatter and markers); hand-written ones are listed in this test:\n" + "\n".join(unlisted)
    )


def test_the_lists_name_tables_that_exist():
    unmarked = {header for _, header, marked in _tables(README) if not marked}
    assert set(HAND_WRITTEN + NOT_YET_COVERED) <= unmarked


def test_check_mode_passes(capsys):
    assert readme_tables.main(["--check"]) == 0, capsys.readouterr().out
