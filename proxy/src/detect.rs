//! Protocol detection from a connection's first bytes, without consuming
//! them (TCP `peek`), or from bytes already read (after TLS termination).

use std::time::Duration;

use tokio::net::TcpStream;

/// HTTP/2 connection preface (RFC 9113 §3.4).
pub const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
/// Longest prefix any classification needs.
pub const MAX_DETECT_BYTES: usize = H2_PREFACE.len();

const HTTP1_METHODS: &[&[u8]] = &[
    b"GET ",
    b"POST ",
    b"PUT ",
    b"DELETE ",
    b"HEAD ",
    b"OPTIONS ",
    b"PATCH ",
    b"CONNECT ",
    b"TRACE ",
];

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Protocol {
    Tls,
    Http1,
    Http2,
    Opaque,
}

/// Classifies `prefix`; `None` means more bytes are needed to decide.
pub fn classify(prefix: &[u8]) -> Option<Protocol> {
    if prefix.is_empty() {
        return None;
    }
    // A TLS handshake record: content type 22, protocol major version 3.
    if prefix[0] == 0x16 {
        return match prefix.get(1) {
            None => None,
            Some(0x03) => Some(Protocol::Tls),
            Some(_) => Some(Protocol::Opaque),
        };
    }
    if let Some(p) = match_prefix(prefix, H2_PREFACE) {
        return p.then_some(Protocol::Http2);
    }
    let mut undecided = false;
    for method in HTTP1_METHODS {
        match match_prefix(prefix, method) {
            Some(true) => return Some(Protocol::Http1),
            Some(false) => undecided = true,
            None => {}
        }
    }
    if undecided {
        None
    } else {
        Some(Protocol::Opaque)
    }
}

/// `Some(true)`: `prefix` starts with `pattern`; `Some(false)`: `prefix` is a
/// strict prefix of `pattern` (undecided); `None`: they differ.
fn match_prefix(prefix: &[u8], pattern: &[u8]) -> Option<bool> {
    let n = prefix.len().min(pattern.len());
    if prefix[..n] != pattern[..n] {
        return None;
    }
    Some(n == pattern.len())
}

/// What a peek at a new connection found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Peeked {
    Protocol(Protocol),
    /// The client sent nothing in time (a server-speaks-first protocol, or an idle client).
    Silent,
    /// The client closed before sending enough to decide.
    Closed,
}

/// Peeks at the first bytes of `tcp` until they classify or `timeout` passes.
pub async fn peek(tcp: &TcpStream, timeout: Duration) -> std::io::Result<Peeked> {
    let deadline = tokio::time::Instant::now() + timeout;
    let mut buf = [0u8; MAX_DETECT_BYTES];
    let mut last_len = 0;
    loop {
        let n = match tokio::time::timeout_at(deadline, tcp.peek(&mut buf)).await {
            Ok(result) => result?,
            Err(_) => return Ok(decide_on_timeout(&buf[..last_len])),
        };
        if n == 0 {
            return Ok(Peeked::Closed);
        }
        if let Some(p) = classify(&buf[..n]) {
            return Ok(Peeked::Protocol(p));
        }
        if n == buf.len() {
            return Ok(Peeked::Protocol(Protocol::Opaque));
        }
        // Partial data stays readable, so peek would return at once: wait a
        // little for the rest instead of spinning.
        last_len = n;
        if tokio::time::timeout_at(deadline, tokio::time::sleep(Duration::from_millis(2)))
            .await
            .is_err()
        {
            return Ok(decide_on_timeout(&buf[..n]));
        }
    }
}

fn decide_on_timeout(seen: &[u8]) -> Peeked {
    if seen.is_empty() {
        Peeked::Silent
    } else {
        Peeked::Protocol(Protocol::Opaque)
    }
}

#[cfg(test)]
mod tests;
