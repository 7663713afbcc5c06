//! The hand-off of a device turn (`LaneThreads::run_each`, which steps several device streams side
//! by side) allocates nothing once its threads exist, on any thread.

use crate::counter::{all_threads, in_own_process, let_the_harness_block};
use referdino::pipeline::live::lanes::LaneThreads;

#[test]
fn lane_hand_off_allocates_nothing_in_steady_state() {
    if !in_own_process(concat!(
        module_path!(),
        "::lane_hand_off_allocates_nothing_in_steady_state"
    )) {
        return;
    }
    let mut lanes = LaneThreads::new("alloc-lane");
    let mut items = [0u64; 4];
    let mut out = [None; 4];
    let step = |x: &mut u64| {
        *x += 1;
        *x
    };
    // The threads are made here.
    lanes
        .run_each(&mut items, &[0, 1, 2, 3], step, &mut out)
        .unwrap();
    let_the_harness_block();
    let (a0, _) = all_threads();
    for k in 0..200usize {
        let picks: &[usize] = match k % 3 {
            0 => &[3, 1, 0, 2],
            1 => &[2, 0],
            _ => &[1],
        };
        lanes.run_each(&mut items, picks, step, &mut out).unwrap();
    }
    let (a1, _) = all_threads();
    assert_eq!(a1 - a0, 0, "allocations over 200 turns, every thread");
    assert_eq!(lanes.threads(), 3);
    // Every item stepped once per turn it was picked in: 1 + 67 + 67 + 66 / 1 + 67 + 67 + 66 / …
    assert_eq!(items.iter().sum::<u64>(), 4 + 67 * 4 + 67 * 2 + 66);
}
