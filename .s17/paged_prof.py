"""Time or run once the paged kernel at B, ctx, block size, cache dtype, config name."""
import sys

sys.path.insert(0, "ci")
import torch  # noqa: E402

import paged_device_check as pdc  # noqa: E402

DT = {"bf16": torch.bfloat16, "e4m3": torch.float8_e4m3fn, "e5m2": torch.float8_e5m2}


def main() -> None:
    mode, b, ctx, bs, dt = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]), sys.argv[5]
    cfg = pdc.named_config(sys.argv[6]) if len(sys.argv) > 6 else None
    inp = pdc.bench_inputs(b, ctx, bs, DT[dt])
    if mode == "once":
        q, k, v, tables, lens, kd, vd = inp
        plan = pdc.plan_paged(q, k, v, tables, lens, k_descale=kd, v_descale=vd, config=cfg)
        for _ in range(3):
            pdc.launch_paged(q, k, v, tables, lens, kd, vd, scale=plan.scale, num_splits=plan.num_splits,
                             kv_layout="NHD", config=plan.config)
        torch.cuda.synchronize()
        print("plan", plan)
    else:
        us, n = pdc.time_paged(inp, config=cfg)
        gbs = pdc.kv_bytes(b, ctx, DT[dt]) / us / 1e3
        print(f"time B={b} ctx={ctx} bs={bs} {dt} cfg={sys.argv[6] if cfg else 'default'} splits={n}: {us:.1f} us {gbs:.0f} GB/s", flush=True)


main()
