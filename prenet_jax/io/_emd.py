"""The dim vectors of the EMD 1.0 ``DataCube`` the writer stores, from its calibration."""

from __future__ import annotations

import numpy as np

__all__ = ["emd_dims"]


def emd_dims(calibration: dict) -> list[tuple[str, np.ndarray, str]]:
    """``[(name, dim, units)]`` for ``dim0..dim3`` (Rx, Ry, Qx, Qy), consistent with ``calibration``.

    Linear dims are stored as their first two values (as ``emdfile`` compresses
    them). The real-space axes start at 0: ``[0, R_pixel_size]``. The diffraction
    axes are measured from the origin ``(qx0_mean, qy0_mean)`` (pixels, the beam
    position of the corrected cube, ``(n-1)/2``), in units of ``Q_pixel_size``:
    ``(i - qx0_mean) * Q_pixel_size`` for ``i = 0, 1``, i.e. ``[-63.5, -62.5] * Q_pixel_size``
    on 128 px frames, so that ``q = 0`` falls on the beam. Without an origin the Q
    axes start at 0, as py4DSTEM's ``DataCube.calibrate`` does.

    py4DSTEM 0.14 computes ``-qx0_mean + i * Q_pixel_size`` (it subtracts the origin
    in pixels from calibrated values): the same for ``Q_pixel_size = 1`` (its
    default); otherwise ours is the unit-consistent one. py4DSTEM recomputes its
    dims from the calibration when it opens a file, so either reads back the same.
    """
    rp = float(calibration.get("R_pixel_size", 1.0))
    qp = float(calibration.get("Q_pixel_size", 1.0))
    ru = str(calibration.get("R_pixel_units", "pixels"))
    qu = str(calibration.get("Q_pixel_units", "pixels"))
    origin = []
    for key in ("qx0_mean", "qy0_mean"):
        v = calibration.get(key)
        origin.append(0.0 if v is None or not np.isfinite(float(v)) else float(v))
    first = np.arange(2, dtype=np.float64)
    return [
        ("Rx", first * rp, ru),
        ("Ry", first * rp, ru),
        ("Qx", (first - origin[0]) * qp, qu),
        ("Qy", (first - origin[1]) * qp, qu),
    ]
