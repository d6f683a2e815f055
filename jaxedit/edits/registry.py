"""One interface over every direction family: ``Editor.edit(latents, k, t)``.

An :class:`Editor` holds K directions of one family (linear, InterFaceGAN, GANSpace, warped
RBF paths, curvilinear flow axes) in one latent space and moves a batch of latents along
direction ``k`` by strength ``t`` (per sample). It is what the ``jaxedit edit`` / ``traverse``
commands and the direction metrics (:mod:`jaxedit.metrics.directions`) use, so each family is
rendered and scored the same way::

    ed = editors.load("interfacegan", "boundary.npy", G)      # or editors.Editor(...)
    lat = ed.prepare(G, gparams, z)                            # z [B, z_dim] -> Z or W+ latents
    img = ed.render(G, gparams, ed.edit(lat, k, t))            # t [B]

Latents: space ``'z'`` -> ``[B, z_dim]``; space ``'w'`` -> W+ ``[B, num_ws, w_dim]`` (single W
vectors ``[B, w_dim]`` are moved as they are; W+ edits act
on the layers in ``layers``, all by default; W-space families that move single vectors,
warped and curvilinear, move every selected layer's vector).

Strength ``t`` per family: linear / discovery: ``latent + t * direction``; InterFaceGAN in Z:
the absolute signed distance to the boundary (``z + (t - z.n) n``, the reference's edit), in W:
``+ t n``; GANSpace: ``t`` standard deviations of component k (``lat_stdev``); warped:
``round(|t| / eps)`` unit steps of ``sign(t) eps`` along path k (``t`` is the path length);
curvilinear: ``f^-1(f(z) + t e_k)``.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jaxedit.edits import linear, warped
from jaxedit.errors import InputError

METHODS = ("linear", "interfacegan", "ganspace", "warped", "curvilinear")


class EditorError(InputError):
    """A direction file or editor argument that cannot be used; the message names it."""


@dataclasses.dataclass(frozen=True)
class Editor:
    method: str
    space: str  # 'z' or 'w'
    params: Any  # family parameters (arrays)
    layers: tuple[int, int] | None = None  # W+ layer range [start, end) for space 'w'
    eps: float = 0.2  # warped: unit step length
    flow: Any = None  # curvilinear: the jaxedit.models.flows.CNF handle
    solver: tuple = ()  # curvilinear: extra solver options as ((name, value), ...)

    def __post_init__(self):
        if self.method not in METHODS:
            raise EditorError(f"unknown method {self.method!r}; expected one of {', '.join(METHODS)}")
        if self.space not in ("z", "w"):
            raise EditorError(f"space must be 'z' or 'w', got {self.space!r}")

    # ---------------------------------------------------------------- description
    @property
    def num_directions(self) -> int:
        p = self.params
        if self.method == "ganspace":
            return int(p["comp"].shape[0])
        if self.method == "warped":
            return int(p["support_sets"].shape[0])
        if self.method == "curvilinear":
            return int(p["num_axes"])
        return int(p["directions"].shape[0])

    @property
    def dim(self) -> int:
        p = self.params
        if self.method == "ganspace":
            return int(p["comp"].shape[1])
        if self.method == "warped":
            return int(p["support_sets"].shape[2])
        if self.method == "curvilinear":
            return int(self.flow.cfg.dim)
        return int(p["directions"].shape[1])

    def check(self, G) -> None:
        """Raise :class:`EditorError` unless this editor fits generator ``G``'s latent space."""
        need = G.cfg.z_dim if self.space == "z" else G.cfg.w_dim
        if self.dim > need or (self.method != "curvilinear" and self.dim != need):
            raise EditorError(f"{self.method} directions are {self.dim}-dimensional but the generator's "
                              f"{self.space.upper()} space has {need} dimensions")
        if self.layers is not None:
            s, e = self.layers
            if self.space != "w" or not 0 <= s < e <= G.cfg.num_ws:
                raise EditorError(f"layer range {s}:{e} needs space w and 0 <= start < end <= {G.cfg.num_ws}")

    # ---------------------------------------------------------------- latents and images
    def prepare(self, G, gparams, z: jax.Array, psi: float = 1.0) -> jax.Array:
        """z ``[B, z_dim]`` -> the latents this editor moves (Z, or W+ ``[B, num_ws, w_dim]``)."""
        return z if self.space == "z" else G.mapping(gparams, z, psi=psi)

    def render(self, G, gparams, latents: jax.Array, psi: float = 1.0, noise_mode: str = "const") -> jax.Array:
        """Latents from :meth:`prepare` / :meth:`edit` -> images ``[B, H, W, C]``."""
        ws = G.mapping(gparams, latents, psi=psi) if self.space == "z" else latents
        return G.synthesis(gparams, ws, noise_mode=noise_mode)

    # ---------------------------------------------------------------- the edit
    def edit(self, latents: jax.Array, k: int | jax.Array, t: jax.Array) -> jax.Array:
        """Move ``latents`` (Z or W ``[B, d]``, or W+ ``[B, L, d]``) along direction ``k`` by ``t`` ``[B]``."""
        t = jnp.broadcast_to(jnp.asarray(t, latents.dtype), latents.shape[:1])
        if latents.ndim == 2:
            return self._move(latents, k, t)
        B, L, d = latents.shape
        moved = self._move(latents.reshape(B * L, d), k, jnp.repeat(t, L)).reshape(B, L, d)
        if self.layers is None:
            return moved
        s, e = self.layers
        mask = ((jnp.arange(L) >= s) & (jnp.arange(L) < e))[None, :, None]
        return jnp.where(mask, moved, latents)

    def _move(self, x: jax.Array, k, t: jax.Array) -> jax.Array:
        """x ``[N, d]``, t ``[N]`` -> x moved along k."""
        p, m = self.params, self.method
        if m == "linear" or (m == "interfacegan" and self.space == "w"):
            return x + t[:, None] * jnp.take(p["directions"], k, axis=0)
        if m == "interfacegan":
            n = jnp.take(p["directions"], k, axis=0)
            return x + (t - x @ n)[:, None] * n
        if m == "ganspace":
            return x + (t * jnp.take(p["stdev"], k))[:, None] * jnp.take(p["comp"], k, axis=0)
        if m == "warped":
            return _warped_walk(p, x, k, t, self.eps)
        from jaxedit.edits import curvilinear

        d = self.flow.cfg.dim
        head = curvilinear.edit_axes(self.flow, p["flow"], x[:, :d], jnp.broadcast_to(k, t.shape), t,
                                     **dict(self.solver))
        return jnp.concatenate([head, x[:, d:]], axis=1)


def _warped_walk(params, x: jax.Array, k, t: jax.Array, eps: float) -> jax.Array:
    """``round(|t| / eps)`` unit steps of ``sign(t) * eps`` per row (a loop to the batch's longest walk)."""
    n = jnp.round(jnp.abs(t) / eps).astype(jnp.int32)
    step = jnp.sign(t) * eps

    def body(i, z):
        return jnp.where((i < n)[:, None], warped.unit_step(params, z, k, step), z)

    return jax.lax.fori_loop(0, jnp.max(n), body, x)


# ------------------------------------------------------------------------------------- loading
def _layers(text: str | None) -> tuple[int, int] | None:
    if not text:
        return None
    try:
        s, e = (int(v) for v in text.split(":"))
    except ValueError:
        raise EditorError(f"layer range must be START:END (W+ layers, end exclusive), got {text!r}") from None
    return s, e


def load(method: str, path: str | Path, *, space: str | None = None, layers: str | None = None,
         eps: float = 0.2) -> Editor:
    """An :class:`Editor` from a direction file or a ``jaxedit discover`` run directory.

    linear: ``.npy`` ``[K, d]`` (or ``[d]``) directions, rows used as given; a GANLatentDiscovery
    deformator ``.pt`` (its columns; a ``linear`` deformator's constant bias is not applied, so
    ``t = 0`` is the identity); or a ``jaxedit discover`` run directory. interfacegan: boundary ``.npy`` ``(1, d)`` (normalized), space
    z by default (the reference's Z edit) or w. ganspace: GANSpace ``.npz`` (space w).
    warped: WarpedGANSpace ``support_sets.pt`` or a jaxedit checkpoint. curvilinear: a
    DeCurvEd flow ``.pt`` or a jaxedit checkpoint.
    """
    from jaxedit.converters import edits as conv

    path = Path(path)
    if not path.exists():
        raise EditorError(f"{path}: no such file or directory")
    if path.is_dir():
        return _from_checkpoint(method, path, space, layers)
    lay = _layers(layers)
    try:
        if method == "interfacegan":
            n = conv.load_interfacegan(path)
            return Editor("interfacegan", space or "z", {"directions": jnp.asarray(n)[None]}, lay)
        if method == "linear" and path.suffix in (".pt", ".pth"):
            dfm = conv.load_deformator(path)
            dirs = linear.directions(dfm["kind"], dfm["params"])
            if dfm["kind"] == "proj":
                dirs = dirs / jnp.linalg.norm(dirs, axis=-1, keepdims=True)
            return Editor("linear", space or "z", {"directions": dirs}, lay)
        if method == "linear":
            a = np.load(path, allow_pickle=False)
            a = a[None] if a.ndim == 1 else a
            if a.ndim != 2:
                raise EditorError(f"{path}: linear directions must be [K, d], got {a.shape}")
            return Editor("linear", space or ("w" if lay else "z"), {"directions": jnp.asarray(a, jnp.float32)}, lay)
        if method == "ganspace":
            g = conv.load_ganspace(path)
            return Editor("ganspace", space or "w", {"comp": jnp.asarray(g["comp"]), "stdev": jnp.asarray(g["stdev"])},
                          lay)
        if method == "warped":
            return Editor("warped", space or "z", {k: jnp.asarray(v) for k, v in conv.load_warped(path).items()},
                          lay, eps=eps)
        if method == "curvilinear":
            from jaxedit.converters import decurved

            cfg, params = decurved.load_cnf(path)
            from jaxedit.models.flows import CNF

            return Editor("curvilinear", space or "z", {"flow": params, "num_axes": cfg.dim}, lay, flow=CNF(cfg))
    except (OSError, ValueError) as e:
        if isinstance(e, EditorError):
            raise
        raise EditorError(str(e)) from e
    raise EditorError(f"unknown method {method!r}; expected one of {', '.join(METHODS)}")


def _from_checkpoint(method: str, path: Path, space: str | None, layers: str | None) -> Editor:
    from jaxedit.train import discovery

    ed = discovery.load_editor(path)
    if method not in (ed.method, "auto"):
        raise EditorError(f"{path} holds {ed.method} directions, not {method}")
    lay = _layers(layers)
    if space and space != ed.space:
        raise EditorError(f"{path} was trained in {ed.space.upper()} space, not {space.upper()}")
    return dataclasses.replace(ed, layers=lay) if lay else ed
