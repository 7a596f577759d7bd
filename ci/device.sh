#!/usr/bin/env bash
# The device-side run (a CUDA GPU machine): full verification with the `device` profile, the
# compute-sanitizer pass over the representative case set, determinism, large offsets, the
# bad-input catalog on the GPU, interpreter-vs-GPU agreement, then the benchmarks and the
# issues' speed targets read from them (ci/targets.py). Logs go to
# the folder given (default ./device-logs); the exit status is non-zero if any step failed.
#
#   bash ci/device.sh [LOGDIR] [--quick] [STEP ...]
#
# --quick: a smaller verification budget (`--examples 40`) for a time-boxed lease.
# STEP: verify sanitizer determinism offsets bad-input agreement multi-gpu bench (default: all;
# multi-gpu needs two or more GPUs).
# VERIFY_JOBS (default 8): verify worker processes per GPU, so Triton compiles run in parallel.
# SANITIZER_TOOLS (default: memcheck racecheck initcheck synccheck); SCALE_EXAMPLES (default 6)
# and SCALE_VARIANTS (default: all) size the multi-gpu runs.
set -u
logs=${1:-device-logs}
shift $(($# > 0 ? 1 : 0))
quick=
if [ "${1:-}" = "--quick" ]; then quick=1; shift; fi
steps=${*:-verify sanitizer determinism offsets bad-input agreement multi-gpu bench}
mkdir -p "$logs"
export PYTHONUNBUFFERED=1 PYTHONPATH=${PYTHONPATH:+$PYTHONPATH:}$(pwd)
# Autotune choices are cached on disk beside the compiled kernels: a later process (a verify
# worker, the timed scaling runs) reuses them instead of benchmarking every config again.
export TRITON_CACHE_AUTOTUNING=${TRITON_CACHE_AUTOTUNING:-1}
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
    # One cudaMalloc per tensor, so that memcheck sees a read past any tensor's end (the caching
    # allocator's pools would hide it); each kernel's first config, so nothing is autotuned
    # under the tools: with "rotate" the flash kernels still autotune, and under memcheck,
    # initcheck and synccheck the timing runs' 256 MB cache-flush buffers ran an H200 out of
    # memory at the 13th case (racecheck finished).
    for tool in ${SANITIZER_TOOLS:-memcheck racecheck initcheck synccheck}; do
      PYTORCH_NO_CUDA_MEMORY_CACHING=1 ATTNVERIFY_AUTOTUNE=${ATTNVERIFY_AUTOTUNE:-0} \
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
  # Both sides go through `--devices` (the sharded draw): check()'s own run may draw a few cases
  # differently, and the two sides must hold the same cases.
  agree=(verify --profile ci --seed 0 --dtype float16 --dtype float32 --dtype float8_e4m3fn)
  step agree-interpreter python3 -m attnverify "${agree[@]}" --devices cpu --jobs 8 \
    --report "$logs/agree-cpu.json"
  step agree-gpu python3 -m attnverify "${agree[@]}" --devices cuda:0 --jobs 8 \
    --report "$logs/agree-gpu.json"
  step agreement python3 ci/agreement.py "$logs/agree-cpu.json" "$logs/agree-gpu.json"
fi
if wanted multi-gpu; then
  # Scaling: the same cases with one worker on one GPU and one worker per GPU, each from an empty
  # Triton cache (a first verification on a machine is bound by its compiles; dealing keeps
  # each kernel's cases on one worker, so no kernel compiles twice), then a dying worker.
  scale=(verify --profile device --examples "${SCALE_EXAMPLES:-6}" --seed 1)
  for variant in ${SCALE_VARIANTS:-}; do scale+=(--variant "$variant"); done
  TRITON_CACHE_DIR=$(mktemp -d) step scale-one python3 -m attnverify "${scale[@]}" \
    --devices cuda:0 --report "$logs/scale-one.json"
  TRITON_CACHE_DIR=$(mktemp -d) step scale-all python3 -m attnverify "${scale[@]}" \
    --devices all --report "$logs/scale-all.json"
  step scaling python3 ci/scaling.py "$logs/scale-one.json" "$logs/scale-all.json"
  # Expected to fail (exit 1) with the dead worker's cases reported.
  python3 -m attnverify verify --target ci.dying_target:merge_dies_on_last_gpu \
    --variant merge --examples 4 --devices all --report "$logs/dead-worker.json" \
    >"$logs/dead-worker.log" 2>&1
  if grep -q "died (exit code 3) holding" "$logs/dead-worker.log"; then
    echo "== dead-worker: reported"
  else
    echo "== dead-worker: NOT reported"; status=1
  fi
fi
if wanted bench; then
  step bench python3 -m attnverify bench --json "$logs/bench.json"
  # the issues' speed targets against that run (exit 1 when one with its rows is missed)
  [ -f "$logs/bench.json" ] && step targets python3 ci/targets.py "$logs/bench.json" \
    --markdown "$logs/targets.md"
fi
for log in "$logs/verify.log" "$logs/bench.log" "$logs/targets.log"; do
  [ -f "$log" ] && tail -n 60 "$log"
done
exit $status
