"""Hydra (Kim et al. 2024): a parallel and a sequential low-rank branch around a linear layer,
    out = W a + b + H_par(a) + H_seq(W a + b),   H(z) = s * (U (D z + d) + u),
by default on attn.proj and mlp.fc2. Eval mode: dropout inactive."""
import re

import torch
import torch.nn as nn
import torch.nn.functional as F


class Branch(nn.Module):
    def __init__(self, params, path, scale):
        super().__init__()
        self.p = {k: params[f"{path}.{k}"] for k in ("down.weight", "down.bias", "up.weight", "up.bias")}
        self.scale = scale

    def forward(self, z):
        h = F.linear(z, self.p["down.weight"], self.p["down.bias"])
        return self.scale * F.linear(h, self.p["up.weight"], self.p["up.bias"])


class HydraLinear(nn.Module):
    def __init__(self, base, params, site, scale):
        super().__init__()
        self.base = base
        self.par, self.seq = Branch(params, f"{site}.par", scale), Branch(params, f"{site}.seq", scale)

    def forward(self, a):
        y = self.base(a)
        return y + self.par(a) + self.seq(y)


def apply(model, params, opts):
    scale = opts.get("scale", 1.0)
    target = re.compile(opts.get("target", r".*(attn\.proj|mlp\.fc2)"))
    names = [n for n, m in model.named_modules() if isinstance(m, nn.Linear) and target.fullmatch(n)]
    assert names, "no target matched"
    for name in names:
        parent_name, attr = name.rsplit(".", 1)
        parent = model.get_submodule(parent_name)
        setattr(parent, attr, HydraLinear(getattr(parent, attr), params, "." + name, scale))
