"""The stage table: each preprocessing stage, its methods, its networks, and how training
and export treat them.

A stage (denoise, centre, ellipse) is chosen by one field of
:class:`prenet_jax.PipelineConfig` (its ``method_field``), runs one of its ``methods``,
and falls back to its ``classical`` method where no trained network ships. Its networks
are keyed by the same names in the Flax parameters, the pipeline configuration (their
widths), the exported weights and the command line; one training task trains them, and
one validation metric picks that task's best step. Everything that needs one of these
facts reads it here: the command line's checks and choices, :class:`prenet_jax.Pipeline`'s
check of its parameters, training's task networks and metrics, export, and the
evaluation. Adding a method or a network to a stage touches that stage's module and this
table; a new stage is one more :class:`Stage` row.

This module imports nothing of the package, so any module may read it.
"""

from __future__ import annotations

import dataclasses

__all__ = [
    "CENTER",
    "DENOISE",
    "E2E_TASK",
    "ELLIPSE",
    "NETWORKS",
    "STAGES",
    "TASKS",
    "Network",
    "Stage",
    "classical_methods",
    "methods_for",
    "network",
    "networks_in",
    "stage_of",
    "task_metric",
    "task_networks",
]


@dataclasses.dataclass(frozen=True)
class Network:
    """One trained network of a stage.

    Attributes
    ----------
    key : its name in the parameters, the weights and the command line, and the
        :class:`prenet_jax.PipelineConfig` field of its widths
    fields : the other configuration fields that belong to it (how it is fed), exported
        with its weights
    refines : the network whose estimate it refines (it ships only with that one); its
        configuration field may then be None (no such pass)
    """

    key: str
    fields: tuple[str, ...] = ()
    refines: str | None = None


@dataclasses.dataclass(frozen=True)
class Stage:
    """One stage of the pipeline.

    Attributes
    ----------
    name : ``"denoise"``, ``"center"`` or ``"ellipse"``
    method_field : the :class:`prenet_jax.PipelineConfig` field that picks the method
    methods : what that field may say (``"network"`` runs :attr:`networks`)
    classical : the method run where no trained network ships
    networks : the stage's networks; the first is the stage's own, the others refine it
    task : the training task (``prenet-jax train``) that trains them
    metric : the validation metric that picks the task's best step
    """

    name: str
    method_field: str
    methods: tuple[str, ...]
    classical: str
    networks: tuple[Network, ...]
    task: str
    metric: str

    @property
    def network(self) -> str:
        """The key of the stage's own network."""
        return self.networks[0].key

    @property
    def keys(self) -> tuple[str, ...]:
        """The keys of all its networks."""
        return tuple(n.key for n in self.networks)


DENOISE = Stage(
    name="denoise",
    method_field="denoise_method",
    methods=("network", "gaussian", "scan", "none"),
    classical="gaussian",
    networks=(Network("denoiser", ("denoise_residual",)),),
    task="denoiser",
    metric="psnr",
)
CENTER = Stage(
    name="center",
    method_field="center_method",
    methods=("network", "com", "friedel", "none"),
    classical="com",
    networks=(
        Network("center_net", ("heatmap_threshold", "heatmap_radius")),
        Network("center_fine", ("fine_size",), refines="center_net"),
    ),
    task="center",
    metric="center_err",
)
ELLIPSE = Stage(
    name="ellipse",
    method_field="ellipse_method",
    methods=("network", "fit", "none"),
    classical="fit",
    networks=(Network("ellipse_net", ("ellipse_input", "polar_angles", "polar_radii")),),
    task="ellipse",
    metric="residual_ratio",
)
#: The stages in the order a frame meets them.
STAGES = (DENOISE, CENTER, ELLIPSE)
#: Every network key, in stage order.
NETWORKS = tuple(k for s in STAGES for k in s.keys)
#: The task that trains every network at once through the whole pipeline, and its metric.
E2E_TASK, _E2E_METRIC = "e2e", "image_rmse"
#: Every training task.
TASKS = tuple(s.task for s in STAGES) + (E2E_TASK,)
_NETWORK = {n.key: n for s in STAGES for n in s.networks}


def stage_of(name: str) -> Stage:
    """The stage named by its name, its method field, its task or one of its network keys."""
    for s in STAGES:
        if name in (s.name, s.method_field, s.task) or name in s.keys:
            return s
    raise KeyError(f"{name!r} names no stage, method field, task or network; the stages are {[s.name for s in STAGES]}")


def network(key: str) -> Network:
    """The :class:`Network` of ``key``."""
    return _NETWORK[key]


def classical_methods() -> dict[str, str]:
    """``{method_field: classical method}`` of every stage."""
    return {s.method_field: s.classical for s in STAGES}


def methods_for(params) -> dict[str, str]:
    """``{method_field: method}`` that runs the networks in ``params`` (any mapping or set
    of network keys): ``"network"`` where the stage's own network is there, else the
    stage's classical method."""
    return {s.method_field: "network" if s.network in params else s.classical for s in STAGES}


def networks_in(config) -> tuple[str, ...]:
    """The network keys a :class:`prenet_jax.PipelineConfig` runs: those of every stage
    whose method is ``"network"``, a refining network only where the configuration has
    its pass (its field is not None)."""
    return _with_passes([s for s in STAGES if getattr(config, s.method_field) == "network"], config)


def task_networks(task: str, config) -> tuple[str, ...]:
    """The networks a training ``task`` trains with the pipeline ``config``: its stage's
    (every stage's for :data:`E2E_TASK`), a refining network only where ``config`` has
    its pass."""
    if task not in TASKS:
        raise KeyError(f"task {task!r}: use one of {TASKS}")
    return _with_passes(STAGES if task == E2E_TASK else (stage_of(task),), config)


def _with_passes(stages, config) -> tuple[str, ...]:
    """The network keys of ``stages``, a refining network only where ``config`` has its
    pass (its field is not None)."""
    return tuple(n.key for s in stages for n in s.networks if n.refines is None or getattr(config, n.key) is not None)


def task_metric(task: str) -> str:
    """The validation metric that picks ``task``'s best step."""
    return _E2E_METRIC if task == E2E_TASK else stage_of(task).metric
