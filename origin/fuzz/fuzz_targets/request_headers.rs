//! Request header values a client controls: Range, If-None-Match/If-Match, Accept-Encoding.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tessera_origin_proto::range::{RangeAsk, accepts_encoding, etag_matches, parse_range};

fuzz_target!(|data: (&str, u64)| {
    let (header, size) = data;
    if let RangeAsk::Part { start, end } = parse_range(header, size) {
        assert!(start <= end && end < size);
    }
    let _ = etag_matches(header, "\"abc\"", true);
    let _ = accepts_encoding(header, "br");
});
