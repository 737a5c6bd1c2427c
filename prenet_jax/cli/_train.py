"""``prenet-jax train {run, release, export, plot, evaluate}``."""

from __future__ import annotations

import argparse
import json
import os
import sys

from .._util import distributed_initialize
from ..stages import NETWORKS, TASKS
from ..training import cache_dir, evaluate_e2e, export, load_config, override, plot_curves, train

__all__ = ["add_train_parser"]


def _distributed_init(args) -> None:
    if args.coordinator or args.distributed:  # without a coordinator the cluster environment says (SLURM, Open MPI, TPU pods)
        distributed_initialize(args.coordinator, args.num_processes, args.process_id, getattr(args, "cpu_collectives", None))


def _run_cli(args) -> int:
    try:
        _distributed_init(args)
        cfg = load_config(args.config)
        for item in args.set or []:
            k, sep, v = item.partition("=")
            if not sep:
                raise ValueError(f"--set {item!r}: use KEY=VALUE")
            cfg = override(cfg, k.strip(), v.strip())
        workdir = args.workdir or os.path.join("runs", cfg.name)
        summary = train(cfg, workdir, stop_at=args.stop_at, time_limit=args.time_limit)
    except (ValueError, FileNotFoundError, FileExistsError) as err:
        print(f"prenet-jax train: error: {err}", file=sys.stderr)
        return 2
    return 0 if summary["status"] in ("finished", "early_stopped", "paused") else 1


def _export_cli(args) -> int:
    runs = {k: getattr(args, k) for k in TASKS if getattr(args, k)}
    try:
        overrides = {} if args.center_consensus is None else {"center_consensus": args.center_consensus}
        path = export(
            args.output,
            runs,
            storage_dtype=args.storage_dtype,
            compute_dtype=args.compute_dtype,
            networks=args.networks,
            overrides=overrides,
        )
    except (ValueError, FileNotFoundError, FileExistsError) as err:
        print(f"prenet-jax train export: error: {err}", file=sys.stderr)
        return 2
    print(f"wrote {path}")
    return 0


def _plot_cli(args) -> int:
    print(plot_curves(args.run, args.output))
    return 0


def _evaluate_cli(args) -> int:
    from ..pipeline import load_weights

    try:
        pcfg, variables, _ = load_weights(args.weights)
        cfg = load_config(args.config)
        for item in args.set or []:
            k, _, v = item.partition("=")
            cfg = override(cfg, k.strip(), v.strip())
        m = evaluate_e2e(pcfg, variables, cfg, split=args.split, batches=args.batches)
    except (ValueError, FileNotFoundError) as err:
        print(f"prenet-jax train evaluate: error: {err}", file=sys.stderr)
        return 2
    print(json.dumps(m, indent=2))
    return 0


def _release_cli(args) -> int:
    from ..recipe import load_recipe, run_recipe

    try:
        recipe = load_recipe(args.recipe)
        res = run_recipe(recipe, args.workdir, time_limit=args.time_limit, workers=args.workers, stop_after=args.stop_after)
    except (ValueError, FileNotFoundError, FileExistsError) as err:
        print(f"prenet-jax train release: error: {err}", file=sys.stderr)
        return 2
    print(
        f"recipe {res['status']} ({res['stage']}, {res['seconds']:.0f} s)"
        + ("" if res["status"] == "finished" else ": run the same command again to continue")
    )
    return 0


def add_train_parser(subparsers) -> argparse.ArgumentParser:
    """Register ``prenet-jax train {run, release, export, plot, evaluate}``."""
    p = subparsers.add_parser(
        "train",
        help="train the networks (optax + orbax) and export inference weights",
        description="Train the denoiser, centre and ellipse networks and fine-tune them end to end.",
    )
    sub = p.add_subparsers(dest="train_command", required=True, metavar="ACTION")

    r = sub.add_parser("run", help="train or resume one experiment (a config file)")
    r.add_argument("--config", required=True, help="experiment file and size, e.g. train/configs/denoiser.py:tiny")
    r.add_argument("--workdir", default=None, help="run directory (default runs/<name>); a checkpoint there is resumed")
    r.add_argument(
        "--set", action="append", metavar="KEY=VALUE", help="override a setting, e.g. --set steps=200 --set pipeline.denoiser.width=8"
    )
    r.add_argument("--time-limit", type=float, default=None, metavar="S", help="checkpoint and stop before S seconds (chunked training)")
    r.add_argument("--stop-at", type=int, default=None, metavar="STEP", help="checkpoint and stop at this step")
    r.add_argument("--distributed", action="store_true", help="jax.distributed.initialize() from the cluster environment")
    r.add_argument("--coordinator", default=None, metavar="HOST:PORT", help="multi-host: address of process 0")
    r.add_argument("--num-processes", type=int, default=None)
    r.add_argument("--process-id", type=int, default=None)
    r.add_argument("--cpu-collectives", default=None, choices=("gloo", "mpi"), help="multi-process CPU runs (tests): gloo")
    r.set_defaults(func=_run_cli)

    rl = sub.add_parser(
        "release",
        help="the release recipe: simulate, train the three networks, fine-tune end to end, ship, evaluate (resumable)",
        description="Run or continue a release recipe (default train/release.py): every stage resumes where the last call "
        "stopped, and the shipped weights are refreshed whenever a network's validation improves.",
    )
    rl.add_argument("--recipe", default="train/release.py", help="recipe file (default %(default)s, in a checkout)")
    rl.add_argument("--workdir", default=str(cache_dir() / "release"), help="data, runs and reports (default %(default)s)")
    rl.add_argument("--time-limit", type=float, default=None, metavar="S", help="stop (checkpointed) before S seconds; rerun to continue")
    rl.add_argument("--workers", type=int, default=None, help="simulation worker processes (default: the CPU cores)")
    rl.add_argument(
        "--stop-after",
        default=None,
        metavar="STAGE",
        help="stop after this stage (simulate, denoiser, center, ellipse, e2e, evalset, evaluate)",
    )
    rl.set_defaults(func=_release_cli)

    e = sub.add_parser("export", help="write inference weights (weights.npz + manifest.json) from run directories")
    e.add_argument("-o", "--output", required=True, help="new weights directory")
    for k in TASKS:
        e.add_argument(f"--{k}", default=None, metavar="RUN", help=f"run directory of the {k} task")
    e.add_argument("--storage-dtype", default="float32", choices=("float32", "float16"))
    e.add_argument("--compute-dtype", default="float32", choices=("float32", "bfloat16"), help="stored in the pipeline config")
    e.add_argument(
        "--networks",
        nargs="+",
        choices=NETWORKS,
        help="ship only these networks of the runs (default all); the other stages run their classical methods",
    )
    e.add_argument(
        "--center-consensus",
        choices=("none", "com", "friedel"),
        help="the classical centre that replaces the network's where the two agree within 1 px (default: none)",
    )
    e.set_defaults(func=_export_cli)

    pl = sub.add_parser("plot", help="redraw curves.png of a run")
    pl.add_argument("run")
    pl.add_argument("-o", "--output", default=None)
    pl.set_defaults(func=_plot_cli)

    ev = sub.add_parser("evaluate", help="end-to-end metrics of exported weights on held-out groups")
    ev.add_argument("--weights", required=True)
    ev.add_argument("--config", required=True, help="an e2e config: data, augmentation and group size")
    ev.add_argument("--set", action="append", metavar="KEY=VALUE")
    ev.add_argument("--split", default="test", choices=("train", "val", "test"))
    ev.add_argument("--batches", type=int, default=8)
    ev.set_defaults(func=_evaluate_cli)
    return p
