//! How much a SynthWHS set varies: the generator version and its ranges.
//!
//! `classic` is the first generator (`synthwhs-1`, one template under a mild
//! deformation, one appearance per modality), kept so that old sets can be
//! made again byte for byte. `varied` (`synthwhs-2`, the default) draws
//! anatomy and appearance per case from wide ranges (docs/synthwhs.md,
//! "Variety"). `held-out` uses the `varied` generator with every drawn value
//! taken from just outside its training range: a profile never trained on,
//! for checking what transfers.

use rand::Rng;
use serde::{Deserialize, Serialize};

/// The generator and its ranges.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum Variety {
    /// synthwhs-1: the template under a mild smooth deformation, fixed appearance tables.
    Classic,
    /// synthwhs-2: per-structure anatomy, CT contrast phases, MRI sequences, artefacts.
    #[default]
    Varied,
    /// synthwhs-2 with every drawn value just outside the `varied` range (never trained on).
    HeldOut,
    /// `held-out` for the anatomy only (heart, structures, torso); the rest as `varied`.
    HeldOutAnatomy,
    /// `held-out` for the heart's orientation in the chest only (its global rotation).
    HeldOutOrientation,
    /// `held-out` for each structure's own variation only (size, stretch, margin, bend).
    HeldOutShape,
    /// `held-out` for the appearance only (intensities, noise, blur, artefacts).
    HeldOutAppearance,
    /// `held-out` for the geometry only (voxel sizes, fields of view and their placement).
    HeldOutGeometry,
}

/// The groups of drawn values a held-out profile can move outside their ranges.
/// The anatomy is three groups: `Anatomy` (the heart's size, its deformation and the
/// torso), `Orientation` (the heart's rotation) and `Shape` (each structure's variation).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Part {
    Anatomy,
    Orientation,
    Shape,
    Appearance,
    Geometry,
}

impl Part {
    fn is_anatomy(self) -> bool {
        matches!(self, Part::Anatomy | Part::Orientation | Part::Shape)
    }
}

impl Variety {
    /// The generator version written to the manifest.
    pub fn generator(self) -> &'static str {
        match self {
            Variety::Classic => "synthwhs-1",
            _ => "synthwhs-2",
        }
    }

    /// Whether this profile draws `part`'s values from outside their training ranges.
    pub fn holds_out(self, part: Part) -> bool {
        match self {
            Variety::HeldOut => true,
            Variety::HeldOutAnatomy => part.is_anatomy(),
            Variety::HeldOutOrientation => part == Part::Orientation,
            Variety::HeldOutShape => part == Part::Shape,
            Variety::HeldOutAppearance => part == Part::Appearance,
            Variety::HeldOutGeometry => part == Part::Geometry,
            Variety::Classic | Variety::Varied => false,
        }
    }

    pub fn is_classic(&self) -> bool {
        *self == Variety::Classic
    }
}

/// How far outside a training range a `held-out` value lies, as a fraction of the range's width.
pub const HELD_OUT_REACH: f64 = 0.25;

/// Draws values from training ranges (`varied`) or from just outside them (`held-out`).
pub struct Draw<'r, R: Rng> {
    pub rng: &'r mut R,
    pub held_out: bool,
    variety: Variety,
}

impl<'r, R: Rng> Draw<'r, R> {
    pub fn new(rng: &'r mut R, variety: Variety, part: Part) -> Self {
        Draw {
            rng,
            held_out: variety.holds_out(part),
            variety,
        }
    }

    /// Draw the next values for `part` (held out or not as the profile says).
    pub fn group(&mut self, part: Part) -> &mut Self {
        self.held_out = self.variety.holds_out(part);
        self
    }

    /// A value in `[a, b)`, or, held out, in the band of width `HELD_OUT_REACH·(b − a)`
    /// just below `a` or just above `b` (the side drawn at random).
    pub fn range(&mut self, a: f64, b: f64) -> f64 {
        if !self.held_out {
            return self.rng.random_range(a..b);
        }
        let w = HELD_OUT_REACH * (b - a);
        if self.rng.random_bool(0.5) {
            self.rng.random_range(b..b + w)
        } else {
            self.rng.random_range(a - w..a)
        }
    }

    /// `range`, kept at or above `floor` (a physical bound such as a voxel size).
    pub fn range_min(&mut self, a: f64, b: f64, floor: f64) -> f64 {
        self.range(a, b).max(floor)
    }

    /// A value in `[−x, x)`; held out, of magnitude in `[x, x·(1 + 2·HELD_OUT_REACH))`.
    pub fn symmetric(&mut self, x: f64) -> f64 {
        self.range(-x, x)
    }

    /// A value in `[a, b)` drawn uniformly in log space (held out: outside in log space).
    pub fn log_range(&mut self, a: f64, b: f64) -> f64 {
        self.range(a.ln(), b.ln()).exp()
    }

    /// True with probability `p` (the same in both profiles: a choice, not a range).
    pub fn chance(&mut self, p: f64) -> bool {
        self.rng.random_bool(p)
    }

    /// An index below `n` (the same in both profiles).
    pub fn pick(&mut self, n: usize) -> usize {
        self.rng.random_range(0..n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    #[test]
    fn held_out_values_lie_outside_the_training_range_and_varied_inside() {
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(9);
        let mut d = Draw::new(&mut rng, Variety::Varied, Part::Anatomy);
        for _ in 0..1000 {
            let v = d.range(2.0, 6.0);
            assert!((2.0..6.0).contains(&v));
        }
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(9);
        let mut d = Draw::new(&mut rng, Variety::HeldOut, Part::Anatomy);
        let (mut below, mut above) = (0, 0);
        for _ in 0..1000 {
            let v = d.range(2.0, 6.0);
            assert!((1.0..2.0).contains(&v) || (6.0..7.0).contains(&v), "{v}");
            if v < 2.0 {
                below += 1
            } else {
                above += 1
            }
            let s = d.symmetric(3.0);
            assert!((3.0..4.5).contains(&s.abs()), "{s}");
        }
        assert!(below > 400 && above > 400, "{below} {above}");
        // a one-part profile holds out that part only
        assert!(Variety::HeldOutGeometry.holds_out(Part::Geometry));
        assert!(!Variety::HeldOutGeometry.holds_out(Part::Anatomy));
        assert!(!Variety::Varied.holds_out(Part::Appearance));
        // the anatomy's three groups: all in `held-out-anatomy`, one each in its parts
        for p in [Part::Anatomy, Part::Orientation, Part::Shape] {
            assert!(Variety::HeldOutAnatomy.holds_out(p) && Variety::HeldOut.holds_out(p));
            assert!(!Variety::HeldOutAppearance.holds_out(p));
        }
        assert!(Variety::HeldOutOrientation.holds_out(Part::Orientation));
        assert!(!Variety::HeldOutOrientation.holds_out(Part::Shape));
        assert!(!Variety::HeldOutOrientation.holds_out(Part::Anatomy));
        assert!(Variety::HeldOutShape.holds_out(Part::Shape));
        assert!(!Variety::HeldOutShape.holds_out(Part::Orientation));
    }
}
