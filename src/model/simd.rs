//! Run a hot loop compiled for the widest vector instructions this CPU has.
//!
//! The binary is built for baseline x86-64 (SSE2) so that it runs everywhere; the
//! element-wise kernels of this crate (attention, norm + activation) are compiled a
//! second and third time with AVX2 + FMA and AVX-512 enabled and picked once at run
//! time.

/// The widest vector instructions this CPU has.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Isa {
    Base,
    #[cfg(target_arch = "x86_64")]
    Avx2,
    #[cfg(target_arch = "x86_64")]
    Avx512,
}

/// Checked once per process.
pub fn isa() -> Isa {
    static ISA: std::sync::OnceLock<Isa> = std::sync::OnceLock::new();
    *ISA.get_or_init(|| {
        #[cfg(target_arch = "x86_64")]
        {
            if std::is_x86_feature_detected!("avx512f") && std::is_x86_feature_detected!("fma") {
                return Isa::Avx512;
            }
            if std::is_x86_feature_detected!("avx2") && std::is_x86_feature_detected!("fma") {
                return Isa::Avx2;
            }
        }
        Isa::Base
    })
}

/// `multiversioned!(name, (args) -> ret, body)` defines `fn name(args) -> ret` that runs
/// `body(args)` (an `#[inline(always)]` function, so that it is compiled into each
/// version) with the widest instruction set available.
macro_rules! multiversioned {
    ($name:ident, ($($arg:ident : $ty:ty),*) -> $ret:ty, $body:ident) => {
        fn $name($($arg: $ty),*) -> $ret {
            #[cfg(target_arch = "x86_64")]
            {
                #[target_feature(enable = "avx512f,avx2,fma")]
                fn v4($($arg: $ty),*) -> $ret {
                    $body($($arg),*)
                }
                #[target_feature(enable = "avx2,fma")]
                fn v3($($arg: $ty),*) -> $ret {
                    $body($($arg),*)
                }
                match $crate::model::simd::isa() {
                    // SAFETY: the CPU has these features (checked by `isa`)
                    $crate::model::simd::Isa::Avx512 => return unsafe { v4($($arg),*) },
                    // SAFETY: as above
                    $crate::model::simd::Isa::Avx2 => return unsafe { v3($($arg),*) },
                    $crate::model::simd::Isa::Base => {}
                }
            }
            $body($($arg),*)
        }
    };
}
pub(crate) use multiversioned;
