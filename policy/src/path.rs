//! Request path normalization, done before any `paths` rule is matched.
//!
//! The steps, in order: drop the query (`?…`) and fragment (`#…`); refuse a
//! path that does not start with `/` (or `\\`); percent-decode the unreserved
//! characters (ALPHA DIGIT `-` `.` `_` `~`) and upper-case the hex digits of
//! the escapes that stay; refuse invalid escapes and escaped `/` or `\`
//! (`%2F`, `%5C`); turn `\` into `/`; merge runs of `/`; resolve `.` and
//! `..` segments (never above the root). A path that is already normal is
//! returned borrowed: nothing is allocated.

use std::borrow::Cow;

/// Why a path cannot be normalized; the request is denied.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PathError {
    NotAbsolute,
    InvalidPercentEncoding,
    EncodedSlash,
}

impl std::fmt::Display for PathError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            PathError::NotAbsolute => "path does not start with `/`",
            PathError::InvalidPercentEncoding => "path has an invalid percent-encoding",
            PathError::EncodedSlash => "path contains an encoded `/` or `\\` (%2F or %5C)",
        })
    }
}

/// Normalizes `path` as described in the module documentation.
pub fn normalize_path(path: &str) -> Result<Cow<'_, str>, PathError> {
    let end = path.find(['?', '#']).unwrap_or(path.len());
    let path = &path[..end];
    if !path.starts_with(['/', '\\']) {
        return Err(PathError::NotAbsolute);
    }
    if is_normal(path) {
        return Ok(Cow::Borrowed(path));
    }
    let decoded = decode(path)?;
    Ok(Cow::Owned(remove_dot_segments(&decoded)))
}

/// Fast check: no escapes, backslashes, empty, `.` or `..` segments.
fn is_normal(path: &str) -> bool {
    let b = path.as_bytes();
    if b.iter().any(|&c| c == b'%' || c == b'\\') {
        return false;
    }
    // Segments after the leading '/'.
    let mut segments = path[1..].split('/').peekable();
    while let Some(seg) = segments.next() {
        let last = segments.peek().is_none();
        if seg == "." || seg == ".." || (seg.is_empty() && !last) {
            return false;
        }
    }
    true
}

fn hex(c: u8) -> Option<u8> {
    match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        b'A'..=b'F' => Some(c - b'A' + 10),
        _ => None,
    }
}

fn decode(path: &str) -> Result<String, PathError> {
    let b = path.as_bytes();
    let mut out = String::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        let c = b[i];
        if c == b'%' {
            let (Some(h), Some(l)) = (
                b.get(i + 1).copied().and_then(hex),
                b.get(i + 2).copied().and_then(hex),
            ) else {
                return Err(PathError::InvalidPercentEncoding);
            };
            let v = h << 4 | l;
            if v == b'/' || v == b'\\' {
                return Err(PathError::EncodedSlash);
            }
            if v.is_ascii_alphanumeric() || matches!(v, b'-' | b'.' | b'_' | b'~') {
                out.push(v as char);
            } else {
                out.push('%');
                out.push(b[i + 1].to_ascii_uppercase() as char);
                out.push(b[i + 2].to_ascii_uppercase() as char);
            }
            i += 3;
        } else {
            // Copy the run up to the next escape as text (keeps UTF-8 intact).
            let next = path[i..].find('%').map_or(b.len(), |n| i + n);
            out.push_str(&path[i..next].replace('\\', "/"));
            i = next;
        }
    }
    Ok(out)
}

fn remove_dot_segments(path: &str) -> String {
    let mut kept: Vec<&str> = Vec::new();
    let mut trailing_slash = false;
    for seg in path[1..].split('/') {
        trailing_slash = true;
        match seg {
            "" | "." => {}
            ".." => {
                kept.pop();
            }
            s => {
                kept.push(s);
                trailing_slash = false;
            }
        }
    }
    let mut out = String::with_capacity(path.len());
    for seg in &kept {
        out.push('/');
        out.push_str(seg);
    }
    if trailing_slash || kept.is_empty() {
        out.push('/');
    }
    out
}

#[cfg(test)]
mod tests;
