//! The training cache (`preprocess::cache::prepare_case`) and inference
//! (`Predictor::prepare`) bring a case to the same working grid, voxel for voxel and bit
//! for bit: one preprocessing function serves both. The cases are CT and MRI volumes on
//! an oblique, axis-permuted, anisotropic grid, so reorientation, resampling and both
//! normalisations all act.

use burn::tensor::Device;
use nalgebra::Matrix4;
use ndarray::Array3;
use rlu2net::config::TrainConfig;
use rlu2net::infer::Predictor;
use rlu2net::io::layout::{Case, Modality, Split};
use rlu2net::io::{DType, Volume, write_nifti};
use rlu2net::model::{Preset, RlU2Net};
use rlu2net::preprocess::CtStats;
use rlu2net::preprocess::cache::prepare_case;

/// A smooth volume with a little texture, on a grid whose axes are permuted and flipped
/// against RAS (voxel axis 0 runs posterior, 1 left, 2 superior) with spacings 1.2, 0.9
/// and 2.5 mm.
fn volume(shape: [usize; 3], base: f32) -> Volume<f32> {
    let data = Array3::from_shape_fn(shape, |(i, j, k)| {
        let (x, y, z) = (i as f32, j as f32, k as f32);
        base + 40.0 * (0.3 * x).sin() * (0.2 * y).cos()
            + 3.0 * z
            + ((i * 7 + j * 13 + k * 3) % 11) as f32
    });
    let spacing = [1.2, 0.9, 2.5];
    #[rustfmt::skip]
    let affine = Matrix4::new(
        0.0, -0.9, 0.0, 30.0,
        -1.2, 0.0, 0.0, 20.0,
        0.0, 0.0, 2.5, -40.0,
        0.0, 0.0, 0.0, 1.0,
    );
    Volume::new(data, spacing, affine)
}

fn bits(v: &Volume<f32>) -> Vec<u32> {
    v.data.iter().map(|x| x.to_bits()).collect()
}

#[test]
fn training_cache_and_inference_prepare_a_case_identically() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = TrainConfig::preset(Preset::Tiny);
    let stats = CtStats {
        clip_low: -50.0,
        clip_high: 180.0,
        mean: 60.0,
        std: 45.0,
    };
    let dev = Device::flex();
    let predictor = Predictor::from_parts(
        cfg.clone(),
        stats.clone(),
        RlU2Net::new(&cfg.model, &dev),
        dev,
        0.5,
        false,
    );
    for (modality, base) in [(Modality::Ct, 20.0), (Modality::Mr, 300.0)] {
        let prefix = if modality == Modality::Ct { "ct" } else { "mr" };
        let image = dir.path().join(format!("{prefix}_train_1001_image.nii.gz"));
        write_nifti(&image, &volume([40, 36, 18], base), DType::Float32).unwrap();
        let case = Case {
            modality,
            split: Split::Train,
            id: 1001,
            image: image.clone(),
            label: None,
        };
        let cache = dir.path().join("preprocessed");
        let fresh = prepare_case(&case, &cfg.preprocess, Some(&stats), &cache).unwrap();
        let cached = prepare_case(&case, &cfg.preprocess, Some(&stats), &cache).unwrap();
        let input = predictor.prepare(&image, modality).unwrap();
        let work = &input.work;
        assert_eq!(
            fresh.image.data.dim(),
            work.data.dim(),
            "{modality:?}: grid"
        );
        assert!(
            work.data.len() > 1000,
            "{modality:?}: {:?}",
            work.data.dim()
        );
        assert_eq!(fresh.image.spacing, work.spacing, "{modality:?}: spacing");
        assert_eq!(fresh.image.affine, work.affine, "{modality:?}: affine");
        assert!(
            bits(&fresh.image) == bits(work),
            "{modality:?}: values differ"
        );
        assert!(
            bits(&cached.image) == bits(work),
            "{modality:?}: cached values differ"
        );
        // the working grid is RAS at the working spacing, and normalised
        let t = cfg.preprocess.spacing;
        assert_eq!(work.spacing, [t; 3]);
        let mean = work.data.iter().map(|&v| v as f64).sum::<f64>() / work.data.len() as f64;
        assert!(mean.abs() < 3.0, "{modality:?}: mean {mean}");
    }
}
