"""The e4e encoder trainer (jaxedit.train.encoder) on a tiny encoder for the default shapes32 generator:
the loss goes down, the step is deterministic and batch-independent, the checkpoint loads with
``jaxedit.load`` and gives W+ codes, an interrupted run resumes from its checkpoint."""

from __future__ import annotations

import dataclasses
import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxedit
from jaxedit.errors import ConfigError
from jaxedit.io import checkpoint
from jaxedit.models.e4e import Encoder
from jaxedit.models.probe import Probe, ProbeConfig
from jaxedit.train import encoder as T
from jaxedit.train import runs

TINY_ENCODER = T.encoder_config(8, 64, widths=(8, 8, 8, 8), units=(1, 1, 1, 1), input_channels=8, style_width=8)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """A tiny config; its perceptual probe is a random one-stage probe (the step compiles 2x faster than with
    the default 3-stage probe; the loss is the same code)."""
    P = Probe(ProbeConfig(widths=(8,), decoder_widths=(8,), feature_dim=16))
    path = tmp_path_factory.mktemp("probe") / "tiny-probe"
    checkpoint.save(path, kind="probe", model=P.cfg.to_dict(), params=P.init(jax.random.key(0)))
    return T.EncoderTrainConfig(steps=4, batch=4, lr=3e-3, warmup=0, eval_images=4, ckpt_every=2, log_every=1,
                                probe=str(path), encoder=TINY_ENCODER)


@pytest.fixture(scope="module")
def frozen(tiny):
    G, gp, _, P, pp, _ = T.load_frozen(tiny)
    return G, P, {"G": gp, "P": pp}


def _start(cfg, frozen):
    G, P, fr = frozen
    E = Encoder(cfg.encoder)
    params = T.init_params(E, jax.random.key(0), fr["G"]["mapping"]["w_avg"])
    opt, step = T.make_step(cfg, E, G, P)
    return E, params, opt, opt.init(params), step


def test_config_round_trips_and_matches_the_generator(tiny, frozen):
    G, _, _ = frozen
    cfg = T.EncoderTrainConfig()
    assert T.EncoderTrainConfig.from_dict(cfg.to_dict()) == cfg
    assert (cfg.encoder.n_styles, cfg.encoder.w_dim) == (G.cfg.num_ws, G.cfg.w_dim)
    with pytest.raises(ConfigError, match="n_styles"):
        T.load_frozen(dataclasses.replace(tiny, encoder=T.encoder_config(6, 64)))
    with pytest.raises(ConfigError, match="gen_fraction"):
        T.EncoderTrainConfig(gen_fraction=1.5)


@pytest.mark.slow  # a long test (default-run budget); the encoder trainer's other step tests are slow too
def test_steps_lower_the_loss_deterministically(tiny, frozen):
    _, params, _, st, step = _start(tiny, frozen)
    fr, key = frozen[2], jax.random.key(7)  # the same batch every step: the loss on it must fall
    p1, s1, m1 = step(params, st, fr, key)
    again = step(params, st, fr, key)  # same inputs -> bit-identical update
    assert all(np.array_equal(a, b) for a, b in zip(jax.tree.leaves((p1, m1)), jax.tree.leaves(again[::2])))
    p, s, losses = p1, s1, [float(m1["loss"])]
    for _ in range(5):
        p, s, m = step(p, s, fr, key)
        losses.append(float(m["loss"]))
    assert np.all(np.isfinite(losses)) and losses[-1] < 0.9 * losses[0], losses
    assert set(m) == {"loss", "pixel", "perceptual", "latent", "delta"}
    # latent_avg (the generator's w_avg) and the BatchNorm statistics stay frozen
    np.testing.assert_array_equal(p["latent_avg"], params["latent_avg"])
    np.testing.assert_array_equal(p["backbone"]["body_0"]["bn1"]["mean"], params["backbone"]["body_0"]["bn1"]["mean"])
    np.testing.assert_allclose(params["latent_avg"],
                               np.broadcast_to(fr["G"]["mapping"]["w_avg"], params["latent_avg"].shape))


@pytest.mark.slow
def test_per_sample_losses_do_not_depend_on_the_batch(tiny, frozen):
    G, P, fr = frozen
    cfg = tiny
    E, params, *_ = _start(cfg, frozen)
    batch = T.sample_batch(cfg, G, fr["G"], jax.random.key(3))
    assert batch["image"].shape == (4, 32, 32, 3) and batch["w"].shape == (2, G.cfg.num_ws, G.cfg.w_dim)
    f = jax.jit(lambda b: T.per_sample_losses(cfg, E, G, P, params, fr, b))
    full = f(batch)
    # reversed order of the generator rows and of the render rows: every per-sample term follows its sample
    perm = np.array([1, 0, 3, 2])
    swapped = f({"image": batch["image"][perm], "w": batch["w"][::-1]})
    for k in ("pixel", "perceptual", "delta"):
        np.testing.assert_allclose(swapped[k], full[k][perm], rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(swapped["latent"], full["latent"][::-1], rtol=1e-5, atol=1e-7)


@pytest.mark.slow
def test_checkpoint_loads_and_interrupted_run_resumes(tiny, tmp_path):
    dst, run = tmp_path / "enc", tmp_path / "run"
    _, partial = T.train(tiny, dst, run_dir=run, stop_at=2, progress=False)  # as if killed after step 2's save
    assert partial == {"step": 2} and not dst.exists()
    saved2 = runs.load_checkpoint(run, _like(tiny))[0]
    params, report = T.train(None, dst, run_dir=run, progress=False)  # resumes with the stored config
    assert report["resumed_at"] == 2 and report["step"] == 4
    rows = [r["step"] for r in map(json.loads, (run / runs.LOG_FILE).read_text().splitlines())]
    assert rows == [1, 2, 3, 4]  # steps 3 and 4 continued the run, nothing repeated
    assert not np.array_equal(saved2["params"]["styles_0"]["linear"]["weight"], params["styles_0"]["linear"]["weight"])
    for part in ("generator", "renders"):
        for model in ("encoder", "w_avg"):
            r = report[part][model]
            assert np.isfinite(r["pixel_mse"]) and set(r["factor_mae"]) == set(T.FACTOR_GROUPS)
    assert "latent_mse" in report["generator"]["w_avg"] and "probe_floor" in report["renders"]

    E, p = jaxedit.load(dst)
    assert isinstance(E, Encoder) and E.cfg == tiny.encoder
    meta = jaxedit.io.checkpoint.read_meta(dst)
    assert meta["kind"] == "e4e" and meta["source"]["generator"]["name"] == "shapes32-stylegan2"
    assert len(meta["source"]["generator"]["sha256"]) == 64 and meta["metrics"]["step"] == 4
    x = jax.random.uniform(jax.random.key(1), (4, 32, 32, 3), minval=-1, maxval=1)  # the batch size compiled above
    codes = E(p, x)
    assert codes.shape == (4, 8, 64) and np.all(np.isfinite(codes))
    np.testing.assert_array_equal(p["latent_avg"], params["latent_avg"])

    with pytest.raises(ConfigError, match="lr"):  # a resumed run refuses a changed recipe
        T.train(dataclasses.replace(tiny, lr=1e-2), tmp_path / "other", run_dir=run, progress=False)


def _like(cfg):
    E = Encoder(cfg.encoder)
    params = jax.eval_shape(lambda: T.init_params(E, jax.random.key(0), jnp.zeros(cfg.encoder.w_dim)))
    opt = T.make_optimizer(cfg)
    return {"params": params, "opt": jax.eval_shape(opt.init, params)}
