#!/usr/bin/env bash
# The device-side run (a CUDA GPU machine): full verification with the `device` profile, the
# compute-sanitizer pass over the representative case set, determinism, large offsets, the
# bad-input catalog on the GPU, interpreter-vs-GPU agreement, then the benchmarks. Logs go to
# the folder given (default ./device-logs); the exit status is non-zero if any step failed.
#
#   bash ci/device.sh [LOGDIR] [--quick]
#
# --quick: a smaller verification budget (`--examples 40`) for a time-boxed lease.
set -u
logs=${1:-device-logs}
quick=${2:-}
mkdir -p "$logs"
export PYTHONUNBUFFERED=1 PYTHONPATH=${PYTHONPATH:+$PYTHONPATH:}$(pwd)
status=0
step() {  # step NAME COMMAND...: run, log to $logs/NAME.log, remember a failure
  local name=$1; shift
  echo "== $name: $*"
  local t0=$SECONDS
  "$@" >"$logs/$name.log" 2>&1
  local rc=$?
  echo "   rc=$rc in $((SECONDS - t0)) s"
  [ $rc -eq 0 ] || status=1
}
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader | tee "$logs/device.txt"
python3 -c "import torch, triton; print('torch', torch.__version__, 'triton', triton.__version__)" | tee -a "$logs/device.txt"
examples=()
[ "$quick" = "--quick" ] && examples=(--examples 40)
step verify python3 -m attnverify verify --profile device "${examples[@]}" \
  --report "$logs/verify.json" --junit "$logs/verify.xml" --markdown "$logs/verify.md"
if command -v compute-sanitizer >/dev/null; then
  compute-sanitizer --version | tail -1 | tee -a "$logs/device.txt"
  for tool in memcheck racecheck initcheck synccheck; do
    step "sanitizer-$tool" compute-sanitizer --tool "$tool" --error-exitcode 9 \
      --print-limit 20 python3 ci/reliability.py cases
  done
else
  echo "compute-sanitizer not found: sanitizer pass skipped" | tee -a "$logs/device.txt"
  status=1
fi
step determinism python3 ci/reliability.py determinism --repeats 20
step offsets python3 ci/reliability.py offsets
step bad-input python3 ci/reliability.py bad-input
# Interpreter vs GPU agreement: the same float16/float32/e4m3 cases both ways (ci/agreement.py).
agree=(verify --profile ci --seed 0 --dtype float16 --dtype float32 --dtype float8_e4m3fn)
step agree-interpreter python3 -m attnverify "${agree[@]}" --device cpu --report "$logs/agree-cpu.json"
step agree-gpu python3 -m attnverify "${agree[@]}" --device cuda:0 --report "$logs/agree-gpu.json"
step agreement python3 ci/agreement.py "$logs/agree-cpu.json" "$logs/agree-gpu.json"
step bench python3 -m attnverify bench --json "$logs/bench.json"
tail -n 40 "$logs/verify.log" "$logs/bench.log"
exit $status
