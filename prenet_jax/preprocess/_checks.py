"""Checks of a run against independent estimates on the same data, before pass 0.

A stage trained on simulations can be wrong on a real recording and say nothing:
on a real Merlin scan (a saturated direct disk at the detector edge, bright diffuse
lobes) the centre networks put near-identical frames 60 px apart. So before any
frame is written, frames sampled across the scan go through the configured centre
stage and through both classical estimators (centre of mass, Friedel symmetry),
and each frame is tested for a direct beam:

- **no direct beam** in most sampled frames (blanked beam, flat noise, EBSD or
  Kikuchi patterns): there is no beam centre and no disk edge, so the run moves no
  frame and undoes no ellipse, and says so;
- **the network disagrees with the classical estimates** by more than
  :data:`DISAGREE_PX` (median over the sample) while it also scatters more across the
  scan than the classical estimate that scatters least: the run falls back to that
  classical estimator, and says so with the numbers;
- **the direct beam is saturated** (a flat top of at least
  :data:`prenet_jax.ops.PLATEAU_PIXELS` pixels at the saturation level) in more than
  half of the sampled frames, and the network is more than :data:`SATURATED_PX`
  (1 px) from both classical estimates: the networks were trained without saturation,
  so on such data the bar for trusting them against two independent estimates is a
  pixel, not :data:`DISAGREE_PX`; the run uses the classical estimator
  that scatters least across the scan, and says so. On the real NanoMegas
  ``test1.blo`` (a 5.6 px disk clipped at 255) the network was 1.2-1.4 px from both
  and 1.3 px from where CoM, Friedel and py4DSTEM agree, steady across the scan (so
  the scatter test could not see it). On simulated saturated patterns (table 5 of
  ``prenet-jax evaluate``) the network's median error is that of Friedel symmetry
  (0.1 px), so the rule does not fire there;
- **the two classical estimates disagree** by more than :data:`DISAGREE_PX` (and no
  network is there to arbitrate): a warning, the centres are uncertain.

Scatter is measured as the robust spread of each estimator's centres about a plane
fitted across the scan positions (a descan is a plane to first order; near-identical
neighbouring frames have near-identical centres), so that a drifting beam is no
fault and jumps between near-identical frames are. Every decision is returned in a
:class:`CenterCheck` that the output records.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from ..ops import PLATEAU_PIXELS

__all__ = ["CenterCheck", "check_centers", "saturated_disks", "CHECK_FRAMES", "DISAGREE_PX", "NO_BEAM_FRACTION", "SATURATED_PX"]

#: Frames sampled across the scan for the checks.
CHECK_FRAMES = 32
#: Median distance (px) between two centre estimators beyond which they disagree.
DISAGREE_PX = 2.0
#: On saturated data: the median distance (px) from the network to both classical
#: estimates beyond which the run uses the classical one (the consensus radius the
#: rule was set with on ``test1.blo``; ``consensus_px`` has since moved to 0.5 px).
SATURATED_PX = 1.0
#: Fraction of the sampled frames without a direct beam beyond which the run treats
#: the scan as beamless.
NO_BEAM_FRACTION = 0.5


@dataclasses.dataclass(frozen=True)
class CenterCheck:
    """What the centre checks measured on the sampled frames and what they decided.

    Attributes
    ----------
    frames : frames sampled
    no_beam : sampled frames without a direct beam
    method : the centre stage as configured (``network``, ``com``, ``friedel``, ``none``)
    used : the centre method the run uses after the checks (``none`` for a beamless scan)
    distance : median distances (px) between the estimators, ``"used-com"``,
        ``"used-friedel"``, ``"com-friedel"``, over the frames with a beam
    scatter : robust spread (px) of each estimator about a plane across the scan
        (NaN with fewer than 6 frames with a beam)
    warnings : the ``warning:`` lines the run prints
    """

    frames: int
    no_beam: int
    method: str
    used: str
    distance: dict
    scatter: dict
    warnings: tuple[str, ...] = ()

    @property
    def beamless(self) -> bool:
        return self.no_beam > NO_BEAM_FRACTION * self.frames

    def record(self) -> dict:
        """Flat entries for the output's preprocessing record."""
        out = {
            "check_frames": self.frames,
            "check_no_beam": self.no_beam,
            "check_center_method": self.method,
            "check_center_used": self.used,
            "check_warnings": " | ".join(self.warnings) if self.warnings else "none",
        }
        out.update({f"check_distance_{k.replace('-', '_')}": float(v) for k, v in self.distance.items()})
        out.update({f"check_scatter_{k}": float(v) for k, v in self.scatter.items()})
        return out


def _plane_scatter(c: np.ndarray, pos: np.ndarray) -> float:
    """Robust spread (px, 1.4826 x the median absolute residual) of centres ``c`` (n, 2)
    about a least-squares plane over scan positions ``pos`` (n, 2)."""
    if c.shape[0] < 6:
        return float("nan")
    design = np.column_stack([np.ones(len(pos)), pos.astype(np.float64)])
    coef, *_ = np.linalg.lstsq(design, c, rcond=None)
    resid = np.linalg.norm(c - design @ coef, axis=-1)
    return float(1.4826 * np.median(resid))


def saturated_disks(frames: np.ndarray, saturation: float | None) -> np.ndarray:
    """``(N,)`` whether each frame has a saturated direct disk: at least
    :data:`prenet_jax.ops.PLATEAU_PIXELS` pixels at ``saturation`` (none without a level)."""
    if saturation is None:
        return np.zeros(len(frames), bool)
    return (np.asarray(frames) >= saturation).sum(axis=(1, 2)) >= PLATEAU_PIXELS


def check_centers(frames: np.ndarray, positions: np.ndarray, pipe, saturation: float | None = None) -> CenterCheck:
    """Run the checks of the module docstring on ``frames`` sampled across a scan.

    Parameters
    ----------
    frames : (N, H, W) raw frames
    positions : (N, 2) their scan positions (row, col)
    pipe : the run's :class:`prenet_jax.Pipeline`
    saturation : the detector's saturation level (None: unknown, no saturation check)

    Returns
    -------
    CenterCheck; ``used`` names the method the run should use
    """
    cfg = pipe.config
    est = pipe.check_centers(frames)
    beam = est["beam"]
    n, n_beam = len(beam), int(beam.sum())
    method = cfg.center_method
    dist = {}
    for a, b in (("used", "com"), ("used", "friedel"), ("com", "friedel")):
        d = np.linalg.norm(est[a][beam] - est[b][beam], axis=-1)
        dist[f"{a}-{b}"] = float(np.median(d)) if d.size else float("nan")
    scatter = {k: _plane_scatter(est[k][beam], positions[beam]) for k in ("used", "com", "friedel")}
    warnings: list[str] = []
    used = method
    if n - n_beam > NO_BEAM_FRACTION * n:
        used = "none"
        warnings.append(
            f"warning: no direct beam found in {n - n_beam} of {n} frames sampled across the scan (beam blanked, off the "
            "detector, flat noise, or an EBSD/Kikuchi pattern): no frame is moved and no ellipse is undone"
        )
        return CenterCheck(n, n - n_beam, method, used, dist, scatter, tuple(warnings))
    if n - n_beam:
        warnings.append(f"warning: no direct beam found in {n - n_beam} of {n} frames sampled across the scan; such frames are flagged 128")
    if method == "network" and n_beam:
        near = min(dist["used-com"], dist["used-friedel"])
        classical = {k: scatter[k] for k in ("com", "friedel")}
        best = min(classical, key=lambda k: (np.nan_to_num(classical[k], nan=np.inf), dist[f"used-{k}"]))
        noisier = not np.isfinite(scatter["used"]) or scatter["used"] > 2.0 * np.nan_to_num(classical[best], nan=np.inf) + 0.5
        n_sat = int(saturated_disks(frames, saturation)[beam].sum())
        if n_sat > 0.5 * n_beam and near > SATURATED_PX:
            used = best
            warnings.append(
                f"warning: the direct beam is saturated in {n_sat} of {n_beam} frames sampled across the scan (a flat top at "
                f"{saturation:g}), unlike the network's training patterns, and the centre network is more than "
                f"{SATURATED_PX:g} px from both classical estimates (median {dist['used-com']:.1f} px from the centre of "
                f"mass, {dist['used-friedel']:.1f} px from Friedel symmetry): the run uses "
                f"{'the centre of mass' if best == 'com' else 'Friedel symmetry'} instead (scatter across the scan "
                f"{scatter[best]:.2f} px)"
            )
        elif near > DISAGREE_PX and (noisier or dist["com-friedel"] < 0.5 * near):
            used = best
            warnings.append(
                f"warning: the centre network disagrees with both classical estimates on {n_beam} frames sampled across the scan "
                f"(median {dist['used-com']:.1f} px from the centre of mass, {dist['used-friedel']:.1f} px from Friedel symmetry; "
                f"scatter across the scan {scatter['used']:.2f} px against {scatter[best]:.2f} px): the run uses "
                f"{'the centre of mass' if best == 'com' else 'Friedel symmetry'} instead (the data look unlike the training "
                "simulations: a saturated, cut-off or unusual direct beam?)"
            )
    elif method in ("com", "friedel") and n_beam and dist["com-friedel"] > DISAGREE_PX:
        warnings.append(
            f"warning: the centre of mass and Friedel symmetry disagree by {dist['com-friedel']:.1f} px (median over {n_beam} "
            "sampled frames): the beam centres are uncertain (an asymmetric or cut-off direct beam, bright diffuse scattering?)"
        )
    return CenterCheck(n, n - n_beam, method, used, dist, scatter, tuple(warnings))
