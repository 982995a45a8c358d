"""E3VA (Yin et al., ACM MM 2024), as reconstructed (the paper body and code were not available).

A highway beside the frozen Swin: every block's attention-branch and MLP-branch outputs go through
a dual low-rank adapter A(z) = LM_up(GELU(LM_down(z))) (LoRand's projections, no residual) and are
summed on the highway; at the end of a stage the highway is added to the stage's output (what the
stage emits, not what the next stage reads) and then carried to the next stage through the
backbone's own (frozen) patch merging. The last stage's sum goes through the final norm.
"""
from petl_ref.lorand import bottleneck


def apply(model, params, opts):
    assert not hasattr(model, "blocks"), "E3VA needs a Swin"

    def forward_features(x):
        x = model.patch_embed(x)
        h = None
        for s, layer in enumerate(model.layers):
            x = layer.downsample(x)
            if h is not None:
                h = layer.downsample(h)
            for j, blk in enumerate(layer.blocks):
                site = f".layers.{s}.blocks.{j}"
                a = blk._attn(blk.norm1(x))
                h = (0 if h is None else h) + bottleneck(params, f"{site}.attn_branch")(a)
                x = x + a
                m = blk.mlp(blk.norm2(x))
                h = h + bottleneck(params, f"{site}.mlp_branch")(m)
                x = x + m
            emitted = x + h
        return model.norm(emitted)

    model.forward_features = forward_features
