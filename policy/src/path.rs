//! Request path normalization: the one implementation the inbound sidecar
//! (what it forwards), the policy engine (what `paths` rules match) and
//! `ward authz check` share.
//!
//! [`normalize`] makes a path as Istio's `meshConfig.pathNormalization`
//! does. Every mode (`base`, the default, as Istio's `BASE`):
//! percent-decode the unreserved characters (ALPHA DIGIT `-` `.` `_` `~`)
//! and upper-case the hex of the escapes that stay; turn `\` into `/`;
//! remove `.` and `..` segments (RFC 3986 §5.2.4, never above the root).
//! `%2F` and `%5C` stay escaped. `merge-slashes` also merges runs of `/`;
//! `decode-and-merge-slashes` first decodes `%2F` and `%5C` to `/`, then
//! merges.
//!
//! Refused: a path not starting with `/`, an invalid escape, an escaped NUL
//! (`%00`, as Istio refuses it), and a dot segment with parameters (`..;x`,
//! `.;`): servers disagree on those (Tomcat and Spring read `..;` as
//! `..`), so no single path can be both authorized and forwarded.
//!
//! [`policy_view`] is what a policy matches: the path (query and fragment
//! dropped) normalized with `merge-slashes`, an escaped `/` or `\` refused.
//! Merging in the policy's view whatever the forwarding mode keeps a `DENY`
//! on `/admin` in force for `//admin` (CVE-2021-31920) even where the
//! application is sent the path with its slashes unmerged.

use std::borrow::Cow;

use http::uri::PathAndQuery;

/// How far paths are normalized (the proxy's `--path-normalization`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[cfg_attr(feature = "clap", derive(clap::ValueEnum))]
pub enum PathNormalization {
    /// RFC 3986 normalization, `\` to `/` (Istio's `BASE`).
    #[default]
    Base,
    /// `base`, then runs of `/` merged (Istio's `MERGE_SLASHES`).
    MergeSlashes,
    /// `%2F` and `%5C` decoded to `/`, then `merge-slashes`
    /// (Istio's `DECODE_AND_MERGE_SLASHES`).
    DecodeAndMergeSlashes,
}

/// Why a request path is refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum PathError {
    #[error("the path does not start with `/`")]
    NotAbsolute,
    #[error("the path has an invalid percent-encoding")]
    InvalidPercentEncoding,
    #[error("the path has an escaped NUL (%00)")]
    EncodedNul,
    #[error("the path has a dot segment with parameters (`..;`)")]
    DotSegmentWithParameters,
    #[error("the path contains an encoded `/` or `\\` (%2F or %5C)")]
    EncodedSlash,
}

/// `path` (no query) normalized by `mode`; borrowed when already normal,
/// so the common case allocates nothing.
pub fn normalize(path: &str, mode: PathNormalization) -> Result<Cow<'_, str>, PathError> {
    if !path.starts_with(['/', '\\']) {
        return Err(PathError::NotAbsolute);
    }
    if is_normal(path, mode) {
        return Ok(Cow::Borrowed(path));
    }
    let decoded = decode(path, mode)?;
    let normal = remove_dot_segments(&decoded, mode)?;
    if normal == path {
        Ok(Cow::Borrowed(path))
    } else {
        Ok(Cow::Owned(normal))
    }
}

/// The request target's path normalized, its query unchanged; `None` when
/// nothing changed (the common case costs no new `PathAndQuery`).
pub fn normalize_target(
    target: &PathAndQuery,
    mode: PathNormalization,
) -> Result<Option<PathAndQuery>, PathError> {
    match normalize(target.path(), mode)? {
        Cow::Borrowed(_) => Ok(None),
        Cow::Owned(mut path) => {
            if let Some(query) = target.query() {
                path.push('?');
                path.push_str(query);
            }
            // Only characters that were valid in the target, or `/`.
            PathAndQuery::try_from(path)
                .map(Some)
                .map_err(|_| PathError::InvalidPercentEncoding)
        }
    }
}

/// The path a policy's `paths` match (see the module comment). A path the
/// inbound has already normalized comes back borrowed unless it has runs
/// of `/` (the `base` mode keeps them).
pub fn policy_view(path: &str) -> Result<Cow<'_, str>, PathError> {
    let end = path.find(['?', '#']).unwrap_or(path.len());
    let path = &path[..end];
    if has_escaped_slash(path) {
        return Err(PathError::EncodedSlash);
    }
    normalize(path, PathNormalization::MergeSlashes)
}

fn has_escaped_slash(path: &str) -> bool {
    path.as_bytes()
        .windows(3)
        .any(|w| w[0] == b'%' && matches!(&w[1..], [b'2', b'f' | b'F'] | [b'5', b'c' | b'C']))
}

/// Fast check for the common case: no escape, no `\\`, no segment that
/// starts with a dot, and (when merging) no empty segment.
fn is_normal(path: &str, mode: PathNormalization) -> bool {
    !path.contains(['%', '\\'])
        && !path.contains("/.")
        && (mode == PathNormalization::Base || !path.contains("//"))
}

fn hex(c: u8) -> Option<u8> {
    (c as char).to_digit(16).map(|d| d as u8)
}

fn unreserved(c: u8) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, b'-' | b'.' | b'_' | b'~')
}

/// Percent-decoding and `\` → `/`, built byte by byte for the escapes and
/// run by run for the text between them (which keeps UTF-8 intact).
fn decode(path: &str, mode: PathNormalization) -> Result<Cow<'_, str>, PathError> {
    let b = path.as_bytes();
    if !b.iter().any(|&c| c == b'%' || c == b'\\') {
        return Ok(Cow::Borrowed(path));
    }
    let mut out = String::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'%' => {
                let (Some(h), Some(l)) = (
                    b.get(i + 1).copied().and_then(hex),
                    b.get(i + 2).copied().and_then(hex),
                ) else {
                    return Err(PathError::InvalidPercentEncoding);
                };
                let v = (h << 4) | l;
                let slash = v == b'/' || v == b'\\';
                if v == 0 {
                    return Err(PathError::EncodedNul);
                } else if unreserved(v) {
                    out.push(v as char);
                } else if slash && mode == PathNormalization::DecodeAndMergeSlashes {
                    out.push('/');
                } else {
                    out.push('%');
                    out.push(b[i + 1].to_ascii_uppercase() as char);
                    out.push(b[i + 2].to_ascii_uppercase() as char);
                }
                i += 3;
            }
            b'\\' => {
                out.push('/');
                i += 1;
            }
            _ => {
                let next = path[i..].find(['%', '\\']).map_or(b.len(), |n| i + n);
                out.push_str(&path[i..next]);
                i = next;
            }
        }
    }
    Ok(Cow::Owned(out))
}

/// A dot segment, also with parameters (`..;x`); the latter is an error.
fn dot_segment(seg: &str) -> Result<Option<bool>, PathError> {
    let (name, params) = match seg.split_once(';') {
        Some((name, _)) => (name, true),
        None => (seg, false),
    };
    let dots = match name {
        "." => Some(false),
        ".." => Some(true),
        _ => None,
    };
    if dots.is_some() && params {
        return Err(PathError::DotSegmentWithParameters);
    }
    Ok(dots)
}

fn remove_dot_segments(path: &str, mode: PathNormalization) -> Result<String, PathError> {
    let merge = mode != PathNormalization::Base;
    let segments: Vec<&str> = path[1..].split('/').collect();
    let last = segments.len() - 1;
    let mut kept: Vec<&str> = Vec::with_capacity(segments.len());
    let mut trailing_slash = false;
    for (i, seg) in segments.into_iter().enumerate() {
        match dot_segment(seg)? {
            Some(parent) => {
                if parent {
                    kept.pop();
                }
                trailing_slash = true;
            }
            None if seg.is_empty() && merge => trailing_slash |= i == last,
            None => {
                kept.push(seg);
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
    Ok(out)
}

#[cfg(test)]
mod mode_tests;
#[cfg(test)]
mod tests;
