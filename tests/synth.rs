//! SynthWHS: determinism, anatomy volumes, and the recorded MRI pose offset.

use std::path::Path;

use nalgebra::Vector4;
use rlu2net::data::labels::{STRUCTURES, class_counts, labels_to_classes};
use rlu2net::data::synth::{Manifest, Scale, SynthOptions, Variety, generate};
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

/// One synthwhs-1 dataset shared by the anatomy tests.
fn dataset() -> (tempfile::TempDir, Manifest) {
    let d = tempfile::tempdir().unwrap();
    let opts = SynthOptions {
        variety: Variety::Classic,
        ..small(3, 5)
    };
    let m = generate(&opts, d.path(), &|| {}).unwrap();
    (d, m)
}

fn sha256(path: &Path) -> String {
    use sha2::Digest;
    let h = sha2::Sha256::digest(std::fs::read(path).unwrap());
    h.iter().map(|b| format!("{b:02x}")).collect()
}

/// `--variety classic` writes the first generator's files byte for byte: these digests
/// were taken from synthwhs-1 (`rlu2net synth --cases 1 --test-cases 0 --seed 3 --scale
/// small`) before synthwhs-2 existed.
#[test]
fn classic_reproduces_synthwhs_1_byte_for_byte() {
    let d = tempfile::tempdir().unwrap();
    let opts = SynthOptions {
        variety: Variety::Classic,
        ..small(1, 3)
    };
    let m = generate(&opts, d.path(), &|| {}).unwrap();
    assert_eq!(m.generator, "synthwhs-1");
    let want = [
        (
            "ct_train/ct_train_1001_image.nii.gz",
            "97741164a6add5e982e98ff7561a7559a75a3c8f40d98b0189f33d8b2a2b2428",
        ),
        (
            "ct_train/ct_train_1001_label.nii.gz",
            "fc8dcbc6132f81768dc4b9e27122c0424029dd335fec131ed89a7827c0018f63",
        ),
        (
            "mr_train/mr_train_1001_image.nii.gz",
            "e830eec5731532077c0804e924e9fe0d7c87cc873ba64ae123adcb61b6b2950b",
        ),
        (
            "mr_train/mr_train_1001_label.nii.gz",
            "62534f68c4ec88f11ac3ade1a874205b4de5e180153a81159cecf4a1fe8f9cb7",
        ),
        (
            "manifest.json",
            "17784d68e37b7109fe2a51e98fa075d45019123efdaab869f17b079e48d6d042",
        ),
    ];
    for (file, digest) in want {
        assert_eq!(sha256(&d.path().join(file)), digest, "{file}");
    }
    // a synthwhs-1 manifest (no `variety` key) reads back as classic
    let back = Manifest::read(&d.path().join("manifest.json")).unwrap();
    assert_eq!(back.options.variety, Variety::Classic);
}

/// synthwhs-2: structures vary on their own, every draw is in the manifest, and the
/// held-out profile lies outside the training ranges.
#[test]
fn varied_structures_vary_independently_and_held_out_lies_outside() {
    let d = tempfile::tempdir().unwrap();
    let m = generate(&small(4, 8), d.path(), &|| {}).unwrap();
    assert_eq!(m.generator, "synthwhs-2");
    assert_eq!(m.options.variety, Variety::Varied);
    let template = m.template_volumes_ml;
    let mut spread = 0.0f64;
    for case in &m.cases {
        let ct = classes(&d.path().join(&case.ct.label));
        let n = class_counts(&ct.data);
        let v_ml = ct.spacing.iter().product::<f64>() / 1000.0;
        let ratios: Vec<f64> = (0..7)
            .map(|s| n[s + 1] as f64 * v_ml / template[s])
            .collect();
        // every structure is there (the field of view may cut the vessels)
        for (s, r) in ratios.iter().enumerate().take(5) {
            assert!(
                (0.3..2.5).contains(r),
                "case {} {}: ratio {r:.2}",
                case.id,
                STRUCTURES[s]
            );
        }
        // chambers scaled independently: their ratios differ within one case
        let ch = &ratios[1..5];
        let (lo, hi) = ch
            .iter()
            .fold((f64::MAX, 0.0f64), |(a, b), &r| (a.min(r), b.max(r)));
        spread = spread.max(hi / lo);
        let vars = case
            .ct_subject
            .structures
            .as_ref()
            .expect("per-structure draws");
        assert_eq!(vars.len(), 7);
        let app = case
            .ct
            .appearance
            .varied
            .as_ref()
            .expect("varied appearance");
        assert!(["arterial", "right-heart", "venous"].contains(&app.contrast.as_str()));
    }
    assert!(
        spread > 1.25,
        "chamber volume ratios within a case differ by {spread:.2}× at most"
    );
    // held out: the global rotation lies beyond ±20° on every axis, the CT noise outside 8–60 HU
    let h = tempfile::tempdir().unwrap();
    let opts = SynthOptions {
        variety: Variety::HeldOut,
        ..small(2, 8)
    };
    let m = generate(&opts, h.path(), &|| {}).unwrap();
    for case in &m.cases {
        assert!(
            case.ct_subject.rotation_deg.iter().all(|r| r.abs() >= 20.0),
            "{:?}",
            case.ct_subject.rotation_deg
        );
        let noise = case.ct.appearance.noise;
        assert!(!(8.0..60.0).contains(&noise), "{noise}");
    }
    assert_eq!(m.options.variety, Variety::HeldOut);
}

/// The anatomy's held-out parts move only their own group outside its range:
/// `held-out-orientation` the heart's rotation, `held-out-shape` each structure's variation.
#[test]
fn held_out_orientation_and_shape_move_one_group_each() {
    // a chamber's scale is drawn in 0.85–1.2 per axis (`shapes::ranges_of`)
    let chambers_inside = |case: &rlu2net::data::synth::CaseRecord| {
        let vars = case.ct_subject.structures.as_ref().unwrap();
        vars[1..5]
            .iter()
            .flat_map(|v| v.scale)
            .map(|s| (0.85..1.2).contains(&s))
            .collect::<Vec<bool>>()
    };
    for (variety, rotated, reshaped) in [
        (Variety::HeldOutOrientation, true, false),
        (Variety::HeldOutShape, false, true),
    ] {
        let h = tempfile::tempdir().unwrap();
        let opts = SynthOptions {
            variety,
            ..small(2, 8)
        };
        let m = generate(&opts, h.path(), &|| {}).unwrap();
        assert_eq!(m.options.variety, variety);
        for case in &m.cases {
            let r = case.ct_subject.rotation_deg;
            assert!(
                r.iter().all(|r| (r.abs() >= 20.0) == rotated),
                "{variety:?}: rotation {r:?}"
            );
            let inside = chambers_inside(case);
            assert!(
                inside.iter().all(|&i| i != reshaped),
                "{variety:?}: chamber scales {inside:?}"
            );
            // the appearance stays in its training range
            let noise = case.ct.appearance.noise;
            assert!((8.0..60.0).contains(&noise), "{variety:?}: noise {noise}");
        }
    }
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
