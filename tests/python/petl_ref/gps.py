"""GPS (Zhang et al., CVPR 2024), written from the paper for the parity tests: every selected
linear layer computes with W + D, where D is zero except at the k selected inputs of each output
row, which hold the trained values (the sparse fine-tuned entries). The selection (`.index`, per row)
comes from the Rust model's prepare result; the biases train in place."""
import torch
import torch.nn as nn
import torch.nn.functional as F


class Sparse(nn.Module):
    def __init__(self, inner, index, delta):
        super().__init__()
        self.inner, self.index, self.delta = inner, index.long(), delta

    def forward(self, x):
        d = torch.zeros_like(self.inner.weight).scatter(1, self.index, self.delta)
        return F.linear(x, self.inner.weight + d, self.inner.bias)


def apply(model, params, opts):
    sites = sorted(k[1:-len(".index")] for k in params.prepared if k.endswith(".index"))
    assert sites
    for name in sites:
        parent_name, _, attr = name.rpartition(".")
        parent = model.get_submodule(parent_name)
        setattr(parent, attr, Sparse(getattr(parent, attr), params.prepared[f".{name}.index"], params[f".{name}.delta"]))
