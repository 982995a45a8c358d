"""Prefix tuning for vision transformers (Li & Liang 2021, as the U-Tuning authors apply it): at every
self-attention, L learned key and value vectors per layer (split into heads) are appended to the
keys and values computed from the tokens; queries are unchanged. Optionally the prefixes come from
an MLP over a learned embedding: [P_k, P_v] = W2 tanh(W1 E + b1) + b2."""
import torch
import torch.nn.functional as F


def prefixes(params, site, hidden):
    if hidden is None:
        return params[site + ".prefix_key"], params[site + ".prefix_value"]
    e = params[site + ".reparam.embedding"]
    h = torch.tanh(F.linear(e, params[site + ".reparam.fc1.weight"], params[site + ".reparam.fc1.bias"]))
    kv = F.linear(h, params[site + ".reparam.fc2.weight"], params[site + ".reparam.fc2.bias"])
    c = e.shape[-1]
    return kv[:, :c], kv[:, c:]


def split_heads(p, batch, heads):
    length, c = p.shape
    return p.reshape(length, heads, c // heads).permute(1, 0, 2).unsqueeze(0).expand(batch, -1, -1, -1)


def attend(q, k, v, bias):
    """softmax(q k^T / sqrt(d) + bias) v, written out."""
    scores = (q * q.shape[-1] ** -0.5) @ k.transpose(-2, -1)
    if bias is not None:
        scores = scores + bias
    return scores.softmax(-1) @ v


def vit_forward(attn, pk, pv):
    def forward(x, attn_mask=None, is_causal=False):
        b, n, c = x.shape
        h = attn.num_heads
        q, k, v = attn.qkv(x).reshape(b, n, 3, h, c // h).permute(2, 0, 3, 1, 4).unbind(0)
        k = torch.cat([k, split_heads(pk, b, h)], 2)
        v = torch.cat([v, split_heads(pv, b, h)], 2)
        out = attend(q, k, v, None)
        return attn.proj(out.transpose(1, 2).reshape(b, n, c))
    return forward


def swin_forward(attn, pk, pv):
    def forward(x, mask=None):
        b, n, c = x.shape
        h = attn.num_heads
        q, k, v = attn.qkv(x).reshape(b, n, 3, h, c // h).permute(2, 0, 3, 1, 4).unbind(0)
        length = pk.shape[0]
        k = torch.cat([k, split_heads(pk, b, h)], 2)
        v = torch.cat([v, split_heads(pv, b, h)], 2)
        # Position bias and shift mask for token keys; the prefixes get neither.
        bias = attn._get_rel_pos_bias().expand(b, -1, -1, -1)
        if mask is not None:
            nw = mask.shape[0]
            bias = (bias.reshape(b // nw, nw, h, n, n) + mask.view(1, nw, 1, n, n)).reshape(b, h, n, n)
        bias = F.pad(bias, [0, length])
        out = attend(q, k, v, bias)
        return attn.proj(out.transpose(1, 2).reshape(b, n, c))
    return forward


def apply(model, params, opts):
    hidden = opts.get("reparam_hidden")
    is_swin = type(model).__name__.startswith("Swin")
    done = 0
    for name, m in model.named_modules():
        if not name.endswith(".attn") or not hasattr(m, "qkv"):
            continue
        pk, pv = prefixes(params, "." + name, hidden)
        m.forward = (swin_forward if is_swin else vit_forward)(m, pk, pv)
        done += 1
    assert done
