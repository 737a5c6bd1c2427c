"""Training data: structures -> abTEM simulation -> HDF5 shards; analytic test patterns.

:func:`select_structures` / :func:`build_structure` (crystals and amorphous boxes,
split by structure), :func:`run_simulation` (resumable shards and a manifest),
:class:`PatternStore` (reading them back), and the analytic :func:`disk_pattern` /
:func:`synthetic_cube` used by tests and the demo.
"""

from ._figures import make_figure
from ._simulate import PatternStore, SimulationConfig, read_manifest, read_shard, run_simulation, wavelength, write_shard
from ._structures import build_structure, catalogue, select_structures, split_of
from ._synthetic import disk_pattern, synthetic_cube

__all__ = [
    "PatternStore",
    "SimulationConfig",
    "build_structure",
    "catalogue",
    "disk_pattern",
    "make_figure",
    "read_manifest",
    "read_shard",
    "run_simulation",
    "select_structures",
    "split_of",
    "synthetic_cube",
    "wavelength",
    "write_shard",
]
