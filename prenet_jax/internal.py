"""Semi-public: what the tests and benchmarks use that is not public API. Not for users.

Anything here may change or disappear without notice, in any release. It exists so that
the tests and benchmarks import no private module of the package (checked by
``tests/test_architecture.py``): what they need to reach inside a subpackage, a helper
of a training step or a constant of the demo, is named once here, and a refactor that
moves a private function changes one line of :data:`_WHERE`, not the tests. Code inside
the package never imports this module; it imports the subpackages' faces.

Names are imported on first use (PEP 562, as in :mod:`prenet_jax`), so that a test that
needs one helper does not import every subpackage. A private name is exported without
its underscore (``fresh_variables`` for ``training._steps._fresh_variables``); ``metrics``
is the evaluation's metrics module itself.
"""

from __future__ import annotations

import importlib

# exported name -> (module, attribute); attribute None: the module itself
_WHERE: dict[str, tuple[str, str | None]] = {
    # cli
    "DEMO": (".cli._demo", "DEMO"),
    "DEMO_ELLIPSE": (".cli._demo", "DEMO_ELLIPSE"),
    "DEMO_PAD": (".cli._demo", "DEMO_PAD"),
    "add_simulate_parser": (".cli._simulate", "add_simulate_parser"),
    "bare_refine": (".cli._preprocess", "bare_refine"),
    "run_simulate_cli": (".cli._simulate", "run_simulate_cli"),
    # shared helpers of the package
    "format_rate": ("._util", "format_rate"),
    # io
    "emd_dims": (".io._emd", "emd_dims"),
    "filter_error": (".io._hdf5", "filter_error"),
    "rsciio_saturation": (".io._rsciio", "rsciio_saturation"),
    # ops and pipeline
    "grid_filters": (".pipeline._gaussian", "_grid_filters"),
    "noise_variance": (".pipeline._gaussian", "noise_variance"),
    "reflection": (".ops._refine", "_reflection"),
    "refine_ellipse_jit": (".ops._refine", "_refine_ellipse_jit"),
    # preprocess
    "Calibration": (".preprocess._run", "_Calibration"),
    "after_checks": (".preprocess._run", "after_checks"),
    "part_path": (".preprocess._distributed", "part_path"),
    "row_shares": (".preprocess._distributed", "row_shares"),
    "scan_step_drift": (".preprocess._descan", "scan_step_drift"),
    "stream_part": (".preprocess._distributed", "_stream_part"),
    "validated": (".preprocess._distributed", "_validated"),
    # evaluation
    "corrupt_single": (".evaluation._corrupt", "corrupt_single"),
    "ellipse_samples": (".evaluation._corrupt", "ellipse_samples"),
    "eval_poisson": (".evaluation._corrupt", "poisson"),
    "read_run": (".evaluation._evalset", "_read_run"),
    "gaussian_search": (".evaluation._baselines", "gaussian_search"),
    "held_out_structures": (".evaluation._evalset", "held_out_structures"),
    "make_synthetic": (".evaluation._evalset", "make_synthetic"),
    "metrics": (".evaluation._metrics", None),
    "network_center_pipelines": (".evaluation._pipelines", "network_center_pipelines"),
    "network_centers": (".evaluation._pipelines", "network_centers"),
    "pca_denoise": (".evaluation._baselines", "pca_denoise"),
    # training
    "Checkpoints": (".training._checkpoints", "_Checkpoints"),
    "Data": (".training._loop", "_Data"),
    "abstract_state": (".training._checkpoints", "_abstract"),
    "batch_indices": (".training._batches", "batch_indices"),
    "ellipse_targets": (".training.tasks", "ellipse_targets"),
    "evaluate": (".training._loop", "evaluate"),
    "fresh_variables": (".training._steps", "_fresh_variables"),
    "init_state": (".training._steps", "init_state"),
    "make_eval_step": (".training._steps", "make_eval_step"),
    "make_mesh": (".training._steps", "make_mesh"),
    "make_optimizer": (".training._steps", "make_optimizer"),
    "make_train_step": (".training._steps", "make_train_step"),
    "matrix_from_output": (".training.tasks", "matrix_from_output"),
    "put_replicated": (".training._checkpoints", "_put_replicated"),
    "residual_ratio": (".training.tasks", "residual_ratio"),
    "run_config": (".training._checkpoints", "_run_config"),
}

__all__ = sorted(_WHERE)


def __getattr__(name: str):
    if name not in _WHERE:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    module, attribute = _WHERE[name]
    value = importlib.import_module(module, "prenet_jax")
    if attribute is not None:
        value = getattr(value, attribute)
    globals()[name] = value  # once: later lookups do not come here
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
