"""``prenet-jax preprocess INPUT -o OUTPUT``: the command line of
:func:`prenet_jax.preprocess.preprocess_file`, and of
:func:`prenet_jax.preprocess.preprocess_files` for many inputs
(``prenet-jax preprocess A.h5 B.mib DIR/ -o OUTDIR/``).

Parses the options, builds the pipeline they ask for (trained weights or the
classical methods), and runs the file with SIGINT and SIGTERM routed to one stop
flag (:mod:`prenet_jax.preprocess._cancel`). Exit status: 0 done, 1 the output could
not be written or a worker failed, 2 a problem with the input or the options,
130/143 interrupted by SIGINT/SIGTERM; every failure is one line on stderr and
leaves nothing but the input. With many inputs a failed file is skipped and the others
go on; the status is then that of the worst failure (2 when every failure was an
input problem, else 1), after a table of every file. See ``docs/preprocess.md``.
"""

from __future__ import annotations

import argparse
import math
import os
import shlex
import sys
from pathlib import Path
from typing import Any

import numpy as np

from ..config import PipelineConfig
from ..conventions import Ellipse
from ..io import InputError, OutputError, check_output_path, open_input
from ..preprocess import DESCAN_MODES, Cancel, Interrupted, catch_signals, ellipse_from_py4dstem
from ..stages import CENTER, DENOISE, ELLIPSE, classical_methods, stage_of

__all__ = ["add_preprocess_parser", "run_preprocess"]

#: The classical method of each stage, used while no trained weights are available.
_CLASSICAL = classical_methods()


def _switchable(stage) -> tuple[str, ...]:
    """A stage's ``--*-method`` choices: its methods but ``"none"`` (``--no-*`` says that)."""
    return tuple(m for m in stage.methods if m != "none")


def _numbers(text: str, kind=float) -> tuple:
    """``"a,b,..."`` -> a tuple of ``kind`` (any length; empty if one is not a number).
    Not :func:`prenet_jax._util.min_max`: these are not ``(min, max)`` pairs (a ratio and
    an angle, three py4DSTEM axes, a scan shape), and the callers check them."""
    try:
        return tuple(kind(v) for v in text.replace(" ", "").split(","))
    except ValueError:
        return ()


def _parse_ellipse(args) -> Ellipse | None:
    if args.ellipse and args.ellipse_py4dstem:
        raise InputError("give either --ellipse or --ellipse-py4dstem, not both")
    if args.ellipse:
        v = _numbers(args.ellipse)
        if len(v) != 2 or not all(map(math.isfinite, v)) or v[0] <= 0:
            raise InputError(f"--ellipse {args.ellipse!r}: expected RATIO,ANGLE_DEG with RATIO = a/b > 0, e.g. --ellipse 1.05,30")
        return Ellipse(v[0], math.radians(v[1]))
    if args.ellipse_py4dstem:
        v = _numbers(args.ellipse_py4dstem)
        if len(v) != 3 or not all(map(math.isfinite, v)) or v[0] <= 0 or v[1] <= 0:
            raise InputError(
                f"--ellipse-py4dstem {args.ellipse_py4dstem!r}: expected A,B,THETA (semi-axes in px, theta in radians as py4DSTEM gives them), e.g. 30.5,29.8,0.42"
            )
        return ellipse_from_py4dstem(*v)
    return None


def _select_devices(args):
    import jax

    if args.cpu:
        return jax.local_devices(backend="cpu")  # this process's (a --distributed job sees every process's)
    devs = jax.local_devices()
    if not args.devices:
        return devs
    try:
        ids = [int(x) for x in args.devices.split(",") if x.strip()]
    except ValueError:
        ids = []
    if not ids:
        raise InputError(f"--devices {args.devices!r}: expected device numbers, e.g. --devices 0,1")
    bad = [i for i in ids if i < 0 or i >= len(devs)]
    if bad or len(set(ids)) != len(ids):
        listing = ", ".join(f"{i}: {d.device_kind}" for i, d in enumerate(devs))
        raise InputError(
            f"--devices {args.devices}: this machine has {len(devs)} local device(s) ({listing}); give distinct numbers among them"
        )
    return [devs[i] for i in ids]


def _build_pipeline(args, log):
    """The pipeline the options ask for, and the id of its weights."""
    from ..pipeline import WEIGHTS_DIR, Pipeline, load_weights

    devices = _select_devices(args)
    chosen = {"denoise_method": args.denoise_method, "center_method": args.center_method, "ellipse_method": args.ellipse_method}
    switched_off = {
        "denoise_method": args.no_denoise,
        "center_method": args.no_center,
        "ellipse_method": args.no_ellipse or bool(args.ellipse or args.ellipse_py4dstem),
    }
    wanted = {k: ("none" if switched_off[k] else v) for k, v in chosen.items()}
    if args.classical:
        if args.weights:
            raise InputError("--classical runs no networks, --weights gives some: drop one of them")
        wanted = {k: (_CLASSICAL[k] if v is None else v) for k, v in wanted.items()}
    explicit_net = [k for k, v in wanted.items() if v == "network"]
    needs_net = [k for k, v in wanted.items() if v in (None, "network")]
    config, params, weights_id = None, {}, "none (classical methods)"
    if needs_net or args.weights:
        path = Path(args.weights) if args.weights else WEIGHTS_DIR / "release"
        try:
            config, params, manifest = load_weights(path)
            import hashlib

            digest = hashlib.sha256((path / "weights.npz").read_bytes()).hexdigest()[:16]
            weights_id = f"{manifest.get('name') or manifest.get('id') or path.name} sha256:{digest}"
        except FileNotFoundError:
            if args.weights:
                raise InputError(f"--weights {args.weights}: no weights.npz + manifest.json there (export them from training)") from None
            if explicit_net:
                names = ", ".join("--" + k.replace("_", "-") + " network" for k in explicit_net)
                raise InputError(
                    f"{names}: this installation ships no trained weights; give exported weights with --weights DIR, or use the classical methods (--denoise-method gaussian --center-method com --ellipse-method fit)"
                ) from None
            log(
                "note: no trained weights ship with this version: using the classical methods (gaussian denoise, centre of mass, edge-fit ellipse)"
            )
    if config is None:
        config = PipelineConfig.classical()
        wanted = {k: (_CLASSICAL[k] if v is None else v) for k, v in wanted.items()}
    else:
        # By default each stage runs what the weights ship with: a network where one was
        # trained well enough to ship, else that stage's classical method.
        wanted = {k: (getattr(config, k) if v is None else v) for k, v in wanted.items()}
        lacking = [k for k in explicit_net if stage_of(k).network not in params]
        if lacking:
            names = ", ".join("--" + k.replace("_", "-") + " network" for k in lacking)
            raise InputError(
                f"{names}: the weights {weights_id} hold no such network (they hold {', '.join(sorted(params))}); "
                f"drop the option to run that stage's classical method, or give other weights with --weights DIR"
            )
    changes: dict[str, Any] = dict(wanted, negative="clip")
    if args.interpolation:
        changes["interpolation"] = args.interpolation
    if args.batch_size:
        changes["batch_size"] = args.batch_size
    if args.calibration_frames:  # exactly N frames, whatever the dose
        changes.update(calibration_frames=args.calibration_frames, calibration_counts=0.0)
    if args.gaussian_sigma is not None:
        changes["gaussian_sigma"] = None if args.gaussian_sigma == "auto" else args.gaussian_sigma
    try:
        config = config.replace(**changes)
        pipe = Pipeline(config, params, devices=devices)
    except ValueError as e:
        raise InputError(str(e)) from None
    return pipe, weights_id


def _whole_number(text: str, least: int) -> int:
    try:
        v = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if v < least:
        raise argparse.ArgumentTypeError(f"{v}: must be at least {least}")
    return v


def _positive_int(text: str) -> int:
    return _whole_number(text, 1)


def _nonnegative_int(text: str) -> int:
    return _whole_number(text, 0)


def _scan(text: str) -> tuple[int, int]:
    v = _numbers(text, int)
    if len(v) != 2 or min(v) < 1:
        raise argparse.ArgumentTypeError(f"{text!r}: expected RX,RY, e.g. 256,256")
    return v  # type: ignore[return-value]


def _sigma(text: str):
    if text == "auto":
        return "auto"
    try:
        v = float(text)
    except ValueError:
        v = float("nan")
    if not (math.isfinite(v) and v >= 0):
        raise argparse.ArgumentTypeError(f"{text!r}: expected 'auto' or a sigma in px >= 0 (0: no filter)")
    return v


def _saturation(text: str):
    if text in ("auto", "none"):
        return None if text == "none" else "auto"
    try:
        return float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: expected a number, 'auto' or 'none'") from None


_EPILOG = """\
examples:
  prenet-jax preprocess scan.h5 -o scan_pre.h5
  prenet-jax preprocess scan.h5 --dataset /entry/data/data -o out.h5 --center-method friedel
  prenet-jax preprocess stack.npy --scan 128,128 -o out.h5 --output-dtype input
  prenet-jax preprocess scan.mib -o out.h5 --ellipse 1.04,32.5      # fixed ellipse, no pass 0
  prenet-jax preprocess scan.h5 -o out.h5 --ellipse-py4dstem 40.2,38.6,1.12
  prenet-jax preprocess scan.h5 -o out.h5 --refine                  # self-calibrated centres and ellipse
  prenet-jax preprocess scan.h5 -o out.h5 --refine centers          # the centres only
  prenet-jax preprocess scan.h5 -o out.h5 --descan plane            # centres from a plane fitted over the scan
  prenet-jax preprocess scan.h5 -o out.h5 --mask beamstop.npy       # a beam stop's shadow (True = bad pixel)
  prenet-jax preprocess session/ extra.mib -o processed/ --resume    # many files, one compile; skip finished ones

The output opens with py4DSTEM.read(OUTPUT); see docs/preprocess.md for the layout
and the conventions (centres (row, col) = (qx, qy); the corrected frames are centred
at ((H-1)/2, (W-1)/2)).
"""


#: The values ``--refine`` takes; bare, it means "all".
REFINE_CHOICES = ("all", "centers", "ellipse")


def bare_refine(argv: list[str]) -> list[str]:
    """``argv`` with a bare ``--refine`` followed by anything but one of its values
    written ``--refine=all``: argparse's optional value would otherwise take the next
    word, so ``--refine scan.h5 -o out.h5`` failed with "invalid choice: 'scan.h5'"."""
    out = list(argv)
    for i, tok in enumerate(out):
        if tok == "--":
            break
        if tok == "--refine" and (i + 1 == len(out) or out[i + 1] not in REFINE_CHOICES):
            out[i] = "--refine=all"
    return out


def add_preprocess_parser(sub) -> argparse.ArgumentParser:
    """Register ``prenet-jax preprocess`` on an argparse subparsers object."""
    p = sub.add_parser(
        "preprocess",
        help="denoise, recentre and undo the ellipse of a 4D-STEM file into a py4DSTEM-compatible HDF5 file",
        description="Denoise, recentre and undo the elliptical distortion of every frame of a 4D-STEM file, streaming it "
        "through the compiled pipeline, into a py4DSTEM-compatible (EMD 1.0) HDF5 file with diagnostic figures.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=_EPILOG,
    )
    p.add_argument(
        "input",
        nargs="+",
        help="HDF5 (py4DSTEM/EMD 1.0 or any 4-D dataset), .npy, or a detector file (.mib, .blo, .dm4, EMPAD .xml, ... with the io "
        "extra); several files, folders or quoted glob patterns process each file into the folder -o OUTDIR",
    )
    p.add_argument(
        "-o",
        "--output",
        required=True,
        help="the HDF5 file to write (refused if it exists, unless --overwrite); with several inputs, a folder (created if "
        "missing) that receives <name>_pre.h5 for each",
    )
    g = p.add_argument_group("input")
    g.add_argument(
        "--dataset", metavar="PATH", help="dataset inside an HDF5 file (default: the py4DSTEM DataCube, or the only 4-D dataset)"
    )
    g.add_argument("--scan", metavar="RX,RY", type=_scan, help="scan shape of a 3-D stack of frames (N, H, W), N = RX*RY")
    g.add_argument(
        "--negative",
        choices=("clip", "error"),
        default="clip",
        help="negative pixels (dark-subtracted data): flag the frame and treat them as 0 (default), or stop with an error",
    )
    g.add_argument(
        "--saturation",
        metavar="LEVEL",
        type=_saturation,
        default="auto",
        help="flag frames with a pixel at or above LEVEL; 'auto' (default): the integer dtype's maximum, none for float data; 'none'",
    )
    g = p.add_argument_group("stages and methods")
    g.add_argument(
        "--denoise-method",
        choices=_switchable(DENOISE),
        help="default: what the weights ship with (the bundled ones: gaussian, the denoiser network does not ship yet); "
        "scan: each frame with its aligned scan neighbours, window and blur chosen per frame by its estimated risk "
        "(on held-out simulated scans 3.9 / 4.0 dB above gaussian at 1e2 / 1e3 electrons, benchmarks/EVAL.md section 7); "
        "it needs counted electrons and falls back to gaussian, with a warning, where the frames are not",
    )
    g.add_argument(
        "--center-method",
        choices=_switchable(CENTER),
        help="default: what the weights ship with (the bundled ones: network, with Friedel symmetry where the two agree); "
        "without weights com (centre of mass masked to the direct disk, iterated)",
    )
    g.add_argument(
        "--ellipse-method",
        choices=_switchable(ELLIPSE),
        help="how pass 0 estimates the ellipse; default: what the weights ship with (the bundled ones: fit)",
    )
    g.add_argument(
        "--classical",
        action="store_true",
        help="classical methods at every stage not chosen otherwise (gaussian, com, fit), no weights loaded",
    )
    g.add_argument("--no-denoise", action="store_true", help="skip denoising (the frames keep their noise)")
    g.add_argument(
        "--gaussian-sigma",
        metavar="PX|auto",
        type=_sigma,
        help="sigma of --denoise-method gaussian: 'auto' (default) chooses it per frame from its counts (no filter where none helps), a number fixes it",
    )
    g.add_argument("--no-center", action="store_true", help="skip recentring")
    g.add_argument("--no-ellipse", action="store_true", help="skip the ellipse correction (and pass 0)")
    g.add_argument(
        "--ellipse",
        metavar="RATIO,ANGLE_DEG",
        help="undo this ellipse instead of estimating it: a/b >= 1 and the a-axis angle in degrees from +col toward +row (prenet-jax convention)",
    )
    g.add_argument(
        "--ellipse-py4dstem",
        metavar="A,B,THETA",
        help="the same in py4DSTEM's convention: semi-axes a, b (px) and theta (radians, from qx = row toward qy = col), e.g. from fit_ellipse_amorphous_ring",
    )
    g.add_argument(
        "--refine",
        nargs="?",
        const="all",
        choices=REFINE_CHOICES,
        help="self-calibration: refine every beam centre by Friedel symmetry (a frame where it fails keeps its estimate and is "
        "flagged 16) and the ellipse of pass 0 by the azimuthal variance of the recentred mean pattern, both through the "
        "warp; the summary shows the values before and after. '--refine centers' or '--refine ellipse' refines one of them "
        "(on held-out abTEM data the centres gain from the centre of mass, the ellipse does not: docs/preprocess.md). A given "
        "--ellipse is kept as given",
    )
    g.add_argument(
        "--mask",
        metavar="FILE",
        help="detector mask, True (1) = bad pixel: .npy, HDF5 (FILE.h5, or FILE.h5:/dataset when it holds several 2-D "
        "datasets) or TIFF, of the frames' shape. Masked pixels (dead, hot, panel gaps, a beam stop) are left out of the "
        "centre estimates with their mirror images, and filled from their neighbours before denoising",
    )
    g.add_argument(
        "--bad-pixels",
        choices=("auto", "none"),
        default="auto",
        help="auto (default): also mask the hot and dead pixels found in 256 frames sampled across the scan (the summary and "
        "the record list them); none: only --mask",
    )
    g.add_argument(
        "--descan",
        choices=DESCAN_MODES,
        help="fit a model of the beam centre across the scan (robust Huber fit; frames farther than 4 sigma from it are flagged "
        "64) after a first pass that finds every centre, then warp each frame about: its own centre (frame), the fitted plane "
        "or quadratic (plane, quadratic: best where the centre moves only with the descan coils), or the model plus each "
        "frame's own offset where it is significant (auto). The model and the residual maps go into the output and the "
        "centre figure. Default: each frame's own centre, one pass",
    )
    g.add_argument(
        "--interpolation",
        choices=("linear", "cubic"),
        help="resampling of the corrected frames (default: linear; cubic keeps sharp disks sharper)",
    )
    g.add_argument(
        "--weights", metavar="DIR", help="trained weights exported by training (weights.npz + manifest.json); default: the bundled ones"
    )
    g.add_argument(
        "--calibration-frames",
        metavar="N",
        type=_positive_int,
        help="frames sampled across the scan for the ellipse in pass 0 (default: enough for 1e7 counts at the data's dose, 256 to 4096)",
    )
    g = p.add_argument_group("output")
    g.add_argument(
        "--output-dtype",
        default="float32",
        metavar="DTYPE",
        help="float32 (default), 'input' (the input's dtype; integers are rounded and clipped to range, no wrap-around), or e.g. uint16",
    )
    g.add_argument(
        "--compression",
        choices=("gzip", "none"),
        default="gzip",
        help="chunk compression (gzip level 1 with byte shuffle; readable by every HDF5 tool)",
    )
    g.add_argument(
        "--pad",
        metavar="PX",
        type=_nonnegative_int,
        default=0,
        help="add PX px of zeros on each side of every output frame, so that a frame shifted by up to PX px loses no counts at the "
        "edge (the summary says how many frames lost over 1%% of their counts, flagged 32, and the PX that keeps them)",
    )
    g.add_argument("--overwrite", action="store_true", help="replace an existing output file and figures")
    g.add_argument(
        "--resume",
        action="store_true",
        help="skip an input whose output is already finished (a rerun after an interruption or a failure of a run of many files)",
    )
    g.add_argument("--no-diagnostics", action="store_true", help="do not write the diagnostic PNGs next to the output")
    g.add_argument("--no-checksum", action="store_true", help="do not record the input's SHA-256 (saves one read of the input file)")
    g = p.add_argument_group("execution")
    g.add_argument(
        "--batch-size",
        metavar="B",
        type=_positive_int,
        help="frames per compiled step (default 128; rounded up to a multiple of the devices)",
    )
    dev = g.add_mutually_exclusive_group()
    dev.add_argument("--devices", metavar="I,J", help="local accelerators to use, by number (default: all); see `prenet-jax info`")
    dev.add_argument("--cpu", action="store_true", help="run on the CPU even if an accelerator is present")
    g.add_argument(
        "--distributed",
        action="store_true",
        help="share one scan's rows among the processes of a jax.distributed job (SLURM srun, mpirun, or the three options "
        "below on every process); process 0 merges the parts into OUTPUT (docs/preprocess.md, infer/distributed/)",
    )
    g.add_argument("--coordinator", metavar="HOST:PORT", help="--distributed by hand: the address of process 0 (implies --distributed)")
    g.add_argument("--num-processes", type=_positive_int, metavar="N", help="--distributed by hand: how many processes")
    g.add_argument("--process-id", type=int, metavar="I", help="--distributed by hand: this process's number, 0 to N-1")
    g.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.set_defaults(func=run_preprocess, handles_signals=True)
    return p


def run_preprocess(args) -> int:
    """The ``preprocess`` subcommand: returns the exit status (module docstring)."""
    from ..preprocess import StreamError, is_finished_output, preprocess_file

    log = lambda s: print(s, flush=True)  # noqa: E731
    cancel = Cancel()
    with catch_signals(cancel):  # from here on a signal only sets the flag
        try:
            for signum in getattr(args, "startup_signals", ()):  # arrived while the command started
                cancel.set(signum)
            cancel.enter("startup")
            ellipse = _parse_ellipse(args)
            if args.no_ellipse and ellipse is not None:
                raise InputError("--no-ellipse and a fixed ellipse contradict each other; give one")
            if args.output_dtype != "input":
                try:
                    np.dtype(args.output_dtype)
                except TypeError:
                    raise InputError(
                        f"--output-dtype {args.output_dtype!r}: use float32, input, or an integer type such as uint16"
                    ) from None
            distributed = args.distributed or args.coordinator is not None
            if _is_batch(args):
                if distributed:
                    raise InputError("--distributed shares ONE scan among processes; give one input file (or run many files without it)")
                return _run_batch(args, ellipse, cancel, log)
            if distributed:  # before anything touches a device
                from ..preprocess import initialize_distributed

                rank, _ = initialize_distributed(args.coordinator, args.num_processes, args.process_id)
                if rank:
                    log = lambda s: None  # noqa: E731  (process 0 speaks for the job)
            source = args.input[0]
            if args.resume and not args.overwrite and Path(args.output).exists() and is_finished_output(Path(args.output)):
                log(f"{args.output} is finished (--resume): nothing to do")
                return 0
            # cheap checks first: a typo should not wait for the compiler
            open_input(source, args.dataset, args.scan).close()
            check_output_path(Path(args.output), args.overwrite)
            cancel.check()
            pipe, weights_id = _build_pipeline(args, log)
            cancel.check()
            if distributed:
                from ..preprocess import preprocess_distributed

                preprocess_distributed(
                    source, args.output, resume=args.resume, pipeline=pipe, overwrite=args.overwrite,
                    **_file_options(args, ellipse, weights_id), log=log, cancel=cancel,
                )  # fmt: skip
                return 0
            preprocess_file(
                source,
                args.output,
                pipeline=pipe,
                overwrite=args.overwrite,
                **_file_options(args, ellipse, weights_id),
                log=log,
                cancel=cancel,
            )
            return 0
        except Interrupted as e:
            print(f"{e.message()}: nothing was written, the input is unchanged", file=sys.stderr, flush=True)
            return e.exit_code
        except InputError as e:
            print(f"error: {e}", file=sys.stderr)
            return 2
        except (OutputError, StreamError) as e:
            print(f"error: {e}", file=sys.stderr)
            return 1
        except OSError as e:  # permissions changed mid-run, ...
            print(
                f"error: {e.strerror or e}{f': {e.filename}' if getattr(e, 'filename', None) else ''}; nothing was written", file=sys.stderr
            )
            return 1


def _is_batch(args) -> bool:
    """Many files: several inputs, a folder or a glob pattern as input, or a folder as output."""
    import glob

    first = args.input[0]
    if len(args.input) > 1 or Path(first).is_dir() or (glob.has_magic(first) and not Path(first).exists()):
        return True
    return args.output.endswith(("/", os.sep)) or Path(args.output).is_dir()


def _file_options(args, ellipse, weights_id: str) -> dict:
    """The keyword arguments of :func:`preprocess_file` that the options give (the same
    for every file of a run)."""
    options = {k: v for k, v in vars(args).items() if k != "func"}
    options["_argv"] = [shlex.quote(a) for a in sys.argv]
    return dict(
        dataset=args.dataset,
        scan=args.scan,
        ellipse=ellipse,
        output_dtype=args.output_dtype,
        diagnostics=not args.no_diagnostics,
        compression=args.compression,
        saturation=args.saturation,
        negative=args.negative,
        refine=args.refine,
        pad=args.pad,
        descan=args.descan,
        mask=args.mask,
        bad_pixels=args.bad_pixels,
        checksum=not args.no_checksum,
        weights_id=weights_id,
        options=options,
        progress=not args.no_progress,
    )


def _run_batch(args, ellipse, cancel: Cancel, log) -> int:
    """Many files into the folder ``-o``: one pipeline, one compile per frame shape; a
    failed file is reported and skipped (exit status: module docstring)."""
    from ..preprocess import batch_outputs, expand_inputs, preprocess_files

    if args.dataset is not None or args.scan is not None:
        log("note: --dataset and --scan apply to every input")
    files = expand_inputs(args.input)  # cheap checks first: a typo should not wait for the compiler
    batch_outputs(files, Path(args.output))
    cancel.check()
    pipe, weights_id = _build_pipeline(args, log)
    cancel.check()
    try:
        statuses = preprocess_files(
            files, args.output, pipeline=pipe, resume=args.resume, overwrite=args.overwrite, log=log, cancel=cancel,
            **_file_options(args, ellipse, weights_id),
        )  # fmt: skip
    except Interrupted as e:
        print(
            f"{e.message()}: the file in progress was removed; the finished outputs stay (rerun with --resume)", file=sys.stderr, flush=True
        )
        return e.exit_code
    failed = [s for s in statuses if s.status == "failed"]
    if not failed:
        return 0
    print(f"error: {len(failed)} of {len(statuses)} files failed (see the table above)", file=sys.stderr)
    return 2 if all(s.problem == "input" for s in failed) else 1
