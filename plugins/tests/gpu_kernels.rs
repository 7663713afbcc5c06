//! GPU tests of the CUDA kernels (feature `cuda`): against the official fixtures, against the CPU kernels of
//! the main crate on random inputs at ReferDINO's real sizes, fp16 vs fp32, int32 vs int64 shapes, and the
//! optimized vs naive MSDeformAttn kernel. Every test skips with a printed reason when there is no GPU
//! (`REFERDINO_REQUIRE_GPU=1` turns the skip into a failure).
#![cfg(feature = "cuda")]

mod common;

use common::*;
use referdino_plugins::kernels::{IndexType, MsdaVariant};

macro_rules! gpu_or_skip {
    ($name:literal) => {
        match gpu() {
            Ok(g) => g,
            Err(reason) => {
                eprintln!("SKIPPED {}: {reason}", $name);
                return;
            }
        }
    };
}

// After the macro, which the module uses (textual scope).
#[path = "gpu/image.rs"]
mod image;

#[test]
fn msda_f32_matches_official_fixtures_both_kernels_both_index_types() {
    let g = gpu_or_skip!("msda_f32_matches_official_fixtures");
    for file in MSDA_FIXTURES {
        let (case, want) = fixture_case(file);
        for it in [IndexType::I64, IndexType::I32] {
            let mut dev = MsdaDev::<f32>::upload(&g, &case, it);
            for variant in [MsdaVariant::Optimized, MsdaVariant::Naive] {
                dev.launch(&g, variant);
                let got = dev.output(&g);
                let max = assert_close(
                    &format!("{file} {variant:?} {it:?}"),
                    &got,
                    &want,
                    2e-5,
                    1e-5,
                );
                eprintln!("{file} {variant:?} {it:?}: max |diff| vs official = {max:.2e}");
            }
        }
    }
}

#[test]
fn msda_f16_matches_official_fixtures_within_half_precision() {
    let g = gpu_or_skip!("msda_f16_matches_official_fixtures");
    for file in MSDA_FIXTURES {
        let (case, want) = fixture_case(file);
        let mut dev = MsdaDev::<half::f16>::upload(&g, &case, IndexType::I64);
        for variant in [MsdaVariant::Optimized, MsdaVariant::Naive] {
            dev.launch(&g, variant);
            let got = dev.output(&g);
            // Inputs are rounded to f16 (rel 2^-11) and so is the output; values are O(1).
            let max = assert_close(&format!("{file} f16 {variant:?}"), &got, &want, 4e-3, 4e-3);
            eprintln!("{file} f16 {variant:?}: max |diff| vs official f32 = {max:.2e}");
        }
    }
}

#[test]
fn msda_matches_cpu_kernel_at_real_sizes() {
    let g = gpu_or_skip!("msda_matches_cpu_kernel_at_real_sizes");
    for (name, case) in MsdaCase::real_sizes() {
        let want = cpu_msda(&case);
        let mut dev = MsdaDev::<f32>::upload(&g, &case, IndexType::I64);
        dev.launch(&g, MsdaVariant::Optimized);
        let opt = dev.output(&g);
        dev.launch(&g, MsdaVariant::Naive);
        let naive = dev.output(&g);
        let m1 = assert_close(&format!("{name} optimized vs CPU"), &opt, &want, 2e-5, 1e-5);
        let m2 = assert_close(&format!("{name} naive vs CPU"), &naive, &want, 2e-5, 1e-5);
        let mut dev16 = MsdaDev::<half::f16>::upload(&g, &case, IndexType::I32);
        dev16.launch(&g, MsdaVariant::Optimized);
        let m3 = assert_close(
            &format!("{name} f16 vs CPU"),
            &dev16.output(&g),
            &want,
            8e-3,
            4e-3,
        );
        eprintln!("{name}: max |diff| vs CPU: optimized {m1:.2e}, naive {m2:.2e}, f16 {m3:.2e}");
        // Every channel vector width sums each channel in the same order: the same floats to the bit.
        for vec in [1, 2, 4] {
            dev.launch_vec(&g, vec);
            assert!(
                dev.output(&g)
                    .iter()
                    .zip(&opt)
                    .all(|(a, b)| a.to_bits() == b.to_bits()),
                "{name}: f32 with {vec} channels per thread differs"
            );
        }
        let f16_auto = dev16.output(&g);
        for vec in [1, 2, 4] {
            dev16.launch_vec(&g, vec);
            assert!(
                dev16
                    .output(&g)
                    .iter()
                    .zip(&f16_auto)
                    .all(|(a, b)| a.to_bits() == b.to_bits()),
                "{name}: f16 with {vec} channels per thread differs"
            );
        }
    }
}

/// Our kernel against the official GroundingDINO CUDA kernel at the encoder shape (4820 queries): the GPU
/// check kit builds the official extension on the GPU machine, saves its inputs and output, and points
/// `REFERDINO_OFFICIAL_MSDA` at the file. Skips when the variable is unset.
#[test]
fn msda_matches_the_official_cuda_kernel() {
    let Ok(path) = std::env::var("REFERDINO_OFFICIAL_MSDA") else {
        eprintln!(
            "SKIPPED msda_matches_the_official_cuda_kernel: REFERDINO_OFFICIAL_MSDA is unset"
        );
        return;
    };
    let g = gpu_or_skip!("msda_matches_the_official_cuda_kernel");
    let (case, want) = msda_case_from(&Fixture::load_path(std::path::Path::new(&path)));
    let mut dev = MsdaDev::<f32>::upload(&g, &case, IndexType::I64);
    dev.launch(&g, MsdaVariant::Optimized);
    let m32 = assert_close("f32 vs official CUDA", &dev.output(&g), &want, 2e-5, 1e-5);
    let mut dev16 = MsdaDev::<half::f16>::upload(&g, &case, IndexType::I32);
    dev16.launch(&g, MsdaVariant::Optimized);
    let m16 = assert_close("f16 vs official CUDA", &dev16.output(&g), &want, 8e-3, 4e-3);
    eprintln!(
        "Q={} vs the official CUDA kernel: max |diff| f32 {m32:.2e}, f16 {m16:.2e}",
        case.dims.num_query
    );
}

#[test]
fn msda_cpu_kernel_agrees_with_fixture() {
    // Not a GPU test, but pins that the CPU kernel used as the oracle above is itself right.
    for file in MSDA_FIXTURES {
        let (case, want) = fixture_case(file);
        assert_close(&format!("CPU {file}"), &cpu_msda(&case), &want, 2e-5, 1e-5);
    }
}

#[test]
fn prune_matches_official_fixture() {
    let g = gpu_or_skip!("prune_matches_official_fixture");
    for (layer, case, want_gate, want_keep) in prune_fixture_layers() {
        let key = |s: &str| format!("{layer}.{s}");
        let mut dev = PruneDev::upload(&g, &case);
        for spread in [false, true] {
            dev.rerun(&g, spread);
            let (keep, gate) = dev.outputs(&g);
            let max = assert_close(&key("gate"), &gate, &want_gate, 1e-6, 1e-4);
            // Fixture margins (>= 1.2e-5) are far above float noise: the order must match exactly.
            assert_eq!(keep, want_keep, "{} (spread: {spread})", key("keep_idx"));
            eprintln!("{layer} spread={spread}: gate max |diff| {max:.2e}, keep_idx exact");
        }
    }
}

#[test]
fn prune_matches_cpu_kernel_at_real_sizes() {
    let g = gpu_or_skip!("prune_matches_cpu_kernel_at_real_sizes");
    for r in prune_real_sizes() {
        let mut dev = PruneDev::upload(&g, &r.case);
        for spread in [false, true] {
            dev.rerun(&g, spread);
            let (keep, gate) = dev.outputs(&g);
            let d = r.case.dims;
            assert_prune_matches(
                &format!("N={} B={} spread={spread}", d.n, d.batch),
                &r,
                &keep,
                &gate,
            );
        }
    }
}

#[test]
fn prune_ties_and_nan_follow_the_contract() {
    let g = gpu_or_skip!("prune_ties_and_nan_follow_the_contract");
    let c = tie_case();
    let n = c.dims.n;
    let mut dev = PruneDev::upload(&g, &c);
    for spread in [false, true] {
        dev.rerun(&g, spread);
        let (keep, gate) = dev.outputs(&g);
        assert_eq!(keep, (0..20).collect::<Vec<i64>>(), "spread: {spread}");
        assert!(gate.iter().all(|&x| (x - 1.0 / n as f32).abs() < 1e-7));
    }
}
