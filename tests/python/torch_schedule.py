"""torch.optim.lr_scheduler's MultiStepLR and PolynomialLR at every step, for
tests/tests/engine_schedule.rs.

Usage: torch_schedule.py multistep|poly KWARGS_JSON BASE_LR N  -> JSON list of lr for t = 0..N-1
"""
import json
import sys

import torch

kind, kwargs, base, n = sys.argv[1], json.loads(sys.argv[2]), float(sys.argv[3]), int(sys.argv[4])
opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=base)
cls = {"multistep": torch.optim.lr_scheduler.MultiStepLR, "poly": torch.optim.lr_scheduler.PolynomialLR}[kind]
sched = cls(opt, **kwargs)
out = []
for _ in range(n):
    out.append(opt.param_groups[0]["lr"])
    opt.step()
    sched.step()
print(json.dumps(out))
