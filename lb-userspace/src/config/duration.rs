//! Durations as `lb.toml` writes them: `"500ms"`, `"2s"`, `"10m"`, `"1h"`.

use std::time::Duration;

use serde::Serializer;

use super::schema::MAX_DURATION;

/// Parses a duration written as a whole number and a unit: `ms`, `s`, `m` or
/// `h` (e.g. `"500ms"`, `"2s"`, `"10m"`, `"1h"`), at most [`MAX_DURATION`].
///
/// # Errors
///
/// A message naming the text and the accepted form, or the longest
/// duration when the text is longer.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    read_duration(text).map_err(|e| e.message(text))
}

/// Why [`read_duration`] refused a text.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum DurationError {
    /// Not a whole number and a unit.
    Syntax,
    /// Well formed, but longer than [`MAX_DURATION`] (or than `u64` holds).
    TooLong,
}

impl DurationError {
    pub(super) fn message(self, text: &str) -> String {
        match self {
            Self::Syntax => format!(
                "invalid duration {text:?}: expected a whole number followed by ms, s, m or h, \
                 like \"500ms\", \"2s\", \"10m\" or \"1h\""
            ),
            Self::TooLong => format!(
                "duration {text:?} is too long: at most {} (365 days)",
                format_duration(MAX_DURATION)
            ),
        }
    }
}

pub(super) fn read_duration(text: &str) -> Result<Duration, DurationError> {
    let s = text.trim();
    let digits = s.bytes().take_while(u8::is_ascii_digit).count();
    let (number, unit) = s.split_at(digits);
    if number.is_empty() || !matches!(unit, "ms" | "s" | "m" | "h") {
        return Err(DurationError::Syntax);
    }
    // Only digits: the one way to fail is a number beyond u64.
    let n: u64 = number.parse().map_err(|_| DurationError::TooLong)?;
    let d = match unit {
        "ms" => Some(Duration::from_millis(n)),
        "s" => Some(Duration::from_secs(n)),
        "m" => n.checked_mul(60).map(Duration::from_secs),
        _ => n.checked_mul(3600).map(Duration::from_secs),
    };
    d.filter(|d| *d <= MAX_DURATION)
        .ok_or(DurationError::TooLong)
}

/// Writes a duration the way [`parse_duration`] reads it, in the largest
/// unit that represents it exactly.
#[must_use]
pub fn format_duration(d: Duration) -> String {
    let ms = d.as_millis();
    if ms == 0 || !ms.is_multiple_of(1000) {
        return format!("{ms}ms");
    }
    let s = d.as_secs();
    if s.is_multiple_of(3600) {
        format!("{}h", s / 3600)
    } else if s.is_multiple_of(60) {
        format!("{}m", s / 60)
    } else {
        format!("{s}s")
    }
}

pub(super) fn serialize_duration<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&format_duration(*d))
}
