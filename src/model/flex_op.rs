//! Plumbing for the operations this crate computes itself on the CPU backend
//! (`norm_act`, `softmax`, `add_act`): reaching a tensor's CPU buffer, with or without
//! autodiff, and building a tensor from a result. Other backends are never touched
//! here: each operation falls back to tensor operations when these return `None`.

use burn::backend::tensor::FloatTensor;
use burn::prelude::*;
use burn::tensor::{DType, TensorData};
use burn_dispatch::backends::flex::FlexTensor;
use burn_dispatch::backends::{Autodiff, Flex};

/// The CPU backend under autodiff (no gradient checkpointing, as the trainer runs it).
pub type Ad = Autodiff<Flex>;
pub type AdTensor = FloatTensor<Ad>;

/// Where a float tensor lives, for the operations of this crate.
pub enum Place {
    /// On the CPU backend, tracked by autodiff.
    Autodiff(AdTensor),
    /// On the CPU backend, without autodiff.
    Plain(FlexTensor),
}

/// The tensor's CPU primitive if it is an f32 tensor of the CPU backend.
pub fn place<const D: usize>(x: &Tensor<D>) -> Option<Place> {
    if x.dtype() != DType::F32 {
        return None;
    }
    if let Ok(t) = x.clone().try_into_primitive::<Ad>() {
        return Some(Place::Autodiff(t));
    }
    x.clone()
        .try_into_primitive::<Flex>()
        .ok()
        .map(Place::Plain)
}

/// A contiguous copy (or the tensor itself when already contiguous) and its values.
pub fn contiguous(t: &FlexTensor) -> FlexTensor {
    t.to_contiguous()
}

/// The f32 values of a contiguous tensor.
pub fn values(t: &FlexTensor) -> &[f32] {
    t.as_slice::<f32>()
        .expect("a contiguous f32 tensor of the CPU backend")
}

/// A CPU tensor of `shape` owning `values`.
pub fn from_values(values: Vec<f32>, shape: Vec<usize>) -> FlexTensor {
    FlexTensor::from_data(TensorData::new(values, shape))
}

pub fn shape_of(t: &FlexTensor) -> Vec<usize> {
    t.layout().shape().to_vec()
}
