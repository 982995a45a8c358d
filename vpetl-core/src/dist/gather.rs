//! Evaluation across ranks: each rank predicts its shard of the split, then the predictions are
//! gathered and put back in dataset order (dropping the sampler's padding), so every rank's
//! evaluator sees exactly what one process would have.

use anyhow::Context;
use tch::{Device, Kind, Tensor};

use super::group::ProcessGroup;

/// Gathers `rows` (`(n, ...)` outputs, any float kind) with their `labels` (`(n,)`) and dataset
/// `indices` from every rank; returns them on the CPU, sorted by dataset index, each index once.
pub fn gather_rows(pg: &ProcessGroup, rows: &Tensor, labels: &Tensor, indices: &[usize]) -> anyhow::Result<(Tensor, Tensor)> {
    let n = indices.len() as i64;
    anyhow::ensure!(rows.size()[0] == n && labels.size()[0] == n, "gather_rows: {} rows, {} labels, {n} indices", rows.size()[0], labels.size()[0]);
    // Ranks may hold different counts (samples skipped with skip_bad): pad to the largest.
    let counts = pg.all_gather(&Tensor::from_slice(&[n]).to_device(pg.device))?;
    let counts: Vec<i64> = counts.iter().map(|c| c.int64_value(&[0])).collect();
    let max = counts.iter().copied().max().unwrap_or(0);
    let pad = |t: &Tensor| -> Tensor {
        let mut shape = t.size();
        shape[0] = max - n;
        Tensor::cat(&[t.to_device(pg.device), Tensor::zeros(shape.as_slice(), (t.kind(), pg.device))], 0)
    };
    let idx = Tensor::from_slice(&indices.iter().map(|&i| i as i64).collect::<Vec<_>>());
    let all_rows = pg.all_gather(&pad(&rows.to_kind(Kind::Float)))?;
    let all_labels = pg.all_gather(&pad(&labels.to_kind(Kind::Int64)))?;
    let all_idx = pg.all_gather(&pad(&idx))?;
    let take = |v: &[Tensor]| Tensor::cat(&v.iter().zip(&counts).map(|(t, &c)| t.narrow(0, 0, c).to_device(Device::Cpu)).collect::<Vec<_>>(), 0);
    let (rows, labels, idx) = (take(&all_rows), take(&all_labels), take(&all_idx));
    let idx: Vec<i64> = Vec::<i64>::try_from(&idx).context("reading gathered indices")?;
    let mut order: Vec<usize> = (0..idx.len()).collect();
    order.sort_by_key(|&i| (idx[i], i));
    order.dedup_by_key(|i| idx[*i]);
    let keep = Tensor::from_slice(&order.iter().map(|&i| i as i64).collect::<Vec<_>>());
    Ok((rows.index_select(0, &keep), labels.index_select(0, &keep)))
}
