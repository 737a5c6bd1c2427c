"""The release recipe: from nothing to the bundled weights, on two CPU cores.

    prenet-jax train release --time-limit 7200      # repeat until it says "finished"

Data and runs go to ``~/.cache/prenet-jax/release`` (``--workdir`` to change it); the
shipped weights (``prenet_jax/weights/release``) are refreshed after every chunk in
which a network's validation improved, and the evaluation's report becomes
``benchmarks/EVAL.md``. Budget on the 2-core machine: docs/training.md.
"""

from pathlib import Path

from prenet_jax.data import SimulationConfig
from prenet_jax.evaluation import EvalConfig, EvalSetConfig
from prenet_jax.recipe import Recipe
from prenet_jax.training import load_config

HERE = Path(__file__).resolve().parent
REPO = HERE.parent


def get_recipe() -> Recipe:
    return Recipe(
        # The first 768 of 1,024 structures (crystals and amorphous boxes interleaved), one multislice run each:
        # 4 exit thicknesses x 2 probe positions = 6,144 clean 256 px patterns from 768 of them.
        simulation=SimulationConfig(n_structures=1024, n_patterns=6144, thicknesses_per_task=4, positions_per_task=2, seed=0),
        stages={name: load_config(f"{HERE / 'configs' / name}.py:release") for name in ("denoiser", "center", "ellipse", "e2e")},
        # At least 2,000 held-out patterns of test-split structures, and 16 scan patches of 32 frames.
        evalset=EvalSetConfig(n_patterns=2000),
        # Two random ellipses per task's mean pattern (500 a dose), the peer tools on 256
        # patterns a dose: the whole evaluation in about an hour on the two cores.
        evaluation=EvalConfig(ellipses_per_group=2, peer_max=256),
        weights=REPO / "prenet_jax" / "weights" / "release",
        # What the evaluation chose (docs/training.md, 300 held-out patterns a dose): the
        # centre networks beat Friedel symmetry by 53-70 % in mean error at 1e3-1e5
        # electrons and ship; the denoiser (2-7 dB below the dose-adaptive Gaussian up
        # to 1e4) and the ellipse network (ratio error 0.011 against the edge fit's
        # ~0.001) do not, so those stages run their classical methods. Friedel symmetry on
        # the raw counts replaces the network's centre where the two agree within 0.5 px:
        # exact on clean disks (0.016 px on the demo cube; the networks alone 0.12 px),
        # and closer than at 1 px on held-out patterns (benchmarks/EVAL.md, section 6).
        ship_networks=("center_net", "center_fine"),
        ship_overrides={"center_consensus": "friedel", "consensus_px": 0.5},
        report=REPO / "benchmarks" / "EVAL.md",
    )
