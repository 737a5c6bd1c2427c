"""The training loop: resume or start, step, log, validate, keep the best, checkpoint.

Files of a run (``workdir``): ``config.json`` (the experiment), ``metrics.jsonl`` (one
JSON object per log line: ``{"step", "split": "train"|"val", ...}``), ``curves.png``,
``summary.json``, ``checkpoints/<step>/`` (orbax: the whole state, for resuming; the
latest only), ``best/<step>/`` (orbax: the variables with the best validation metric,
for export).
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable
from pathlib import Path

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from ..models import count_params
from ..stages import TASKS, task_metric
from ._batches import batch_indices, cached_rotation_average, load_split
from ._checkpoints import _abstract, _check_same_tree, _Checkpoints, _load_init, _put_replicated
from ._steps import _eval_key, _fresh_variables, init_state, make_eval_step, make_mesh, make_optimizer, make_train_step
from .config import _RESUMABLE_CHANGES, TrainConfig, resolve_pipeline

__all__ = ["train", "evaluate", "is_finished", "plot_curves"]


class _Data:
    """The clean patterns of one split and the global -> process-local batch slicing."""

    def __init__(self, cfg: TrainConfig, split: str, mesh: Mesh):
        s = load_split(cfg.data, split)
        clean, zero = s.clean, s.zero_angle
        if cfg.task == "ellipse" and cfg.data.rotation_average > 1:
            clean = cached_rotation_average(cfg.data, split, clean, zero)
        self.clean, self.zero, self.structures = clean, zero, s.structure
        self.n = clean.shape[0]
        self.sharding = NamedSharding(mesh, P("data"))
        self.per_item = cfg.group_size if cfg.task == "e2e" else 1
        n_dev = mesh.devices.size
        if (cfg.batch_size // self.per_item) % n_dev:
            what = "batch_size / group_size" if cfg.task == "e2e" else "batch_size"
            raise ValueError(f"{what} = {cfg.batch_size // self.per_item} is not a multiple of the {n_dev} devices")

    def _put(self, idx: np.ndarray) -> tuple[jax.Array, jax.Array]:
        # Each process reads only its own slice of the global batch.
        npr, pid = jax.process_count(), jax.process_index()
        per = len(idx) // npr
        mine = idx[pid * per : (pid + 1) * per]
        make = jax.make_array_from_process_local_data
        return make(self.sharding, self.clean[mine]), make(self.sharding, self.zero[mine])

    def train_batch(self, seed: int, step: int, batch: int):
        return self._put(batch_indices(seed, step, self.n, batch // self.per_item))

    def eval_batch(self, i: int, batch: int):
        b = batch // self.per_item
        return self._put(np.arange(i * b, (i + 1) * b) % self.n)


class _Log:
    """JSON lines, written by process 0 only."""

    def __init__(self, path: Path, primary: bool, resume_step: int | None):
        self.path, self.primary = path, primary
        if primary and path.exists() and resume_step is not None:
            # Drop what an interrupted run logged after its last checkpoint.
            keep = [ln for ln in path.read_text().splitlines() if ln.strip() and json.loads(ln)["step"] <= resume_step]
            path.write_text("".join(k + "\n" for k in keep))
        elif primary and resume_step is None:
            path.write_text("")

    def write(self, rec: dict) -> None:
        if self.primary:
            with open(self.path, "a") as f:
                f.write(json.dumps(rec) + "\n")


def _mean_metrics(ms: list[dict]) -> dict:
    host = jax.device_get(ms)
    return {k: float(np.mean([m[k] for m in host])) for k in host[0]}


def evaluate(eval_fn: Callable, state: dict, data: _Data, cfg: TrainConfig) -> dict:
    """Mean metrics over ``cfg.eval_batches`` fixed validation batches."""
    b = cfg.eval_batch_size or cfg.batch_size
    ms = []
    for i in range(cfg.eval_batches):
        clean, zero = data.eval_batch(i, b)
        ms.append(eval_fn(state["params"], state["extra"], clean, zero, _eval_key(cfg.seed, i)))
    return _mean_metrics(ms)


def _window_record(window: list, step: int, t_win: float, batch_size: int, first: bool) -> tuple[dict, dict, float]:
    """The mean metrics of the steps since ``t_win``, their record (those and the
    throughput; the first window's includes the compilation) and its seconds."""
    metrics = _mean_metrics(window)  # waits for the step: the timing is real
    dt = time.monotonic() - t_win
    n = len(window)
    rec = {"step": step, "split": "train", **metrics, "steps_per_s": n / dt, "samples_per_s": n * batch_size / dt}
    if first:
        rec["includes_compile"] = True
    return metrics, rec, dt


def _check_resumable(wd: Path, cfg: TrainConfig) -> None:
    """A run found in ``wd`` resumes only with the same settings (``_RESUMABLE_CHANGES`` aside)."""
    if not (wd / "config.json").exists():
        return
    old = json.loads((wd / "config.json").read_text())
    new = cfg.to_dict()
    diff = sorted(k for k in set(old) | set(new) if old.get(k) != new.get(k) and k not in _RESUMABLE_CHANGES)
    if diff:
        raise ValueError(
            f"{wd} holds a run with other settings ({', '.join(diff)}): resume it with the same config, or choose another --workdir"
        )


def _fresh_state(cfg: TrainConfig, tx, mesh: Mesh) -> dict:
    """The state of a new run, replicated over ``mesh``: initialised from ``cfg.seed``,
    the networks of ``cfg.init_from`` loaded over the fresh ones (same tree checked)."""
    repl = NamedSharding(mesh, P())
    key = jax.random.key(cfg.seed)
    if not cfg.init_from:
        return jax.jit(lambda: init_state(cfg, key, tx), out_shardings=repl)()
    fresh = jax.eval_shape(lambda: _fresh_variables(cfg, key))
    host = jax.device_get(jax.jit(lambda: _fresh_variables(cfg, key))())
    for net, path in cfg.init_from.items():
        if net in cfg.networks:
            host[net] = _load_init(path, net)
            _check_same_tree(net, host[net], fresh[net])
    variables = _put_replicated(host, mesh)
    return jax.jit(lambda v: init_state(cfg, key, tx, v), out_shardings=repl)(variables)


def _track_best(cfg: TrainConfig, step: int, state: dict, val: dict, meta: dict, best_ckpt, say: Callable) -> bool:
    """After a validation: keep the best networks (``best_ckpt``) and count the
    validations without improvement in ``meta``; True when patience has run out."""
    best = meta["best_val"]
    if best is None or val[cfg.best_metric] < best - cfg.min_delta:
        meta.update(best_val=val[cfg.best_metric], best_step=step, bad_evals=0, best_metrics=val)
        best_ckpt.save(step, {"params": state["params"], "extra": state["extra"]}, {"step": step, "val": val})
    else:
        meta["bad_evals"] = int(meta["bad_evals"]) + 1
    if cfg.patience is not None and meta["bad_evals"] >= cfg.patience:
        meta["stopped_early"] = True
        say(
            f"[{cfg.name}] early stop at step {step}: no improvement in {cfg.patience} validations "
            f"(best {meta['best_val']:.5g} at step {meta['best_step']})"
        )
        return True
    return False


def train(
    cfg: TrainConfig,
    workdir: str | os.PathLike,
    *,
    stop_at: int | None = None,
    time_limit: float | None = None,
    devices=None,
    log: Callable[[str], None] | None = print,
) -> dict:
    """Train (or resume) the experiment ``cfg`` in ``workdir``.

    Parameters
    ----------
    cfg : the experiment
    workdir : the run directory; a checkpoint found there is resumed (the config must
        match, see ``_RESUMABLE_CHANGES``)
    stop_at : checkpoint and return once this step is reached (chunked training)
    time_limit : seconds; checkpoint and return before this much wall time has passed
        (leave a margin for start-up and the final write)
    devices : devices of the data mesh (default: all)
    log : progress lines (None: silent)

    Returns
    -------
    The summary (also ``workdir/summary.json``): ``status`` ("finished", "early_stopped",
    "paused"), ``step``, ``best_step``, ``best_val``, last ``train`` and ``val`` metrics.
    """
    t_start = time.monotonic()
    say = (lambda s: log(s)) if (log and jax.process_index() == 0) else (lambda s: None)
    wd = Path(workdir)
    primary = jax.process_index() == 0
    pcfg = resolve_pipeline(cfg)
    mesh = make_mesh(devices)
    tx, sched = make_optimizer(cfg)
    if primary:
        wd.mkdir(parents=True, exist_ok=True)
    ckpts = _Checkpoints(wd / "checkpoints", keep=1, file_size=cfg.checkpoint_file_size)
    best_ckpt = _Checkpoints(wd / "best", keep=1, file_size=cfg.checkpoint_file_size)
    resume = ckpts.latest_step()

    if resume is not None:
        _check_resumable(wd, cfg)
    if primary:
        (wd / "config.json").write_text(json.dumps(cfg.to_dict(), indent=2))

    train_data = _Data(cfg, "train", mesh)
    val_data = _Data(cfg, "val", mesh)
    say(
        f"[{cfg.name}] task {cfg.task}: {train_data.n} train / {val_data.n} val patterns, "
        f"{jax.device_count()} device(s) ({jax.process_count()} process(es)), compute {pcfg.compute_dtype}"
    )

    if resume is not None:
        abstract = jax.eval_shape(lambda: init_state(cfg, jax.random.key(cfg.seed), tx))
        state, meta = ckpts.restore(resume, _abstract(abstract, mesh))
        say(f"[{cfg.name}] resumed at step {resume}")
    else:
        state = _fresh_state(cfg, tx, mesh)
        meta = {"best_val": None, "best_step": None, "bad_evals": 0, "elapsed_s": 0.0}
    n_params = {k: count_params(v) for k, v in state["params"].items()}
    say(f"[{cfg.name}] trained parameters: {n_params}")

    step_fn = make_train_step(cfg, tx, sched, mesh, pcfg)
    eval_fn = make_eval_step(cfg, mesh, pcfg)
    logf = _Log(wd / "metrics.jsonl", primary, resume)
    start = int(resume or 0)
    end = cfg.steps if stop_at is None else min(cfg.steps, int(stop_at))
    if meta.get("stopped_early"):
        end = start
    prior = float(meta.get("elapsed_s", 0.0))
    window: list = []
    t_win, n_win, first_window = time.monotonic(), 0, True
    step_time: float | None = None  # seconds per step, measured after the compilation
    last_train: dict = {}
    last_val: dict = {}
    step = start

    def save(step_now: int) -> None:
        meta["elapsed_s"] = prior + time.monotonic() - t_start
        ckpts.save(step_now, state, meta)

    while step < end:
        if time_limit is not None and step_time is not None:
            if time.monotonic() - t_start + 5 * step_time + 15.0 > time_limit:
                say(f"[{cfg.name}] time limit: pausing at step {step}")
                break
        clean, zero = train_data.train_batch(cfg.seed, step, cfg.batch_size)
        state, m = step_fn(state, clean, zero)
        step += 1
        window.append(m)
        n_win += 1
        if step % cfg.log_every == 0 or step == end:
            last_train, rec, dt = _window_record(window, step, t_win, cfg.batch_size, first_window)
            step_time = step_time if first_window else dt / n_win
            logf.write(rec)
            window, t_win, n_win, first_window = [], time.monotonic(), 0, False
        if cfg.eval_batches > 0 and (step % cfg.eval_every == 0 or step == cfg.steps):
            last_val = evaluate(eval_fn, state, val_data, cfg)
            logf.write({"step": step, "split": "val", **last_val})
            say(
                f"[{cfg.name}] step {step}: train loss {last_train.get('loss', float('nan')):.5g}; val "
                + ", ".join(f"{k} {v:.4g}" for k, v in last_val.items())
            )
            if _track_best(cfg, step, state, last_val, meta, best_ckpt, say):
                break
            t_win = time.monotonic()  # evaluation stays out of the throughput
        if step % cfg.checkpoint_every == 0 and step < end:
            save(step)
    status = "early_stopped" if meta.get("stopped_early") else ("finished" if step >= cfg.steps else "paused")
    if step != start or resume is None:
        save(step)
    ckpts.wait()
    best_ckpt.wait()
    ckpts.close()
    best_ckpt.close()
    summary = {
        "name": cfg.name,
        "task": cfg.task,
        "status": status,
        "step": step,
        "steps": cfg.steps,
        "best_step": meta.get("best_step"),
        "best_val": meta.get("best_val"),
        "best_metrics": meta.get("best_metrics"),
        "train": last_train,
        "val": last_val,
        "elapsed_s": prior + time.monotonic() - t_start,
        "trained_params": n_params,
        "devices": jax.device_count(),
        "processes": jax.process_count(),
        "compute_dtype": pcfg.compute_dtype,
    }
    return _finish(wd, cfg, summary, primary, say)


def _finish(wd: Path, cfg: TrainConfig, summary: dict, primary: bool, say: Callable) -> dict:
    """Write ``summary.json`` and the curves (process 0), say how the call ended."""
    old_summary = json.loads((wd / "summary.json").read_text()) if (wd / "summary.json").exists() else {}
    # A call with nothing left to do keeps the last metrics it finds.
    summary["train"] = summary["train"] or old_summary.get("train", {})
    summary["val"] = summary["val"] or old_summary.get("val", {})
    if primary:
        (wd / "summary.json").write_text(json.dumps(summary, indent=2))
        try:
            plot_curves(wd)
        except Exception as err:  # a plot must never lose a run
            say(f"[{cfg.name}] no plot: {err}")
    say(f"[{cfg.name}] {summary['status']} at step {summary['step']} ({summary['elapsed_s']:.1f} s)")
    return summary


def is_finished(workdir: str | os.PathLike) -> bool:
    """True when the run in ``workdir`` finished or stopped early (chunked scripts poll this)."""
    p = Path(workdir) / "summary.json"
    return p.exists() and json.loads(p.read_text())["status"] in ("finished", "early_stopped")


def plot_curves(workdir: str | os.PathLike, out: str | os.PathLike | None = None) -> Path:
    """``curves.png``: training and validation loss, the task metric, and the learning rate."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    wd = Path(workdir)
    recs = [json.loads(ln) for ln in (wd / "metrics.jsonl").read_text().splitlines() if ln.strip()]
    tr = [r for r in recs if r["split"] == "train"]
    va = [r for r in recs if r["split"] == "val"]
    task = json.loads((wd / "config.json").read_text())["task"] if (wd / "config.json").exists() else None
    metric = task_metric(task) if task in TASKS else None
    if not tr or metric not in tr[0]:
        metric = None
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.6))
    for recs_, lab in ((tr, "train"), (va, "val")):
        if recs_:
            axes[0].plot([r["step"] for r in recs_], [r["loss"] for r in recs_], label=lab, marker="o" if lab == "val" else None, ms=3)
            if metric:
                axes[1].plot([r["step"] for r in recs_], [r[metric] for r in recs_], label=lab, marker="o" if lab == "val" else None, ms=3)
    axes[0].set_yscale("log")
    axes[0].set_title("loss")
    axes[1].set_title(metric or "")
    if metric in ("center_err", "residual_ratio", "image_rmse"):
        axes[1].set_yscale("log")
    if tr:
        axes[2].plot([r["step"] for r in tr], [r["lr"] for r in tr])
    axes[2].set_title("learning rate")
    for a in axes:
        a.set_xlabel("step")
        a.grid(alpha=0.3)
    axes[0].legend()
    fig.suptitle(wd.name)
    fig.tight_layout()
    out = Path(out) if out else wd / "curves.png"
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out
