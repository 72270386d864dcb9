//! The request a plugin's `authorize` or `route` hook reads, through the plugin host's
//! request accessors and its decision memo: every accessor answers exactly what the request
//! holds, and a decision made on one request is reused for another only if the plugin would
//! have decided the same on it (see `tessera_plugins::fuzzing`).
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = tessera_plugins::fuzzing::request_reads(data);
});
