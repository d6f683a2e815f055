"""Converted reference checkpoints reproduce the reference implementation's own outputs.

Fixtures (random weights, made by stylegan2-ada-pytorch / rosinality code, see
../shared/fixtures/README.md). Each bound is about 3x the max abs error measured on XLA CPU
(LLVM -O0, tests/conftest.py), rounded up: see ``TOL``.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from conftest import fixture, max_abs, ref
from jaxedit.converters import stylegan2 as conv
from jaxedit.models.stylegan2 import Discriminator, StyleGAN2

NVIDIA = ["nvidia_tiny32", "nvidia_tiny32_cond", "nvidia_tiny64_resnet"]
# Bounds per fixture, the measured errors in the comment: w = mapping output, img = images, grad = d/dw
# relative to max |grad|, logits / dimg = D's logits and input gradient.
TOL = {
    "nvidia_tiny32": dict(w=3e-6, img=3e-5, grad=2e-6, logits=1e-5, dimg=2e-8),  # 9.5e-7 9.3e-6 4.2e-7 2.9e-6 4.7e-9
    "nvidia_tiny32_cond": dict(w=1e-5, img=2e-5, grad=2e-5, logits=1e-5, dimg=3e-8),  # 1.9e-6 5.7e-6 3.7e-6 1.7e-6 7.5e-9
    "nvidia_tiny64_resnet": dict(w=3e-6, img=1e-5, grad=2e-6, logits=1e-6, dimg=3e-9),  # 7.2e-7 3.2e-6 5.5e-7 3e-7 7.6e-10
    "rosinality_tiny64": dict(w=3e-6, img=2e-5),  # 8.3e-7 6.7e-6
}


@functools.cache
def converted(name: str, key: str | None = None):
    suffix = ".pt" if name.startswith("rosinality") else ".pkl"
    cfg, params, info = conv.convert(fixture(name + suffix), key=key)
    return StyleGAN2(cfg), jax.tree.map(jnp.asarray, params), info


@pytest.mark.parametrize("name", NVIDIA)
def test_nvidia_mapping_and_truncation(name):
    G, p, _ = converted(name)
    r = ref(name + "_ref.npz")
    c = r.get("c")
    assert max_abs(p["mapping"]["w_avg"], r["w_avg"]) == 0.0
    tol = TOL[name]["w"]
    assert max_abs(G.mapping(p, r["z"], c), r["w"]) <= tol
    assert max_abs(G.mapping(p, r["z"], c, psi=0.7), r["w_psi0.7"]) <= tol
    assert max_abs(G.mapping(p, r["z"], c, psi=0.5, cutoff=2), r["w_psi0.5_cutoff2"]) <= tol


@pytest.mark.parametrize("name", NVIDIA)
def test_nvidia_images(name):
    G, p, _ = converted(name)
    r = ref(name + "_ref.npz")
    synth = jax.jit(G.synthesis, static_argnames="noise_mode")
    tol = TOL[name]["img"]
    assert max_abs(synth(p, r["w"], noise_mode="const"), r["img_const"]) <= tol
    assert max_abs(synth(p, r["w"], noise_mode="none"), r["img_none"]) <= tol
    assert max_abs(synth(p, r["w_psi0.7"], noise_mode="const"), r["img_psi0.7_const"]) <= tol
    # the noise term matters in these fixtures, so const and none must differ
    assert max_abs(r["img_const"], r["img_none"]) > 1e-2


@pytest.mark.parametrize("name", NVIDIA)
def test_nvidia_gradient(name):
    """d/dw sum(img * linspace(-1, 1)) with the weights laid out over the NCHW image."""
    G, p, _ = converted(name)
    r = ref(name + "_ref.npz")
    b, h, w, ch = r["img_const"].shape
    weight = jnp.linspace(-1, 1, b * ch * h * w).reshape(b, ch, h, w).transpose(0, 2, 3, 1)
    grad = jax.jit(jax.grad(lambda ws: jnp.sum(G.synthesis(p, ws, "const") * weight)))(jnp.asarray(r["w"]))
    g_ref = r["grad_wrt_w_of_weighted_sum"]
    assert max_abs(grad, g_ref) <= TOL[name]["grad"] * np.max(np.abs(g_ref))


def test_nvidia_key_selects_network():
    """G and G_ema differ in the fixture: the default key must be G_ema, --key G the other one."""
    G, p_ema, info = converted("nvidia_tiny32")
    _, p_g, info_g = converted("nvidia_tiny32", "G")
    assert info["network"] == "G_ema" and info_g["network"] == "G"
    r = ref("nvidia_tiny32_ref.npz")
    assert max_abs(jax.jit(G.synthesis)(p_g, jnp.asarray(r["w"])), r["img_const"]) > 1e-3
    with pytest.raises(conv.ConversionError, match="no network 'D2'"):
        conv.convert(fixture("nvidia_tiny32.pkl"), key="D2")
    with pytest.raises(conv.ConversionError, match="not a generator"):
        conv.convert(fixture("nvidia_tiny32.pkl"), key="D")


def test_nvidia_config_from_file():
    G, _, info = converted("nvidia_tiny32")
    cfg = G.cfg
    assert (cfg.z_dim, cfg.w_dim, cfg.img_resolution, cfg.mapping_layers, cfg.conv_clamp) == (64, 64, 32, 2, 256.0)
    assert list(cfg.block_channels.values()) == [64, 64, 64, 32]  # base 1024, max 64
    assert info["num_fp16_res"] == 2
    Gc, _, _ = converted("nvidia_tiny32_cond")
    assert (Gc.cfg.c_dim, Gc.cfg.z_dim, Gc.cfg.conv_clamp) == (5, 48, None)
    assert converted("nvidia_tiny64_resnet")[0].cfg.architecture == "resnet"


def test_rosinality():
    G, p, info = converted("rosinality_tiny64")
    r = ref("rosinality_tiny64_ref.npz")
    assert info["format"] == "rosinality-pt"
    assert list(G.cfg.block_channels.values()) == [64, 64, 64, 32, 32]  # read from shapes, not assumed
    ws = G.mapping(p, r["z"])
    tol = TOL["rosinality_tiny64"]
    assert max_abs(ws, r["w_plus"]) <= tol["w"]
    assert max_abs(G.synthesis(p, ws, "const"), r["img_const"]) <= tol["img"]
    assert max_abs(G.synthesis(p, G.mapping(p, r["z"], psi=0.7), "const"), r["img_psi0.7_const"]) <= tol["img"]


@pytest.mark.parametrize("name", NVIDIA)
def test_nvidia_discriminator(name):
    """The pickles' ``D`` (names and layouts by jaxedit.models.stylegan2.params): logits of the batch of 8
    (minibatch-stddev groups of 4), of 2 and 4 images alone, and d sum(logits) / d img (|logits| up to 4.9,
    |grad| up to 0.011)."""
    cfg, params, info = conv.convert_discriminator(fixture(name + ".pkl"))
    D = Discriminator(cfg)
    r = ref(name + "_D_ref.npz")
    c = r.get("c")
    sub = lambda a, s: None if a is None else a[s]
    run = jax.jit(lambda x, c: D(params, x, c))
    assert info["network"] == "D" and cfg.architecture == "resnet" and cfg.c_dim == (0 if c is None else c.shape[1])
    tol = TOL[name]
    assert max_abs(run(r["img"], c), r["logits"][:, 0]) <= tol["logits"]
    assert max_abs(run(r["img"][:2], sub(c, slice(2))), r["logits_first2"][:, 0]) <= tol["logits"]
    assert max_abs(run(r["img"][4:], sub(c, slice(4, None))), r["logits_gen4"][:, 0]) <= tol["logits"]
    grad = jax.jit(jax.grad(lambda x, c: jnp.sum(D(params, x, c))))(r["img"], c)
    assert max_abs(grad, r["grad_img_of_sum_logits"]) <= tol["dimg"]
    with pytest.raises(conv.ConversionError, match="is not a discriminator"):
        conv.convert_discriminator(fixture(name + ".pkl"), key="G_ema")
