"""timm's CosineLRScheduler learning rates at every step, for tests/tests/engine_schedule.rs.

Prints a JSON list of lr values for t = 0..N-1, for the scheduler built with the JSON kwargs.
Usage: timm_schedule.py KWARGS_JSON BASE_LR N
"""
import json
import sys

import torch
from timm.scheduler.cosine_lr import CosineLRScheduler

kwargs, base, n = json.loads(sys.argv[1]), float(sys.argv[2]), int(sys.argv[3])
opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=base)
sched = CosineLRScheduler(opt, **kwargs)
print(json.dumps([sched._get_lr(t)[0] for t in range(n)]))
