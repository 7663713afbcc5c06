//! The CUDA C++ kernel sources, embedded so that the plugin library needs no files at run time.

/// One `.cu` file and the `extern "C"` kernels it defines.
#[derive(Debug, Clone, Copy)]
pub struct KernelSource {
    /// File name under `plugins/kernels/` (also the NVRTC program name).
    pub name: &'static str,
    /// Full source text.
    pub src: &'static str,
    /// Every `extern "C"` `__global__` entry point of the file.
    pub entries: &'static [&'static str],
}

/// Multi-scale deformable attention (optimized and naive, fp32/fp16 value, int64/int32 shapes).
pub const MSDEFORM: KernelSource = KernelSource {
    name: "msdeform.cu",
    src: include_str!("../kernels/msdeform.cu"),
    entries: &[
        "msda_fwd_f32_i64",
        "msda_fwd_f32_i32",
        "msda_fwd_f16_i64",
        "msda_fwd_f16_i32",
        "msda_naive_f32_i64",
        "msda_naive_f32_i32",
        "msda_naive_f16_i64",
        "msda_naive_f16_i32",
    ],
};

/// Query pruning gate + top-K.
pub const PRUNE: KernelSource = KernelSource {
    name: "prune.cu",
    src: include_str!("../kernels/prune.cu"),
    entries: &[
        "query_prune_f32",
        "query_prune_stats_f32",
        "query_prune_select_f32",
    ],
};

/// Frame preprocessing (decode + resize + normalise) and mask composition (upsample + threshold + label).
pub const IMAGE: KernelSource = KernelSource {
    name: "image.cu",
    src: include_str!("../kernels/image.cu"),
    entries: &["pre_hpass", "pre_vpass_norm", "mask_labels"],
};

/// All kernel sources.
pub const ALL: [KernelSource; 3] = [MSDEFORM, PRUNE, IMAGE];

/// Architectures CI compiles for: Jetson Orin (sm_87) and Hopper (sm_90).
pub const CI_ARCHES: [&str; 2] = ["sm_87", "sm_90"];

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_declared_entry_is_defined_in_its_source() {
        for s in ALL {
            for e in s.entries {
                assert!(
                    s.src.contains(&format!("{e},"))
                        || s.src.contains(&format!("void {e}("))
                        || s.src.contains(&format!(") {e}(")),
                    "{e} not found in {}",
                    s.name
                );
            }
        }
    }
}
