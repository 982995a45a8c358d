"""NOAH's searched sub-network (Zhang et al., "Neural Prompt Search"), written from the paper and
the spec for the parity tests: per block, `prompt[l]` tokens appended at the end of the sequence
(replacing the previous block's), an unscaled LoRA update B A h of the whole fused qkv output, and
an adapter y + W_up QuickGELU(W_down y + b_down) + b_up on the MLP output (eval: no dropout)."""
import torch
import torch.nn as nn


class LoraQkv(nn.Module):
    def __init__(self, inner, a, b):
        super().__init__()
        self.inner, self.a, self.b = inner, a, b

    def forward(self, h):
        return self.inner(h) + h @ self.a.t() @ self.b.t()


class AdaptedMlp(nn.Module):
    def __init__(self, inner, dw, db, uw, ub):
        super().__init__()
        self.inner, self.dw, self.db, self.uw, self.ub = inner, dw, db, uw, ub

    def forward(self, x):
        y = self.inner(x)
        h = y @ self.dw.t() + self.db
        h = h * torch.sigmoid(1.702 * h)
        return y + h @ self.uw.t() + self.ub


def apply(model, params, opts):
    prompt, lora, adapter = opts["prompt"], opts["lora"], opts["adapter"]
    for l, blk in enumerate(model.blocks):
        s = f".blocks.{l}"
        if prompt[l] > 0:
            p, prev = params[f"{s}.in.prompt"], (prompt[l - 1] if l > 0 else 0)

            def pre(module, args, p=p, prev=prev):
                x = args[0]
                if prev > 0:
                    x = x[:, :-prev]
                return (torch.cat([x, p.expand(x.shape[0], -1, -1)], 1),)

            blk.register_forward_pre_hook(pre)
        if lora[l] > 0:
            blk.attn.qkv = LoraQkv(blk.attn.qkv, params[f"{s}.attn.qkv.lora_a"], params[f"{s}.attn.qkv.lora_b"])
        if adapter[l] > 0:
            m = f"{s}.mlp_branch"
            blk.mlp = AdaptedMlp(blk.mlp, params[f"{m}.down.weight"], params[f"{m}.down.bias"],
                                 params[f"{m}.up.weight"], params[f"{m}.up.bias"])
