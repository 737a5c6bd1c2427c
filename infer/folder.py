"""Preprocess every 4D-STEM file of a folder in one process.

    python infer/folder.py RAW_DIR -o OUT_DIR                      # all local accelerators
    python infer/folder.py RAW_DIR -o OUT_DIR --ellipse 1.04,32.5  # one calibration for the session
    python infer/folder.py RAW_DIR -o OUT_DIR --cpu --classical --summary run.json

Why not a shell loop over ``prenet-jax preprocess``: the pipeline is built once and its
compiled step is reused by every file of the same frame shape (one compilation for the
whole session instead of one per file). Each ``RAW_DIR/NAME.ext`` becomes
``OUT_DIR/NAME_pre.h5`` (py4DSTEM-compatible, with its diagnostic figures); an output
that exists is skipped, so rerunning after an interruption only does what is missing
(outputs are written atomically: one that exists is complete). A file that fails (corrupt,
truncated, not 4-D, ...) is reported and the others go on; the exit status is then 1.

Devices: every batch is split over all local accelerators (``Pipeline(devices=...)``,
data-parallel with a ``NamedSharding``); ``--devices 0,1`` picks some, ``--cpu`` the CPU.
To split the *files* over accelerators instead (one process each, each with its own
reader and writer: better when reading and writing limit the rate), run one process per
accelerator with ``--shard K/N`` (``infer/split_files.py`` does that).

SIGINT or SIGTERM stop the file in progress without leaving a partial output (the
signal then ends this process: SIGTERM with status 143); a rerun redoes that file.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

#: Files taken by default: HDF5 / py4DSTEM, .npy and the usual detector formats
#: (RosettaSciIO, ``pip install 'prenet-jax[io]'``). ``--glob`` takes others (EMPAD ``*.xml``).
DETECTOR_SUFFIXES = (".npy", ".mib", ".blo", ".dm3", ".dm4", ".mrc", ".ser", ".tvips")
OUTPUT_SUFFIX = "_pre.h5"


def find_inputs(folder: Path, pattern: str | None, shard: tuple[int, int]) -> list[Path]:
    """The input files of ``folder`` this process takes, sorted by name.

    Parameters
    ----------
    folder : where the raw files are (not searched recursively)
    pattern : a glob such as ``"*.xml"``; default every file with a supported suffix
    shard : ``(k, n)``: take every n-th file starting at the k-th

    Returns
    -------
    The paths, outputs of an earlier run (``*_pre.h5``) left out.
    """
    from prenet_jax.io import HDF5_SUFFIXES

    suffixes = HDF5_SUFFIXES + DETECTOR_SUFFIXES
    files = sorted(folder.glob(pattern)) if pattern else sorted(p for p in folder.iterdir() if p.suffix.lower() in suffixes)
    files = [p for p in files if p.is_file() and not p.name.endswith(OUTPUT_SUFFIX)]
    k, n = shard
    return files[k::n]


def build_pipeline(weights: str | None, classical: bool, devices: list, batch_size: int | None):
    """The pipeline every file goes through, and the id of its weights for the provenance.

    Parameters
    ----------
    weights : exported weights (``weights.npz`` + ``manifest.json``); default the bundled
        ones, else the classical methods
    classical : use the classical methods (Gaussian, centre of mass, edge fit) whatever
        weights exist
    devices : the JAX devices each batch is split over
    batch_size : frames per compiled step (all devices together); default the weights'

    Returns
    -------
    ``(pipeline, weights_id)``
    """
    from prenet_jax import Pipeline, PipelineConfig
    from prenet_jax.pipeline import WEIGHTS_DIR, load_weights

    config, params, weights_id = PipelineConfig.classical(), {}, "none (classical methods)"
    if not classical:
        path = Path(weights) if weights else WEIGHTS_DIR / "release"
        try:
            config, params, manifest = load_weights(path)
            weights_id = f"{manifest.get('name') or path.name} ({path})"
        except FileNotFoundError:
            if weights:
                raise
            print("note: this installation ships no trained weights: using the classical methods", flush=True)
    if batch_size:
        config = config.replace(batch_size=batch_size)
    return Pipeline(config, params, devices=devices), weights_id


def select_devices(cpu: bool, numbers: str | None) -> list:
    """``--cpu``, ``--devices I,J`` or every local accelerator."""
    import jax

    if cpu:
        return jax.devices("cpu")
    local = jax.local_devices()
    if not numbers:
        return local
    try:
        return [local[int(i)] for i in numbers.split(",")]
    except (ValueError, IndexError):
        raise SystemExit(f"--devices {numbers}: expected numbers among 0..{len(local) - 1}, e.g. --devices 0,1") from None


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("folder", type=Path, help="folder of raw 4D-STEM files")
    ap.add_argument("-o", "--output", type=Path, required=True, help="folder of the outputs (created)")
    ap.add_argument("--glob", default=None, help="take the files matching this pattern, e.g. '*.xml' (default: every supported suffix)")
    ap.add_argument("--shard", default="0/1", metavar="K/N", help="take every N-th file from the K-th (one process of N)")
    ap.add_argument(
        "--weights", default=None, metavar="DIR", help="exported weights (default: the bundled ones, else the classical methods)"
    )
    ap.add_argument("--classical", action="store_true", help="classical methods whatever weights exist")
    ap.add_argument(
        "--ellipse",
        default=None,
        metavar="RATIO,ANGLE_DEG",
        help="undo this ellipse in every file (no pass 0), e.g. measured once on a standard",
    )
    ap.add_argument("--output-dtype", default="float32", help="float32, input, or an integer dtype")
    ap.add_argument("--batch-size", type=int, default=None, help="frames per compiled step, all devices together")
    dev = ap.add_mutually_exclusive_group()
    dev.add_argument("--devices", default=None, metavar="I,J", help="local accelerators to split each batch over (default: all)")
    dev.add_argument("--cpu", action="store_true", help="run on the CPU")
    ap.add_argument("--no-diagnostics", action="store_true", help="no PNG figures next to each output")
    ap.add_argument("--summary", type=Path, default=None, help="write what was done, skipped and failed as JSON")
    args = ap.parse_args(argv)
    if not args.folder.is_dir():
        ap.error(f"{args.folder} is not a folder")
    try:
        k, n = (int(v) for v in args.shard.split("/"))
        if not 0 <= k < n:
            raise ValueError
    except ValueError:
        ap.error(f"--shard {args.shard!r}: expected K/N with 0 <= K < N, e.g. 0/4")
    args.shard = (k, n)
    if args.ellipse:
        try:
            ratio, angle = (float(v) for v in args.ellipse.split(","))
        except ValueError:
            ap.error(f"--ellipse {args.ellipse!r}: expected RATIO,ANGLE_DEG, e.g. 1.04,32.5")
        args.ellipse = (ratio, angle)
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    from prenet_jax import Ellipse
    from prenet_jax.preprocess import preprocess_file

    inputs = find_inputs(args.folder, args.glob, args.shard)
    args.output.mkdir(parents=True, exist_ok=True)
    todo = [(p, args.output / (p.stem + OUTPUT_SUFFIX)) for p in inputs]
    skipped = [str(p) for p, out in todo if out.exists()]
    todo = [(p, out) for p, out in todo if not out.exists()]
    print(f"{len(inputs)} files: {len(skipped)} done before, {len(todo)} to do", flush=True)

    ellipse = Ellipse(args.ellipse[0], math.radians(args.ellipse[1])) if args.ellipse else None
    done, failed = [], []
    if todo:
        pipe, weights_id = build_pipeline(args.weights, args.classical, select_devices(args.cpu, args.devices), args.batch_size)
        kinds = ", ".join(sorted({d.device_kind for d in pipe.devices}))
        print(f"each batch of {pipe.batch_size} frames split over {len(pipe.devices)} device(s) ({kinds})", flush=True)
        for i, (src, out) in enumerate(todo, 1):
            print(f"[{i}/{len(todo)}] {src.name} -> {out}", flush=True)
            t0 = time.perf_counter()
            try:
                res = preprocess_file(
                    src, out, pipeline=pipe, ellipse=ellipse, output_dtype=args.output_dtype,
                    diagnostics=not args.no_diagnostics, weights_id=weights_id, progress=False,
                    log=lambda s: None,  # the one line below per file; details are in the output's metadata
                )  # fmt: skip
            except Exception as e:  # noqa: BLE001 - one bad file must not stop the session
                failed.append({"input": str(src), "error": f"{type(e).__name__}: {e}"})
                print(f"  FAILED: {type(e).__name__}: {e}", file=sys.stderr, flush=True)
                continue
            secs = time.perf_counter() - t0
            done.append(
                {
                    "input": str(src),
                    "output": str(out),
                    "frames": res.frames,
                    "seconds": round(secs, 2),
                    "ellipse_ratio": res.ellipse.ratio,
                    "ellipse_angle_deg": math.degrees(res.ellipse.angle),
                }
            )
            print(
                f"  {res.frames} frames in {secs:.1f} s; ellipse a/b {res.ellipse.ratio:.4f} at {math.degrees(res.ellipse.angle):.1f} deg",
                flush=True,
            )

    print(f"done {len(done)}, skipped {len(skipped)} (output exists), failed {len(failed)}", flush=True)
    for f in failed:
        print(f"failed: {f['input']}: {f['error']}", file=sys.stderr, flush=True)
    if args.summary:
        args.summary.write_text(json.dumps({"done": done, "skipped": skipped, "failed": failed}, indent=2))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
