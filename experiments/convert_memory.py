#!/usr/bin/env python
"""Peak RSS of ``jaxedit convert stylegan2`` on an FFHQ-1024-sized NVIDIA pickle (no torch, no NVIDIA code).

Claim: converting a ~380 MB FFHQ-1024 NVIDIA ``.pkl`` peaks under 2x the file size in RSS. The opt-in
``--check-forward`` (two jitted 1024 px forward passes) is measured as its own row, outside the claim.

``--make PATH`` writes a synthetic stylegan2-ada-pytorch pickle (shared/notes/stylegan2-reference.md 1.1-1.4):
G, D and G_ema as ``torch_utils.persistence`` objects holding the ``nn.Module.__dict__``, every tensor a
``_rebuild_tensor_v2(_load_from_bytes(<legacy torch.save stream>), ...)``. G / G_ema are exactly config-f 1024 px
(182 tensors, 30,370,060 params + 2,797,104 buffer elements, train.py's ``_init_kwargs``), D the matching resnet
discriminator; seeded random float32, ~381 MB, written one tensor at a time by a pure-Python pickler that names
stand-ins as the torch / NVIDIA globals. A fresh interpreter without torch, torch_utils and dnnlib then checks it
with ``jaxedit.io.torchfile`` (names, shapes, init_kwargs, spot values; the spec at the nvidia_tiny32 config against
the real fixture's names and shapes in shared/fixtures/manifest.json).

``--measure PATH`` runs in fresh children, peak = max(``wait4`` ru_maxrss, VmRSS sampled every ``--interval`` s):
a baseline (``import jax, jaxedit.cli``), ``torchfile.load`` + ``module_state_dict``, the CLI, the CLI with
``--check-forward``, and (unless ``--no-phases``) the CLI in-process with its steps wrapped to log VmRSS / VmHWM at
their edges. CLI and phase runs repeat ``--repeats`` times, the worst is reported. Writes
``<out-dir>/<name>.{json,md}``.

    python experiments/convert_memory.py --make /tmp/x.pkl --measure /tmp/x.pkl --repeats 3 --delete
"""

from __future__ import annotations

import argparse
import collections
import datetime
import functools
import importlib.metadata
import io
import json
import os
import pickle
import platform
import shutil
import struct
import subprocess
import sys
import tempfile
import time
import types
import zlib

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
MANIFEST = os.path.join(os.path.dirname(REPO), "shared", "fixtures", "manifest.json")
CLAIM_RATIO = 2.0
MiB = 1 << 20
# config-f FFHQ-1024 as stylegan2-ada-pytorch's train.py builds it; nvidia_tiny32 is the reference fixture
FFHQ1024 = dict(z_dim=512, w_dim=512, c_dim=0, img_resolution=1024, img_channels=3, map_layers=8,
                channel_base=32768, channel_max=512, num_fp16_res=4, conv_clamp=256, mbstd_group_size=4)
TINY32 = dict(FFHQ1024, z_dim=64, w_dim=64, img_resolution=32, map_layers=2, channel_base=1024, channel_max=64,
              num_fp16_res=2)
EXPECTED_G = dict(tensors=182, params=30_370_060, buffer_elems=2_797_104)


def log(*a):
    print(*a, file=sys.stderr, flush=True)


# ==================================================================== network spec (names, shapes, init)
# A module: class name, plain attributes, parameters / buffers (name, shape, init) and children, in nn.Module
# order. init: ("normal", mean, std) or ("filter",).

FILTER = ("filter",)


def N(std=1.0, mean=0.0):
    return ("normal", float(mean), float(std))


class Mod:
    def __init__(self, cls, *, attrs=None, params=(), buffers=(), modules=(), init_args=(), init_kwargs=None):
        self.cls, self.attrs = cls, dict(attrs or {})
        self.params, self.buffers, self.modules = list(params), list(buffers), list(modules)
        self.init_args, self.init_kwargs = init_args, dict(init_kwargs or {})

    def tensors(self, prefix=""):
        """(name, shape, init, is_param) in state_dict order."""
        yield from ((prefix + n, s, i, True) for n, s, i in self.params)
        yield from ((prefix + n, s, i, False) for n, s, i in self.buffers)
        for n, m in self.modules:
            yield from m.tensors(f"{prefix}{n}.")

    def counts(self):
        ts = list(self.tensors())
        return dict(tensors=len(ts), params=sum(_numel(s) for _, s, _, p in ts if p),
                    buffer_elems=sum(_numel(s) for _, s, _, p in ts if not p))


class EZ(dict):
    """A dict that is a ``dnnlib.util.EasyDict`` in the file."""


def _numel(shape):
    n = 1
    for s in shape:
        n *= s
    return n


def _sqrt(x):  # numpy float64, as ``np.sqrt(...)`` leaves these attributes in the real modules
    import numpy as np
    return np.float64(np.sqrt(x))


def fc_layer(in_f, out_f, *, bias_init=0.0, lr=1.0, activation="linear"):
    kw = {k: v for k, v, default in (("activation", activation, "linear"), ("lr_multiplier", lr, 1.0),
                                     ("bias_init", bias_init, 0.0)) if v != default}
    return Mod("FullyConnectedLayer", attrs=dict(activation=activation, weight_gain=lr / _sqrt(in_f), bias_gain=lr),
               params=[("weight", [out_f, in_f], N(1.0 / lr)), ("bias", [out_f], N(0.1, bias_init))],
               init_args=(in_f, out_f), init_kwargs=kw)


def synthesis_layer(cin, cout, w_dim, res, up, conv_clamp):
    return Mod("SynthesisLayer",
               attrs=dict(resolution=res, up=up, use_noise=True, activation="lrelu", conv_clamp=conv_clamp,
                          padding=1, act_gain=_sqrt(2)),
               params=[("weight", [cout, cin, 3, 3], N()), ("noise_strength", [], N(0.02)), ("bias", [cout], N(0.1))],
               buffers=[("resample_filter", [4, 4], FILTER), ("noise_const", [res, res], N())],
               modules=[("affine", fc_layer(w_dim, cin, bias_init=1))], init_args=(cin, cout),
               init_kwargs=dict(w_dim=w_dim, resolution=res, **({"up": up} if up != 1 else {}), conv_clamp=conv_clamp,
                                channels_last=False))


def torgb_layer(cin, cout, w_dim, conv_clamp):
    return Mod("ToRGBLayer", attrs=dict(conv_clamp=conv_clamp, weight_gain=1 / _sqrt(cin)),
               params=[("weight", [cout, cin, 1, 1], N()), ("bias", [cout], N(0.1))],
               modules=[("affine", fc_layer(w_dim, cin, bias_init=1))],
               init_args=(cin, cout), init_kwargs=dict(w_dim=w_dim, conv_clamp=conv_clamp, channels_last=False))


def generator_spec(c: dict) -> Mod:
    """stylegan2-ada-pytorch training/networks.py Generator (skip architecture, c_dim 0)."""
    R, w_dim, clamp = c["img_resolution"], c["w_dim"], c["conv_clamp"]
    log2 = R.bit_length() - 1
    res_list = [2 ** i for i in range(2, log2 + 1)]
    ch = {r: min(c["channel_base"] // r, c["channel_max"]) for r in res_list}
    fp16_res = max(2 ** (log2 + 1 - c["num_fp16_res"]), 8)
    blocks, num_ws = [], 0
    for r in res_list:
        cin, cout, is_last = (ch[r // 2] if r > 4 else 0), ch[r], r == R
        mods = [("conv0", synthesis_layer(cin, cout, w_dim, r, 2, clamp))] if cin else []
        mods += [("conv1", synthesis_layer(cout, cout, w_dim, r, 1, clamp)),
                 ("torgb", torgb_layer(cout, c["img_channels"], w_dim, clamp))]
        num_conv = 2 if cin else 1
        blocks.append((f"b{r}", Mod(
            "SynthesisBlock",
            attrs=dict(in_channels=cin, w_dim=w_dim, resolution=r, img_channels=c["img_channels"], is_last=is_last,
                       architecture="skip", use_fp16=r >= fp16_res, channels_last=False, num_conv=num_conv,
                       num_torgb=1),
            params=[] if cin else [("const", [cout, 4, 4], N())],
            buffers=[("resample_filter", [4, 4], FILTER)], modules=mods, init_args=(cin, cout),
            init_kwargs=dict(w_dim=w_dim, resolution=r, img_channels=c["img_channels"], is_last=is_last,
                             use_fp16=r >= fp16_res, conv_clamp=clamp))))
        num_ws += num_conv + (1 if is_last else 0)
    syn_kwargs = EZ(channel_base=c["channel_base"], channel_max=c["channel_max"], num_fp16_res=c["num_fp16_res"],
                    conv_clamp=clamp)
    synthesis = Mod("SynthesisNetwork",
                    attrs=dict(w_dim=w_dim, img_resolution=R, img_resolution_log2=log2, img_channels=c["img_channels"],
                               block_resolutions=res_list, num_fp16_res=c["num_fp16_res"], num_ws=num_ws),
                    modules=blocks,
                    init_kwargs=dict(w_dim=w_dim, img_resolution=R, img_channels=c["img_channels"], **syn_kwargs))
    features = [c["z_dim"]] + [w_dim] * c["map_layers"]
    mapping = Mod("MappingNetwork",
                  attrs=dict(z_dim=c["z_dim"], c_dim=c["c_dim"], w_dim=w_dim, num_ws=num_ws,
                             num_layers=c["map_layers"], w_avg_beta=0.995),
                  buffers=[("w_avg", [w_dim], N(0.5))],
                  modules=[(f"fc{i}", fc_layer(features[i], features[i + 1], lr=0.01, activation="lrelu"))
                           for i in range(c["map_layers"])],
                  init_kwargs=dict(z_dim=c["z_dim"], c_dim=c["c_dim"], w_dim=w_dim, num_ws=num_ws,
                                   num_layers=c["map_layers"]))
    # _init_kwargs = copy.deepcopy(kwargs) of the constructor call: a plain dict holding train.py's EasyDicts
    init_kwargs = dict(z_dim=c["z_dim"], w_dim=w_dim, mapping_kwargs=EZ(num_layers=c["map_layers"]),
                       synthesis_kwargs=syn_kwargs, c_dim=c["c_dim"], img_resolution=R, img_channels=c["img_channels"])
    return Mod("Generator", attrs=dict(z_dim=c["z_dim"], c_dim=c["c_dim"], w_dim=w_dim, img_resolution=R,
                                       img_channels=c["img_channels"], num_ws=num_ws),
               modules=[("synthesis", synthesis), ("mapping", mapping)], init_kwargs=init_kwargs)


def conv2d_layer(cin, cout, k, *, bias=True, down=1, activation="linear", conv_clamp=None):
    return Mod("Conv2dLayer",
               attrs=dict(activation=activation, up=1, down=down, conv_clamp=conv_clamp, padding=k // 2,
                          weight_gain=1 / _sqrt(cin * k * k), act_gain=_sqrt(2) if activation == "lrelu" else 1.0),
               params=[("weight", [cout, cin, k, k], N())] + ([("bias", [cout], N(0.1))] if bias else []),
               buffers=[("resample_filter", [4, 4], FILTER)], init_args=(cin, cout),
               init_kwargs=dict(kernel_size=k, bias=bias, down=down, activation=activation, conv_clamp=conv_clamp))


def discriminator_spec(c: dict) -> Mod:
    """stylegan2-ada-pytorch Discriminator, resnet architecture (the default), c_dim 0."""
    R, clamp, img_ch = c["img_resolution"], c["conv_clamp"], c["img_channels"]
    log2 = R.bit_length() - 1
    res_list = [2 ** i for i in range(log2, 2, -1)]
    ch = {r: min(c["channel_base"] // r, c["channel_max"]) for r in res_list + [4]}
    fp16_res = max(2 ** (log2 + 1 - c["num_fp16_res"]), 8)
    blocks = []
    for r in res_list:
        cin, tmp, out = (ch[r] if r < R else 0), ch[r], ch[r // 2]
        mods = [] if cin else [("fromrgb", conv2d_layer(img_ch, tmp, 1, activation="lrelu", conv_clamp=clamp))]
        mods += [("conv0", conv2d_layer(tmp, tmp, 3, activation="lrelu", conv_clamp=clamp)),
                 ("conv1", conv2d_layer(tmp, out, 3, down=2, activation="lrelu", conv_clamp=clamp)),
                 ("skip", conv2d_layer(tmp, out, 1, bias=False, down=2))]
        blocks.append((f"b{r}", Mod(
            "DiscriminatorBlock", attrs=dict(in_channels=cin, resolution=r, img_channels=img_ch, architecture="resnet",
                                             use_fp16=r >= fp16_res, channels_last=False),
            buffers=[("resample_filter", [4, 4], FILTER)], modules=mods, init_args=(cin, tmp, out),
            init_kwargs=dict(resolution=r, img_channels=img_ch, use_fp16=r >= fp16_res, conv_clamp=clamp))))
    C4, gs = ch[4], c["mbstd_group_size"]
    blocks.append(("b4", Mod(
        "DiscriminatorEpilogue",
        attrs=dict(in_channels=C4, cmap_dim=0, resolution=4, img_channels=img_ch, architecture="resnet"),
        modules=[("mbstd", Mod("MinibatchStdLayer", attrs=dict(group_size=gs, num_channels=1),
                               init_kwargs=dict(group_size=gs, num_channels=1))),
                 ("conv", conv2d_layer(C4 + 1, C4, 3, activation="lrelu", conv_clamp=clamp)),
                 ("fc", fc_layer(C4 * 16, C4, activation="lrelu")), ("out", fc_layer(C4, 1))],
        init_args=(C4,), init_kwargs=dict(cmap_dim=0, resolution=4, img_channels=img_ch, mbstd_group_size=gs,
                                          conv_clamp=clamp))))
    init_kwargs = dict(c_dim=c["c_dim"], img_resolution=R, img_channels=img_ch, block_kwargs=EZ(),
                       mapping_kwargs=EZ(), epilogue_kwargs=EZ(mbstd_group_size=gs), channel_base=c["channel_base"],
                       channel_max=c["channel_max"], num_fp16_res=c["num_fp16_res"], conv_clamp=clamp)
    return Mod("Discriminator", attrs=dict(c_dim=c["c_dim"], img_resolution=R, img_resolution_log2=log2,
                                           img_channels=img_ch, block_resolutions=res_list),
               modules=blocks, init_kwargs=init_kwargs)


def tensor_values(seed: int, net: str, name: str, shape, init):
    """The float32 values written for ``net``/``name`` (regenerated by the checker)."""
    import numpy as np

    if init[0] == "filter":
        f = np.array([1, 3, 3, 1], np.float32)
        return (np.outer(f, f) / np.float32(64)).astype(np.float32).reshape(shape)
    _, mean, std = init
    a = np.random.default_rng([seed, zlib.crc32(f"{net}/{name}".encode())]).standard_normal(_numel(shape), np.float32)
    if std != 1.0:
        a *= np.float32(std)
    if mean:
        a += np.float32(mean)
    return a.reshape(shape)


# ==================================================================== the pickle writer

MODULE_SRC = ("# Placeholder for the source text of stylegan2-ada-pytorch training/networks.py.\n"
              "# jaxedit's synthetic test pickle: no NVIDIA code is included; readers must never run this.\n"
              + "#" * 79 + "\n") * 146  # ~37 KB, the size of the real embedded source
GLOBALS: dict[int, tuple[str, str]] = {}  # id(stand-in) -> the (module, name) it pickles as


def _global(module: str, name: str, obj=None):
    """Register ``obj`` (default: a new non-callable function) to pickle as the global ``module.name``."""
    if obj is None:
        def obj(*a, **k):
            raise RuntimeError(f"stand-in for {module}.{name}")
    GLOBALS[id(obj)] = (module, name)
    return obj


RECONSTRUCT = _global("torch_utils.persistence", "_reconstruct_persistent_obj")
REBUILD_PARAMETER = _global("torch._utils", "_rebuild_parameter")
REBUILD_TENSOR_V2 = _global("torch._utils", "_rebuild_tensor_v2")
LOAD_FROM_BYTES = _global("torch.storage", "_load_from_bytes")
EasyDict = _global("dnnlib.util", "EasyDict", type("EasyDict", (dict,), {}))  # NEWOBJ + SETITEMS, like the real one
FloatStorage = _global("torch", "FloatStorage", type("FloatStorage", (), {}))
LEGACY_MAGIC = 0x1950A86A20F9469CFC6C
SYS_INFO = dict(protocol_version=1001, little_endian=True, type_sizes=dict(short=2, int=4, long=4))


class Reduce:
    """Pickles as the call ``fn(*args)``."""

    def __init__(self, fn, *args):
        self.fn, self.args = fn, args

    def __reduce_ex__(self, proto):
        return self.fn, self.args


class StreamBytes:
    """The ``bytes`` argument of ``_load_from_bytes``: generated and written when pickled, never kept."""

    def __init__(self, seed, net, name, shape, init, key):
        self.seed, self.net, self.name, self.shape, self.init, self.key = seed, net, name, shape, init, key


class _Writer(pickle._Pickler):
    """Pure-Python pickler: stand-ins pickle as their registered globals; a ``StreamBytes`` is written as the
    bytes of a legacy ``torch.save`` stream of one float32 storage, and not kept (one tensor in memory at a time)."""

    dispatch = pickle._Pickler.dispatch.copy()
    streamed_bytes = 0

    def save_global(self, obj, name=None):
        if id(obj) not in GLOBALS:
            return super().save_global(obj, name)
        module, qual = GLOBALS[id(obj)]
        if self.proto >= 4:
            self.save(module)
            self.save(qual)
            self.write(pickle.STACK_GLOBAL)
        else:
            self.write(pickle.GLOBAL + module.encode() + b"\n" + qual.encode() + b"\n")
        self.memoize(obj)

    dispatch[types.FunctionType] = save_global

    def save_stream(self, obj: StreamBytes):
        import numpy as np

        data = np.ascontiguousarray(tensor_values(obj.seed, obj.net, obj.name, obj.shape, obj.init)).reshape(-1)
        self.save_bytes(b := legacy_stream_head(obj.key, data.size) + data.tobytes())
        idx, _ = self.memo.pop(id(b))  # keep the memo index, drop the reference to the data
        self.memo[("stream", idx)] = (idx, None)
        self.streamed_bytes += data.nbytes

    dispatch[StreamBytes] = save_stream


_STORAGE_TOKEN = object()


class _NestedWriter(_Writer):
    """torch's legacy ``_save``: the storage is persistent id ('storage', FloatStorage, key, 'cpu', numel, None)."""

    def __init__(self, file, pid):
        super().__init__(file, protocol=2)
        self._pid = pid

    def persistent_id(self, obj):
        return self._pid if obj is _STORAGE_TOKEN else None


def legacy_stream_head(key: str, numel: int) -> bytes:
    """A legacy ``torch.save`` stream of one float32 storage, up to and including its int64 element count."""
    b = io.BytesIO()
    for x in (LEGACY_MAGIC, 1001, SYS_INFO):
        b.write(pickle.dumps(x, protocol=2))
    _NestedWriter(b, ("storage", FloatStorage, key, "cpu", numel, None)).dump(_STORAGE_TOKEN)
    b.write(pickle.dumps([key], protocol=2))
    b.write(struct.pack("<q", numel))
    return b.getvalue()


def _plain(v):
    """Spec values -> objects to pickle (EZ -> the EasyDict stand-in)."""
    if isinstance(v, (dict, list, tuple)):
        items = v.items() if isinstance(v, dict) else v
        conv = [(k, _plain(x)) for k, x in items] if isinstance(v, dict) else [_plain(x) for x in items]
        return (EasyDict if isinstance(v, EZ) else dict if isinstance(v, dict) else type(v))(conv)
    return v


def to_pickle_obj(m: Mod, seed: int, net: str, prefix: str, keys) -> Reduce:
    OD = collections.OrderedDict

    def tensor(name, shape, init):
        stride = [_numel(shape[i + 1:]) for i in range(len(shape))]
        storage = Reduce(LOAD_FROM_BYTES, StreamBytes(seed, net, prefix + name, list(shape), init, str(next(keys))))
        return Reduce(REBUILD_TENSOR_V2, storage, 0, tuple(shape), tuple(stride), False, OD())

    # nn.Module.__dict__ as torch 2.x pickles it (plain dicts for _parameters/_buffers/_modules, as in the
    # reference fixture shared/fixtures/nvidia_tiny32.pkl; torch 1.x wrote OrderedDicts, which read the same)
    state = dict(training=False,
                 _parameters={n: Reduce(REBUILD_PARAMETER, tensor(n, s, i), False, OD()) for n, s, i in m.params},
                 _buffers={n: tensor(n, s, i) for n, s, i in m.buffers},
                 _non_persistent_buffers_set=set(),
                 _backward_pre_hooks=OD(), _backward_hooks=OD(), _is_full_backward_hook=None,
                 _forward_hooks=OD(), _forward_hooks_with_kwargs=OD(), _forward_hooks_always_called=OD(),
                 _forward_pre_hooks=OD(), _forward_pre_hooks_with_kwargs=OD(), _state_dict_hooks=OD(),
                 _state_dict_pre_hooks=OD(), _load_state_dict_pre_hooks=OD(), _load_state_dict_post_hooks=OD(),
                 _modules={n: to_pickle_obj(c, seed, net, f"{prefix}{n}.", keys) for n, c in m.modules})
    state.update(_plain(m.attrs), _init_args=_plain(m.init_args), _init_kwargs=_plain(m.init_kwargs))
    return Reduce(RECONSTRUCT, dict(type="class", version=6, module_src=MODULE_SRC, class_name=m.cls, state=state))


def _storage_keys():
    k = 94_376_254_562_304  # str(storage._cdata): a pointer-like number, as torch's legacy _save writes
    while True:
        yield k
        k += 4096 + 64 * (k % 7)


def worker_write(path: str, seed: str) -> dict:
    t0, keys, seed = time.perf_counter(), _storage_keys(), int(seed)
    g_spec = generator_spec(FFHQ1024)
    top = {"G": to_pickle_obj(g_spec, seed, "G", "", keys),
           "D": to_pickle_obj(discriminator_spec(FFHQ1024), seed, "D", "", keys),
           "G_ema": to_pickle_obj(g_spec, seed, "G_ema", "", keys), "augment_pipe": None, "training_set_kwargs": None}
    with open(path + ".partial", "wb", buffering=1 << 20) as f:
        w = _Writer(f, protocol=4)
        w.dump(top)
    os.replace(path + ".partial", path)
    return dict(bytes=os.path.getsize(path), tensor_bytes=w.streamed_bytes, seed=seed, write_s=time.perf_counter() - t0)


def worker_check(path: str, seed: str) -> dict:
    """Read the file with ``jaxedit.io.torchfile`` (torch, torch_utils, dnnlib unimportable) and compare to the spec."""
    for m in ("torch", "torch_utils", "dnnlib"):
        sys.modules[m] = None
    import numpy as np

    from jaxedit.io import torchfile as tf

    seed, t0 = int(seed), time.perf_counter()
    obj = tf.load(path)
    out, problems = dict(load_s=time.perf_counter() - t0), []
    if not isinstance(obj, dict) or list(obj) != ["G", "D", "G_ema", "augment_pipe", "training_set_kwargs"]:
        return dict(out, ok=False, problems=[f"top level: {type(obj).__name__}"])
    spot = ("mapping.fc0.weight", "mapping.w_avg", "synthesis.b4.const", "synthesis.b1024.conv1.weight",
            "synthesis.b64.conv0.noise_strength", "synthesis.b8.conv0.resample_filter", "b4.fc.weight",
            "b1024.fromrgb.weight")
    for net, spec in (("G", generator_spec(FFHQ1024)), ("G_ema", generator_spec(FFHQ1024)),
                      ("D", discriminator_spec(FFHQ1024))):
        po = obj[net]
        if not isinstance(po, tf.PersistentObject) or po.class_name != spec.cls:
            problems.append(f"{net}: {po!r}")
            continue
        sd = tf.module_state_dict(po)
        if {k: list(v.shape) for k, v in sd.items()} != {n: list(s) for n, s, _, _ in spec.tensors()}:
            problems.append(f"{net}: names / shapes differ from the spec")
        if any(v.dtype != np.float32 for v in sd.values()):
            problems.append(f"{net}: non-float32 tensors")
        problems += [f"{net}.{n}: values differ" for n, s, i, _ in spec.tensors()
                     if n in spot and not np.array_equal(sd[n], tensor_values(seed, net, n, s, i))]
        out[net] = dict(class_name=po.class_name, **spec.counts())
    if out.get("G_ema") != dict(class_name="Generator", **EXPECTED_G):
        problems.append(f"G_ema {out.get('G_ema')}, expected {EXPECTED_G}")
    out["G_ema_init_kwargs"] = kw = tf.init_kwargs(obj["G_ema"])
    if kw != json.loads(json.dumps(generator_spec(FFHQ1024).init_kwargs)):
        problems.append(f"G_ema init_kwargs {kw}")
    if not isinstance(obj["G_ema"].state["_init_kwargs"]["synthesis_kwargs"], tf.EasyDict):
        problems.append("synthesis_kwargs is not an EasyDict")
    out["tiny32_manifest_match"] = None
    if os.path.exists(MANIFEST):  # the spec builder against the real NVIDIA fixture's names and shapes
        with open(MANIFEST) as f:
            real = json.load(f)["nvidia_tiny32"]["G_ema_tensors"]
        out["tiny32_manifest_match"] = {n: list(s) for n, s, _, _ in generator_spec(TINY32).tensors()} == real
        if not out["tiny32_manifest_match"]:
            problems.append("spec at the nvidia_tiny32 config differs from the real fixture")
    return dict(out, problems=problems, ok=not problems)


# ==================================================================== measurement


def _status(pid="self") -> dict:
    """VmRSS / VmHWM in KiB from /proc/<pid>/status ({} once the process is gone or a zombie)."""
    try:
        with open(f"/proc/{pid}/status") as f:
            return {ln[:5]: int(ln.split()[1]) for ln in f if ln.startswith(("VmRSS:", "VmHWM:"))}
    except (FileNotFoundError, ProcessLookupError):
        return {}


def run_sampled(argv: list[str], interval: float, label: str) -> dict:
    """Run ``argv``, sampling its VmRSS every ``interval`` s; exact peak from wait4's ru_maxrss."""
    with tempfile.TemporaryFile() as out_f, tempfile.TemporaryFile() as err_f:
        t0 = time.monotonic()
        p = subprocess.Popen(argv, stdout=out_f, stderr=err_f, cwd=REPO)
        series = []  # (t, VmRSS KiB)
        while True:
            pid, status, ru = os.wait4(p.pid, os.WNOHANG)
            if pid == p.pid:
                break
            if "VmRSS" in (s := _status(p.pid)):
                series.append((time.monotonic() - t0, s["VmRSS"]))
            time.sleep(interval)
        wall, rc = time.monotonic() - t0, os.waitstatus_to_exitcode(status)
        out_f.seek(0)
        err_f.seek(0)
        stdout, stderr = out_f.read().decode(errors="replace"), err_f.read().decode(errors="replace")
    if rc:
        log(f"{label}: exit {rc}\n{stderr[-3000:]}")
    sampled = max((r for _, r in series), default=0) / 1024
    return dict(argv=argv, label=label, returncode=rc, wall_s=wall, samples=len(series), peak_rss_sampled_mib=sampled,
                ru_maxrss_mib=ru.ru_maxrss / 1024, peak_rss_mib=max(ru.ru_maxrss / 1024, sampled),
                stdout=stdout[-4000:], stderr=stderr[-4000:], t0_monotonic=t0, _series=series)


def run_worker(python: str, kind: str, args: list[str], interval: float) -> dict:
    """Run ``worker_<kind>(*args)`` of this script in a child; its JSON result is in ``run['out']``."""
    fd, out = tempfile.mkstemp(suffix=".json")
    os.close(fd)
    try:
        run = run_sampled([python, os.path.abspath(__file__), "--_worker", kind, *args, "--_out", out], interval, kind)
        with open(out) as f:
            run["out"] = json.load(f) if run["returncode"] == 0 else {}
        return run
    finally:
        os.unlink(out)


def worst_of(n: int, label: str, once) -> dict:
    """``once()`` n times; the run with the highest peak (a failed one first), with all peaks and walls."""
    runs = []
    for i in range(n):
        runs.append(r := once())
        log(f"  {label} {i + 1}/{n}: {r['peak_rss_mib']:.0f} MiB, {r['wall_s']:.1f} s, exit {r['returncode']}")
    worst = max(runs, key=lambda r: (r["returncode"] != 0, r["peak_rss_mib"]))
    return dict(worst, repeat_peaks_mib=[r["peak_rss_mib"] for r in runs], repeat_wall_s=[r["wall_s"] for r in runs])


def worker_loadonly(path: str) -> dict:
    from jaxedit.io import torchfile as tf

    sd = tf.module_state_dict(tf.load(path)["G_ema"])
    return dict(tensors=len(sd), rss_end_mib=_status()["VmRSS"] / 1024)


def worker_phases(src: str, dst: str) -> dict:
    """``jaxedit.cli.main(['convert', ...])`` in-process, its steps wrapped to record VmRSS / VmHWM at their edges.

    A step the code no longer has is listed in ``missing`` instead of failing the run.
    """
    marks, missing = [], []

    def mark(name, ev):
        s = _status()
        marks.append(dict(t=time.monotonic(), name=name, ev=ev, rss_kib=s["VmRSS"], hwm_kib=s["VmHWM"]))

    mark("imports", "start")
    from jaxedit.cli import convert as cli_convert
    from jaxedit.cli import main as cli_main
    from jaxedit.converters import stylegan2 as conv
    from jaxedit.io import checkpoint, files, torchfile
    mark("imports", "end")

    for owner, attr, label in (
            (conv, "convert", "converters.stylegan2.convert"), (torchfile, "load", "torchfile.load"),
            (conv, "from_nvidia", "from_nvidia (state dict -> params tree)"),
            (conv, "_check_params", "_check_params (StyleGAN2 shapes)"), (files, "sha256", "sha256 of the source"),
            (checkpoint, "save", "checkpoint.save (orbax)"),
            (cli_convert, "_release_free_memory", "_release_free_memory (malloc_trim)"),
            (cli_convert, "_verify_roundtrip", "_verify_roundtrip"),
            (checkpoint, "load", "reload: checkpoint.load")):
        if not callable(fn := getattr(owner, attr, None)):
            missing.append(f"{owner.__name__}.{attr}")
            continue

        def wrapped(*a, _fn=fn, _label=label, **k):
            mark(_label, "start")
            try:
                return _fn(*a, **k)
            finally:
                mark(_label, "end")
        setattr(owner, attr, functools.wraps(fn)(wrapped))
    mark("cli.main convert", "start")
    rc = cli_main.main(["convert", "stylegan2", src, dst, "--force"])
    mark("cli.main convert", "end")
    return dict(rc=rc, marks=marks, missing=missing)


def phase_table(marks: list[dict], series: list, t0_child: float) -> list[dict]:
    """Pair start/end marks into steps with RSS at both edges, sampled peak inside and HWM at the end."""
    rows, open_ = [], {}
    for i, m in enumerate(marks):
        if m["ev"] == "start":
            open_.setdefault(m["name"], []).append((i, m))
            continue
        i0, m0 = open_[m["name"]].pop()
        a, b = m0["t"] - t0_child, m["t"] - t0_child
        inside = [r for t, r in series if a <= t <= b] + [m0["rss_kib"], m["rss_kib"]]
        rows.append(dict(order=i0, name=m["name"], depth=sum(map(len, open_.values())), start_s=a, dur_s=b - a,
                         rss_start_mib=m0["rss_kib"] / 1024, rss_end_mib=m["rss_kib"] / 1024,
                         peak_sampled_mib=max(inside) / 1024, hwm_start_mib=m0["hwm_kib"] / 1024,
                         hwm_end_mib=m["hwm_kib"] / 1024))
    return sorted(rows, key=lambda r: r["order"])


# ==================================================================== report


def machine_info() -> dict:
    info = dict(date=datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
                python=platform.python_version(), platform=platform.platform(), cores=os.cpu_count(),
                malloc_env={k: os.environ.get(k) for k in ("MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_",
                                                           "MALLOC_ARENA_MAX")})
    info.update({pkg: importlib.metadata.version(pkg) for pkg in ("jax", "jaxlib", "orbax-checkpoint", "numpy")})
    with open("/proc/cpuinfo") as f:
        info["cpu_model"] = next((ln.split(":", 1)[1].strip() for ln in f if ln.startswith("model name")), None)
    with open("/proc/meminfo") as f:
        info["mem_total_gib"] = round(int(f.readline().split()[1]) / 2 ** 20, 1)
    git = functools.partial(subprocess.run, capture_output=True, text=True, cwd=REPO)
    dirty = git(["git", "status", "--porcelain", "--untracked-files=no"]).stdout.strip()
    info["jaxedit_commit"] = git(["git", "rev-parse", "--short", "HEAD"]).stdout.strip() + ("+dirty" if dirty else "")
    return info


ROWS = (("baseline", "baseline: `import jax, jaxedit.cli; jnp.zeros(1)`"),
        ("load_only", "`torchfile.load` + `module_state_dict(G_ema)`"),
        ("cli", "`jaxedit convert stylegan2 SRC DST --force` (the claim)"),
        ("cli_check_forward", "`... --check-forward` (opt-in forward check at 1024 px; not in the claim)"))


def markdown(d: dict) -> str:
    size, m, runs = d["file"]["bytes"], d["machine"], d["runs"]
    L = ["# jaxedit convert: peak memory on an FFHQ-1024-sized NVIDIA pickle", "",
         f"Synthetic stylegan2-ada-pytorch pickle (G, D, G_ema; config-f 1024 px; random float32 values; written "
         f"without torch by `experiments/convert_memory.py --make`), {size / 1e6:.1f} MB = {size / MiB:.1f} MiB. "
         f"Peak RSS = max(`ru_maxrss` from `wait4`, VmRSS sampled every {d['settings']['interval_s'] * 1000:.0f} ms). "
         f"Ratio = peak RSS / file size. Claim: the default conversion stays under {CLAIM_RATIO}x. Repeated rows: "
         f"worst of {d['settings']['repeats']} runs.",
         f"{m['date']}, {m.get('cpu_model')} x{m['cores']}, jax {m.get('jax')}, orbax {m.get('orbax-checkpoint')}, "
         f"jaxedit {m.get('jaxedit_commit')}; other processes share the machine (wall times are indicative).", "",
         "| run | peak RSS MiB | ratio to file | peak − baseline MiB | wall s | exit | peaks of all runs MiB |",
         "|---|---|---|---|---|---|---|"]
    for key, label in ROWS:
        r, base = runs[key], runs["baseline"]["peak_rss_mib"]
        L.append(f"| {label} | {r['peak_rss_mib']:.0f} | {r['peak_rss_mib'] * MiB / size:.2f} | "
                 f"{r['peak_rss_mib'] - base:+.0f} | {r['wall_s']:.1f} | {r['returncode']} | "
                 f"{', '.join(f'{x:.0f}' for x in r.get('repeat_peaks_mib', []))} |")
    res = d["result"]
    L += ["", f"**Claim (< {CLAIM_RATIO}x) {'holds' if res['holds'] else 'does NOT hold'}: {res['ratio']:.2f}x.** "
              f"With `--check-forward`: {res['check_forward_ratio']:.2f}x."]
    ph = d.get("phases")
    if ph and "error" in ph:
        L += ["", "## Phases: run failed", "", "```", ph["error"], "```"]
    elif ph:
        L += ["", f"## Phases of the default conversion (`jaxedit.cli.main` in-process, steps wrapped; worst run: "
                  f"peak {ph['peak_rss_mib']:.0f} MiB = {ph['peak_rss_mib'] * MiB / size:.2f}x)", "",
              "| step | start s | dur s | RSS start MiB | RSS end MiB | peak in step MiB | HWM at end MiB | "
              "sets new peak |", "|---|---|---|---|---|---|---|---|"]
        for r in ph["rows"]:
            L.append(f"| {'&nbsp;&nbsp;' * r['depth']}{'↳ ' if r['depth'] else ''}{r['name']} | {r['start_s']:.1f} | "
                     f"{r['dur_s']:.1f} | {r['rss_start_mib']:.0f} | {r['rss_end_mib']:.0f} | "
                     f"{r['peak_sampled_mib']:.0f} | {r['hwm_end_mib']:.0f} | "
                     f"{'yes' if r['hwm_end_mib'] > r['hwm_start_mib'] + 1 else ''} |")
        if ph["missing"]:
            L.append(f"\nNot wrapped (no longer in the code): {', '.join(ph['missing'])}")
    return "\n".join(L) + "\n"


# ==================================================================== main


def make(python: str, path: str, seed: int) -> dict | None:
    log(f"writing {path} ...")
    run = run_worker(python, "write", [path, str(seed)], 0.1)
    if run["returncode"]:
        return None
    w = run["out"]
    log(f"  {w['bytes']:,} bytes ({w['bytes'] / 1e6:.1f} MB) in {w['write_s']:.1f} s; writer peak "
        f"{run['peak_rss_mib']:.0f} MiB")
    log("checking it with jaxedit.io.torchfile in a fresh interpreter (torch, torch_utils, dnnlib unimportable) ...")
    chk = run_worker(python, "check", [path, str(seed)], 0.1)["out"]
    if not chk.get("ok"):
        log(f"  CHECK FAILED: {chk.get('problems')}")
        return None
    log(f"  ok: G_ema {chk['G_ema']}, D {chk['D']}; init_kwargs {chk['G_ema_init_kwargs']}; spot values equal; "
        f"spec == real nvidia_tiny32 names/shapes: {chk['tiny32_manifest_match']}; load {chk['load_s']:.1f} s")
    return dict(write=w, writer_peak_rss_mib=run["peak_rss_mib"], check=chk)


def measure(args, path: str, make_info: dict | None) -> int:
    size, py, tmpdir = os.path.getsize(path), args.python, tempfile.mkdtemp(prefix="convert_memory-")
    jaxedit_bin = args.jaxedit or os.path.join(os.path.dirname(py), "jaxedit")
    dst, runs = args.dst or os.path.join(tmpdir, "ckpt"), {}
    log("baseline: import jax, jaxedit.cli ...")
    runs["baseline"] = run_sampled([py, "-c", "import jax, jaxedit.cli; jax.numpy.zeros(1)"], args.interval, "baseline")
    log("load only: torchfile.load + module_state_dict ...")
    runs["load_only"] = run_worker(py, "loadonly", [path], args.interval)
    for key, extra in (("cli", []), ("cli_check_forward", ["--check-forward"])):
        argv = [jaxedit_bin, "convert", "stylegan2", path, dst, "--force", *extra]
        log(" ".join(argv[1:]) + " ...")
        runs[key] = worst_of(args.repeats, key, lambda: run_sampled(argv, args.interval, key))
    phases = None
    if not args.no_phases:
        log("phases: the conversion in-process (jaxedit.cli.main), steps wrapped ...")
        ph = worst_of(args.repeats, "phases", lambda: run_worker(py, "phases", [path, dst], args.interval))
        if ph["returncode"] or ph["out"].get("rc"):
            phases = dict(error=ph["stderr"][-2000:])
        else:
            phases = dict(peak_rss_mib=ph["peak_rss_mib"], repeat_peaks_mib=ph["repeat_peaks_mib"],
                          rows=phase_table(ph["out"]["marks"], ph["_series"], ph["t0_monotonic"]),
                          missing=ph["out"]["missing"])
    for r in runs.values():
        r.pop("_series")
    cli, fwd = runs["cli"], runs["cli_check_forward"]
    data = dict(claim=f"peak RSS of `jaxedit convert stylegan2` (default, no --check-forward) < {CLAIM_RATIO} x file "
                      f"size", machine=machine_info(),
                settings=dict(interval_s=args.interval, repeats=args.repeats, seed=args.seed, python=py,
                              jaxedit=jaxedit_bin),
                file=dict(path=path, bytes=size, mb=size / 1e6, mib=size / MiB), make=make_info, runs=runs,
                phases=phases,
                result=dict(peak_rss_mib=cli["peak_rss_mib"], ratio=cli["peak_rss_mib"] * MiB / size,
                            holds=cli["returncode"] == 0 and cli["peak_rss_mib"] * MiB / size < CLAIM_RATIO,
                            check_forward_peak_rss_mib=fwd["peak_rss_mib"],
                            check_forward_ratio=fwd["peak_rss_mib"] * MiB / size,
                            baseline_mib=runs["baseline"]["peak_rss_mib"],
                            load_only_mib=runs["load_only"]["peak_rss_mib"]))
    os.makedirs(args.out_dir, exist_ok=True)
    with open(os.path.join(args.out_dir, args.name + ".json"), "w") as f:
        json.dump(data, f, indent=1, default=str)
    md = markdown(data)
    with open(os.path.join(args.out_dir, args.name + ".md"), "w") as f:
        f.write(md)
    print(md)
    shutil.rmtree(tmpdir, ignore_errors=True)
    return 0 if cli["returncode"] == fwd["returncode"] == 0 and not (phases or {}).get("error") else 1


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--make", metavar="PATH", help="write the synthetic FFHQ-1024 NVIDIA pickle here (and check it)")
    ap.add_argument("--measure", metavar="PATH", help="measure `jaxedit convert stylegan2 PATH ...`")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--dst", help="checkpoint directory for the conversion (default: a temp dir, removed)")
    ap.add_argument("--interval", type=float, default=0.02, help="RSS sampling interval, s")
    ap.add_argument("--repeats", type=int, default=3, help="runs of each CLI case and of the phase run; worst reported")
    ap.add_argument("--no-phases", action="store_true", help="skip the in-process per-step breakdown")
    ap.add_argument("--delete", action="store_true", help="delete the pickle at the end")
    ap.add_argument("--python", default=sys.executable, help="python of the jaxedit venv")
    ap.add_argument("--jaxedit", help="the jaxedit console script (default: next to --python)")
    ap.add_argument("--out-dir", default=os.path.join(HERE, "results"))
    ap.add_argument("--name", default="convert_memory", help="output file stem")
    ap.add_argument("--_worker", nargs="+", help=argparse.SUPPRESS)
    ap.add_argument("--_out", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args._worker:
        kind, *rest = args._worker
        res = dict(write=worker_write, check=worker_check, loadonly=worker_loadonly, phases=worker_phases)[kind](*rest)
        with open(args._out, "w") as f:
            json.dump(res, f, default=str)
        return res.get("rc", 0)
    if not (args.make or args.measure):
        ap.error("give --make PATH and/or --measure PATH")
    make_info = rc = None
    if args.make and (make_info := make(args.python, os.path.abspath(args.make), args.seed)) is None:
        return 1
    if args.measure:
        rc = measure(args, os.path.abspath(args.measure), make_info)
    if args.delete:
        os.unlink(os.path.abspath(args.measure or args.make))
    return rc or 0


if __name__ == "__main__":
    sys.exit(main())
