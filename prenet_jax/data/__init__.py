"""Training data: structures -> abTEM simulation -> HDF5 shards; analytic test patterns.

:func:`select_structures` / :func:`build_structure` (crystals and amorphous boxes,
split by structure), :func:`run_simulation` (resumable shards and a manifest),
:class:`PatternStore` (reading them back), :func:`make_figure` (a grid of simulated
patterns), and the analytic :func:`disk_pattern` / :func:`synthetic_cube` used by tests
and the demo. The command line (``prenet-jax simulate``, ``simulate-figure``) is in
:mod:`prenet_jax.cli`.
"""

from ._figures import FIGURE_STRUCTURES, figure_from_dataset, make_figure
from ._sim_config import SimulationConfig, wavelength
from ._sim_engine import TaskSpec, draw_task, simulate_task
from ._sim_store import PatternStore, read_manifest, read_shard, round_mantissa, write_shard
from ._simulate import run_simulation
from ._structures import StructureInfo, build_structure, catalogue, cut_box, select_structures, split_of, zone_axis_rotation
from ._synthetic import disk_pattern, synthetic_cube

__all__ = [
    "FIGURE_STRUCTURES",
    "PatternStore",
    "SimulationConfig",
    "StructureInfo",
    "TaskSpec",
    "build_structure",
    "catalogue",
    "cut_box",
    "disk_pattern",
    "draw_task",
    "figure_from_dataset",
    "make_figure",
    "read_manifest",
    "read_shard",
    "round_mantissa",
    "run_simulation",
    "select_structures",
    "simulate_task",
    "split_of",
    "synthetic_cube",
    "wavelength",
    "write_shard",
    "zone_axis_rotation",
]
