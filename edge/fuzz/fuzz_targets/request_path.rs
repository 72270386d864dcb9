//! A request path as a client sends it: normalised once, the result is a fixed point (a
//! plugin that checks the normal path sees exactly what is served: normalising it again
//! changes nothing), and the file path the origin is asked for is derived from it without
//! panicking.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tessera_edge::rules::path::{check_path, file_path, normalize_path};

fuzz_target!(|data: &[u8]| {
    let Ok(raw) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(normal) = normalize_path(raw) {
        let again = normalize_path(&normal).expect("a normal path normalises");
        assert_eq!(again, normal, "normalising twice changed {raw:?}");
        if let Ok(checked) = check_path(&normal) {
            let _ = file_path(&checked);
        }
    }
});
