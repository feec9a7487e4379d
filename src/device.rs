//! Choosing where tensors live. The CPU backend (Burn's pure-Rust `flex`) is
//! always there; the `gpu` cargo feature adds a GPU backend (Burn's wgpu backend on
//! Vulkan, Metal on macOS, with WGSL shaders).
//!
//! A GPU is looked for before Burn is asked for it: Burn panics when its adapter is
//! missing, so `--device gpu` checks first and fails with one line naming what is
//! missing (the Vulkan loader, or an adapter), and `--device auto` falls back to the CPU
//! with one line saying so.

use std::fmt;
use std::str::FromStr;

use burn::tensor::Device;

/// Which backend to run on (`--device auto|cpu|gpu|gpu:N`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum Backend {
    /// A hardware GPU when built with `--features gpu` and one is present, else the CPU.
    #[default]
    Auto,
    /// Burn's pure-Rust CPU backend (flex), multithreaded.
    Cpu,
    /// The GPU (needs `--features gpu`): the best adapter, or adapter N of `rlu2net devices`.
    Gpu(Option<usize>),
}

impl FromStr for Backend {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s.to_ascii_lowercase().as_str() {
            "auto" => Ok(Backend::Auto),
            "cpu" => Ok(Backend::Cpu),
            "gpu" => Ok(Backend::Gpu(None)),
            other => other
                .strip_prefix("gpu:")
                .and_then(|n| n.parse::<usize>().ok())
                .map(|n| Backend::Gpu(Some(n)))
                .ok_or_else(|| {
                    format!("unknown device {s:?}: use auto, cpu, gpu or gpu:N (N from `rlu2net devices`)")
                }),
        }
    }
}

impl fmt::Display for Backend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Backend::Auto => f.write_str("auto"),
            Backend::Cpu => f.write_str("cpu"),
            Backend::Gpu(None) => f.write_str("gpu"),
            Backend::Gpu(Some(n)) => write!(f, "gpu:{n}"),
        }
    }
}

/// One graphics adapter, as `rlu2net devices` lists it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Adapter {
    pub name: String,
    /// discrete, integrated, virtual, cpu (a software device such as lavapipe) or other.
    pub kind: &'static str,
    /// The graphics API (Vulkan, Metal).
    pub api: String,
    pub driver: String,
    /// The largest buffer the adapter accepts, in bytes (wgpu reports no memory size).
    pub max_buffer: u64,
    /// The index among adapters of the same kind (what the GPU runtime addresses).
    index_in_kind: usize,
}

impl Adapter {
    /// A software rasteriser (lavapipe, SwiftShader): correct, but slower than the CPU backend.
    pub fn is_software(&self) -> bool {
        self.kind == "cpu"
    }
}

/// A chosen device and a line saying what it is.
pub struct Selected {
    pub device: Device,
    pub description: String,
}

/// The device for a backend choice (without autodiff); `--device auto` without a GPU
/// says in one line on stderr that it runs on the CPU.
pub fn device(backend: Backend) -> anyhow::Result<Device> {
    select(backend).map(|s| s.device)
}

/// The device for a backend choice and its description.
pub fn select(backend: Backend) -> anyhow::Result<Selected> {
    let cpu = || Selected {
        device: Device::flex(),
        description: "cpu (burn flex)".into(),
    };
    match backend {
        Backend::Cpu => Ok(cpu()),
        Backend::Auto if !cfg!(feature = "gpu") => Ok(cpu()),
        Backend::Auto => {
            let list = adapters();
            match pick(&list, None, false) {
                Ok(a) => Ok(gpu_selected(a)),
                Err(why) => {
                    eprintln!("--device auto: {why}; running on the CPU");
                    Ok(cpu())
                }
            }
        }
        Backend::Gpu(index) => {
            anyhow::ensure!(
                cfg!(feature = "gpu"),
                "this rlu2net was built without GPU support; rebuild with `cargo build --release --features gpu`"
            );
            let list = adapters();
            let a = pick(&list, index, true)
                .map_err(|why| anyhow::anyhow!("--device {backend}: {why}"))?;
            Ok(gpu_selected(a))
        }
    }
}

/// The adapter to use: number `index` of the list, or the best one (discrete, then
/// integrated, virtual, other; a software device only when `software_ok`).
fn pick(list: &[Adapter], index: Option<usize>, software_ok: bool) -> Result<&Adapter, String> {
    if list.is_empty() {
        return Err(no_adapter_reason());
    }
    if let Some(i) = index {
        return list.get(i).ok_or_else(|| {
            format!(
                "there is no adapter {i}: {} found ({}); see `rlu2net devices`",
                list.len(),
                names(list)
            )
        });
    }
    let rank = |a: &Adapter| match a.kind {
        "discrete" => 0,
        "integrated" => 1,
        "virtual" => 2,
        "other" => 3,
        _ => 4,
    };
    let best = list.iter().min_by_key(|a| rank(a)).expect("non-empty");
    if best.is_software() && !software_ok {
        return Err(format!(
            "no GPU adapter, only the software device {} (use --device gpu to run on it)",
            names(list)
        ));
    }
    Ok(best)
}

fn names(list: &[Adapter]) -> String {
    list.iter()
        .map(|a| format!("{} [{}]", a.name, a.kind))
        .collect::<Vec<_>>()
        .join(", ")
}

#[cfg(feature = "gpu")]
mod native {
    use super::{Adapter, Selected};

    fn gpu_description(a: &Adapter) -> String {
        format!("gpu (burn wgpu, {} on {}, {})", a.name, a.api, a.driver)
    }
    use burn::tensor::Device;
    use burn_dispatch::devices::{WgpuBackend, WgpuDevice, WgpuDeviceKind};

    /// The graphics API the GPU backend is pinned to.
    fn api() -> (wgpu::Backend, WgpuBackend) {
        if cfg!(target_os = "macos") {
            (wgpu::Backend::Metal, WgpuBackend::Metal)
        } else {
            (wgpu::Backend::Vulkan, WgpuBackend::Vulkan)
        }
    }

    pub fn adapters() -> Vec<Adapter> {
        let (api, _) = api();
        let instance = wgpu::Instance::new(wgpu::InstanceDescriptor {
            backends: api.into(),
            ..wgpu::InstanceDescriptor::new_without_display_handle()
        });
        let found = pollster_block_on(instance.enumerate_adapters(api.into()));
        let mut seen = [0usize; 5];
        found
            .iter()
            .map(|a| {
                let info = a.get_info();
                let (kind, slot) = match info.device_type {
                    wgpu::DeviceType::DiscreteGpu => ("discrete", 0),
                    wgpu::DeviceType::IntegratedGpu => ("integrated", 1),
                    wgpu::DeviceType::VirtualGpu => ("virtual", 2),
                    wgpu::DeviceType::Cpu => ("cpu", 3),
                    wgpu::DeviceType::Other => ("other", 4),
                };
                let index_in_kind = seen[slot];
                seen[slot] += 1;
                Adapter {
                    name: info.name.clone(),
                    kind,
                    api: format!("{:?}", info.backend),
                    driver: format!("{} {}", info.driver, info.driver_info)
                        .trim()
                        .to_string(),
                    max_buffer: a.limits().max_buffer_size,
                    index_in_kind,
                }
            })
            .collect()
    }

    pub fn open(a: &Adapter) -> Selected {
        let i = a.index_in_kind;
        let kind = match a.kind {
            "discrete" => WgpuDeviceKind::DiscreteGpu(i),
            "integrated" => WgpuDeviceKind::IntegratedGpu(i),
            "virtual" => WgpuDeviceKind::VirtualGpu(i),
            "other" => WgpuDeviceKind::Other(i),
            _ => WgpuDeviceKind::Cpu,
        };
        Selected {
            device: Device::new(WgpuDevice::new(kind).on(api().1)),
            description: gpu_description(a),
        }
    }

    /// Whether the Vulkan loader library can be loaded at all.
    pub fn loader_present() -> bool {
        if cfg!(target_os = "macos") {
            return true;
        }
        let names: &[&[u8]] = if cfg!(windows) {
            &[b"vulkan-1.dll\0"]
        } else {
            &[b"libvulkan.so.1\0", b"libvulkan.so\0"]
        };
        names.iter().any(|n| {
            // SAFETY: dlopen of a NUL-terminated name; the handle is closed at once.
            unsafe {
                let h = libc::dlopen(n.as_ptr().cast(), libc::RTLD_NOW | libc::RTLD_LOCAL);
                if h.is_null() {
                    false
                } else {
                    libc::dlclose(h);
                    true
                }
            }
        })
    }

    /// wgpu's native futures complete at once; poll the one future to its end.
    fn pollster_block_on<F: std::future::Future>(f: F) -> F::Output {
        use std::task::{Context, Poll, Waker};
        let mut f = std::pin::pin!(f);
        let mut cx = Context::from_waker(Waker::noop());
        loop {
            if let Poll::Ready(v) = f.as_mut().poll(&mut cx) {
                return v;
            }
            std::thread::yield_now();
        }
    }
}

/// The GPU adapters on this machine (empty without the `gpu` feature).
pub fn adapters() -> Vec<Adapter> {
    #[cfg(feature = "gpu")]
    return native::adapters();
    #[cfg(not(feature = "gpu"))]
    Vec::new()
}

fn gpu_selected(a: &Adapter) -> Selected {
    #[cfg(feature = "gpu")]
    return native::open(a);
    #[cfg(not(feature = "gpu"))]
    unreachable!("no adapter is listed without the gpu feature: {}", a.name)
}

fn no_adapter_reason() -> String {
    #[cfg(feature = "gpu")]
    if !native::loader_present() {
        return "the Vulkan loader (libvulkan.so.1) is not installed: install your GPU's Vulkan driver (Debian: libvulkan1 and mesa-vulkan-drivers or the vendor's driver)".into();
    }
    if cfg!(feature = "gpu") {
        let icd = std::env::var("VK_ICD_FILENAMES")
            .or_else(|_| std::env::var("VK_DRIVER_FILES"))
            .map(|v| format!(" (VK_ICD_FILENAMES/VK_DRIVER_FILES = {v})"))
            .unwrap_or_default();
        format!("no GPU adapter: the Vulkan loader found no driver{icd}")
    } else {
        "this rlu2net was built without GPU support".into()
    }
}

/// `rlu2net devices`: the adapters, one line each, as `--device gpu:N` numbers them.
pub fn list_text() -> String {
    let list = adapters();
    let mut s = String::from("cpu      cpu (burn flex), always available\n");
    if !cfg!(feature = "gpu") {
        s.push_str("(built without the gpu feature: no GPU adapters are looked for)\n");
        return s;
    }
    if list.is_empty() {
        s.push_str(&format!("(no GPU: {})\n", no_adapter_reason()));
    }
    for (i, a) in list.iter().enumerate() {
        s.push_str(&format!(
            "gpu:{i:<4} {} | {} | {} | {} | max buffer {:.1} GiB{}\n",
            a.name,
            a.kind,
            a.api,
            a.driver,
            a.max_buffer as f64 / (1u64 << 30) as f64,
            if a.is_software() {
                " | software: slower than --device cpu"
            } else {
                ""
            }
        ));
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    fn adapter(name: &str, kind: &'static str) -> Adapter {
        Adapter {
            name: name.into(),
            kind,
            api: "Vulkan".into(),
            driver: "d".into(),
            max_buffer: 1 << 30,
            index_in_kind: 0,
        }
    }

    #[test]
    fn parses_every_spelling_and_refuses_others() {
        assert_eq!("auto".parse::<Backend>(), Ok(Backend::Auto));
        assert_eq!("CPU".parse::<Backend>(), Ok(Backend::Cpu));
        assert_eq!("gpu".parse::<Backend>(), Ok(Backend::Gpu(None)));
        assert_eq!("gpu:2".parse::<Backend>(), Ok(Backend::Gpu(Some(2))));
        for bad in ["gpu:", "gpu:x", "tpu", "gpu:-1"] {
            assert!(bad.parse::<Backend>().is_err(), "{bad}");
        }
        for b in [
            Backend::Auto,
            Backend::Cpu,
            Backend::Gpu(None),
            Backend::Gpu(Some(3)),
        ] {
            assert_eq!(b.to_string().parse::<Backend>(), Ok(b));
        }
    }

    #[test]
    fn picks_hardware_first_and_software_only_when_asked() {
        let sw = adapter("llvmpipe", "cpu");
        let hw = adapter("H200", "discrete");
        let igpu = adapter("iGPU", "integrated");
        let list = vec![sw.clone(), igpu.clone(), hw.clone()];
        assert_eq!(pick(&list, None, false).unwrap().name, "H200");
        assert_eq!(pick(&list, Some(1), false).unwrap().name, "iGPU");
        assert!(
            pick(&list, Some(3), true)
                .unwrap_err()
                .contains("no adapter 3")
        );
        let only_sw = vec![sw];
        assert!(
            pick(&only_sw, None, false)
                .unwrap_err()
                .contains("software")
        );
        assert_eq!(pick(&only_sw, None, true).unwrap().name, "llvmpipe");
        assert!(pick(&[], None, true).is_err());
    }

    #[cfg(not(feature = "gpu"))]
    #[test]
    fn gpu_without_the_feature_is_a_clear_error() {
        let e = select(Backend::Gpu(None))
            .err()
            .expect("refused")
            .to_string();
        assert!(e.contains("--features gpu"), "{e}");
        let auto = select(Backend::Auto).expect("the CPU");
        assert_eq!(auto.description, "cpu (burn flex)");
    }
}
