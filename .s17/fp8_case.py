"""A failing fp8 replay on the GPU: determinism across runs, and the kernel against a float64
emulation of its own algorithm (online softmax over BLOCK_N-key tiles, P rounded through V's
fp8 dtype relative to the running max)."""
import sys

import torch

from attnverify.kernels.fp8 import fp8_attention
from attnverify.reference.fp8 import dequantize, fp8_attention as oracle
from attnverify.verify.case import Case
from attnverify.verify.specs import get_spec

case = Case.load(sys.argv[1])
spec = get_spec("fp8")
inp = spec.make_inputs(case, "cuda")
args = (inp["q"], inp["k"], inp["v"], inp["q_descale"], inp["k_descale"], inp["v_descale"])
kw = dict(causal=inp["causal"], scale=inp["scale"], out_dtype=inp["out_dtype"], return_lse=True)
outs = [fp8_attention(*args, **kw)[0] for _ in range(5)]
print("bitwise equal across 5 runs:", all(torch.equal(outs[0], o) for o in outs[1:]))
out = outs[0].double()
ref, _ = oracle(*args, **kw)
base, _ = spec.baseline(case)(*args, **kw)
err = (out - ref).abs()
idx = tuple(int(i) for i in torch.unravel_index(err.argmax(), err.shape))
print("worst", idx, "kernel", out[idx].item(), "oracle", ref[idx].item(), "baseline", base[idx].item())
print("kernel max err", err.max().item(), "baseline max err", (base.double() - ref).abs().max().item())

f64 = torch.float64
qd, kd, vd = (dequantize(x, s, f64) for x, s in zip(args[:3], args[3:]))
g = qd.shape[1] // kd.shape[1]
kd, vd = kd.repeat_interleave(g, 1), vd.repeat_interleave(g, 1)
sc = inp["scale"] if inp["scale"] is not None else qd.shape[-1] ** -0.5
s = qd @ kd.transpose(-1, -2) * sc
lk = s.shape[-1]
ones = torch.ones(*args[2].shape[:2], 1, 1, dtype=f64, device=s.device).to(args[2].dtype)
vdesc = dequantize(ones, args[5], f64).repeat_interleave(g, 1)
vraw = args[2].double().repeat_interleave(g, 1)
for bn in (32, 64, 128):
    m = torch.full(s.shape[:-1], float("-inf"), dtype=f64, device=s.device)
    l = torch.zeros_like(m)
    acc = torch.zeros(*s.shape[:-1], vd.shape[-1], dtype=f64, device=s.device)
    for j in range(0, lk, bn):
        t = s[..., j : j + bn]
        m_new = torch.maximum(m, t.max(-1).values)
        alpha = torch.exp(m - m_new)
        p = torch.exp(t - m_new[..., None])
        l = l * alpha + p.sum(-1)
        p8 = p.float().to(args[2].dtype).double()
        acc = acc * alpha[..., None] + p8 @ vraw[..., j : j + bn, :]
        m = m_new
    emu = acc / l[..., None] * vdesc
    e = (out - emu).abs()
    print(f"emulation BLOCK_N={bn}: at worst {emu[idx].item():.5f}; max|kernel-emu| {e.max().item():.4g}; "
          f"max|emu-oracle| {(emu - ref).abs().max().item():.4g}")
row = err[idx[0], idx[1], idx[2]]
top = row.topk(6)
print("worst row's largest errors:", [(int(i), round(float(v), 4)) for v, i in zip(top.values, top.indices)])
brow = (base.double() - ref).abs()[idx[0], idx[1], idx[2]]
print("baseline's errors at those columns:", [round(float(brow[i]), 4) for i in top.indices])
print("v at column", idx[3], "for the top-weighted keys:")
w = torch.softmax(s[idx[0], idx[1], idx[2]], -1)
tw = w.topk(5)
print([(int(j), round(float(p), 4), float(vd[idx[0], idx[1], j, idx[3]])) for p, j in zip(tw.values, tw.indices)])
