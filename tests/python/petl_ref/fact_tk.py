"""FacT-TK: shared U, V, a core tensor C (r, r, r) and a factor P (r, 12 per block): block b uses
columns 12b..12b+3 for q, k, v, proj (unit core M_j = C x_3 P[:, j], applied as u @ M_j) and
12b+4..12b+11 for fc1 and fc2, whose (r, r, 4) stacks are read as (r, 4r) matrices: fc1 maps
u (r) to u @ K (4r, then 4 chunks of r, V on each); fc2 maps its 4 U-projected input chunks (4r)
through K^T."""
import torch
import torch.nn.functional as F

from petl_ref.fact_common import install


def apply(model, params, opts):
    r = opts.get("rank", 8)
    C, P = params[".core"], params[".p"]
    counter = {"col": 0}

    def deltas(name, blk, U, V, parts):
        assert list(parts) == ["qkv", "proj", "fc1", "fc2"], "the TK reference assigns 12 columns per block"
        base = counter["col"]
        counter["col"] += 12

        def unit_cores(first, n):
            return C @ P[:, base + first: base + first + n]  # (r, r, n)

        def qkv(x):
            M = unit_cores(0, 3)
            u = F.linear(x, U)
            return torch.cat([F.linear(u @ M[:, :, j], V) for j in range(3)], dim=-1)

        def proj(x):
            return F.linear(F.linear(x, U) @ unit_cores(3, 1)[:, :, 0], V)

        def fc1(x):
            K = unit_cores(4, 4).reshape(r, 4 * r)
            t = F.linear(x, U) @ K
            return F.linear(t.reshape(*t.shape[:-1], 4, r), V).flatten(-2)

        def fc2(h):
            K = unit_cores(8, 4).reshape(r, 4 * r)
            d = U.shape[1]
            u = F.linear(h.reshape(*h.shape[:-1], 4, d), U).flatten(-2)
            return F.linear(u @ K.t(), V)

        return {"qkv": qkv, "proj": proj, "fc1": fc1, "fc2": fc2}

    install(model, params, opts, deltas)
