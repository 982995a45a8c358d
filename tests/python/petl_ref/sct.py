"""SCT (Zhao et al., "SCT: A Simple Baseline for Parameter-Efficient Fine-Tuning via Salient
Channels"), written from the paper for the parity tests.

Tuning: in each ViT block the residual stream's selected channels get x[..., idx] += x[..., idx] W^T + b,
between the attention and the MLP sub-blocks (position `attn`) or on the MLP branch's output
(position `mlp`). The selected channels come from the Rust model's prepare result.

Calibration (run as a script): the frozen ViT scores each block's channels by the per-class L2 norm
over that class's samples and patch tokens of the residual stream after the attention residual add
(the input of norm2), averaged over the classes present, and keeps the top N in ascending order.

Usage as a script: sct.py DIR --backbone JSON --top-n N; reads DIR/weights.safetensors (backbone.*)
and DIR/data.safetensors (images, labels), writes DIR/selected.safetensors (blocks.<i>.mid.channels).
"""
import argparse
import json
import os
import sys
import types

import torch


def apply(model, params, opts):
    position = opts.get("position", "attn")
    for i, blk in enumerate(model.blocks):
        site = f".blocks.{i}.mid" if position == "attn" else f".blocks.{i}.mlp_branch"
        idx = params.prepared[site + ".channels"].long()
        w, b = params[site + ".weight"], params[site + ".bias"]

        def update(x, idx=idx, w=w, b=b):
            return x.index_add(-1, idx, x[..., idx] @ w.t() + b)

        def forward(self, x, update=update):
            x = x + self.drop_path1(self.ls1(self.attn(self.norm1(x))))
            if position == "attn":
                x = update(x)
                return x + self.drop_path2(self.ls2(self.mlp(self.norm2(x))))
            return x + self.drop_path2(self.ls2(update(self.mlp(self.norm2(x)))))

        blk.forward = types.MethodType(forward, blk)


def calibrate(model, images, labels, top_n):
    feats = []
    hooks = [blk.norm2.register_forward_hook(lambda m, i, o: feats.append(i[0][:, 1:, :].double()))
             for blk in model.blocks]
    model.eval()
    with torch.no_grad():
        model(images)
    for h in hooks:
        h.remove()
    out = {}
    for i, f in enumerate(feats):
        per_class = [torch.linalg.vector_norm(f[labels == c], 2, dim=(0, 1)) for c in labels.unique()]
        score = torch.stack(per_class).mean(0)
        # Top N by score, ties to the lower index, then ascending.
        order = sorted(range(score.numel()), key=lambda j: (-score[j].item(), j))
        out[f"blocks.{i}.mid.channels"] = torch.tensor(sorted(order[:top_n]), dtype=torch.int64)
    return out


def main():
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    from petl_reference import build_backbone, to_timm_names
    from safetensors.torch import load_file, save_file

    ap = argparse.ArgumentParser()
    ap.add_argument("dir")
    ap.add_argument("--backbone", required=True)
    ap.add_argument("--top-n", type=int, required=True)
    a = ap.parse_args()
    weights = load_file(f"{a.dir}/weights.safetensors")
    model = build_backbone(json.loads(a.backbone), 5)
    model.load_state_dict(to_timm_names(weights, False), strict=False)
    data = load_file(f"{a.dir}/data.safetensors")
    save_file(calibrate(model, data["images"], data["labels"], a.top_n), f"{a.dir}/selected.safetensors")


if __name__ == "__main__":
    main()
