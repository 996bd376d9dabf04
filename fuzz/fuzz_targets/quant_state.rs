//! Any bytes as a bitsandbytes quant-state JSON blob: parse or refuse, never panic; an accepted
//! state has a sane block count and round-trips through our JSON writer.
#![no_main]
use libfuzzer_sys::fuzz_target;
use std::path::Path;

fuzz_target!(|data: &[u8]| {
    if let Ok(s) = loraweld::format::bnb::QuantState::parse(Path::new("fuzz"), "w", data) {
        assert!(s.blocks() >= 1);
        let json = loraweld::format::encode::quant_state_json(
            s.quant_type,
            s.blocksize,
            s.dtype.torch_name(),
            [s.shape[0], s.shape[1]],
            s.nested.map(|n| n.1),
        );
        let back = loraweld::format::bnb::QuantState::parse(Path::new("fuzz"), "w", json.as_bytes()).unwrap();
        assert_eq!(back.shape, s.shape);
        assert_eq!(back.nested.map(|n| n.1.to_bits()), s.nested.map(|n| n.1.to_bits()));
    }
});
