//! SynthWHS: a paired CT/MRI whole-heart data set in the MM-WHS layout, made
//! from the shipped heart template (see `assets/heart-template/README.md`).

pub mod anatomy;
pub mod artefacts;
pub mod render;
pub mod shapes;
pub mod variety;

use std::path::{Path, PathBuf};

use anyhow::Context;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rayon::prelude::*;
use serde::{Deserialize, Serialize};

use self::anatomy::{Subject, SubjectParams, Template};
use self::render::{Appearance, Grid, Placement, derive_seed, render};
use self::shapes::structure_fields;
pub use self::variety::Variety;
use self::variety::{Draw, Part};
use crate::data::labels::{class_counts, classes_to_labels, labels_to_classes};
use crate::data::layout::{Modality, Split, file_name};
use crate::geometry::{SignedPerm, cube_rotations, euler_rotation_deg, mat3_mul, perm_matrix_f64};
use crate::io::{DType, Orientation, Volume, read_nifti_bytes, write_atomically, write_nifti};

/// The default generator's version, bumped whenever the same seed would give
/// different files (`Variety::generator` names each one).
pub const GENERATOR_VERSION: &str = "synthwhs-2";

const TEMPLATE_NII: &[u8] =
    include_bytes!("../../../assets/heart-template/linflonet_heart_1mm_label.nii.gz");

/// The shipped heart template (1 mm, RAS), as classes.
pub fn template() -> Template {
    let path = Path::new("assets/heart-template/linflonet_heart_1mm_label.nii.gz");
    let (vol, _) =
        read_nifti_bytes::<f32>(TEMPLATE_NII, path).expect("the shipped template is valid");
    Template::new(labels_to_classes(&vol, path).expect("the shipped template has MM-WHS labels"))
}

/// Voxel sizes and fields of view.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Scale {
    /// Coarse (CT 1.2–1.6 mm, MRI 1.6–2.2 mm): small files for quick trials and tests.
    Small,
    /// CT 0.6–0.9 mm in-plane, 0.8–1.25 mm slices; MRI 1.0–1.6 mm in-plane, 1.0–2.0 mm slices.
    Default,
    /// MM-WHS-like: CT 512×512 at 0.35–0.45 mm, 0.5–0.625 mm slices; MRI 0.8–1.0 mm, 1.0–1.6 mm slices.
    Paper,
}

struct ScaleSpec {
    in_plane: (f64, f64),
    slice: (f64, f64),
    fov_in_plane: (f64, f64),
    fov_slice: (f64, f64),
    /// A fixed in-plane matrix (MM-WHS CT is 512×512) instead of FOV / spacing.
    matrix: Option<usize>,
}

/// Voxel sizes and fields of view: synthwhs-1's (`varied == false`) or synthwhs-2's
/// (wider, slices drawn log-uniformly by the caller).
fn scale_spec(scale: Scale, m: Modality, varied: bool) -> ScaleSpec {
    let (fov_in_plane, fov_slice) = match (m, varied) {
        (Modality::Ct, false) => ((200.0, 220.0), (190.0, 210.0)),
        (Modality::Mr, false) => ((240.0, 280.0), (210.0, 240.0)),
        (Modality::Ct, true) => ((180.0, 240.0), (170.0, 230.0)),
        (Modality::Mr, true) => ((220.0, 300.0), (190.0, 260.0)),
    };
    let (in_plane, slice, matrix) = match (scale, m, varied) {
        (Scale::Small, Modality::Ct, false) => ((1.2, 1.6), (1.2, 1.6), None),
        (Scale::Small, Modality::Mr, false) => ((1.6, 2.2), (1.6, 2.2), None),
        (Scale::Default, Modality::Ct, false) => ((0.6, 0.9), (0.8, 1.25), None),
        (Scale::Default, Modality::Mr, false) => ((1.0, 1.6), (1.0, 2.0), None),
        (Scale::Paper, Modality::Ct, false) => ((0.35, 0.45), (0.5, 0.625), Some(512)),
        (Scale::Paper, Modality::Mr, false) => ((0.8, 1.0), (1.0, 1.6), None),
        (Scale::Small, Modality::Ct, true) => ((1.2, 2.0), (1.2, 3.0), None),
        (Scale::Small, Modality::Mr, true) => ((1.5, 2.5), (1.5, 3.0), None),
        (Scale::Default, Modality::Ct, true) => ((0.6, 1.0), (0.8, 3.0), None),
        (Scale::Default, Modality::Mr, true) => ((0.8, 2.0), (1.0, 3.0), None),
        (Scale::Paper, Modality::Ct, true) => ((0.3, 0.5), (0.5, 1.5), Some(512)),
        (Scale::Paper, Modality::Mr, true) => ((0.7, 1.2), (1.0, 3.0), None),
    };
    ScaleSpec {
        in_plane,
        slice,
        fov_in_plane,
        fov_slice,
        matrix,
    }
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct SynthOptions {
    pub cases: usize,
    pub test_cases: usize,
    pub seed: u64,
    pub paired: bool,
    /// Index (0..24) of the cube rotation of the MRI pose offset.
    pub mr_pose: usize,
    pub scale: Scale,
    /// Recorded in the manifest; the PNGs are drawn by the caller (`viz::dataset_previews`).
    pub preview: bool,
    /// The generator and its ranges (a manifest without it is `classic`, synthwhs-1).
    #[serde(default = "classic", skip_serializing_if = "Variety::is_classic")]
    pub variety: Variety,
}

fn classic() -> Variety {
    Variety::Classic
}

/// The default MRI pose offset: 90° about the superior axis (index in `cube_rotations`).
pub fn default_mr_pose() -> usize {
    let r =
        SignedPerm::from_matrix([[0, -1, 0], [1, 0, 0], [0, 0, 1]]).expect("a signed permutation");
    crate::geometry::rotation_index(&r).expect("a proper rotation")
}

impl Default for SynthOptions {
    fn default() -> Self {
        SynthOptions {
            cases: 20,
            test_cases: 10,
            seed: 0,
            paired: true,
            mr_pose: default_mr_pose(),
            scale: Scale::Default,
            preview: false,
            variety: Variety::Varied,
        }
    }
}

/// What was drawn for one image.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ImageRecord {
    pub image: String,
    pub label: String,
    pub subject: String,
    pub grid: Grid,
    pub affine: [[f64; 4]; 4],
    pub heart_centre_world: [f64; 3],
    /// World = heart_centre + pose · subject frame; for MRI the pose offset.
    pub pose_matrix: [[f64; 3]; 3],
    pub appearance: Appearance,
    pub label_volumes_ml: [f64; 7],
}

/// The MRI pose offset of a case: a cube rotation followed by a small jitter.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct PoseOffset {
    pub rotation_index: usize,
    pub rotation: [[i32; 3]; 3],
    pub jitter_deg: [f64; 3],
    /// jitter · rotation: maps the subject frame (CT pose) into the MRI world frame.
    pub matrix: [[f64; 3]; 3],
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct CaseRecord {
    pub split: Split,
    pub id: u32,
    pub ct_subject: SubjectParams,
    pub mr_subject: SubjectParams,
    pub mr_pose: PoseOffset,
    pub ct: ImageRecord,
    pub mr: ImageRecord,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Manifest {
    pub generator: String,
    pub crate_version: String,
    pub options: SynthOptions,
    pub template_volumes_ml: [f64; 7],
    pub structures: [String; 7],
    pub cases: Vec<CaseRecord>,
}

impl Manifest {
    pub fn read(path: &Path) -> anyhow::Result<Manifest> {
        let s = std::fs::read_to_string(path)
            .with_context(|| format!("{}: cannot read", path.display()))?;
        serde_json::from_str(&s)
            .with_context(|| format!("{}: not a SynthWHS manifest", path.display()))
    }
}

fn uniform(rng: &mut impl Rng, (a, b): (f64, f64)) -> f64 {
    rng.random_range(a..b)
}

fn draw_grid(rng: &mut impl Rng, scale: Scale, m: Modality, centre: [f64; 3]) -> Grid {
    let spec = scale_spec(scale, m, false);
    let ip = uniform(rng, spec.in_plane);
    let sl = uniform(rng, spec.slice);
    let spacing = [ip, ip, sl];
    let fov_ip = uniform(rng, spec.fov_in_plane);
    let fov_sl = uniform(rng, spec.fov_slice);
    let n_ip = spec.matrix.unwrap_or((fov_ip / ip).round() as usize);
    let shape = [n_ip, n_ip, (fov_sl / sl).round() as usize];
    oriented_grid(rng, m, shape, spacing, centre)
}

/// synthwhs-2: voxel sizes, slice thickness and field of view drawn per case, some
/// fields of view cutting the heart.
fn draw_grid_varied<R: Rng>(d: &mut Draw<R>, scale: Scale, m: Modality, centre: [f64; 3]) -> Grid {
    let spec = scale_spec(scale, m, true);
    let ip = d.range_min(spec.in_plane.0, spec.in_plane.1, 0.3);
    let sl = d.log_range(spec.slice.0, spec.slice.1).max(0.3);
    let fov_ip = d.range_min(spec.fov_in_plane.0, spec.fov_in_plane.1, 60.0);
    let fov_sl = if d.chance(0.2) {
        d.range_min(spec.fov_slice.0 * 0.5, spec.fov_slice.0 * 0.7, 40.0)
    } else {
        d.range_min(spec.fov_slice.0, spec.fov_slice.1, 40.0)
    };
    let n_ip = spec
        .matrix
        .unwrap_or((fov_ip / ip).round() as usize)
        .min(512);
    let shape = [n_ip, n_ip, ((fov_sl / sl).round() as usize).max(8)];
    oriented_grid(d.rng, m, shape, [ip, ip, sl], centre)
}

fn oriented_grid(
    rng: &mut impl Rng,
    m: Modality,
    shape: [usize; 3],
    spacing: [f64; 3],
    centre: [f64; 3],
) -> Grid {
    // voxel axes: CT is axial (slice axis along S/I), in-plane order and signs vary;
    // MRI may be acquired in any of the 48 orientations
    let all = SignedPerm::all48();
    let orientation = loop {
        let o = all[rng.random_range(0..48)];
        if m == Modality::Mr || o.perm[2] == 2 {
            break o;
        }
    };
    let code = Orientation {
        world_axis: orientation.perm,
        negative: orientation.sign.map(|s| s < 0),
    }
    .code();
    Grid {
        shape,
        spacing,
        orientation,
        orientation_code: code,
        centre,
    }
}

fn matrix_rows(m: &nalgebra::Matrix4<f64>) -> [[f64; 4]; 4] {
    std::array::from_fn(|r| std::array::from_fn(|c| m[(r, c)]))
}

fn label_volumes(classes: &Volume<u8>) -> [f64; 7] {
    let n = class_counts(&classes.data);
    let v = classes.spacing.iter().product::<f64>() / 1000.0;
    std::array::from_fn(|c| n[c + 1] as f64 * v)
}

/// One generated image with its labels, before writing.
struct Rendered {
    classes: Volume<u8>,
    image: Volume<f32>,
    record: ImageRecord,
}

#[allow(clippy::too_many_arguments)]
fn render_image(
    subject: &Subject,
    subject_name: &str,
    modality: Modality,
    split: Split,
    id: u32,
    pose: [[f64; 3]; 3],
    opts: &SynthOptions,
    rng: &mut ChaCha8Rng,
) -> Rendered {
    let heart_centre = [0; 3].map(|_| rng.random_range(-40.0..40.0));
    let (grid, app) = if opts.variety.is_classic() {
        let fov_centre: [f64; 3] =
            std::array::from_fn(|a| heart_centre[a] + rng.random_range(-8.0..8.0));
        let grid = draw_grid(rng, opts.scale, modality, fov_centre);
        (grid, Appearance::random(modality, rng))
    } else {
        let mut d = Draw::new(rng, opts.variety, Part::Geometry);
        let fov_centre: [f64; 3] = std::array::from_fn(|a| heart_centre[a] + d.symmetric(20.0));
        let grid = draw_grid_varied(&mut d, opts.scale, modality, fov_centre);
        d.group(Part::Appearance);
        let app = Appearance::varied(modality, &mut d, grid.shape[2]);
        (grid, app)
    };
    let noise_seed: u64 = rng.random();
    let placement = Placement { heart_centre, pose };
    let (classes, image) = render(subject, modality, &grid, &placement, &app, noise_seed);
    let record = ImageRecord {
        image: format!(
            "{}_{}/{}",
            modality.prefix(),
            split.name(),
            file_name(modality, split, id, false)
        ),
        label: format!(
            "{}_{}/{}",
            modality.prefix(),
            split.name(),
            file_name(modality, split, id, true)
        ),
        subject: subject_name.to_string(),
        affine: matrix_rows(&grid.affine()),
        grid,
        heart_centre_world: heart_centre,
        pose_matrix: pose,
        appearance: app,
        label_volumes_ml: label_volumes(&classes),
    };
    Rendered {
        classes,
        image,
        record,
    }
}

fn write_rendered(out: &Path, r: &Rendered, modality: Modality) -> anyhow::Result<()> {
    let img_path = out.join(&r.record.image);
    let lab_path = out.join(&r.record.label);
    match modality {
        Modality::Ct => write_nifti(&img_path, &r.image, DType::Int16)?,
        Modality::Mr => write_nifti(&img_path, &r.image, DType::Int16)?,
    }
    write_nifti(&lab_path, &classes_to_labels(&r.classes), DType::Int16)?;
    Ok(())
}

fn draw_subject<'t>(template: &'t Template, variety: Variety, rng: &mut ChaCha8Rng) -> Subject<'t> {
    match variety {
        Variety::Classic => Subject::random(template, rng),
        _ => Subject::varied(
            template,
            structure_fields(template),
            &mut Draw::new(rng, variety, Part::Anatomy),
        ),
    }
}

/// Generate one case (a CT and an MRI image with labels) and write it.
fn generate_case(
    template: &Template,
    opts: &SynthOptions,
    out: &Path,
    split: Split,
    index: usize,
) -> anyhow::Result<CaseRecord> {
    let split_code = match split {
        Split::Train => 0,
        Split::Test => 1,
    };
    let id = match split {
        Split::Train => 1001 + index as u32,
        Split::Test => 2001 + index as u32,
    };
    let mut rng = ChaCha8Rng::seed_from_u64(derive_seed(opts.seed, &[split_code, index as u64]));
    let ct_subject = draw_subject(template, opts.variety, &mut rng);
    let mr_subject_own;
    let mr_subject = if opts.paired {
        &ct_subject
    } else {
        let mut r2 =
            ChaCha8Rng::seed_from_u64(derive_seed(opts.seed, &[split_code, index as u64, 7]));
        mr_subject_own = draw_subject(template, opts.variety, &mut r2);
        &mr_subject_own
    };
    let rot = cube_rotations()[opts.mr_pose];
    let jitter_deg = [0; 3].map(|_| rng.random_range(-10.0..10.0));
    let pose = mat3_mul(&euler_rotation_deg(jitter_deg), &perm_matrix_f64(&rot));
    let mr_pose = PoseOffset {
        rotation_index: opts.mr_pose,
        rotation: rot.matrix(),
        jitter_deg,
        matrix: pose,
    };
    let identity = [[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]];
    let ct_name = format!("{}_{}_{id}", split.name(), "ct");
    let mr_name = if opts.paired {
        ct_name.clone()
    } else {
        format!("{}_{}_{id}", split.name(), "mr")
    };
    let mut ct_rng =
        ChaCha8Rng::seed_from_u64(derive_seed(opts.seed, &[split_code, index as u64, 1]));
    let mut mr_rng =
        ChaCha8Rng::seed_from_u64(derive_seed(opts.seed, &[split_code, index as u64, 2]));
    let ct = render_image(
        &ct_subject,
        &ct_name,
        Modality::Ct,
        split,
        id,
        identity,
        opts,
        &mut ct_rng,
    );
    write_rendered(out, &ct, Modality::Ct)?;
    let mr = render_image(
        mr_subject,
        &mr_name,
        Modality::Mr,
        split,
        id,
        pose,
        opts,
        &mut mr_rng,
    );
    write_rendered(out, &mr, Modality::Mr)?;
    Ok(CaseRecord {
        split,
        id,
        ct_subject: ct_subject.params.clone(),
        mr_subject: mr_subject.params.clone(),
        mr_pose,
        ct: ct.record,
        mr: mr.record,
    })
}

/// Write a SynthWHS data set to `out`. `progress` is called once per finished case.
pub fn generate(
    opts: &SynthOptions,
    out: &Path,
    progress: &(dyn Fn() + Sync),
) -> anyhow::Result<Manifest> {
    anyhow::ensure!(
        opts.mr_pose < 24,
        "--mr-pose must be a rotation index 0..23, got {}",
        opts.mr_pose
    );
    anyhow::ensure!(
        opts.cases + opts.test_cases > 0,
        "nothing to generate: --cases and --test-cases are both 0"
    );
    for m in [Modality::Ct, Modality::Mr] {
        for s in [Split::Train, Split::Test] {
            let d = out.join(format!("{}_{}", m.prefix(), s.name()));
            std::fs::create_dir_all(&d)
                .with_context(|| format!("{}: cannot create folder", d.display()))?;
        }
    }
    let template = template();
    let jobs: Vec<(Split, usize)> = (0..opts.cases)
        .map(|i| (Split::Train, i))
        .chain((0..opts.test_cases).map(|i| (Split::Test, i)))
        .collect();
    let cases: Vec<CaseRecord> = jobs
        .par_iter()
        .with_max_len(1)
        .map(|&(s, i)| {
            let r = generate_case(&template, opts, out, s, i);
            progress();
            r
        })
        .collect::<anyhow::Result<_>>()?;
    let tv = template.class_volumes_ml();
    let manifest = Manifest {
        generator: opts.variety.generator().to_string(),
        crate_version: env!("CARGO_PKG_VERSION").to_string(),
        options: opts.clone(),
        template_volumes_ml: std::array::from_fn(|c| tv[c + 1]),
        structures: crate::data::labels::STRUCTURES.map(String::from),
        cases,
    };
    let json = serde_json::to_string_pretty(&manifest)?;
    let mpath: PathBuf = out.join("manifest.json");
    write_atomically(&mpath, json.as_bytes())
        .with_context(|| format!("{}: cannot write", mpath.display()))?;
    Ok(manifest)
}
