"""The ``prenet-jax`` command line: one subcommand per job, every one of them here.

Each subcommand is one private module of ``cli/`` with an ``add_*_parser(subparsers)``
function that registers it: ``demo`` (``_demo``), ``preprocess`` (``_preprocess``),
``simulate`` and ``simulate-figure`` (``_simulate``), ``train`` (``_train``),
``evaluate`` (``_evaluate``); ``info`` is below. This module only assembles them. The
library code they call is imported through the subpackages' faces; importing this
module imports no jax, so that :func:`main` guards SIGINT and SIGTERM from its first
moment (building the parser imports the rest).
"""

from __future__ import annotations

import argparse
import contextlib
import signal
import sys
import threading
from collections.abc import Iterator

__all__ = ["main", "build_parser"]


def _add_info(sub) -> None:
    p = sub.add_parser("info", help="versions, devices and bundled weights")
    p.set_defaults(func=_run_info)


def _run_info(args) -> int:
    import jax

    import prenet_jax as pj

    from ..pipeline import WEIGHTS_DIR, load_weights

    print(f"prenet-jax {pj.__version__}, jax {jax.__version__}, backend {jax.default_backend()}")
    for d in jax.local_devices():
        print(f"  device {d.id}: {d.device_kind}")
    try:
        cfg, params, manifest = load_weights(WEIGHTS_DIR / "release")
    except FileNotFoundError:
        print("  bundled weights: none (classical methods only)")
        return 0
    trained = manifest.get("trained_by", {}).get("git_commit") or manifest.get("git_commit") or "?"
    consensus = "" if cfg.center_consensus == "none" else f" ({cfg.center_consensus} where within {cfg.consensus_px:g} px)"
    print(f"  bundled weights: {', '.join(sorted(params))} (trained at commit {trained[:7]}, {WEIGHTS_DIR / 'release'})")
    print(f"  default methods: denoise {cfg.denoise_method}, centre {cfg.center_method}{consensus}, ellipse {cfg.ellipse_method}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="prenet-jax", description="4D-PreNet preprocessing of 4D-STEM data in JAX")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    # Each job registers its own subcommand; heavy imports (abTEM, torch) stay lazy inside them.
    from ._demo import add_demo_parser
    from ._evaluate import add_evaluate_parser
    from ._preprocess import add_preprocess_parser
    from ._simulate import add_figure_parser, add_simulate_parser
    from ._train import add_train_parser

    add_demo_parser(sub)
    add_preprocess_parser(sub)
    add_simulate_parser(sub)
    add_figure_parser(sub)
    add_train_parser(sub)
    add_evaluate_parser(sub)
    _add_info(sub)
    return parser


@contextlib.contextmanager
def _startup_signals() -> Iterator[list[int]]:
    """Record SIGINT and SIGTERM while the command starts up (the block), instead of
    dying on them: importing jax and building the parser take seconds on a busy
    machine, where SIGTERM would kill the process without a word and SIGINT print a
    traceback. The block gets the list of signals received; the previous handlers are
    restored after it. Only the main thread can install handlers; a signal ignored
    before (a background job's SIGINT) stays ignored."""
    caught: list[int] = []
    old = {}
    if threading.current_thread() is threading.main_thread():
        for s in (signal.SIGINT, signal.SIGTERM):
            prev = signal.getsignal(s)
            if prev is not signal.SIG_IGN:
                old[s] = prev
                signal.signal(s, lambda signum, frame: caught.append(signum))
    try:
        yield caught
    finally:
        for s, prev in old.items():
            signal.signal(s, prev if prev is not None else signal.SIG_DFL)


def main(argv: list[str] | None = None) -> int:
    with _startup_signals() as caught:
        from ._preprocess import bare_refine

        parser = build_parser()
        args = parser.parse_args(bare_refine(sys.argv[1:] if argv is None else argv))
        if caught:
            name = signal.Signals(caught[0]).name
            print(f"interrupted by {name} during start-up: nothing was done", file=sys.stderr)
            return 128 + caught[0]
        if getattr(args, "handles_signals", False):
            # The command installs its own handling (``preprocess``: a stop flag) over
            # this one, so that no moment is unguarded; a signal that arrives before it
            # does is handed over in ``args.startup_signals``.
            args.startup_signals = caught
            return _run(args)
    return _run(args)


def _run(args) -> int:
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except Exception as e:  # the device's memory: name the fix, not a traceback (a run's outputs clean up on their way out)
        if not _out_of_memory(e):
            raise
        print(f"error: {_out_of_memory_text(args)}", file=sys.stderr)
        return 1


def _out_of_memory(e: BaseException) -> bool:
    """Whether ``e`` is XLA running out of device memory (JaxRuntimeError / XlaRuntimeError)."""
    text = str(e)
    return type(e).__name__ in ("JaxRuntimeError", "XlaRuntimeError") and ("Out of memory" in text or "RESOURCE_EXHAUSTED" in text)


def _out_of_memory_text(args) -> str:
    """The out-of-memory message: the batch that did not fit and what to try (a 2048x1536
    SEM stack of RosettaSciIO's test data ran out of 24 GB at the default 128)."""
    from ..config import PipelineConfig

    batch = getattr(args, "batch_size", None) or PipelineConfig().batch_size
    return (
        f"out of memory at a batch of {batch} frames on this device (large frames need small batches); "
        f"rerun with a smaller --batch-size, e.g. --batch-size {max(1, batch // 16)}"
    )
