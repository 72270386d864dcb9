//! A request path as a client sends it: normalised once, the result is a fixed point (a
//! plugin that checks the normal path sees exactly what is served: normalising it again
//! changes nothing), every other spelling of the path served (each byte escaped, slashes
//! doubled) normalises to the same path, so a plugin cannot be asked about one spelling and
//! another be served, and the file path the origin is asked for is derived from it without
//! panicking.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tessera_edge::rules::path::{check_path, file_path, normalize_path};

fuzz_target!(|data: &[u8]| {
    let Ok(raw) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(normal) = normalize_path(raw) else {
        return;
    };
    let again = normalize_path(&normal).expect("a normal path normalises");
    assert_eq!(again, normal, "normalising twice changed {raw:?}");
    let Ok(served) = check_path(&normal) else {
        return;
    };
    let _ = file_path(&served);
    // The path served, spelled with every byte escaped and every slash doubled: the same
    // path for the plugins, the cache key and the backend.
    let respelled = served
        .split('/')
        .map(|seg| seg.bytes().map(|b| format!("%{b:02x}")).collect::<String>())
        .collect::<Vec<_>>()
        .join("//");
    let other = normalize_path(&respelled)
        .unwrap_or_else(|e| panic!("{respelled:?}, a spelling of {normal:?}: {}", e.message));
    assert_eq!(other, normal, "{raw:?} and {respelled:?} name one path");
});
