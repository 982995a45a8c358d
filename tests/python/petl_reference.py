"""Plain-PyTorch re-implementations of the PETL methods, written from the papers for the parity
tests (tests/src/method_harness.rs). Not copied from any method's code.

Given the Rust model's variables (weights.safetensors: `backbone.*`, `methods.<name>.*`, `head.*`)
and an input, builds the same tiny timm backbone, applies the method with those tensors as
parameters, and writes the logits and the gradient of every method parameter of
loss = sum(logits * linspace(-1, 1)) to expected.safetensors (`logits`, `grad.<name>`).

Each method lives in petl_ref/<method>.py and defines `apply(model, params, options)`, which
modifies the timm model in place using `params[".<site or name>"]` (the method's tensors by their
names under `methods.<method>`).

Usage: petl_reference.py DIR --backbone JSON --num-classes N --method NAME [--prefix P] --options JSON
"""
import argparse
import importlib
import json
import os
import re
import sys

import torch
import torch.nn as nn
from safetensors.torch import load_file, save_file

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))


def build_backbone(spec, num_classes):
    spec = dict(spec)
    kind = spec.pop("type")
    if kind == "ViT":
        from timm.models.vision_transformer import VisionTransformer
        return VisionTransformer(num_classes=num_classes, **spec)
    from timm.models.swin_transformer import SwinTransformer
    return SwinTransformer(num_classes=num_classes, **spec)


def to_timm_names(weights, is_swin):
    """Our variable names (Microsoft's for Swin) to timm's state-dict names."""
    out = {}
    for k, v in weights.items():
        if k.startswith("backbone."):
            k = k[len("backbone."):]
            if is_swin:
                k = re.sub(r"layers\.(\d+)\.downsample", lambda m: f"layers.{int(m.group(1)) + 1}.downsample", k)
            out[k] = v
        elif k.startswith("head."):
            out[("head.fc." if is_swin else "head.") + k[len("head."):]] = v
    return out


class Params:
    """The method's tensors as leaf parameters, by their Rust names."""

    def __init__(self, weights, prefix):
        self.prefix = prefix
        self.p = {k: nn.Parameter(v.clone()) for k, v in weights.items() if k.startswith(prefix)}
        # Prepare-step results (selected channels, masks), by the same names: `.blocks.0.mid.channels`.
        pre = "prepared." + prefix
        self.prepared = {k[len(pre):]: v for k, v in weights.items() if k.startswith(pre)}

    def __getitem__(self, name):
        return self.p[self.prefix + name]

    def grads(self):
        return {f"grad.{k}": v.grad for k, v in self.p.items() if v.grad is not None}




def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("dir")
    ap.add_argument("--backbone", required=True)
    ap.add_argument("--num-classes", type=int, required=True)
    ap.add_argument("--method", required=True, help="a module of petl_ref/ (lora, adapter, ...)")
    ap.add_argument("--prefix", help="the method's variable namespace (default methods.<method>)")
    ap.add_argument("--options", default="{}")
    a = ap.parse_args()
    spec = json.loads(a.backbone)
    weights = load_file(f"{a.dir}/weights.safetensors")
    model = build_backbone(spec, a.num_classes).eval()
    # A method may set the head's input width (a side network's feature, HST).
    hw = weights.get("head.weight")
    if spec["type"] == "ViT" and hw is not None and hw.shape != model.head.weight.shape:
        model.head = nn.Linear(hw.shape[1], hw.shape[0])
    missing, unexpected = model.load_state_dict(to_timm_names(weights, spec["type"] == "Swin"), strict=False)
    assert not [m for m in missing if "relative_position_index" not in m and "attn_mask" not in m], missing
    assert not unexpected, unexpected
    for p in model.parameters():
        p.requires_grad_(False)
    method = importlib.import_module(f"petl_ref.{a.method}")
    params = Params(weights, (a.prefix or f"methods.{a.method}"))
    method.apply(model, params, json.loads(a.options))
    x = load_file(f"{a.dir}/input.safetensors")["input"]
    logits = model(x)
    w = torch.linspace(-1.0, 1.0, logits.numel()).view_as(logits)
    (logits * w).sum().backward()
    out = {"logits": logits.detach()}
    out.update(params.grads())
    save_file({k: v.contiguous() for k, v in out.items()}, f"{a.dir}/expected.safetensors")


if __name__ == "__main__":
    main()
