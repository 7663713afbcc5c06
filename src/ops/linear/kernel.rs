//! Which micro-kernel runs the products: detected from the CPU, overridden per process
//! ([`KERNEL_ENV`]) or per call ([`with_kernel`]).

use super::NR;
use crate::error::{Error, Result};

/// The micro-kernel of the products: what runs the tiles.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kernel {
    /// Plain Rust, any target: separate multiplies and adds.
    Portable,
    /// x86-64 AVX2 + FMA: 6 × 16 tiles.
    Avx2,
    /// x86-64 AVX-512F (with AVX2 + FMA): 12 × 32 tiles, the bits of [`Kernel::Avx2`].
    Avx512,
}

impl Kernel {
    /// The fastest kernel this CPU runs.
    pub fn detected() -> Kernel {
        if Kernel::Avx512.available() {
            Kernel::Avx512
        } else if Kernel::Avx2.available() {
            Kernel::Avx2
        } else {
            Kernel::Portable
        }
    }

    /// Whether this CPU has the instructions of this kernel.
    pub fn available(self) -> bool {
        match self {
            Kernel::Portable => true,
            Kernel::Avx2 => avx2_fma(),
            Kernel::Avx512 => {
                #[cfg(target_arch = "x86_64")]
                {
                    avx2_fma() && std::is_x86_feature_detected!("avx512f")
                }
                #[cfg(not(target_arch = "x86_64"))]
                {
                    false
                }
            }
        }
    }

    /// Its name, as [`KERNEL_ENV`] takes it.
    pub fn name(self) -> &'static str {
        match self {
            Kernel::Portable => "portable",
            Kernel::Avx2 => "avx2",
            Kernel::Avx512 => "avx512",
        }
    }

    /// The kernel named `name` (`portable`, `avx2`, `avx512`).
    pub fn from_name(name: &str) -> Option<Kernel> {
        let name = name.trim().to_ascii_lowercase();
        [Kernel::Portable, Kernel::Avx2, Kernel::Avx512]
            .into_iter()
            .find(|k| k.name() == name)
    }

    /// Columns of one tile: the narrowest column block worth a task.
    pub(super) fn tile_columns(self) -> usize {
        match self {
            Kernel::Avx512 => 2 * NR,
            _ => NR,
        }
    }
}

/// Environment variable naming the kernel the products use instead of the detected one (e.g.
/// `avx2` on an AVX-512 machine, to measure one against the other). A kernel this CPU lacks, or an
/// unknown name, is reported once and the detected kernel used.
pub const KERNEL_ENV: &str = "REFERDINO_CPU_KERNEL";

/// The kernel of this process: [`KERNEL_ENV`]'s if it names one this CPU runs, else the detected.
fn process_kernel() -> Kernel {
    static CHOSEN: std::sync::OnceLock<Kernel> = std::sync::OnceLock::new();
    *CHOSEN.get_or_init(|| {
        let detected = Kernel::detected();
        let Ok(name) = std::env::var(KERNEL_ENV) else {
            return detected;
        };
        match Kernel::from_name(&name) {
            Some(k) if k.available() => k,
            Some(k) => {
                log::warn!(
                    "{KERNEL_ENV}={name}: this CPU lacks the {} kernel's instructions; using {}",
                    k.name(),
                    detected.name()
                );
                detected
            }
            None => {
                log::warn!(
                    "{KERNEL_ENV}={name}: not a kernel (portable, avx2, avx512); using {}",
                    detected.name()
                );
                detected
            }
        }
    })
}

std::thread_local! {
    /// A kernel for the calls made from this thread instead of the process's ([`with_kernel`]).
    static OVERRIDE: std::cell::Cell<Option<Kernel>> = const { std::cell::Cell::new(None) };
}

/// The kernel a product called from this thread runs now.
pub fn kernel() -> Kernel {
    OVERRIDE.with(|k| k.get()).unwrap_or_else(process_kernel)
}

/// Runs `f` with the products called from this thread on `kernel` (tests and benchmarks compare
/// kernels in one process; the choice is made when a product is called, so its tasks on other
/// threads follow it). A kernel this CPU lacks is an error and `f` does not run.
pub fn with_kernel<R>(kernel: Kernel, f: impl FnOnce() -> R) -> Result<R> {
    if !kernel.available() {
        return Err(Error::Config(format!(
            "the {} kernel needs instructions this CPU lacks",
            kernel.name()
        )));
    }
    let before = OVERRIDE.with(|k| k.replace(Some(kernel)));
    // Restored on unwind as well, so a failed test leaves no override behind.
    struct Restore(Option<Kernel>);
    impl Drop for Restore {
        fn drop(&mut self) {
            OVERRIDE.with(|k| k.set(self.0));
        }
    }
    let _restore = Restore(before);
    Ok(f())
}

/// Whether this CPU runs the AVX2 + FMA kernel (otherwise the portable one runs).
pub fn avx2_fma() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        std::is_x86_feature_detected!("avx2") && std::is_x86_feature_detected!("fma")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}
