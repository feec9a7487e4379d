//! Pictures for people: three-plane previews with label contours.

use std::path::Path;

use anyhow::Context;
use ndarray::Array3;
use plotters::prelude::*;

use crate::data::layout::Modality;
use crate::io::{Volume, to_ras};

/// Contour colours of the classes `[bg, Myo, LA, LV, RA, RV, AA, PA]`.
pub const CLASS_COLOURS: [[u8; 3]; 8] = [
    [0, 0, 0],
    [255, 220, 0],
    [255, 105, 180],
    [230, 30, 30],
    [40, 90, 255],
    [0, 220, 230],
    [255, 140, 0],
    [40, 210, 60],
];

const FONT: &[u8] = include_bytes!("../../assets/fonts/DejaVuSansMono.ttf");

/// Register the bundled font (DejaVu Sans Mono) as "sans-serif" once per process.
pub fn ensure_font() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        let _ = plotters::style::register_font("sans-serif", FontStyle::Normal, FONT);
    });
}

/// Height in pixels of the legend band under an overlay.
pub const LEGEND_HEIGHT: u32 = 22;

/// The legend of an overlay: each structure's contour colour and name, then the
/// reference's white contour when there is one.
pub fn legend_entries(with_reference: bool) -> Vec<(String, [u8; 3])> {
    let mut v: Vec<(String, [u8; 3])> = crate::io::labels::STRUCTURES
        .iter()
        .enumerate()
        .map(|(i, s)| (s.to_string(), CLASS_COLOURS[i + 1]))
        .collect();
    if with_reference {
        v.push(("truth".to_string(), [255, 255, 255]));
    }
    v
}

/// Write an RGB buffer (`w·h·3` bytes) as a PNG, through a temporary file and a rename.
pub fn save_rgb_png(path: &Path, w: u32, h: u32, rgb: &[u8]) -> anyhow::Result<()> {
    let name = path
        .file_name()
        .context("not a file path")?
        .to_string_lossy()
        .replace('.', "_");
    let tmp = path.with_file_name(format!(".{name}-{}-partial.png", std::process::id()));
    let drawn = (|| -> anyhow::Result<()> {
        let mut root = BitMapBackend::new(&tmp, (w, h));
        root.blit_bitmap((0, 0), (w, h), rgb)
            .map_err(|e| anyhow::anyhow!("{}: cannot draw: {e:?}", path.display()))?;
        root.present()
            .map_err(|e| anyhow::anyhow!("{}: cannot write PNG: {e:?}", path.display()))
    })();
    if let Err(e) = drawn {
        let _ = std::fs::remove_file(&tmp);
        return Err(e);
    }
    crate::io::rename_durably(&tmp, path)
        .with_context(|| format!("{}: cannot move into place", path.display()))
}

/// An RGB band `w` × [`LEGEND_HEIGHT`] on black: a coloured square and a name per entry.
pub fn legend_band(w: u32, legend: &[(String, [u8; 3])]) -> anyhow::Result<Vec<u8>> {
    ensure_font();
    let mut buf = vec![0u8; (w * LEGEND_HEIGHT * 3) as usize];
    {
        let area = BitMapBackend::with_buffer(&mut buf, (w, LEGEND_HEIGHT)).into_drawing_area();
        let err = |e: &dyn std::fmt::Debug| anyhow::anyhow!("cannot draw the legend: {e:?}");
        let font = ("sans-serif", 13).into_font().color(&WHITE);
        let mut x = 4i32;
        let y = (LEGEND_HEIGHT as i32 - 10) / 2;
        for (name, c) in legend {
            let colour = RGBColor(c[0], c[1], c[2]);
            area.draw(&Rectangle::new([(x, y), (x + 10, y + 10)], colour.filled()))
                .map_err(|e| err(&e))?;
            area.draw(&Text::new(name.clone(), (x + 14, y - 2), font.clone()))
                .map_err(|e| err(&e))?;
            x += 14 + 8 * name.chars().count() as i32 + 12;
        }
        area.present().map_err(|e| err(&e))?;
    }
    Ok(buf)
}

/// Whether pixel (x, y) of a row-major class map is labelled and touches another
/// class (or the border) among its 4 neighbours.
fn on_contour(cls: &[u8], w: usize, h: usize, x: usize, y: usize) -> bool {
    let c = cls[y * w + x];
    c > 0
        && [(0i32, 1i32), (0, -1), (1, 0), (-1, 0)]
            .iter()
            .any(|&(dx, dy)| {
                let (xx, yy) = (x as i32 + dx, y as i32 + dy);
                xx < 0
                    || yy < 0
                    || xx >= w as i32
                    || yy >= h as i32
                    || cls[yy as usize * w + xx as usize] != c
            })
}

/// One displayed plane: grey values and classes, row-major.
struct Plane {
    w: usize,
    h: usize,
    grey: Vec<u8>,
    cls: Vec<u8>,
    /// A second label map (the reference), drawn as white contours.
    reference: Option<Vec<u8>>,
}

/// Sample a plane of a RAS volume at 1 mm per pixel (nearest neighbour).
/// `axes = (col_axis, row_axis, fixed_axis)`; columns and rows run towards
/// decreasing world coordinate (radiological view, superior/anterior up).
#[allow(clippy::too_many_arguments)]
fn plane(
    img: &Array3<f32>,
    cls: &Array3<u8>,
    reference: Option<&Array3<u8>>,
    spacing: [f64; 3],
    axes: (usize, usize, usize),
    fixed: usize,
    window: (f32, f32),
) -> Plane {
    let shape = img.shape();
    let (ca, ra, fa) = axes;
    let mm = 1.0;
    let w = ((shape[ca] as f64 * spacing[ca]) / mm).round().max(1.0) as usize;
    let h = ((shape[ra] as f64 * spacing[ra]) / mm).round().max(1.0) as usize;
    let mut grey = vec![0u8; w * h];
    let mut cl = vec![0u8; w * h];
    let mut rf = reference.map(|_| vec![0u8; w * h]);
    for y in 0..h {
        for x in 0..w {
            let ci = shape[ca]
                - 1
                - ((x as f64 + 0.5) * mm / spacing[ca])
                    .floor()
                    .min(shape[ca] as f64 - 1.0) as usize;
            let ri = shape[ra]
                - 1
                - ((y as f64 + 0.5) * mm / spacing[ra])
                    .floor()
                    .min(shape[ra] as f64 - 1.0) as usize;
            let mut idx = [0usize; 3];
            idx[ca] = ci;
            idx[ra] = ri;
            idx[fa] = fixed;
            let v = img[idx];
            let t = ((v - window.0) / (window.1 - window.0)).clamp(0.0, 1.0);
            grey[y * w + x] = (t * 255.0) as u8;
            cl[y * w + x] = cls[idx];
            if let (Some(r), Some(out)) = (reference, rf.as_mut()) {
                out[y * w + x] = r[idx];
            }
        }
    }
    Plane {
        w,
        h,
        grey,
        cls: cl,
        reference: rf,
    }
}

/// Three orthogonal mid-slices through the heart (axial, coronal, sagittal) with
/// label contours, side by side.
/// PNG previews (three planes with label contours) of the first labelled case of
/// each modality and split, written to `data/preview/<case>.png`.
pub fn dataset_previews(data: &Path) -> anyhow::Result<std::path::PathBuf> {
    use crate::io::labels::labels_to_classes;
    use crate::io::layout::{Split, discover};
    let ds = discover(data)?;
    let dir = data.join("preview");
    std::fs::create_dir_all(&dir).with_context(|| format!("{}: cannot create", dir.display()))?;
    for m in [Modality::Ct, Modality::Mr] {
        for s in [Split::Train, Split::Test] {
            let Some(c) = ds.select(m, s).into_iter().find(|c| c.label.is_some()) else {
                continue;
            };
            let lp = c.label.as_ref().expect("filtered on a label");
            let (img, _) = crate::io::read_nifti::<f32>(&c.image)?;
            let (lab, _) = crate::io::read_nifti::<f32>(lp)?;
            let cls = labels_to_classes(&lab, lp)?;
            preview_png(&dir.join(format!("{}.png", c.name())), &img, &cls, m)?;
        }
    }
    Ok(dir)
}

pub fn preview_png(
    path: &Path,
    image: &Volume<f32>,
    classes: &Volume<u8>,
    modality: Modality,
) -> anyhow::Result<()> {
    overlay_png(path, image, classes, None, modality)
}

/// Three planes through the reference's (else the classes') heart centre: `classes`
/// as coloured contours, `reference` (e.g. the ground truth) as white contours.
pub fn overlay_png(
    path: &Path,
    image: &Volume<f32>,
    classes: &Volume<u8>,
    reference: Option<&Volume<u8>>,
    modality: Modality,
) -> anyhow::Result<()> {
    let (img, _) = to_ras(image);
    let (cls, _) = to_ras(classes);
    let reference = reference.map(|r| to_ras(r).0);
    let centre_map = reference.as_ref().unwrap_or(&cls);
    let mut sum = [0.0f64; 3];
    let mut n = 0usize;
    for ((i, j, k), &c) in centre_map.data.indexed_iter() {
        if c > 0 {
            sum[0] += i as f64;
            sum[1] += j as f64;
            sum[2] += k as f64;
            n += 1;
        }
    }
    let s = img.shape();
    let centre: [usize; 3] = if n > 0 {
        std::array::from_fn(|a| (sum[a] / n as f64).round() as usize)
    } else {
        std::array::from_fn(|a| s[a] / 2)
    };
    let window = match modality {
        Modality::Ct => (-300.0, 700.0),
        Modality::Mr => {
            let mut v: Vec<f32> = img.data.iter().copied().step_by(7).collect();
            v.sort_by(f32::total_cmp);
            (0.0, v[(v.len() as f64 * 0.995) as usize].max(1.0))
        }
    };
    let r = reference.as_ref().map(|v| &v.data);
    let view = |axes: (usize, usize, usize)| {
        plane(
            &img.data,
            &cls.data,
            r,
            img.spacing,
            axes,
            centre[axes.2],
            window,
        )
    };
    let planes = [view((0, 1, 2)), view((0, 2, 1)), view((1, 2, 0))];
    let gap = 4;
    let w: usize = planes.iter().map(|p| p.w).sum::<usize>() + gap * 2;
    let h: usize = planes.iter().map(|p| p.h).max().unwrap_or(1);
    let mut rgb = vec![0u8; w * h * 3];
    let mut x0 = 0;
    for p in &planes {
        for y in 0..p.h {
            for x in 0..p.w {
                let c = p.cls[y * p.w + x];
                let edge = on_contour(&p.cls, p.w, p.h, x, y);
                let ref_edge = p
                    .reference
                    .as_ref()
                    .is_some_and(|rf| on_contour(rf, p.w, p.h, x, y));
                let px = if edge {
                    CLASS_COLOURS[c as usize]
                } else if ref_edge {
                    [255, 255, 255]
                } else {
                    let g = p.grey[y * p.w + x];
                    [g, g, g]
                };
                let o = (y * w + x0 + x) * 3;
                rgb[o..o + 3].copy_from_slice(&px);
            }
        }
        x0 += p.w + gap;
    }
    rgb.extend(legend_band(w as u32, &legend_entries(reference.is_some()))?);
    save_rgb_png(path, w as u32, h as u32 + LEGEND_HEIGHT, &rgb)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_legend_shows_every_structure_colour_and_the_truth() {
        let entries = legend_entries(true);
        assert_eq!(entries.len(), 8);
        assert_eq!(entries[2].0, "LV");
        assert_eq!(entries[2].1, CLASS_COLOURS[3]);
        let w = 480;
        let band = legend_band(w, &entries).unwrap();
        let has = |c: [u8; 3]| band.chunks(3).filter(|p| *p == c).count();
        for (name, c) in &entries {
            // a filled 10 × 10 square at least (the text is anti-aliased grey-white)
            assert!(has(*c) >= 100, "{name}: {} pixels of {c:?}", has(*c));
        }
        // the names are drawn in (anti-aliased) white: grey pixels, which no square has
        let plain = legend_band(w, &legend_entries(false)).unwrap();
        let text = plain
            .chunks(3)
            .filter(|p| p[0] == p[1] && p[1] == p[2] && p[0] > 100)
            .count();
        assert!(text > 50, "no text drawn ({text} light grey pixels)");
        // and without the reference entry there is no white square
        assert_eq!(legend_entries(false).len(), 7);
    }
}
