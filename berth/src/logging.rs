//! Logging to stderr through tracing: `serve` as its `[log]` section says, the offline
//! checkers quietly (warnings only), `RUST_LOG` overriding both.

use tracing_subscriber::EnvFilter;

use crate::config::{Config, LogFormat};

/// `serve`'s logging: `[log] level` and `format`.
pub fn init(config: &Config) {
    let filter =
        EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(&config.log.level));
    // Colour only for a person at a terminal: in a pod's log or a file the escape codes
    // are noise. NO_COLOR (no-color.org) turns it off even then.
    let colour = std::io::IsTerminal::is_terminal(&std::io::stderr())
        && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty());
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(colour)
        .with_writer(std::io::stderr);
    match config.log.format {
        LogFormat::Json => builder.json().init(),
        LogFormat::Text => builder.init(),
    }
}

/// Warnings only, as text: for the commands whose output is their report.
pub fn init_quiet() {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("warn"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();
}
