"""HST (Lin et al., Hierarchical Side-Tuning), written from the paper and the spec
(../shared/reference/missing_methods.md §12), not from the official code.

Inside the ViT: meta tokens prepended before the class token at every block and dropped after it.
A side pyramid reads the image: stage 0 = conv3x3/2 (no bias) -> BatchNorm2d -> ReLU -> conv2x2/2
-> LayerNorm; later stages = conv3x3/2 -> LayerNorm. Side block j of stage s reads ViT block l:
mt = LN_l(T_s(meta_l)), G = T_s(bilinear(patches_l)); y += proj(crossattn(LN1 y; [mt, mean G]));
y += G; y += MLP(LN2 y); after a stage, its norm. Head input: BatchNorm1d (no affine) of the mean
of the last stage's tokens. Evaluation mode (running statistics).

Options: dims, heads, depths, meta_tokens (defaults as the paper).
"""
import torch
import torch.nn.functional as F


def apply(model, params, opts):
    dims = opts.get("dims", [32, 48, 64, 72])
    heads = opts.get("heads", [2, 4, 8, 12])
    depths = opts.get("depths", [3, 3, 3, 3])
    nm = opts.get("meta_tokens", 1)
    prefix = model.num_prefix_tokens
    gh, gw = model.patch_embed.grid_size

    def p(name):
        return params[name]

    def buf(name):
        return params[name].detach()

    def ln(name, x, eps):
        return F.layer_norm(x, (x.shape[-1],), p(f"{name}.weight"), p(f"{name}.bias"), eps)

    def lin(name, x):
        return F.linear(x, p(f"{name}.weight"), p(f"{name}.bias"))

    def flat(m):
        return m.flatten(2).transpose(1, 2)

    def cross_attention(name, y, kv, h):
        b, n, d = y.shape
        q = lin(f"{name}.q", y).view(b, n, h, d // h).transpose(1, 2)
        k = lin(f"{name}.k", kv).view(b, -1, h, d // h).transpose(1, 2)
        v = lin(f"{name}.v", kv).view(b, -1, h, d // h).transpose(1, 2)
        w = torch.softmax(q @ k.transpose(-1, -2) * (d // h) ** -0.5, dim=-1)
        return lin(f"{name}.proj", (w @ v).transpose(1, 2).reshape(b, n, d))

    def forward(img):
        # The ViT with meta tokens, collecting (meta outputs, patch maps) per block.
        x = model.norm_pre(model._pos_embed(model.patch_embed(img)))
        b = x.shape[0]
        taps = []
        for l, blk in enumerate(model.blocks):
            x = blk(torch.cat([p(f".m_embeddings.{l}").expand(b, -1, -1), x], 1))
            patches = x[:, nm + prefix:].transpose(1, 2).reshape(b, -1, gh, gw)
            taps.append((x[:, :nm], patches))
            x = x[:, nm:]
        # The side pyramid.
        l = 0
        y = img
        for s, d in enumerate(dims):
            e = f".m_patch_embed{s + 1}"
            if s == 0:
                m = F.conv2d(y, p(f"{e}.conv.0.weight"), stride=2, padding=1)
                m = F.batch_norm(m, buf(f"{e}.conv.1.running_mean"), buf(f"{e}.conv.1.running_var"),
                                 p(f"{e}.conv.1.weight"), p(f"{e}.conv.1.bias"), False, 0.1, 1e-5)
                m = F.conv2d(F.relu(m), p(f"{e}.conv.3.weight"), p(f"{e}.conv.3.bias"), stride=2)
            else:
                m = F.conv2d(y, p(f"{e}.proj.weight"), p(f"{e}.proj.bias"), stride=2, padding=1)
            hh, ww = m.shape[2:]
            t = ln(f"{e}.norm", flat(m), 1e-5)
            for j in range(depths[s]):
                meta, patches = taps[l]
                mt = ln(f".m_proj_norm{l + 1}", lin(f".T_Bridge_{s + 1}", meta), 1e-5)
                g = lin(f".T_Bridge_{s + 1}", flat(F.interpolate(patches, size=(hh, ww), mode="bilinear", align_corners=False)))
                kv = torch.cat([mt, g.mean(1, keepdim=True)], 1)
                blk = f".m_block{s + 1}.{j}"
                t = t + cross_attention(f"{blk}.attn", ln(f"{blk}.norm1", t, 1e-6), kv, heads[s])
                t = t + g
                t = t + lin(f"{blk}.mlp.fc2", F.gelu(lin(f"{blk}.mlp.fc1", ln(f"{blk}.norm2", t, 1e-6))))
                l += 1
            t = ln(f".m_norm{s + 1}", t, 1e-6)
            y = t.transpose(1, 2).reshape(b, d, hh, ww)
        feat = F.batch_norm(t.mean(1), buf(".fc_norm.running_mean"), buf(".fc_norm.running_var"), None, None, False, 0.1, 1e-6)
        return model.head(feat)

    model.forward = forward
