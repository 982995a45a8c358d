"""VPT-Deep (Jia et al. 2022): prompts after the class token, replaced before every later block."""
import torch


def _forward(model, params, deep):
    def forward_features(x, **_):
        x = model.patch_embed(x)
        x = model._pos_embed(x)
        p0 = params[".prompt_embeddings"]
        b, prefix = x.shape[0], model.num_prefix_tokens
        p = p0.shape[1]
        x = torch.cat([x[:, :prefix], p0.expand(b, -1, -1), x[:, prefix:]], dim=1)
        for i, blk in enumerate(model.blocks):
            if deep and i > 0:
                pi = params[".deep_prompt_embeddings"][i - 1].unsqueeze(0).expand(b, -1, -1)
                x = torch.cat([x[:, :prefix], pi, x[:, prefix + p:]], dim=1)
            x = blk(x)
        return model.norm(x)
    return forward_features


def apply(model, params, options):
    model.forward_features = _forward(model, params, deep=True)
