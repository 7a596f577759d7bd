export PYTHONPATH=. PYTHONUNBUFFERED=1 TRITON_CACHE_AUTOTUNING=1
L=$OUT/log.txt
echo "== paged sweep" | tee -a $L
timeout 260 python3 .s17/paged_sweep.py 2>&1 | tail -120 | tee -a $L
echo "== verify fp8 (seed 1, 100 examples)" | tee -a $L
timeout 200 python3 -m attnverify verify --profile device --variant fp8 --examples 100 --seed 1 --devices cuda:0 --jobs 14 \
  --replay-dir $OUT/replays --report $OUT/verify_fp8_s1.json > $OUT/verify_fp8_s1.log 2>&1; echo "rc=$?" | tee -a $L
grep -v "devices \[" $OUT/verify_fp8_s1.log | tail -12 | tee -a $L
