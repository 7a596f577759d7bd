export PYTHONPATH=. PYTHONUNBUFFERED=1 TRITON_CACHE_AUTOTUNING=1
L=$OUT/log.txt
echo "== fp8 case" | tee -a $L
timeout 60 python3 .s17/fp8_case.py .s17/fp8-float8_e4m3fn-df4e9a4747.json 2>&1 | tail -12 | tee -a $L
echo "== paged graph" | tee -a $L
timeout 200 python3 .s17/paged_graph.py 2>&1 | tail -60 | tee -a $L
echo "== verify fp8" | tee -a $L
timeout 170 python3 -m attnverify verify --profile device --variant fp8 --examples 40 --devices cuda:0 --jobs 14 \
  --replay-dir $OUT/replays --report $OUT/verify_fp8.json > $OUT/verify_fp8.log 2>&1; echo "rc=$?" | tee -a $L
grep -v "devices \[" $OUT/verify_fp8.log | tail -12 | tee -a $L
