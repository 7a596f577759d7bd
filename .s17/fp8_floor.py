"""For each fp8 case of a GPU verify report: the logit scale S and out's summand magnitude M
(computed here, on the CPU, from the same inputs), and what the GPU's out and lse errors
are in units of S (lse) and S * M (out)."""
import json
import sys

import torch

from attnverify.verify.case import Case
from attnverify.verify.specs import get_spec
from attnverify.kernels.fp8 import fp8_attention  # noqa: F401  (spec imports)
from attnverify.reference.fp8 import fp8_attention as oracle

rep = json.load(open(sys.argv[1]))
spec = get_spec("fp8")
rows = []
for c in rep["cases"]:
    case = Case.from_json(json.dumps(c["case"]))
    inp = spec.make_inputs(case, "cpu")
    args = [inp[n] for n in ("q", "k", "v", "q_descale", "k_descale", "v_descale")]
    out, lse = oracle(*args, causal=inp["causal"], scale=inp["scale"], out_dtype=inp["out_dtype"], return_lse=True)
    mags = spec.magnitudes(case, inp, {"out": out, "lse": lse})
    cmp = {x["quantity"]: x for x in c["comparisons"]}
    o, l = cmp["out"], cmp["lse"]
    S, M = mags["lse"], mags["out"]
    excess = max(0.0, o["max_abs"] - 3 * o["baseline_max_abs"])
    rows.append((excess / (S * M), o["max_abs"] / (S * M), l["max_abs"] / S, o["passed"], case.dtype, case.distribution, case.head_dim, case.scale, S, M, o["max_abs"], o["baseline_max_abs"]))
rows.sort(reverse=True)
print("excess/(S M)  out/(S M)  lse/S  passed dtype dist D scale S M out_err base_err")
for r in rows[:15]:
    print(" ".join(f"{x:.3g}" if isinstance(x, float) else str(x) for x in r))
print("max lse/S", max(r[2] for r in rows), "2^-9 =", 2**-9)
