"""Packaging: pyproject.toml installs every package and every default-model file; the installed
package works from an empty folder (.ci/check_installed, a CI step; here with ``-m slow``)."""

import re
import subprocess
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SETUPTOOLS = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]


def _packages_in(name: str, folder: Path) -> set[str]:
    """``name`` and its subpackages: every real (not symlinked) folder with an ``__init__.py``."""
    found = set()
    for init in folder.rglob("__init__.py"):
        rel = init.parent.relative_to(folder)
        if not any((folder / Path(*rel.parts[:i + 1])).is_symlink() for i in range(len(rel.parts))):
            found.add(".".join((name, *rel.parts)))
    return found


def test_listed_packages_are_the_tree():
    roots = {"jaxedit": "jaxedit", **SETUPTOOLS["package-dir"]}
    tree = set().union(*(_packages_in(name, ROOT / folder) for name, folder in roots.items()))
    listed = SETUPTOOLS["packages"]
    assert len(listed) == len(set(listed))
    assert set(listed) == tree, f"missing from pyproject: {sorted(tree - set(listed))}; " \
                                f"not in the tree: {sorted(set(listed) - tree)}"


def test_converters_symlink_lets_import_linter_see_them():
    link = ROOT / "jaxedit" / "converters"
    assert link.is_symlink() and link.resolve() == (ROOT / SETUPTOOLS["package-dir"]["jaxedit.converters"]).resolve()


def test_package_data_covers_every_default_model_file():
    """Every file of every default model is installed (run folders such as the GAN's training state are not)."""
    folder = ROOT / SETUPTOOLS["package-dir"]["jaxedit.checkpoints"]
    patterns = [re.compile(re.escape(g).replace(r"\*", "[^/]*")) for g in
                SETUPTOOLS["package-data"]["jaxedit.checkpoints"]]
    tracked = subprocess.run(["git", "ls-files", "-z", "--", "."], cwd=folder, capture_output=True, check=True)
    files = [f for f in tracked.stdout.decode().split("\0")  # the models (a jaxedit.json on top), not run folders
             if f and not f.endswith(".py") and (folder / f.split("/")[0] / "jaxedit.json").is_file()]
    assert files, f"no tracked default-model files under {folder}"
    left_out = [f for f in files if not any(p.fullmatch(f) for p in patterns)]
    assert not left_out, f"not installed by [tool.setuptools.package-data]: {left_out}"


@pytest.mark.slow
def test_non_editable_install_works_from_an_empty_folder():
    """The CI step itself: fresh venv, ``pip install .``, demo / sample / convert from an empty folder."""
    run = subprocess.run(["bash", str(ROOT / ".ci" / "check_installed")], capture_output=True, text=True)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    assert "installed package OK" in run.stdout
