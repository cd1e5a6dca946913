//! Istio path templates (`paths`/`notPaths` with `{*}` or `{**}`, Istio
//! 1.22+): validated with the rules of Istio's `CheckValidPathTemplate`
//! (pkg/config/security/security.go) and of the Envoy URI template Istio
//! turns them into (`{*}` → `*`, `{**}` → `**`), and matched as that
//! template matches (Envoy's uri_template_internal.cc):
//!
//! - `{*}` is one whole segment of one or more RFC 3986 `pchar`s
//!   (`a-z A-Z 0-9 - . _ ~ % ! $ & ' ( ) + , ; : @ =`), never a `/`;
//! - `{**}` is zero or more of those characters or `/`, so it spans any
//!   number of segments; it must be the last operator (literal segments may
//!   follow it);
//! - every other segment is a literal of those characters (no `*`, `{`,
//!   `}`), compared exactly;
//! - the template starts with `/` and has no empty segment (`//`); a
//!   trailing `/` is literal.
//!
//! Templates match the same normalized path as the other `paths` values
//! (see [`crate::path::policy_view`]).

use std::fmt;

/// `{*}`: one path segment.
pub const MATCH_ONE: &str = "{*}";
/// `{**}`: any number of path segments.
pub const MATCH_ANY: &str = "{**}";

/// True when `path` uses a template operator (Istio's
/// `ContainsPathTemplate`).
pub fn is_template(path: &str) -> bool {
    path.contains(MATCH_ONE) || path.contains(MATCH_ANY)
}

/// A character a literal segment may hold and `{*}` matches: RFC 3986
/// `pchar` without `*` (Envoy's `kLiteral`, Istio's `validLiteral`).
#[inline]
fn is_pchar(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"-._~%!$&'()+,;:@=".contains(&b)
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
enum Piece {
    /// Literal text, `/` separators included.
    Literal(Box<str>),
    /// `{*}`.
    Segment,
}

/// A compiled path template.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct PathTemplate {
    written: Box<str>,
    /// Everything before `{**}` (the whole template when there is none).
    head: Vec<Piece>,
    /// With `{**}`: the literal text after it (`""` when it ends the
    /// template).
    tail: Option<Box<str>>,
}

impl PathTemplate {
    /// Parses and validates a template (a path for which [`is_template`]
    /// holds). The error says which rule is broken.
    pub fn parse(path: &str) -> Result<PathTemplate, String> {
        let Some(rest) = path.strip_prefix('/') else {
            return Err("a path template must start with `/`".into());
        };
        let segments: Vec<&str> = rest.split('/').collect();
        let last = segments.len() - 1;
        let mut head = Vec::new();
        let mut tail: Option<String> = None;
        let mut literal = String::new();
        for (i, segment) in segments.iter().enumerate() {
            literal.push('/');
            match *segment {
                MATCH_ONE | MATCH_ANY if tail.is_some() => {
                    return Err(
                        "`{**}` must be the last operator of a path template: no `{*}` or `{**}` may follow it"
                            .into(),
                    );
                }
                MATCH_ONE => {
                    head.push(Piece::Literal(std::mem::take(&mut literal).into()));
                    head.push(Piece::Segment);
                }
                MATCH_ANY => {
                    head.push(Piece::Literal(std::mem::take(&mut literal).into()));
                    tail = Some(String::new());
                }
                // A trailing `/`: literal.
                "" if i == last => {}
                "" => {
                    return Err("a path template must not have an empty segment (`//`)".into());
                }
                s if s.contains(['{', '}']) => {
                    return Err(format!(
                        "segment `{s}`: `{{` and `}}` are only allowed as a whole `{{*}}` or `{{**}}` segment (no other characters in the segment of an operator)"
                    ));
                }
                s if s.contains('*') => {
                    return Err(format!(
                        "segment `{s}`: `*` is not allowed in a path template outside `{{*}}` and `{{**}}` (no `prefix*`/`*suffix` mixing)"
                    ));
                }
                s => {
                    if let Some(c) = s.bytes().find(|b| !is_pchar(*b)) {
                        return Err(format!(
                            "segment `{s}` has {}, which is not allowed in a path template (RFC 3986 path characters only)",
                            describe(c)
                        ));
                    }
                    literal.push_str(s);
                }
            }
            if let Some(t) = tail.as_mut()
                && *segment != MATCH_ANY
            {
                // After `{**}` everything is one literal suffix.
                t.push_str(&literal);
                literal.clear();
            }
        }
        match tail.as_mut() {
            Some(t) => t.push_str(&literal),
            None if !literal.is_empty() => head.push(Piece::Literal(literal.into())),
            None => {}
        }
        head.retain(|p| !matches!(p, Piece::Literal(l) if l.is_empty()));
        Ok(PathTemplate {
            written: path.into(),
            head,
            tail: tail.map(Into::into),
        })
    }

    /// The template as written.
    pub fn as_str(&self) -> &str {
        &self.written
    }

    /// The literal text every matching path starts with (at least `/`).
    pub fn literal_prefix(&self) -> &str {
        match self.head.first() {
            Some(Piece::Literal(l)) => l,
            _ => "",
        }
    }

    /// Does the (normalized) request path match?
    #[inline]
    pub fn matches(&self, path: &str) -> bool {
        let b = path.as_bytes();
        let mut pos = 0;
        for piece in &self.head {
            match piece {
                Piece::Literal(l) => {
                    if !b[pos..].starts_with(l.as_bytes()) {
                        return false;
                    }
                    pos += l.len();
                }
                Piece::Segment => {
                    // `[pchar]+`: it stops at the next `/` (which the next
                    // literal starts with) or at the end.
                    let n = b[pos..].iter().take_while(|c| is_pchar(**c)).count();
                    if n == 0 {
                        return false;
                    }
                    pos += n;
                }
            }
        }
        let rest = &b[pos..];
        match &self.tail {
            None => rest.is_empty(),
            Some(suffix) => {
                rest.len() >= suffix.len()
                    && rest.ends_with(suffix.as_bytes())
                    && rest[..rest.len() - suffix.len()]
                        .iter()
                        .all(|c| *c == b'/' || is_pchar(*c))
            }
        }
    }

    /// The template with every operator replaced by one plain segment: a
    /// path it matches, used by lint to check that its literal parts
    /// survive normalization.
    pub fn sample(&self) -> String {
        self.written.replace(MATCH_ANY, "x").replace(MATCH_ONE, "x")
    }
}

fn describe(c: u8) -> String {
    if c.is_ascii_graphic() {
        format!("`{}`", c as char)
    } else {
        format!("byte 0x{c:02x}")
    }
}

impl fmt::Display for PathTemplate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.written)
    }
}

impl fmt::Debug for PathTemplate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}", &*self.written)
    }
}

#[cfg(test)]
mod tests;
