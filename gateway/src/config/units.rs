//! Human-friendly units in configuration values: durations (`"5s"`, `"250ms"`, `"2m"`) and
//! sizes (`"20MiB"`, `"512KiB"`, or a plain number of bytes).

use std::time::Duration;

use serde::{Deserialize, Deserializer};

/// A duration written like `"5s"` or `"1m 30s"` (humantime syntax).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HumanDuration(pub Duration);

impl<'de> Deserialize<'de> for HumanDuration {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        humantime::parse_duration(&s)
            .map(HumanDuration)
            .map_err(|e| {
                serde::de::Error::custom(format!(
                    "`{s}` is not a duration ({e}); write e.g. \"5s\" or \"250ms\""
                ))
            })
    }
}

/// A size in bytes, written like `"20MiB"` or as a number of bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ByteSize(pub u64);

impl<'de> Deserialize<'de> for ByteSize {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            Number(u64),
            Text(String),
        }
        match Raw::deserialize(d)? {
            Raw::Number(n) => Ok(ByteSize(n)),
            Raw::Text(s) => s
                .parse::<bytesize::ByteSize>()
                .map(|b| ByteSize(b.as_u64()))
                .map_err(|e| {
                    serde::de::Error::custom(format!(
                        "`{s}` is not a size ({e}); write e.g. \"20MiB\""
                    ))
                }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Deserialize)]
    struct T {
        d: HumanDuration,
        s: ByteSize,
    }

    #[test]
    fn parses_units() {
        let t: T = toml::from_str("d = \"250ms\"\ns = \"20MiB\"").unwrap();
        assert_eq!(t.d.0, Duration::from_millis(250));
        assert_eq!(t.s.0, 20 * 1024 * 1024);
        let t: T = toml::from_str("d = \"2m\"\ns = 1024").unwrap();
        assert_eq!(t.d.0, Duration::from_secs(120));
        assert_eq!(t.s.0, 1024);
        assert!(toml::from_str::<T>("d = \"soon\"\ns = 1").is_err());
    }
}
