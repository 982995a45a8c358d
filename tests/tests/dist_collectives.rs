//! The c10d bindings in one process: two Gloo ranks on two threads (each its own TCPStore client and
//! process group, as two processes would have) all-reduce, all-gather, broadcast, average gradients
//! in buckets and gather evaluation rows back into dataset order; a missing peer times out.

use std::time::{Duration, Instant};

use tch::{Device, Kind, Tensor};
use vpetl_core::dist::gather::gather_rows;
use vpetl_core::dist::grads::GradSync;
use vpetl_core::dist::{BackendKind, DistEnv, ProcessGroup, ReduceOp};

fn free_port() -> u16 {
    std::net::TcpListener::bind(("127.0.0.1", 0)).unwrap().local_addr().unwrap().port()
}

fn env(rank: usize, world: usize, port: u16) -> DistEnv {
    DistEnv { rank, world_size: world, local_rank: rank, master_addr: "127.0.0.1".into(), master_port: port, agent_store: None }
}

/// Runs `f` on `world` ranks (threads), each with its own Gloo process group; returns their results.
fn on_ranks<T: Send + 'static>(world: usize, f: impl Fn(&ProcessGroup) -> T + Send + Sync + 'static) -> Vec<T> {
    vpetl_tests::init();
    let port = free_port();
    let f = std::sync::Arc::new(f);
    let handles: Vec<_> = (0..world)
        .map(|rank| {
            let f = f.clone();
            std::thread::spawn(move || {
                let pg = ProcessGroup::new(&env(rank, world, port), BackendKind::Gloo, Device::Cpu, Duration::from_secs(60)).unwrap();
                f(&pg)
            })
        })
        .collect();
    handles.into_iter().map(|h| h.join().unwrap()).collect()
}

fn all_reduce_all_gather_broadcast() {
    let out = on_ranks(2, |pg| {
        let r = pg.rank as f64;
        let t = Tensor::from_slice(&[1.0f32, 2.0, 3.0]) * (r + 1.0);
        pg.all_reduce(&[&t], ReduceOp::Sum).unwrap();
        let m = Tensor::from_slice(&[r as f32]);
        pg.all_reduce(&[&m], ReduceOp::Max).unwrap();
        let g = pg.all_gather(&Tensor::from_slice(&[r as i64, 10 + r as i64])).unwrap();
        let b = Tensor::from_slice(&[r as f32 + 7.0]);
        pg.broadcast(&[&b], 0).unwrap();
        pg.barrier().unwrap();
        (
            Vec::<f32>::try_from(&t).unwrap(),
            m.double_value(&[0]),
            g.iter().map(|x| Vec::<i64>::try_from(x).unwrap()).collect::<Vec<_>>(),
            b.double_value(&[0]),
            pg.sum_f64(&[r, 1.0]).unwrap(),
        )
    });
    for (sum, max, gathered, bcast, sums) in out {
        assert_eq!(sum, vec![3.0, 6.0, 9.0]);
        assert_eq!(max, 1.0);
        assert_eq!(gathered, vec![vec![0, 10], vec![1, 11]]);
        assert_eq!(bcast, 7.0);
        assert_eq!(sums, vec![1.0, 2.0]);
    }
}

fn gradients_are_averaged_in_buckets() {
    let out = on_ranks(2, |pg| {
        let r = pg.rank as f64;
        // Three parameters; a tiny bucket cap puts each in its own bucket (three all-reduces).
        let params: Vec<Tensor> = [vec![2, 3], vec![4], vec![5, 1]].iter().map(|s| Tensor::zeros(s.as_slice(), (Kind::Float, Device::Cpu)).set_requires_grad(true)).collect();
        let loss = params.iter().enumerate().map(|(i, p)| (p * (r + 1.0) * (i as f64 + 1.0)).sum(Kind::Float)).fold(Tensor::from(0f32), |a, b| a + b);
        loss.backward();
        let names: Vec<String> = (0..3).map(|i| format!("p{i}")).collect();
        let sync = GradSync::new(&params, 1e-5);
        assert_eq!(sync.num_buckets(), 3);
        sync.all_reduce(pg, &params, &names).unwrap();
        params.iter().map(|p| Vec::<f32>::try_from(p.grad().reshape([-1])).unwrap()).collect::<Vec<_>>()
    });
    // d/dp of (r + 1)(i + 1) sum(p), averaged over r = 0, 1: 1.5 (i + 1).
    for grads in out {
        for (i, g) in grads.iter().enumerate() {
            assert!(g.iter().all(|&v| (v - 1.5 * (i as f32 + 1.0)).abs() < 1e-6), "p{i}: {g:?}");
        }
    }
}

fn evaluation_rows_come_back_in_dataset_order_without_padding() {
    // 5 samples over 2 ranks, padded to 6 as the sampler does: rank 0 has 0, 2, 4; rank 1 has 1, 3, 0.
    let out = on_ranks(2, |pg| {
        let idx: Vec<usize> = if pg.rank == 0 { vec![0, 2, 4] } else { vec![1, 3, 0] };
        let rows = Tensor::from_slice(&idx.iter().map(|&i| i as f32 * 10.0).collect::<Vec<_>>()).reshape([3, 1]);
        let labels = Tensor::from_slice(&idx.iter().map(|&i| i as i64).collect::<Vec<_>>());
        let (r, l) = gather_rows(pg, &rows, &labels, &idx).unwrap();
        (Vec::<f32>::try_from(r.reshape([-1])).unwrap(), Vec::<i64>::try_from(&l).unwrap())
    });
    for (rows, labels) in out {
        assert_eq!(labels, vec![0, 1, 2, 3, 4]);
        assert_eq!(rows, vec![0.0, 10.0, 20.0, 30.0, 40.0]);
    }
}

fn a_missing_peer_times_out_with_a_clear_error() {
    vpetl_tests::init();
    let start = Instant::now();
    let err = match ProcessGroup::new(&env(0, 2, free_port()), BackendKind::Gloo, Device::Cpu, Duration::from_secs(2)) {
        Ok(_) => panic!("a group of 2 formed with one rank"),
        Err(e) => e.to_string(),
    };
    assert!(start.elapsed() < Duration::from_secs(30), "took {:?}", start.elapsed());
    assert!(err.contains("rank 0") && err.contains("rendezvous"), "{err}");
}

/// One test running the checks in turn: with the checks as parallel tests in one process, c10d
/// groups forming and tearing down on several test threads at once crashed the binary (SIGSEGV),
/// although every check passes alone and all pass one after another.
#[test]
fn collectives_in_one_process() {
    a_missing_peer_times_out_with_a_clear_error();
    all_reduce_all_gather_broadcast();
    evaluation_rows_come_back_in_dataset_order_without_padding();
    gradients_are_averaged_in_buckets();
}
