//! A stored response's header fields, kept compactly.
//!
//! A `HeaderMap` of three fields takes about 850 bytes of heap (its index, a bucket of ~100
//! bytes per slot with spare capacity, one allocation per value): more than a small file's
//! body, and for a cache of small objects most of its memory. [`StoredHeaders`] keeps the
//! same fields, in order and with repeated names, in one buffer; a hit turns them back into a
//! `HeaderMap` whose values are slices of that buffer (no copy).
//!
//! # Buffer format (in memory only)
//! One record per field line: `name_len: u16 LE`, the lower-case name, `value_len: u32 LE`,
//! the value's bytes. The SSD tier stores fields in its own format
//! ([`crate::store::entry`]), so this one can change freely.

use bytes::{BufMut, Bytes, BytesMut};
use http::{HeaderMap, HeaderName, HeaderValue};

/// Header fields of a stored response, in one buffer.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct StoredHeaders {
    buf: Bytes,
    /// Field lines held.
    count: u32,
}

impl std::fmt::Debug for StoredHeaders {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_map().entries(self.iter()).finish()
    }
}

impl StoredHeaders {
    /// The fields of `map`, each line in the order `map` iterates them.
    pub fn from_map(map: &HeaderMap) -> StoredHeaders {
        let size: usize = map
            .iter()
            .map(|(n, v)| 6 + n.as_str().len() + v.len())
            .sum();
        let mut buf = BytesMut::with_capacity(size);
        for (name, value) in map {
            buf.put_u16_le(name.as_str().len() as u16);
            buf.put_slice(name.as_str().as_bytes());
            buf.put_u32_le(value.len() as u32);
            buf.put_slice(value.as_bytes());
        }
        StoredHeaders {
            buf: buf.freeze(),
            count: map.len() as u32,
        }
    }

    /// Every field line, in order: name and value (a slice of the buffer).
    pub fn iter(&self) -> impl Iterator<Item = (HeaderName, HeaderValue)> + '_ {
        let mut at = 0;
        std::iter::from_fn(move || {
            loop {
                let (name, value, next) = self.record(at)?;
                at = next;
                // Written from valid names and values, so both parse; a field that did not
                // would be skipped rather than served.
                if let (Ok(n), Ok(v)) = (
                    HeaderName::from_bytes(&self.buf[name]),
                    HeaderValue::from_maybe_shared(self.buf.slice(value)),
                ) {
                    return Some((n, v));
                }
            }
        })
    }

    /// The record at `at`: the ranges of its name and value, and where the next one starts.
    fn record(&self, at: usize) -> Option<(std::ops::Range<usize>, std::ops::Range<usize>, usize)> {
        let b = &self.buf;
        let name_len = u16::from_le_bytes(b.get(at..at + 2)?.try_into().ok()?) as usize;
        let name = at + 2..at + 2 + name_len;
        let v_at = name.end;
        let value_len = u32::from_le_bytes(b.get(v_at..v_at + 4)?.try_into().ok()?) as usize;
        let value = v_at + 4..v_at + 4 + value_len;
        (value.end <= b.len()).then(|| (name, value.clone(), value.end))
    }

    /// The fields as a `HeaderMap` (to answer with, or to merge a `304` into).
    pub fn to_map(&self) -> HeaderMap {
        let mut map = HeaderMap::with_capacity(self.count as usize);
        for (n, v) in self.iter() {
            map.append(n, v);
        }
        map
    }

    /// The first value of `name` (compared without regard to case).
    pub fn get(&self, name: impl AsRef<str>) -> Option<HeaderValue> {
        let want = name.as_ref().as_bytes();
        let mut at = 0;
        while let Some((n, v, next)) = self.record(at) {
            if self.buf[n].eq_ignore_ascii_case(want) {
                return HeaderValue::from_maybe_shared(self.buf.slice(v)).ok();
            }
            at = next;
        }
        None
    }

    pub fn contains_key(&self, name: impl AsRef<str>) -> bool {
        self.get(name).is_some()
    }

    /// Field lines held.
    pub fn len(&self) -> usize {
        self.count as usize
    }

    pub fn is_empty(&self) -> bool {
        self.count == 0
    }

    /// Bytes of the buffer (what these fields take on the heap, besides its allocation).
    pub fn heap_len(&self) -> usize {
        self.buf.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::header;

    #[test]
    fn fields_come_back_in_order_with_repeats_and_binary_values() {
        let mut map = HeaderMap::new();
        map.insert(header::CONTENT_TYPE, HeaderValue::from_static("text/html"));
        map.append(
            header::LINK,
            HeaderValue::from_static("</a.css>; rel=preload"),
        );
        map.append(
            header::LINK,
            HeaderValue::from_static("</b.js>; rel=preload"),
        );
        map.insert("x-bin", HeaderValue::from_bytes(b"\xfe ok").unwrap());
        map.insert(header::ETAG, HeaderValue::from_static("\"v1\""));
        let stored = StoredHeaders::from_map(&map);
        assert_eq!(stored.len(), 5);
        assert_eq!(stored.to_map(), map);
        let links: Vec<_> = stored
            .to_map()
            .get_all(header::LINK)
            .iter()
            .cloned()
            .collect();
        assert_eq!(links.len(), 2);
        assert_eq!(links[1], "</b.js>; rel=preload");
        assert_eq!(stored.get(header::ETAG).unwrap(), "\"v1\"");
        assert_eq!(stored.get("X-Bin").unwrap().as_bytes(), b"\xfe ok");
        assert_eq!(stored.get(header::LINK).unwrap(), "</a.css>; rel=preload");
        assert!(!stored.contains_key(header::LAST_MODIFIED));
        assert!(StoredHeaders::default().to_map().is_empty());
    }

    #[test]
    fn three_fields_take_one_small_buffer() {
        let mut map = HeaderMap::new();
        map.insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain"));
        map.insert(header::ETAG, HeaderValue::from_static("\"b3-0123456789\""));
        map.insert(
            header::LAST_MODIFIED,
            HeaderValue::from_static("Sun, 06 Dec 2026 04:37:20 GMT"),
        );
        let stored = StoredHeaders::from_map(&map);
        // 3 × 6 bytes of lengths, the names and the values: nothing else.
        assert_eq!(stored.heap_len(), 18 + 12 + 10 + 4 + 15 + 13 + 29);
    }
}
