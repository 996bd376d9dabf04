//! Any bytes as a safetensors file: the header parser must return Ok or a typed error, never
//! panic; a header it accepts must tile the data exactly.
#![no_main]
use libfuzzer_sys::fuzz_target;
use std::path::Path;

fuzz_target!(|data: &[u8]| {
    if let Ok(h) = loraweld::format::safetensors::parse_header(Path::new("fuzz.safetensors"), data) {
        let mut end = 0u64;
        for t in &h.tensors {
            assert_eq!(t.offsets.0, end);
            end = t.offsets.1;
        }
        assert_eq!(h.data_start + end, data.len() as u64);
    }
});
