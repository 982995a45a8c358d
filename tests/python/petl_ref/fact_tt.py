"""FacT-TT: shared U, V plus per-layer cores: q, k, v, o (r x r), fc1 (r -> 4r), fc2 (4r -> r).
q/k/v: V(C_q U x) etc. concatenated; fc1: C_fc1 U x (4r) split into 4 chunks of r, V on each;
fc2: U on each of the 4 input chunks of d, concatenated (4r), C_fc2, then V."""
import torch
import torch.nn.functional as F

from petl_ref.fact_common import install


def apply(model, params, opts):
    r = opts.get("rank", 8)

    def deltas(name, blk, U, V, parts):
        def core(site):
            return params[f".{name}.{site}.core.weight"]

        def qkv(x):
            C = core("attn.qkv")
            u = F.linear(x, U)
            return torch.cat([F.linear(F.linear(u, C[i * r:(i + 1) * r]), V) for i in range(3)], dim=-1)

        def proj(x):
            return F.linear(F.linear(F.linear(x, U), core("attn.proj")), V)

        def fc1(x):
            t = F.linear(F.linear(x, U), core("mlp.fc1"))
            return F.linear(t.reshape(*t.shape[:-1], 4, r), V).flatten(-2)

        def fc2(h):
            d = U.shape[1]
            u = F.linear(h.reshape(*h.shape[:-1], 4, d), U).flatten(-2)
            return F.linear(F.linear(u, core("mlp.fc2")), V)

        return {"qkv": qkv, "proj": proj, "fc1": fc1, "fc2": fc2}

    install(model, params, opts, deltas)
