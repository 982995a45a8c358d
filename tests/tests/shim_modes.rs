//! The shim's thread-local modes: c10::InferenceMode (nesting, and tensors made under it refused
//! by autograd) and autocast with a chosen dtype (bf16 on the CPU here; CUDA in scripts/gpu-check.sh).

use tch::{Device, Kind, Tensor};
use vpetl_core::engine::amp::{Autocast, LossScaler};
use vpetl_core::inference::{inference_mode, InferenceMode};

#[test]
fn inference_mode_nests_and_its_tensors_stay_out_of_autograd() {
    vpetl_tests::init();
    assert!(!InferenceMode::is_enabled());
    let x = {
        let _outer = InferenceMode::enter();
        let inner = inference_mode(|| {
            assert!(InferenceMode::is_enabled());
            Tensor::ones([3], (Kind::Float, Device::Cpu))
        });
        assert!(InferenceMode::is_enabled(), "leaving the inner guard keeps the outer one");
        inner
    };
    assert!(!InferenceMode::is_enabled());
    let w = Tensor::ones([3], (Kind::Float, Device::Cpu)).set_requires_grad(true);
    let err = w.f_mul(&x).map(|y| y.sum(Kind::Float).f_backward());
    assert!(matches!(err, Err(_) | Ok(Err(_))), "an inference tensor must not be saved for backward");
    // The same product with a normal tensor trains.
    let y = Tensor::ones([3], (Kind::Float, Device::Cpu));
    (&w * &y).sum(Kind::Float).backward();
    assert_eq!(w.grad().sum(Kind::Float).double_value(&[]), 3.0);
}

#[test]
fn autocast_uses_the_chosen_dtype_and_restores_the_state() {
    vpetl_tests::init();
    let a = Tensor::randn([4, 8], (Kind::Float, Device::Cpu));
    let b = Tensor::randn([8, 2], (Kind::Float, Device::Cpu));
    assert!(!Autocast::is_enabled(Device::Cpu));
    {
        let _ac = Autocast::enter(Device::Cpu, Kind::BFloat16).unwrap();
        assert!(Autocast::is_enabled(Device::Cpu));
        assert_eq!(a.matmul(&b).kind(), Kind::BFloat16);
        // fp32-listed ops stay fp32 under autocast.
        assert_eq!(a.log_softmax(-1, None::<Kind>).kind(), Kind::Float);
    }
    assert!(!Autocast::is_enabled(Device::Cpu));
    assert_eq!(a.matmul(&b).kind(), Kind::Float);
}

#[test]
fn loss_scaler_skips_overflowing_steps_and_grows_back() {
    vpetl_tests::init();
    let p = Tensor::zeros([2], (Kind::Float, Device::Cpu)).set_requires_grad(true);
    let mut s = LossScaler::with_scale(1024.0);
    (p.sum(Kind::Float) * 1024.0 * 3.0).backward();
    assert!(s.unscale(std::slice::from_ref(&p)));
    assert_eq!(Vec::<f32>::try_from(p.grad()).unwrap(), vec![3.0, 3.0], "unscaled");
    s.update(true);
    assert_eq!(s.scale, 1024.0);
    let _ = p.grad().fill_(f64::INFINITY);
    assert!(!s.unscale(std::slice::from_ref(&p)));
    s.update(false);
    assert_eq!(s.scale, 512.0);
}
