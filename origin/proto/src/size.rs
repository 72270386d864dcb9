//! Sizes with human units, as operators write them: `512`, `64KiB`, `256MiB`, `4GiB`, `1.5GB`.

/// Parses a byte size. Binary units (`KiB`, `MiB`, `GiB`, `TiB`) are powers of 1024, decimal
/// ones (`KB`/`kB`, `MB`, `GB`, `TB`) powers of 1000; `K`, `M`, `G`, `T` alone (either case)
/// are binary, as in nginx (`1g`).
pub fn parse_size(s: &str) -> Result<u64, String> {
    let t = s.trim();
    let split = t
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let n: f64 = num
        .parse()
        .map_err(|_| format!("{s:?} is not a size: expected a number and a unit such as 256MiB"))?;
    let mult: u64 = match unit.trim() {
        "" | "B" => 1,
        "K" | "k" | "KiB" => 1 << 10,
        "M" | "m" | "MiB" => 1 << 20,
        "G" | "g" | "GiB" => 1 << 30,
        "T" | "t" | "TiB" => 1 << 40,
        "KB" | "kB" => 1_000,
        "MB" => 1_000_000,
        "GB" => 1_000_000_000,
        "TB" => 1_000_000_000_000,
        u => {
            return Err(format!(
                "unknown size unit {u:?} in {s:?}; use B, KiB, MiB, GiB, TiB, KB, MB, GB or TB"
            ));
        }
    };
    let v = n * mult as f64;
    if !v.is_finite() || v < 0.0 || v > u64::MAX as f64 {
        return Err(format!("size {s:?} is out of range"));
    }
    Ok(v.round() as u64)
}

/// Reads a size in a configuration file: a number of bytes or a string such as `"256MiB"`
/// (`#[serde(deserialize_with = "tessera_origin_proto::size::bytes")]`).
pub fn bytes<'de, D, T>(d: D) -> Result<T, D::Error>
where
    D: serde::Deserializer<'de>,
    T: TryFrom<u64>,
{
    #[derive(serde::Deserialize)]
    #[serde(untagged)]
    enum Size {
        Number(u64),
        Text(String),
    }
    let n = match <Size as serde::Deserialize>::deserialize(d)? {
        Size::Number(n) => n,
        Size::Text(s) => parse_size(&s).map_err(serde::de::Error::custom)?,
    };
    T::try_from(n).map_err(|_| serde::de::Error::custom(format!("{n} bytes is too large")))
}

#[cfg(test)]
mod tests {
    use super::parse_size;

    #[test]
    fn units() {
        assert_eq!(parse_size("512"), Ok(512));
        assert_eq!(parse_size("64KiB"), Ok(65536));
        assert_eq!(parse_size("256MiB"), Ok(256 << 20));
        assert_eq!(parse_size("4GiB"), Ok(4 << 30));
        assert_eq!(parse_size("1.5GB"), Ok(1_500_000_000));
        assert_eq!(parse_size("10M"), Ok(10 << 20));
        assert_eq!(parse_size("1g"), Ok(1 << 30));
        assert!(parse_size("ten").is_err());
        assert!(parse_size("5 parsecs").is_err());
    }

    #[test]
    fn in_a_config_file_a_number_or_a_string() {
        #[derive(serde::Deserialize)]
        struct C {
            #[serde(deserialize_with = "super::bytes")]
            a: usize,
            #[serde(deserialize_with = "super::bytes")]
            b: u64,
        }
        let c: C = serde_json::from_str(r#"{"a": 1024, "b": "2MiB"}"#).unwrap();
        assert_eq!((c.a, c.b), (1024, 2 << 20));
        let e = serde_json::from_str::<C>(r#"{"a": "lots", "b": 1}"#)
            .err()
            .unwrap();
        assert!(e.to_string().contains("is not a size"), "{e}");
    }
}
