//! The request path as routes and backends see it.
//!
//! A route on `/public` must not be dodged by `/public/../admin`, nor by
//! `/%61dmin` for a route on `/admin`: the backend would resolve both to a
//! path no route allowed. So before any route is matched the path is
//! normalised the way RFC 3986 says (section 6.2.2): percent-encoded
//! unreserved characters are decoded, the other percent-encodings get
//! upper-case hex digits, and dot-segments are removed (section 5.2.4).
//! The normalised path is the one the backend receives. This follows
//! Envoy's `normalize_path`.
//!
//! An encoded slash or backslash (`%2F`, `%5C`) is left encoded, because
//! decoding it would change the path's segments; many backends decode it
//! anyway, so a path carrying one is refused unless the site allows it
//! ([`has_encoded_slash`]). `merge_slashes` collapses runs of `/`
//! ([`merge_slashes`]).

use std::borrow::Cow;

/// Why a path cannot be normalised: the request gets 400.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum PathError {
    /// A `%` not followed by two hex digits.
    BadPercentEncoding,
    /// Neither `/...` nor `*`.
    NotAbsolute,
}

impl PathError {
    /// The access log's `decision` and the JSON error.
    #[must_use]
    pub(crate) fn code(self) -> &'static str {
        match self {
            Self::BadPercentEncoding => "bad_path_encoding",
            Self::NotAbsolute => "bad_path",
        }
    }
}

/// The normalised form of an origin-form path (no query). `*` (the
/// target of `OPTIONS *`) is kept as it is.
///
/// # Errors
/// [`PathError`] when the path is not absolute or a `%` is not followed
/// by two hex digits.
pub(crate) fn normalise(path: &str) -> Result<Cow<'_, str>, PathError> {
    if path == "*" {
        return Ok(Cow::Borrowed(path));
    }
    if !path.starts_with('/') {
        return Err(PathError::NotAbsolute);
    }
    let encoded = path.contains('%');
    if !encoded && !has_dot_segment(path) {
        return Ok(Cow::Borrowed(path));
    }
    let decoded = if encoded {
        Cow::Owned(decode_unreserved(path)?)
    } else {
        Cow::Borrowed(path)
    };
    if has_dot_segment(&decoded) {
        Ok(Cow::Owned(remove_dot_segments(&decoded)))
    } else {
        Ok(decoded)
    }
}

/// Whether a normalised path carries an encoded `/` or `\`.
#[must_use]
pub(crate) fn has_encoded_slash(path: &str) -> bool {
    path.contains("%2F") || path.contains("%5C")
}

/// Runs of `/` collapsed into one.
#[must_use]
pub(crate) fn merge_slashes(path: &str) -> Cow<'_, str> {
    if !path.contains("//") {
        return Cow::Borrowed(path);
    }
    let mut out = String::with_capacity(path.len());
    for c in path.chars() {
        if !(c == '/' && out.ends_with('/')) {
            out.push(c);
        }
    }
    Cow::Owned(out)
}

/// Whether `path` has a `.` or `..` segment.
fn has_dot_segment(path: &str) -> bool {
    path.split('/').any(|s| s == "." || s == "..")
}

/// Percent-encoded unreserved characters (RFC 3986 section 2.3) decoded;
/// every other percent-encoding with upper-case hex digits.
fn decode_unreserved(path: &str) -> Result<String, PathError> {
    let bytes = path.as_bytes();
    let mut out = String::with_capacity(path.len());
    let mut i = 0;
    while i < bytes.len() {
        let b = bytes[i];
        if b != b'%' {
            // The rest of a UTF-8 sequence is copied byte for byte below.
            let end = bytes[i..]
                .iter()
                .position(|&c| c == b'%')
                .map_or(bytes.len(), |n| i + n);
            out.push_str(&path[i..end]);
            i = end;
            continue;
        }
        let hex = |c: u8| char::from(c).to_digit(16);
        let (Some(hi), Some(lo)) = (
            bytes.get(i + 1).copied().and_then(hex),
            bytes.get(i + 2).copied().and_then(hex),
        ) else {
            return Err(PathError::BadPercentEncoding);
        };
        #[expect(
            clippy::cast_possible_truncation,
            reason = "two hex digits are at most 255"
        )]
        let c = (hi * 16 + lo) as u8;
        if c.is_ascii_alphanumeric() || matches!(c, b'-' | b'.' | b'_' | b'~') {
            out.push(char::from(c));
        } else {
            const HEX: &[u8; 16] = b"0123456789ABCDEF";
            out.push('%');
            out.push(char::from(HEX[usize::from(c >> 4)]));
            out.push(char::from(HEX[usize::from(c & 0xf)]));
        }
        i += 3;
    }
    Ok(out)
}

/// RFC 3986 section 5.2.4, for an absolute path: `.` segments removed,
/// each `..` removes the segment before it (never above the root). A
/// trailing `.` or `..` leaves a trailing `/`.
fn remove_dot_segments(path: &str) -> String {
    let mut segments: Vec<&str> = Vec::new();
    let mut parts = path[1..].split('/').peekable();
    let mut trailing_slash = false;
    while let Some(seg) = parts.next() {
        let last = parts.peek().is_none();
        match seg {
            "." => trailing_slash = last,
            ".." => {
                segments.pop();
                trailing_slash = last;
            }
            s => {
                segments.push(s);
                trailing_slash = false;
            }
        }
    }
    let mut out = String::with_capacity(path.len());
    for s in &segments {
        out.push('/');
        out.push_str(s);
    }
    if trailing_slash || out.is_empty() {
        out.push('/');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dot_segments_are_removed_as_rfc_3986_says() {
        for (input, want) in [
            ("/", "/"),
            ("/a/b/c", "/a/b/c"),
            ("/public/../admin", "/admin"),
            ("/public/./x", "/public/x"),
            ("/a/b/../../..", "/"),
            ("/../../etc/passwd", "/etc/passwd"),
            ("/a/..", "/"),
            ("/a/.", "/a/"),
            ("/a/b/..", "/a/"),
            ("/a/./b/../c/", "/a/c/"),
            ("/a/.b/..c/...", "/a/.b/..c/..."),
            ("/a//../b", "/a/b"),
            ("*", "*"),
        ] {
            assert_eq!(normalise(input).as_deref(), Ok(want), "{input}");
        }
    }

    #[test]
    fn unreserved_characters_are_decoded_and_other_escapes_kept_upper_case() {
        for (input, want) in [
            ("/%61dmin", "/admin"),
            ("/public/%2e%2e/admin", "/admin"),
            ("/public/%2E./admin", "/admin"),
            ("/a%7eb%2D%5f", "/a~b-_"),
            ("/a%20b", "/a%20b"),
            ("/a%2fb", "/a%2Fb"),
            ("/a%5cb", "/a%5Cb"),
            ("/caf%C3%A9", "/caf%C3%A9"),
            ("/ünï", "/ünï"),
        ] {
            assert_eq!(normalise(input).as_deref(), Ok(want), "{input}");
        }
    }

    #[test]
    fn bad_paths_are_errors() {
        assert_eq!(normalise("/a%"), Err(PathError::BadPercentEncoding));
        assert_eq!(normalise("/a%2"), Err(PathError::BadPercentEncoding));
        assert_eq!(normalise("/a%zz"), Err(PathError::BadPercentEncoding));
        assert_eq!(normalise("a/b"), Err(PathError::NotAbsolute));
        assert_eq!(normalise(""), Err(PathError::NotAbsolute));
    }

    #[test]
    fn paths_without_anything_to_change_are_borrowed() {
        assert!(matches!(normalise("/a/b.c/d"), Ok(Cow::Borrowed(_))));
        assert!(matches!(merge_slashes("/a/b"), Cow::Borrowed(_)));
    }

    #[test]
    fn encoded_slashes_are_found_and_slashes_merged() {
        assert!(has_encoded_slash("/a%2Fb"));
        assert!(has_encoded_slash("/a%5Cb"));
        assert!(!has_encoded_slash("/a/b%20"));
        assert_eq!(merge_slashes("//a///b/"), "/a/b/");
    }

    proptest::proptest! {
        #[test]
        fn normalised_paths_are_fixed_points_without_dot_segments(
            path in "/[a-z./%0-9A-F]{0,40}"
        ) {
            if let Ok(n) = normalise(&path) {
                proptest::prop_assert!(n.starts_with('/'));
                proptest::prop_assert!(!has_dot_segment(&n), "{} -> {}", path, n);
                let again = normalise(&n).map(Cow::into_owned);
                proptest::prop_assert_eq!(again, Ok(n.clone().into_owned()));
            }
        }
    }
}
