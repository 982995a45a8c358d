"""DTL and DTL+ (Fu et al., AAAI 2024), written from the paper's definition.

A running sum R = sum_i x_i A_i^T B_i^T over the block inputs x_i (rank-r, no bias); after each
block in `inject_after` (default: the second half) the output gets F(swish(R)), swish(z) =
z sigmoid(beta z); F is the identity, or (DTL+) one shared depth-wise conv with padding='same' on the
patch grid (prefix tokens unchanged). The classifier reads norm(mean of the last patch tokens).
"""
import torch
import torch.nn.functional as F


def apply(model, params, opts):
    depth = len(model.blocks)
    inject = opts.get("inject_after", list(range(depth // 2, depth)))
    beta = opts.get("beta", 100.0)
    k = opts.get("fusion_kernel", 0)
    prefix = model.num_prefix_tokens
    gh, gw = model.patch_embed.grid_size

    def fuse(z):
        if not k:
            return z
        b, n, c = z.shape
        grid = z[:, prefix:].transpose(1, 2).reshape(b, c, gh, gw)
        grid = F.conv2d(grid, params[".fusion.weight"], padding="same", groups=c)
        return torch.cat([z[:, :prefix], grid.flatten(2).transpose(1, 2)], 1)

    def forward(x):
        x = model.norm_pre(model._pos_embed(model.patch_embed(x)))
        r = 0
        for i, blk in enumerate(model.blocks):
            r = r + F.linear(F.linear(x, params[f".blocks.{i}.in.down.weight"]), params[f".blocks.{i}.in.up.weight"])
            x = blk(x)
            if i in inject:
                x = x + fuse(r * torch.sigmoid(beta * r))
        return model.head(model.norm(x[:, prefix:].mean(1)))

    model.forward = forward
