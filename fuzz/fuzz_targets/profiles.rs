//! Engine build profiles (TOML), quantisation recipes (TOML) and calibration tables (JSON).
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&sel, rest)) = data.split_first() else {
        return;
    };
    let Ok(text) = std::str::from_utf8(rest) else {
        return;
    };
    match sel % 3 {
        0 => {
            if let Ok(p) = referdino::engines::profile::EngineProfile::from_toml(text) {
                let _ = p.validate();
                let _ = p.workspace_bytes();
            }
        }
        1 => {
            let _ = referdino::quant::recipe::Recipe::from_toml(text);
        }
        _ => {
            if let Ok(t) = referdino::quant::scale::ScaleTable::from_json(text) {
                let _ = t.activation_scale("x");
            }
        }
    }
});
