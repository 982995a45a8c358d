"""SNF (Wang et al., CVPR 2023): both shortcuts of every block become a flow, affine
mu + exp(logsigma) z followed by K planar layers z + u tanh(z w^T + b); the branches read the
untransformed input: x = Flow1(x) + Attn(LN1(x)); x = Flow2(x) + MLP(LN2(x)).
"""
import types

import torch


def apply(model, params, opts):
    k = opts.get("flow_length", 1)

    def flow(p, z):
        y = params[f"{p}.mu"] + torch.exp(params[f"{p}.logsigma"]) * z
        for j in range(k):
            q = f"{p}.planar.{j}"
            y = y + params[f"{q}.u"] * torch.tanh(y @ params[f"{q}.w"].t() + params[f"{q}.b"])
        return y

    for i, blk in enumerate(model.blocks):
        def forward(self, x, attn_mask=None, is_causal=False, i=i):
            x = flow(f".blocks.{i}.flow1", x) + self.drop_path1(self.ls1(self.attn(self.norm1(x))))
            return flow(f".blocks.{i}.flow2", x) + self.drop_path2(self.ls2(self.mlp(self.norm2(x))))

        blk.forward = types.MethodType(forward, blk)
