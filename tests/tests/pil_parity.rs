//! Our image ops against the PyTorch pipeline's: PIL's `Image.resize` and torchvision's `Resize`
//! (bilinear and bicubic, down- and up-scaling, odd sizes) to within 1/255 per pixel, and each of
//! timm's RandAugment ops at fixed magnitudes and signs (tests/python/pil_reference.py).

use std::path::Path;
use std::process::Command;

use image::RgbImage;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde_json::json;
use vpetl_cls::randaugment::{apply_op, Op, RAND_INCREASING_TRANSFORMS, RAND_TRANSFORMS};
use vpetl_cls::resample::{resize, Filter};
use vpetl_cls::transforms::{Interpolation, ResizeSpec, Size, TransformSpec};

/// Smooth gradients, hard edges and noise, so that both filter shapes and rounding show.
fn test_image(w: u32, h: u32, seed: u64) -> RgbImage {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    RgbImage::from_fn(w, h, |x, y| {
        let noise: u8 = rng.gen_range(0..40);
        let edge = if (x * 7 / w + y * 5 / h) % 2 == 0 { 150 } else { 0 };
        image::Rgb([
            ((x * 255 / w.max(1)) as u8 / 2).saturating_add(noise),
            (edge as u8).saturating_add(noise / 2),
            ((y * 255 / h.max(1)) as u8).saturating_sub(noise),
        ])
    })
}

/// Runs the reference script over `cases` (each with `input`/`output` names) and returns the outputs.
fn reference(dir: &Path, cases: &[serde_json::Value]) -> Vec<RgbImage> {
    std::fs::write(dir.join("cases.json"), serde_json::to_string(cases).unwrap()).unwrap();
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/python/pil_reference.py");
    let out = Command::new(std::env::var("VPETL_PYTHON").expect("VPETL_PYTHON is set by scripts/setup")).arg(script).arg(dir).output().unwrap();
    assert!(out.status.success(), "pil_reference.py failed:\n{}", String::from_utf8_lossy(&out.stderr));
    cases.iter().map(|c| image::open(dir.join(c["output"].as_str().unwrap())).unwrap().to_rgb8()).collect()
}

/// Largest per-channel difference, and how many values differ at all.
fn diff(a: &RgbImage, b: &RgbImage) -> (u8, usize) {
    assert_eq!(a.dimensions(), b.dimensions());
    let d = a.as_raw().iter().zip(b.as_raw()).map(|(x, y)| x.abs_diff(*y));
    d.fold((0, 0), |(m, n), v| (m.max(v), n + (v > 0) as usize))
}

const SIZES: [(u32, u32); 3] = [(37, 23), (101, 77), (64, 48)];

#[test]
fn resize_matches_pil_and_torchvision_within_one_level() {
    let tmp = tempfile::tempdir().unwrap();
    let mut cases = Vec::new();
    let mut ours = Vec::new();
    for (i, &(w, h)) in SIZES.iter().enumerate() {
        let img = test_image(w, h, i as u64);
        let input = format!("in{i}.png");
        img.save(tmp.path().join(&input)).unwrap();
        for (fname, filter, interp) in [("bilinear", Filter::Bilinear, Interpolation::Bilinear), ("bicubic", Filter::Bicubic, Interpolation::Bicubic)] {
            // Down, up, mixed, and odd targets.
            for (tw, th) in [(w / 3, h / 2), (224, 224), (w * 2 + 1, h / 3 + 1), (17, 131)] {
                let output = format!("out{}.png", cases.len());
                cases.push(json!({"input": input, "output": output, "op": "resize", "size": [tw, th], "filter": fname}));
                ours.push((format!("PIL resize {w}x{h} -> {tw}x{th} {fname}"), resize(&img, tw, th, filter)));
            }
            // torchvision's Resize(n): shorter side n, aspect kept, its rounding of the longer side.
            for n in [256u32, 15] {
                let output = format!("out{}.png", cases.len());
                cases.push(json!({"input": input, "output": output, "op": "tv_resize", "size": n, "filter": fname}));
                let spec = ResizeSpec { size: Size::Shorter(n), interpolation: interp };
                ours.push((format!("torchvision Resize({n}) of {w}x{h} {fname}"), spec.apply(img.clone(), &mut ChaCha8Rng::seed_from_u64(0))));
            }
        }
    }
    let want = reference(tmp.path(), &cases);
    let mut exact = 0;
    for ((what, got), want) in ours.iter().zip(&want) {
        let (max, n) = diff(got, want);
        assert!(max <= 1, "{what}: differs from PIL by up to {max} levels ({n} values)");
        exact += (n == 0) as usize;
    }
    eprintln!("{exact} of {} resizes byte-identical to PIL", ours.len());
    // The fixed-point arithmetic is PIL's, so most cases are byte-identical.
    assert!(exact * 2 >= ours.len(), "only {exact} of {} resizes are byte-identical to PIL", ours.len());
}

fn op_name(op: Op) -> String {
    format!("{op:?}")
}

#[test]
fn randaugment_ops_match_timm() {
    let tmp = tempfile::tempdir().unwrap();
    let mut cases = Vec::new();
    let mut ours = Vec::new();
    let mut ops: Vec<Op> = RAND_INCREASING_TRANSFORMS.to_vec();
    ops.extend(RAND_TRANSFORMS.iter().filter(|o| !RAND_INCREASING_TRANSFORMS.contains(o)));
    for (i, &(w, h)) in SIZES.iter().enumerate() {
        let img = test_image(w, h, 10 + i as u64);
        let input = format!("in{i}.png");
        img.save(tmp.path().join(&input)).unwrap();
        for &op in &ops {
            // Posterize at magnitude 10 keeps 0 bits, which Pillow 13 refuses (see pil_ops::posterize).
            for (m, sign) in [(9.0, 1.0), (9.0, -1.0), (4.3, 1.0), (6.0, -1.0)] {
                let output = format!("out{}.png", cases.len());
                cases.push(json!({"input": input, "output": output, "op": "timm", "name": op_name(op), "magnitude": m, "sign": sign}));
                ours.push((format!("{op:?} m={m} sign={sign} on {w}x{h}"), apply_op(&img, op, m, sign, [124, 116, 104], Interpolation::Bicubic)));
            }
        }
    }
    let want = reference(tmp.path(), &cases);
    let mut worst = (0u8, String::new());
    for ((what, got), want) in ours.iter().zip(&want) {
        let (max, n) = diff(got, want);
        let total = got.as_raw().len();
        // Blends and cubic sampling round in floating point; allow one level on a few values.
        assert!(max <= 1 && n * 100 <= total, "{what}: differs from timm/PIL by up to {max} levels ({n} of {total} values)");
        if max > worst.0 {
            worst = (max, what.clone());
        }
    }
    eprintln!("largest difference: {} ({})", worst.0, worst.1);
}
