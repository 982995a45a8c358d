"""LAST (Tang et al., 2024), as reconstructed: u_0 = z_0, u_k = F_k(u_{k-1} + z_k) over the outputs
z_k of every `gap`-th block, F(x) = x + W_o softmax(q k^T / sqrt(r)) v with q, k, v = LN(x) W_{Q,K,V}
(one head of width r); the last block's output is replaced by u_m - sum_{k<m} z_k, then the frozen
final norm and the class token.
"""
import torch
import torch.nn.functional as F


def apply(model, params, opts):
    gap = opts.get("gap", 1)

    def lin(name, x):
        return F.linear(x, params[f"{name}.weight"], params[f"{name}.bias"])

    def lsa(p, x):
        h = F.layer_norm(x, (x.shape[-1],), params[f"{p}.norm.weight"], params[f"{p}.norm.bias"], 1e-6)
        q, k, v = lin(f"{p}.q", h), lin(f"{p}.k", h), lin(f"{p}.v", h)
        a = torch.softmax(q @ k.transpose(-2, -1) / q.shape[-1] ** 0.5, -1) @ v
        return x + lin(f"{p}.o", a)

    def forward(x):
        z = model.norm_pre(model._pos_embed(model.patch_embed(x)))
        u, zs = z, [z]
        for i, blk in enumerate(model.blocks):
            z = blk(z)
            if (i + 1) % gap == 0:
                u = lsa(f".blocks.{i}.out", u + z)
                zs.append(z)
        feat = u - sum(zs[:-1])
        return model.head(model.norm(feat)[:, 0])

    model.forward = forward
