//! Choosing where tensors live. The CPU backend (Burn's pure-Rust `flex`) is
//! always there; the `gpu` cargo feature adds a Vulkan (wgpu) GPU backend.

use burn::tensor::Device;

/// Which backend to run on.
#[derive(
    Clone,
    Copy,
    Debug,
    PartialEq,
    Eq,
    Default,
    clap::ValueEnum,
    serde::Serialize,
    serde::Deserialize,
)]
#[serde(rename_all = "lowercase")]
pub enum Backend {
    /// The GPU when built with `--features gpu`, else the CPU.
    #[default]
    Auto,
    /// Burn's pure-Rust CPU backend (flex), multithreaded.
    Cpu,
    /// Vulkan through wgpu (needs `--features gpu`).
    Gpu,
}

/// The device for a backend choice (without autodiff).
pub fn device(backend: Backend) -> anyhow::Result<Device> {
    match backend {
        Backend::Cpu => Ok(Device::flex()),
        Backend::Auto => Ok(gpu_device().unwrap_or_else(Device::flex)),
        Backend::Gpu => gpu_device().ok_or_else(|| {
            anyhow::anyhow!("this rlu2net was built without GPU support; rebuild with `cargo build --release --features gpu`")
        }),
    }
}

#[cfg(feature = "gpu")]
fn gpu_device() -> Option<Device> {
    Some(Device::vulkan(Default::default()))
}

#[cfg(not(feature = "gpu"))]
fn gpu_device() -> Option<Device> {
    None
}

/// A short name of the backend a device runs on.
pub fn describe(backend: Backend) -> &'static str {
    match (backend, cfg!(feature = "gpu")) {
        (Backend::Cpu, _) | (Backend::Auto, false) => "cpu (burn flex)",
        (Backend::Gpu, _) | (Backend::Auto, true) => "gpu (burn wgpu/vulkan)",
    }
}
