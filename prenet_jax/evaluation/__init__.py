"""``prenet-jax evaluate``: the paper's tables on held-out data, the networks beside the baselines.

Every method is scored against a known truth on test-split structures; every table
row gives its spread and its N. The flow, one module per step:

- ``_evalset``: the held-out set of clean patterns (:func:`load_or_make`);
- ``_corrupt``: the known shifts, ellipses and Poisson noise each table applies to it;
- ``_pipelines`` and ``_baselines``: the methods (networks, classical stages and their
  best settings), ``peers/``: py4DSTEM and pyxem in their own interpreters;
- ``_metrics``: the scores; ``_tables``: the four tables (:func:`run_evaluation`);
- ``_report`` and ``_figures``: ``report.md``, ``results.json`` and the PNG figures
  (:func:`write_report`).

Tables
------
1. Denoising (scan patches): MSE and PSNR of the input and of each method's output
   against the noise-free expectation, per dose, crystal and amorphous. Methods: the
   network's denoiser; the Gaussian filter at the sigma with the highest mean PSNR at
   that dose (searched on the same frames: an upper bound of that baseline); SVD/PCA
   across the neighbouring frames of each patch, Poisson-scaled (Keenan & Kotula), at
   the rank best for that dose.
2. Centres (single patterns, shifted up to ``max_shift`` px, rotated, elliptically
   distorted): MAE-X, MAE-Y, MAE-R, median and 95th percentile of R, per dose, crystal
   and amorphous. The network (denoiser + heatmap network), the centre of mass masked
   to the direct disk, Friedel symmetry, and py4DSTEM ``get_origin`` / ``get_origin_friedel`` and pyxem
   ``get_direct_beam_position`` when available.
3. Ellipse (recentred mean patterns: each task's patterns averaged over in-plane
   rotations, distorted by a random ellipse, noise of ``mean_frames`` frames at the dose):
   error of the ratio (all) and of the angle (ratio >= 1.03); relative radial standard
   deviation before and after correction. The network (ResNet), the edge fit, and
   py4DSTEM ``fit_ellipse_amorphous_ring`` when available.
4. End to end: a small cube (descan plane, jitter, one ellipse, noise) through
   :meth:`prenet_jax.Pipeline.preprocess`, against the ideal corrected cube.
5. What real detectors add: table 2's patterns with each effect of
   :mod:`prenet_jax.corruption` (saturated, cut-off, dimmed direct disks, Kikuchi bands
   and diffuse lobes, no beam), the centre methods and whether a beam is found.

Real recorded files (``--real``, ``_real``): no truth, so the default command's centres
beside where the classical methods and py4DSTEM agree (:func:`evaluate_real`).

Centre and ellipse methods also run followed by the self-calibration of
:mod:`prenet_jax.ops` (the ``+refine`` rows). The label of a centre is the zero angle
plus the applied shift (never a centre of mass: dynamical scattering makes the direct
disk asymmetric), see :mod:`prenet_jax.corruption`.
"""

from ._config import CENTER_METHODS, DENOISE_METHODS, ELLIPSE_METHODS, SCAN_METHODS, TABLES, EvalConfig, Methods
from ._evalset import EvalSet, EvalSetConfig, generate_abtem, load_abtem, load_or_make
from ._metrics import psnr
from ._pipelines import load_network
from ._real import consensus, edge_circle, evaluate_real, write_real_report
from ._report import write_report
from ._tables import evaluate_weights, open_stash, run_evaluation

__all__ = [
    "CENTER_METHODS",
    "DENOISE_METHODS",
    "SCAN_METHODS",
    "ELLIPSE_METHODS",
    "TABLES",
    "EvalConfig",
    "EvalSet",
    "EvalSetConfig",
    "Methods",
    "consensus",
    "edge_circle",
    "evaluate_real",
    "evaluate_weights",
    "generate_abtem",
    "load_abtem",
    "load_network",
    "load_or_make",
    "open_stash",
    "psnr",
    "run_evaluation",
    "write_real_report",
    "write_report",
]
