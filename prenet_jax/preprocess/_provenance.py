"""What a preprocessed file records: the py4DSTEM calibration of the corrected cube,
and the ``preprocessing`` record of what was measured in the input and how.

See ``docs/preprocess.md`` (Output layout) for every item.
"""

from __future__ import annotations

import datetime
import json
import math
from pathlib import Path

import numpy as np

from ..conventions import EDGE_LOSS_FLAG, FLAG_EDGE, Ellipse
from ._stream import FLAG_NAMES, StreamStats

__all__ = ["ellipse_to_py4dstem", "ellipse_from_py4dstem", "output_calibration", "preprocessing_record"]


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


def frame_center(h: int, w: int) -> tuple[float, float]:
    """Where every corrected frame has its beam: ``((H-1)/2, (W-1)/2)``."""
    return ((h - 1) / 2.0, (w - 1) / 2.0)


def output_calibration(input_calibration: dict, shape: tuple[int, int, int, int], radius: float | None) -> dict:
    """py4DSTEM ``Calibration`` of the CORRECTED cube: the input's pixel sizes, the
    origin at the frame centre everywhere, and (``radius`` given: the ellipse was
    undone) a circle of that radius."""
    rx, ry, h, w = shape
    c0 = frame_center(h, w)
    cal = dict(input_calibration)
    cal.setdefault("Q_pixel_size", 1.0)
    cal.setdefault("R_pixel_size", 1.0)
    cal.setdefault("Q_pixel_units", "pixels")
    cal.setdefault("R_pixel_units", "pixels")
    cal.update(
        qx0=np.full((rx, ry), c0[0]),
        qy0=np.full((rx, ry), c0[1]),
        qx0_mean=float(c0[0]),
        qy0_mean=float(c0[1]),
        qx0_shift=np.zeros((rx, ry)),
        qy0_shift=np.zeros((rx, ry)),
    )
    if radius is not None:
        cal.update(a=float(radius), b=float(radius), theta=0.0)
    return cal


def versions(devices) -> dict:
    """The software and hardware a result came from."""
    from .._util import versions as software

    v = software()
    return {
        "prenet_jax_version": v["prenet_jax"],
        "jax_version": v["jax"],
        "devices": ", ".join(f"{d.platform}:{d.id} {d.device_kind}" for d in devices),
    }


def _refine_items(r: dict) -> dict:
    out = {}
    if "ellipse_before" in r:
        e0, e1 = r["ellipse_before"], r["ellipse_after"]
        out.update(
            refine_ellipse_ratio_before=float(e0.ratio), refine_ellipse_angle_before=float(e0.angle),
            refine_ellipse_ratio_after=float(e1.ratio), refine_ellipse_angle_after=float(e1.angle),
            refine_ellipse_ok=bool(r["ellipse_ok"]),
            refine_variance_before=float(r["variance_before"]), refine_variance_after=float(r["variance_after"]),
        )  # fmt: skip
    if "centers_failed" in r:
        out.update(
            refine_centers_failed=int(r["centers_failed"]),
            refine_center_shift_median=float(r["center_shift_median"]),
            refine_center_shift_frames=int(r["center_shift_frames"]),
        )
    return out


def preprocessing_record(
    *,
    st: StreamStats,
    shape: tuple[int, int, int, int],
    ellipse: Ellipse,
    ellipse_source: str,
    radius: float,
    residual: float,
    denoise: dict,
    config: dict,
    devices,
    weights_id: str,
    options: dict,
    input_path: Path,
    input_dataset: str,
    input_format: str,
    input_dtype,
    input_sha256: str | None,
    output_dtype,
    saturation: float | None,
    residual_angle: float = float("nan"),
    refinement: dict | None = None,
    pad: int = 0,
) -> dict:
    """The ``preprocessing`` metadata: measurements of the INPUT frames (py4DSTEM
    convention: qx = first detector axis = row) and the provenance of the run.

    ``refinement`` (:attr:`prenet_jax.preprocess.FileResult.refinement`, for a run that
    refined) adds the ``refine_*`` items: the ellipse before and after its refinement
    and the azimuthal variance of the corrected pass-0 mean before and after (when
    pass 0 estimated the ellipse), the frames whose centre refinement fell back, and
    the median centre shift the refinement applied to the frames sampled in pass 0.
    ``pad``: the output frames are ``2 pad`` px larger than the input's."""
    a, b, theta = ellipse_to_py4dstem(ellipse, radius)
    h, w = shape[2] + 2 * pad, shape[3] + 2 * pad
    rec = {
        "description": "beam centres and ellipse measured in the INPUT frames (py4DSTEM convention: qx = first detector axis = row); the cube under datacube/ is corrected",
        "qx0": st.centers[..., 0],
        "qy0": st.centers[..., 1],
        "qx0_after": st.centers_after[..., 0],
        "qy0_after": st.centers_after[..., 1],
        "qx0_after_friedel": st.friedel_after[..., 0],
        "qy0_after_friedel": st.friedel_after[..., 1],
        "after_description": "beam centres of the CORRECTED frames, in the output's coordinates: qx0_after/qy0_after by the masked centre of mass, qx0_after_friedel/qy0_after_friedel by Friedel symmetry (NaN where that fit failed); the one of a different kind than the centre method is the independent check",
        "frame_center": np.asarray(frame_center(h, w)),
        "output_pad": int(pad),
        "counts_lost": st.lost.astype(np.float32),
        "counts_lost_description": f"fraction of each frame's counts the warp moved out of the output frame; frames above {EDGE_LOSS_FLAG:g} are flagged {FLAG_EDGE} (pad the output with --pad to keep them)",
        "flags": st.flags,
        "flag_bits": "; ".join(f"{bit}: {name}" for bit, name in FLAG_NAMES.items()) + "; frames flagged 1 or 2 are left out of the means",
        "a": a,
        "b": b,
        "theta": theta,
        "ellipse_ratio": float(ellipse.ratio),
        "ellipse_angle": float(ellipse.angle),
        "ellipse_angle_convention": "prenet-jax: a-axis angle in [0, pi) rad from +col (x) toward +row (y); py4DSTEM theta = (pi/2 - angle) mod pi",
        "ellipse_radius": float(radius),
        "ellipse_source": ellipse_source,
        "residual_ellipse_ratio": float(residual),
        "residual_ellipse_angle": float(residual_angle),
        "mean_before": st.mean_before.astype(np.float32),
        "mean_after": st.mean_after.astype(np.float32),
        "frames_in_means": int(st.n_good),
        "denoise": denoise.get("description", ""),
    }
    rec["refine"] = refinement is not None
    if refinement is not None:
        rec.update(_refine_items(refinement))
    if denoise.get("sigma") is not None:
        rec["denoise_sigma"] = np.asarray(denoise["sigma"], np.float32)
    if denoise.get("scan_window") is not None:  # denoise_method "scan": each frame's choice and estimated MSE
        rec["denoise_scan_window"] = np.asarray(denoise["scan_window"], np.float32)
        rec["denoise_scan_window_description"] = (
            "scan window each frame chose (scan steps): 0 the frame alone, lambda > 0 a Gaussian of width lambda, "
            "-r a uniform box of radius r, inf the weights solved for least risk; denoise_sigma: the blur after it (px)"
        )
        rec["denoise_estimated_mse"] = np.asarray(denoise["estimated_mse"], np.float32)
        rec["denoise_estimated_gain_db"] = float(denoise["estimated_gain_db"])
    if st.counts is not None:
        rec["frame_counts"] = st.counts.astype(np.float64)
    rec.update(versions(devices))
    rec.update(
        {
            "weights_id": weights_id,
            "config_json": json.dumps(config, default=str),
            "options_json": json.dumps(options, default=str),
            "command": " ".join(options.get("_argv", [])) or "prenet_jax.preprocess_file",
            "input_path": str(Path(input_path).resolve()),
            "input_dataset": input_dataset or "",
            "input_format": input_format,
            "input_shape": np.asarray(shape, np.int64),
            "input_dtype": str(input_dtype),
            "input_sha256": input_sha256 or "not computed",
            "output_dtype": str(output_dtype),
            "saturation_level": float("nan") if saturation is None else float(saturation),
            "created_utc": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        }
    )
    return rec
