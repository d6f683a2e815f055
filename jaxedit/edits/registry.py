"""Editors: K directions of one family in one latent space, as JAX pytrees.

One class per family; arrays are pytree leaves, configuration (space, layer range, step length,
flow handle, solver options) is static aux data, so an editor is an ordinary argument of
``jax.jit`` / ``jax.vmap`` and one compiled program serves every editor of the same shapes::

    ed = edits.load("boundary.npy")                            # the family is detected from the file
    lat = ed.prepare(G, gparams, z)                            # z [B, z_dim] -> Z or W+ latents
    img = ed.render(G, gparams, jax.jit(edits.apply)(ed, lat, k, t))   # k int or [B], t [B]

Strength ``t`` per family (``x`` a Z or W vector):

- :class:`Linear` (plain directions, discovery deformators): ``x + t n_k``;
- :class:`InterFaceGAN`: in Z the absolute signed distance to boundary k, ``z + (t - z.n_k) n_k``
  (the reference's edit); in W ``x + t n_k``;
- :class:`GANSpace`: ``t`` standard deviations of component k, ``x + t stdev_k comp_k``;
- :class:`Warped` (WarpedGANSpace RBF paths): ``round(|t| / eps)`` unit steps of ``sign(t) eps``
  along path k (``t`` is the path length);
- :class:`Curvilinear` (DeCurvEd flow axes): ``f^-1(f(x) + t e_k)`` (the flow acts on the first
  ``flow.cfg.dim`` coordinates);
- :class:`EditingVector` (EditGAN): whole W+ moves ``w + t dw_k``, ``dw [K, num_ws, w_dim]``.

Latents: the shape of ``t`` (broadcast with ``k``'s) is the batch shape ``[*B]``; latents are
``[*B, d]`` (Z, or single W vectors) or W+ ``[*B, L, d]`` (space ``'w'``; every layer's vector
moves, or only layers ``[start, end)`` when ``layers`` is set).

Checkpoints (:func:`save` / :func:`load`): a jaxedit checkpoint of kind ``editor`` whose
``model`` is ``{'family', 'space', 'layers', ...static config}``, whose params are the editor's
arrays, and whose ``jaxedit.json`` has a free-form ``provenance`` dict; documented keys:
``generator`` ``{'name', 'sha256'}``, ``space``, ``layers``, ``method`` (how it was made) and
``strength_range`` ``[lo, hi]`` (recommended strengths). A ``jaxedit discover`` run keeps its
editor in ``RUN/editor`` (:data:`RUN_EDITOR`), so :func:`load` reads runs without the trainer.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any, ClassVar

import jax
import jax.numpy as jnp
import numpy as np

from jaxedit.edits import curvilinear, formats, linear, warped
from jaxedit.errors import CheckpointError, InputError
from jaxedit.io import checkpoint
from jaxedit.models.flows import CNF, CNFConfig

Array = jax.Array
KIND = "editor"  # the checkpoint kind
RUN_EDITOR = "editor"  # a discover run's editor checkpoint: RUN/editor
SOLVER_OPTIONS = ("rtol", "atol", "steps")


class EditorError(InputError):
    """A direction file, editor argument or latent shape that cannot be used; the message names it."""


def _static(default: Any = dataclasses.MISSING):
    return dataclasses.field(default=default, metadata={"static": True})


def _pytree(cls):
    """Frozen keyword-only dataclass registered as a pytree (fields marked ``static`` are aux data)."""
    return jax.tree_util.register_dataclass(dataclasses.dataclass(frozen=True, kw_only=True, eq=False)(cls))


@dataclasses.dataclass(frozen=True, kw_only=True, eq=False)
class Editor:
    """What every family shares: ``space`` ('z' or 'w'), ``layers`` (W+ range ``(start, end)`` or None),
    ``num_directions``, ``dim``, :meth:`check`, :meth:`prepare`, :meth:`render`."""

    family: ClassVar[str]
    moves_wplus: ClassVar[bool] = False  # True: directions are whole W+ codes, rows are [L, d]
    space: str = _static("z")
    layers: tuple[int, int] | None = _static(None)

    def __post_init__(self):
        if self.space not in ("z", "w"):
            raise EditorError(f"space must be 'z' or 'w', got {self.space!r}")
        if self.layers is not None:
            lay = tuple(self.layers)
            if len(lay) != 2 or not all(isinstance(v, int) for v in lay) or not 0 <= lay[0] < lay[1]:
                raise EditorError(f"layers must be a W+ range (start, end) with 0 <= start < end, got {self.layers!r}")
            if self.space != "w":
                raise EditorError(f"a layer range ({lay[0]}:{lay[1]}) needs space w, not {self.space}")
            object.__setattr__(self, "layers", lay)

    def check(self, G) -> None:
        """Raise :class:`EditorError` unless this editor fits generator ``G``'s latent space."""
        need = G.cfg.z_dim if self.space == "z" else G.cfg.w_dim
        if self.dim > need or (self.family != "curvilinear" and self.dim != need):
            raise EditorError(f"{self.family} directions are {self.dim}-dimensional but the generator's "
                              f"{self.space.upper()} space has {need} dimensions")
        if self.moves_wplus and self.num_layers != G.cfg.num_ws:
            raise EditorError(f"{self.family} vectors span {self.num_layers} W+ layers but the generator has "
                              f"{G.cfg.num_ws}")
        if self.layers is not None and self.layers[1] > G.cfg.num_ws:
            s, e = self.layers
            raise EditorError(f"layer range {s}:{e} needs 0 <= start < end <= {G.cfg.num_ws} "
                              "(the generator's W+ layers)")

    def prepare(self, G, gparams, z: Array, psi: float = 1.0) -> Array:
        """z ``[B, z_dim]`` -> the latents this editor moves (Z, or W+ ``[B, num_ws, w_dim]``)."""
        return z if self.space == "z" else G.mapping(gparams, z, psi=psi)

    def render(self, G, gparams, latents: Array, psi: float = 1.0, noise_mode: str = "const") -> Array:
        """Latents from :meth:`prepare` / :func:`apply` -> images ``[B, H, W, C]``."""
        ws = G.mapping(gparams, latents, psi=psi) if self.space == "z" else latents
        return G.synthesis(gparams, ws, noise_mode=noise_mode)

    def _config(self) -> dict[str, Any]:
        """Static configuration beyond space and layers, as JSON (see :func:`save`)."""
        return {}

    @classmethod
    def _from_config(cls, model: dict[str, Any], params: dict[str, Any], where: str) -> dict[str, Any]:
        """Constructor arguments from a checkpoint's ``model`` config and params."""
        return dict(params)


def _take_rows(table: Array, k: Array) -> Array:
    return jnp.take(table, k, axis=0)


@_pytree
class Linear(Editor):
    """Plain directions ``directions [K, d]`` (rows as given): ``x + t n_k``."""

    family: ClassVar[str] = "linear"
    directions: Array

    @property
    def num_directions(self) -> int:
        return int(self.directions.shape[0])

    @property
    def dim(self) -> int:
        return int(self.directions.shape[1])

    def _move(self, x: Array, k: Array, t: Array) -> Array:
        return x + t[:, None] * _take_rows(self.directions, k)

    def _move_many(self, x: Array, ks: Array, ts: Array) -> Array:
        return x + jnp.einsum("nm,nmd->nd", ts, _take_rows(self.directions, ks))


@_pytree
class InterFaceGAN(Linear):
    """Unit boundary normals ``directions [K, d]`` (usually K = 1). Z: ``z + (t - z.n_k) n_k`` (t is
    the absolute signed distance); W: ``x + t n_k``."""

    family: ClassVar[str] = "interfacegan"

    def _move(self, x: Array, k: Array, t: Array) -> Array:
        if self.space == "w":
            return super()._move(x, k, t)
        n = _take_rows(self.directions, k)
        return x + (t - jnp.sum(x * n, axis=-1))[:, None] * n

    def _move_many(self, x: Array, ks: Array, ts: Array) -> Array:
        if self.space == "z":
            raise EditorError("InterFaceGAN Z edits set absolute distances and do not add up: apply them one at a time")
        return super()._move_many(x, ks, ts)


@_pytree
class GANSpace(Editor):
    """Principal components ``comp [K, d]`` (unit rows) and ``stdev [K]``: ``x + t stdev_k comp_k``."""

    family: ClassVar[str] = "ganspace"
    space: str = _static("w")
    comp: Array
    stdev: Array

    @property
    def num_directions(self) -> int:
        return int(self.comp.shape[0])

    @property
    def dim(self) -> int:
        return int(self.comp.shape[1])

    def _move(self, x: Array, k: Array, t: Array) -> Array:
        return x + (t * jnp.take(self.stdev, k))[:, None] * _take_rows(self.comp, k)

    def _move_many(self, x: Array, ks: Array, ts: Array) -> Array:
        return x + jnp.einsum("nm,nmd->nd", ts * jnp.take(self.stdev, ks), _take_rows(self.comp, ks))


@_pytree
class Warped(Editor):
    """WarpedGANSpace RBF paths: ``support_sets [K, 2N, d]``, ``alphas [K, 2N]``, ``log_gamma [K]``;
    static step length ``eps``. ``t`` walks ``round(|t| / eps)`` unit steps of ``sign(t) eps``."""

    family: ClassVar[str] = "warped"
    support_sets: Array
    alphas: Array
    log_gamma: Array
    eps: float = _static(0.2)

    def __post_init__(self):
        super().__post_init__()
        if not (isinstance(self.eps, (int, float)) and self.eps > 0):
            raise EditorError(f"warped step length eps must be a positive number, got {self.eps!r}")
        object.__setattr__(self, "eps", float(self.eps))

    @property
    def num_directions(self) -> int:
        return int(self.support_sets.shape[0])

    @property
    def dim(self) -> int:
        return int(self.support_sets.shape[2])

    def _move(self, x: Array, k: Array, t: Array) -> Array:
        """A loop to the longest walk among the rows; shorter walks stop at their own length."""
        params = {"support_sets": self.support_sets, "alphas": self.alphas, "log_gamma": self.log_gamma}
        n = jnp.round(jnp.abs(t) / self.eps).astype(jnp.int32)
        step = jax.vmap(lambda z, kk, e: warped.unit_step(params, z, kk, e))
        sign_eps = jnp.sign(t) * self.eps

        def body(i, z):
            return jnp.where((i < n)[:, None], step(z, k, sign_eps), z)

        return jax.lax.fori_loop(0, jnp.max(n, initial=0), body, x)

    def _move_many(self, x: Array, ks: Array, ts: Array) -> Array:
        raise EditorError("warped paths do not commute: apply their edits one at a time")

    def _config(self) -> dict[str, Any]:
        return {"eps": self.eps}

    @classmethod
    def _from_config(cls, model, params, where):
        return dict(params, eps=model["eps"])


@_pytree
class Curvilinear(Editor):
    """DeCurvEd flow axes: ``flow_params`` (leaves) of the static CNF handle ``flow``; the first
    ``num_axes`` axes are the directions; ``solver`` = static options of the solves
    (``rtol``, ``atol``, ``steps``; a dict or ``((name, value), ...)``). ``f^-1(f(x) + t e_k)``."""

    family: ClassVar[str] = "curvilinear"
    flow_params: dict[str, Any]
    flow: CNF = _static()
    num_axes: int = _static()
    solver: tuple[tuple[str, Any], ...] = _static(())

    def __post_init__(self):
        super().__post_init__()
        solver = tuple(sorted(dict(self.solver).items()))
        unknown = [name for name, _ in solver if name not in SOLVER_OPTIONS]
        if unknown:
            raise EditorError(f"unknown solver options {unknown}; expected {', '.join(SOLVER_OPTIONS)}")
        if not 0 < self.num_axes <= self.flow.cfg.dim:
            raise EditorError(f"num_axes {self.num_axes} must be in 1..{self.flow.cfg.dim} (the flow's dimension)")
        object.__setattr__(self, "solver", solver)

    @property
    def num_directions(self) -> int:
        return self.num_axes

    @property
    def dim(self) -> int:
        return self.flow.cfg.dim

    def _move(self, x: Array, k: Array, t: Array) -> Array:
        d = self.dim
        head = curvilinear.edit_axes(self.flow, self.flow_params, x[:, :d], k, t, **dict(self.solver))
        return jnp.concatenate([head, x[:, d:]], axis=1)

    def _move_many(self, x: Array, ks: Array, ts: Array) -> Array:
        d = self.dim
        coords = jnp.einsum("nm,nmd->nd", ts, jax.nn.one_hot(ks, d, dtype=x.dtype))
        head = curvilinear.edit(self.flow, self.flow_params, x[:, :d], coords, **dict(self.solver))
        return jnp.concatenate([head, x[:, d:]], axis=1)

    def _config(self) -> dict[str, Any]:
        return {"flow": self.flow.cfg.to_dict(), "num_axes": self.num_axes, "solver": dict(self.solver)}

    @classmethod
    def _from_config(cls, model, params, where):
        flow = CNF(CNFConfig.from_dict(model["flow"]))
        checkpoint.check_tree(flow.param_shapes(), params["flow_params"], where)
        return {"flow_params": params["flow_params"], "flow": flow, "num_axes": model["num_axes"],
                "solver": model.get("solver", {})}


@_pytree
class EditingVector(Editor):
    """EditGAN editing vectors ``vectors [K, num_ws, w_dim]`` (``dw = w_edited - w`` of a segmentation edit):
    ``w + t dw_k`` on W+ latents ``[*B, num_ws, w_dim]`` (t = 1 repeats the edit; EditGAN's UI scales by t)."""

    family: ClassVar[str] = "vector"
    moves_wplus: ClassVar[bool] = True
    space: str = _static("w")
    vectors: Array

    def __post_init__(self):
        super().__post_init__()
        if self.space != "w" or self.layers is not None:
            raise EditorError("editing vectors move whole W+ codes: space w, no layer range")

    @property
    def num_directions(self) -> int:
        return int(self.vectors.shape[0])

    @property
    def num_layers(self) -> int:
        return int(self.vectors.shape[1])

    @property
    def dim(self) -> int:
        return int(self.vectors.shape[2])

    def _move(self, x: Array, k: Array, t: Array) -> Array:
        return x + t[:, None, None] * _take_rows(self.vectors, k)

    def _move_many(self, x: Array, ks: Array, ts: Array) -> Array:
        return x + jnp.einsum("nm,nmld->nld", ts, _take_rows(self.vectors, ks))


FAMILIES: dict[str, type[Editor]] = {c.family: c for c in (Linear, InterFaceGAN, GANSpace, Warped, Curvilinear,
                                                           EditingVector)}


# ------------------------------------------------------------------------------------- edits
def _lift(editor: Editor, latents: Array, batch: tuple[int, ...], per_row: tuple[Array, ...], move) -> Array:
    """Flatten latents ``[*batch, d]`` / ``[*batch, L, d]`` to rows, ``move(rows, *per_row)`` and restore the
    shape; W+ with a layer range moves only those layers. Each ``per_row`` array is ``[*batch, ...]``."""
    core = latents.shape[len(batch):]
    if editor.moves_wplus:  # whole W+ codes per row
        if latents.shape[:len(batch)] != batch or core != (editor.num_layers, editor.dim):
            raise EditorError(f"{editor.family} editor: latents {list(latents.shape)} are not W+ codes "
                              f"[*B, {editor.num_layers}, {editor.dim}] for strengths of batch shape B = {list(batch)}")
        args = [a.reshape((-1,) + a.shape[len(batch):]) for a in per_row]
        return move(latents.reshape((-1, *core)), *args).reshape(latents.shape)
    if latents.shape[:len(batch)] != batch or len(core) not in (1, 2) or (len(core) == 2 and editor.space == "z"):
        want = "[*B, d]" + (" or W+ [*B, L, d]" if editor.space == "w" else "")
        raise EditorError(f"{editor.family} editor ({editor.space} space): latents {list(latents.shape)} do not fit "
                          f"strengths of batch shape B = {list(batch)}; expected {want}")

    def rows(x: Array) -> Array:
        L = x.shape[-2] if len(core) == 2 else 1
        args = [jnp.repeat(a.reshape((-1,) + a.shape[len(batch):]), L, axis=0) for a in per_row]
        return move(x.reshape(-1, core[-1]), *args).reshape(x.shape)

    if len(core) == 1 or editor.layers is None:
        return rows(latents)
    s, e = editor.layers
    if e > core[0]:
        raise EditorError(f"layer range {s}:{e} exceeds the {core[0]} W+ layers of latents {list(latents.shape)}")
    return latents.at[..., s:e, :].set(rows(latents[..., s:e, :]))


def _int(k, what: str) -> Array:
    k = jnp.asarray(k)
    if not jnp.issubdtype(k.dtype, jnp.integer):
        raise EditorError(f"{what} must be integer direction indices, got dtype {k.dtype}")
    return k


@jax.jit
def apply(editor: Editor, latents: Array, k: int | Array, t: float | Array) -> Array:
    """Move ``latents`` along direction ``k`` by strength ``t`` (per family, see the module docstring).

    ``t [*B]`` and ``k`` (int or ``[*B]``, may be traced) give the batch shape ``B`` (``[]`` for one
    latent); latents ``[*B, d]`` or W+ ``[*B, L, d]`` -> the same shape. Pure: ``jax.jit(apply)``
    takes the editor as a pytree argument; ``jax.vmap(apply, in_axes=(None, 0, 0, 0))`` maps
    per-example ``k [B]``, ``t [B]``. Called eagerly it runs as one compiled program per shapes and
    editor configuration (inside ``jit`` / ``vmap`` it inlines).
    """
    latents = jnp.asarray(latents)
    k, t = _int(k, "k"), jnp.asarray(t, latents.dtype)
    batch = tuple(np.broadcast_shapes(k.shape, t.shape))
    return _lift(editor, latents, batch, (jnp.broadcast_to(k, batch), jnp.broadcast_to(t, batch)), editor._move)


@jax.jit
def apply_many(editor: Editor, latents: Array, ks: Array, ts: Array) -> Array:
    """Several edits at once: ``ks [M]`` or ``[*B, M]`` (int), ``ts [*B, M]``; latents as in :func:`apply`.

    Linear, GANSpace and InterFaceGAN in W: ``x + sum_m`` of the M moves (order-free, equal to
    applying them one after another); curvilinear: ``f^-1(f(x) + sum_m t_m e_{k_m})`` in ONE inverse
    solve (curvilinear edits commute). InterFaceGAN in Z and warped paths raise :class:`EditorError`.
    """
    latents = jnp.asarray(latents)
    ks, ts = _int(ks, "ks"), jnp.asarray(ts, latents.dtype)
    if ks.ndim == 0 or ts.ndim == 0 or ks.shape[-1] != ts.shape[-1]:
        raise EditorError(f"ks {list(ks.shape)} and ts {list(ts.shape)} must end in the same number of edits M")
    batch = tuple(np.broadcast_shapes(ks.shape[:-1], ts.shape[:-1]))
    full = batch + ts.shape[-1:]
    return _lift(editor, latents, batch, (jnp.broadcast_to(ks, full), jnp.broadcast_to(ts, full)), editor._move_many)


# ------------------------------------------------------------------------------------- files
def save(editor: Editor, path: str | Path, *, provenance: dict[str, Any] | None = None, force: bool = False) -> Path:
    """Write ``editor`` as a jaxedit checkpoint (kind ``editor``) that :func:`load` reads back bit-exact.

    ``provenance``: free-form JSON stored in ``jaxedit.json``; documented keys ``generator``
    ``{'name', 'sha256'}``, ``space``, ``layers``, ``method`` (how the directions were made) and
    ``strength_range`` ``[lo, hi]``. An existing ``path`` needs ``force``, and then only the files
    jaxedit wrote there are replaced (:func:`jaxedit.io.checkpoint.check_writable`). Returns the path.
    """
    provenance = dict(provenance or {})
    try:
        json.dumps(provenance)
    except TypeError as e:
        raise EditorError(f"provenance must be JSON-serializable ({e})") from None
    data = [f.name for f in dataclasses.fields(editor) if not f.metadata.get("static")]
    model = {"family": editor.family, "space": editor.space,
             "layers": list(editor.layers) if editor.layers else None, **editor._config()}
    return checkpoint.save(path, kind=KIND, model=model, params={n: getattr(editor, n) for n in data},
                           extra={"provenance": provenance}, force=force)


def _editor_checkpoint(path: Path) -> Path:
    """``path`` itself if it is a jaxedit checkpoint, else a discover run's ``path/editor``."""
    if checkpoint.is_checkpoint(path):
        return path
    if checkpoint.is_checkpoint(path / RUN_EDITOR):
        return path / RUN_EDITOR
    raise EditorError(f"{path} is neither a jaxedit editor checkpoint nor a `jaxedit discover` run with an "
                      f"{RUN_EDITOR}/ checkpoint (written at each training checkpoint)")


def read_provenance(path: str | Path) -> dict[str, Any]:
    """The provenance dict of an editor checkpoint or discover run (``{}`` when none was recorded)."""
    return checkpoint.read_meta(_editor_checkpoint(Path(path))).get("provenance", {})


def _from_checkpoint(path: Path) -> Editor:
    ck = checkpoint.load(path, expected_kind=KIND)
    cls = FAMILIES.get(ck.model.get("family"))
    if cls is None:
        raise CheckpointError(f"{path}: unknown editor family {ck.model.get('family')!r}")
    data = [f.name for f in dataclasses.fields(cls) if not f.metadata.get("static")]
    missing = sorted(set(data) - set(ck.params))
    if missing:
        raise CheckpointError(f"{path}: missing parameters {missing} of a {cls.family} editor")
    lay = ck.model.get("layers")
    return cls(space=ck.model["space"], layers=tuple(lay) if lay else None,
               **cls._from_config(ck.model, ck.params, str(path)))


def _mismatch(path: Path, found: str, method: str | None) -> None:
    if method not in (None, found):
        raise EditorError(f"{path} holds {found} directions, not {method}")


def _released(path: Path, method: str | None, deformator: str | None) -> tuple[str, dict[str, Any]]:
    """-> (family, constructor arrays/config) of a released direction file."""
    suffix = path.suffix.lower()
    if suffix == ".npy":
        if len(formats.npy_shape(path)) == 3:
            _mismatch(path, "vector", method)
            return "vector", {"vectors": formats.load_editing_vectors(path)}
        if method == "interfacegan":
            return "interfacegan", {"directions": formats.load_interfacegan(path)[None]}
        dirs = formats.load_directions(path)
        if method is None and dirs.shape[0] == 1:
            return "interfacegan", {"directions": formats.load_interfacegan(path)[None]}
        _mismatch(path, "linear", method)
        return "linear", {"directions": dirs}
    if suffix == ".npz":
        _mismatch(path, "ganspace", method)
        g = formats.load_ganspace(path)
        return "ganspace", {"comp": g["comp"], "stdev": g["stdev"]}
    obj = formats.read_torch(path)
    family = formats.sniff_torch(obj)
    if family is None:
        raise formats.EditFileError(f"{path}: not a known edit file (no SUPPORT_SETS, log_mat_half, linear.weight "
                                    "or chain.0.* keys)")
    _mismatch(path, family, method)
    if family == "warped":
        return family, formats.warped_from_state(obj, path)
    if family == "linear":
        dfm = formats.deformator_from_state(obj, path, deformator)
        return family, {"directions": linear.directions(dfm["kind"], dfm["params"])}
    cfg, params = formats.cnf_from_state(obj, path)
    return family, {"flow_params": params, "flow": CNF(cfg), "num_axes": cfg.dim}


def load(path: str | Path, method: str | None = None, *, space: str | None = None,
         layers: tuple[int, int] | None = None, eps: float | None = None, deformator: str | None = None) -> Editor:
    """An editor from a released direction file, a jaxedit editor checkpoint or a ``jaxedit discover`` run.

    The family is detected from the file:

    - ``.npy`` ``(1, d)`` or ``(d,)``: InterFaceGAN boundary (normalized); ``method='linear'`` reads it
      as one plain direction; ``[K, d]``: linear directions, rows as given; ``(K, num_ws, w_dim)``: EditGAN
      editing vectors (W+);
    - ``.npz`` with ``lat_comp``: GANSpace components;
    - torch ``.pt``: WarpedGANSpace ``support_sets.pt`` (``SUPPORT_SETS``), GANLatentDiscovery
      deformator (``log_mat_half`` / ``linear.weight``: linear, the deformator's columns; a linear
      deformator's constant bias is not applied, so ``t = 0`` is the identity; ``deformator='linear'``
      or ``'proj'`` where no ``args.json`` says), DeCurvEd flow (``chain.0.*``: curvilinear, every axis);
    - a directory: an editor checkpoint (:func:`save`) or a discover run (its ``editor/``).

    ``method``: the expected family (an error if the file holds another). ``space``: default ``'z'``
    for released files (``'w'`` for GANSpace, or when ``layers`` is given); a checkpoint keeps its own
    and refuses another. ``layers``: W+ range ``(start, end)``. ``eps``: warped step length (released
    files: 0.2; a checkpoint: its own unless given).
    """
    path = Path(path)
    if method is not None and method not in FAMILIES:
        raise EditorError(f"unknown method {method!r}; expected one of {', '.join(FAMILIES)}")
    if not path.exists():
        raise EditorError(f"{path}: no such file or directory")
    if path.is_dir():
        ed = _from_checkpoint(_editor_checkpoint(path))
        _mismatch(path, ed.family, method)
        if space not in (None, ed.space):
            raise EditorError(f"{path} was made in {ed.space.upper()} space, not {space.upper()}")
        changes = {"layers": layers} if layers is not None else {}
        if eps is not None and isinstance(ed, Warped):
            changes["eps"] = eps
        return dataclasses.replace(ed, **changes) if changes else ed
    family, fields = _released(path, method, deformator)
    cls = FAMILIES[family]
    if cls is Warped:
        fields["eps"] = 0.2 if eps is None else eps
    default = "w" if layers is not None or cls is GANSpace or cls.moves_wplus else "z"
    arrays = jax.tree.map(lambda a: jnp.asarray(a) if isinstance(a, np.ndarray) else a, fields)
    return cls(space=space or default, layers=layers, **arrays)
