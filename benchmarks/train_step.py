"""The reference side of `tools/bench train-step`: one training step (forward, backward, AdamW) of a
timm VisionTransformer with a PETL method written in plain PyTorch (tests/python/petl_ref/), on the
same weights as ours.

Before timing it checks what makes the comparison fair: given our variables and input
(DIR/weights.safetensors, DIR/input.safetensors with `input` and our eval-mode `logits`), it
reports the trainable parameter count and the largest difference between its logits and ours.
Then it times `--repeats` steps after `--warmup` on random data of the same shape.

Prints one JSON object: {"trainable": N, "max_diff": d, "median_s": t, "times_s": [...],
"peak_mem_bytes": m (CUDA only)}.
"""
import argparse
import importlib
import json
import os
import sys
import time

import torch
import torch.nn.functional as F
from safetensors.torch import load_file

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "tests", "python"))
from petl_reference import Params, build_backbone, to_timm_names  # noqa: E402


def build(a):
    spec = json.loads(a.backbone)
    weights = load_file(os.path.join(a.dir, "weights.safetensors"))
    model = build_backbone(spec, a.num_classes)
    missing, unexpected = model.load_state_dict(to_timm_names(weights, spec["type"] == "Swin"), strict=False)
    assert not missing and not unexpected, (missing, unexpected)
    for p in model.parameters():
        p.requires_grad_(a.method == "full")
    trainable = [p for n, p in model.named_parameters() if a.method == "full" or n.startswith("head.")]
    for p in trainable:
        p.requires_grad_(True)
    if a.method not in ("full", "probe"):
        method = importlib.import_module(f"petl_ref.{a.method}")
        params = Params(weights, a.prefix or f"methods.{a.method}")
        method.apply(model, params, json.loads(a.options))
        # The method's tensors are attributes, not registered parameters: give them to the optimiser
        # and move them with the model explicitly.
        trainable += list(params.p.values())
        return model, trainable, params
    return model, trainable, None


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("dir")
    ap.add_argument("--backbone", required=True)
    ap.add_argument("--num-classes", type=int, required=True)
    ap.add_argument("--method", required=True, help="full, probe, or a module of tests/python/petl_ref/")
    ap.add_argument("--prefix")
    ap.add_argument("--options", default="{}")
    ap.add_argument("--batch", type=int, required=True)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--threads", type=int, default=0)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--amp", choices=["none", "bf16", "fp16"], default="none")
    a = ap.parse_args()
    if a.threads:
        torch.set_num_threads(a.threads)
    model, trainable, params = build(a)

    # Equal outputs on the same weights (eval mode, fp32, CPU).
    inp = load_file(os.path.join(a.dir, "input.safetensors"))
    model.eval()
    with torch.no_grad():
        max_diff = (model(inp["input"]) - inp["logits"]).abs().max().item()

    dev = torch.device(a.device)
    model.to(dev)
    if params is not None:
        with torch.no_grad():
            for k, p in params.p.items():
                p.data = p.data.to(dev)
    opt = torch.optim.AdamW(trainable, lr=1e-3, weight_decay=1e-2)
    size = json.loads(a.backbone)["img_size"]
    x = torch.randn(a.batch, 3, size, size, device=dev)
    y = torch.randint(0, a.num_classes, (a.batch,), device=dev)
    amp = {"none": None, "bf16": torch.bfloat16, "fp16": torch.float16}[a.amp]
    model.train()
    if dev.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    times = []
    for i in range(a.warmup + a.repeats):
        t = time.perf_counter()
        with torch.autocast(dev.type, dtype=amp, enabled=amp is not None):
            loss = F.cross_entropy(model(x), y)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        loss.item()  # waits for the device
        if i >= a.warmup:
            times.append(time.perf_counter() - t)
    out = {
        "trainable": sum(p.numel() for p in trainable),
        "max_diff": max_diff,
        "median_s": sorted(times)[len(times) // 2],
        "times_s": times,
    }
    if dev.type == "cuda":
        out["peak_mem_bytes"] = torch.cuda.max_memory_allocated()
    print(json.dumps(out))


if __name__ == "__main__":
    main()
