//! Engine directory `manifest.json` (first byte even) and plan sidecars `*.plan.json` (odd).
#![no_main]
use libfuzzer_sys::fuzz_target;
use referdino::engines::plan_info::PlanInfo;
use referdino::graph::export::Manifest;

fuzz_target!(|data: &[u8]| {
    let Some((&sel, rest)) = data.split_first() else {
        return;
    };
    let Ok(text) = std::str::from_utf8(rest) else {
        return;
    };
    if sel & 1 == 0 {
        let _ = serde_json::from_str::<Manifest>(text);
    } else if let Ok(info) = serde_json::from_str::<PlanInfo>(text) {
        let _ = info.check_compatible(10_300, (8, 7));
    }
});
