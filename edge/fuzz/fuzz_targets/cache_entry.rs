//! A cache entry as the SSD tier hands it back (foyer checks its checksum, but a format
//! change or a bug must not crash the edge): decoded or refused, never a panic; what decodes
//! encodes to bytes that decode to the same entry.
#![no_main]

use foyer::Code;
use libfuzzer_sys::fuzz_target;
use tessera_edge::store::entry::Value;

fuzz_target!(|data: &[u8]| {
    let Ok(v) = Value::decode(&mut &data[..]) else {
        return;
    };
    let mut once = Vec::new();
    v.encode(&mut once).expect("a decoded entry encodes");
    let again = Value::decode(&mut &once[..]).expect("an encoded entry decodes");
    let mut twice = Vec::new();
    again.encode(&mut twice).unwrap();
    assert_eq!(once, twice, "encode/decode is not stable");
});
