//! Process logs (tracing), on standard error through a non-blocking writer.

use tracing_appender::non_blocking::{NonBlockingBuilder, WorkerGuard};
use tracing_subscriber::EnvFilter;

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

/// Installs the global subscriber. `level` is an EnvFilter directive
/// (`info`, `edgeplane=debug,hyper=warn`). Keep the guard alive: dropping it
/// flushes and stops the writer thread.
pub fn init(level: &str, format: LogFormat) -> Result<WorkerGuard, String> {
    let filter = EnvFilter::try_new(level).map_err(|e| format!("invalid log level {level:?}: {e}"))?;
    // The default queue (128k lines) is allocated and touched up front: 4 MB
    // of RSS for nothing on a small edge box. Log lines beyond this queue
    // are dropped rather than blocking a worker.
    let (writer, guard) = NonBlockingBuilder::default().buffered_lines_limit(4096).finish(std::io::stderr());
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(writer);
    let result = match format {
        LogFormat::Text => builder.try_init(),
        LogFormat::Json => builder.json().flatten_event(true).try_init(),
    };
    result.map_err(|e| e.to_string())?;
    Ok(guard)
}
