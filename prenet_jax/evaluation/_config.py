"""What an evaluation runs: its settings (:class:`EvalConfig`), its methods
(:class:`Methods`) and the names the tables, the report and the figures share.

Method names
------------
A row of a table is one method: ``"network"`` (the pipeline's networks, trained or
not), a classical baseline (``"gaussian"``, ``"pca"``, ``"com"``, ``"friedel"``,
``"fit"``), a peer tool (``"py4dstem_origin"`` ...), or one of those followed by the
self-calibration of :mod:`prenet_jax.ops` (the name plus :data:`REFINE`).
:data:`LABELS` gives each its text in the report.
"""

from __future__ import annotations

import dataclasses

from ..pipeline import Pipeline

__all__ = [
    "CENTER_METHODS",
    "CENTER_PEERS",
    "DEFAULT_DOSES",
    "DENOISE_METHODS",
    "SCAN_METHODS",
    "ELLIPSE_METHODS",
    "ELLIPSE_PEERS",
    "LABELS",
    "REFINE",
    "TABLES",
    "EvalConfig",
    "Methods",
]

DEFAULT_DOSES = (1e2, 1e3, 1e4, 1e5, 1e6)
TABLES = ("denoise", "scans", "centers", "ellipse", "e2e", "detector")
DENOISE_METHODS = ("network", "gaussian", "pca")
SCAN_METHODS = ("gaussian", "default", "neighbours", "pca", "scan")  # table 1b (_scan_table)
CENTER_METHODS = ("network", "com", "friedel", "py4dstem_origin", "py4dstem_friedel", "pyxem_com")
ELLIPSE_METHODS = ("network", "fit", "py4dstem_ring")  # (+ "fit_subset": the fit on the peer's patterns)
#: The peer tool behind each peer method, as the report names it.
CENTER_PEERS = {"py4dstem_origin": "py4DSTEM", "py4dstem_friedel": "py4DSTEM", "pyxem_com": "pyxem"}
ELLIPSE_PEERS = {"py4dstem_ring": "py4DSTEM"}
#: The suffix of a method followed by the self-calibration of prenet_jax.ops (refine_center / refine_ellipse).
REFINE = "+refine"
LABELS = {
    "input": "noisy input",
    "network": "network (ours)",
    "gaussian": "Gaussian filter (best sigma)",
    "pca": "SVD/PCA, neighbouring frames (best rank)",
    "com": "masked CoM",
    "friedel": "Friedel symmetry",
    "py4dstem_origin": "py4DSTEM get_origin",
    "py4dstem_friedel": "py4DSTEM get_origin_friedel",
    "pyxem_com": "pyxem get_direct_beam_position (CoM)",
    "fit": "edge fit (classical)",
    "fit_subset": "edge fit, on the py4DSTEM subset",
    "py4dstem_ring": "py4DSTEM fit_ellipse_amorphous_ring",
    "none": "no processing",
    "default": "risk-chosen Gaussian, frame by frame (the shipped default)",
    "neighbours": "3x3 scan-neighbour mean, then the best Gaussian",
    "scan": "scan denoiser (ours): aligned neighbours, risk-chosen",
    "classical": "classical (Gaussian + CoM + fit)",
    "classical_friedel": "classical (Gaussian + Friedel + fit)",
    "true": "true ellipse (floor)",
}
LABELS.update({f"{m}{REFINE}": f"{LABELS[m]} + refine" for m in ("network", "com", "friedel", "fit")})


@dataclasses.dataclass(frozen=True)
class EvalConfig:
    """How the held-out data are corrupted and scored.

    Attributes
    ----------
    doses : incident electrons per pattern, one table row each (gain 1, no read noise)
    max_shift : centre table: uniform shift of the zero angle in ``[-max_shift, max_shift]`` px
    ratio_range : ellipse ratio ``a/b`` drawn uniformly (angle uniform in ``[0, pi)``)
    scan_shift : denoising patches: one uniform offset per patch in ``[-scan_shift, scan_shift]`` px
    scan_jitter : and a Gaussian per-frame jitter of this standard deviation (px)
    ellipses_per_group : ellipse table: random ellipses per task's mean pattern
    rotations : in-plane rotations averaged into each mean pattern
    mean_frames : frames behind a mean pattern (its noise is that of this many frames)
    angle_min_ratio : angle errors only count for ratios at least this
    e2e_scan : scan shape of the end-to-end cubes (frames are taken from one patch)
    e2e_ellipse : (ratio, angle rad) of the end-to-end cubes
    e2e_descan : centre drift in px per scan step (d_row/d_x, d_row/d_y, d_col/d_x, d_col/d_y)
    e2e_jitter : random centre jitter (px) of the end-to-end cubes
    e2e_cubes : which end-to-end cubes: the first crystal and amorphous scan patches, and
        the analytic :func:`prenet_jax.synthetic_cube`
    seed : everything random derives from it
    batch : frames per device batch
    peer_max : at most this many frames (or mean patterns) per dose go to each peer tool
    detector_dose : table 5 (what real detectors add): the one dose of its patterns
    """

    doses: tuple[float, ...] = DEFAULT_DOSES
    max_shift: float = 16.0
    ratio_range: tuple[float, float] = (1.0, 1.2)
    scan_shift: float = 8.0
    scan_jitter: float = 0.5
    ellipses_per_group: int = 8
    rotations: int = 32
    mean_frames: int = 1024
    angle_min_ratio: float = 1.03
    e2e_scan: tuple[int, int] = (4, 8)
    e2e_ellipse: tuple[float, float] = (1.1, 0.6)
    e2e_descan: tuple[float, float, float, float] = (0.4, -0.25, 0.2, 0.35)
    e2e_jitter: float = 0.3
    e2e_cubes: tuple[str, ...] = ("crystal", "amorphous", "analytic")
    seed: int = 0
    batch: int = 32
    peer_max: int | None = None
    detector_dose: float = 1e4

    def to_dict(self) -> dict:
        """The settings as plain values (for ``results.json``)."""
        return dataclasses.asdict(self)


@dataclasses.dataclass
class Methods:
    """The pipelines and peers an evaluation runs.

    Attributes
    ----------
    network : a pipeline with trained (or untrained) networks, or None
    network_note : what the network rows are ("trained weights <path>", "untrained", or
        why they are absent)
    peers : ``{peer: version}`` of the peer tools that run here
    select : method names to run (default all that are available)
    refine : also each centre and ellipse method followed by the self-calibration
        (the :data:`REFINE` rows)
    """

    network: Pipeline | None = None
    network_note: str = "no trained weights yet"
    peers: dict = dataclasses.field(default_factory=dict)
    select: tuple[str, ...] | None = None
    refine: bool = True

    def wants(self, name: str) -> bool:
        """Whether the rows of method ``name`` are asked for."""
        if name.endswith(REFINE) and not self.refine:
            return False
        return self.select is None or name in self.select

    def has_net(self, part: str) -> bool:
        """Whether the network pipeline has the network ``part`` (a key of
        :data:`prenet_jax.stages.NETWORKS`)."""
        return self.network is not None and part in self.network.params
