"""Nothing the user owns is lost: checkpoint --force semantics, atomic files, the user's umask."""

import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from jaxedit.errors import CheckpointError, UsageError
from jaxedit.io import checkpoint, files

PARAMS_A = {"w": np.arange(6, dtype=np.float32).reshape(2, 3)}
PARAMS_B = {"w": -np.arange(6, dtype=np.float32).reshape(2, 3)}


def save(dst, params=PARAMS_A, kind="probe", **kw):
    return checkpoint.save(dst, kind=kind, model={"n": 1}, params=params, **kw)


def test_force_replaces_only_what_jaxedit_wrote(tmp_path):
    dst = save(tmp_path / "ck")
    card = b"# my model card\n\x00\xff"
    (dst / "README.md").write_bytes(card)
    (dst / "notes").mkdir()
    (dst / "notes" / "a.txt").write_text("mine")
    with pytest.raises(CheckpointError, match="already exists.*--force"):
        save(dst, PARAMS_B)
    save(dst, PARAMS_B, force=True)
    assert (dst / "README.md").read_bytes() == card and (dst / "notes" / "a.txt").read_text() == "mine"
    np.testing.assert_array_equal(checkpoint.load(dst).params["w"], PARAMS_B["w"])
    assert checkpoint.read_meta(dst)["files"] == ["jaxedit.json", "params"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ck"]  # no temporary folder left behind


def test_another_kind_is_refused_unless_asked(tmp_path):
    dst = save(tmp_path / "ck")
    (dst / "README.md").write_text("card")
    with pytest.raises(CheckpointError, match="holds a 'probe' checkpoint.*'stylegan2'"):
        save(dst, kind="stylegan2", force=True)
    assert checkpoint.read_meta(dst)["kind"] == "probe"
    save(dst, kind="stylegan2", force=True, replace_kind=True)
    assert checkpoint.read_meta(dst)["kind"] == "stylegan2" and (dst / "README.md").read_text() == "card"


def test_user_files_with_the_names_jaxedit_needs_are_refused(tmp_path):
    user = tmp_path / "mine"
    (user / "params").mkdir(parents=True)
    (user / "params" / "x").write_text("user data")
    with pytest.raises(CheckpointError, match="params exist.*did not write"):
        save(user, force=True)
    assert (user / "params" / "x").read_text() == "user data"
    (tmp_path / "file").write_text("x")
    with pytest.raises(CheckpointError, match="not a folder"):
        save(tmp_path / "file", force=True)
    # a folder of the user's without clashing names: the checkpoint is added beside their files
    other = tmp_path / "other"
    other.mkdir()
    (other / "keep.txt").write_text("k")
    save(other, force=True)
    assert (other / "keep.txt").read_text() == "k" and checkpoint.is_checkpoint(other)


def test_carried_files_are_recorded_and_replaced(tmp_path):
    vocab = tmp_path / "v.txt"
    vocab.write_text("v1")
    dst = save(tmp_path / "ck", files={"vocab.txt": vocab})
    assert (dst / "vocab.txt").read_text() == "v1" and "vocab.txt" in checkpoint.read_meta(dst)["files"]
    save(dst, PARAMS_B, force=True)  # the new checkpoint carries no vocab: the old one (jaxedit's) goes
    assert not (dst / "vocab.txt").exists()


def test_failed_save_leaves_the_old_checkpoint(tmp_path, monkeypatch):
    dst = save(tmp_path / "ck")

    def boom(*a, **k):
        raise RuntimeError("disk on fire")

    monkeypatch.setattr(checkpoint.shutil, "copyfile", boom)  # fails while the new checkpoint is being built
    with pytest.raises(RuntimeError):
        save(dst, PARAMS_B, force=True, files={"x": __file__})
    np.testing.assert_array_equal(checkpoint.load(dst).params["w"], PARAMS_A["w"])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ck"]


def test_new_files_and_folders_get_the_umask(tmp_path):
    old = os.umask(0o027)
    try:
        dst = save(tmp_path / "ck")
        files.write_text(tmp_path / "t.txt", "x")
    finally:
        os.umask(old)
    assert (dst.stat().st_mode & 0o777) == 0o750
    assert ((dst / "jaxedit.json").stat().st_mode & 0o777) == 0o640
    assert ((tmp_path / "t.txt").stat().st_mode & 0o777) == 0o640


def test_atomic_path_keeps_the_old_file_on_error(tmp_path):
    path = files.write_text(tmp_path / "a.json", "old")
    with pytest.raises(KeyboardInterrupt):
        with files.atomic_path(path) as tmp:
            tmp.write_text("half")
            raise KeyboardInterrupt
    assert path.read_text() == "old" and sorted(p.name for p in tmp_path.iterdir()) == [files.LEDGER, "a.json"]


def test_the_ledger_knows_what_jaxedit_wrote(tmp_path, monkeypatch):
    """--force replaces a file only while the ledger's stamp (size, mtime, inode) still matches; folders given for a
    file flag, other users' files in an output folder and temporary files are handled before any work."""
    ours = files.write_text(tmp_path / "ours.json", "{}")
    (tmp_path / "mine.txt").write_text("the user's")
    assert files.wrote(ours) and not files.wrote(tmp_path / "mine.txt")
    files.check_replaceable([ours], True, "--out")
    with pytest.raises(UsageError, match="--out .*ours.json: exists \\(add --force"):
        files.check_replaceable([ours], False, "--out")
    with pytest.raises(UsageError, match="mine.txt: exists and jaxedit did not write it"):
        files.check_replaceable([], True, "--out", folders=[tmp_path])  # every file in an output folder counts
    with pytest.raises(UsageError, match="is a folder, expected a file name"):
        files.check_replaceable([tmp_path], True, "--out")
    (tmp_path / "mine.txt").unlink()
    (tmp_path / ".ours.json.tmp-abc").write_text("a killed write")
    files.check_replaceable([], True, "--out", folders=[tmp_path])  # temporary files are not the user's
    copy = tmp_path / "copy.json"
    copy.write_bytes(ours.read_bytes())
    os.replace(copy, ours)  # same name and size, another inode: not the file jaxedit wrote
    assert not files.wrote(ours)
    (tmp_path / files.LEDGER).write_text("[" * 100_000)  # an unreadable ledger: nothing is jaxedit's, no crash
    assert not files.wrote(ours)
    assert files.wrote(files.write_text(tmp_path / "new.json", "{}"))  # ... and the next write starts a new one
    monkeypatch.setattr(files, "LEDGER", "no/such/folder/ledger")  # a ledger that cannot be written: a warning
    with pytest.warns(UserWarning, match="cannot record the files jaxedit wrote"):
        files.write_text(tmp_path / "more.json", "{}")
    assert (tmp_path / "more.json").read_text() == "{}"


WRITER = """
import sys, numpy as np
from jaxedit.io import files, images
path, kind = sys.argv[1], sys.argv[2]
a = np.zeros((1024, 1024, 3), np.uint8); b = np.full((1024, 1024, 3), 200, np.uint8)
i = 0
while True:
    x = a if i % 2 else b
    (images.save_png(x, path) if kind == "png" else files.save_npy(path, x))
    i += 1
"""


@pytest.mark.parametrize("kind", ["png", "npy"])
def test_a_killed_write_leaves_the_old_or_the_new_file(tmp_path, kind):
    """SIGKILL a process that rewrites one file in a loop, at several random points: the file is
    always whole (one of the two contents), never torn (a killed writer may leave its
    hidden temporary file beside it)."""
    from PIL import Image

    path = tmp_path / f"x.{kind}"
    rng = np.random.default_rng(0)
    for _ in range(4):
        proc = subprocess.Popen([sys.executable, "-c", WRITER, str(path), kind])
        deadline = time.time() + 60
        while not path.exists() and time.time() < deadline:
            time.sleep(0.05)
        time.sleep(float(rng.uniform(0.05, 0.6)))
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        x = np.asarray(Image.open(path)) if kind == "png" else np.load(path)
        assert x.shape == (1024, 1024, 3) and len(np.unique(x)) == 1 and int(x.flat[0]) in (0, 200)
