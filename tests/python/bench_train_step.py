"""Training-step timing of timm's ViT-B/16 with LoRA (rank 8 on q and v, head trained, the rest
frozen), the reference side of `tools/bench train-step`. Same setting as the Rust side: random
weights and inputs, AdamW, cross-entropy, optional autocast.

Prints one JSON object: {"median_s", "times_s", "peak_memory_mb", "loss", "device", "dtype"}.
"""
import argparse
import json
import time

import torch
import torch.nn as nn
from timm.models.vision_transformer import VisionTransformer


class QVLora(nn.Module):
    """y = W x + (alpha / r) [B_q A_q x, 0, B_v A_v x] on a fused qkv layer."""

    def __init__(self, base, rank, alpha):
        super().__init__()
        d = base.in_features
        self.base, self.d, self.scale = base, d, alpha / rank
        self.a_q = nn.Parameter(torch.randn(rank, d) * 0.01)
        self.b_q = nn.Parameter(torch.zeros(d, rank))
        self.a_v = nn.Parameter(torch.randn(rank, d) * 0.01)
        self.b_v = nn.Parameter(torch.zeros(d, rank))

    def forward(self, x):
        y = self.base(x)
        q = (x @ self.a_q.t()) @ self.b_q.t()
        v = (x @ self.a_v.t()) @ self.b_v.t()
        return y + self.scale * torch.cat([q, torch.zeros_like(q), v], dim=-1)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--dtype", choices=["float32", "bfloat16", "float16"], default="bfloat16")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    a = ap.parse_args()
    dev = torch.device(a.device)
    model = VisionTransformer(img_size=224, patch_size=16, embed_dim=768, depth=12, num_heads=12,
                              num_classes=100, drop_path_rate=0.1)
    for p in model.parameters():
        p.requires_grad_(False)
    for blk in model.blocks:
        blk.attn.qkv = QVLora(blk.attn.qkv, rank=8, alpha=8)
    for p in model.head.parameters():
        p.requires_grad_(True)
    model.to(dev).train()
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=1e-3, weight_decay=1e-4)
    x = torch.randn(a.batch, 3, 224, 224, device=dev)
    y = torch.randint(0, 100, (a.batch,), device=dev)
    dtype = getattr(torch, a.dtype)
    scaler = torch.amp.GradScaler(enabled=a.dtype == "float16")
    sync = torch.cuda.synchronize if dev.type == "cuda" else (lambda: None)
    times, loss = [], None
    if dev.type == "cuda":
        torch.cuda.reset_peak_memory_stats(dev)
    for i in range(a.warmup + a.steps):
        sync()
        t = time.perf_counter()
        with torch.autocast(dev.type, dtype=dtype, enabled=a.dtype != "float32"):
            loss = nn.functional.cross_entropy(model(x), y)
        scaler.scale(loss).backward()
        scaler.step(opt)
        scaler.update()
        opt.zero_grad(set_to_none=True)
        sync()
        if i >= a.warmup:
            times.append(time.perf_counter() - t)
    peak = torch.cuda.max_memory_allocated(dev) / 2**20 if dev.type == "cuda" else 0.0
    times.sort()
    print(json.dumps({"median_s": times[len(times) // 2], "times_s": times, "peak_memory_mb": peak,
                      "loss": float(loss), "device": str(dev), "dtype": a.dtype}))


if __name__ == "__main__":
    main()
