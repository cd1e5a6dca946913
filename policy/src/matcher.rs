//! Istio string matching: exact, `prefix*`, `*suffix` and `*` (presence).

use std::fmt;

/// One compiled string pattern. Istio allows a single `*`, at the start or
/// at the end of a value; `*` alone means "present and non-empty".
#[derive(Clone, PartialEq, Eq, Hash)]
pub enum StrMatch {
    Exact(Box<str>),
    Prefix(Box<str>),
    Suffix(Box<str>),
    Presence,
}

/// Why a value is not a valid pattern.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PatternError(pub &'static str);

impl fmt::Display for PatternError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.0)
    }
}

impl StrMatch {
    /// Splits an Istio value into a matcher. A `*` anywhere but the first or
    /// last character, or more than one `*`, is refused: Istio would take
    /// it literally and the value would almost certainly never match.
    pub fn parse(value: &str) -> Result<StrMatch, PatternError> {
        if value.is_empty() {
            return Err(PatternError("value is empty"));
        }
        if value == "*" {
            return Ok(StrMatch::Presence);
        }
        let stars = value.matches('*').count();
        if stars == 0 {
            return Ok(StrMatch::Exact(value.into()));
        }
        if stars > 1 {
            return Err(PatternError(
                "only one `*` is allowed, as the first or last character (exact, `prefix*`, `*suffix` or `*`)",
            ));
        }
        if let Some(prefix) = value.strip_suffix('*') {
            Ok(StrMatch::Prefix(prefix.into()))
        } else if let Some(suffix) = value.strip_prefix('*') {
            Ok(StrMatch::Suffix(suffix.into()))
        } else {
            Err(PatternError(
                "`*` is only allowed as the first or last character (exact, `prefix*`, `*suffix` or `*`)",
            ))
        }
    }

    /// The literal part (empty for presence).
    pub fn literal(&self) -> &str {
        match self {
            StrMatch::Exact(s) | StrMatch::Prefix(s) | StrMatch::Suffix(s) => s,
            StrMatch::Presence => "",
        }
    }

    pub fn is_exact(&self) -> bool {
        matches!(self, StrMatch::Exact(_))
    }

    /// Case-sensitive match.
    #[inline]
    pub fn matches(&self, value: &str) -> bool {
        match self {
            StrMatch::Exact(s) => value == &**s,
            StrMatch::Prefix(p) => value.starts_with(&**p),
            StrMatch::Suffix(p) => value.ends_with(&**p),
            StrMatch::Presence => !value.is_empty(),
        }
    }

    /// ASCII case-insensitive match (hosts); no allocation.
    #[inline]
    pub fn matches_ignore_case(&self, value: &str) -> bool {
        let v = value.as_bytes();
        match self {
            StrMatch::Exact(s) => v.eq_ignore_ascii_case(s.as_bytes()),
            StrMatch::Prefix(p) => {
                v.len() >= p.len() && v[..p.len()].eq_ignore_ascii_case(p.as_bytes())
            }
            StrMatch::Suffix(p) => {
                v.len() >= p.len() && v[v.len() - p.len()..].eq_ignore_ascii_case(p.as_bytes())
            }
            StrMatch::Presence => !v.is_empty(),
        }
    }

    /// True when every value `other` matches is matched by `self` too
    /// (a conservative check, used by lint for shadowed rules).
    pub fn covers(&self, other: &StrMatch) -> bool {
        match (self, other) {
            (StrMatch::Presence, _) => true,
            (a, b) if a == b => true,
            (StrMatch::Prefix(p), StrMatch::Exact(s) | StrMatch::Prefix(s)) => s.starts_with(&**p),
            (StrMatch::Suffix(p), StrMatch::Exact(s) | StrMatch::Suffix(s)) => s.ends_with(&**p),
            _ => false,
        }
    }
}

impl fmt::Display for StrMatch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            StrMatch::Exact(s) => f.write_str(s),
            StrMatch::Prefix(s) => write!(f, "{s}*"),
            StrMatch::Suffix(s) => write!(f, "*{s}"),
            StrMatch::Presence => f.write_str("*"),
        }
    }
}

impl fmt::Debug for StrMatch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}", self.to_string())
    }
}

#[cfg(test)]
mod tests;
