"""The release recipe: simulate -> train each network -> end-to-end -> held-out set -> evaluate.

:class:`Recipe` names the configs and seeds of every stage, :func:`run_recipe` runs
them in resumable chunks (``prenet-jax train release``), :func:`load_recipe` reads one
from a file (``train/release.py:get_recipe``).

It sits above :mod:`prenet_jax.training` and :mod:`prenet_jax.evaluation` because it
drives both (it trains, then evaluates what it shipped), so that neither of them
imports the other.
"""

from ._release import Recipe, load_recipe, run_recipe

__all__ = ["Recipe", "load_recipe", "run_recipe"]
