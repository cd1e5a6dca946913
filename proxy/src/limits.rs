//! Bounds on the request path, shared by both directions: the configured
//! timeouts and sizes (`--detect-timeout` and friends, see `config.rs`) and
//! the fixed HTTP/2 settings every Ward listener and pooled connection uses.

use std::time::Duration;

/// The configured bounds of one listener's connections.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub detect_timeout: Duration,
    pub header_timeout: Duration,
    pub connect_timeout: Duration,
    pub max_header_bytes: usize,
    /// Connections with no byte either way for this long are closed.
    pub idle_timeout: Duration,
}

/// Concurrent streams per HTTP/2 connection: what Ward's HTTP/2 servers
/// advertise (`SETTINGS_MAX_CONCURRENT_STREAMS`) and what the upstream pool
/// puts on one connection before it opens another.
pub const H2_MAX_STREAMS: u32 = 100;

/// HTTP/2 flow-control windows: large enough to stream at loopback speed,
/// small enough to bound memory per connection.
pub const H2_STREAM_WINDOW: u32 = 1024 * 1024;
pub const H2_CONNECTION_WINDOW: u32 = 4 * 1024 * 1024;
