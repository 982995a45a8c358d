"""VPT-Shallow (Jia et al. 2022): prompts after the class token, before the first block only."""
from petl_ref.vpt_deep import _forward


def apply(model, params, options):
    model.forward_features = _forward(model, params, deep=False)
