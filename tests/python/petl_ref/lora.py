"""LoRA (Hu et al. 2021): y = W x + (alpha / r) B A x, per q/k/v part on a fused qkv layer."""
import re

import torch
import torch.nn as nn


class LoraLinear(nn.Module):
    def __init__(self, base, parts, scale):
        super().__init__()
        self.base, self.parts, self.scale = base, parts, scale

    def forward(self, x):
        y = self.base(x)
        delta = torch.zeros_like(y)
        for offset, a, b in self.parts:
            d = x @ a.t() @ b.t()
            delta = delta + nn.functional.pad(d, [offset, y.shape[-1] - offset - d.shape[-1]])
        return y + self.scale * delta


def apply(model, params, opts):
    rank, alpha = opts.get("rank", 8), opts.get("alpha", 8.0)
    parts = opts.get("parts", ["q", "v"])
    target = re.compile(opts.get("target", r".*attn\.qkv"))
    names = [n for n, m in model.named_modules() if isinstance(m, nn.Linear) and target.fullmatch(n)]
    assert names, "no target matched"
    for name in names:
        parent_name, attr = name.rsplit(".", 1)
        parent = model.get_submodule(parent_name)
        base = getattr(parent, attr)
        d = base.in_features
        site = "." + name
        if name.endswith("attn.qkv") and base.out_features == 3 * d:
            offsets = {"q": 0, "k": d, "v": 2 * d}
            slices = [(offsets[p], params[f"{site}.lora_a_{p}"], params[f"{site}.lora_b_{p}"]) for p in sorted(set(parts))]
        else:
            slices = [(0, params[f"{site}.lora_a"], params[f"{site}.lora_b"])]
        setattr(parent, attr, LoraLinear(base, slices, alpha / rank))
