"""A release recipe: from nothing to shipped, evaluated weights, in resumable chunks.

One command (``prenet-jax train release``) runs the stages in order, each resumable:

1. ``simulate``: the abTEM training set (:func:`prenet_jax.data.run_simulation`, shard by
   shard);
2. ``denoiser``, ``center``, ``ellipse``: each network on its own loss
   (:func:`prenet_jax.training.train`, checkpoint by checkpoint);
3. ``e2e``: a short end-to-end fine-tune of the three, kept only if it lowers the
   held-out end-to-end error of the separately trained networks;
4. ``evalset``: the held-out test set (test-split structures, abTEM);
5. ``evaluate``: the paper's tables for the shipped weights, beside the classical methods.

After every chunk of training the best networks so far are exported into the
package's weights directory whenever a network's best validation step changed: the
shipped weights always hold the best validated networks, and what was learned survives
the loss of the machine.

Every stage is a pure function of the recipe (its configs and seeds): the data are a
function of the simulation settings, training resumes bit for bit from its checkpoints,
so where the chunks fall does not change the result. ``time_limit`` bounds one call; a
call that runs out of time checkpoints and returns ``"paused"``; the same call again
continues.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import time
from collections.abc import Callable
from pathlib import Path

from .._util import atomic_write_text, call_from_file
from ..stages import E2E_TASK
from ..stages import STAGES as PIPELINE_STAGES
from ..training import TrainConfig, evaluate_e2e, export, load_run_variables, task_networks, train

__all__ = ["Recipe", "run_recipe", "load_recipe", "STAGES"]

#: The recipe's stages in order: the simulation, one per training task, the held-out set
#: and its evaluation.
NETWORK_STAGES = tuple(s.task for s in PIPELINE_STAGES)
STAGES = ("simulate", *NETWORK_STAGES, E2E_TASK, "evalset", "evaluate")


@dataclasses.dataclass(frozen=True)
class Recipe:
    """Everything a release run does.

    Attributes
    ----------
    simulation : the training set (a :class:`prenet_jax.data.SimulationConfig`)
    stages : ``{task: TrainConfig}`` of every training task (:data:`prenet_jax.stages.TASKS`); their data roots and
        ``init_from`` paths are replaced by the work directory's
    evalset : the held-out set (a :class:`prenet_jax.evaluation.EvalSetConfig`)
    evaluation : how it is scored (a :class:`prenet_jax.evaluation.EvalConfig`; None: the defaults)
    eval_tables : which of the evaluation's tables run (None: all of
        :data:`prenet_jax.evaluation.TABLES`)
    weights : the shipped weights directory (refreshed as training improves)
    report : where the evaluation's ``report.md`` is copied (e.g. ``benchmarks/EVAL.md``);
        None: only in the work directory
    e2e_check_batches : held-out batches (validation split, fixed keys) on which the
        end-to-end fine-tune must beat the separate networks to be kept
    storage_dtype : of the shipped weights
    ship_networks : the networks that ship (None: all that trained); the others' stages
        run their classical methods. Chosen from the evaluation: a network ships where
        it beats its classical method on the held-out set.
    ship_overrides : more pipeline settings of the shipped weights (e.g.
        ``{"center_consensus": "friedel"}``)
    """

    simulation: object
    stages: dict
    evalset: object
    weights: Path
    evaluation: object | None = None
    eval_tables: tuple[str, ...] | None = None
    report: Path | None = None
    e2e_check_batches: int = 8
    storage_dtype: str = "float32"
    ship_networks: tuple[str, ...] | None = None
    ship_overrides: dict = dataclasses.field(default_factory=dict)


def load_recipe(path: str | os.PathLike) -> Recipe:
    """Run ``get_recipe()`` of a Python recipe file (``train/release.py``)."""
    recipe = call_from_file(path, "get_recipe", missing=" (the release recipe is train/release.py in a checkout of prenet-jax)")
    if not isinstance(recipe, Recipe):
        raise ValueError(f"{path}: get_recipe() must return a Recipe, got {type(recipe).__name__}")
    return recipe


def _in_workdir(cfg: TrainConfig, workdir: Path) -> TrainConfig:
    """The stage's config with its data and starting points inside ``workdir``."""
    data = dataclasses.replace(cfg.data, root=str(workdir / "sim")) if cfg.data.source == "simulated" else cfg.data
    init = {net: str(workdir / "runs" / Path(p).name) for net, p in cfg.init_from.items()}
    return cfg.replace(data=data, init_from=init)


class _State:
    """``workdir/recipe.json``: what each stage reached, and a log of the chunks."""

    def __init__(self, path: Path):
        self.path = path
        self.data = json.loads(path.read_text()) if path.exists() else {"stages": {}, "chunks": []}

    def get(self, stage: str) -> dict:
        return self.data["stages"].get(stage, {})

    def set(self, stage: str, **info) -> None:
        self.data["stages"][stage] = {**self.get(stage), **info}
        self.save()

    def save(self) -> None:
        atomic_write_text(self.path, json.dumps(self.data, indent=1, default=str))


def _best_steps(runs: dict[str, Path]) -> dict[str, int | None]:
    out = {}
    for kind, run in runs.items():
        p = run / "summary.json"
        out[kind] = json.loads(p.read_text()).get("best_step") if p.exists() else None
    return out


def _ship(recipe: Recipe, runs: dict[str, Path], extra: dict, log: Callable) -> bool:
    """Export ``runs`` into ``recipe.weights`` if any network's best step differs from
    what is shipped. Returns whether it did. The swap is atomic (a rename)."""
    runs = {k: r for k, r in runs.items() if (r / "best").is_dir() or (r / "checkpoints").is_dir()}
    if not runs:
        return False
    best = _best_steps(runs)
    if any(b is None for b in best.values()):
        runs = {k: r for k, r in runs.items() if best[k] is not None}
        if not runs:
            return False
        best = _best_steps(runs)
    networks = None
    if recipe.ship_networks is not None:  # only those the runs so far have trained
        trained = {n for kind in runs for n in task_networks(kind, recipe.stages[kind].pipeline)}
        networks = tuple(n for n in recipe.ship_networks if n in trained)
        if not networks:
            return False
    # What ships: the best steps, and which networks with which settings.
    choice = {"networks": None if networks is None else list(networks), "overrides": dict(recipe.ship_overrides)}
    shipped = recipe.weights / "manifest.json"
    if shipped.exists():
        old = json.loads(shipped.read_text()).get("recipe", {})
        if old.get("best_steps") == best and old.get("ship", choice) == choice:
            return False
    recipe.weights.parent.mkdir(parents=True, exist_ok=True)
    tmp = recipe.weights.with_name(f".{recipe.weights.name}.new")
    if tmp.exists():
        shutil.rmtree(tmp)
    export(
        tmp,
        {k: str(r) for k, r in runs.items()},
        storage_dtype=recipe.storage_dtype,
        manifest_extra={"recipe": {**extra, "best_steps": best, "ship": choice}},
        networks=networks,
        overrides=recipe.ship_overrides,
    )
    old_dir = recipe.weights.with_name(f".{recipe.weights.name}.old")
    if old_dir.exists():
        shutil.rmtree(old_dir)
    if recipe.weights.exists():
        os.replace(recipe.weights, old_dir)
    os.replace(tmp, recipe.weights)
    shutil.rmtree(old_dir, ignore_errors=True)
    log(f"[recipe] shipped {recipe.weights} from {', '.join(f'{k} (best step {best[k]})' for k in runs)}")
    return True


def run_recipe(
    recipe: Recipe,
    workdir: str | os.PathLike,
    *,
    time_limit: float | None = None,
    workers: int | None = None,
    stop_after: str | None = None,
    log: Callable[[str], None] = print,
) -> dict:
    """Run (or continue) ``recipe`` in ``workdir`` for at most ``time_limit`` seconds.

    Parameters
    ----------
    recipe : what to do
    workdir : data, runs, the held-out set and the report (outside any repository)
    time_limit : seconds for this call; every stage checkpoints and stops in time
    workers : simulation worker processes (default: the machine's cores)
    stop_after : stop after this stage (e.g. ``"simulate"``)
    log : progress lines

    Returns
    -------
    ``{"status": "finished" | "paused", "stage": the stage reached, "seconds": ...}``
    """
    t0 = time.monotonic()
    wd = Path(workdir).expanduser()
    wd.mkdir(parents=True, exist_ok=True)
    state = _State(wd / "recipe.json")
    workers = workers or os.cpu_count() or 1
    left = (lambda: None) if time_limit is None else (lambda: time_limit - (time.monotonic() - t0))
    chunk = {"started": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "time_limit": time_limit, "done": []}
    state.data["chunks"].append(chunk)
    state.save()
    extra = {"simulation": recipe.simulation.to_dict(), "evalset": recipe.evalset.to_dict(), "workdir": str(wd)}
    runs = {name: wd / "runs" / _in_workdir(cfg, wd).name for name, cfg in recipe.stages.items()}

    def out_of_time(margin: float = 60.0) -> bool:
        rest = left()
        return rest is not None and rest < margin

    def paused(stage: str) -> dict:
        chunk["ended"] = time.strftime("%Y-%m-%dT%H:%M:%S%z")
        chunk["paused_in"] = stage
        state.save()
        log(f"[recipe] paused in {stage} after {time.monotonic() - t0:.0f} s: run the same command again to continue")
        return {"status": "paused", "stage": stage, "seconds": time.monotonic() - t0}

    def done(stage: str, **info) -> None:
        state.set(stage, status="done", **info)
        chunk["done"].append(stage)
        state.save()

    for stage in STAGES:
        if state.get(stage).get("status") == "done":
            continue
        if out_of_time():
            return paused(stage)
        log(f"[recipe] stage {stage}" + ("" if left() is None else f" ({left():.0f} s left in this call)"))
        info = _run_stage(stage, recipe, wd, runs, extra, state, workers, left(), log)
        if info is None:
            return paused(stage)
        done(stage, **info)
        if stop_after == stage:
            break
    chunk["ended"] = time.strftime("%Y-%m-%dT%H:%M:%S%z")
    state.save()
    finished = all(state.get(s).get("status") == "done" for s in STAGES)
    return {"status": "finished" if finished else "paused", "stage": stage, "seconds": time.monotonic() - t0}


def _run_stage(
    stage: str, recipe: Recipe, wd: Path, runs: dict[str, Path], extra: dict, state: _State, workers: int, left: float | None, log: Callable
) -> dict | None:
    """Run one stage for at most ``left`` seconds: what its record keeps when it is done,
    None when it paused (the next call continues it)."""
    if stage == "simulate":
        from ..data import run_simulation

        res = run_simulation(recipe.simulation, wd / "sim", workers=workers, progress=True, time_limit=left)
        return {"patterns": res["total"]} if res["complete"] else None
    if stage in NETWORK_STAGES or stage == E2E_TASK:
        cfg = _in_workdir(recipe.stages[stage], wd)
        summary = train(cfg, runs[stage], time_limit=left, log=log)
        separate = {k: runs[k] for k in NETWORK_STAGES if k in runs}
        if stage != "e2e":
            # after every chunk: the best networks so far ship, whatever happens next
            _ship(recipe, {k: r for k, r in separate.items() if (r / "summary.json").exists()}, extra, log)
        if summary["status"] == "paused":
            return None
        if stage == "e2e":
            verdict = _judge_e2e(cfg, separate, runs["e2e"], recipe.e2e_check_batches, log)
            state.set(stage, verdict=verdict)
            chosen = {"e2e": runs["e2e"]} if verdict["keep"] else separate
            _ship(recipe, chosen, {**extra, "e2e": verdict}, log)
        return {"summary": {k: summary[k] for k in ("status", "step", "best_step", "best_val")}}
    if stage == "evalset":
        from ..evaluation import generate_abtem

        try:
            generate_abtem(wd / "eval" / "data", recipe.evalset, workers=workers, time_limit=left)
        except TimeoutError:
            return None
        return {}
    if stage == "evaluate":
        from ..evaluation import evaluate_weights

        kw = {} if recipe.evaluation is None else {"cfg": recipe.evaluation}
        if recipe.eval_tables is not None:
            kw["tables"] = recipe.eval_tables
        path = evaluate_weights(
            recipe.weights, wd / "eval" / "data", wd / "eval" / "report", log=log, stash_dir=wd / "eval" / "partial", **kw
        )
        if recipe.report is not None:
            _copy_report(path, Path(recipe.report))
        return {"report": str(path)}
    raise ValueError(f"unknown recipe stage {stage!r}")


def _judge_e2e(cfg: TrainConfig, separate: dict[str, Path], e2e_run: Path, batches: int, log: Callable) -> dict:
    """End-to-end error of the separate networks and of the fine-tuned ones on the same
    held-out groups (validation split, fixed keys)."""
    variables = {}
    for run in separate.values():
        _, v, _ = load_run_variables(run)
        variables.update(v)
    _, tuned, _ = load_run_variables(e2e_run)
    pcfg = cfg.pipeline
    before = evaluate_e2e(pcfg, variables, cfg, split="val", batches=batches)
    after = evaluate_e2e(pcfg, tuned, cfg, split="val", batches=batches)
    keep = after["image_rmse"] < before["image_rmse"] and after["center_err"] <= before["center_err"] * 1.05
    log(
        f"[recipe] end to end on {batches} held-out batches: image_rmse {before['image_rmse']:.5f} -> {after['image_rmse']:.5f}, "
        f"center_err {before['center_err']:.4f} -> {after['center_err']:.4f} px: {'kept' if keep else 'not kept (the separate networks ship)'}"
    )
    return {"keep": bool(keep), "before": before, "after": after, "batches": batches}


def _copy_report(report: Path, dest: Path) -> None:
    """Copy ``report.md`` and its figures next to ``dest`` (figures in ``dest``'s folder
    ``eval/``, links rewritten)."""
    figs_src = report.parent
    figs_dst = dest.parent / "eval"
    figs_dst.mkdir(parents=True, exist_ok=True)
    for png in figs_src.glob("*.png"):
        shutil.copy2(png, figs_dst / png.name)
    text = report.read_text()
    for png in figs_src.glob("*.png"):
        text = text.replace(f"]({png.name})", f"](eval/{png.name})")
    dest.write_text(text)
