"""``jaxedit.load`` for every checkpoint kind: hashable models with pure methods, editors as pytrees."""

import jax
import numpy as np
import pytest

import jaxedit
from jaxedit import edits
from jaxedit.errors import CheckpointError
from jaxedit.io import checkpoint
from jaxedit.models import mapper as mapper_lib


@pytest.mark.parametrize("name, kind", [("shapes32-stylegan2", "StyleGAN2"), ("shapes32-probe", "Probe"),
                                        ("shapes-clip", "CLIP")])
def test_default_models_by_name_and_path(name, kind):
    model, params = jaxedit.load(name)
    assert type(model).__name__ == kind and hash(model) == hash(jaxedit.load(checkpoint.default_path(name))[0])
    shapes = jax.tree.map(lambda s: s.shape, model.param_shapes())
    assert jax.tree.map(np.shape, params) == shapes


def test_mapper_editor_and_run(tmp_path):
    M = mapper_lib.Mapper(mapper_lib.MapperConfig.for_generator(4, 8))
    stacked = jax.tree.map(lambda a: np.stack([a, a]), M.init(jax.random.key(0)))
    mapper_lib.save_mappers(tmp_path / "m", M, stacked, ["a", "b"])
    M2, p2 = jaxedit.load(tmp_path / "m")
    assert M2 == M and jax.tree.all(jax.tree.map(np.array_equal, stacked, jax.tree.map(np.asarray, p2)))
    ed = edits.Linear(directions=np.eye(3, 64, dtype=np.float32), space="w")
    edits.save(ed, tmp_path / "e")
    (tmp_path / "run").mkdir()
    edits.save(ed, tmp_path / "run" / edits.RUN_EDITOR)  # what a `jaxedit discover` run folder holds
    for path in (tmp_path / "e", tmp_path / "run"):
        loaded, params = jaxedit.load(path)
        assert params is None and isinstance(loaded, edits.Linear)
        np.testing.assert_array_equal(loaded.directions, ed.directions)


def test_not_a_checkpoint(tmp_path):
    with pytest.raises(CheckpointError, match="not a jaxedit checkpoint"):
        jaxedit.load(tmp_path)
    with pytest.raises(CheckpointError, match="default model 'nope' not found"):
        jaxedit.load("nope")
