"""Convpass (Jie & Deng 2022): convolutional bypasses in parallel with attention and MLP, reading the
same normalised input as the branch:
    x = x + Attn(LN1 x) + s * C1(LN1 x);   x = x + MLP(LN2 x) + s * C2(LN2 x)
    C(z) = W_up QGELU(Conv3x3(QGELU(W_down z + b_down))) + b_up,  QGELU(t) = t * sigmoid(1.702 t).
ViT: the patch tokens form the image grid; every leading non-patch token (class, registers) is
convolved as its own 1x1 image. Swin: the convolution runs over the (B, H, W, C) map.
Eval mode: dropout and drop-path are inactive."""
import re

import torch
import torch.nn as nn
import torch.nn.functional as F


def qgelu(t):
    return t * torch.sigmoid(1.702 * t)


class Bypass(nn.Module):
    def __init__(self, params, site, scale, num_prefix):
        super().__init__()
        self.p = {k: params[f"{site}.{k}"] for k in
                  ("down.weight", "down.bias", "conv.weight", "conv.bias", "up.weight", "up.bias")}
        self.scale, self.num_prefix = scale, num_prefix

    def conv(self, img):  # (B, r, H, W)
        return F.conv2d(img, self.p["conv.weight"], self.p["conv.bias"], stride=1, padding=1)

    def forward(self, z):
        d = qgelu(F.linear(z, self.p["down.weight"], self.p["down.bias"]))
        if d.dim() == 4:  # Swin map (B, H, W, r)
            c = self.conv(d.permute(0, 3, 1, 2)).permute(0, 2, 3, 1)
        else:
            B, N, r = d.shape
            P = self.num_prefix
            side = int(round((N - P) ** 0.5))
            patches = self.conv(d[:, P:].reshape(B, side, side, r).permute(0, 3, 1, 2))
            patches = patches.permute(0, 2, 3, 1).reshape(B, side * side, r)
            prefix = [self.conv(d[:, i].reshape(B, r, 1, 1)).reshape(B, 1, r) for i in range(P)]
            c = torch.cat(prefix + [patches], dim=1)
        return F.linear(qgelu(c), self.p["up.weight"], self.p["up.bias"]) * self.scale


def vit_forward(blk, c1, c2):
    def forward(x):
        z = blk.norm1(x)
        x = x + blk.attn(z) + (c1(z) if c1 else 0)
        z = blk.norm2(x)
        return x + blk.mlp(z) + (c2(z) if c2 else 0)
    return forward


def swin_forward(blk, c1, c2):
    def forward(x):
        B, H, W, C = x.shape
        z = blk.norm1(x)
        x = x + blk._attn(z) + (c1(z) if c1 else 0)
        z = blk.norm2(x)
        return x + blk.mlp(z.reshape(B, -1, C)).reshape(B, H, W, C) + (c2(z) if c2 else 0)
    return forward


def apply(model, params, opts):
    scale = opts.get("scale", 1.0)
    branches = opts.get("branches", ["attn", "mlp"])
    num_prefix = getattr(model, "num_prefix_tokens", 0)
    found = [(n, m) for n, m in model.named_modules() if re.search(r"(^|\.)blocks\.\d+$", n)]
    assert found
    for name, blk in found:
        c1 = Bypass(params, f".{name}.attn_branch", scale, num_prefix) if "attn" in branches else None
        c2 = Bypass(params, f".{name}.mlp_branch", scale, num_prefix) if "mlp" in branches else None
        blk.convpass = nn.ModuleList([c for c in (c1, c2) if c is not None])
        blk.forward = (swin_forward if hasattr(blk, "_attn") else vit_forward)(blk, c1, c2)
