"""Paged decode, bf16 vs fp8 caches: stream-launched (do_bench) and CUDA-graph replay times of the
planned launch, in one process; then fp8 launch settings at pages of 16 (B=32, ctx 32768)."""
import sys

sys.path.insert(0, "ci")
import torch  # noqa: E402

import paged_device_check as pdc  # noqa: E402

E4, E5 = torch.float8_e4m3fn, torch.float8_e5m2
for b, ctx in ((1, 32768), (32, 32768), (1, 131072), (32, 8192), (1, 1024)):
    for bs in (16, 64):
        res = {}
        for name, dt in (("bf16", torch.bfloat16), ("e4m3", E4), ("e5m2", E5)):
            if ctx != 32768 and dt == E5:
                continue
            inp = pdc.bench_inputs(b, ctx, bs, dt)
            us, n = pdc.time_paged(inp)
            ug, _ = pdc.time_paged(inp, graph=True)
            res[name] = (us, ug)
            del inp
            print(f"B={b} ctx={ctx} bs={bs} {name} splits={n}: stream {us:.1f} us, graph {ug:.1f} us"
                  + (f"  fp8 speed-up stream {res['bf16'][0] / us:.2f}x graph {res['bf16'][1] / ug:.2f}x"
                     if name != "bf16" else ""), flush=True)
for bs in (16, 64):
    inp = pdc.bench_inputs(32, 32768, bs, E4)
    for name in ("bn64-w4-s5-r128", "bn64-w4-s5-r128-cast", "bn64-w2-s5-ptx", "bn64-w2-s5-cast",
                 "bn128-w4-s4-cast", "bn64-w4-s4-r128-cast", "bn64-w4-s6-r128-cast", "bn32-w2-s6-cast"):
        try:
            us, _ = pdc.time_paged(inp, config=pdc.named_config(name), graph=True)
            print(f"sweep bs={bs} e4m3 B=32 ctx=32768 {name}: graph {us:.1f} us", flush=True)
        except Exception as e:  # noqa: BLE001
            print(f"sweep bs={bs} {name}: {type(e).__name__}: {str(e)[:100]}", flush=True)
    del inp
