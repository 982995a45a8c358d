"""LoRand (Yin et al., CVPR 2023), written from the paper's definition.

A multi-branch low-rank projection from `in` to `out` channels has the weight
W^T = sum_i P_i K_i Q_i (P_i: in x beta, K_i: beta x beta, Q_i: beta x out) and a bias. The adapter
is L(z) = z + LM_up(GELU(LM_down(z))), C -> C/factor -> C, applied to the output of every block's
attention and MLP branches before the residual addition.
"""
import re
import types

import torch.nn.functional as F


def low_rank(params, path):
    p, k, q, b = (params[f"{path}.{n}"] for n in ("p", "k", "q", "bias"))
    weight_t = sum(p[i] @ k[i] @ q[i] for i in range(p.shape[0]))
    return lambda x: x @ weight_t + b


def bottleneck(params, site):
    down, up = low_rank(params, f"{site}.down"), low_rank(params, f"{site}.up")
    return lambda z: up(F.gelu(down(z)))


def apply(model, params, opts):
    target = re.compile(opts.get("target", r".*(attn|mlp)_branch"))

    def adapter(site):
        if not target.fullmatch(site):
            return lambda z: z
        delta = bottleneck(params, "." + site)
        return lambda z: z + delta(z)

    if hasattr(model, "blocks"):  # ViT
        for i, blk in enumerate(model.blocks):
            la, lm = adapter(f"blocks.{i}.attn_branch"), adapter(f"blocks.{i}.mlp_branch")

            def forward(self, x, attn_mask=None, is_causal=False, la=la, lm=lm):
                x = x + self.drop_path1(self.ls1(la(self.attn(self.norm1(x)))))
                return x + self.drop_path2(self.ls2(lm(self.mlp(self.norm2(x)))))

            blk.forward = types.MethodType(forward, blk)
    else:  # Swin
        for i, layer in enumerate(model.layers):
            for j, blk in enumerate(layer.blocks):
                la, lm = adapter(f"layers.{i}.blocks.{j}.attn_branch"), adapter(f"layers.{i}.blocks.{j}.mlp_branch")

                def forward(self, x, la=la, lm=lm):
                    x = x + self.drop_path1(la(self._attn(self.norm1(x))))
                    return x + self.drop_path2(lm(self.mlp(self.norm2(x))))

                blk.forward = types.MethodType(forward, blk)
