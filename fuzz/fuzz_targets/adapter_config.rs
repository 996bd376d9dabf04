//! Any text as `adapter_config.json`: parse or refuse with a typed error, never panic; for an
//! accepted config, PEFT-style pattern matching and scales never panic either.
#![no_main]
use libfuzzer_sys::fuzz_target;
use loraweld::checkpoint::adapter::{AdapterConfig, PatternOrder};
use std::path::Path;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    if let Ok(c) = AdapterConfig::parse(Path::new("adapter_config.json"), text) {
        let order = PatternOrder::from_json(text);
        let _ = c.module_scale("model.layers.0.self_attn.q_proj", &order);
        let _ = c.scale(c.r);
    }
});
