#!/usr/bin/env bash
# The device-side run (a CUDA GPU machine): full verification with the `device` profile, the
# compute-sanitizer pass over the representative case set, determinism, large offsets, the
# bad-input catalog on the GPU, interpreter-vs-GPU agreement, then the benchmarks. Logs go to
# the folder given (default ./device-logs); the exit status is non-zero if any step failed.
#
#   bash ci/device.sh [LOGDIR] [--quick] [STEP ...]
#
# --quick: a smaller verification budget (`--examples 40`) for a time-boxed lease.
# STEP: verify sanitizer determinism offsets bad-input agreement bench (default: all of them).
# VERIFY_JOBS (default 8): verify worker processes per GPU, so Triton compiles run in parallel.
set -u
logs=${1:-device-logs}
shift $(($# > 0 ? 1 : 0))
quick=
if [ "${1:-}" = "--quick" ]; then quick=1; shift; fi
steps=${*:-verify sanitizer determinism offsets bad-input agreement bench}
mkdir -p "$logs"
export PYTHONUNBUFFERED=1 PYTHONPATH=${PYTHONPATH:+$PYTHONPATH:}$(pwd)
status=0
wanted() { [[ " $steps " == *" $1 "* ]]; }
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
if wanted verify; then
  examples=()
  [ -n "$quick" ] && examples=(--examples 40)
  step verify python3 -m attnverify verify --profile device "${examples[@]}" \
    --devices all --jobs "${VERIFY_JOBS:-8}" \
    --report "$logs/verify.json" --junit "$logs/verify.xml" --markdown "$logs/verify.md"
fi
if wanted sanitizer; then
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
fi
wanted determinism && step determinism python3 ci/reliability.py determinism --repeats 20
wanted offsets && step offsets python3 ci/reliability.py offsets
wanted bad-input && step bad-input python3 ci/reliability.py bad-input
if wanted agreement; then
  # The same float16/float32/e4m3 cases through the interpreter and on the GPU (ci/agreement.py).
  agree=(verify --profile ci --seed 0 --dtype float16 --dtype float32 --dtype float8_e4m3fn)
  step agree-interpreter python3 -m attnverify "${agree[@]}" --device cpu --jobs 8 \
    --report "$logs/agree-cpu.json"
  step agree-gpu python3 -m attnverify "${agree[@]}" --device cuda:0 \
    --report "$logs/agree-gpu.json"
  step agreement python3 ci/agreement.py "$logs/agree-cpu.json" "$logs/agree-gpu.json"
fi
wanted bench && step bench python3 -m attnverify bench --json "$logs/bench.json"
for log in "$logs/verify.log" "$logs/bench.log"; do [ -f "$log" ] && tail -n 40 "$log"; done
exit $status
