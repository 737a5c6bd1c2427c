#!/usr/bin/env bash
# One 10-minute command on the lent GPU machine (device tool): make sure the simulated
# data exist, train one experiment until the time is nearly up (resuming whatever its
# run directory holds), and put what must come back under $OUT.
#
#   bash train/gpu_session.sh TASK_SIZE [extra arguments of `prenet-jax train run`]
#
# TASK_SIZE names the experiment as its config does: denoiser_release trains
# train/configs/denoiser.py:release into $RUNS/denoiser_release.
#
# Settings (environment variables; every default is outside /tmp, so nothing is lost
# to a tmp cleaner and two users of one machine do not collide):
#   PRENET_JAX_CACHE  root of the data and installs below (default ~/.cache/prenet-jax,
#                     the same rule as prenet_jax.training.cache_dir)
#   SIM_DIR    the simulated data set (default $PRENET_JAX_CACHE/release/sim: where the
#              release configs read it)
#   SITE_DIR   where the carried wheels are installed (default $PRENET_JAX_CACHE/site)
#   RUNS       run directories (default runs, in the checkout: the device tool carries it)
#   WEIGHTS    exported weights (default weights, in the checkout)
#   OUT        what comes back (default out); BUDGET seconds this command may use;
#   SIM_ARGS   the `prenet-jax simulate` settings; PY the Python to run
#
# Needs (carried): .whl (abTEM and its dependencies, see shared/gpu.md), $RUNS/TASK_SIZE
# if a previous command trained it, and for e2e_* the three networks it starts from
# (their runs under $RUNS or their exported weights under $WEIGHTS, by run name).
# Returns: $OUT/runs/TASK_SIZE (checkpoint in files of a few MiB, logs, curves) and,
# once the run has finished, $OUT/weights/TASK_SIZE (inference weights).
set -euo pipefail
NAME=$1; shift
CONFIG=train/configs/${NAME%_*}.py:${NAME##*_}
BUDGET=${BUDGET:-580}                      # seconds this command may use (the tool stops it at 600)
OUT=${OUT:-out}
RUNS=${RUNS:-runs}
WEIGHTS=${WEIGHTS:-weights}
SIM_ARGS=${SIM_ARGS:---structures 512 --patterns 8192 --thicknesses-per-task 4 --positions-per-task 4 --seed 0 --device gpu}
PY=${PY:-python3}
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH}   # the working tree's prenet_jax, the machine's own jax
CACHE=$($PY -c "from prenet_jax.training import cache_dir; print(cache_dir())")
SIM_DIR=${SIM_DIR:-$CACHE/release/sim}
SITE_DIR=${SITE_DIR:-$CACHE/site}
if ls .whl/*.whl >/dev/null 2>&1; then
  $PY -m pip install -q --no-index --no-deps --no-compile --target "$SITE_DIR" .whl/*.whl
  export PYTHONPATH=$SITE_DIR:$PYTHONPATH
fi
cli() { $PY -m prenet_jax.cli "$@"; }

# The data set is a pure function of these settings: every fresh machine regenerates the
# same patterns (it cannot travel: ~1 GB), so a resumed run sees the same data.
if [ ! -f "$SIM_DIR/.complete" ]; then
  set +e
  timeout $((BUDGET - SECONDS - 30)) $PY -m prenet_jax.cli simulate -o "$SIM_DIR" $SIM_ARGS --no-progress
  rc=$?
  set -e
  if [ $rc -ne 0 ]; then echo "simulation not finished (rc $rc): run the same command again, it continues"; exit 0; fi
  touch "$SIM_DIR/.complete"
fi

# The config reads its data and the runs it starts from under the cache; on this machine
# they are $SIM_DIR and whatever was carried under $RUNS or $WEIGHTS (same run names).
SETS_TEXT=$($PY - "$CONFIG" "$SIM_DIR" "$RUNS" "$WEIGHTS" <<'EOF'
import sys
from pathlib import Path

from prenet_jax.training import load_config

config, sim, runs, weights = sys.argv[1:]
cfg = load_config(config)
sets = [f"data.root={sim}"]  # first: a later --set data.source=simulated needs a root
for net, path in (cfg.init_from or {}).items():
    found = [p for p in (Path(path), Path(runs) / Path(path).name, Path(weights) / Path(path).name) if p.is_dir()]
    if found:
        sets.append(f"init_from.{net}={found[0]}")
print("\n".join(f"--set\n{s}" for s in sets))
EOF
)
SETS=()
[ -z "$SETS_TEXT" ] || mapfile -t SETS <<< "$SETS_TEXT"   # one argument a line

LEFT=$((BUDGET - SECONDS - 40))
if [ $LEFT -gt 60 ]; then
  cli train run --config "$CONFIG" --workdir "$RUNS/$NAME" --time-limit $LEFT "${SETS[@]}" "$@"
fi

mkdir -p "$OUT/runs/$NAME"
if [ "$(du -sm "$RUNS/$NAME" | cut -f1)" -lt 56 ]; then
  cp -r "$RUNS/$NAME/." "$OUT/runs/$NAME/"
else  # the e2e state is too big to come back: logs only (the run finishes inside one session)
  cp "$RUNS/$NAME"/*.json "$RUNS/$NAME"/*.jsonl "$RUNS/$NAME"/*.png "$OUT/runs/$NAME/" 2>/dev/null || true
fi
if $PY -c "import sys; from prenet_jax.training import is_finished; sys.exit(not is_finished(sys.argv[1]))" "$RUNS/$NAME"; then
  TASK=${NAME%_*}
  cli train export -o "$OUT/weights/$NAME" --$TASK "$RUNS/$NAME" --storage-dtype $([ "$TASK" = e2e ] && echo float16 || echo float32)
fi
