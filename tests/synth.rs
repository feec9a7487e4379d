//! SynthWHS: determinism, anatomy volumes, and the recorded MRI pose offset.

use std::path::Path;

use nalgebra::Vector4;
use rlu2net::data::labels::{STRUCTURES, class_counts, labels_to_classes};
use rlu2net::data::synth::{Manifest, Scale, SynthOptions, generate};
use rlu2net::io::{Volume, read_nifti};

fn small(cases: usize, seed: u64) -> SynthOptions {
    SynthOptions {
        cases,
        test_cases: 0,
        seed,
        scale: Scale::Small,
        ..SynthOptions::default()
    }
}

fn classes(path: &Path) -> Volume<u8> {
    let (v, _) = read_nifti::<f32>(path).unwrap();
    labels_to_classes(&v, path).unwrap()
}

fn all_files(dir: &Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            out.extend(all_files(&p));
        } else {
            out.push(p);
        }
    }
    out.sort();
    out
}

#[test]
fn same_seed_gives_byte_identical_files() {
    let a = tempfile::tempdir().unwrap();
    let b = tempfile::tempdir().unwrap();
    generate(&small(2, 11), a.path(), &|| {}).unwrap();
    generate(&small(2, 11), b.path(), &|| {}).unwrap();
    let fa = all_files(a.path());
    let fb = all_files(b.path());
    assert_eq!(fa.len(), 9, "{fa:?}"); // 2 pairs × (image + label) × 2 modalities + manifest
    for (x, y) in fa.iter().zip(&fb) {
        assert_eq!(
            x.strip_prefix(a.path()).unwrap(),
            y.strip_prefix(b.path()).unwrap()
        );
        assert!(
            std::fs::read(x).unwrap() == std::fs::read(y).unwrap(),
            "{} differs",
            x.display()
        );
    }
    // and another seed gives other images
    let c = tempfile::tempdir().unwrap();
    generate(&small(1, 12), c.path(), &|| {}).unwrap();
    let img = "ct_train/ct_train_1001_image.nii.gz";
    assert!(
        std::fs::read(a.path().join(img)).unwrap() != std::fs::read(c.path().join(img)).unwrap()
    );
}

/// One dataset shared by the anatomy tests.
fn dataset() -> (tempfile::TempDir, Manifest) {
    let d = tempfile::tempdir().unwrap();
    let m = generate(&small(3, 5), d.path(), &|| {}).unwrap();
    (d, m)
}

#[test]
fn anatomy_volumes_and_pose_offset() {
    let (dir, manifest) = dataset();
    let template = manifest.template_volumes_ml;
    for case in &manifest.cases {
        let ct = classes(&dir.path().join(&case.ct.label));
        let mr = classes(&dir.path().join(&case.mr.label));
        // all 7 structures, each within ±35 % of the template's volume
        for (vol, rec) in [(&ct, &case.ct), (&mr, &case.mr)] {
            let n = class_counts(&vol.data);
            let v_ml = vol.spacing.iter().product::<f64>() / 1000.0;
            for s in 0..7 {
                let ml = n[s + 1] as f64 * v_ml;
                let ratio = ml / template[s];
                assert!(
                    (0.65..=1.35).contains(&ratio),
                    "{} {}: {ml:.1} mL vs template {:.1} mL",
                    rec.label,
                    STRUCTURES[s],
                    template[s]
                );
            }
        }
        // map each CT voxel through the recorded pose offset into the MRI volume
        let pose = case.mr.pose_matrix;
        let h_ct = case.ct.heart_centre_world;
        let h_mr = case.mr.heart_centre_world;
        let mr_inv = mr.affine.try_inverse().unwrap();
        let s = mr.shape();
        let mut inter = [0usize; 8];
        let mut n_ct = [0usize; 8];
        let mut n_mr = [0usize; 8];
        for ((i, j, k), &c) in ct.data.indexed_iter() {
            let w = ct.world_of([i as f64, j as f64, k as f64]);
            let p = [w[0] - h_ct[0], w[1] - h_ct[1], w[2] - h_ct[2]];
            let x: [f64; 3] =
                std::array::from_fn(|r| h_mr[r] + (0..3).map(|q| pose[r][q] * p[q]).sum::<f64>());
            let v = mr_inv * Vector4::new(x[0], x[1], x[2], 1.0);
            let idx = [v[0].round(), v[1].round(), v[2].round()];
            let m = if (0..3).all(|a| idx[a] >= 0.0 && idx[a] < s[a] as f64) {
                mr.data[[idx[0] as usize, idx[1] as usize, idx[2] as usize]]
            } else {
                0
            };
            n_ct[c as usize] += 1;
            n_mr[m as usize] += 1;
            if c == m {
                inter[c as usize] += 1;
            }
        }
        let dice: Vec<f64> = (1..8)
            .map(|c| 2.0 * inter[c] as f64 / (n_ct[c] + n_mr[c]) as f64)
            .collect();
        eprintln!("case {}: Dice per structure {dice:.3?}", case.id);
        for (s, d) in dice.iter().enumerate() {
            assert!(*d > 0.8, "case {} {}: Dice {d:.3}", case.id, STRUCTURES[s]);
        }
        // the default offset is a real rotation (90° about S), not the identity
        assert_ne!(case.mr_pose.rotation_index, 0);
    }
}
