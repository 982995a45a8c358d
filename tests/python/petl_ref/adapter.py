"""Adapter (Houlsby et al. 2019; Pfeiffer placement): a bottleneck MLP with its own skip connection on
a residual branch's output, before the residual add: y -> y + W_up act(W_down y + b_down) + b_up.
Houlsby: after the attention branch and after the MLP branch; Pfeiffer: after the MLP branch only.
(Eval mode: dropout is inactive and not modelled.)"""
import re

import torch
import torch.nn as nn
import torch.nn.functional as F


class Sequential(nn.Module):
    """Runs the wrapped branch module, then the adapter on its output (per token)."""

    def __init__(self, inner, params, site, act):
        super().__init__()
        self.inner, self.act = inner, act
        self.dw, self.db = params[f"{site}.down.weight"], params[f"{site}.down.bias"]
        self.uw, self.ub = params[f"{site}.up.weight"], params[f"{site}.up.bias"]

    def forward(self, *args, **kwargs):
        y = self.inner(*args, **kwargs)
        return y + F.linear(self.act(F.linear(y, self.dw, self.db)), self.uw, self.ub)


def blocks(model):
    """(name, block) of every transformer block, ViT or Swin (timm names)."""
    return [(n, m) for n, m in model.named_modules() if re.search(r"(^|\.)blocks\.\d+$", n)]


def apply(model, params, opts):
    placement = opts.get("placement", "pfeiffer")
    act = {"gelu": lambda t: F.gelu(t), "relu": F.relu}[opts.get("activation", "gelu")]
    found = blocks(model)
    assert found
    for name, blk in found:
        # The attention branch's output is the attention module's output (a window attention in Swin:
        # a per-token map commutes with window partition, shift and crop).
        if placement == "houlsby":
            blk.attn = Sequential(blk.attn, params, f".{name}.attn_branch", act)
        blk.mlp = Sequential(blk.mlp, params, f".{name}.mlp_branch", act)
