"""StyleCLIP's latent mapper (``LevelsMapper``): ``w + strength * M(w)`` on W+, and its checkpoints."""

from __future__ import annotations

import dataclasses
import os
from typing import Sequence

import jax
import jax.numpy as jnp
from flax import nnx

from jaxedit.config import JSONConfig
from jaxedit.errors import CheckpointError, InputError
from jaxedit.io import checkpoint
from jaxedit.nn.handle import ModelHandle
from jaxedit.nn.layers import Dense

Array = jax.Array

MAPPER_GROUPS = ("coarse", "medium", "fine")


@dataclasses.dataclass(frozen=True)
class MapperConfig(JSONConfig):
    """StyleCLIP's ``LevelsMapper``: W+ layers ``[0, coarse_end)``, ``[coarse_end, medium_end)`` and
    ``[medium_end, num_ws)`` each through their own MLP (``depth`` EqualLinear, lr_mul 0.01, lrelu);
    a disabled group (the reference's ``--no_*_mapper``) contributes 0. Edit ``w + strength * M(w)``.

    ``norm``: the axis of the input PixelNorm. ``'layers'`` is the reference's (its PixelNorm
    normalizes dim 1 of ``[B, layers, 512]``), needed for released mappers; but on W+ latents
    whose layers are equal (a generator's own ``G.mapping`` output, no inversion) it reduces
    each feature to ``sign(w)``. ``'features'`` normalizes over the 512 features as StyleGAN's
    mapping does, and is what :meth:`for_generator` uses for mappers trained here."""

    w_dim: int = 512
    num_ws: int = 18
    coarse_end: int = 4
    medium_end: int = 8
    groups: tuple[bool, bool, bool] = (True, True, True)
    depth: int = 4
    lr_mul: float = 0.01
    strength: float = 0.1
    norm: str = "layers"

    def __post_init__(self):
        if self.norm not in ("layers", "features"):
            raise InputError(f"mapper norm must be 'layers' or 'features', got {self.norm!r}")
        if not 0 < self.coarse_end < self.medium_end < self.num_ws:
            raise InputError(f"mapper groups need 0 < coarse_end < medium_end < num_ws, got {self.coarse_end}, "
                             f"{self.medium_end}, {self.num_ws}")
        object.__setattr__(self, "groups", tuple(bool(g) for g in self.groups))
        if len(self.groups) != 3:
            raise InputError(f"groups must be 3 flags (coarse, medium, fine), got {self.groups}")

    @classmethod
    def for_generator(cls, num_ws: int, w_dim: int, **kw) -> "MapperConfig":
        """The reference's levels scaled to this generator: coarse and medium each take
        ``round(2/9)`` of the resolutions (for 1024 px: 4-8 px and 16-32 px, i.e. W+ layers
        [0, 4) and [4, 8)), fine the rest (32 px: [0, 2), [2, 4), [4, 8)); tiny generators get
        one W+ layer per coarse/medium group so that fine is never empty."""
        per = max(1, round(2 * (num_ws // 2) / 9)) * 2
        per = per if 2 * per < num_ws else 1
        return cls(**{"w_dim": w_dim, "num_ws": num_ws, "coarse_end": per, "medium_end": 2 * per, "norm": "features",
                      **kw})

    def ranges(self) -> dict[str, tuple[int, int]]:
        return dict(zip(MAPPER_GROUPS, ((0, self.coarse_end), (self.coarse_end, self.medium_end),
                                        (self.medium_end, self.num_ws))))


class _GroupMLP(nnx.Module):
    """PixelNorm then ``depth`` EqualLinear + fused lrelu, on ``[B, layers, w_dim]``.

    The reference's PixelNorm normalizes over dim 1, which for these ``[B, layers, 512]`` slices
    is the *layer* axis (not the features as in StyleGAN's mapping): reproduced with
    ``cfg.norm == 'layers'``, as released mappers were trained with it (see :class:`MapperConfig`).
    """

    def __init__(self, cfg: MapperConfig, *, rngs: nnx.Rngs):
        self.depth = cfg.depth
        self.norm_axis = 1 if cfg.norm == "layers" else 2
        for i in range(cfg.depth):
            setattr(self, f"fc{i}", Dense(cfg.w_dim, cfg.w_dim, activation="lrelu", lr_mul=cfg.lr_mul, rngs=rngs))

    def __call__(self, x):
        x = x * jax.lax.rsqrt(jnp.mean(jnp.square(x), axis=self.norm_axis, keepdims=True) + 1e-8)
        for i in range(self.depth):
            x = getattr(self, f"fc{i}")(x)
        return x


class LevelsMapperNet(nnx.Module):
    def __init__(self, cfg: MapperConfig, *, rngs: nnx.Rngs):
        self.ranges = cfg.ranges()
        self.enabled = dict(zip(MAPPER_GROUPS, cfg.groups))
        for g in MAPPER_GROUPS:
            if self.enabled[g]:
                setattr(self, g, _GroupMLP(cfg, rngs=rngs))

    def __call__(self, ws):
        parts = []
        for g in MAPPER_GROUPS:
            lo, hi = self.ranges[g]
            x = ws[:, lo:hi]
            parts.append(getattr(self, g)(x) if self.enabled[g] else jnp.zeros_like(x))
        return jnp.concatenate(parts, axis=1)


@dataclasses.dataclass(frozen=True)
class Mapper(ModelHandle):
    """Hashable handle: pure functions of the mapper's ``params`` for one :class:`MapperConfig`."""

    cfg: MapperConfig = MapperConfig()
    module = LevelsMapperNet

    def delta(self, params, ws: Array) -> Array:
        """``M(w)``: ws ``[B, num_ws, w_dim]`` -> ``[B, num_ws, w_dim]``."""
        if ws.ndim != 3 or ws.shape[1:] != (self.cfg.num_ws, self.cfg.w_dim):
            raise InputError(f"mapper expects ws [B, {self.cfg.num_ws}, {self.cfg.w_dim}], got {list(ws.shape)}")
        return self.model(params)(ws)

    def __call__(self, params, ws: Array) -> Array:
        """The edit ``w + strength * M(w)``."""
        return ws + self.cfg.strength * self.delta(params, ws)


MAPPER_KIND = "styleclip-mapper"


def save_mappers(dst: str | os.PathLike, M: Mapper, params, prompts: Sequence[str], *,
                 source: dict | None = None, force: bool = False, replace_kind: bool = False):
    """Write P mappers (``params`` stacked on a leading axis, one per prompt) as a jaxedit checkpoint."""
    want = jax.tree.map(lambda s: jax.ShapeDtypeStruct((len(prompts), *s.shape), s.dtype), M.param_shapes())
    try:
        checkpoint.check_tree(want, params, "save_mappers")
    except CheckpointError as e:
        raise InputError(f"{e} (params must be {len(prompts)} mappers stacked on a leading axis, one per prompt)") \
            from None
    return checkpoint.save(dst, kind=MAPPER_KIND, model=M.cfg.to_dict(), params=params, source=source,
                           extra={"prompts": list(prompts)}, force=force, replace_kind=replace_kind)


def load(path: str | os.PathLike) -> tuple[Mapper, dict]:
    """A ``styleclip-mapper`` checkpoint -> ``(Mapper, params stacked [P, ...])`` (prompts: :func:`load_mappers`)."""
    M, params, _ = load_mappers(path)
    return M, params


def load_mappers(path: str | os.PathLike) -> tuple[Mapper, dict, list[str]]:
    """A ``styleclip-mapper`` checkpoint -> ``(Mapper, params stacked [P, ...], prompts [P])``,
    parameter shapes checked against the config."""
    ck = checkpoint.load(path, expected_kind=MAPPER_KIND)
    M = Mapper(MapperConfig.from_dict(ck.model))
    prompts = list(ck.meta.get("prompts") or [])
    shapes = jax.tree.map(lambda s: jax.ShapeDtypeStruct((len(prompts), *s.shape), s.dtype), M.param_shapes())
    checkpoint.check_tree(shapes, ck.params, str(ck.path))
    return M, ck.params, prompts
