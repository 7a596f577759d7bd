"""fp8 (e4m3) launch settings against the default, CUDA-graph replay times, one process; bf16
default and 2-warp alongside (the ratio's denominator)."""
import sys

sys.path.insert(0, "ci")
import torch  # noqa: E402

import paged_device_check as pdc  # noqa: E402

E4 = torch.float8_e4m3fn
FP8 = ["default", "bn64-w2-s5-ptx", "bn64-w2-s5-cast", "bn64-w2-s4-ptx", "bn64-w2-s6-ptx",
       "bn64-w1-s5-ptx", "bn64-w1-s5-cast", "bn128-w2-s4-ptx", "bn128-w2-s5-ptx", "bn32-w1-s6-ptx",
       "bn64-w2-s5-r128-ptx", "bn64-w2-s5-bits"]
BF16 = ["default", "bn64-w2-s3", "bn64-w2-s4", "bn64-w1-s4"]
for b, ctx in ((32, 32768), (1, 32768), (1, 131072)):
    for bs in (16, 64):
        for dt, names in ((torch.bfloat16, BF16), (E4, FP8)):
            inp = pdc.bench_inputs(b, ctx, bs, dt)
            for name in names:
                cfg = None if name == "default" else pdc.named_config(name)
                try:
                    us, n = pdc.time_paged(inp, config=cfg, graph=True)
                    print(f"B={b} ctx={ctx} bs={bs} {str(dt)[6:]} {name} splits={n}: graph {us:.1f} us", flush=True)
                except Exception as e:  # noqa: BLE001
                    print(f"B={b} ctx={ctx} bs={bs} {name}: {type(e).__name__}: {str(e)[:80]}", flush=True)
            del inp
