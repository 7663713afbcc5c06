//! The CUDA kernels run on the CPU (see the crate docs): against the official fixtures and the CPU kernels
//! of the main crate, with the tolerances of the GPU tests (`plugins/tests/gpu_kernels.rs`) they mirror.
//! The emulation itself is checked too: its half conversions against the `half` crate, its error paths.
#![cfg(unix)]

#[path = "../../tests/common/cases.rs"]
mod cases;

use cases::*;
use half::f16;
use referdino::camera::convert::TapsView;
use referdino::ops::prune::query_prune;
use referdino::pipeline::labels::AxisView;
use referdino_kernel_emu as emu;
use referdino_kernel_emu::{MsdaKernel, PruneKernel};
use referdino_plugins::dims::{LabelDims, LaunchGeometry, PreDims};
use referdino_plugins::tracks::TrackTable;

const KERNELS: [MsdaKernel; 4] = [
    MsdaKernel::Optimized(1),
    MsdaKernel::Optimized(2),
    MsdaKernel::Optimized(4),
    MsdaKernel::Naive,
];
const PRUNES: [PruneKernel; 2] = [PruneKernel::OneBlock, PruneKernel::Spread];

fn emu_msda_f32(kernel: MsdaKernel, c: &MsdaCase, i32_shapes: bool) -> Vec<f32> {
    let mut out = vec![f32::NAN; c.dims.out_len()];
    if i32_shapes {
        let s: Vec<i32> = c.shapes.iter().map(|&v| v as i32).collect();
        let st: Vec<i32> = c.starts.iter().map(|&v| v as i32).collect();
        emu::ms_deform_attn(
            kernel, &c.dims, &c.value, &s, &st, &c.loc, &c.weights, &mut out,
        )
    } else {
        emu::ms_deform_attn(
            kernel, &c.dims, &c.value, &c.shapes, &c.starts, &c.loc, &c.weights, &mut out,
        )
    }
    .expect("emulated launch");
    out
}

fn emu_msda_f16(kernel: MsdaKernel, c: &MsdaCase) -> Vec<f32> {
    let value: Vec<f16> = c.value.iter().map(|&v| f16::from_f32(v)).collect();
    let mut out = vec![f16::NAN; c.dims.out_len()];
    emu::ms_deform_attn(
        kernel, &c.dims, &value, &c.shapes, &c.starts, &c.loc, &c.weights, &mut out,
    )
    .expect("emulated launch");
    out.iter().map(|v| v.to_f32()).collect()
}

#[test]
fn msda_matches_official_fixtures_every_kernel_and_type() {
    for file in MSDA_FIXTURES {
        let (case, want) = fixture_case(file);
        for kernel in KERNELS {
            for i32_shapes in [false, true] {
                let got = emu_msda_f32(kernel, &case, i32_shapes);
                let what = format!("{file} {kernel:?} f32 i32 shapes: {i32_shapes}");
                let max = assert_close(&what, &got, &want, 2e-5, 1e-5);
                eprintln!("{what}: max |diff| vs official {max:.2e}");
            }
            // Inputs are rounded to f16 (rel 2^-11) and so is the output; values are O(1).
            let got = emu_msda_f16(kernel, &case);
            let max = assert_close(&format!("{file} {kernel:?} f16"), &got, &want, 4e-3, 4e-3);
            eprintln!("{file} {kernel:?} f16: max |diff| vs official f32 {max:.2e}");
        }
    }
}

#[test]
fn msda_matches_cpu_kernel_at_real_sizes() {
    for (name, case) in MsdaCase::real_sizes() {
        let want = cpu_msda(&case);
        let one = emu_msda_f32(MsdaKernel::Optimized(1), &case, false);
        let m1 = assert_close(&format!("{name} optimized vs CPU"), &one, &want, 2e-5, 1e-5);
        // Wider channel vectors sum every channel in the same order: the same floats to the bit.
        let four = emu_msda_f32(MsdaKernel::Optimized(4), &case, false);
        assert!(
            one.iter()
                .zip(&four)
                .all(|(a, b)| a.to_bits() == b.to_bits()),
            "{name}: 4 channels per thread differ from 1"
        );
        let half = emu_msda_f16(MsdaKernel::Optimized(4), &case);
        let m2 = assert_close(&format!("{name} f16 vs CPU"), &half, &want, 8e-3, 4e-3);
        let half1 = emu_msda_f16(MsdaKernel::Optimized(1), &case);
        assert!(
            half.iter()
                .zip(&half1)
                .all(|(a, b)| a.to_bits() == b.to_bits()),
            "{name}: f16 with 4 channels per thread differs from 1"
        );
        eprintln!("{name}: max |diff| vs CPU: optimized {m1:.2e}, f16 {m2:.2e}");
    }
    // The naive kernel at the two smaller shapes (one thread per output, the slowest to emulate).
    for (name, case) in MsdaCase::real_sizes().into_iter().skip(1) {
        let want = cpu_msda(&case);
        let naive = emu_msda_f32(MsdaKernel::Naive, &case, true);
        assert_close(&format!("{name} naive vs CPU"), &naive, &want, 2e-5, 1e-5);
    }
}

fn emu_prune(kernel: PruneKernel, c: &PruneCase) -> (Vec<i64>, Vec<f32>) {
    let d = c.dims;
    let mut keep = vec![-1i64; d.batch * d.keep];
    let mut gate = vec![f32::NAN; d.batch * d.n];
    emu::query_prune(kernel, &d, &c.logits, &c.attn, &mut keep, &mut gate)
        .expect("emulated launch");
    (keep, gate)
}

#[test]
fn prune_matches_official_fixture() {
    for (layer, case, want_gate, want_keep) in prune_fixture_layers() {
        let key = |s: &str| format!("{layer}.{s}");
        for kernel in PRUNES {
            let (keep, gate) = emu_prune(kernel, &case);
            let max = assert_close(&key("gate"), &gate, &want_gate, 1e-6, 1e-4);
            // Fixture margins (>= 1.2e-5) are far above float noise: the order must match exactly.
            assert_eq!(keep, want_keep, "{} ({kernel:?})", key("keep_idx"));
            eprintln!("{layer} {kernel:?}: gate max |diff| {max:.2e}, keep_idx exact");
        }
    }
}

#[test]
fn prune_matches_cpu_kernel_at_real_sizes() {
    for r in prune_real_sizes() {
        for kernel in PRUNES {
            let (keep, gate) = emu_prune(kernel, &r.case);
            let d = r.case.dims;
            assert_prune_matches(
                &format!("N={} B={} {kernel:?}", d.n, d.batch),
                &r,
                &keep,
                &gate,
            );
        }
    }
}

#[test]
fn prune_ties_and_nan_follow_the_contract() {
    let c = tie_case();
    let n = c.dims.n;
    for kernel in PRUNES {
        let (keep, gate) = emu_prune(kernel, &c);
        assert_eq!(keep, (0..20).collect::<Vec<i64>>(), "{kernel:?}");
        assert!(gate.iter().all(|&x| (x - 1.0 / n as f32).abs() < 1e-7));
    }
    // A NaN attention entry makes its column's sum NaN, so the attention softmax's denominator and with
    // it every gate: all NaN, ranked by index (NaN ranks first, among NaNs the lower index first).
    let mut c = PruneCase::random(1, 64, 8, 8, 32, 7);
    c.attn[3 * 64 + 5] = f32::NAN;
    for kernel in PRUNES {
        let (keep, gate) = emu_prune(kernel, &c);
        assert!(gate.iter().all(|g| g.is_nan()), "{kernel:?}: {gate:?}");
        assert_eq!(keep, (0..32).collect::<Vec<i64>>(), "{kernel:?}");
    }
}

/// The diagonal is not part of a query's received attention: a NaN or infinite self-attention entry
/// must not reach the gates of either variant (the spread kernel subtracts the diagonal, and falls back
/// to skipping it when it is not finite).
#[test]
fn prune_ignores_a_non_finite_diagonal() {
    for bad in [f32::NAN, f32::INFINITY] {
        let mut c = PruneCase::random(1, 64, 8, 8, 32, 9);
        c.attn[5 * 64 + 5] = bad;
        let (mut want_keep, mut want_gate) = (vec![0i64; 32], vec![0f32; 64]);
        query_prune(
            &c.logits,
            &c.attn,
            1,
            64,
            8,
            32,
            &mut want_keep,
            &mut want_gate,
        )
        .expect("CPU query_prune");
        for kernel in PRUNES {
            let (keep, gate) = emu_prune(kernel, &c);
            assert_close(&format!("{bad} {kernel:?}"), &gate, &want_gate, 1e-7, 1e-5);
            assert_keep_matches(&format!("{bad} {kernel:?}"), &keep, &want_keep, &want_gate);
        }
    }
}

#[test]
fn half_conversions_match_the_half_crate() {
    for bits in 0..=u16::MAX {
        let want = f16::from_bits(bits).to_f32();
        let got = emu::half_to_float(bits);
        assert!(
            got.to_bits() == want.to_bits() || (got.is_nan() && want.is_nan()),
            "half {bits:#06x}: got {got}, want {want}"
        );
    }
    // Every float whose low 13 bits take the rounding-relevant values, over the whole exponent range.
    let mut checked = 0;
    for high in 0..(1u32 << 19) {
        for low in [0u32, 1, 0xfff, 0x1000, 0x1001, 0x1fff] {
            let f = f32::from_bits(high << 13 | low);
            let want = f16::from_f32(f).to_bits();
            let got = emu::float_to_half(f);
            if f.is_nan() {
                assert_eq!(got & 0x7c00, 0x7c00, "{f}: NaN stays NaN");
                assert_ne!(got & 0x3ff, 0, "{f}: NaN stays NaN");
            } else {
                assert_eq!(got, want, "float {:#010x} ({f})", f.to_bits());
            }
            checked += 1;
        }
    }
    assert_eq!(checked, 6 << 19);
}

#[test]
fn rule_breaking_kernels_are_reported() {
    use emu::selftest::{run, Case};
    let sum = run(Case::WarpSum).expect("a correct warp sum");
    assert!(sum.iter().all(|&v| v == 496.0), "{sum:?}");
    for (case, words) in [
        (Case::ShuffleAfterExit, "exited lanes"),
        // The even lanes finish while the odd ones wait at their extra shuffle.
        (Case::DivergedShuffles, "undefined on a GPU"),
        (Case::LonelyBarrier, "never completes"),
    ] {
        let e = run(case).expect_err("a broken kernel").0;
        assert!(e.contains(words), "{case:?}: {e}");
    }
    // A launch from inside a kernel body is refused, not a deadlock.
    let g = LaunchGeometry {
        grid: 1,
        block: 32,
        shared_bytes: 0,
    };
    let inner = std::sync::Mutex::new(None);
    emu::launch(g, 1, &|| {
        let r = emu::launch(g, 1, &|| {});
        *inner.lock().unwrap() = Some(r);
    })
    .unwrap();
    let r = inner.lock().unwrap().take().unwrap();
    assert!(r.unwrap_err().0.contains("inside"));
}

#[test]
fn launch_errors_are_reported() {
    let bad = LaunchGeometry {
        grid: 1,
        block: 0,
        shared_bytes: 0,
    };
    let err = emu::launch(bad, 1, &|| {}).unwrap_err();
    assert!(err.0.contains("invalid launch"), "{err}");
    // More shared memory than a block may use without opting in (the launchers never opt in).
    let big = LaunchGeometry {
        grid: 1,
        block: 32,
        shared_bytes: 48 * 1024 + 4,
    };
    assert!(emu::launch(big, 1, &|| {}).is_err());
    // Sizes the launcher rejects are rejected here the same way, before anything runs.
    let c = PruneCase::random(1, 8, 4, 4, 9, 1);
    let mut keep = vec![0i64; 9];
    let mut gate = vec![0f32; 8];
    let err = emu::query_prune(
        PruneKernel::Spread,
        &c.dims,
        &c.logits,
        &c.attn,
        &mut keep,
        &mut gate,
    )
    .unwrap_err();
    assert!(err.0.contains("keep"), "{err}");
}

fn taps<'a>(t: &TapsView<'a>) -> emu::Taps<'a> {
    emu::Taps {
        start: t.start,
        len: t.len,
        weights: t.weights,
    }
}

fn axis<'a>(a: &AxisView<'a>) -> emu::Axis<'a> {
    emu::Axis {
        i0: a.i0,
        i1: a.i1,
        l0: a.l0,
        l1: a.l1,
    }
}

/// The preprocessing kernel on `c`'s frame, with the CPU preprocessor's taps and table.
fn emu_preprocess(c: &PreCase) -> Vec<f32> {
    let (w, h, ow, oh) = c.size;
    let (ht, vt) = c.pre.taps();
    let d = PreDims {
        in_w: w,
        in_h: h,
        stride: c.stride,
        format: c.format,
        out_w: ow,
        out_h: oh,
        hksize: ht.ksize,
        vksize: vt.ksize,
    };
    let lut: Vec<f32> = c.pre.lut().iter().flatten().copied().collect();
    let mut got = vec![f32::NAN; d.out_len()];
    emu::preprocess(&d, &c.frame, taps(&ht), taps(&vt), &lut, &mut got).expect("emulated launch");
    got
}

#[test]
fn preprocess_matches_the_cpu_preprocessor_exactly() {
    for c in pre_cases() {
        let (w, h, ow, oh) = c.size;
        let got = emu_preprocess(&c);
        let what = format!("{:?} {w}x{h} -> {ow}x{oh}", c.format);
        assert_identical(&what, &got, &c.want, |v| v.to_bits());
    }
}

#[test]
fn mask_labels_match_the_cpu_upsampler() {
    for c in label_cases() {
        let (ih, iw, oh, ow, tracks) = (c.in_h, c.in_w, c.out_h, c.out_w, c.tracks);
        let (logits, labels, scores) = (&c.logits, &c.labels, &c.scores);
        let (want_first, want_scored) = (&c.want_first, &c.want_scored);
        let plane = ih * iw;
        let (ys, xs) = c.up.axes();
        let d = LabelDims {
            in_h: ih,
            in_w: iw,
            out_h: oh,
            out_w: ow,
            tracks,
        };
        // The chosen-maps table with the maps in reverse: track t reads map tracks - 1 - t.
        let reversed: Vec<usize> = (0..tracks).rev().collect();
        let mut logits_rev = vec![0f32; logits.len()];
        for t in 0..tracks {
            logits_rev[(tracks - 1 - t) * plane..(tracks - t) * plane]
                .copy_from_slice(&logits[t * plane..(t + 1) * plane]);
        }
        for (mode, table, input, want) in [
            (
                "first wins",
                TrackTable::first_wins(labels).unwrap(),
                logits,
                want_first,
            ),
            (
                "best score",
                TrackTable::best_score(labels, scores).unwrap(),
                logits,
                want_scored,
            ),
            (
                "chosen maps",
                TrackTable::chosen(&reversed, labels, Some(scores)).unwrap(),
                &logits_rev,
                want_scored,
            ),
        ] {
            // Stale content from an older frame: the kernel must overwrite every byte.
            let mut mask = vec![0xEEu8; oh * ow];
            emu::mask_labels(&d, &table, input, axis(&ys), axis(&xs), &mut mask)
                .expect("emulated launch");
            let what = format!("{mode}: {tracks} tracks {ih}x{iw} -> {oh}x{ow}");
            assert_identical(&what, &mask, want, |&v| v);
        }
    }
}

/// The schedules make a race visible: a kernel whose warps exchange shared memory without a barrier
/// gives different outputs forward and in reverse; with the barrier, the same under every schedule.
#[test]
fn a_race_between_warps_changes_the_output_with_the_schedule() {
    use emu::selftest::{run, Case};
    use emu::{with_schedule, Schedule};
    let want: Vec<f32> = (0..128u32)
        .map(|i| ((i & !63) + ((i & 63) ^ 32)) as f32)
        .collect();
    for s in [Schedule::Forward, Schedule::Reverse, Schedule::Shuffled(7)] {
        let got = with_schedule(s, || run(Case::SyncedShared)).unwrap();
        assert_eq!(got, want, "{s:?}");
    }
    let forward = with_schedule(Schedule::Forward, || run(Case::UnsyncedShared)).unwrap();
    let reverse = with_schedule(Schedule::Reverse, || run(Case::UnsyncedShared)).unwrap();
    assert_ne!(forward, reverse);
    assert_ne!(forward, want);
}

/// Every kernel gives the same bits whatever order its blocks, and its threads between two
/// synchronisation points, run in (descending, and two seeded shuffles): none relies on an order the
/// GPU does not promise (a missing `__syncthreads`, a block reading what another writes).
#[test]
fn every_kernel_gives_the_same_bits_under_every_schedule() {
    use emu::{with_schedule, Schedule};
    const OTHERS: [Schedule; 3] = [
        Schedule::Reverse,
        Schedule::Shuffled(1),
        Schedule::Shuffled(0x5eed),
    ];
    let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<u32>>();
    let same = |what: &str, run: &dyn Fn() -> Vec<u32>| {
        let forward = with_schedule(Schedule::Forward, run);
        for s in OTHERS {
            let got = with_schedule(s, run);
            let differ = got.iter().zip(&forward).filter(|(a, b)| a != b).count();
            assert!(
                got.len() == forward.len() && differ == 0,
                "{what} under {s:?}: {differ} of {} values differ from the forward schedule",
                forward.len()
            );
        }
    };
    let (small, _) = fixture_case(MSDA_FIXTURES[0]);
    let masks = MsdaCase::real_sizes().swap_remove(2).1;
    for (name, case) in [("small fixture", &small), ("mask decoder Q=15", &masks)] {
        for kernel in KERNELS {
            same(&format!("msda f32 {kernel:?} {name}"), &|| {
                bits(&emu_msda_f32(kernel, case, false))
            });
            same(&format!("msda f16 {kernel:?} {name}"), &|| {
                bits(&emu_msda_f16(kernel, case))
            });
        }
    }
    let mut prunes: Vec<PruneCase> = prune_real_sizes()
        .into_iter()
        // Several blocks of each spread kernel, one partial; two batch items (N = 900 adds only time).
        .filter(|r| matches!((r.case.dims.n, r.case.dims.batch), (450, 1) | (29, 2)))
        .map(|r| r.case)
        .collect();
    prunes.push(tie_case());
    for c in &prunes {
        for kernel in PRUNES {
            same(
                &format!("prune {kernel:?} N={} B={}", c.dims.n, c.dims.batch),
                &|| {
                    let (keep, gate) = emu_prune(kernel, c);
                    let mut v = bits(&gate);
                    v.extend(keep.iter().map(|&k| k as u32));
                    v
                },
            );
        }
    }
    // Padded rows of 2- and 4-byte pixels, down- and upscaled (the larger frames add only time).
    for c in pre_cases().iter().filter(|c| c.size.0 < 640) {
        let (w, h, ..) = c.size;
        same(&format!("preprocess {:?} {w}x{h}", c.format), &|| {
            bits(&emu_preprocess(c))
        });
    }
    for c in label_cases()
        .into_iter()
        .filter(|c| matches!(c.tracks, 1 | 3))
    {
        let d = LabelDims {
            in_h: c.in_h,
            in_w: c.in_w,
            out_h: c.out_h,
            out_w: c.out_w,
            tracks: c.tracks,
        };
        let (ys, xs) = c.up.axes();
        let table = TrackTable::best_score(&c.labels, &c.scores).unwrap();
        same(&format!("mask labels {} tracks", c.tracks), &|| {
            let mut mask = vec![0xEEu8; c.out_h * c.out_w];
            emu::mask_labels(&d, &table, &c.logits, axis(&ys), axis(&xs), &mut mask)
                .expect("emulated launch");
            mask.iter().map(|&v| v as u32).collect()
        });
    }
}
