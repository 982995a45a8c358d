"""Shared pieces of the FacT references (Jie & Deng 2023). Each 768x768-style "unit" of q, k, v,
proj, fc1 (4 output units) and fc2 (4 input units) gets s * V(core(U(x))) added, with U: d -> r and
V: r -> d shared by every layer of width d (one pair per Swin stage). Eval mode: dropout inactive."""
import re

import torch
import torch.nn as nn
import torch.nn.functional as F

PARTS = ("qkv", "proj", "fc1", "fc2")


def blocks(model):
    return [(n, m) for n, m in model.named_modules() if re.search(r"(^|\.)blocks\.\d+$", n)]


class Patched(nn.Module):
    """A linear layer plus s * delta(x)."""

    def __init__(self, base, delta, scale):
        super().__init__()
        self.base, self.delta, self.scale = base, delta, scale

    def forward(self, x):
        return self.base(x) + self.scale * self.delta(x)


def install(model, params, opts, deltas):
    """deltas(block_name, block, U, V) -> {part: fn}; wraps the chosen parts of every block."""
    scale = opts.get("scale", 1.0)
    parts = opts.get("parts", list(PARTS))
    found = blocks(model)
    assert found
    for name, blk in found:
        d = blk.norm1.normalized_shape[0]
        U, V = params[f".width_{d}.u.weight"], params[f".width_{d}.v.weight"]
        fns = deltas(name, blk, U, V, parts)
        for part in parts:
            parent = blk.attn if part in ("qkv", "proj") else blk.mlp
            setattr(parent, part, Patched(getattr(parent, part), fns[part], scale))
