"""SSF (Lian et al., NeurIPS 2022): every feature map the frozen model computes at the chosen
operations is rescaled and shifted per channel, y * gamma + beta. The paper's operations: the patch
projection, every LayerNorm (block norms, the patch-embedding and patch-merging norms, the final
norm) and the four linear layers of each block (qkv, proj, fc1 before the GELU, fc2)."""
import re

import torch.nn as nn

BLOCK_LINEARS = re.compile(r".*\.(attn\.qkv|attn\.proj|mlp\.fc1|mlp\.fc2)")


class Affine(nn.Module):
    """Runs `inner`, then scales and shifts its output along `channel_dim`."""

    def __init__(self, inner, scale, shift, channel_dim):
        super().__init__()
        self.inner, self.scale, self.shift, self.channel_dim = inner, scale, shift, channel_dim

    def forward(self, x):
        y = self.inner(x)
        shape = [1] * y.dim()
        shape[self.channel_dim] = -1
        return y * self.scale.view(shape) + self.shift.view(shape)


def rust_name(name, is_swin):
    """timm's module name -> the Rust site name (Swin's patch merging sits one stage earlier there)."""
    if is_swin:
        name = re.sub(r"layers\.(\d+)\.downsample", lambda m: f"layers.{int(m.group(1)) - 1}.downsample", name)
    return name


def apply(model, params, opts):
    is_swin = type(model).__name__.startswith("Swin")
    chosen = []
    for name, m in model.named_modules():
        if isinstance(m, nn.LayerNorm):
            chosen.append((name, -1))
        elif isinstance(m, nn.Linear) and BLOCK_LINEARS.fullmatch(name):
            chosen.append((name, -1))
        elif isinstance(m, nn.Conv2d) and name == "patch_embed.proj":
            chosen.append((name, 1))  # the conv's output is (B, C, H, W)
    assert chosen
    for name, channel_dim in chosen:
        parent_name, _, attr = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        site = "." + rust_name(name, is_swin)
        setattr(parent, attr, Affine(getattr(parent, attr), params[site + ".scale"], params[site + ".shift"], channel_dim))
