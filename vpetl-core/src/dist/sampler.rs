//! torch's DistributedSampler over an epoch's sample order: every rank sees the same global order
//! (reshuffled per epoch from the seed), padded by wrapping around so it divides evenly (or cut
//! with `drop_last`), and takes every `world`-th sample from its rank on. Batch `i` of all ranks
//! together then holds exactly the samples of batch `i` of one process with the global batch
//! (except for the padding), and every rank runs the same number of steps.

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Shard {
    pub rank: usize,
    pub world: usize,
}

impl Shard {
    /// Samples each rank gets from `n`.
    pub fn per_rank(&self, n: usize, drop_last: bool) -> usize {
        if drop_last {
            n / self.world
        } else {
            n.div_ceil(self.world)
        }
    }

    /// This rank's part of the global `order`.
    pub fn select(&self, order: &[usize], drop_last: bool) -> Vec<usize> {
        if order.is_empty() {
            return Vec::new();
        }
        let total = self.per_rank(order.len(), drop_last) * self.world;
        (self.rank..total).step_by(self.world).map(|i| order[i % order.len()]).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn disjoint_padded_and_strided() {
        let order: Vec<usize> = (0..10).rev().collect();
        let parts: Vec<Vec<usize>> = (0..3).map(|r| Shard { rank: r, world: 3 }.select(&order, false)).collect();
        assert_eq!(parts[0], vec![9, 6, 3, 0]);
        assert_eq!(parts[1], vec![8, 5, 2, 9]); // padded by wrapping around
        assert_eq!(parts[2], vec![7, 4, 1, 8]);
        let dropped: Vec<Vec<usize>> = (0..3).map(|r| Shard { rank: r, world: 3 }.select(&order, true)).collect();
        assert_eq!(dropped.iter().map(Vec::len).collect::<Vec<_>>(), vec![3, 3, 3]);
        let mut all: Vec<usize> = dropped.concat();
        all.sort();
        all.dedup();
        assert_eq!(all.len(), 9);
    }
}
