#!/usr/bin/env bash
# One scan, N processes on this machine: `prenet-jax preprocess --distributed`, started by hand.
#
#   infer/distributed/local.sh [-n N] INPUT -o OUTPUT [preprocess options...]
#
# Each process gets its share of the scan rows (and, on a machine with several GPUs,
# should see one: set CUDA_VISIBLE_DEVICES per process); process 0 merges the parts
# into OUTPUT. SIGINT/SIGTERM go to every process; the exit status is the first
# non-zero one. PRENET_JAX overrides the command (default: prenet-jax), PYTHON the
# interpreter that finds a free port.
set -u
N=2
if [ "${1:-}" = "-n" ]; then N=$2; shift 2; fi
PORT=$("${PYTHON:-python3}" -c 'import socket; s = socket.socket(); s.bind(("localhost", 0)); print(s.getsockname()[1])')
PJ=${PRENET_JAX:-prenet-jax}
pids=()
trap 'kill -TERM "${pids[@]}" 2>/dev/null' INT TERM
for k in $(seq 0 $((N - 1))); do
  $PJ preprocess "$@" --coordinator "localhost:$PORT" --num-processes "$N" --process-id "$k" &
  pids+=($!)
done
rc=0
for p in "${pids[@]}"; do
  wait "$p"; s=$?
  [ "$rc" -eq 0 ] && rc=$s
done
exit "$rc"
