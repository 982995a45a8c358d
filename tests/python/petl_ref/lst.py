"""LST (Sung et al., NeurIPS 2022) on a ViT, as reconstructed: a side ViT of width C/r fed by gated
ladders from every backbone block (h = g h + (1 - g) Down(x_i), g = sigmoid(alpha / T), then the
side block), started from Down_0(embeddings); the head reads Up(LN_side(h)) at the class token.
Written from the description, with the side blocks as explicit tensor maths (not timm's Block).
"""
import torch
import torch.nn.functional as F


def apply(model, params, opts):
    t = opts.get("gate_t", 0.1)
    heads = model.blocks[0].attn.num_heads

    def lin(name, x):
        return F.linear(x, params[f"{name}.weight"], params[f"{name}.bias"])

    def ln(name, x):
        return F.layer_norm(x, (x.shape[-1],), params[f"{name}.weight"], params[f"{name}.bias"], 1e-6)

    def side_block(i, h):
        p = f".side_blocks.{i}"
        b, n, c = h.shape
        hd = c // heads
        q, k, v = lin(f"{p}.attn.qkv", ln(f"{p}.norm1", h)).reshape(b, n, 3, heads, hd).permute(2, 0, 3, 1, 4)
        a = torch.softmax(q @ k.transpose(-2, -1) / hd ** 0.5, -1) @ v
        h = h + lin(f"{p}.attn.proj", a.transpose(1, 2).reshape(b, n, c))
        return h + lin(f"{p}.mlp.fc2", F.gelu(lin(f"{p}.mlp.fc1", ln(f"{p}.norm2", h))))

    def forward(x):
        x = model.norm_pre(model._pos_embed(model.patch_embed(x)))
        h = lin(".tokens.input.down", x)
        for i, blk in enumerate(model.blocks):
            x = blk(x)
            g = torch.sigmoid(params[f".blocks.{i}.out.gate"] / t)
            h = g * h + (1 - g) * lin(f".blocks.{i}.out.down", x)
            h = side_block(i, h)
        return model.head(lin(".up", ln(".side_norm", h))[:, 0])

    model.forward = forward
