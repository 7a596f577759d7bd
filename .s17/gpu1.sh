export PYTHONPATH=. PYTHONUNBUFFERED=1 TRITON_CACHE_AUTOTUNING=1
L=$OUT/log.txt
nvidia-smi --query-gpu=name,clocks.sm,clocks.max.sm --format=csv | tee -a $L
echo "== timings" | tee -a $L
for a in "32 32768 64 bf16" "32 32768 64 e4m3" "32 32768 16 bf16" "32 32768 16 e4m3" "1 32768 64 bf16" "1 32768 64 e4m3"; do
  timeout 60 python3 .s17/paged_prof.py time $a 2>&1 | tail -1 | tee -a $L; done
echo "== ncu" | tee -a $L
for a in "32 32768 64 bf16" "32 32768 64 e4m3" "32 32768 16 e4m3"; do
  n=$(echo $a | tr ' ' _)
  timeout 90 ncu --clock-control none -k regex:_paged_fwd_kernel -s 2 -c 1 --section SpeedOfLight --section MemoryWorkloadAnalysis --section WarpStateStats --section Occupancy --section LaunchStats --section SchedulerStats --section InstructionStats --section ComputeWorkloadAnalysis --section SourceCounters python3 .s17/paged_prof.py once $a > $OUT/ncu_$n.txt 2>&1; echo "ncu $n rc=$?" | tee -a $L
done
echo "== pytest" | tee -a $L
timeout 150 python3 -m pytest -q -p no:cacheprovider tests/kernels/test_gqa.py -k "every_backward_config or fits" tests/kernels/test_autotune_policy.py 2>&1 | tail -5 | tee -a $L
echo "== verify fp8 + gqa" | tee -a $L
timeout 200 python3 -m attnverify verify --profile device --variant fp8 --variant gqa --examples 40 --devices cuda:0 --jobs 14 \
  --replay-dir $OUT/replays --report $OUT/verify.json > $OUT/verify.log 2>&1; echo "rc=$?" | tee -a $L
tail -15 $OUT/verify.log | tee -a $L
