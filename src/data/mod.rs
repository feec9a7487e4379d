//! Data sets: the MM-WHS layout, label values, inspection, and the SynthWHS generator.

pub mod inspect;
pub mod pairing;
pub mod sampler;
pub mod synth;

// the MM-WHS label values and folder layout are part of the on-disk format (io)
pub use crate::io::layout::{Case, Dataset, Modality, Split, discover};
pub use crate::io::{labels, layout};
