"""StyleGAN3 (configs T and R): converted NVIDIA pickles reproduce the reference's own outputs.

Fixtures: ../shared/fixtures/nvidia_sg3_{t32,r32}* (random weights, made by NVlabs/stylegan3;
see its README). Bounds are about 3x the max abs error measured on XLA CPU (LLVM -O0,
tests/conftest.py): see ``TOL``.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from conftest import fixture, max_abs, ref
from jaxedit.converters import stylegan2 as conv2
from jaxedit.converters import stylegan3 as conv
from jaxedit.errors import InputError
from jaxedit.io import checkpoint
from jaxedit.models import load as load_model
from jaxedit.models.stylegan3 import StyleGAN3, StyleGAN3Config, design_lowpass_filter, make_transform

NAMES = ["nvidia_sg3_t32", "nvidia_sg3_r32"]
# w = mapping (psi 1 and 0.7), input = Fourier-feature layer (values up to ~3), img = images at psi 1,
# psi 0.7 and with the user transform. Measured max abs errors in the comments.
TOL = {
    "nvidia_sg3_t32": dict(w=4e-6, input=1.2e-5, img=6e-6),  # 1.1e-6 3.8e-6 1.7e-6
    "nvidia_sg3_r32": dict(w=4e-6, input=9e-6, img=3e-6),  # 1.2e-6 2.9e-6 9.5e-7
}


@functools.cache
def converted(name: str):
    cfg, params, info = conv.convert(fixture(name + ".pkl"))
    return StyleGAN3(cfg), jax.tree.map(jnp.asarray, params), info


@pytest.mark.parametrize("name", NAMES)
def test_mapping_and_truncation(name):
    G, p, _ = converted(name)
    r, tol = ref(name + "_ref.npz"), TOL[name]
    assert max_abs(p["mapping"]["w_avg"], r["w_avg"]) == 0
    assert max_abs(G.mapping(p, r["z"]), r["w"]) < tol["w"]
    assert max_abs(G.mapping(p, r["z"], psi=0.7), r["w_psi0.7"]) < tol["w"]


@pytest.mark.parametrize("name", NAMES)
def test_synthesis_input_layer(name):
    G, p, _ = converted(name)
    r = ref(name + "_ref.npz")
    out = G.synthesis_input(p, r["w"][:2])
    assert out.shape == r["synthesis_input"].shape
    assert max_abs(out, r["synthesis_input"]) < TOL[name]["input"]
    # one [3, 3] transform acts as the same [B, 3, 3] for every sample
    t = np.asarray(r["transform_buffer"], np.float32)
    one = G.synthesis_input(p, r["w"][:2], transform=t)
    assert max_abs(one, G.synthesis_input(p, r["w"][:2], transform=np.stack([t, t]))) == 0
    assert max_abs(one, out) > 0.1  # the transform moved the features


@pytest.mark.parametrize("name", NAMES)
def test_images_psi_and_transform(name):
    """Images at psi 1, psi 0.7 and with the user transform, as one batch with per-sample transforms ([B, 3, 3]):
    one compiled program (each call shape is a compile; the batch-of-one and [3, 3] cases are tested elsewhere)."""
    G, p, _ = converted(name)
    r, tol = ref(name + "_ref.npz"), TOL[name]["img"]
    # the visualizer's matrix, inverted into the input layer's transform buffer
    np.testing.assert_allclose(make_transform((0.1, -0.05), 10.0), r["transform_make"], atol=1e-7)
    np.testing.assert_allclose(np.linalg.inv(r["transform_make"]), r["transform_buffer"], atol=1e-6)
    b = len(r["w"])
    stored = np.asarray(p["synthesis"]["input"]["transform"])
    transforms = np.stack([stored] * (2 * b) + [r["transform_buffer"]] * b).astype(np.float32)
    imgs = G.synthesis(p, np.concatenate([r["w"], r["w_psi0.7"], r["w"]]), transform=transforms)
    assert max_abs(imgs[:b], r["img"]) < tol
    assert max_abs(imgs[b:2 * b], r["img_psi0.7"]) < tol
    assert max_abs(imgs[2 * b:], r["img_transform"]) < tol


@pytest.mark.slow
def test_samples_independent_of_batch_and_jit():
    G, p, _ = converted("nvidia_sg3_t32")
    r = ref("nvidia_sg3_t32_ref.npz")
    full = G.synthesis(p, r["w"])
    one = G.synthesis(p, r["w"][2:3])
    assert max_abs(one[0], full[2]) < 1e-6
    jitted = jax.jit(lambda p, ws: G.synthesis(p, ws))(p, r["w"])
    assert max_abs(jitted, full) < 1e-6
    assert max_abs(G.synthesis(p, r["w"][:, 0]), full) < 1e-6  # [B, w_dim] broadcast to every layer


@pytest.mark.parametrize("name", NAMES)
def test_geometry_and_filters_from_config(name):
    """The config rebuilds the reference's layer names, shapes and (re-designed) FIR filters."""
    G, p, _ = converted(name)
    syn = p["synthesis"]
    for spec in G.cfg.layers():
        layer = syn[spec.name]
        fu = design_lowpass_filter(spec.up_taps, spec.in_cutoff, spec.in_half_width * 2, spec.tmp_sampling_rate)
        fd = design_lowpass_filter(spec.down_taps, spec.out_cutoff, spec.out_half_width * 2, spec.tmp_sampling_rate,
                                   radial=spec.down_radial)
        for key, f in (("up_filter", fu), ("down_filter", fd)):
            assert (key in layer) == (f is not None), (spec.name, key)
            if f is not None:
                np.testing.assert_allclose(layer[key], f, atol=1e-7, err_msg=f"{spec.name}.{key}")
    assert G.cfg.use_radial_filters == (name == "nvidia_sg3_r32")
    assert any(syn[s.name]["down_filter"].ndim == 2 for s in G.cfg.layers() if "down_filter" in syn[s.name]) \
        == G.cfg.use_radial_filters


@pytest.mark.slow
def test_init_matches_the_converted_tree():
    G, p, _ = converted("nvidia_sg3_r32")
    fresh = StyleGAN3(G.cfg).init(jax.random.key(0))
    assert jax.tree.map(lambda a: a.shape, fresh) == jax.tree.map(lambda a: a.shape, p)
    img = G.synthesis(fresh, G.mapping(fresh, jnp.ones((1, G.cfg.z_dim))))
    assert img.shape == (1, 32, 32, 3) and bool(jnp.all(jnp.isfinite(img)))
    assert StyleGAN3Config.from_dict(G.cfg.to_dict()) == G.cfg


def test_checkpoint_round_trip(tmp_path):
    G, p, _ = converted("nvidia_sg3_r32")
    checkpoint.save(tmp_path / "sg3", kind="stylegan3", model=G.cfg.to_dict(), params=p)
    G2, p2 = load_model(tmp_path / "sg3")
    assert G2 == G
    assert jax.tree.all(jax.tree.map(lambda a, b: bool(np.array_equal(a, b)), p, p2))


def test_user_errors():
    G, p, _ = converted("nvidia_sg3_t32")
    with pytest.raises(InputError, match="transform must have shape"):
        G.synthesis(p, jnp.zeros((1, 16, 64)), transform=jnp.eye(2))
    with pytest.raises(InputError, match=r"ws must have shape \[B, 16, 64\]"):
        G.synthesis(p, jnp.zeros((1, 15, 64)))
    with pytest.raises(InputError, match="z must have shape"):
        G.mapping(p, jnp.zeros((1, 63)))
    with pytest.raises(conv2.ConversionError, match="convert it as stylegan2"):
        conv.convert(fixture("nvidia_tiny32.pkl"))
    with pytest.raises(conv2.ConversionError, match="no network 'nope'"):
        conv.convert(fixture("nvidia_sg3_t32.pkl"), key="nope")
