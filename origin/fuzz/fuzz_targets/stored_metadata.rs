//! The origin's on-disk metadata encodings, as read back from a possibly damaged database.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tessera_origin::store::meta::{ChunkEntry, PackEntry, StoredChange, StoredManifest};

fuzz_target!(|data: &[u8]| {
    if let Some(m) = StoredManifest::decode("p", data) {
        assert!(m.check().is_ok());
        assert_eq!(StoredManifest::encode(&m), data);
    }
    if let Some(e) = ChunkEntry::decode(data) {
        assert_eq!(&e.encode()[..], data);
    }
    let _ = PackEntry::decode(data);
    let _ = StoredChange::decode(1, data);
});
