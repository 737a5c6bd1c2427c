#!/usr/bin/env bash
# One 10-minute command on the lent GPU machine (device tool): make sure the simulated
# data exist, train train/configs/NAME.py until the time is nearly up (resuming whatever
# runs/NAME holds), and put what must come back under $OUT.
#
#   bash train/gpu_session.sh NAME [extra arguments of `prenet-jax train run`]
#
# Needs (carried): .whl (abTEM and its dependencies, see shared/gpu.md), runs/NAME if a
# previous command trained it, and for e2e_release the exported weights/ of the three
# networks. Returns: $OUT/runs/NAME (checkpoint in files of a few MiB, logs, curves) and,
# once the run has finished, $OUT/weights/NAME (inference weights).
set -euo pipefail
NAME=$1; shift
BUDGET=${BUDGET:-580}                      # seconds this command may use (the tool stops it at 600)
OUT=${OUT:-out}
SIM_DIR=${SIM_DIR:-/tmp/sim}               # the release configs read data.root=/tmp/sim
SIM_ARGS=${SIM_ARGS:---structures 512 --patterns 8192 --thicknesses-per-task 4 --positions-per-task 4 --seed 0 --device gpu}
PY=${PY:-python3}
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH}   # the working tree's prenet_jax, the machine's own jax
if ls .whl/*.whl >/dev/null 2>&1; then
  $PY -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl/*.whl
  export PYTHONPATH=/tmp/site:$PYTHONPATH
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

LEFT=$((BUDGET - SECONDS - 40))
if [ $LEFT -gt 60 ]; then
  cli train run --config train/configs/$NAME.py --workdir runs/$NAME --time-limit $LEFT "$@"
fi

mkdir -p "$OUT/runs/$NAME"
if [ "$(du -sm runs/$NAME | cut -f1)" -lt 56 ]; then
  cp -r runs/$NAME/. "$OUT/runs/$NAME/"
else  # the e2e state is too big to come back: logs only (the run finishes inside one session)
  cp runs/$NAME/*.json runs/$NAME/*.jsonl runs/$NAME/*.png "$OUT/runs/$NAME/" 2>/dev/null || true
fi
if $PY -c "import sys; from prenet_jax.training import is_finished; sys.exit(not is_finished('runs/$NAME'))"; then
  TASK=$($PY -c "import json; print(json.load(open('runs/$NAME/config.json'))['task'])")
  cli train export -o "$OUT/weights/$NAME" --$TASK runs/$NAME --storage-dtype $([ "$TASK" = e2e ] && echo float16 || echo float32)
fi
