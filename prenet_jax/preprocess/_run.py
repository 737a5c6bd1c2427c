"""``prenet-jax preprocess INPUT -o OUTPUT``: a detector file in, a corrected
py4DSTEM-compatible HDF5 file and diagnostic figures out.

Pass 0 estimates the dataset's ellipse from frames sampled across the scan
(:meth:`prenet_jax.Pipeline.calibrate`), unless one is given; pass 1 streams every
frame through the compiled step (:func:`prenet_jax.preprocess._stream.stream`). See
``docs/preprocess.md``.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import json
import shlex
import math
import os
import signal
import sys
import threading
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np

from ..config import PipelineConfig
from ..conventions import Ellipse
from ..io._readers import EMDWriter, InputError, check_output_path, open_input, sha256_file
from ._stream import FLAG_NAMES, FLAG_NEGATIVE, FLAG_SATURATED, FLAGS_EXCLUDED, output_dtype_for, stream
from ..pipeline._validate import MIN_FRAME_SIDE

__all__ = ["preprocess_file", "FileResult", "add_preprocess_parser", "run_preprocess", "ellipse_to_py4dstem", "ellipse_from_py4dstem"]

_CLASSICAL = {"denoise_method": "gaussian", "center_method": "com", "ellipse_method": "fit"}


# ----------------------------------------------------------------------------- conventions


def ellipse_to_py4dstem(ellipse: Ellipse, radius: float) -> tuple[float, float, float]:
    """Our ellipse -> py4DSTEM's ``(a, b, theta)``.

    py4DSTEM's ``x`` is ``qx``, the FIRST detector axis (row), and ``theta`` is
    the angle of the a-axis from ``qx`` towards ``qy`` (col): the a-axis is
    ``(qx, qy) = (cos theta, sin theta)``. Ours is ``(col, row) = (cos angle,
    sin angle)``. So ``theta = (pi/2 - angle) mod pi``. ``radius`` is ``sqrt(a b)``.
    """
    a, b, _ = ellipse.axes(radius)
    return float(a), float(b), float(math.fmod(math.pi / 2 - ellipse.angle + 2 * math.pi, math.pi))


def ellipse_from_py4dstem(a: float, b: float, theta: float) -> Ellipse:
    """py4DSTEM's ``(a, b, theta)`` (radians, from qx=row toward qy=col) -> our :class:`Ellipse`."""
    return Ellipse.from_axes(a, b, math.pi / 2 - theta)


# ----------------------------------------------------------------------------- library entry


@dataclasses.dataclass
class FileResult:
    """Summary of :func:`preprocess_file`.

    Attributes
    ----------
    output : the written file
    figures : diagnostic PNGs written
    ellipse : the distortion undone (our convention)
    ellipse_py4dstem : ``(a, b, theta)`` of it in py4DSTEM's convention
    residual_ratio : a/b of the ellipse fitted to the corrected mean pattern
    centers, centers_after, flags, mean_before, mean_after : see :class:`prenet_jax.preprocess._stream.StreamStats`
    seconds : wall, pass0, read, compute, write
    frames : frames processed
    lines : the summary printed
    """

    output: Path
    figures: list
    ellipse: Ellipse
    ellipse_py4dstem: tuple
    residual_ratio: float
    centers: np.ndarray
    centers_after: np.ndarray
    flags: np.ndarray
    mean_before: np.ndarray
    mean_after: np.ndarray
    seconds: dict
    frames: int
    lines: list


def _min_side(cfg: PipelineConfig) -> int:
    side = MIN_FRAME_SIDE
    if cfg.denoise_method == "network":
        side = max(side, 2**cfg.denoiser.depth)
    if cfg.center_method == "network":
        side = max(side, 2**cfg.center_net.depth)
    return side


def _fit_mean(mean: np.ndarray) -> tuple[float, float]:
    """(a/b, sqrt(a b)) of the steepest edge of a centred mean pattern; NaN if none."""
    import jax
    import jax.numpy as jnp

    from ..ops._ellipse_fit import fit_ellipse_edge

    try:
        fit = jax.jit(fit_ellipse_edge)(jnp.asarray(mean, jnp.float32))  # one compile, not one per op
        a, b = float(fit["a"]), float(fit["b"])
    except Exception:
        return float("nan"), float("nan")
    if not (np.isfinite(a) and np.isfinite(b) and b > 0):
        return float("nan"), float("nan")
    return a / b, math.sqrt(a * b)


def _sha_thread(path: Path, stop: threading.Event):
    box: dict[str, Any] = {}

    def run():
        try:
            box["sha256"] = sha256_file(path, stop)
        except OSError as e:
            box["error"] = str(e)

    t = threading.Thread(target=run, name="prenet-sha256", daemon=True)
    t.start()
    return t, box


def preprocess_file(
    input: str | os.PathLike,
    output: str | os.PathLike,
    *,
    pipeline=None,
    dataset: str | None = None,
    scan: tuple[int, int] | None = None,
    ellipse: Ellipse | None = None,
    output_dtype: str = "float32",
    overwrite: bool = False,
    diagnostics: bool = True,
    compression: str = "gzip",
    saturation: float | str | None = "auto",
    negative: str = "clip",
    checksum: bool = True,
    block_bytes: int = 32 << 20,
    weights_id: str = "none (classical methods)",
    options: dict | None = None,
    progress: bool = True,
    log: Callable[[str], None] = print,
):
    """Preprocess a 4D-STEM file into a py4DSTEM-compatible HDF5 file.

    Parameters
    ----------
    input : HDF5 / py4DSTEM EMD 1.0 / ``.npy`` / a RosettaSciIO detector format
    output : the ``.h5`` file to write (atomically; refused if it exists unless ``overwrite``)
    pipeline : a :class:`prenet_jax.Pipeline`; default the classical methods
    dataset, scan : see :func:`prenet_jax.io._readers.open_input`
    ellipse : a known distortion; default estimated in pass 0 (or none when the
        pipeline's ellipse method is ``"none"``)
    output_dtype : ``"float32"``, ``"input"`` or an integer dtype name (rounded, clipped)
    diagnostics : write the four PNGs next to the output
    compression : ``"gzip"`` or ``"none"``
    saturation : pixel level flagged as saturated: ``"auto"`` (the integer dtype's
        maximum; none for floats), a number, or None
    negative : ``"clip"`` (flag, treat as 0) or ``"error"``
    checksum : record the input's SHA-256 (read concurrently with processing)
    block_bytes : size of one read; host memory stays a small multiple of it
    weights_id, options : provenance to record
    progress : show progress bars
    log : where the notices and the summary go

    Returns
    -------
    :class:`FileResult`
    """
    import jax

    from ._diagnostics import diagnostic_paths, write_diagnostics
    from ..pipeline._pipeline import Pipeline
    from .. import __version__

    t_all = time.perf_counter()
    input, output = Path(input), Path(output)
    if negative not in ("clip", "error"):
        raise InputError(f"negative={negative!r}: use 'clip' or 'error'")
    check_output_path(output, overwrite)
    figs = diagnostic_paths(output) if diagnostics else []
    if not overwrite:
        taken = [p for p in figs if p.exists()]
        if taken:
            raise InputError(f"diagnostic figure {taken[0]} exists; pass --overwrite, --no-diagnostics, or choose another output name")
    if output.resolve() == input.resolve():
        raise InputError("the output would replace the input; choose another output name")
    if pipeline is None:
        pipeline = Pipeline.classical(negative="clip")
    cfg = pipeline.config
    if cfg.negative != "clip":  # negatives are flagged and clipped by the stream, refused there if asked
        pipeline = Pipeline(cfg.replace(negative="clip"), pipeline.params, devices=pipeline.devices)
        cfg = pipeline.config

    source = open_input(input, dataset, scan)
    stop_sha = threading.Event()
    try:
        rx, ry, h, w = source.shape
        side = _min_side(cfg)
        if min(h, w) < side:
            raise InputError(
                f"frames are {h}x{w} px; the {'network methods need' if side > MIN_FRAME_SIDE else 'pipeline needs'} at least {side}x{side}. "
                f"Is {source.dataset or 'the array'} ordered (Rx, Ry, Qx, Qy)? Scan axes must come first."
            )
        out_dt = output_dtype_for(output_dtype, source.dtype)
        if saturation == "auto":
            sat = float(np.iinfo(source.dtype).max) if source.dtype.kind in "iu" else None
        else:
            sat = None if saturation is None else float(saturation)
        for note in source.notes:
            log(f"note: {note}")
        devs = pipeline.devices
        kinds = sorted({d.platform for d in devs})
        log(f"input: {source.describe()}")
        log(
            f"methods: denoise={cfg.denoise_method}, center={cfg.center_method}, ellipse={'fixed' if ellipse is not None else cfg.ellipse_method}; "
            f"interpolation {cfg.interpolation}; batch {pipeline.batch_size} on {len(devs)} {'/'.join(kinds)} device(s)"
        )
        if kinds == ["cpu"]:
            log(f"note: running on the CPU ({os.cpu_count()} cores); a GPU is much faster for full-size cubes")
        sha_t, sha_box = _sha_thread(input, stop_sha) if checksum else (None, {})

        # ---- pass 0: the dataset's ellipse
        t0 = time.perf_counter()
        mean0 = None
        source_of_ellipse = "fixed"
        if ellipse is None:
            if cfg.ellipse_method == "none":
                ellipse, source_of_ellipse = Ellipse.identity(), "none"
            else:
                from ..io._readers import FrameView

                n0 = min(source.n_frames, cfg.calibration_frames)
                bar = _bar(progress, n0, "pass 0 (ellipse)")
                view = FrameView(source, on_read=bar.update if bar else None, sanitize=True, negative=negative)
                try:
                    ellipse, mean0 = pipeline.calibrate(view, n0)
                except InputError:
                    raise
                except ValueError as e:
                    raise InputError(f"{e}. Give the ellipse with --ellipse RATIO,ANGLE_DEG, or skip it with --no-ellipse") from None
                finally:
                    if bar:
                        bar.close()
                source_of_ellipse = cfg.ellipse_method
                log(f"pass 0: ellipse from {n0} frames sampled across the scan: ratio {ellipse.ratio:.4f}, angle {math.degrees(ellipse.angle):.2f} deg ({time.perf_counter() - t0:.1f} s)")
        t_pass0 = time.perf_counter() - t0

        # ---- pass 1: stream every frame
        with EMDWriter(output, source.shape, out_dt, overwrite=overwrite, compression=compression) as writer:
            bar = _bar(progress, source.n_frames, "preprocess")
            try:
                st = stream(source, pipeline, ellipse.matrix(), writer, out_dtype=out_dt, saturation=sat, negative=negative, block_bytes=block_bytes, progress=bar.update if bar else None)
            finally:
                if bar:
                    bar.close()
            good = (st.flags & FLAGS_EXCLUDED) == 0
            if st.n_good == 0:
                log("warning: every frame is flagged empty or non-finite: the means and figures are empty")
            residual, radius = _fit_mean(st.mean_after)
            if not np.isfinite(radius):
                radius = 1.0  # no edge to measure: a, b are then the axes of a unit circle
            a, b, theta = ellipse_to_py4dstem(ellipse, radius)
            c0 = ((h - 1) / 2.0, (w - 1) / 2.0)
            sha = None
            if sha_t is not None:
                sha_t.join()
                sha = sha_box.get("sha256")
            counts = {bit: int(((st.flags & bit) != 0).sum()) for bit in FLAG_NAMES}
            cal = dict(source.calibration)
            cal.setdefault("Q_pixel_size", 1.0)
            cal.setdefault("R_pixel_size", 1.0)
            cal.setdefault("Q_pixel_units", "pixels")
            cal.setdefault("R_pixel_units", "pixels")
            # the calibration describes the CORRECTED cube: origin at the frame centre, circular
            cal.update(
                qx0=np.full((rx, ry), c0[0]),
                qy0=np.full((rx, ry), c0[1]),
                qx0_mean=float(c0[0]),
                qy0_mean=float(c0[1]),
                qx0_shift=np.zeros((rx, ry)),
                qy0_shift=np.zeros((rx, ry)),
            )
            if cfg.ellipse_method != "none" or source_of_ellipse == "fixed":
                cal.update(a=float(radius), b=float(radius), theta=0.0)
            options = dict(options or {})
            prov = {
                "description": "beam centres and ellipse measured in the INPUT frames (py4DSTEM convention: qx = first detector axis = row); the cube under datacube/ is corrected",
                "qx0": st.centers[..., 0],
                "qy0": st.centers[..., 1],
                "qx0_after": st.centers_after[..., 0],
                "qy0_after": st.centers_after[..., 1],
                "frame_center": np.asarray(c0),
                "flags": st.flags,
                "flag_bits": "; ".join(f"{bit}: {name}" for bit, name in FLAG_NAMES.items()) + "; frames flagged 1 or 2 are left out of the means",
                "a": a,
                "b": b,
                "theta": theta,
                "ellipse_ratio": float(ellipse.ratio),
                "ellipse_angle": float(ellipse.angle),
                "ellipse_angle_convention": "prenet-jax: a-axis angle in [0, pi) rad from +col (x) toward +row (y); py4DSTEM theta = (pi/2 - angle) mod pi",
                "ellipse_radius": float(radius),
                "ellipse_source": source_of_ellipse,
                "residual_ellipse_ratio": float(residual),
                "mean_before": st.mean_before.astype(np.float32),
                "mean_after": st.mean_after.astype(np.float32),
                "frames_in_means": int(st.n_good),
                "prenet_jax_version": __version__,
                "jax_version": jax.__version__,
                "devices": ", ".join(f"{d.platform}:{d.id} {d.device_kind}" for d in devs),
                "weights_id": weights_id,
                "config_json": json.dumps(cfg.to_dict(), default=str),
                "options_json": json.dumps(options, default=str),
                "command": " ".join(options.get("_argv", [])) or "prenet_jax.preprocess_file",
                "input_path": str(input.resolve()),
                "input_dataset": source.dataset or "",
                "input_format": source.kind,
                "input_shape": np.asarray(source.shape, np.int64),
                "input_dtype": str(source.dtype),
                "input_sha256": sha or "not computed",
                "output_dtype": str(out_dt),
                "saturation_level": float("nan") if sat is None else float(sat),
                "created_utc": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            }
            writer.write_metadata(cal, prov)
            # the figures first, then the file: a failure leaves neither
            written = []
            measures = None
            if diagnostics:
                title = f"{input.name}" + (f":{source.dataset}" if source.dataset else "")
                written, measures = write_diagnostics(output, st.mean_before, st.mean_after, st.centers, st.centers_after, good, title)
            try:
                writer.commit()
            except BaseException:
                for p in written:
                    p.unlink(missing_ok=True)
                raise
    except BaseException:
        stop_sha.set()
        raise
    finally:
        source.close()

    # ---- summary
    n = source.n_frames
    secs = dict(st.seconds, pass0=t_pass0, total=time.perf_counter() - t_all)
    p0 = f" after pass 0's {t_pass0:.1f} s" if mean0 is not None else ""
    lines = [f"done: {n} frames in {secs['wall']:.1f} s ({n / max(secs['wall'], 1e-9):.0f} frames/s){p0}; busy: read {secs['read']:.1f} s, compute {secs['compute']:.1f} s, write {secs['write']:.1f} s"]
    sel = good & np.isfinite(st.centers).all(-1)
    if sel.any():
        sb = st.centers[sel].std(0)
        sa = (st.centers_after[sel]).std(0)
        off = np.abs(st.centers_after[sel] - np.asarray(c0)).mean(0)
        lines.append(f"beam centre spread (std over the scan): before row {sb[0]:.3f} px, col {sb[1]:.3f} px; after row {sa[0]:.3f} px, col {sa[1]:.3f} px (mean |offset| from the frame centre {off[0]:.3f}, {off[1]:.3f} px)")
    lines.append(
        f"ellipse ({source_of_ellipse}): ratio a/b {ellipse.ratio:.4f}, a-axis {math.degrees(ellipse.angle):.2f} deg from +col toward +row "
        f"[py4DSTEM: a {a:.3f} px, b {b:.3f} px, theta {theta:.4f} rad]; after correction the mean pattern's ratio is {residual:.4f}"
    )
    if measures is not None:
        lines.append(f"radial anisotropy of the mean pattern (azimuthal std / mean): before {measures['before']['anisotropy']:.4f}, after {measures['after']['anisotropy']:.4f}")
    flag_txt = ", ".join(f"{counts[bit]} {name}" for bit, name in FLAG_NAMES.items())
    lines.append(f"frames flagged: {flag_txt}" + (f" (saturation level {sat:g})" if sat is not None else ""))
    if counts[FLAG_NEGATIVE]:
        lines.append(f"note: {counts[FLAG_NEGATIVE]} frames had negative pixels (min {st.raw_min:.4g}); they were treated as zero counts (dark-subtracted data?)")
    if counts[FLAG_SATURATED] and sat is not None:
        lines.append(f"note: {counts[FLAG_SATURATED]} frames reach the saturation level {sat:g}: their direct-beam intensity is clipped")
    size = output.stat().st_size
    lines.append(f"wrote {output} ({size / 2**20:.1f} MiB)" + (f" and {len(written)} figures: {', '.join(p.name for p in written)}" if written else ""))
    for line in lines:
        log(line)
    return FileResult(
        output=output,
        figures=written,
        ellipse=ellipse,
        ellipse_py4dstem=(a, b, theta),
        residual_ratio=residual,
        centers=st.centers,
        centers_after=st.centers_after,
        flags=st.flags,
        mean_before=st.mean_before,
        mean_after=st.mean_after,
        seconds=secs,
        frames=n,
        lines=lines,
    )


def _bar(enabled: bool, total: int, desc: str):
    if not enabled:
        return None
    from tqdm.auto import tqdm

    # disable=None: no bar when stderr is not a terminal (logs, CI)
    return tqdm(total=total, desc=desc, unit="frame", unit_scale=False, dynamic_ncols=True, disable=None, smoothing=0.1)


# ----------------------------------------------------------------------------- command line


def _pair(text: str, name: str, kind=float) -> tuple:
    try:
        vals = tuple(kind(v) for v in text.replace(" ", "").split(","))
    except ValueError:
        vals = ()
    return vals


def _parse_ellipse(args) -> Ellipse | None:
    if args.ellipse and args.ellipse_py4dstem:
        raise InputError("give either --ellipse or --ellipse-py4dstem, not both")
    if args.ellipse:
        v = _pair(args.ellipse, "--ellipse")
        if len(v) != 2 or not all(map(math.isfinite, v)) or v[0] <= 0:
            raise InputError(f"--ellipse {args.ellipse!r}: expected RATIO,ANGLE_DEG with RATIO = a/b > 0, e.g. --ellipse 1.05,30")
        return Ellipse(v[0], math.radians(v[1]))
    if args.ellipse_py4dstem:
        v = _pair(args.ellipse_py4dstem, "--ellipse-py4dstem")
        if len(v) != 3 or not all(map(math.isfinite, v)) or v[0] <= 0 or v[1] <= 0:
            raise InputError(f"--ellipse-py4dstem {args.ellipse_py4dstem!r}: expected A,B,THETA (semi-axes in px, theta in radians as py4DSTEM gives them), e.g. 30.5,29.8,0.42")
        return ellipse_from_py4dstem(*v)
    return None


def _select_devices(args):
    import jax

    if args.cpu:
        return jax.devices("cpu")
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
        raise InputError(f"--devices {args.devices}: this machine has {len(devs)} local device(s) ({listing}); give distinct numbers among them")
    return [devs[i] for i in ids]


def _build_pipeline(args, log):
    """The pipeline the options ask for, and the id of its weights."""
    from ..pipeline._pipeline import Pipeline
    from ..pipeline._weights import WEIGHTS_DIR, load_weights

    devices = _select_devices(args)
    chosen = {"denoise_method": args.denoise_method, "center_method": args.center_method, "ellipse_method": args.ellipse_method}
    switched_off = {"denoise_method": args.no_denoise, "center_method": args.no_center, "ellipse_method": args.no_ellipse or bool(args.ellipse or args.ellipse_py4dstem)}
    wanted = {k: ("none" if switched_off[k] else v) for k, v in chosen.items()}
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
                raise InputError(f"{names}: this installation ships no trained weights; give exported weights with --weights DIR, or use the classical methods (--denoise-method gaussian --center-method com --ellipse-method fit)")
            log("note: no trained weights ship with this version: using the classical methods (gaussian denoise, centre of mass, edge-fit ellipse)")
    if config is None:
        config = PipelineConfig.classical()
        wanted = {k: (_CLASSICAL[k] if v is None else v) for k, v in wanted.items()}
    else:
        wanted = {k: ("network" if v is None else v) for k, v in wanted.items()}
    changes: dict[str, Any] = dict(wanted, negative="clip")
    if args.interpolation:
        changes["interpolation"] = args.interpolation
    if args.batch_size:
        changes["batch_size"] = args.batch_size
    if args.calibration_frames:
        changes["calibration_frames"] = args.calibration_frames
    try:
        config = config.replace(**changes)
        pipe = Pipeline(config, params, devices=devices)
    except ValueError as e:
        raise InputError(str(e)) from None
    return pipe, weights_id


def _positive_int(text: str) -> int:
    try:
        v = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if v < 1:
        raise argparse.ArgumentTypeError(f"{v}: must be at least 1")
    return v


def _scan(text: str) -> tuple[int, int]:
    v = _pair(text, "--scan", int)
    if len(v) != 2 or min(v) < 1:
        raise argparse.ArgumentTypeError(f"{text!r}: expected RX,RY, e.g. 256,256")
    return v  # type: ignore[return-value]


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

The output opens with py4DSTEM.read(OUTPUT); see docs/preprocess.md for the layout
and the conventions (centres (row, col) = (qx, qy); the corrected frames are centred
at ((H-1)/2, (W-1)/2)).
"""


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
    p.add_argument("input", help="HDF5 (py4DSTEM/EMD 1.0 or any 4-D dataset), .npy, or a detector file (.mib, .blo, .dm4, EMPAD .xml, ... with the io extra)")
    p.add_argument("-o", "--output", required=True, help="the HDF5 file to write (refused if it exists, unless --overwrite)")
    g = p.add_argument_group("input")
    g.add_argument("--dataset", metavar="PATH", help="dataset inside an HDF5 file (default: the py4DSTEM DataCube, or the only 4-D dataset)")
    g.add_argument("--scan", metavar="RX,RY", type=_scan, help="scan shape of a 3-D stack of frames (N, H, W), N = RX*RY")
    g.add_argument("--negative", choices=("clip", "error"), default="clip", help="negative pixels (dark-subtracted data): flag the frame and treat them as 0 (default), or stop with an error")
    g.add_argument("--saturation", metavar="LEVEL", type=_saturation, default="auto", help="flag frames with a pixel at or above LEVEL; 'auto' (default): the integer dtype's maximum, none for float data; 'none'")
    g = p.add_argument_group("stages and methods")
    g.add_argument("--denoise-method", choices=("network", "gaussian"), help="default: network if trained weights are available, else gaussian")
    g.add_argument("--center-method", choices=("network", "com", "friedel"), help="default: network if trained weights are available, else com (thresholded centre of mass)")
    g.add_argument("--ellipse-method", choices=("network", "fit"), help="how pass 0 estimates the ellipse; default: network if weights are available, else fit")
    g.add_argument("--no-denoise", action="store_true", help="skip denoising (the frames keep their noise)")
    g.add_argument("--no-center", action="store_true", help="skip recentring")
    g.add_argument("--no-ellipse", action="store_true", help="skip the ellipse correction (and pass 0)")
    g.add_argument("--ellipse", metavar="RATIO,ANGLE_DEG", help="undo this ellipse instead of estimating it: a/b >= 1 and the a-axis angle in degrees from +col toward +row (prenet-jax convention)")
    g.add_argument("--ellipse-py4dstem", metavar="A,B,THETA", help="the same in py4DSTEM's convention: semi-axes a, b (px) and theta (radians, from qx = row toward qy = col), e.g. from fit_ellipse_amorphous_ring")
    g.add_argument("--interpolation", choices=("linear", "cubic"), help="resampling of the corrected frames (default: linear; cubic keeps sharp disks sharper)")
    g.add_argument("--weights", metavar="DIR", help="trained weights exported by training (weights.npz + manifest.json); default: the bundled ones")
    g.add_argument("--calibration-frames", metavar="N", type=_positive_int, help="frames sampled across the scan for the ellipse in pass 0 (default 4096)")
    g = p.add_argument_group("output")
    g.add_argument("--output-dtype", default="float32", metavar="DTYPE", help="float32 (default), 'input' (the input's dtype; integers are rounded and clipped to range, no wrap-around), or e.g. uint16")
    g.add_argument("--compression", choices=("gzip", "none"), default="gzip", help="chunk compression (gzip level 1 with byte shuffle; readable by every HDF5 tool)")
    g.add_argument("--overwrite", action="store_true", help="replace an existing output file and figures")
    g.add_argument("--no-diagnostics", action="store_true", help="do not write the diagnostic PNGs next to the output")
    g.add_argument("--no-checksum", action="store_true", help="do not record the input's SHA-256 (saves one read of the input file)")
    g = p.add_argument_group("execution")
    g.add_argument("--batch-size", metavar="B", type=_positive_int, help="frames per compiled step (default 128; rounded up to a multiple of the devices)")
    dev = g.add_mutually_exclusive_group()
    dev.add_argument("--devices", metavar="I,J", help="local accelerators to use, by number (default: all); see `prenet-jax info`")
    dev.add_argument("--cpu", action="store_true", help="run on the CPU even if an accelerator is present")
    g.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.set_defaults(func=run_preprocess)
    return p


def _raise_interrupt(signum, frame):
    raise KeyboardInterrupt()


def run_preprocess(args) -> int:
    """The ``preprocess`` subcommand: user errors print one message and exit 2."""
    log = lambda s: print(s, flush=True)  # noqa: E731
    old = None
    if threading.current_thread() is threading.main_thread():
        old = signal.signal(signal.SIGTERM, _raise_interrupt)  # `kill` cleans up like Ctrl-C
    try:
        ellipse = _parse_ellipse(args)
        if args.no_ellipse and ellipse is not None:
            raise InputError("--no-ellipse and a fixed ellipse contradict each other; give one")
        if args.output_dtype != "input":
            try:
                np.dtype(args.output_dtype)
            except TypeError:
                raise InputError(f"--output-dtype {args.output_dtype!r}: use float32, input, or an integer type such as uint16") from None
        # cheap checks first: a typo should not wait for the compiler
        open_input(args.input, args.dataset, args.scan).close()
        check_output_path(Path(args.output), args.overwrite)
        pipe, weights_id = _build_pipeline(args, log)
        options = {k: v for k, v in vars(args).items() if k != "func"}
        options["_argv"] = [shlex.quote(a) for a in sys.argv]
        preprocess_file(
            args.input,
            args.output,
            pipeline=pipe,
            dataset=args.dataset,
            scan=args.scan,
            ellipse=ellipse,
            output_dtype=args.output_dtype,
            overwrite=args.overwrite,
            diagnostics=not args.no_diagnostics,
            compression=args.compression,
            saturation=args.saturation,
            negative=args.negative,
            checksum=not args.no_checksum,
            weights_id=weights_id,
            options=options,
            progress=not args.no_progress,
            log=log,
        )
        return 0
    except InputError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except OSError as e:  # disk full, permissions changed mid-run, ...
        print(f"error: {e.strerror or e}{f': {e.filename}' if getattr(e, 'filename', None) else ''}; nothing was written", file=sys.stderr)
        return 1
    finally:
        if old is not None:
            signal.signal(signal.SIGTERM, old)
