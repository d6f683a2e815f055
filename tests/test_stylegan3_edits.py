"""The editing families on StyleGAN3: a tiny random config-T generator (16 px, 4 layers; StyleGAN3 programs
compile slowly at -O0) for the fits and edits, the converted config-T fixture through the CLI.

StyleGAN3's handle has StyleGAN2's ``mapping``/``synthesis`` signatures, so InterFaceGAN / GANSpace fits,
every latent editor (W and W+ layer ranges), unsupervised discovery and StyleCLIP latent optimization run on
it unchanged. The measured quantity is the images' colour balance ``mean(R) - mean(B)`` (on random weights
there is no semantic attribute to score): a direction fitted to it must move it on held-out samples.
StyleSpace channel edits (global directions) and layer weight shifts are StyleGAN2-only: refused in one line.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from conftest import fixture
from jaxedit import edits
from jaxedit.cli.main import main
from jaxedit.edits import fit
from jaxedit.edits import text as T
from jaxedit.models.stylegan3 import StyleGAN3, StyleGAN3Config
from jaxedit.train import discovery

TS = jnp.array([-2.0, 0.0, 2.0])


def balance(_, img):
    """Colour balance ``mean(R) - mean(B)`` of images ``[B, H, W, 3]`` -> ``[B, 1]``."""
    return (img[..., 0].mean((1, 2)) - img[..., 2].mean((1, 2)))[:, None]


TINY = StyleGAN3Config(z_dim=16, w_dim=16, img_resolution=16, num_layers=4, num_critical=1, channel_base=512,
                       channel_max=32, margin_size=4)


@functools.cache
def generator():
    G = StyleGAN3(TINY)
    return G, G.init(jax.random.key(0))


@functools.cache
def fitted():
    G, p = generator()
    z = jax.random.normal(jax.random.key(0), (512, G.cfg.z_dim))
    lat, scores = fit.sample_and_score(G, p, z, balance, None, space="w", batch=512)
    return fit.interfacegan(lat, scores[:, 0], key=jax.random.key(1), ratio=0.5)


def sweep(G, p, editors, z):
    """Balance of every editor's edit of ``z`` at strengths ``TS``: ``[editors, strengths, N]``, one render."""
    n, ws = z.shape[0], []
    for e in editors:
        x = e.prepare(G, p, z)  # W+ [n, L, d]
        ws.append(jnp.stack([edits.apply(e, x, 0, jnp.full(n, t)) for t in TS]))
    render = jax.jit(lambda p, ws: balance(None, G.synthesis(p, ws)))
    return np.asarray(render(p, jnp.concatenate(ws).reshape(-1, G.cfg.num_ws, G.cfg.w_dim))).reshape(
        len(editors), len(TS), n)


@pytest.mark.slow  # 45 s; GANSpace and the editors on SG3 stay in the default run
def test_interfacegan_in_w_and_w_plus_moves_the_fitted_quantity():
    G, p = generator()
    f = fitted()
    assert float(f.val_accuracy) > 0.8  # measured 0.89 (512 samples, top/bottom halves)
    whole = edits.InterFaceGAN(directions=f.normal[None], space="w")
    fine = edits.InterFaceGAN(directions=f.normal[None], space="w", layers=(3, 6))  # W+: the last 3 of 6 layers
    b = sweep(G, p, [whole, fine], jax.random.normal(jax.random.key(5), (8, G.cfg.z_dim)))
    up = b[:, 2] - b[:, 0]  # [editors, N]: balance(+2) - balance(-2)
    # measured: every sample up in both; mean +0.67 (whole W), +0.54 (layers 3-5)
    assert np.all(up > 0) and up[0].mean() > 0.25 and up[1].mean() > 0.2
    assert np.all(b[:, 1] == b[0, 1])  # t = 0 is the identity for every layer range


def test_ganspace_and_discovery_style_editors():
    G, p = generator()
    pcs = fit.ganspace(G, p, jax.random.key(2), num=4096, components=4, batch=2048)
    assert np.all(np.diff(np.asarray(pcs["var_ratio"])) <= 0)
    gs = edits.GANSpace(comp=pcs["comp"], stdev=pcs["stdev"], space="w")
    z = jax.random.normal(jax.random.key(6), (8, G.cfg.z_dim))
    x = gs.prepare(G, p, z)
    moved = edits.apply(gs, x, 0, jnp.full(8, 2.0))
    # the edit moves W by exactly 2 standard deviations of PC 1, and the image with it
    np.testing.assert_allclose(np.asarray((moved - x)[:, 0] @ pcs["comp"][0]), 2 * float(pcs["stdev"][0]), rtol=1e-4)
    img0, img1 = gs.render(G, p, x), gs.render(G, p, moved)
    assert float(jnp.mean(jnp.abs(img1 - img0))) > 0.02


@pytest.mark.slow
def test_styleclip_latent_optimization_on_stylegan3():
    G, p = generator()
    A = jax.random.normal(jax.random.key(7), (4 * 4 * 3, 8)) / np.sqrt(48.0)

    def embed(img):  # a toy image tower: 4x4 average pooling, fixed linear map -> [B, 8]
        return img.reshape(img.shape[0], 4, 4, 4, 4, 3).mean(axis=(2, 4)).reshape(img.shape[0], -1) @ A

    w0 = G.mapping(p, jax.random.normal(jax.random.key(8), (2, G.cfg.z_dim)), psi=0.7)
    text = jax.random.normal(jax.random.key(9), (1, 8))
    res = jax.jit(lambda w0, t: T.optimize_latents(G, p, embed, w0, t, steps=10, lr=0.1))(w0, text)
    cos = np.asarray(res.cosine)  # [steps, P, N]
    assert np.all(cos[-1] - cos[0] > 0.05), cos[[0, -1]]


@pytest.mark.slow
def test_cli_on_stylegan3(tmp_path, capsys):
    ckpt = tmp_path / "sg3"
    assert main(["convert", "stylegan3", str(fixture("nvidia_sg3_t32.pkl")), str(ckpt)]) == 0
    ed = tmp_path / "pcs"
    assert main(["fit", "ganspace", str(ckpt), "--num", "2048", "--batch-size", "1024", "--components", "3",
                 "--out", str(ed)]) == 0
    assert main(["edit", str(ckpt), "--directions", str(ed), "--seeds", "0-1", "--strengths=-2,0,2",
                 "--out", str(tmp_path / "grid.png")]) == 0
    assert (tmp_path / "grid.png").stat().st_size > 0
    capsys.readouterr()
    for method in ("global", "shift"):
        assert main(["text-edit", str(ckpt), "--method", method, "--prompt", "red", "--seeds", "0",
                     "--out", str(tmp_path / "t.png")]) == 2
        err = capsys.readouterr().err.strip()
        assert "\n" not in err and "needs a StyleGAN2 generator" in err and "StyleGAN3" in err
    assert not (tmp_path / "t.png").exists()


@pytest.mark.slow
def test_discovery_trains_on_stylegan3():
    G, p = generator()
    cfg = discovery.DiscoveryConfig(space="w", num_directions=4, batch=8, lr=1e-3)
    tr = discovery.Trainer(cfg, G, p)
    state = tr.init_state()
    losses = []
    for i in range(30):
        state, m = tr.step(state, i)
        losses.append(float(m["loss"]))
    assert np.isfinite(losses).all() and np.mean(losses[-5:]) < np.mean(losses[:5])
