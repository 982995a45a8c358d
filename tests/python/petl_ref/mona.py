"""Mona (Yin et al., CVPR 2025, "5%>100%"), written from the paper's definition.

Per module, on a (B, H, W, C) map x: x_hat = LN(x) * s1 + x * s2 (scaled LayerNorm); a linear
down-projection to the bottleneck; the multi-cognitive filter group, the mean of depth-wise
convolutions of sizes 3, 5, 7 plus the identity, then a 1x1 convolution plus the identity; GELU;
dropout (inactive here); a linear up-projection added to x. Two modules per block, on the residual
stream after the attention addition and after the MLP addition. On ViT the module sees the patch
tokens laid out on the patch grid; the prefix tokens pass unchanged.
"""
import re
import types

import torch
import torch.nn.functional as F


class MonaModule:
    def __init__(self, params, site, kernels):
        self.p = lambda n: params[f"{site}.{n}"]
        self.kernels = kernels

    def delta(self, x):
        p = self.p
        c = x.shape[-1]
        x_hat = F.layer_norm(x, (c,), p("norm.weight"), p("norm.bias"), 1e-5) * p("gamma") + x * p("gammax")
        z = F.linear(x_hat, p("down.weight"), p("down.bias")).permute(0, 3, 1, 2)
        groups = z.shape[1]
        if self.kernels:
            filtered = [F.conv2d(z, p(f"conv{k}.weight"), p(f"conv{k}.bias"), padding=k // 2, groups=groups) for k in self.kernels]
            z = torch.stack(filtered).mean(0) + z
        z = z + F.conv2d(z, p("projector.weight"), p("projector.bias"))
        return F.linear(F.gelu(z.permute(0, 2, 3, 1)), p("up.weight"), p("up.bias"))

    def __call__(self, x, num_prefix=0, grid=None):
        if x.dim() == 4:
            return x + self.delta(x)
        prefix, patches = x[:, :num_prefix], x[:, num_prefix:]
        b, n, c = patches.shape
        patches = patches + self.delta(patches.reshape(b, grid[0], grid[1], c)).reshape(b, n, c)
        return torch.cat([prefix, patches], 1)


def identity(x, *args):
    return x


def apply(model, params, opts):
    kernels = opts.get("kernels", [3, 5, 7])
    target = re.compile(opts.get("target", r".*blocks\.\d+\.(mid|out)"))

    def module(site):
        return MonaModule(params, "." + site, kernels) if target.fullmatch(site) else identity

    if hasattr(model, "blocks"):  # ViT
        prefix, grid = model.num_prefix_tokens, tuple(model.patch_embed.grid_size)
        for i, blk in enumerate(model.blocks):
            mid, out = module(f"blocks.{i}.mid"), module(f"blocks.{i}.out")

            def forward(self, x, attn_mask=None, is_causal=False, mid=mid, out=out):
                x = x + self.drop_path1(self.ls1(self.attn(self.norm1(x))))
                x = mid(x, prefix, grid)
                x = x + self.drop_path2(self.ls2(self.mlp(self.norm2(x))))
                return out(x, prefix, grid)

            blk.forward = types.MethodType(forward, blk)
    else:  # Swin
        for i, layer in enumerate(model.layers):
            for j, blk in enumerate(layer.blocks):
                mid, out = module(f"layers.{i}.blocks.{j}.mid"), module(f"layers.{i}.blocks.{j}.out")

                def forward(self, x, mid=mid, out=out):
                    x = x + self.drop_path1(self._attn(self.norm1(x)))
                    x = mid(x)
                    x = x + self.drop_path2(self.mlp(self.norm2(x)))
                    return out(x)

                blk.forward = types.MethodType(forward, blk)
