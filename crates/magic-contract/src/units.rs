//! Small pure parsers for the quantities a contract writes as text: durations (`10s`),
//! byte sizes (`256Mi`) and CPU shares (`500m`).
//!
//! Owns: the accepted spellings and their arithmetic (overflow-checked).
//! Must never: apply limits or defaults (the contract walker does that), panic on any input.

use std::time::Duration;

/// Parse a duration: one or more `<integer><unit>` groups, units `ms`, `s`, `m`, `h`, `d`
/// (`500ms`, `10s`, `2m`, `1h`, `30d`, `1m30s`).
///
/// The error is a sentence a contract author can act on.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    const HINT: &str =
        "write a whole number with a unit, e.g. \"500ms\", \"10s\", \"2m\", \"1h\", \"30d\"";
    if text.is_empty() {
        return Err(format!("empty duration: {HINT}"));
    }
    let bytes = text.as_bytes();
    let mut i = 0;
    let mut total_ms: u64 = 0;
    while i < bytes.len() {
        let start = i;
        while i < bytes.len() && bytes[i].is_ascii_digit() {
            i += 1;
        }
        if start == i {
            return Err(format!("\"{text}\" is not a duration: {HINT}"));
        }
        let number: u64 = text[start..i]
            .parse()
            .map_err(|_| format!("\"{text}\" is too large a duration"))?;
        let unit_start = i;
        while i < bytes.len() && bytes[i].is_ascii_alphabetic() {
            i += 1;
        }
        let unit = &text[unit_start..i];
        let factor: u64 = match unit {
            "ms" => 1,
            "s" => 1_000,
            "m" => 60_000,
            "h" => 3_600_000,
            "d" => 86_400_000,
            "" if bytes.get(i) == Some(&b'.') => {
                return Err(format!(
                    "\"{text}\" has a fraction: use a smaller unit (\"1500ms\", not \"1.5s\")"
                ))
            }
            "" if i == bytes.len() => {
                return Err(format!(
                    "\"{text}\" has no unit: {HINT} (a bare number is ambiguous)"
                ))
            }
            "" => return Err(format!("\"{text}\" is not a duration: {HINT}")),
            other => {
                return Err(format!(
                    "\"{text}\" has an unknown unit \"{other}\": {HINT}"
                ))
            }
        };
        total_ms = number
            .checked_mul(factor)
            .and_then(|ms| total_ms.checked_add(ms))
            .ok_or_else(|| format!("\"{text}\" is too large a duration"))?;
    }
    Ok(Duration::from_millis(total_ms))
}

/// Parse a byte size: a whole number with an optional unit, binary `Ki Mi Gi Ti` (powers of
/// 1024) or decimal `k K M G T` (powers of 1000): `256Mi`, `2Gi`, `512M`, `1G`, `1048576`.
pub fn parse_bytes(text: &str) -> Result<u64, String> {
    const HINT: &str =
        "write a whole number of bytes with an optional unit, e.g. \"256Mi\", \"2Gi\", \"512M\", \"1G\"";
    let digits_end = text
        .as_bytes()
        .iter()
        .position(|b| !b.is_ascii_digit())
        .unwrap_or(text.len());
    if digits_end == 0 {
        return Err(format!("\"{text}\" is not a size: {HINT}"));
    }
    let number: u64 = text[..digits_end]
        .parse()
        .map_err(|_| format!("\"{text}\" is too large a size"))?;
    let factor: u64 = match &text[digits_end..] {
        "" => 1,
        "k" | "K" => 1_000,
        "M" => 1_000_000,
        "G" => 1_000_000_000,
        "T" => 1_000_000_000_000,
        "Ki" => 1 << 10,
        "Mi" => 1 << 20,
        "Gi" => 1 << 30,
        "Ti" => 1 << 40,
        other if other.starts_with('.') => {
            return Err(format!("\"{text}\" has a fraction: {HINT}"))
        }
        other => {
            return Err(format!(
                "\"{text}\" has an unknown unit \"{other}\": {HINT}"
            ))
        }
    };
    number
        .checked_mul(factor)
        .ok_or_else(|| format!("\"{text}\" is too large a size"))
}

/// Parse a CPU share given as text: cores (`"0.5"`, `"2"`) or millicores (`"500m"`).
pub fn parse_cpu(text: &str) -> Result<f64, String> {
    const HINT: &str = "write cores as a number (0.5, 2) or millicores as a string (\"500m\")";
    if let Some(millis) = text.strip_suffix('m') {
        if millis.is_empty() || !millis.bytes().all(|b| b.is_ascii_digit()) {
            return Err(format!("\"{text}\" is not a CPU share: {HINT}"));
        }
        let millis: u64 = millis
            .parse()
            .map_err(|_| format!("\"{text}\" is too large a CPU share"))?;
        // Lossless for every value that passes the limits.
        #[allow(clippy::cast_precision_loss)]
        return Ok(millis as f64 / 1000.0);
    }
    let (whole, fraction) = match text.split_once('.') {
        Some((w, f)) => (w, Some(f)),
        None => (text, None),
    };
    let digits = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
    if !digits(whole) || fraction.is_some_and(|f| !digits(f)) {
        return Err(format!("\"{text}\" is not a CPU share: {HINT}"));
    }
    text.parse::<f64>()
        .ok()
        .filter(|v| v.is_finite())
        .ok_or_else(|| format!("\"{text}\" is not a CPU share: {HINT}"))
}

/// Render a duration the way a contract would write it, for messages: whole days or hours,
/// else seconds, else milliseconds (`30d`, `1h`, `300s`, `1500ms`).
pub fn format_duration(duration: Duration) -> String {
    let ms = duration.as_millis();
    if ms == 0 {
        "0s".into()
    } else if ms.is_multiple_of(86_400_000) {
        format!("{}d", ms / 86_400_000)
    } else if ms.is_multiple_of(3_600_000) {
        format!("{}h", ms / 3_600_000)
    } else if ms.is_multiple_of(1000) {
        format!("{}s", ms / 1000)
    } else {
        format!("{ms}ms")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        let ok: &[(&str, u64)] = &[
            ("500ms", 500),
            ("0ms", 0),
            ("10s", 10_000),
            ("2m", 120_000),
            ("1h", 3_600_000),
            ("30d", 30 * 86_400_000),
            ("1m30s", 90_000),
            ("1h1ms", 3_600_001),
            ("007s", 7_000),
        ];
        for (text, ms) in ok {
            assert_eq!(
                parse_duration(text),
                Ok(Duration::from_millis(*ms)),
                "{text}"
            );
        }
        let bad: &[(&str, &str)] = &[
            ("", "empty"),
            ("10", "no unit"),
            ("s", "not a duration"),
            ("10 s", "not a duration"),
            ("10sec", "unknown unit \"sec\""),
            ("1.5s", "fraction"),
            ("-1s", "not a duration"),
            ("10S", "unknown unit"),
            ("1m30", "no unit"),
            ("99999999999999999999s", "too large"),
            ("999999999999999d", "too large"),
            ("10s ", "not a duration"),
            ("ten seconds", "not a duration"),
        ];
        for (text, why) in bad {
            let err = parse_duration(text).expect_err(text);
            assert!(err.contains(why), "{text}: {err}");
        }
    }

    #[test]
    fn sizes() {
        let ok: &[(&str, u64)] = &[
            ("0", 0),
            ("1048576", 1 << 20),
            ("256Mi", 256 << 20),
            ("2Gi", 2 << 30),
            ("1Ki", 1024),
            ("1Ti", 1 << 40),
            ("512M", 512_000_000),
            ("1G", 1_000_000_000),
            ("100M", 100_000_000),
            ("5k", 5_000),
            ("5K", 5_000),
            ("1T", 1_000_000_000_000),
        ];
        for (text, bytes) in ok {
            assert_eq!(parse_bytes(text), Ok(*bytes), "{text}");
        }
        let bad: &[(&str, &str)] = &[
            ("", "not a size"),
            ("Mi", "not a size"),
            ("256MB", "unknown unit \"MB\""),
            ("256mi", "unknown unit"),
            ("1.5Gi", "fraction"),
            ("-5", "not a size"),
            (" 5", "not a size"),
            ("5 Mi", "unknown unit"),
            ("99999999999999999999", "too large"),
            ("99999999999Ti", "too large"),
        ];
        for (text, why) in bad {
            let err = parse_bytes(text).expect_err(text);
            assert!(err.contains(why), "{text}: {err}");
        }
    }

    #[test]
    fn cpus() {
        let ok: &[(&str, f64)] = &[
            ("500m", 0.5),
            ("2000m", 2.0),
            ("1m", 0.001),
            ("0.5", 0.5),
            ("2", 2.0),
            ("1.25", 1.25),
        ];
        for (text, cores) in ok {
            assert_eq!(parse_cpu(text), Ok(*cores), "{text}");
        }
        for text in [
            "", "m", "0.5m", "-1", "1e3", "NaN", "inf", ".5", "5.", "1,5", "half", "500 m",
        ] {
            assert!(parse_cpu(text).is_err(), "{text}");
        }
    }

    #[test]
    fn durations_format_round_trip() {
        for text in [
            "0s", "500ms", "10s", "120s", "300s", "1h", "30d", "1500ms", "90s",
        ] {
            let parsed = parse_duration(text).unwrap();
            assert_eq!(format_duration(parsed), text);
        }
    }
}
