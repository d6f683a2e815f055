"""``jaxedit.load`` for every checkpoint kind: hashable models with pure methods, editors as pytrees."""

import json
import shutil

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


def _crafted(tmp_path, name, change):
    """A copy of the default generator with one metadata file replaced by ``change(its JSON)``."""
    dst = tmp_path / "ck"
    shutil.copytree(checkpoint.default_path("shapes32-stylegan2"), dst)
    path = dst / name
    path.write_text(change(json.loads(path.read_text())))
    return dst


@pytest.mark.parametrize("name, change, expect", [
    ("jaxedit.json", lambda m: "[1, 2]", "expected a JSON object, found list"),
    ("jaxedit.json", lambda m: '{"a": ' * 100_000, "invalid JSON|nested too deeply"),
    ("jaxedit.json", lambda m: json.dumps({**m, "version": "2"}), "'version' is '2', not an integer"),
    ("jaxedit.json", lambda m: json.dumps({**m, "model": [1]}), "'model' is \\[1\\], not a dict"),
    ("params/_METADATA", lambda m: "{}", "'tree_metadata' must map 1 to"),
    ("params/_METADATA", lambda m: json.dumps(
        {**m, "tree_metadata": {k: {**v, "key_metadata": "abc"} for k, v in m["tree_metadata"].items()}}),
     "is not a parameter description"),
    ("params/_METADATA", lambda m: json.dumps(
        {**m, "tree_metadata": {k: {**v, "value_metadata": {"value_type": "foo", "skip_deserialize": False}}
                                for k, v in m["tree_metadata"].items()}}), "cannot restore parameters"),
])
def test_crafted_metadata_is_a_one_line_error(tmp_path, name, change, expect):
    """Metadata a crafted checkpoint may hold: a CheckpointError naming the file, never a crash inside orbax."""
    with pytest.raises(CheckpointError, match=expect) as e:
        jaxedit.load(_crafted(tmp_path, name, change))
    assert str(tmp_path) in str(e.value) and "\n" not in str(e.value)


def test_stored_shapes_reads_no_array_and_refuses_crafted_metadata(tmp_path):
    shapes = checkpoint.stored_shapes(checkpoint.default_path("shapes32-stylegan2"))
    G, params = jaxedit.load("shapes32-stylegan2")
    assert shapes == {jax.tree_util.keystr(k, simple=True, separator="."): np.shape(v)
                      for k, v in jax.tree_util.tree_leaves_with_path(params)}
    with pytest.raises(CheckpointError, match="'tree_metadata' must map"):
        checkpoint.stored_shapes(_crafted(tmp_path, "params/_METADATA", lambda m: '{"tree_metadata": []}'))
