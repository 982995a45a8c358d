"""RepAdapter (Luo et al. 2023): a linear adapter with a group-wise up-projection on the input of
the targeted linear layers (default qkv and fc1, i.e. right after norm1 / norm2):
    RA(z) = z + s * (GroupConv1x1_B(Conv1x1_A(z)) + ...),  A: C -> r (dense, bias), B: r -> C (groups, bias).
Written with 1x1 (grouped) Conv1d as in the paper. Eval mode: dropout inactive."""
import re

import torch
import torch.nn as nn
import torch.nn.functional as F


class Adapted(nn.Module):
    def __init__(self, base, params, site, groups, scale):
        super().__init__()
        self.base, self.groups, self.scale = base, groups, scale
        self.aw, self.ab = params[f"{site}.down.weight"], params[f"{site}.down.bias"]
        self.bw, self.bb = params[f"{site}.up.weight"], params[f"{site}.up.bias"]

    def forward(self, z):
        shape = z.shape
        t = z.reshape(-1, shape[-2], shape[-1]).transpose(1, 2)  # (B, C, N)
        h = F.conv1d(t, self.aw.unsqueeze(-1), self.ab)
        up = F.conv1d(h, self.bw.unsqueeze(-1), self.bb, groups=self.groups)
        adapted = (t + self.scale * up).transpose(1, 2).reshape(shape)
        return self.base(adapted)


def apply(model, params, opts):
    groups, scale = opts.get("groups", 2), opts.get("scale", 1.0)
    target = re.compile(opts.get("target", r".*(attn\.qkv|mlp\.fc1)"))
    names = [n for n, m in model.named_modules() if isinstance(m, nn.Linear) and target.fullmatch(n)]
    assert names, "no target matched"
    for name in names:
        parent_name, attr = name.rsplit(".", 1)
        parent = model.get_submodule(parent_name)
        setattr(parent, attr, Adapted(getattr(parent, attr), params, "." + name, groups, scale))
