"""``prenet-jax evaluate``: the command line of :mod:`prenet_jax.evaluation`.

Builds or reads the held-out set, loads the networks ``--weights`` names, finds the
peer tools, runs the tables and writes the report. Exit status: 0 done, 2 a problem
with the held-out set. See ``docs/evaluation.md``.
"""

from __future__ import annotations

import argparse
import shlex
import sys
import time
import warnings
from pathlib import Path

from ..evaluation import (
    CENTER_METHODS,
    DENOISE_METHODS,
    ELLIPSE_METHODS,
    SCAN_METHODS,
    TABLES,
    EvalConfig,
    EvalSetConfig,
    Methods,
    evaluate_real,
    load_network,
    load_or_make,
    open_stash,
    run_evaluation,
    write_real_report,
    write_report,
)
from ..evaluation.peers import available_peers

__all__ = ["add_evaluate_parser", "run_evaluate_cli"]


def add_evaluate_parser(subparsers) -> argparse.ArgumentParser:
    """Register ``prenet-jax evaluate``."""
    d = EvalConfig()
    s = EvalSetConfig()
    p = subparsers.add_parser(
        "evaluate",
        help="reproduce the paper's tables on held-out simulations, against classical methods and peer tools",
        description="Evaluate denoising, beam centres, ellipse and the whole pipeline on held-out (test-split) patterns "
        "with known truth, beside the classical methods and py4DSTEM / pyxem when installed; writes "
        "report.md, results.json and PNG figures. See docs/evaluation.md.",
    )
    g = p.add_argument_group("test set")
    g.add_argument("--data", metavar="DIR", help="held-out set directory (written by --generate)")
    g.add_argument(
        "--generate", type=int, metavar="N", help="first simulate N single patterns (+ the scan patches) with abTEM into --data (resumable)"
    )
    g.add_argument("--scans", type=int, default=s.n_scans, metavar="M", help="scan patches to generate (default %(default)s)")
    g.add_argument("--scan-frames", type=int, default=s.scan_frames, metavar="F", help="frames per scan patch (default %(default)s)")
    g.add_argument("--gpts", type=int, default=s.gpts, help="abTEM grid of generated patterns (default %(default)s)")
    g.add_argument("--synthetic", action="store_true", help="use a small analytic set instead (no abTEM; for smoke tests)")
    g.add_argument("--patterns", type=int, metavar="N", help="use at most N single patterns (default all)")
    g.add_argument("--max-scans", type=int, metavar="M", help="use at most M scan patches (default all)")
    g.add_argument("--workers", type=int, default=1, help="abTEM worker processes when generating")
    g = p.add_argument_group("evaluation")
    g.add_argument("--doses", type=float, nargs="+", default=list(d.doses), metavar="D", help="electrons per pattern (default %(default)s)")
    g.add_argument("--tables", nargs="+", choices=TABLES, help="held-out tables to compute (default all; none when only --real is given)")
    g.add_argument(
        "--real",
        nargs="+",
        metavar="FILE",
        help="also (or, without --tables/--data, only) evaluate these real recorded files: the default preprocess command "
        "beside the classical methods and py4DSTEM, where they agree (writes real.md; see docs/real-data.md)",
    )
    g.add_argument(
        "--methods",
        nargs="+",
        metavar="M",
        help=f"methods to run (default all available): {', '.join(sorted(set(DENOISE_METHODS + SCAN_METHODS + CENTER_METHODS + ELLIPSE_METHODS)))}",
    )
    g.add_argument(
        "--weights",
        default="auto",
        metavar="DIR|auto|untrained|none",
        help="networks: exported weights DIR, the bundled ones (auto, default), untrained tiny networks, or none",
    )
    g.add_argument(
        "--peers",
        nargs="*",
        default=["py4dstem", "pyxem"],
        metavar="PEER",
        help="peer tools to try (default py4dstem pyxem; each runs where its interpreter is found: "
        "PRENET_PY4DSTEM_PYTHON, PRENET_PYXEM_PYTHON, or this one)",
    )
    g.add_argument(
        "--peer-max",
        type=int,
        metavar="N",
        help="at most N frames per dose go to each peer (default: all; 128 mean patterns for the ring fit)",
    )
    g.add_argument("--max-shift", type=float, default=d.max_shift, help="centre table shift range, px (default %(default)s)")
    g.add_argument("--seed", type=int, default=d.seed)
    p.add_argument("-o", "--output", default="eval_out", help="report directory (default %(default)s)")
    p.add_argument("--no-figures", action="store_true")
    p.set_defaults(func=run_evaluate_cli)
    return p


def _command_line() -> str | None:
    """The command as typed, for the report (None when not run as ``prenet-jax evaluate``)."""
    if len(sys.argv) > 1 and sys.argv[1] == "evaluate":
        return "prenet-jax evaluate " + " ".join(shlex.quote(a) for a in sys.argv[2:])
    return None


def _run_real(args, t0: float) -> int:
    """``--real``: the real-file section (:func:`prenet_jax.evaluation.evaluate_real`)."""
    missing = [f for f in args.real if not Path(f).exists()]
    if missing:
        print(f"prenet-jax evaluate: error: --real: no such file: {', '.join(missing)}", file=sys.stderr)
        return 2
    peers = available_peers(tuple(p for p in args.peers if p == "py4dstem")) if args.peers else {}
    print(f"real files: {len(args.real)}; peers: {peers or 'none (py4DSTEM columns left out)'}")
    rows = evaluate_real(args.real, args.output, peers=peers)
    path = write_real_report(rows, args.output, _command_line(), peers=peers)
    print(f"wrote {path} ({time.perf_counter() - t0:.0f} s)")
    return 0


def run_evaluate_cli(args) -> int:
    """``prenet-jax evaluate``: returns the exit code."""
    t0 = time.perf_counter()
    held_out = args.tables is not None or args.data or args.generate or args.synthetic or not args.real
    if args.real:
        rc = _run_real(args, t0)
        if rc or not held_out:
            return rc
    args.tables = args.tables or list(TABLES)
    try:
        scfg = EvalSetConfig(scan_frames=args.scan_frames, n_scans=args.scans, gpts=args.gpts)
        es = load_or_make(
            args.data, args.generate, args.synthetic, scfg, workers=args.workers, max_patterns=args.patterns, max_scans=args.max_scans
        )
    except (ValueError, RuntimeError) as err:
        print(f"prenet-jax evaluate: error: {err}", file=sys.stderr)
        return 2
    print(
        f"test set: {es.single.shape[0]} single patterns, {es.scans.shape[0]} x {es.scans.shape[1]} scan frames ({es.source}, {time.perf_counter() - t0:.0f} s)"
    )
    net, note = load_network(args.weights, es.single.shape[-1])
    peers = available_peers(tuple(args.peers)) if args.peers else {}
    print(f"networks: {note}; peers: {peers or 'none'}")
    cfg = EvalConfig(doses=tuple(float(x) for x in args.doses), max_shift=args.max_shift, seed=args.seed, peer_max=args.peer_max)
    methods = Methods(network=net, network_note=note, peers=peers, select=tuple(args.methods) if args.methods else None)
    # Finished parts wait in OUTPUT/partial until the report is written: the same command
    # run again after an interruption starts after the last of them.
    stash = open_stash(Path(args.output) / "partial", es, methods, cfg)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", category=UserWarning)
        res = run_evaluation(es, methods, cfg, args.tables, stash=stash)
    path = write_report(res, args.output, _command_line(), figures=not args.no_figures)
    stash.clear()
    print(f"wrote {path} ({time.perf_counter() - t0:.0f} s)")
    return 0
