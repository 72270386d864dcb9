//! A purge ban file (`bans.json`) as the edge reads it back at start: parsed or refused,
//! never a panic; the bans it holds judge any stored response.
#![no_main]

use std::sync::Arc;

use libfuzzer_sys::fuzz_target;
use tessera_edge::store::bans::Bans;
use tessera_edge::store::entry::{BodyRef, Meta};

fuzz_target!(|data: &[u8]| {
    let Ok(bans) = Bans::parse(data, "bans.json".into()) else {
        return;
    };
    let _ = bans.len();
    for stored_at_ms in [0, 1, u64::MAX / 2, u64::MAX] {
        let meta = Meta {
            status: 200,
            headers: Default::default(),
            freshness: Default::default(),
            stored_at_ms,
            path: "/a/b.js".into(),
            surrogate_keys: vec!["k".into()],
            size: 0,
            body: BodyRef::Chunks(Arc::new(Vec::new())),
            placement: Default::default(),
        };
        let _ = bans.verdict(&meta);
    }
});
