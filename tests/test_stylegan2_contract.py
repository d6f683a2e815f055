"""The generator contract on small random models: StyleSpace, weight deltas, features,
noise, truncation, batching transforms, input errors, and the resampling ops against an
independent direct implementation of the reference's transposed conv + FIR."""

import functools

import jax
import jax.extend
import jax.numpy as jnp
import numpy as np
import pytest

from conftest import max_abs
from jaxedit.models.stylegan2 import StyleGAN2, StyleGAN2Config, WeightShift
from jaxedit.nn import ops

CFG = StyleGAN2Config(z_dim=16, w_dim=16, img_resolution=16, mapping_layers=2, channels=(32, 16, 8), conv_clamp=256)


@functools.cache
def model(architecture="skip", c_dim=0):
    G = StyleGAN2(StyleGAN2Config(**{**CFG.to_dict(), "channels": CFG.channels, "architecture": architecture,
                                     "c_dim": c_dim}))
    p = G.init(jax.random.key(1))
    # non-trivial noise strengths and biases, so every term matters
    p = jax.tree_util.tree_map_with_path(
        lambda k, a: a + 0.3 if jax.tree_util.keystr(k).endswith(("['noise_strength']", "['bias']")) else a, p)
    return G, p


def z_batch(n=3, seed=0):
    return jax.random.normal(jax.random.key(seed), (n, CFG.z_dim))


# ------------------------------------------------------------------ ops vs direct reference


def _ref_upsample_conv(x, w):
    """Reference math, written directly: transposed conv (stride 2, pad 0) then FIR pad 1, gain 4."""
    b, h, wd, _ = x.shape
    y = np.zeros((b, 2 * h + 1, 2 * wd + 1, w.shape[3]))
    for ky in range(3):
        for kx in range(3):
            y[:, ky:ky + 2 * h:2, kx:kx + 2 * wd:2] += np.einsum("bhwi,io->bhwo", x, w[ky, kx])
    return _ref_fir(np.pad(y, ((0, 0), (1, 1), (1, 1), (0, 0))), 2 * h, 2 * wd)


def _ref_fir(yp, oh, ow):
    f = np.outer([1, 3, 3, 1], [1, 3, 3, 1]) / 64.0 * 4
    out = np.zeros((yp.shape[0], oh, ow, yp.shape[3]))
    for ty in range(4):
        for tx in range(4):
            out += f[ty, tx] * yp[:, ty:ty + oh, tx:tx + ow]
    return out


def _ref_upsample2d(x):
    b, h, w, c = x.shape
    xu = np.zeros((b, 2 * h, 2 * w, c))
    xu[:, ::2, ::2] = x
    return _ref_fir(np.pad(xu, ((0, 0), (2, 1), (2, 1), (0, 0))), 2 * h, 2 * w)


@pytest.mark.parametrize("shape", [(2, 5, 7, 3, 4), (1, 4, 4, 8, 2)])
def test_up_conv_matches_direct_reference(shape):
    b, h, w, i, o = shape
    rng = np.random.default_rng(0)
    x, k = rng.standard_normal((b, h, w, i)), rng.standard_normal((3, 3, i, o))
    got = ops.up_conv2d(jnp.asarray(x, jnp.float32), jnp.asarray(k, jnp.float32))
    assert got.shape == (b, 2 * h, 2 * w, o)
    assert max_abs(got, _ref_upsample_conv(x, k)) <= 1e-4


def test_up_conv_custom_vjp_matches_autodiff():
    rng = np.random.default_rng(2)
    x = jnp.asarray(rng.standard_normal((2, 5, 6, 3)), jnp.float32)
    w = jnp.asarray(rng.standard_normal((3, 3, 3, 4)), jnp.float32)
    dy = jnp.asarray(rng.standard_normal((2, 10, 12, 4)), jnp.float32)
    mine = jax.vjp(ops.up_conv2d, x, w)[1](dy)
    auto = jax.vjp(ops._up_conv2d_phases, x, w)[1](dy)
    for a, b in zip(mine, auto):
        assert max_abs(a, b) <= 1e-4
    # second order (e.g. path-length regularization) differentiates through the custom VJP
    gg = jax.grad(lambda w: jnp.sum(jax.grad(lambda x: jnp.sum(ops.up_conv2d(x, w) ** 2))(x) ** 2))(w)
    gg_auto = jax.grad(lambda w: jnp.sum(jax.grad(lambda x: jnp.sum(ops._up_conv2d_phases(x, w) ** 2))(x) ** 2))(w)
    assert max_abs(gg, gg_auto) <= 1e-3 * float(jnp.max(jnp.abs(gg_auto)))


@pytest.mark.parametrize("k", [3, 5])
def test_same_conv_custom_vjp_matches_autodiff(k):
    """The hand-written backward of ``ops.conv2d`` (forward-form convs, fast inside lax.scan)
    equals autodiff of the plain conv: first and second order, batched kernels (vmap) and in a scan."""
    kx, kw, kd = jax.random.split(jax.random.key(3), 3)
    x = jax.random.normal(kx, (3, 7, 6, 5))
    w = jax.random.normal(kw, (k, k, 5, 4))
    dy = jax.random.normal(kd, (3, 7, 6, 4))
    plain = lambda x, w: jax.lax.conv_general_dilated(x, w, (1, 1), ((k // 2,) * 2,) * 2,
                                                      dimension_numbers=("NHWC", "HWIO", "NHWC"))
    for a, b in zip(jax.vjp(ops.conv2d, x, w)[1](dy), jax.vjp(plain, x, w)[1](dy)):
        assert max_abs(a, b) < 1e-4 * float(jnp.max(jnp.abs(b)))
    second = lambda conv: jax.grad(lambda w: jnp.sum(jax.grad(lambda x: jnp.sum(jnp.sin(conv(x, w))))(x) ** 2))(w)
    assert max_abs(second(ops.conv2d), second(plain)) < 1e-4 * float(jnp.max(jnp.abs(second(plain))))
    ws = jnp.stack([w, 2 * w, -w])  # per-sample kernels, as vmapped weight shifts make them
    batched = lambda conv: jax.grad(lambda ws: jnp.sum(jax.vmap(conv, (None, 0))(x, ws) ** 2))(ws)
    assert max_abs(batched(ops.conv2d), batched(plain)) < 1e-4 * float(jnp.max(jnp.abs(batched(plain))))

    def descend(conv):
        step = lambda w, _: (w - 1e-3 * jax.grad(lambda w: jnp.sum(conv(x, w) ** 2))(w), None)
        return jax.jit(lambda w: jax.lax.scan(step, w, length=3)[0])(w)

    assert max_abs(descend(ops.conv2d), descend(plain)) < 1e-4


def test_upsample2d_matches_direct_reference():
    x = np.random.default_rng(1).standard_normal((2, 5, 6, 3))
    assert max_abs(ops.upsample2d(jnp.asarray(x, jnp.float32)), _ref_upsample2d(x)) <= 1e-5


# ---------------------------------------------------------------------------- contract


@pytest.mark.parametrize("arch", ["skip", "resnet"])
def test_styles_roundtrip_and_features(arch):
    G, p = model(arch)
    ws = G.mapping(p, z_batch())
    styles = G.ws_to_styles(p, ws)
    assert list(styles) == list(G.cfg.layer_ws())
    assert styles["b8.conv0"].shape == (3, 32)  # conv0 of b8 is modulated by its 32 input channels
    img = G.synthesis(p, ws)
    img2, feats = G.synthesis_from_styles(p, styles, return_features=True)
    assert max_abs(img, img2) == 0.0
    assert [(k, v.shape) for k, v in feats.items()] == [(k, (3, *(int(k[1:].split(".")[0]),) * 2, c))
                                                         for k, c in G.cfg.feature_layout()]
    assert list(feats) == ["b4.const", "b4.conv1", "b8.conv0", "b8.conv1", "b16.conv0", "b16.conv1"]
    # editing one StyleSpace channel changes the image, only from that layer on
    edited = dict(styles, **{"b8.conv1": styles["b8.conv1"].at[:, 3].add(5.0)})
    img3, feats3 = G.synthesis_from_styles(p, edited, return_features=True)
    assert max_abs(feats3["b8.conv0"], feats["b8.conv0"]) == 0.0 and max_abs(feats3["b8.conv1"], feats["b8.conv1"]) > 0
    assert max_abs(img3, img) > 1e-3


def test_w_and_wplus_agree():
    G, p = model()
    ws = G.mapping(p, z_batch())
    assert max_abs(G.synthesis(p, ws[:, 0]), G.synthesis(p, ws)) == 0.0


def _grouped_convs(jaxpr) -> list[int]:
    """feature_group_count of every grouped conv in a jaxpr, nested jaxprs (jit, custom_vjp) included."""
    found = []
    for eqn in jaxpr.eqns:
        if eqn.primitive.name == "conv_general_dilated" and eqn.params["feature_group_count"] > 1:
            found.append(eqn.params["feature_group_count"])
        for sub in jax.extend.core.jaxprs_in_params(eqn.params):
            found += _grouped_convs(sub)
    return found


def test_vmap_per_sample_matches_batch():
    """Per-example calls under vmap equal the batched call, and stay shared convs (a batch of one
    must not fold its style into the kernel: vmapped, that is a grouped conv, 2-6x slower)."""
    G, p = model()
    z = z_batch(4)
    batch = jax.jit(G)(p, z)
    per_sample = jax.jit(jax.vmap(lambda zi: G(p, zi[None])[0]))(z)
    assert max_abs(per_sample, batch) <= 1e-5
    ws = G.mapping(p, z)
    vsyn = jax.vmap(G.synthesis, in_axes=(None, 0))  # ws [N, 1, L, D] -> [N, 1, H, W, C]
    assert max_abs(jax.jit(vsyn)(p, ws[:, None])[:, 0], G.synthesis(p, ws)) <= 1e-6  # measured 0
    assert _grouped_convs(jax.make_jaxpr(vsyn)(p, ws[:, None]).jaxpr) == []
    assert _grouped_convs(jax.make_jaxpr(jax.vmap(lambda zi: G(p, zi[None])[0]))(z).jaxpr) == []


@pytest.mark.slow  # op-by-op dispatch of the whole generator: ~20 s
def test_jit_matches_eager():
    G, p = model()
    z = z_batch(4)
    assert max_abs(jax.jit(G)(p, z), G(p, z)) <= 1e-5


@pytest.mark.parametrize("layer", ["b8.conv0", "b16.conv1", "b16.torgb"])
def test_weight_deltas(layer):
    G, p = model()
    ws = G.mapping(p, z_batch(3))
    shape = G.layer_weight_shape(layer)
    x = 0.3 * jax.random.normal(jax.random.key(5), shape)
    k = jnp.array([-2.0, 0.0, 1.5])
    base = G.synthesis(p, ws)
    # zero delta is the identity; a shared delta equals editing the stored weight
    assert max_abs(G.synthesis(p, ws, deltas={layer: jnp.zeros(shape)}), base) == 0.0
    block, name = layer.split(".")
    p_edit = jax.tree.map(lambda a: a, p)
    p_edit["synthesis"][block][name]["weight"] = p["synthesis"][block][name]["weight"] + x
    assert max_abs(G.synthesis(p, ws, deltas={layer: x}), G.synthesis(p_edit, ws)) <= 1e-5
    # per-sample WeightShift(x, k) equals a shared delta k_b * x applied to each sample alone
    shifted = G.synthesis(p, ws, deltas={layer: WeightShift(x, k)})
    for b in range(3):
        alone = G.synthesis(p, ws[b:b + 1], deltas={layer: k[b] * x})
        assert max_abs(shifted[b:b + 1], alone) <= 1e-4
    assert max_abs(shifted[1], base[1]) <= 1e-5 and max_abs(shifted[0], base[0]) > 1e-3


def test_noise_modes():
    G, p = model()
    ws = G.mapping(p, z_batch(4))
    const, none = G.synthesis(p, ws, "const"), G.synthesis(p, ws, "none")
    r1 = G.synthesis(p, ws, "random", key=jax.random.key(1))
    r2 = G.synthesis(p, ws, "random", key=jax.random.key(2))
    assert max_abs(const, none) > 1e-3 and max_abs(r1, r2) > 1e-3 and max_abs(r1, const) > 1e-3
    # per-sample keys: a sample's noise does not depend on the rest of its batch
    keys = jax.random.split(jax.random.key(3), 4)
    full = G.synthesis(p, ws, "random", key=keys)
    assert max_abs(G.synthesis(p, ws[2:], "random", key=keys[2:]), full[2:]) <= 1e-5
    # zero noise strength: every mode gives the same image
    p0 = jax.tree_util.tree_map_with_path(
        lambda k, a: a * 0 if jax.tree_util.keystr(k).endswith("['noise_strength']") else a, p)
    assert max_abs(G.synthesis(p0, ws, "random", key=keys), G.synthesis(p0, ws, "none")) <= 1e-5  # two programs
    with pytest.raises(ValueError, match="needs a PRNG key"):
        G.synthesis(p, ws, "random")


def test_truncation():
    G, p = model()
    p = dict(p, mapping=dict(p["mapping"], w_avg=jnp.linspace(-1, 1, CFG.w_dim)))
    z = z_batch()
    ws = G.mapping(p, z)
    assert max_abs(G.mapping(p, z, psi=0.0), jnp.broadcast_to(p["mapping"]["w_avg"], ws.shape)) == 0.0
    half = G.mapping(p, z, psi=0.5, cutoff=2)
    assert max_abs(half[:, 2:], ws[:, 2:]) == 0.0
    assert max_abs(half[:, :2], 0.5 * (ws[:, :2] + p["mapping"]["w_avg"])) <= 1e-6
    per_sample = G.mapping(p, z, psi=jnp.array([1.0, 0.0, 0.5]))
    assert max_abs(per_sample[0], ws[0]) <= 1e-6 and max_abs(per_sample[2], G.mapping(p, z, psi=0.5)[2]) <= 1e-6


def test_conditional_and_input_errors():
    G, p = model(c_dim=3)
    z = z_batch(2)
    c = jax.nn.one_hot(jnp.array([0, 2]), 3)
    a, b = G.mapping(p, z, c), G.mapping(p, z, c[::-1])
    assert max_abs(a, b) > 1e-3
    with pytest.raises(ValueError, match="conditional"):
        G.mapping(p, z)
    with pytest.raises(ValueError, match=r"c must have shape \[B, 3\]"):
        G.mapping(p, z, jnp.ones((2, 4)))
    with pytest.raises(ValueError, match=r"z must have shape \[B, 16\], got \[2, 17\]"):
        G.mapping(p, jnp.ones((2, 17)), c)
    with pytest.raises(ValueError, match=r"ws must have shape"):
        G.synthesis(p, jnp.ones((2, 5, 16)))
    with pytest.raises(ValueError, match="unknown layers"):
        G.synthesis(p, a, deltas={"b8.conv7": jnp.zeros((3, 3, 32, 16))})
    with pytest.raises(ValueError, match="power of two"):
        StyleGAN2Config(img_resolution=48)


def test_init_is_reference_initialization():
    G, _ = model()
    p = G.init(jax.random.key(0))
    fc = p["mapping"]["fc0"]["weight"]
    assert abs(float(jnp.std(fc)) * G.cfg.mapping_lr_mul - 1) < 0.2  # N(0, 1) / lr_mul
    assert float(jnp.min(p["synthesis"]["b8"]["conv0"]["affine"]["bias"])) == 1.0  # bias_init 1
    assert max_abs(G.init(jax.random.key(0))["synthesis"]["b8"]["conv0"]["weight"], p["synthesis"]["b8"]["conv0"]["weight"]) == 0
    assert max_abs(G.init(jax.random.key(1))["synthesis"]["b8"]["conv0"]["weight"], p["synthesis"]["b8"]["conv0"]["weight"]) > 0
