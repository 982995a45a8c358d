"""U-Tuning (Jiang et al., 2023), as reconstructed: x' = OP(x) + U(x) with the tuner in parallel.

- MHA: per head, softmax(q K_p^T / sqrt(d)) V_p added to the attention's output before the output
  projection; K_p, V_p are learnable (prefix) or learnable prompt tokens through the frozen key and
  value projections (prompt).
- FFN / whole block: a parallel adapter up(GELU(down(x))) on the sub-block's (block's) input,
  added to its output.
"""
import re
import types

import torch
import torch.nn.functional as F


def parallel_attention(q, k_p, v_p):
    heads, d = q.shape[1], q.shape[3]
    split = lambda t: t.view(t.shape[0], heads, d).transpose(0, 1)
    weights = torch.softmax(q @ split(k_p).transpose(-2, -1) / d ** 0.5, dim=-1)
    return weights @ split(v_p)


def apply(model, params, opts):
    mha = opts.get("mha", "prefix")
    ffn_r, block_r = opts.get("ffn_bottleneck", 0), opts.get("block_bottleneck", 0)
    chosen = re.compile(opts.get("blocks", ".*"))
    is_vit = hasattr(model, "blocks")
    blocks = [(f"blocks.{i}", b) for i, b in enumerate(model.blocks)] if is_vit else [
        (f"layers.{i}.blocks.{j}", b) for i, l in enumerate(model.layers) for j, b in enumerate(l.blocks)]

    def kv(site, qkv):
        if mha == "prefix":
            return params[f".{site}.attn.prefix_key"], params[f".{site}.attn.prefix_value"]
        c = qkv.in_features
        prompt = params[f".{site}.attn.prompt"]
        w, b = qkv.weight, qkv.bias
        return F.linear(prompt, w[c:2 * c], b[c:2 * c]), F.linear(prompt, w[2 * c:], b[2 * c:])

    def adapter(path):
        dw, db, uw, ub = (params[f"{path}.{n}"] for n in ("down.weight", "down.bias", "up.weight", "up.bias"))
        return lambda x: F.linear(F.gelu(F.linear(x, dw, db)), uw, ub)

    zero = lambda x: 0
    for site, blk in blocks:
        if not chosen.fullmatch(site):
            continue
        if mha != "none":
            attn = blk.attn

            def vit_attn(self, x, attn_mask=None, is_causal=False, site=site):
                b, n, c = x.shape
                q, k, v = self.qkv(x).reshape(b, n, 3, self.num_heads, -1).permute(2, 0, 3, 1, 4).unbind(0)
                w = torch.softmax(q @ k.transpose(-2, -1) * self.scale, dim=-1)
                out = w @ v + parallel_attention(q, *kv(site, self.qkv))
                return self.proj(out.transpose(1, 2).reshape(b, n, c))

            def swin_attn(self, x, mask=None, site=site):
                b, n, c = x.shape
                q, k, v = self.qkv(x).reshape(b, n, 3, self.num_heads, -1).permute(2, 0, 3, 1, 4).unbind(0)
                logits = q @ k.transpose(-2, -1) * self.scale + self._get_rel_pos_bias()
                if mask is not None:
                    nw = mask.shape[0]
                    logits = (logits.view(-1, nw, self.num_heads, n, n) + mask.unsqueeze(1).unsqueeze(0)).view(-1, self.num_heads, n, n)
                out = torch.softmax(logits, dim=-1) @ v + parallel_attention(q, *kv(site, self.qkv))
                return self.proj(out.transpose(1, 2).reshape(b, n, c))

            attn.forward = types.MethodType(vit_attn if is_vit else swin_attn, attn)
        u_ffn = adapter(f".{site}.mlp_branch") if ffn_r else zero
        u_block = adapter(f".{site}.block") if block_r else zero
        if is_vit:
            def forward(self, x, attn_mask=None, is_causal=False, u_ffn=u_ffn, u_block=u_block):
                x_in = x
                x = x + self.drop_path1(self.ls1(self.attn(self.norm1(x))))
                x = x + self.drop_path2(self.ls2(self.mlp(self.norm2(x)) + u_ffn(x)))
                return x + u_block(x_in)
        else:
            def forward(self, x, u_ffn=u_ffn, u_block=u_block):
                x_in = x
                x = x + self.drop_path1(self._attn(self.norm1(x)))
                x = x + self.drop_path2(self.mlp(self.norm2(x)) + u_ffn(x))
                return x + u_block(x_in)
        blk.forward = types.MethodType(forward, blk)
