//! A manifest as an edge receives it from an origin: parse and check, never panic; a
//! manifest that passes its check tiles the file exactly.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tessera_origin_proto::Manifest;

fuzz_target!(|data: &[u8]| {
    if let Ok(m) = Manifest::from_json(data) {
        let total: u64 = m.chunks.iter().map(|c| u64::from(c.size)).sum();
        assert_eq!(total, m.size);
        let r = m.chunks_covering(0, m.size);
        assert_eq!(r.len(), m.chunks.len());
    }
});
