"""GAN trainer: discriminator, R1, losses, EMA, config, progress, and resume after SIGKILL.

Tiny configs (8x8, 4-16 channels, toy data). The resume test runs the trainer in
subprocesses that share a persistent compilation cache, so only the first one compiles.
"""

from __future__ import annotations

import io
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxedit.errors import ConfigError, InputError
from jaxedit.io import checkpoint
from jaxedit.models import stylegan2
from jaxedit.models.stylegan2.discriminator import (
    Discriminator,
    DiscriminatorConfig,
    downsample2d,
    minibatch_std,
)
from jaxedit.train import gan

FAST_COMPILE = {"xla_backend_optimization_level": 0}  # about half the compile time; speed is irrelevant here
TINY8 = '''
from jaxedit.train import gan

def get_config(arg=None):
    return gan.tiny_config(8, ckpt_steps=2, sample_steps=1000, D_reg_interval=4, log_seconds=1.0)
'''


# ----------------------------------------------------------------------------- discriminator


def test_discriminator_output_shape_and_checks():
    for res, ch in [(8, (8, 4)), (16, (16, 8, 4))]:
        D = Discriminator(DiscriminatorConfig(img_resolution=res, channels=ch))
        params = D.init(jax.random.key(0, impl="rbg"))
        logits = jax.jit(D)(params, np.random.default_rng(1).standard_normal((8, res, res, 3), np.float32))
        assert logits.shape == (8,) and logits.dtype == jnp.float32
        assert np.all(np.isfinite(np.asarray(logits)))
    Dc = Discriminator(DiscriminatorConfig(img_resolution=8, channels=(8, 4), c_dim=3, mapping_layers=2))
    pc = Dc.init(jax.random.key(0, impl="rbg"))
    c = jnp.eye(3)[jnp.arange(4) % 3]
    assert jax.jit(Dc)(pc, jnp.zeros((4, 8, 8, 3)), c).shape == (4,)
    with pytest.raises(InputError, match="conditional"):
        Dc(pc, jnp.zeros((4, 8, 8, 3)))
    with pytest.raises(InputError, match="img must have shape"):
        Dc(pc, jnp.zeros((4, 16, 16, 3)), c)


def test_fir_downsample_and_minibatch_std_match_reference_formulas():
    x = np.random.default_rng(0).standard_normal((2, 8, 8, 3)).astype(np.float32)
    f = np.outer([1, 3, 3, 1], [1, 3, 3, 1]) / 64.0  # upfirdn2d.downsample2d: pad 1, FIR, take every 2nd
    xp = np.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)))
    ref = np.stack([np.stack([np.einsum("bhwc,hw->bc", xp[:, 2 * i:2 * i + 4, 2 * j:2 * j + 4], f)
                              for j in range(4)], 1) for i in range(4)], 1)
    np.testing.assert_allclose(np.asarray(downsample2d(jnp.asarray(x))), ref, atol=1e-6)

    y = np.random.default_rng(1).standard_normal((8, 4, 4, 6)).astype(np.float32)  # N=8, G=4, F=2
    out = np.asarray(minibatch_std(jnp.asarray(y), 4, 2))
    nchw = y.transpose(0, 3, 1, 2).reshape(4, 2, 2, 3, 4, 4)  # the reference's x.reshape(G, -1, F, c, H, W)
    sd = np.sqrt(((nchw - nchw.mean(0)) ** 2).mean(0) + 1e-8).mean(axis=(2, 3, 4))  # [n, F]
    expect = np.tile(sd, (4, 1))  # y.repeat(G, 1, H, W)
    assert out.shape == (8, 4, 4, 8)
    np.testing.assert_allclose(out[..., :6], y)
    np.testing.assert_allclose(out[:, 0, 0, 6:], expect, rtol=1e-5)
    np.testing.assert_allclose(out[:, 3, 2, 6:], expect, rtol=1e-5)


def test_r1_penalty_equals_finite_difference_gradient_norm():
    """R1 = |d sum(D(x)) / d x_i|^2 per sample, checked against central differences in float64."""
    D = Discriminator(DiscriminatorConfig(img_resolution=8, channels=(8, 4)))
    with jax.enable_x64(True):
        params = jax.tree.map(lambda a: jnp.asarray(a, jnp.float64), D.init(jax.random.key(0, impl="rbg")))
        x = jnp.asarray(np.random.default_rng(1).standard_normal((4, 8, 8, 3)))
        penalty = np.asarray(jax.jit(lambda p, x: gan.r1_penalty(D, p, x))(params, x))
        assert penalty.dtype == np.float64 and penalty.shape == (4,)

        h = 1e-6
        basis = jnp.eye(x.size, dtype=jnp.float64).reshape(x.size, *x.shape)
        total = lambda xx: jnp.sum(D(params, xx))
        fd = jax.jit(jax.vmap(lambda e: (total(x + h * e) - total(x - h * e)) / (2 * h)))(basis)
        fd_penalty = np.sum(np.square(np.asarray(fd).reshape(x.shape)), axis=(1, 2, 3))
    assert np.all(penalty > 0)
    np.testing.assert_allclose(penalty, fd_penalty, rtol=1e-5)


# ------------------------------------------------------------------------------ EMA, losses


def test_ema_matches_closed_form():
    labels = {"w": "train", "b": {"x": "train"}, "buf": "buffer"}
    params = {"w": jnp.array([1.0, -2.0, 3.0]), "b": {"x": jnp.array(0.5)}, "buf": jnp.array([7.0, 8.0])}
    ema0 = {"w": jnp.array([4.0, 0.0, -1.0]), "b": {"x": jnp.array(-0.5)}, "buf": jnp.array([0.0, 0.0])}
    batch, ema_kimg, n = 32, 0.5, 25

    ema = ema0
    for s in range(n):  # no ramp-up: constant beta
        ema = gan.ema_update(ema, params, gan.ema_beta(s * batch, batch, ema_kimg, None), labels)
    beta = 0.5 ** (batch / (ema_kimg * 1000))
    for k in ("w",):
        np.testing.assert_allclose(ema[k], params[k] + (ema0[k] - params[k]) * beta ** n, rtol=1e-5)
    np.testing.assert_allclose(ema["b"]["x"], params["b"]["x"] + (ema0["b"]["x"] - params["b"]["x"]) * beta ** n,
                               rtol=1e-5)
    np.testing.assert_array_equal(ema["buf"], params["buf"])  # buffers are copied

    # ramp-up: ema_nimg = min(ema_kimg * 1000, cur_nimg * rampup); the first iteration copies G
    betas = [float(gan.ema_beta(s * batch, batch, ema_kimg, 0.05)) for s in range(n)]
    assert betas[0] == 0.0
    expect = [0.5 ** (batch / max(min(ema_kimg * 1000, s * batch * 0.05), 1e-8)) for s in range(n)]
    np.testing.assert_allclose(betas, expect, rtol=1e-6)
    ema = ema0
    for b in betas[1:]:
        ema = gan.ema_update(ema, params, b, labels)
    np.testing.assert_allclose(ema["w"], params["w"] + (ema0["w"] - params["w"]) * np.prod(betas[1:]), rtol=1e-5)


def test_steps_move_losses_in_the_expected_direction():
    """D steps on one fixed batch lower the D loss; then G steps against the fixed D lower the G loss."""
    cfg = gan.tiny_config(8, r1_gamma=0.0, style_mixing_prob=0.0, lr_G=0.01, lr_D=0.01)
    tr = gan.GANTrainer(cfg, compiler_options=FAST_COMPILE)
    state = tr.init_state()
    labels = jax.tree.leaves(tr.g_labels)
    assert "buffer" in labels and "train" in labels  # w_avg / noise_const are excluded from Adam

    d_losses = []
    for _ in range(8):  # step index 0 every time: the same fakes and reals, D updated in between
        state, m = tr.d_step(state, 0)
        d_losses.append(float(m["loss_D"]))
    assert d_losses[-1] < d_losses[0] - 0.05, d_losses
    # step 0 has EMA beta 0 (ramp-up): G_ema is G; w_avg moved toward the batch mean of w
    for e, g in zip(jax.tree.leaves(state["G_ema"]), jax.tree.leaves(state["G"])):
        np.testing.assert_array_equal(np.asarray(e), np.asarray(g))
    assert float(jnp.abs(state["G"]["mapping"]["w_avg"]).sum()) > 0

    g_losses, fake_logits = [], []
    d_before = jax.tree.map(np.asarray, state["D"])
    for _ in range(8):
        state, m = tr.g_step(state, 0)
        g_losses.append(float(m["loss_G"]))
        fake_logits.append(float(m["D_fake_G"]))
    assert g_losses[-1] < g_losses[0] - 0.05, g_losses
    assert fake_logits[-1] > fake_logits[0], fake_logits  # fakes look more real to the fixed D
    for a, b in zip(jax.tree.leaves(d_before), jax.tree.leaves(state["D"])):  # the G step leaves D alone
        np.testing.assert_array_equal(a, np.asarray(b))


# ----------------------------------------------------------------------------- config, progress


def test_config_roundtrip_file_and_overrides(tmp_path):
    cfg = gan.tiny_config(8)
    assert gan.GANConfig.from_dict(json.loads(json.dumps(cfg.to_dict()))) == cfg
    path = tmp_path / "cfg.py"
    path.write_text(TINY8)
    loaded = gan.load_config(str(path))
    assert loaded.G.img_resolution == 8 and loaded.ckpt_steps == 2
    over = gan.apply_overrides(loaded, ["r1_gamma=0.5", "G.z_dim=32", 'data.kind="toy"'])
    assert over.r1_gamma == 0.5 and over.G.z_dim == 32
    with pytest.raises(ConfigError, match="unknown key"):
        gan.apply_overrides(loaded, ["nope=1"])
    with pytest.raises(ConfigError, match="G makes"):
        loaded.replace(D=DiscriminatorConfig(img_resolution=16, channels=(4, 4, 4)))

    default = gan.load_config("shapes32-stylegan2")  # the preset lives in the package (no source checkout needed)
    assert default == gan.shapes32_config() and default.name == "shapes32-stylegan2"
    assert default.G.img_resolution == 32 and default.data["kind"] == "shapes" and default.pl_weight == 0
    assert gan.load_config("shapes32-stylegan2:c128").G.channels == (128, 128, 64, 32)
    repo = Path(__file__).resolve().parents[1]  # the experiments/ launcher is a thin alias of the preset
    assert gan.load_config(str(repo / "experiments" / "train_shapes32.py")) == default
    with pytest.raises(ConfigError, match="neither a preset"):
        gan.load_config("no-such-preset")


def test_cli_parses_the_trainers():
    from jaxedit.cli.main import build_parser

    parse = build_parser().parse_args
    args = parse(["train-gan", "runs/x", "--kimg", "5", "--set", "r1_gamma=0.2", "--export", "out"])
    assert args.run == "train:run_train_gan" and args.run_dir == "runs/x" and args.kimg == 5.0
    assert args.set == ["r1_gamma=0.2"] and args.export == "out" and not args.export_only
    args = parse(["discover", "runs/d", "--steps", "9"])  # the run folder does not clash with the dispatch target
    assert args.run == "train:run_discover" and args.run_dir == "runs/d" and args.method is None
    for cmd in ("train-clip", "train-probe"):
        args = parse([cmd, "ckpt/x", "--run", "runs/x"])
        assert args.run == f"train:run_{cmd.replace('-', '_')}" and args.run_dir == "runs/x"
        assert parse([cmd, "ckpt/x"]).run_dir is None and args.seed is None and args.steps is None


def test_cli_bad_setting_leaves_no_run_folder(tmp_path, capsys):
    from jaxedit.cli.main import main

    assert main(["train-gan", str(tmp_path / "r"), "--config", "tiny", "--batch-size", "6"]) == 1
    assert "minibatch-stddev" in capsys.readouterr().err and not (tmp_path / "r").exists()


def test_progress_plain_lines_when_not_a_tty():
    from jaxedit.io.progress import Progress

    out = io.StringIO()
    bar = Progress(10.0, unit="kimg", desc="t", stream=out, interval=0.0)
    bar.update(2.5, loss=0.5)
    bar.write("hello")
    bar.close()
    lines = out.getvalue().splitlines()
    assert "\r" not in out.getvalue()
    assert lines[0].startswith("t  2.5/10 kimg") and "kimg" in lines[0] and "loss 0.5" in lines[0]
    assert lines[1] == "hello" and len(lines) == 3


# ----------------------------------------------------------------------------- resume


def _cli(run_dir, config, *args):
    return [sys.executable, "-m", "jaxedit.cli.main", "train-gan", str(run_dir), "--config", str(config), *args]


def _finalized_steps(run_dir: Path) -> list[int]:
    ckpt = run_dir / gan.CKPT_DIR
    return sorted(int(p.name) for p in ckpt.iterdir() if p.name.isdigit()) if ckpt.is_dir() else []


@pytest.mark.slow
def test_resume_after_sigkill_matches_uninterrupted_run(tmp_path):
    config = tmp_path / "tiny8.py"
    config.write_text(TINY8)
    env = dict(os.environ, JAX_PLATFORMS="cpu", JAXEDIT_CACHE=str(tmp_path / "xla-cache"))  # XLA_FLAGS: conftest
    killed = tmp_path / "killed"

    # 1. a long run, SIGKILLed as soon as a checkpoint is finalized (maybe mid-way through another save)
    proc = subprocess.Popen(_cli(killed, config, "--steps", "100000"), env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 240
        while not _finalized_steps(killed):
            assert proc.poll() is None, proc.stdout.read().decode()[-3000:]
            assert time.monotonic() < deadline, "no checkpoint within 240 s"
            time.sleep(0.05)
        time.sleep(0.3)  # let it run on into the next interval
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    assert proc.returncode == -signal.SIGKILL
    last = _finalized_steps(killed)[-1]
    assert last >= 2
    total = last + 5  # crosses a lazy-R1 step (interval 4) after the restart

    # 2. restart the killed run and, side by side, an uninterrupted run to the same step
    fresh = tmp_path / "fresh"
    runs = {name: subprocess.Popen(_cli(d, config, "--steps", str(total)), env=env, stdout=subprocess.PIPE,
                                   stderr=subprocess.STDOUT)
            for name, d in (("resumed", killed), ("fresh", fresh))}
    logs = {}
    for name, p in runs.items():
        out, _ = p.communicate(timeout=240)
        logs[name] = out.decode()
        assert p.returncode == 0, logs[name][-3000:]
    assert f"resumed {killed} from step {last} " in logs["resumed"], logs["resumed"][-2000:]
    assert "new run" in logs["fresh"]

    # 3. same parameters, optimizer states and key at the same step (all randomness is fold_in(key, step))
    _, resumed_state, s1 = gan.load_state(killed)
    _, fresh_state, s2 = gan.load_state(fresh)
    assert s1 == s2 == total
    paths = jax.tree_util.tree_leaves_with_path(fresh_state)
    for (path, a), b in zip(paths, jax.tree.leaves(resumed_state)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b), err_msg=jax.tree_util.keystr(path))

    # 4. the exported G_ema is a jaxedit StyleGAN2 checkpoint (what `jaxedit sample` reads)
    G, params = stylegan2.load(fresh / gan.EXPORT_DIR)
    assert G.cfg.img_resolution == 8
    for a, b in zip(jax.tree.leaves(params), jax.tree.leaves(fresh_state["G_ema"])):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    assert (fresh / "samples" / f"fakes{total:08d}.png").is_file()
    rows = [json.loads(line) for line in (fresh / gan.LOG_FILE).read_text().splitlines()]
    assert rows[-1]["step"] == total and np.isfinite(rows[-1]["loss_D"])


# ----------------------------------------------------------------------------- slow extras


@pytest.mark.slow
def test_path_length_regularization_step():
    cfg = gan.tiny_config(8, pl_weight=2.0, G_reg_interval=2, r1_gamma=0.0)
    tr = gan.GANTrainer(cfg, compiler_options=FAST_COMPILE)
    state = tr.init_state()
    assert tr.programs(0) == {"G+PL", "D"} and tr.programs(1) == {"G", "D"}
    state, m = tr.iteration(state, 0)
    assert np.isfinite(float(m["pl_penalty"])) and float(m["pl_mean"]) > 0
    assert float(state["pl_mean"]) == pytest.approx(float(m["pl_mean"]))
    state, m = tr.iteration(state, 1)
    assert "pl_penalty" not in m


@pytest.mark.slow
def test_four_devices_match_one_device():
    script = (
        "import jax, numpy as np\n"
        "from jaxedit.train import gan\n"
        "tr = gan.GANTrainer(gan.tiny_config(8, D_reg_interval=2), compiler_options={'xla_backend_optimization_level': 0})\n"
        "st = tr.init_state()\n"
        "for s in range(3):\n"
        "    st, m = tr.iteration(st, s)\n"
        "print('NDEV', jax.device_count(), 'SUM', float(sum(np.abs(np.asarray(x)).sum() for x in jax.tree.leaves(st['G_ema']))))\n")
    sums = {}
    for n in (1, 4):
        flags = os.environ.get("XLA_FLAGS", "")  # keep conftest's optimization level (compile time)
        env = dict(os.environ, JAX_PLATFORMS="cpu", XLA_FLAGS=f"{flags} --xla_force_host_platform_device_count={n}")
        out = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=300)
        assert out.returncode == 0, out.stderr[-3000:]
        ndev, total = out.stdout.split("NDEV")[1].split("SUM")
        assert int(ndev) == n
        sums[n] = float(total)
    assert sums[4] == pytest.approx(sums[1], rel=1e-4)


@pytest.mark.slow
def test_cli_export_only(tmp_path):
    config = tmp_path / "tiny8.py"
    config.write_text(TINY8)
    env = dict(os.environ, JAX_PLATFORMS="cpu", JAXEDIT_CACHE=str(tmp_path / "xla-cache"))
    run = tmp_path / "run"
    out = subprocess.run(_cli(run, config, "--steps", "3"), env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    dst = tmp_path / "exported"
    cmd = [sys.executable, "-m", "jaxedit.cli.main", "train-gan", str(run), "--export-only", "--export", str(dst)]
    out = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    G, params = stylegan2.load(dst)
    meta = checkpoint.read_meta(dst)
    assert meta["source"]["step"] == 3 and meta["source"]["trainer"] == "jaxedit.train.gan"
    # a second export to the same place needs --force
    out = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode != 0 and "already exists" in out.stderr
