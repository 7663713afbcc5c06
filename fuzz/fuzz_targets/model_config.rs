//! Model configs: official YAML (first byte even) or fixture/flattened JSON (odd), then validation.
#![no_main]
use libfuzzer_sys::fuzz_target;
use referdino::config::ModelConfig;

fuzz_target!(|data: &[u8]| {
    let Some((&sel, rest)) = data.split_first() else {
        return;
    };
    let Ok(text) = std::str::from_utf8(rest) else {
        return;
    };
    let value: Option<serde_json::Value> = if sel & 1 == 0 {
        serde_yaml::from_str(text).ok()
    } else {
        serde_json::from_str(text).ok()
    };
    if let Some(v) = value {
        if let Ok(cfg) = ModelConfig::from_value(v) {
            let _ = cfg.validate();
            let _ = cfg.label();
            let _ = cfg.queries_per_layer();
        }
    }
});
