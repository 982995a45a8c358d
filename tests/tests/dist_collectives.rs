//! The c10d bindings: two Gloo ranks, each its own process as in real training (this test binary
//! re-run with `VPETL_TEST_RANK` set, running only the check that spawned it), all-reduce,
//! all-gather, broadcast, average gradients in buckets and gather evaluation rows back into dataset
//! order; a missing peer times out.
//!
//! Why processes and not threads: c10d keeps process-wide state (the flight recorder every Gloo
//! collective writes to), and two ranks on two threads of one process raced on it and crashed
//! (SIGSEGV in `FlightRecorder::recordWithResetEnabled`, about one run in ten). torch.distributed
//! supports one rank per process, which is what `tools/dist_train` and torchrun run.

use std::process::Command;
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

/// Runs `check` on `world` ranks. In the test process this spawns one child per rank (this binary,
/// filtered to the calling test `name`) and asserts they all succeed; in a child it joins the group
/// and runs `check`, whose assertions are that rank's verdict.
fn on_ranks(name: &str, world: usize, check: impl Fn(&ProcessGroup)) {
    if let Ok(rank) = std::env::var("VPETL_TEST_RANK") {
        vpetl_tests::init();
        let port = std::env::var("VPETL_TEST_PORT").unwrap().parse().unwrap();
        let pg = ProcessGroup::new(&env(rank.parse().unwrap(), world, port), BackendKind::Gloo, Device::Cpu, Duration::from_secs(60)).unwrap();
        check(&pg);
        return;
    }
    let port = free_port().to_string();
    let exe = std::env::current_exe().unwrap();
    let children: Vec<_> = (0..world)
        .map(|rank| {
            Command::new(&exe)
                .args(["--exact", name, "--nocapture", "--test-threads=1"])
                .env("VPETL_TEST_RANK", rank.to_string())
                .env("VPETL_TEST_PORT", &port)
                .stdout(std::process::Stdio::piped())
                .stderr(std::process::Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    for (rank, child) in children.into_iter().enumerate() {
        let out = child.wait_with_output().unwrap();
        let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
        // The filter must have matched this test and only it (else the child checked nothing).
        assert!(out.status.success() && text.contains("1 passed"), "rank {rank} of `{name}`: {}\n{text}", out.status);
    }
}

#[test]
fn all_reduce_all_gather_broadcast() {
    on_ranks("all_reduce_all_gather_broadcast", 2, |pg| {
        let r = pg.rank as f64;
        let t = Tensor::from_slice(&[1.0f32, 2.0, 3.0]) * (r + 1.0);
        pg.all_reduce(&[&t], ReduceOp::Sum).unwrap();
        let m = Tensor::from_slice(&[r as f32]);
        pg.all_reduce(&[&m], ReduceOp::Max).unwrap();
        let g = pg.all_gather(&Tensor::from_slice(&[r as i64, 10 + r as i64])).unwrap();
        let b = Tensor::from_slice(&[r as f32 + 7.0]);
        pg.broadcast(&[&b], 0).unwrap();
        pg.barrier().unwrap();
        assert_eq!(Vec::<f32>::try_from(&t).unwrap(), vec![3.0, 6.0, 9.0]);
        assert_eq!(m.double_value(&[0]), 1.0);
        assert_eq!(g.iter().map(|x| Vec::<i64>::try_from(x).unwrap()).collect::<Vec<_>>(), vec![vec![0, 10], vec![1, 11]]);
        assert_eq!(b.double_value(&[0]), 7.0);
        assert_eq!(pg.sum_f64(&[r, 1.0]).unwrap(), vec![1.0, 2.0]);
    });
}

#[test]
fn gradients_are_averaged_in_buckets() {
    on_ranks("gradients_are_averaged_in_buckets", 2, |pg| {
        let r = pg.rank as f64;
        // Three parameters; a tiny bucket cap puts each in its own bucket (three all-reduces).
        let params: Vec<Tensor> = [vec![2, 3], vec![4], vec![5, 1]].iter().map(|s| Tensor::zeros(s.as_slice(), (Kind::Float, Device::Cpu)).set_requires_grad(true)).collect();
        let loss = params.iter().enumerate().map(|(i, p)| (p * (r + 1.0) * (i as f64 + 1.0)).sum(Kind::Float)).fold(Tensor::from(0f32), |a, b| a + b);
        loss.backward();
        let names: Vec<String> = (0..3).map(|i| format!("p{i}")).collect();
        let sync = GradSync::new(&params, 1e-5);
        assert_eq!(sync.num_buckets(), 3);
        sync.all_reduce(pg, &params, &names).unwrap();
        // d/dp of (r + 1)(i + 1) sum(p), averaged over r = 0, 1: 1.5 (i + 1).
        for (i, p) in params.iter().enumerate() {
            let g = Vec::<f32>::try_from(p.grad().reshape([-1])).unwrap();
            assert!(g.iter().all(|&v| (v - 1.5 * (i as f32 + 1.0)).abs() < 1e-6), "p{i}: {g:?}");
        }
    });
}

#[test]
fn evaluation_rows_come_back_in_dataset_order_without_padding() {
    // 5 samples over 2 ranks, padded to 6 as the sampler does: rank 0 has 0, 2, 4; rank 1 has 1, 3, 0.
    on_ranks("evaluation_rows_come_back_in_dataset_order_without_padding", 2, |pg| {
        let idx: Vec<usize> = if pg.rank == 0 { vec![0, 2, 4] } else { vec![1, 3, 0] };
        let rows = Tensor::from_slice(&idx.iter().map(|&i| i as f32 * 10.0).collect::<Vec<_>>()).reshape([3, 1]);
        let labels = Tensor::from_slice(&idx.iter().map(|&i| i as i64).collect::<Vec<_>>());
        let (r, l) = gather_rows(pg, &rows, &labels, &idx).unwrap();
        assert_eq!(Vec::<i64>::try_from(&l).unwrap(), vec![0, 1, 2, 3, 4]);
        assert_eq!(Vec::<f32>::try_from(r.reshape([-1])).unwrap(), vec![0.0, 10.0, 20.0, 30.0, 40.0]);
    });
}

#[test]
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
