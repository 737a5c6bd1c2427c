"""The simulation's configuration (:class:`SimulationConfig`) and its physics helper
(:func:`wavelength`); the data set it describes is in ``_simulate.py``'s docstring."""

from __future__ import annotations

import dataclasses
import math

from .._util import min_max
from . import _structures as structures_mod

__all__ = ["FORMAT", "FORMAT_VERSION", "SimulationConfig", "wavelength", "PATTERNS", "ELLIPSE"]


FORMAT = "prenet-jax-simulation"
FORMAT_VERSION = 1
PATTERNS, ELLIPSE = "patterns", "ellipse"
_STREAM = {PATTERNS: 0, ELLIPSE: 1}


# --------------------------------------------------------------------------------------
# physics helpers
# --------------------------------------------------------------------------------------


def wavelength(energy_ev: float) -> float:
    """Relativistic electron wavelength in Angstrom for an accelerating voltage in eV.

    ``lambda = h c / sqrt(E (E + 2 m c^2))``; 0.02508 A at 200 kV, 0.01969 A at 300 kV.
    """
    hc = 12398.419843320026  # eV * Angstrom
    mc2 = 510998.95000  # eV
    return hc / math.sqrt(energy_ev * (energy_ev + 2.0 * mc2))


# --------------------------------------------------------------------------------------
# configuration
# --------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class SimulationConfig:
    """Everything that decides the content of a simulated data set.

    Attributes
    ----------
    n_structures : int
        Distinct structures (about ``amorphous_fraction`` of them amorphous).
    n_patterns : int
        Patterns in the main data set; rounded up to a whole number of tasks.
    seed : int
        Seeds the structure choice and every task (task ``i`` draws from
        ``SeedSequence([seed, stream, i])``, independent of workers and shards).
    amorphous_fraction : float
    structure_ids : tuple of str or None
        Use exactly these structures instead of drawing ``n_structures``.
    pattern_size : int
        ``S``: patterns are ``S x S``; the zero angle is at ``(S/2, S/2)``.
    gpts : int
        Real-space grid of the multislice. abTEM's anti-aliasing cutoff is a circle of
        radius ``gpts / 3`` pixels around the zero angle, with nothing outside it. The
        default 720 (radius 240 px) fills the whole 256 x 256 frame even after the largest
        default augmentation (shift 16 px, ellipse 1.2 needs 224 px), so no artificial
        edge centred on the label is left for a network to find. 384 (radius 128 px,
        ``S <= 2/3 gpts`` is the minimum) is ~2.5x faster but leaves the corners empty
        behind a sharp circular edge around the zero angle.
    energies_kv : tuple of float
        Accelerating voltages drawn uniformly.
    disk_radius_px, extent_a, semiangle_mrad : (min, max)
        Direct-disk radius in pixels (log-uniform), cell side ``L`` in Angstrom
        (log-uniform) and the accepted convergence semi-angle range in mrad.
    thickness_a : (min, max)
        Specimen thickness in Angstrom (uniform per exit plane).
    thicknesses_per_task, positions_per_task : int
        Patterns per task = their product (one multislice run gives all of them).
    zone_axis_fraction : float
        Fraction of crystal tasks at a low-index zone axis (the rest random).
    mistilt_deg : float
        Zone-axis tasks are tilted off the axis by up to this much.
    defocus_a : (min, max)
        Probe defocus in Angstrom (abTEM convention, ``defocus = -C10``).
    slice_thickness_a : float
    frozen_phonons : int
        Configurations averaged per pattern (0: a static lattice).
    phonon_sigma_a : float
        RMS thermal displacement per direction for frozen phonons.
    position_jitter_a : float
        Probe positions lie within this half-width of the cell centre.
    scan_grid : int
        0: the ``positions_per_task`` probe positions are random. ``n > 1``: they are an
        ``n x n`` raster (row-major, a 4D-STEM scan) spanning the square of half-width
        ``position_jitter_a`` (capped at a quarter of the cell); ``positions_per_task``
        must then be ``n * n``.
    split_fractions : (train, val, test)
        Split by structure id hash (:func:`prenet_jax.data._structures.split_of`).
    tasks_per_shard : int
    ellipse_samples : int
        Averaged patterns in the ellipse data set (0: none).
    ellipse_orientations, ellipse_rotations : int
        Orientations (potentials) and in-plane rotations averaged per ellipse sample.
    ellipse_thickness_a : (min, max)
    ellipse_per_shard : int
    mantissa_bits : int
        float32 mantissa bits kept in the shards (23: lossless). The default 12 keeps a
        relative precision of 1.2e-4, far below the shot noise of any realistic dose (1 %
        at 10^4 electrons in a pixel), and halves the files (float32 diffraction data
        barely compresses: 1.2x lossless, 2.0x at 12 bits, gzip + shuffle).
    """

    n_structures: int = 1024
    n_patterns: int = 100_000
    seed: int = 0
    amorphous_fraction: float = 0.1
    structure_ids: tuple[str, ...] | None = None
    pattern_size: int = 256
    gpts: int = 720
    energies_kv: tuple[float, ...] = (60.0, 80.0, 120.0, 200.0, 300.0)
    disk_radius_px: tuple[float, float] = (3.0, 40.0)
    extent_a: tuple[float, float] = (25.0, 150.0)
    semiangle_mrad: tuple[float, float] = (0.5, 30.0)
    thickness_a: tuple[float, float] = (20.0, 300.0)
    thicknesses_per_task: int = 2
    positions_per_task: int = 2
    zone_axis_fraction: float = 0.5
    mistilt_deg: float = 1.0
    defocus_a: tuple[float, float] = (-50.0, 50.0)
    slice_thickness_a: float = 2.0
    frozen_phonons: int = 0
    phonon_sigma_a: float = 0.08
    position_jitter_a: float = 3.0
    scan_grid: int = 0
    split_fractions: tuple[float, float, float] = (0.8, 0.1, 0.1)
    tasks_per_shard: int = 16
    ellipse_samples: int = 0
    ellipse_orientations: int = 16
    ellipse_rotations: int = 32
    ellipse_thickness_a: tuple[float, float] = (20.0, 150.0)
    ellipse_per_shard: int = 4
    mantissa_bits: int = 12

    def __post_init__(self):
        for name in (
            "n_structures",
            "n_patterns",
            "tasks_per_shard",
            "thicknesses_per_task",
            "positions_per_task",
            "ellipse_orientations",
            "ellipse_rotations",
            "ellipse_per_shard",
        ):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"{name} must be at least 1, got {getattr(self, name)}")
        if self.ellipse_samples < 0 or self.frozen_phonons < 0:
            raise ValueError("ellipse_samples and frozen_phonons must be >= 0")
        s, g = int(self.pattern_size), int(self.gpts)
        if s % 2 or s < 8:
            raise ValueError(f"pattern_size must be even and >= 8, got {s}")
        if s > (2 * g) // 3:
            raise ValueError(
                f"pattern_size {s} exceeds the anti-aliasing cutoff of gpts={g} ({(2 * g) // 3} px): use gpts >= {math.ceil(1.5 * s)}"
            )
        for name in ("disk_radius_px", "extent_a", "semiangle_mrad", "thickness_a", "ellipse_thickness_a"):
            object.__setattr__(self, name, min_max(getattr(self, name), name, lowest=1e-30))
        object.__setattr__(self, "defocus_a", min_max(self.defocus_a, "defocus_a", lowest=None))
        object.__setattr__(self, "energies_kv", tuple(float(e) for e in self.energies_kv))
        if not self.energies_kv or min(self.energies_kv) <= 0:
            raise ValueError(f"energies_kv must be positive voltages in kV, got {self.energies_kv}")
        object.__setattr__(self, "split_fractions", tuple(float(f) for f in self.split_fractions))
        structures_mod.split_of("check", self.split_fractions)  # validates the fractions
        if self.structure_ids is not None:
            object.__setattr__(self, "structure_ids", tuple(str(s) for s in self.structure_ids))
            if not self.structure_ids:
                raise ValueError("structure_ids must not be empty (use None to draw n_structures)")
        if not 0 <= self.zone_axis_fraction <= 1:
            raise ValueError(f"zone_axis_fraction must be in [0, 1], got {self.zone_axis_fraction}")
        if not 1 <= int(self.mantissa_bits) <= 23:
            raise ValueError(f"mantissa_bits must be in 1..23 (23 is lossless float32), got {self.mantissa_bits}")
        if self.scan_grid and (int(self.scan_grid) < 2 or int(self.scan_grid) ** 2 != int(self.positions_per_task)):
            raise ValueError(
                f"scan_grid {self.scan_grid} needs positions_per_task = scan_grid**2 = {int(self.scan_grid) ** 2} "
                f"(and scan_grid >= 2), got positions_per_task {self.positions_per_task}"
            )
        if self.slice_thickness_a <= 0:
            raise ValueError(f"slice_thickness_a must be positive, got {self.slice_thickness_a}")

    @property
    def cutoff_radius_px(self) -> float:
        """Radius of abTEM's anti-aliasing cutoff around the zero angle, in pattern pixels."""
        return self.gpts / 3.0

    def frame_filled(self, max_shift: float = 16.0, max_ratio: float = 1.2) -> bool:
        """Whether the cutoff circle still covers the whole frame after an augmentation
        shifting by up to ``max_shift`` px per axis and stretching by ``max_ratio``."""
        half = self.pattern_size / 2
        corner = math.hypot(half + max_shift, half + max_shift)
        return self.cutoff_radius_px / math.sqrt(max_ratio) >= corner

    @property
    def patterns_per_task(self) -> int:
        return self.thicknesses_per_task * self.positions_per_task

    @property
    def n_tasks(self) -> int:
        return -(-self.n_patterns // self.patterns_per_task)

    def n_shards(self, dataset: str) -> int:
        if dataset == PATTERNS:
            return -(-self.n_tasks // self.tasks_per_shard)
        return -(-self.ellipse_samples // self.ellipse_per_shard)

    def shard_tasks(self, dataset: str, shard: int) -> range:
        """Task (or ellipse-sample) indices held by one shard."""
        per, total = (self.tasks_per_shard, self.n_tasks) if dataset == PATTERNS else (self.ellipse_per_shard, self.ellipse_samples)
        return range(shard * per, min((shard + 1) * per, total))

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> SimulationConfig:
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = set(d) - known
        if unknown:
            raise ValueError(f"unknown simulation settings {sorted(unknown)} (written by a newer prenet-jax?)")
        kw = {k: (tuple(v) if isinstance(v, list) else v) for k, v in d.items()}
        return cls(**kw)

    def structures(self) -> list[str]:
        """The structure ids of this data set, in task order."""
        if self.structure_ids is not None:
            return list(self.structure_ids)
        return structures_mod.select_structures(self.n_structures, self.seed, self.amorphous_fraction)
