export PYTHONPATH=. PYTHONUNBUFFERED=1 TRITON_CACHE_AUTOTUNING=1
L=$OUT/log.txt
echo "== replay the fp8 case (new sm90 out rule)" | tee -a $L
timeout 60 python3 -m attnverify replay .s17/fp8-float8_e4m3fn-df4e9a4747.json 2>&1 | grep -v "^ " | tail -4 | tee -a $L
echo "== verify paged + fp8 (seed 0: the run that failed; 40 examples)" | tee -a $L
timeout 170 python3 -m attnverify verify --profile device --variant paged --variant fp8 --examples 40 --devices cuda:0 --jobs 14 \
  --replay-dir $OUT/replays --report $OUT/verify.json > $OUT/verify.log 2>&1; echo "rc=$?" | tee -a $L
grep -v "devices \[" $OUT/verify.log | tail -14 | tee -a $L
echo "== bench paged" | tee -a $L
timeout 330 python3 -m attnverify bench --variant paged --json $OUT/bench_paged.json > $OUT/bench_paged.log 2>&1; echo "rc=$?" | tee -a $L
python3 ci/targets.py $OUT/bench_paged.json --markdown $OUT/targets.md 2>&1 | grep "#8" | tee -a $L
