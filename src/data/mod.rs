//! Data sets: the MM-WHS layout, label values, inspection, and the SynthWHS generator.

pub mod inspect;
pub mod labels;
pub mod layout;
pub mod sampler;
pub mod synth;

pub use layout::{Case, Dataset, Modality, Split, discover};
