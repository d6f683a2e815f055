"""Ctrl-C and SIGTERM end long commands cleanly: exit 130 / 143 and only complete files on disk."""

import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

JAXEDIT = shutil.which("jaxedit", path=str(Path(sys.executable).parent)) or shutil.which("jaxedit")


def interrupted(args, sig, after: float, cwd, when: str | None = None):
    """Run ``jaxedit ARGS``, send ``sig`` after ``after`` seconds, or as soon as a stderr line contains ``when``
    (then ``after`` is the longest wait); -> (returncode, stderr)."""
    proc = subprocess.Popen([JAXEDIT, *map(str, args)], cwd=cwd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            text=True)
    lines, seen = [], threading.Event()

    def read():
        for line in proc.stderr:
            lines.append(line)
            if when is not None and when in line:
                seen.set()

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    seen.wait(after) if when is not None else time.sleep(after)
    proc.send_signal(sig)
    proc.wait(timeout=600)
    reader.join(timeout=60)
    return proc.returncode, "".join(lines)


@pytest.mark.parametrize("sig, code", [pytest.param(signal.SIGINT, 130, marks=pytest.mark.slow),
                                       pytest.param(signal.SIGTERM, 143, marks=pytest.mark.slow)])
def test_text_edit_mapper_stops_cleanly(tmp_path, sig, code):
    """The mapper reports progress from inside its compiled program (the case that used to end in a
    segmentation fault): the signal waits for the program, then nothing is written."""
    rc, err = interrupted(["text-edit", "--method", "mapper", "--prompt", "a red circle", "--steps", "20",
                           "--seeds", "0-1", "--save", tmp_path / "r.npz", "--out", tmp_path / "m.png"],
                          sig, 4.0, tmp_path)
    assert rc == code, err[-2000:]
    assert "Traceback" not in err and "Segmentation" not in err
    assert sorted(p.name for p in tmp_path.iterdir()) == []


def test_traverse_leaves_only_complete_files(tmp_path):
    """SIGINT while traverse renders or writes: exit 130; every PNG that exists is complete."""
    np.save(tmp_path / "d.npy", np.eye(4, 64, dtype=np.float32))  # 4 directions in the default G's W (64-d)
    rc, err = interrupted(["traverse", "--method", "linear", "--directions", tmp_path / "d.npy", "--space", "w",
                           "--seeds", "0-3", "--out", tmp_path / "t"], signal.SIGINT, 3.0, tmp_path)
    assert rc == 130, err[-2000:]
    for png in (tmp_path / "t").glob("*") if (tmp_path / "t").exists() else []:
        assert png.suffix == ".png" and np.asarray(Image.open(png)).ndim == 3


@pytest.mark.parametrize("argv", [
    # slow: every trainer stops in runs.Run.loop, whose signal handling test_runs.py covers with a toy trainer
    pytest.param(["train-gan", "{o}/run", "--config", "tiny", "--kimg", "1000"], marks=pytest.mark.slow),
    pytest.param(["discover", "{o}/run", "--method", "linear", "--steps", "100000", "--batch-size", "4"],
                 marks=pytest.mark.slow),
])
def test_trainers_save_and_exit_130(tmp_path, argv):
    """SIGINT during a trainer: it saves the current step and exits 130; the run resumes from it."""
    rc, err = interrupted([a.format(o=tmp_path) for a in argv], signal.SIGINT, 120.0, tmp_path, when="elapsed")
    assert rc == 130, err[-2000:]
    assert "SIGINT: saved step" in err and "Traceback" not in err
    ckpts = [p for p in (tmp_path / "run" / "checkpoints").iterdir() if p.name.isdigit()]
    assert ckpts and all((p / "_CHECKPOINT_METADATA").exists() for p in ckpts)
