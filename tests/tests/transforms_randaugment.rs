//! RandAugment's timm string, its per-sample determinism and its op probability; Resize's
//! torchvision shorter-side rule. (Each op's pixels are compared with timm in pil_parity.rs.)

use image::RgbImage;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use vpetl_cls::randaugment::RandAugmentConfig;
use vpetl_cls::transforms::{to_tensor, Normalize, Pipeline, TransformSpec};
use vpetl_core::config::{load::parse_yaml, Origin, RunConfig, Value};
use vpetl_core::registry::Component;
use vpetl_tests::init;

#[test]
fn timm_strings_parse_as_timm_reads_them() {
    let c: RandAugmentConfig = "rand-m9-mstd0.5-inc1".parse().unwrap();
    assert_eq!(c, RandAugmentConfig { magnitude: 9.0, num_layers: 2, prob: 0.5, magnitude_std: 0.5, magnitude_max: 10.0, increasing: true });
    let c: RandAugmentConfig = "rand-n3-m7-p0.8-mstd101-mmax12-inc0".parse().unwrap();
    assert_eq!((c.num_layers, c.magnitude, c.prob, c.magnitude_std, c.magnitude_max, c.increasing), (3, 7.0, 0.8, f64::INFINITY, 12.0, false));
    assert!("augmix-m5".parse::<RandAugmentConfig>().unwrap_err().contains("must start with `rand-`"));
    let err = "rand-m9-q3".parse::<RandAugmentConfig>().unwrap_err();
    assert_eq!(err, "RandAugment config_str \"rand-m9-q3\": section \"q3\": unknown key (known: m, n, p, mstd, mmax, inc)");
    assert!("rand-mx".parse::<RandAugmentConfig>().unwrap_err().contains("section \"mx\""));
}

/// A pipeline from a YAML list of steps, as a dataset builds it.
fn pipeline(steps: &str) -> Pipeline {
    let node = parse_yaml(steps, &Origin::new("t.yaml")).unwrap();
    let Value::List(list) = &node.value else { panic!("not a list") };
    let steps: Vec<Component<dyn TransformSpec>> =
        list.iter().enumerate().map(|(i, n)| Component::from_node(n, &format!("pipeline.{i}")).unwrap_or_else(|e| panic!("{e}"))).collect();
    Pipeline::new(&steps, Normalize::None).unwrap()
}

#[test]
fn a_bad_config_string_is_reported_at_its_key() {
    init();
    let yaml = "train_dataloader:\n  dataset: {type: VTAB1k, root: /x, task: dtd, split: test, pipeline: [{type: RandAugment, config_str: rand-m9-z}]}\n";
    let err = RunConfig::from_node(&parse_yaml(yaml, &Origin::new("t.yaml")).unwrap()).err().unwrap().to_string();
    assert!(err.contains("pipeline.0: RandAugment config_str \"rand-m9-z\": section \"z\": unknown key"), "{err}");
}

/// A mid-range image, so every op changes it.
fn image() -> RgbImage {
    RgbImage::from_fn(40, 30, |x, y| image::Rgb([(40 + x * 3) as u8, (60 + y * 4) as u8, (100 + (x * y) % 90) as u8]))
}

#[test]
fn the_augmentation_is_a_function_of_the_generator_and_ops_apply_with_p() {
    init();
    let p = pipeline("[{type: RandAugment, config_str: rand-m9-mstd0.5-inc1}]");
    let run = |seed: u64| p.apply(image(), &mut ChaCha8Rng::seed_from_u64(seed));
    assert!(run(5).equal(&run(5)));
    let plain = to_tensor(&image(), Normalize::None);
    // Two ops, each applied with probability 0.5: about a quarter of the images stay unchanged.
    let n = 400u64;
    let unchanged = (0..n).filter(|s| run(*s).equal(&plain)).count() as u64;
    assert!((n * 18 / 100..=n * 32 / 100).contains(&unchanged), "{unchanged} of {n} unchanged, expected about {}", n / 4);
    let p1 = pipeline("[{type: RandAugment, config_str: rand-m9-mstd0.5-inc1-p1.0}]");
    let unchanged = (0..100).filter(|s| p1.apply(image(), &mut ChaCha8Rng::seed_from_u64(*s)).equal(&plain)).count();
    assert!(unchanged <= 3, "with p = 1 nearly every image changes ({unchanged} of 100 did not)");
}

#[test]
fn resize_shorter_side_follows_torchvision() {
    init();
    // int(256 * 500 / 333) = 384 (rounding would give 384 too; 333 x 500 -> 256 x 384)
    let p = pipeline("[{type: Resize, size: 256}]");
    let img = RgbImage::new(500, 333);
    assert_eq!(p.apply(img, &mut ChaCha8Rng::seed_from_u64(0)).size(), vec![3, 256, 384]);
    // int(224 * 301 / 200) = 337 (337.12); and portrait images keep width = size.
    let p = pipeline("[{type: Resize, size: 224, interpolation: bicubic}]");
    assert_eq!(p.apply(RgbImage::new(200, 301), &mut ChaCha8Rng::seed_from_u64(0)).size(), vec![3, 337, 224]);
    // int(10 * 15 / 4) = 37 where rounding would give 38.
    let p = pipeline("[{type: Resize, size: 10}]");
    assert_eq!(p.apply(RgbImage::new(15, 4), &mut ChaCha8Rng::seed_from_u64(0)).size(), vec![3, 10, 37]);
}
