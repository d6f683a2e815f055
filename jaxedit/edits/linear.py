"""Linear latent edits: InterFaceGAN, GANSpace, unsupervised discovery (Voynov & Babenko).

Every edit is ``latent + shift`` with a shift built from unit directions. All functions are
pure, batched and jit / vmap friendly; only the layer selection (``layers``) and array
*shapes* are static. Notation: ``B`` batch, ``L`` W+ layers (``num_ws``), ``d`` latent dim,
``K`` directions, ``S`` strengths.

Reference semantics (see ``shared/notes/edit-methods-reference.md``):

- InterFaceGAN (``genforce/interfacegan:utils/manipulator.py``): Z/W edits set the *absolute*
  signed distance (:func:`interfacegan_distance`); W+ edits add ``alpha * n`` per layer
  (:func:`apply`). Conditional boundaries: :func:`project_off`. Boundary fit:
  :func:`fit_boundary` (linear SVM, C = 1, top/bottom 2 %, 70/30 split).
- GANSpace (``harskish/ganspace``): :func:`pca_directions` (exact PCA of W, on device) and
  :func:`ganspace_edit` (``w_l += sigma * stdev[i] * comp[i]`` for ``l`` in ``[start, end)``).
- GANLatentDiscovery deformators: :func:`ortho_matrix`, :func:`directions`,
  :func:`deformator_shift`.
"""

from __future__ import annotations

from typing import Any, Callable, NamedTuple, Sequence

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jaxedit.errors import InputError

Array = jax.Array
Layers = slice | range | Sequence[int] | np.ndarray | None


# ----------------------------------------------------------------------------- generic shift
def _layer_mask(num_layers: int, layers: Layers) -> np.ndarray | None:
    """Static ``[L]`` float mask of the edited W+ layers (``None`` = every layer)."""
    if layers is None:
        return None
    if isinstance(layers, (slice, range)):
        idx = np.arange(num_layers)[layers] if isinstance(layers, slice) else np.asarray(layers, np.int64)
    else:
        arr = np.asarray(layers)
        if arr.dtype == bool:
            if arr.shape != (num_layers,):
                raise InputError(f"boolean layer mask must have shape ({num_layers},), got {arr.shape}")
            return arr.astype(np.float32)
        idx = arr.astype(np.int64).reshape(-1)
    if idx.size and (idx.min() < -num_layers or idx.max() >= num_layers):
        raise InputError(f"layers {layers!r} out of range for {num_layers} W+ layers")
    mask = np.zeros(num_layers, np.float32)
    mask[idx] = 1.0
    return mask


def shift(direction: Array, alpha: Array | float) -> Array:
    """The shift ``alpha * direction``.

    direction ``[d]`` with alpha scalar / ``[B]`` -> ``[d]`` / ``[B, d]``;
    directions ``[K, d]`` with alpha ``[..., K]`` -> ``[..., d]`` (sum of the K scaled directions).
    """
    direction = jnp.asarray(direction)
    alpha = jnp.asarray(alpha, direction.dtype)
    if direction.ndim == 1:
        return alpha[..., None] * direction
    if direction.ndim == 2:
        if alpha.ndim == 0 or alpha.shape[-1] != direction.shape[0]:
            raise InputError(f"{direction.shape[0]} directions need alpha of shape [..., {direction.shape[0]}], "
                             f"got {alpha.shape}")
        return jnp.einsum("...k,kd->...d", alpha, direction)
    raise InputError(f"direction must be [d] or [K, d], got {direction.shape}")


def apply(latent: Array, direction: Array, alpha: Array | float, layers: Layers = None) -> Array:
    """Add ``alpha * direction`` to a batch of latents.

    latent: ``[B, d]`` (Z or W) or ``[B, L, d]`` (W+).
    direction: ``[d]``, or ``[K, d]`` several directions at once.
    alpha: for ``[d]``: scalar or ``[B]``; for ``[K, d]``: ``[K]`` or ``[B, K]``.
    layers: W+ only: the edited layers as a ``slice`` / ``range`` (GANSpace ``[start, end)`` is
        ``slice(start, end)``), a list of indices or a boolean ``[L]`` mask; ``None`` = all.
    Returns the edited latents, same shape as ``latent``. ``alpha = 0`` is the identity.
    """
    latent = jnp.asarray(latent)
    delta = shift(direction, alpha).astype(latent.dtype)  # [d] or [B, d]
    if latent.ndim == 2:
        if layers is not None:
            raise InputError("layers only apply to W+ latents [B, L, d]")
        return latent + delta
    if latent.ndim != 3:
        raise InputError(f"latent must be [B, d] or [B, L, d], got {latent.shape}")
    delta = delta[..., None, :]  # [1, d] or [B, 1, d]
    mask = _layer_mask(latent.shape[1], layers)
    if mask is not None:
        delta = delta * jnp.asarray(mask, latent.dtype)[:, None]
    return latent + delta


def apply_sweep(latent: Array, direction: Array, alphas: Array, layers: Layers = None) -> Array:
    """Edits at ``S`` strengths: alphas ``[S]`` (or ``[S, K]`` for ``[K, d]`` directions).

    latent ``[B, ...]`` -> ``[B, S, ...]``; ``out[:, s] == apply(latent, direction, alphas[s], layers)``.
    """
    return jax.vmap(lambda a: apply(latent, direction, a, layers), out_axes=1)(jnp.asarray(alphas))


# ----------------------------------------------------------------------------- InterFaceGAN
def interfacegan_distance(z: Array, n: Array, distance: Array | float) -> Array:
    """InterFaceGAN Z/W edit: move ``z`` to signed distance ``distance`` from the hyperplane ``n``.

    z ``[B, d]``, unit normal n ``[d]``, distance scalar or ``[B]`` -> ``z + (distance - z.n) n``
    ``[B, d]`` (reference ``linear_interpolate`` on 2-D codes; the intercept is not used).
    """
    z = jnp.asarray(z)
    n = jnp.asarray(n, z.dtype)
    distance = jnp.asarray(distance, z.dtype)
    return z + (distance - z @ n)[..., None] * n


def interfacegan_sweep(z: Array, n: Array, distances: Array) -> Array:
    """:func:`interfacegan_distance` at ``S`` distances: z ``[B, d]``, distances ``[S]`` -> ``[B, S, d]``.

    The reference default is ``jnp.linspace(-3, 3, 10)``.
    """
    return jax.vmap(lambda t: interfacegan_distance(z, n, t), out_axes=1)(jnp.asarray(distances))


def project_off(n: Array, conditions: Array) -> Array:
    """Conditional boundary: remove the condition boundaries' components from ``n``, renormalize.

    n ``[d]``; conditions ``[d]`` (one) or ``[M, d]``. One unit condition: ``n - (n.c) c``; several:
    solve ``(C C^T) x = C n`` and take ``n - x^T C`` (the orthogonal projection off span(C),
    which is what the reference's 2- and >=3-condition branches compute). Returns unit ``[d]``.
    """
    n = jnp.asarray(n)
    c = jnp.asarray(conditions, n.dtype)
    if c.ndim == 1:
        c = c[None]
    if c.shape[0] == 1:
        out = n - (c[0] @ n) / (c[0] @ c[0]) * c[0]  # == n - (n.c)c for a unit c
    else:
        x = jnp.linalg.solve(c @ c.T, c @ n)
        out = n - x @ c
    return out / jnp.linalg.norm(out)


class Boundary(NamedTuple):
    normal: Array  # [d] unit normal coef / |coef|
    val_accuracy: Array  # scalar, on the held-out split
    train_accuracy: Array  # scalar
    coef: Array  # [d] raw SVM weight
    intercept: Array  # scalar


def _smooth_hinge(m: Array, h: float) -> Array:
    """Quadratically smoothed hinge ``max(0, 1 - m)`` (exact outside ``1 - h < m < 1``)."""
    u = 1.0 - m
    return jnp.where(u <= 0, 0.0, jnp.where(u >= h, u - 0.5 * h, 0.5 * u * u / h))


def svm_fit(x: Array, y: Array, C: float = 1.0, iters: int = 500, smoothing: float = 1e-3) -> tuple[Array, Array]:
    """Linear soft-margin SVM in the primal: ``min 0.5 |w|^2 + C sum_i hinge(y_i (w.x_i + b))``.

    x ``[N, d]``, y ``[N]`` in {-1, +1} -> (w ``[d]``, b ``[]``). Same objective as sklearn's
    ``SVC(kernel='linear', C=C)`` (bias not regularized); solved with L-BFGS on a hinge
    smoothed over a band of width ``smoothing`` (the minimizer converges to the hinge one as
    the band shrinks). Jittable; ``iters`` is static.
    """
    x = jnp.asarray(x, jnp.float32)
    y = jnp.asarray(y, jnp.float32)
    d = x.shape[1]

    def loss(p):
        w, b = p[:d], p[d]
        return 0.5 * w @ w + C * jnp.sum(_smooth_hinge(y * (x @ w + b), smoothing))

    opt = optax.lbfgs()
    value_and_grad = optax.value_and_grad_from_state(loss)

    def body(carry, _):
        p, state = carry
        value, grad = value_and_grad(p, state=state)
        updates, state = opt.update(grad, state, p, value=value, grad=grad, value_fn=loss)
        return (optax.apply_updates(p, updates), state), None

    p0 = jnp.zeros(d + 1, jnp.float32)
    (p, _), _ = jax.lax.scan(body, (p0, opt.init(p0)), None, length=iters)
    return p[:d], p[d]


_svm_fit_jit = jax.jit(svm_fit, static_argnames=("iters",))


def fit_boundary(latents: Array, scores: Array, top_fraction: float | int = 0.02, val_split: float = 0.3,
                 key: Array | None = None, C: float = 1.0, iters: int = 500) -> Boundary:
    """InterFaceGAN boundary (``train_boundary``): a linear SVM between the extreme-score samples.

    latents ``[N, d]``, scores ``[N]``. The top and bottom ``top_fraction`` (a ratio in (0, 1]
    or a count) become positives / negatives (at most ``N // 2`` each); each class is shuffled
    with ``key`` and split ``(1 - val_split) / val_split`` into train / validation; a linear
    SVM (C = 1, as ``SVC(kernel='linear')``) is fit on train. Returns :class:`Boundary`
    with ``normal = coef / |coef|`` ``[d]`` and the validation accuracy. Sample selection runs
    on the host (data-dependent sizes); the fit is one jitted program.
    """
    latents = np.asarray(latents, np.float32).reshape(len(latents), -1)
    scores = np.asarray(scores).reshape(-1)
    if scores.shape[0] != latents.shape[0]:
        raise InputError(f"{latents.shape[0]} latents but {scores.shape[0]} scores")
    n = latents.shape[0]
    chosen = int(n * top_fraction) if 0 < top_fraction <= 1 else int(top_fraction)
    chosen = min(chosen, n // 2)
    train_num = int(chosen * (1.0 - val_split) + 1e-9)
    if train_num < 1:
        raise InputError(f"too few samples: {chosen} per class, {train_num} for training")
    order = np.argsort(-scores, kind="stable")
    pos, neg = latents[order[:chosen]], latents[order[n - chosen:]]
    key = jax.random.key(0) if key is None else key
    kp, kn = jax.random.split(key)
    pp = np.asarray(jax.random.permutation(kp, chosen))
    pn = np.asarray(jax.random.permutation(kn, chosen))
    x_tr = np.concatenate([pos[pp[:train_num]], neg[pn[:train_num]]])
    y_tr = np.concatenate([np.ones(train_num), -np.ones(train_num)]).astype(np.float32)
    x_va = np.concatenate([pos[pp[train_num:]], neg[pn[train_num:]]])
    y_va = np.concatenate([np.ones(chosen - train_num), -np.ones(chosen - train_num)]).astype(np.float32)
    w, b = _svm_fit_jit(x_tr, y_tr, C=C, iters=iters)

    def acc(x, y):
        if len(y) == 0:
            return jnp.asarray(jnp.nan)
        return jnp.mean(jnp.where(jnp.asarray(x) @ w + b >= 0, 1.0, -1.0) == jnp.asarray(y))

    return Boundary(w / jnp.linalg.norm(w), acc(x_va, y_va), acc(x_tr, y_tr), w, b)


# ----------------------------------------------------------------------------- GANSpace
def _merge_moments(carry, x):
    """Chan et al. parallel update of (count, mean [d], M2 [d, d]) with a batch ``x [b, d]``."""
    count, mean, m2 = carry
    b = x.shape[0]
    bmean = jnp.mean(x, axis=0)
    xc = x - bmean
    bm2 = jnp.einsum("bi,bj->ij", xc, xc, precision=jax.lax.Precision.HIGHEST)
    total = count + b
    delta = bmean - mean
    mean = mean + delta * (b / total)
    m2 = m2 + bm2 + jnp.outer(delta, delta) * (count * b / total)
    return total, mean, m2


def pca_directions(samples_or_sampler: Array | Callable[[Array], Array], k: int, *, key: Array | None = None,
                   n_batches: int | None = None, ddof: int = 1) -> dict[str, Array]:
    """Exact PCA of latent samples (GANSpace ``--use_w`` on W), accumulated on device.

    ``samples_or_sampler`` is either samples ``[N, d]`` or a callable ``sample_w(key) -> [batch, d]``
    (e.g. a jitted mapping network) called on ``n_batches`` keys split from ``key`` inside one
    ``lax.scan`` (the ``[N, d]`` samples never exist at once). Mean and covariance are merged
    per batch (Chan's update, stable for W's large mean), then ``jnp.linalg.eigh``.

    Returns ``{'comp': [k, d]`` unit rows, descending variance (GANSpace ``lat_comp``; sign
    fixed so each row's largest-magnitude entry is positive), ``'stdev': [k]`` = sqrt of the
    eigenvalues = std of the samples' projections (``lat_stdev``), ``'mean': [d]``
    (``lat_mean``), ``'var_ratio': [k]`` (explained variance ratio)``}``.
    """
    if callable(samples_or_sampler):
        if n_batches is None or key is None:
            raise InputError("a sampler needs key= and n_batches=")
        keys = jax.random.split(key, n_batches)
        first = samples_or_sampler(keys[0])
        d = first.shape[-1]
        init = (jnp.asarray(0.0, jnp.float32), jnp.zeros(d, jnp.float32), jnp.zeros((d, d), jnp.float32))
        carry = _merge_moments(init, first.astype(jnp.float32))
        carry, _ = jax.lax.scan(lambda c, kk: (_merge_moments(c, samples_or_sampler(kk).astype(jnp.float32)), None),
                                carry, keys[1:])
    else:
        x = jnp.asarray(samples_or_sampler, jnp.float32)
        d = x.shape[-1]
        init = (jnp.asarray(0.0, jnp.float32), jnp.zeros(d, jnp.float32), jnp.zeros((d, d), jnp.float32))
        carry = _merge_moments(init, x.reshape(-1, d))
    count, mean, m2 = carry
    cov = m2 / (count - ddof)
    cov = 0.5 * (cov + cov.T)
    evals, evecs = jnp.linalg.eigh(cov)
    evals, evecs = evals[::-1], evecs[:, ::-1]
    comp = evecs.T[:k]
    sign = jnp.sign(comp[jnp.arange(comp.shape[0]), jnp.argmax(jnp.abs(comp), axis=1)])
    comp = comp * jnp.where(sign == 0, 1.0, sign)[:, None]
    evals = jnp.maximum(evals, 0.0)
    return {"comp": comp, "stdev": jnp.sqrt(evals[:k]), "mean": mean, "var_ratio": evals[:k] / jnp.sum(evals)}


def ganspace_edit(ws: Array, comp: Array, stdev: Array, i: int | Array, sigma: Array | float,
                  start: int | Array = 0, end: int | Array | None = None) -> Array:
    """GANSpace layer-wise edit ``w_l += sigma * stdev[i] * comp[i]`` for ``l`` in ``[start, end)``.

    ws ``[B, L, d]`` (W+; broadcast a W code first), comp ``[C, d]`` (or GANSpace's
    ``[C, 1, d]``), stdev ``[C]``, sigma scalar or ``[B]`` (in standard deviations). ``i``,
    ``start`` and ``end`` may be traced (the layer range is a mask, not a slice).
    """
    ws = jnp.asarray(ws)
    comp = jnp.asarray(comp).reshape(jnp.shape(comp)[0], -1)
    L = ws.shape[1]
    end = L if end is None else end
    layer = jnp.arange(L)
    mask = ((layer >= start) & (layer < end)).astype(ws.dtype)  # [L]
    sigma = jnp.asarray(sigma, ws.dtype)
    delta = (sigma * jnp.asarray(stdev, ws.dtype)[i])[..., None] * comp[i].astype(ws.dtype)  # [d] or [B, d]
    return ws + delta[..., None, :] * mask[:, None]


# ----------------------------------------------------------------------------- discovery (Voynov & Babenko)
def ortho_matrix(log_mat_half: Array) -> Array:
    """Orthogonal ``[K, K]`` matrix ``expm(L - L^T)`` (the ``ortho`` deformator; exact Padé expm)."""
    L = jnp.asarray(log_mat_half)
    return jax.scipy.linalg.expm(L - L.T)


def _fit_dim(x: Array, dim: int | None) -> Array:
    """Zero-pad or crop the last axis to ``dim`` (the reference deformator's output fit)."""
    if dim is None or x.shape[-1] == dim:
        return x
    if x.shape[-1] > dim:
        return x[..., :dim]
    return jnp.pad(x, [(0, 0)] * (x.ndim - 1) + [(0, dim - x.shape[-1])])


def directions(kind: str, params: dict[str, Any], latent_dim: int | None = None) -> Array:
    """The K discovered directions as rows ``[K, d]`` (the columns of the deformator matrix A).

    kind ``'ortho'``: params ``{'log_mat_half': [K, K]}``, A = expm(L - L^T);
    ``'linear'``: ``{'weight': [d, K]}`` (PyTorch ``linear.weight``), A = weight (the bias
    is a constant offset, see :func:`deformator_shift`);
    ``'proj'``: as linear with unit-norm columns.
    ``latent_dim`` zero-pads / crops each direction like the reference.
    """
    if kind == "ortho":
        A = ortho_matrix(params["log_mat_half"])
    elif kind in ("linear", "proj"):
        A = jnp.asarray(params["weight"])
        if kind == "proj":
            A = A / jnp.linalg.norm(A, axis=0, keepdims=True)
    else:
        raise InputError(f"unknown deformator kind {kind!r}; expected 'ortho', 'linear' or 'proj'")
    return _fit_dim(A.T, latent_dim)


def deformator_shift(kind: str, params: dict[str, Any], coords: Array, latent_dim: int | None = None) -> Array:
    """The reference deformator's output ``A(coords)``: coords ``[..., K]`` (e.g. ``eps * e_k``) -> ``[..., d]``.

    ``ortho``: ``coords @ expm(L - L^T)^T``; ``linear``: ``coords @ weight^T + bias``;
    ``proj``: the linear output rescaled to ``|coords|``. Then zero-pad / crop to ``latent_dim``.
    """
    coords = jnp.asarray(coords)
    if kind == "ortho":
        out = coords @ ortho_matrix(params["log_mat_half"]).T
    elif kind in ("linear", "proj"):
        out = coords @ jnp.asarray(params["weight"]).T
        if params.get("bias") is not None:
            out = out + jnp.asarray(params["bias"])
        if kind == "proj":
            norm = jnp.linalg.norm(out, axis=-1, keepdims=True)
            out = out * (jnp.linalg.norm(coords, axis=-1, keepdims=True) / jnp.where(norm > 0, norm, 1.0))
    else:
        raise InputError(f"unknown deformator kind {kind!r}; expected 'ortho', 'linear' or 'proj'")
    return _fit_dim(out, latent_dim)
