"""Reference outputs from timm for the Rust parity tests (tools/tests/parity_timm.rs).

Builds a small timm model with random weights, saves its weights (timm names, safetensors), an
input batch and the outputs: logits and every block's output (forward hooks). With --load-size, the
weights come from the same architecture built at another image size and are loaded through timm's
own checkpoint filter (position-embedding resampling). With --npz, the weights are also written in
Google's ViT .npz layout and the outputs come from a model loaded by timm's own npz loader. With
--attention, every attention's probabilities (timm's unfused path, read after its softmax) go to
attention.safetensors as `attn.<i>` in forward order, for the attention-map probes.

Usage: timm_reference.py OUT_DIR --arch vit|swin --kwargs JSON --input-size N [--load-size M] [--npz] [--pth] [--attention]
"""
import argparse
import json
import os

import numpy as np
import torch
from safetensors.torch import save_file


def build(arch, kwargs, img_size):
    if arch == "vit":
        from timm.models.vision_transformer import VisionTransformer
        return VisionTransformer(img_size=img_size, **kwargs)
    from timm.models.swin_transformer import SwinTransformer
    return SwinTransformer(img_size=img_size, **kwargs)


def randomize(model, seed):
    # timm's init leaves biases and norms at 0/1; random values make the comparison meaningful.
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.2)


def write_npz(model, path):
    """Writes a ViT's weights in Google's npz layout (the inverse of timm's _load_weights)."""
    sd = {k: v.detach().numpy() for k, v in model.state_dict().items()}
    d = model.embed_dim
    h = model.blocks[0].attn.num_heads
    w = {
        "embedding/kernel": sd["patch_embed.proj.weight"].transpose(2, 3, 1, 0),
        "embedding/bias": sd["patch_embed.proj.bias"],
        "cls": sd["cls_token"],
        "Transformer/posembed_input/pos_embedding": sd["pos_embed"],
        "Transformer/encoder_norm/scale": sd["norm.weight"],
        "Transformer/encoder_norm/bias": sd["norm.bias"],
        "head/kernel": sd["head.weight"].T,
        "head/bias": sd["head.bias"],
    }
    for i in range(len(model.blocks)):
        b = f"Transformer/encoderblock_{i}/"
        m = b + "MultiHeadDotProductAttention_1/"
        t = f"blocks.{i}."
        w[b + "LayerNorm_0/scale"] = sd[t + "norm1.weight"]
        w[b + "LayerNorm_0/bias"] = sd[t + "norm1.bias"]
        qkv_w = sd[t + "attn.qkv.weight"]
        qkv_b = sd[t + "attn.qkv.bias"]
        for j, n in enumerate(["query", "key", "value"]):
            w[m + n + "/kernel"] = qkv_w[j * d:(j + 1) * d].T.reshape(d, h, d // h)
            w[m + n + "/bias"] = qkv_b[j * d:(j + 1) * d].reshape(h, d // h)
        w[m + "out/kernel"] = sd[t + "attn.proj.weight"].T.reshape(h, d // h, d)
        w[m + "out/bias"] = sd[t + "attn.proj.bias"]
        w[b + "LayerNorm_2/scale"] = sd[t + "norm2.weight"]
        w[b + "LayerNorm_2/bias"] = sd[t + "norm2.bias"]
        for r in range(2):
            w[b + f"MlpBlock_3/Dense_{r}/kernel"] = sd[t + f"mlp.fc{r + 1}.weight"].T
            w[b + f"MlpBlock_3/Dense_{r}/bias"] = sd[t + f"mlp.fc{r + 1}.bias"]
    np.savez(path, **{"opt/target/" + k: v for k, v in w.items()})


def write_microsoft_pth(model, path):
    """Writes a Swin's weights as Microsoft's release does: `torch.save({'model': state_dict})` with
    patch merging at the end of each stage, `head.*`, and the index/mask buffers included."""
    import re
    sd = {}
    for k, v in model.state_dict().items():
        k = re.sub(r"layers\.(\d+)\.downsample", lambda m: f"layers.{int(m.group(1)) - 1}.downsample", k)
        sd[k.replace("head.fc.", "head.")] = v
    for name, module in model.named_modules():
        if hasattr(module, "relative_position_index"):
            sd[name + ".relative_position_index"] = module.relative_position_index
        if getattr(module, "attn_mask", None) is not None:
            sd[name + ".attn_mask"] = module.attn_mask
    torch.save({"model": sd, "epoch": 300, "config": "swin_tiny_test"}, path)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("out")
    ap.add_argument("--arch", choices=["vit", "swin"], required=True)
    ap.add_argument("--kwargs", default="{}")
    ap.add_argument("--input-size", type=int, required=True)
    ap.add_argument("--load-size", type=int)
    ap.add_argument("--npz", action="store_true")
    ap.add_argument("--pth", action="store_true", help="also write weights.pth in Microsoft's Swin layout")
    ap.add_argument("--attention", action="store_true", help="also write attention.safetensors (probabilities)")
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args()
    os.makedirs(a.out, exist_ok=True)
    torch.manual_seed(a.seed)
    kwargs = json.loads(a.kwargs)

    source = build(a.arch, kwargs, a.load_size or a.input_size).eval()
    randomize(source, a.seed)
    save_file({k: v.contiguous() for k, v in source.state_dict().items()}, f"{a.out}/weights.safetensors")
    if a.load_size:
        model = build(a.arch, kwargs, a.input_size).eval()
        mod = __import__(f"timm.models.{'vision_transformer' if a.arch == 'vit' else 'swin_transformer'}", fromlist=["x"])
        model.load_state_dict(mod.checkpoint_filter_fn(source.state_dict(), model))
    else:
        model = source
    if a.npz:
        from timm.models.vision_transformer import _load_weights
        write_npz(source, f"{a.out}/weights.npz")
        model = build(a.arch, kwargs, a.input_size).eval()
        _load_weights(model, f"{a.out}/weights.npz")

    if a.pth:
        write_microsoft_pth(source, f"{a.out}/weights.pth")

    x = torch.randn(2, 3, a.input_size, a.input_size, generator=torch.Generator().manual_seed(a.seed + 1))
    blocks = []
    units = model.blocks if a.arch == "vit" else [b for layer in model.layers for b in layer.blocks]
    for blk in units:
        blk.register_forward_hook(lambda m, i, o: blocks.append(o.detach().clone()))
    probs = []
    if a.attention:
        units_attn = [blk.attn for blk in units]
        for attn in units_attn:
            # The unfused path computes the probabilities explicitly; attn_drop (identity in eval)
            # receives them.
            attn.fused_attn = False
            attn.attn_drop.register_forward_hook(lambda m, i, o: probs.append(o.detach().clone()))
    with torch.no_grad():
        logits = model(x)
    if a.attention:
        save_file({f"attn.{i}": t.contiguous() for i, t in enumerate(probs)}, f"{a.out}/attention.safetensors")
    out = {"logits": logits}
    out.update({f"blocks.{i}": t.contiguous() for i, t in enumerate(blocks)})
    save_file({"input": x}, f"{a.out}/input.safetensors")
    save_file(out, f"{a.out}/expected.safetensors")


if __name__ == "__main__":
    main()
