//! Log setup shared by Ward's binaries: `tracing`, human-readable by default,
//! one JSON object per line with `--log-format json`. The level filter can
//! be changed while running (the proxy's localhost admin endpoint uses it).
//! The sidecar writes through [`buffered`], off its request path.

pub mod buffered;

use std::io::IsTerminal;
use std::sync::OnceLock;

use clap::ValueEnum;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Registry, fmt, reload};

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    #[default]
    Text,
    Json,
}

static FILTER: OnceLock<reload::Handle<EnvFilter, Registry>> = OnceLock::new();

/// Installs the global subscriber, writing to stderr as each line is
/// logged. `level` is an `EnvFilter` directive (`info`,
/// `ward_proxy=debug,info`, `warn,ward::access=off`, …).
pub fn init(format: LogFormat, level: &str) -> anyhow::Result<()> {
    install(format, level, std::io::stderr)
}

/// As [`init`], but lines reach stderr through [`buffered`]: a writer
/// thread writes them in batches (within 10 ms), so logging costs no
/// system call on the thread that logs. Keep the returned guard until the
/// process ends: dropping it writes what is left.
pub fn init_buffered(format: LogFormat, level: &str) -> anyhow::Result<buffered::Flusher> {
    let (writer, flusher) = buffered::buffered(std::io::stderr())?;
    install(format, level, writer)?;
    Ok(flusher)
}

fn install<W>(format: LogFormat, level: &str, writer: W) -> anyhow::Result<()>
where
    W: for<'w> fmt::MakeWriter<'w> + Send + Sync + 'static,
{
    let filter = EnvFilter::try_new(level)?;
    let (filter, handle) = reload::Layer::new(filter);
    let registry = tracing_subscriber::registry().with(filter);
    let result = match format {
        // Colours only for a terminal: escape codes in a log file cost time
        // per line and get in the way of whoever reads it.
        LogFormat::Text => registry
            .with(
                fmt::layer()
                    .with_ansi(std::io::stderr().is_terminal())
                    .with_writer(writer),
            )
            .try_init(),
        LogFormat::Json => registry
            .with(fmt::layer().json().flatten_event(true).with_writer(writer))
            .try_init(),
    };
    result.map_err(|e| anyhow::anyhow!("installing the log subscriber: {e}"))?;
    let _ = FILTER.set(handle);
    Ok(())
}

/// Replaces the level filter of the running process.
pub fn set_level(level: &str) -> anyhow::Result<()> {
    let filter = EnvFilter::try_new(level)?;
    let handle = FILTER
        .get()
        .ok_or_else(|| anyhow::anyhow!("logging was not initialised by ward"))?;
    handle.reload(filter)?;
    Ok(())
}

/// The filter in force, as a directive string.
pub fn current_level() -> Option<String> {
    FILTER.get()?.with_current(|f| f.to_string()).ok()
}
