"""The run manager (jaxedit.train.runs) with a trivial trainer: new run, resume, extend, changed
settings, no folder for an invalid config, SIGINT / SIGTERM -> complete checkpoint and exit 130 / 143."""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import os
import signal
import subprocess
import sys
import time

import jax
import numpy as np
import pytest

from jaxedit.errors import ConfigError
from jaxedit.train import runs

TOY = '''
"""A trivial trainer on the run manager: w <- w * (1 - lr) + step, one jitted update per step."""
import argparse, dataclasses, sys, time
import jax, jax.numpy as jnp
from jaxedit.config import JSONConfig
from jaxedit.errors import ConfigError
from jaxedit.train import runs

MUTABLE = {"steps", "ckpt_every"}


@dataclasses.dataclass(frozen=True)
class ToyConfig(JSONConfig):
    steps: int = 6
    lr: float = 0.5
    ckpt_every: int = 2

    def __post_init__(self):
        if self.lr <= 0:
            raise ConfigError(f"lr must be > 0, got {self.lr}")


def train(cfg, run_dir, stop_at=None, delay=0.0):
    cfg = runs.resolve(run_dir, cfg, ToyConfig.from_dict, MUTABLE)
    update = jax.jit(lambda s, i: ({"w": s["w"] * (1 - cfg.lr) + i}, {"loss": jnp.sum(s["w"] ** 2)}))

    def step(state, i):
        time.sleep(delay)
        return update(state, i)

    with runs.Run(run_dir, cfg, desc="toy") as run:
        state, start = run.restore({"w": jax.ShapeDtypeStruct((3,), jnp.float32)})
        state = {"w": jnp.ones(3, jnp.float32)} if state is None else state
        total = cfg.steps if stop_at is None else stop_at
        return run.loop(state, step, start=start, total=total, ckpt_every=cfg.ckpt_every, log_every=1)


if __name__ == "__main__":
    try:
        train(ToyConfig(steps=100000, ckpt_every=3), sys.argv[1], delay=0.02)
    except KeyboardInterrupt:  # what jaxedit.cli.main does
        sys.exit(130)
'''


@pytest.fixture(scope="module")
def toy(tmp_path_factory):
    path = tmp_path_factory.mktemp("toy") / "toy.py"
    path.write_text(TOY)
    spec = importlib.util.spec_from_file_location("toy_trainer", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    module.PATH = path
    return module


def _w(run_dir):
    state, meta, step = runs.load_checkpoint(run_dir, {"w": jax.ShapeDtypeStruct((3,), np.float32)})
    assert meta["step"] == step
    return state["w"], step


def test_new_run_resume_and_extend(toy, tmp_path):
    cfg = toy.ToyConfig(steps=4)
    state, summary = toy.train(cfg, tmp_path / "a")
    assert (summary["start_step"], summary["step"]) == (0, 4)
    assert json.loads((tmp_path / "a" / runs.CONFIG_FILE).read_text()) == cfg.to_dict()
    rows = [json.loads(line) for line in (tmp_path / "a" / runs.LOG_FILE).read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2, 3, 4] and all("time" in r and "loss" in r for r in rows)
    assert sorted(p.name for p in (tmp_path / "a" / runs.CKPT_DIR).iterdir()) == ["2", "4"]  # keep 2

    _, summary = toy.train(None, tmp_path / "a")  # the same run again: nothing left to do
    assert (summary["start_step"], summary["step"]) == (4, 4)
    _, summary = toy.train(dataclasses.replace(cfg, steps=7), tmp_path / "a")  # a larger length extends
    assert (summary["start_step"], summary["step"]) == (4, 7)
    assert runs.read_config(tmp_path / "a", toy.ToyConfig.from_dict).steps == 7  # stored for the next resume

    toy.train(toy.ToyConfig(steps=7), tmp_path / "b")  # uninterrupted
    np.testing.assert_array_equal(_w(tmp_path / "a")[0], _w(tmp_path / "b")[0])


def test_changed_setting_is_an_error_naming_the_field(toy, tmp_path):
    toy.train(toy.ToyConfig(steps=1), tmp_path / "r")
    before = (tmp_path / "r" / runs.CONFIG_FILE).read_text()
    with pytest.raises(ConfigError, match=r"lr 0.5 -> 0.25.*may change on resume: ckpt_every, steps"):
        toy.train(toy.ToyConfig(steps=2, lr=0.25), tmp_path / "r")
    assert (tmp_path / "r" / runs.CONFIG_FILE).read_text() == before
    assert _w(tmp_path / "r")[1] == 1


def test_invalid_config_leaves_no_folder(toy, tmp_path):
    with pytest.raises(ConfigError, match="lr must be > 0"):
        toy.train(toy.ToyConfig.from_dict({"lr": -1.0}), tmp_path / "bad")
    with pytest.raises(ConfigError, match="no config.json to resume from"):
        toy.train(None, tmp_path / "bad")
    assert not (tmp_path / "bad").exists()


def test_incomplete_checkpoints_are_ignored(toy, tmp_path):
    toy.train(toy.ToyConfig(steps=2), tmp_path / "k")
    (tmp_path / "k" / runs.CKPT_DIR / "3.orbax-checkpoint-tmp-1").mkdir()  # a save killed half-way
    assert _w(tmp_path / "k")[1] == 2
    _, summary = toy.train(toy.ToyConfig(steps=3), tmp_path / "k")
    assert summary["start_step"] == 2 and _w(tmp_path / "k")[1] == 3


@pytest.mark.parametrize("sig, code", [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_signal_saves_a_complete_checkpoint_and_exits(toy, tmp_path, sig, code):
    run = tmp_path / "s"
    proc = subprocess.Popen([sys.executable, str(toy.PATH), str(run)], env=dict(os.environ, JAX_PLATFORMS="cpu"),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 120
        while not (run / runs.CKPT_DIR / "3").is_dir():  # training, past its first checkpoint
            assert proc.poll() is None, proc.stderr.read()[-3000:]
            assert time.monotonic() < deadline, "no checkpoint within 120 s"
            time.sleep(0.05)
        proc.send_signal(sig)
        _, err = proc.communicate(timeout=120)
    finally:
        proc.kill()
    assert proc.returncode == code, err[-3000:]
    assert "Traceback" not in err
    w, step = _w(run)
    assert f"{sig.name}: saved step {step}; rerun the same command to resume" in err
    assert step >= 3
    _, summary = toy.train(toy.ToyConfig(steps=step + 2, ckpt_every=3), run)  # resumes from it
    assert summary["start_step"] == step
    toy.train(toy.ToyConfig(steps=step + 2, ckpt_every=3), tmp_path / "u")
    np.testing.assert_array_equal(_w(run)[0], _w(tmp_path / "u")[0])


@pytest.mark.slow  # ~20 s of CPU: compiles the probe's step and evaluation
def test_train_probe_is_a_resumable_run_folder(tmp_path):
    """A ported trainer end to end: DST + DST.run, extend (the schedule kept), changed setting refused."""
    from jaxedit.data import shapes
    from jaxedit.io import checkpoint
    from jaxedit.models.probe import ProbeConfig
    from jaxedit.train import probe

    cfg = probe.ProbeTrainConfig(steps=2, batch=4, eval_images=8, ckpt_every=1,
                                 probe=ProbeConfig(resolution=16, widths=(4, 8), decoder_widths=(4, 4), feature_dim=8),
                                 data=shapes.ShapesConfig(resolution=16))
    dst = tmp_path / "probe"
    _, report = probe.train(cfg, dst, progress=False)
    run = runs.default_run_dir(dst)
    assert report["step"] == 2 and checkpoint.read_meta(dst)["kind"] == "probe"
    assert runs.read_config(run, probe.ProbeTrainConfig.from_dict) == dataclasses.replace(cfg, decay_steps=2)
    _, report = probe.train(dataclasses.replace(cfg, steps=3), dst, force=True, progress=False)
    assert (report["resumed_at"], report["step"]) == (2, 3)
    assert runs.read_config(run, probe.ProbeTrainConfig.from_dict).decay_steps == 2
    with pytest.raises(ConfigError, match="lr 0.002 -> 0.1"):
        probe.train(dataclasses.replace(cfg, steps=3, lr=0.1), dst, force=True)
