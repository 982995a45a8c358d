//! Google's ViT `.npz` layout (`ViT-B_16.npz` and relatives, optionally under `opt/target/` or
//! `params/`) to timm's parameter names, as timm's `_load_weights` maps it.

use std::collections::HashMap;

use anyhow::{anyhow, Context};
use tch::Tensor;

/// True when the keys look like a Google ViT checkpoint.
pub fn detect(keys: &[&str]) -> bool {
    keys.iter().any(|k| ["embedding/kernel", "opt/target/embedding/kernel", "params/embedding/kernel"].contains(k))
}

/// Renames and reshapes; keys it does not know are returned unchanged (the load report lists them).
pub fn to_timm(tensors: Vec<(String, Tensor)>) -> anyhow::Result<Vec<(String, Tensor)>> {
    let prefix = ["opt/target/", "params/", ""]
        .into_iter()
        .find(|p| tensors.iter().any(|(k, _)| *k == format!("{p}embedding/kernel")))
        .ok_or_else(|| anyhow!("not a Google ViT checkpoint: no `embedding/kernel`"))?;
    let mut w: HashMap<String, Tensor> =
        tensors.into_iter().map(|(k, v)| (k.strip_prefix(prefix).map(String::from).unwrap_or(k), v)).collect();
    let mut out: Vec<(String, Tensor)> = Vec::new();
    let mut take = |key: &str| w.remove(key).with_context(|| format!("Google ViT checkpoint lacks `{prefix}{key}`"));

    // (H, W, I, O) -> (O, I, H, W)
    out.push(("patch_embed.proj.weight".into(), take("embedding/kernel")?.permute([3, 2, 0, 1])));
    out.push(("patch_embed.proj.bias".into(), take("embedding/bias")?));
    out.push(("cls_token".into(), take("cls")?));
    out.push(("pos_embed".into(), take("Transformer/posembed_input/pos_embedding")?));
    out.push(("norm.weight".into(), take("Transformer/encoder_norm/scale")?));
    out.push(("norm.bias".into(), take("Transformer/encoder_norm/bias")?));
    let mut i = 0;
    while let Ok(ln0) = take(&format!("Transformer/encoderblock_{i}/LayerNorm_0/scale")) {
        let b = format!("Transformer/encoderblock_{i}/");
        let mha = format!("{b}MultiHeadDotProductAttention_1/");
        let t = format!("blocks.{i}.");
        out.push((format!("{t}norm1.weight"), ln0));
        out.push((format!("{t}norm1.bias"), take(&format!("{b}LayerNorm_0/bias"))?));
        // query/key/value kernels are (D, heads, head_dim): flatten to (D, D) and transpose.
        let mut qkv_w = Vec::new();
        let mut qkv_b = Vec::new();
        for n in ["query", "key", "value"] {
            qkv_w.push(take(&format!("{mha}{n}/kernel"))?.flatten(1, 2).tr());
            qkv_b.push(take(&format!("{mha}{n}/bias"))?.reshape([-1]));
        }
        out.push((format!("{t}attn.qkv.weight"), Tensor::cat(&qkv_w, 0)));
        out.push((format!("{t}attn.qkv.bias"), Tensor::cat(&qkv_b, 0)));
        // out kernel is (heads, head_dim, D) -> (D, heads * head_dim)
        out.push((format!("{t}attn.proj.weight"), take(&format!("{mha}out/kernel"))?.permute([2, 0, 1]).flatten(1, 2)));
        out.push((format!("{t}attn.proj.bias"), take(&format!("{mha}out/bias"))?));
        out.push((format!("{t}norm2.weight"), take(&format!("{b}LayerNorm_2/scale"))?));
        out.push((format!("{t}norm2.bias"), take(&format!("{b}LayerNorm_2/bias"))?));
        for r in 0..2 {
            out.push((format!("{t}mlp.fc{}.weight", r + 1), take(&format!("{b}MlpBlock_3/Dense_{r}/kernel"))?.tr()));
            out.push((format!("{t}mlp.fc{}.bias", r + 1), take(&format!("{b}MlpBlock_3/Dense_{r}/bias"))?));
        }
        i += 1;
    }
    if i == 0 {
        return Err(anyhow!("Google ViT checkpoint has no `Transformer/encoderblock_0`"));
    }
    if let (Ok(k), Ok(bias)) = (take("head/kernel"), take("head/bias")) {
        out.push(("head.weight".into(), k.tr()));
        out.push(("head.bias".into(), bias));
    }
    // Whatever is left (pre_logits, optimizer state, ...) goes to the report as unexpected.
    let mut rest: Vec<(String, Tensor)> = w.into_iter().map(|(k, v)| (format!("{prefix}{k}"), v)).collect();
    rest.sort_by(|a, b| a.0.cmp(&b.0));
    out.extend(rest);
    Ok(out)
}
