"""Data parallelism: the generator sharded over 4 simulated CPU devices gives the images of one
device; ``chunked_map`` equals the unchunked call."""

import os
import subprocess
import sys
import textwrap

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxedit import parallel
from jaxedit.errors import InputError

SCRIPT = textwrap.dedent("""
    import jax, numpy as np
    from jaxedit import parallel
    from jaxedit.models.stylegan2 import StyleGAN2, StyleGAN2Config

    assert jax.device_count() == 4, jax.devices()
    G = StyleGAN2(StyleGAN2Config(z_dim=16, w_dim=16, img_resolution=16, mapping_layers=2, channels=(32, 16, 8)))
    params = G.init(jax.random.key(0))
    z = np.asarray(jax.random.normal(jax.random.key(1), (10, 16)))
    keys = np.asarray(jax.random.key_data(jax.random.split(jax.random.key(2), 10)))

    def images(mesh):
        p = parallel.replicate(params, mesh)
        run = jax.jit(lambda b: G.synthesis(p, G.mapping(p, b["z"]), "random", key=b["key"]))
        shardings = []
        def traced(b):
            out = run(b)
            shardings.append(len(out.sharding.device_set))
            return out
        out = np.concatenate(list(parallel.map_batches(traced, {"z": z, "key": keys}, 8, mesh)))
        return out, shardings

    four, s4 = images(parallel.data_mesh())
    one, s1 = images(parallel.data_mesh(jax.devices()[:1]))
    assert four.shape == (10, 16, 16, 3), four.shape
    assert set(s4) == {4} and set(s1) == {1}, (s4, s1)
    print("MAXDIFF", float(np.max(np.abs(four - one))))
""")


def test_four_devices_match_one():
    flags = os.environ.get("XLA_FLAGS", "")  # keep conftest's optimization level (compile time)
    env = dict(os.environ, XLA_FLAGS=f"{flags} --xla_force_host_platform_device_count=4", JAX_PLATFORMS="cpu")
    out = subprocess.run([sys.executable, "-c", SCRIPT], env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    diff = float(out.stdout.split("MAXDIFF")[1])
    assert diff <= 1e-5


@pytest.mark.parametrize("n, batch", [(10, 4), (12, 4), (3, 8), (0, 4)])
def test_chunked_map_equals_one_call(n, batch):
    """Pytrees in and out, a padded remainder, a batch larger than the input, an empty input;
    ``fn`` sees chunks only through vmap (rows of batch one)."""
    x = {"a": jnp.arange(n * 3, dtype=jnp.float32).reshape(n, 3), "b": jnp.arange(n, dtype=jnp.int32)}
    seen = []

    def fn(t):
        seen.append(t["a"].shape)
        return {"sum": t["a"].sum(1) + t["b"], "sq": jnp.square(t["a"])}, t["b"] * 2

    got = jax.jit(lambda x: parallel.chunked_map(fn, x, batch))(x)
    want = fn(x)
    jax.tree.map(lambda g, w: np.testing.assert_array_equal(np.asarray(g), np.asarray(w)), got, want)
    assert seen[0] == (1, 3)
    with pytest.raises(InputError, match="batch_size must be positive"):
        parallel.chunked_map(fn, x, 0)
