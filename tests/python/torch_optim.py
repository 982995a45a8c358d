"""torch.optim.AdamW / SGD over a fixed sequence of gradients, for tests/tests/engine_optim.rs.

Usage: torch_optim.py IN.safetensors OUT.safetensors SETTINGS_JSON
IN holds `param.<i>` (initial values) and `grad.<t>.<i>` (the gradient of parameter i at step t; a
missing one means none at that step, as `zero_grad()` leaves it). SETTINGS_JSON: {"optimizer": "adamw"|"sgd", "kwargs":
{...}, "groups": [{"params": [i, ...], "lr_mult": f, "weight_decay": w}, ...], "lrs": [lr per step]}.
OUT gets `param.<i>` after the last step.
"""
import json
import sys

import torch
from safetensors.torch import load_file, save_file

src, dst, settings = sys.argv[1], sys.argv[2], json.loads(sys.argv[3])
tensors = load_file(src)
n = sum(1 for k in tensors if k.startswith("param."))
params = [torch.nn.Parameter(tensors[f"param.{i}"].clone()) for i in range(n)]
groups = [
    {"params": [params[i] for i in g["params"]], "weight_decay": g["weight_decay"], "lr_mult": g["lr_mult"]}
    for g in settings["groups"]
]
cls = {"adamw": torch.optim.AdamW, "sgd": torch.optim.SGD}[settings["optimizer"]]
opt = cls(groups, lr=settings["lrs"][0], **settings["kwargs"])
for t, lr in enumerate(settings["lrs"]):
    for g in opt.param_groups:
        g["lr"] = lr * g["lr_mult"]
    for i, p in enumerate(params):
        g = tensors.get(f"grad.{t}.{i}")
        p.grad = g
    opt.step()
save_file({f"param.{i}": p.detach().contiguous() for i, p in enumerate(params)}, dst)
