//! The resize transforms against what the PyTorch pipelines compute: torchvision's `Resize` on PIL
//! images (Pillow's antialiased resampling, the longer side truncated), `CenterCrop`, `ToTensor` and
//! `Normalize`, run by the torch venv on the same lossless images.

use std::collections::BTreeMap;
use std::process::Command;

use image::RgbImage;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use tch::Tensor;
use vpetl_cls::transforms::{apply_steps, to_tensor, CenterCropSpec, Interpolation, Normalize, ResizeSpec, Size, TransformSpec};

/// Smooth content with noise (a JPEG-like photo rather than white noise, so both filters matter).
fn image(w: u32, h: u32, seed: u64) -> RgbImage {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let f: [f64; 6] = std::array::from_fn(|_| rng.gen_range(0.01..0.1));
    RgbImage::from_fn(w, h, |x, y| {
        let mut px = |c: usize| {
            let v = 128.0 + 90.0 * ((x as f64) * f[c] + (y as f64) * f[c + 3]).sin() + rng.gen_range(-20.0..20.0);
            v.clamp(0.0, 255.0) as u8
        };
        image::Rgb([px(0), px(1), px(2)])
    })
}

const REFERENCE: &str = r#"
import sys, numpy as np, torch
from PIL import Image
from safetensors.torch import save_file
from torchvision import transforms as T
out = {}
for arg in sys.argv[2:]:
    name, path, size, interp, crop = arg.split(",")
    size = [int(s) for s in size.split("x")]
    interp = {"bilinear": T.InterpolationMode.BILINEAR, "bicubic": T.InterpolationMode.BICUBIC}[interp]
    steps = [T.Resize(size[0] if len(size) == 1 else size, interpolation=interp, antialias=True)]
    if crop != "0":
        steps.append(T.CenterCrop(int(crop)))
    img = T.Compose(steps)(Image.open(path).convert("RGB"))
    out[name + ".pixels"] = torch.from_numpy(np.asarray(img).copy())
    out[name + ".tensor"] = T.Normalize((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))(T.ToTensor()(img))
save_file(out, sys.argv[1])
"#;

#[test]
fn resize_crop_and_normalise_match_torchvision_on_pil_images() {
    vpetl_tests::init();
    let dir = tempfile::tempdir().unwrap();
    // (name, width, height, Resize size, interpolation, centre crop)
    let cases = [
        ("down", 500, 375, Size::Shorter(224), Interpolation::Bilinear, Some(224)),
        ("tall", 375, 500, Size::Shorter(224), Interpolation::Bilinear, Some(224)),
        ("up", 32, 32, Size::Shorter(224), Interpolation::Bilinear, Some(224)),
        // 1242 * 224 / 375 = 741.9: torchvision truncates to 741.
        ("wide", 1242, 375, Size::Shorter(224), Interpolation::Bilinear, None),
        ("exact_bicubic", 375, 500, Size::Exact([224, 224]), Interpolation::Bicubic, None),
        ("up_bicubic", 28, 28, Size::Exact([32, 32]), Interpolation::Bicubic, None),
        // Margins 7 and 11: torchvision's round-half-to-even offsets are 4 and 6, not 3 and 5.
        ("crop_odd", 231, 235, Size::Exact([235, 231]), Interpolation::Bilinear, Some(224)),
        ("down_odd", 640, 481, Size::Shorter(227), Interpolation::Bicubic, Some(224)),
        // A crop larger than the image: black padding first.
        ("pad", 201, 150, Size::Exact([150, 201]), Interpolation::Bilinear, Some(224)),
    ];
    let mut args = Vec::new();
    for (i, (name, w, h, size, interp, crop)) in cases.iter().enumerate() {
        let path = dir.path().join(format!("{name}.png"));
        image(*w, *h, i as u64).save(&path).unwrap();
        let size = match size {
            Size::Shorter(s) => format!("{s}"),
            Size::Exact([h, w]) => format!("{h}x{w}"),
        };
        let interp = if *interp == Interpolation::Bicubic { "bicubic" } else { "bilinear" };
        args.push(format!("{name},{},{size},{interp},{}", path.display(), crop.unwrap_or(0)));
    }
    let expected_path = dir.path().join("expected.safetensors");
    let python = std::env::var("VPETL_PYTHON").expect("VPETL_PYTHON is set by scripts/setup");
    let out = Command::new(python).args(["-c", REFERENCE]).arg(&expected_path).args(&args).output().unwrap();
    assert!(out.status.success(), "torchvision reference failed:\n{}", String::from_utf8_lossy(&out.stderr));
    let expected: BTreeMap<String, Tensor> = Tensor::read_safetensors(&expected_path).unwrap().into_iter().collect();

    let mut rng = ChaCha8Rng::seed_from_u64(0);
    for (i, (name, w, h, size, interp, crop)) in cases.iter().enumerate() {
        let resize = ResizeSpec { size: size.clone(), interpolation: *interp };
        let mut img = resize.apply(image(*w, *h, i as u64), &mut rng);
        let centre = crop.map(|c| CenterCropSpec { size: [c, c] });
        if let Some(c) = &centre {
            img = c.apply(img, &mut rng);
        }
        // The pipeline's way: a resize followed by a crop computes only the kept pixels.
        let steps: Vec<&dyn TransformSpec> = std::iter::once(&resize as &dyn TransformSpec).chain(centre.as_ref().map(|c| c as &dyn TransformSpec)).collect();
        let fused = apply_steps(steps, image(*w, *h, i as u64), &mut rng);
        assert!(fused == img, "{name}: the fused resize and crop differ from resizing, then cropping");
        let want = &expected[&format!("{name}.pixels")];
        let (ew, eh) = (want.size()[1], want.size()[0]);
        assert_eq!((img.width() as i64, img.height() as i64), (ew, eh), "{name}: output size differs from torchvision's");
        let ours = Tensor::from_slice(img.as_raw()).view([eh, ew, 3]).to_kind(tch::Kind::Int);
        let levels = (ours - want.to_kind(tch::Kind::Int)).abs().max().int64_value(&[]);
        assert_eq!(levels, 0, "{name}: pixels differ from Pillow's by up to {levels} levels");
        let t = to_tensor(&img, Normalize::Imagenet);
        let d = (t - &expected[&format!("{name}.tensor")]).abs().max().double_value(&[]);
        assert!(d <= 1e-5, "{name}: normalised tensor differs from ToTensor + Normalize by {d:e}");
    }
}
