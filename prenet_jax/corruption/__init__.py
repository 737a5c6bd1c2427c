"""The corruption model: clean simulated patterns -> what a detector records, with the truth.

Below ``data``, ``training`` and ``evaluation``, which all draw from it: training makes
its (noisy, target, centre, ellipse) batches with :func:`augment`, the evaluation
corrupts its held-out patterns with the same pieces, and the data figures show them.

- geometry: an in-plane rotation, the elliptical (projector) distortion and the descan
  shift, in one resampling (:func:`distort`);
- the detector: Poisson shot noise at a dose (:func:`poisson`, fast and exact enough),
  Gaussian read noise, a gain, hot and dead pixels (:func:`add_noise`);
- what real detectors add (:mod:`._detector`, each off by default and switched on by a
  field of :class:`AugmentConfig`): saturated flat-topped disks, disks cut off by the
  frame edge, Bragg disks brighter than the direct beam, Kikuchi bands and diffuse lobes,
  panel gaps, and frames with no beam at all.
"""

from ._detector import DETECTOR_EFFECTS, direct_disk_radius
from ._model import AugmentConfig, Augmented, add_noise, augment, distort, poisson, sample_parameters

__all__ = [
    "DETECTOR_EFFECTS",
    "AugmentConfig",
    "Augmented",
    "add_noise",
    "augment",
    "direct_disk_radius",
    "distort",
    "poisson",
    "sample_parameters",
]
