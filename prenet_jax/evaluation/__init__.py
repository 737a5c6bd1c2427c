"""``prenet-jax evaluate``: the paper's tables on held-out simulations.

:func:`load_or_make` builds the held-out set (test-split structures),
:func:`run_evaluation` scores every method against the known truth, and
:func:`write_report` writes the tables and figures.
"""

from ._evalset import EvalSet, EvalSetConfig, load_or_make
from ._evaluate import EvalConfig, Methods, evaluate_weights, run_evaluation, write_report

__all__ = ["EvalConfig", "EvalSet", "EvalSetConfig", "Methods", "evaluate_weights", "load_or_make", "run_evaluation", "write_report"]
