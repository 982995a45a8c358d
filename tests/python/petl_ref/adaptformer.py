"""AdaptFormer (Chen et al. 2022): a scaled bottleneck adapter in parallel with the MLP, reading the
post-attention residual stream h and added outside the MLP's drop-path:
    x_out = h + DropPath(MLP(LN2 h)) + s * (W_up ReLU(W_down LN_a(h) + b_down) + b_up),
with the adapter LayerNorm (eps 1e-5) on the input ("in"), on the scaled output ("out") or absent.
Eval mode: dropout and drop-path are inactive."""
import re

import torch
import torch.nn as nn
import torch.nn.functional as F


class Adapter(nn.Module):
    def __init__(self, params, site, scale, layernorm):
        super().__init__()
        self.p = {k: params[f"{site}.{k}"] for k in ("down.weight", "down.bias", "up.weight", "up.bias")}
        if layernorm != "none":
            self.nw, self.nb = params[f"{site}.norm.weight"], params[f"{site}.norm.bias"]
        self.scale, self.layernorm = scale, layernorm

    def norm(self, t):
        return F.layer_norm(t, (t.shape[-1],), self.nw, self.nb, 1e-5)

    def forward(self, h):
        if self.layernorm == "in":
            h = self.norm(h)
        down = F.relu(F.linear(h, self.p["down.weight"], self.p["down.bias"]))
        up = F.linear(down, self.p["up.weight"], self.p["up.bias"]) * self.scale
        return self.norm(up) if self.layernorm == "out" else up


def vit_forward(blk, adapter):
    def forward(x):
        x = x + blk.drop_path1(blk.ls1(blk.attn(blk.norm1(x))))
        h = x
        return h + blk.drop_path2(blk.ls2(blk.mlp(blk.norm2(h)))) + adapter(h)
    return forward


def swin_forward(blk, adapter):
    def forward(x):
        B, H, W, C = x.shape
        x = x + blk.drop_path1(blk._attn(blk.norm1(x)))
        h = x
        m = blk.mlp(blk.norm2(h.reshape(B, -1, C))).reshape(B, H, W, C)
        return h + blk.drop_path2(m) + adapter(h)
    return forward


def apply(model, params, opts):
    scale, layernorm = opts.get("scale", 0.1), opts.get("layernorm", "none")
    found = [(n, m) for n, m in model.named_modules() if re.search(r"(^|\.)blocks\.\d+$", n)]
    assert found
    for name, blk in found:
        adapter = Adapter(params, f".{name}.mlp_branch", scale, layernorm)
        blk.adaptformer = adapter
        is_swin = hasattr(blk, "_attn")
        blk.forward = (swin_forward if is_swin else vit_forward)(blk, adapter)
