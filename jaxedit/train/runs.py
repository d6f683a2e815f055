"""The one run manager of every trainer (``train-gan``, ``discover``, ``train-clip``, ``train-probe``).

A run folder holds ``config.json`` (the trainer's config), ``checkpoints/`` (an orbax
``CheckpointManager``: each save is written to a temporary folder and renamed once complete, so
only complete checkpoints count; the last ``keep`` are kept), ``log.jsonl`` (one JSON row per log
interval: step, time, rate, mean metrics) and the trainer's own outputs::

    cfg = runs.resolve(run_dir, cfg, MyConfig.from_dict, mutable={"steps", "ckpt_every"})  # writes nothing
    trainer = MyTrainer(cfg)                      # may still fail: no folder is left behind
    with runs.Run(run_dir, cfg, desc="my-trainer") as run:   # writes config.json
        state, start = run.restore(trainer.abstract_state())   # (None, 0) for a new run
        state = trainer.init_state() if state is None else state
        state, summary = run.loop(state, trainer.step, start=start, total=cfg.steps, ckpt_every=cfg.ckpt_every)

Resume rules: the same command resumes from the last complete checkpoint; fields in ``mutable``
(the run's length, its intervals) may change, and the stored config is updated; any other change
is a :class:`~jaxedit.errors.ConfigError` naming the field with its old and new value.

Signals: during :meth:`Run.loop`, SIGINT or SIGTERM finishes the current step, saves it and waits
for the write, then raises ``KeyboardInterrupt`` (SIGINT: the CLI exits 130) or
``SystemExit(143)`` (SIGTERM). A second signal aborts at once (the last complete checkpoint stays).
"""

from __future__ import annotations

import dataclasses
import json
import math
import sys
import time
from collections.abc import Callable, Collection, Iterable
from pathlib import Path
from typing import IO, Any, TypeVar

import jax
import numpy as np
import orbax.checkpoint as ocp

from jaxedit.errors import CheckpointError, ConfigError
from jaxedit.io import files
from jaxedit.io.progress import Progress
from jaxedit.io.signals import DeferredSignals

CONFIG_FILE = "config.json"
CKPT_DIR = "checkpoints"
LOG_FILE = "log.jsonl"

C = TypeVar("C")
State = Any
StepFn = Callable[[State, int], tuple[State, dict[str, Any]]]


# ------------------------------------------------------------------------------ config
def read_config(run_dir: str | Path, load: Callable[[dict], C]) -> C | None:
    """The config stored in ``run_dir`` (``load`` builds it from the JSON dict), or None."""
    path = Path(run_dir) / CONFIG_FILE
    if not path.is_file():
        return None
    return load(files.read_json(path, ConfigError))


def _diff(old: Any, new: Any, prefix: str = "") -> list[tuple[str, Any, Any]]:
    """``(dotted field, old, new)`` for every leaf that differs between two JSON dicts."""
    if isinstance(old, dict) and isinstance(new, dict):
        return [d for k in sorted(set(old) | set(new))
                for d in _diff(old.get(k), new.get(k), f"{prefix}{k}.")]
    return [] if old == new else [(prefix[:-1], old, new)]


def changes(stored: Any, config: Any) -> list[tuple[str, Any, Any]]:
    """``(field, old, new)`` of every field (dotted for nested configs) ``config`` changes."""
    return _diff(stored.to_dict(), config.to_dict())


def resolve(run_dir: str | Path, config: C | None, load: Callable[[dict], C], mutable: Collection[str]) -> C:
    """The run's config, checked against the stored one; writes nothing.

    ``config`` None resumes with the stored config. Otherwise a stored config may differ from
    ``config`` only in the top-level fields ``mutable``; any other difference is a ConfigError
    naming each changed field with its old and new value.
    """
    stored = read_config(run_dir, load)
    if config is None:
        if stored is None:
            raise ConfigError(f"{run_dir}: no {CONFIG_FILE} to resume from; give a config to start a new run")
        return stored
    if stored is not None:
        fixed = [f"{k} {a!r} -> {b!r}" for k, a, b in changes(stored, config) if k.split(".")[0] not in mutable]
        if fixed:
            raise ConfigError(f"{run_dir} was started with another config ({'; '.join(fixed)}); use a new run "
                              f"folder (may change on resume: {', '.join(sorted(mutable))})")
    return config


def resolve_with_horizon(run_dir: str | Path, config: C | None, load: Callable[[dict], C],
                         mutable: Collection[str]) -> C:
    """:func:`resolve` for configs with a learning-rate horizon ``decay_steps``: a config that leaves it None
    gets the stored run's horizon, or its own ``steps`` for a new run, so a larger ``steps`` extends a run
    without stretching its schedule."""
    if config is not None and config.decay_steps is None:
        stored = read_config(run_dir, load)
        config = dataclasses.replace(config, decay_steps=stored.decay_steps if stored else config.steps)
    return resolve(run_dir, config, load, mutable)


def default_run_dir(dst: str | Path) -> Path:
    """The run folder of a trainer that writes one checkpoint ``dst`` (``train-probe``, ``train-clip``)
    when none is given: ``DST.run`` beside it."""
    dst = Path(dst)
    return dst.with_name(dst.name + ".run")


def _write_json(path: Path, data: Any) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(data, indent=2) + "\n")
    tmp.replace(path)


# ------------------------------------------------------------------------------ checkpoints
def _manager(run_dir: Path, keep: int, read_only: bool = False) -> ocp.CheckpointManager:
    opts = ocp.CheckpointManagerOptions(max_to_keep=keep, create=not read_only, read_only=read_only,
                                        cleanup_tmp_directories=not read_only,
                                        enable_async_checkpointing=not read_only)
    return ocp.CheckpointManager((run_dir / CKPT_DIR).absolute(), options=opts, item_names=("state", "meta"))


def _restore(mngr: ocp.CheckpointManager, step: int, like: State) -> tuple[State, dict]:
    target = jax.tree.map(lambda s: np.zeros(s.shape, s.dtype), like)
    out = mngr.restore(step, args=ocp.args.Composite(state=ocp.args.StandardRestore(target),
                                                     meta=ocp.args.JsonRestore()))
    return out["state"], out["meta"]


def load_checkpoint(run_dir: str | Path, like: State, step: int | None = None) -> tuple[State, dict, int]:
    """-> ``(state, meta, step)`` of a run's latest (or given) complete checkpoint, as numpy arrays.

    ``like``: a pytree of arrays or ``jax.ShapeDtypeStruct`` with the state's structure."""
    run_dir = Path(run_dir)
    mngr = _manager(run_dir, keep=1, read_only=True)
    try:
        step = mngr.latest_step() if step is None else step
        if step is None or step not in mngr.all_steps():
            raise CheckpointError(f"{run_dir / CKPT_DIR}: no complete checkpoint"
                                  + ("" if step is None else f" at step {step}"))
        state, meta = _restore(mngr, step, like)
    finally:
        mngr.close()
    return state, meta, step


# ------------------------------------------------------------------------------ the run
class Run:
    """An open run folder: config written, checkpoint manager, log, progress and the training loop.

    ``unit``/``scale``: progress and log are shown in ``unit`` = ``step * scale`` (e.g. kimg).
    ``keep``: complete checkpoints kept. ``progress=False`` silences the progress lines.
    """

    def __init__(self, run_dir: str | Path, config: Any, *, desc: str, unit: str = "step", scale: float = 1.0,
                 keep: int = 2, progress: bool = True, stream: IO[str] | None = None):
        self.dir = Path(run_dir)
        self.config, self.desc, self.unit, self.scale = config, desc, unit, scale
        self.progress = progress
        self.stream = stream if stream is not None else sys.stderr
        stored = read_config(self.dir, type(config).from_dict)
        if stored is None or stored != config:
            if stored is not None:
                self.print("stored config updated: " + ", ".join(f"{k} {a!r} -> {b!r}"
                                                                   for k, a, b in changes(stored, config)))
            self.dir.mkdir(parents=True, exist_ok=True)
            _write_json(self.dir / CONFIG_FILE, config.to_dict())
        self.mngr = _manager(self.dir, keep)

    def __enter__(self) -> Run:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        """Wait for the pending checkpoint write and release the manager."""
        self.mngr.wait_until_finished()
        self.mngr.close()

    def print(self, message: str) -> None:
        print(f"{self.desc}: {message}", file=self.stream, flush=True)

    # -------------------------------------------------------------- checkpoints
    def resume(self, init: Callable[[], State]) -> tuple[State, int]:
        """-> ``(state, step)``: the latest complete checkpoint (shaped like ``init()``), or ``init()`` at 0."""
        state, start = self.restore(jax.eval_shape(init))
        return (init() if state is None else state), start

    def restore(self, like: State) -> tuple[State | None, int]:
        """-> ``(numpy state, step)`` of the latest complete checkpoint, or ``(None, 0)`` for a new run."""
        step = self.mngr.latest_step()
        if step is None:
            self.print(f"new run {self.dir}")
            return None, 0
        state, _ = _restore(self.mngr, step, like)
        self.print(f"resumed {self.dir} from step {step} (its last complete checkpoint)")
        return state, step

    def save(self, step: int, state: State, **meta: Any) -> None:
        """Write ``state`` at ``step`` (asynchronously; host copies, so the device buffers may be donated)."""
        host = jax.tree.map(lambda a: np.array(a, copy=True), state)
        meta = {"step": step, "time": time.time(), **meta}
        self.mngr.save(step, args=ocp.args.Composite(state=ocp.args.StandardSave(host),
                                                     meta=ocp.args.JsonSave(meta)), force=True)

    def log(self, step: int, **values: Any) -> None:
        """Append one row ``{step, time, **values}`` to ``log.jsonl``."""
        with open(self.dir / LOG_FILE, "a") as f:
            f.write(json.dumps({"step": step, "time": time.time(), **values}) + "\n")

    # -------------------------------------------------------------- the loop
    def loop(self, state: State, step_fn: StepFn, *, start: int, total: int, ckpt_every: int | None,
             log_every: int | None = None, log_seconds: float | None = None,
             programs: Callable[[int], Iterable[str]] | None = None,
             after_step: Callable[[int, State], None] | None = None,
             on_save: Callable[[int, State], None] | None = None,
             meta: Callable[[int], dict[str, Any]] | None = None,
             show: Collection[str] | None = None) -> tuple[State, dict[str, Any]]:
        """Run ``state, metrics = step_fn(state, i)`` for ``i`` in ``[start, total)``; -> (state, summary).

        The host keeps at most two steps in flight and fetches the metrics about once a second.
        A ``log.jsonl`` row (mean metrics since the last row) every ``log_every`` steps and/or
        ``log_seconds``, and at the end; a checkpoint every ``ckpt_every`` steps, at the end and on
        a signal (then ``KeyboardInterrupt`` / ``SystemExit(143)``, see the module doc).
        ``programs(i)``: names of the compiled programs step ``i`` runs; a step that runs a new one
        is timed as compile, not in the rate. ``after_step(i, state)`` runs after step ``i``
        (e.g. sample grids), ``on_save(i, state)`` after each save, ``meta(i)`` adds checkpoint metadata.
        """
        bar = Progress(total * self.scale, unit=self.unit, desc=self.desc, stream=self.stream,
                       interval=None if self.progress else math.inf, initial=start * self.scale)
        pending: list[dict[str, Any]] = []  # device metrics not fetched yet
        window: dict[str, list[float]] = {}  # fetched metrics for the next log row
        in_flight: list[Any] = []
        seen: set[str] = set()
        t_start = time.perf_counter()
        t_fetch = t_log = t_start
        compile_seconds = 0.0
        step, stopped = start, None

        def fetch() -> None:
            for m in jax.device_get(pending):
                for k, v in m.items():
                    window.setdefault(k, []).append(float(v))
            pending.clear()

        with DeferredSignals() as signals:
            while step < total:
                names = set(programs(step)) if programs else {"step"}
                t0 = time.perf_counter()
                state, metrics = step_fn(state, step)
                step += 1
                pending.append(metrics)
                if not names <= seen:  # a program ran for the first time: its compile is not in the rate
                    jax.block_until_ready(metrics)
                    seen |= names
                    compile_seconds += time.perf_counter() - t0
                    bar.restart_rate(step * self.scale)
                in_flight.append(metrics)
                if len(in_flight) > 2:
                    jax.block_until_ready(in_flight.pop(0))
                now, last = time.perf_counter(), step == total
                if now - t_fetch >= 1.0 or last:
                    fetch()
                    t_fetch = now
                    bar.update(step * self.scale, **{k: v[-1] for k, v in window.items() if show is None or k in show})
                if (log_every and step % log_every == 0) or (log_seconds and now - t_log >= log_seconds) or last:
                    fetch()
                    row = {k: float(np.mean(v)) for k, v in window.items()}
                    if self.unit != "step":
                        row[self.unit] = step * self.scale
                    rate = bar.rate()
                    self.log(step, **{f"{self.unit}_per_s": rate if math.isfinite(rate) else None}, **row)
                    window.clear()
                    t_log = now
                if after_step:
                    after_step(step, state)
                if (ckpt_every and step % ckpt_every == 0) or last or signals.requested:
                    self.save(step, state, **(meta(step) if meta else {}))
                    if on_save:
                        on_save(step, state)
                if signals.requested:
                    stopped = signals.requested
                    break
            bar.close()
            self.mngr.wait_until_finished()
        elapsed = time.perf_counter() - t_start
        if stopped is not None:
            self.print(f"{stopped.name}: saved step {step}; rerun the same command to resume")
            signals.raise_requested()
        rate = (step - start) * self.scale / max(elapsed - compile_seconds, 1e-9)
        summary = {"run_dir": str(self.dir), "start_step": start, "step": step, "seconds": round(elapsed, 1),
                   "compile_seconds": round(compile_seconds, 1), f"{self.unit}_per_s": rate}
        return state, summary
