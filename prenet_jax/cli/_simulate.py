"""``prenet-jax simulate`` and ``prenet-jax simulate-figure``: the command line of :mod:`prenet_jax.data`.

``simulate`` runs :func:`prenet_jax.data.run_simulation` (abTEM, resumable shards and a
manifest; see ``docs/simulation.md``); ``simulate-figure`` draws a grid of simulated
patterns with their labels (:func:`prenet_jax.data.make_figure`,
:func:`prenet_jax.data.figure_from_dataset`). abTEM is imported only when a command runs.
"""

from __future__ import annotations

import argparse
import sys
import warnings
from pathlib import Path

from ..data import SimulationConfig, figure_from_dataset, make_figure, run_simulation

__all__ = ["add_simulate_parser", "config_from_args", "run_simulate_cli", "add_figure_parser", "run_figure_cli"]


def add_simulate_parser(subparsers) -> argparse.ArgumentParser:
    """Register ``prenet-jax simulate`` on an argparse subparsers object."""
    d = SimulationConfig()
    p = subparsers.add_parser(
        "simulate",
        help="simulate clean training patterns with abTEM (crystal and amorphous)",
        description=(
            "Simulate clean, centred, undistorted diffraction patterns with abTEM into chunked HDF5 shards "
            "with a manifest. Resumable: rerun the same command to continue an interrupted run."
        ),
    )
    p.add_argument("--output", "-o", required=True, help="output directory")
    p.add_argument("--structures", type=int, default=d.n_structures, help=f"distinct structures (default {d.n_structures})")
    p.add_argument("--patterns", type=int, default=d.n_patterns, help=f"patterns in the main set (default {d.n_patterns})")
    p.add_argument(
        "--structure-ids", nargs="+", default=None, metavar="ID", help="use these structure ids (e.g. ase:Si amorphous:a-SiO2:000)"
    )
    p.add_argument("--seed", type=int, default=d.seed)
    p.add_argument("--amorphous-fraction", type=float, default=d.amorphous_fraction)
    p.add_argument("--pattern-size", type=int, default=d.pattern_size)
    p.add_argument(
        "--gpts",
        type=int,
        default=d.gpts,
        help=f"multislice grid (default {d.gpts}: signal fills the frame; 384 is ~2.5x faster but leaves "
        "the corners empty beyond a circle of radius gpts/3 around the zero angle)",
    )
    p.add_argument("--energies-kv", type=float, nargs="+", default=list(d.energies_kv))
    p.add_argument("--disk-radius-px", type=float, nargs=2, default=list(d.disk_radius_px), metavar=("MIN", "MAX"))
    p.add_argument("--extent", type=float, nargs=2, default=list(d.extent_a), metavar=("MIN", "MAX"), help="cell side, Angstrom")
    p.add_argument("--semiangle-mrad", type=float, nargs=2, default=list(d.semiangle_mrad), metavar=("MIN", "MAX"))
    p.add_argument("--thickness", type=float, nargs=2, default=list(d.thickness_a), metavar=("MIN", "MAX"), help="Angstrom")
    p.add_argument("--thicknesses-per-task", type=int, default=d.thicknesses_per_task)
    p.add_argument("--positions-per-task", type=int, default=d.positions_per_task)
    p.add_argument("--zone-axis-fraction", type=float, default=d.zone_axis_fraction)
    p.add_argument("--frozen-phonons", type=int, default=d.frozen_phonons, help="configurations per pattern (0: static)")
    p.add_argument("--split", type=float, nargs=3, default=list(d.split_fractions), metavar=("TRAIN", "VAL", "TEST"))
    p.add_argument("--tasks-per-shard", type=int, default=d.tasks_per_shard)
    p.add_argument(
        "--mantissa-bits",
        type=int,
        default=d.mantissa_bits,
        help=f"float32 mantissa bits stored (default {d.mantissa_bits}: relative precision 1.2e-4; 23: lossless)",
    )
    p.add_argument("--ellipse", type=int, default=0, metavar="N", help="also make N averaged patterns for the ellipse network (0: off)")
    p.add_argument("--ellipse-orientations", type=int, default=d.ellipse_orientations)
    p.add_argument("--ellipse-rotations", type=int, default=d.ellipse_rotations)
    p.add_argument("--device", choices=("cpu", "gpu"), default="cpu", help="abTEM device (gpu needs cupy)")
    p.add_argument("--workers", type=int, default=1, help="local worker processes (dask.distributed LocalCluster when > 1)")
    p.add_argument("--scheduler", default=None, help="address of a dask.distributed scheduler, e.g. tcp://host:8786")
    p.add_argument("--threads", type=int, default=None, help="FFTW threads when running in-process (default 1)")
    p.add_argument(
        "--resume",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="continue a run found in --output (default); --no-resume makes an existing run an error",
    )
    p.add_argument("--overwrite", action="store_true", help="delete a previous run in --output first")
    p.add_argument("--max-shards", type=int, default=None, help="stop after this many new shards")
    p.add_argument("--no-progress", action="store_true")
    p.add_argument("--figure", default=None, metavar="PNG", help="afterwards, draw a grid of the simulated patterns to this PNG")
    p.set_defaults(func=run_simulate_cli)
    return p


def config_from_args(args) -> SimulationConfig:
    return SimulationConfig(
        n_structures=args.structures,
        n_patterns=args.patterns,
        seed=args.seed,
        amorphous_fraction=args.amorphous_fraction,
        structure_ids=tuple(args.structure_ids) if args.structure_ids else None,
        pattern_size=args.pattern_size,
        gpts=args.gpts,
        energies_kv=tuple(args.energies_kv),
        disk_radius_px=tuple(args.disk_radius_px),
        extent_a=tuple(args.extent),
        semiangle_mrad=tuple(args.semiangle_mrad),
        thickness_a=tuple(args.thickness),
        thicknesses_per_task=args.thicknesses_per_task,
        positions_per_task=args.positions_per_task,
        zone_axis_fraction=args.zone_axis_fraction,
        frozen_phonons=args.frozen_phonons,
        split_fractions=tuple(args.split),
        tasks_per_shard=args.tasks_per_shard,
        mantissa_bits=args.mantissa_bits,
        ellipse_samples=args.ellipse,
        ellipse_orientations=args.ellipse_orientations,
        ellipse_rotations=args.ellipse_rotations,
    )


def run_simulate_cli(args) -> int:
    """``prenet-jax simulate``: returns the process exit code."""
    try:
        config = config_from_args(args)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", category=UserWarning)
            result = run_simulation(
                config,
                args.output,
                device=args.device,
                workers=args.workers,
                scheduler=args.scheduler,
                resume=args.resume,
                overwrite=args.overwrite,
                max_shards=args.max_shards,
                progress=not args.no_progress,
                threads=args.threads,
            )
    except ValueError as err:
        print(f"prenet-jax simulate: error: {err}", file=sys.stderr)
        return 2
    print(
        f"wrote {result['written']} patterns in {result['seconds']:.1f} s ({result['patterns_per_s']:.2f} patterns/s); "
        f"{result['total']}/{result['expected']} in {result['output']}" + ("" if result["complete"] else " (incomplete: rerun to resume)")
    )
    if args.figure:
        figure_from_dataset(args.output, args.figure)
        print(f"figure: {args.figure}")
    return 0


def add_figure_parser(subparsers) -> argparse.ArgumentParser:
    """Register ``prenet-jax simulate-figure``."""
    p = subparsers.add_parser("simulate-figure", help="draw a grid of simulated patterns with their labels (PNG)")
    p.add_argument("--output", "-o", default="docs/figures/simulated_patterns.png")
    p.add_argument("--data", default=None, help="draw from this simulation directory (simulated there if absent)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", choices=("cpu", "gpu"), default="cpu")
    p.set_defaults(func=run_figure_cli)
    return p


def run_figure_cli(args) -> int:
    try:
        if args.data and (Path(args.data) / "manifest.csv").exists():
            out = figure_from_dataset(args.data, args.output, seed=args.seed)
        else:
            out = make_figure(args.output, args.data, seed=args.seed, device=args.device)
    except ValueError as err:
        print(f"prenet-jax simulate-figure: error: {err}", file=sys.stderr)
        return 2
    print(f"wrote {out}")
    return 0
