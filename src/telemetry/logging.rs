//! Structured logs through `tracing`: human-readable on a terminal, one JSON
//! object per line otherwise (journald, log shippers). Fields such as
//! `event_id` are separate keys so logs can be searched by them. Secrets and
//! request bodies are never logged.

use std::io::IsTerminal;

use tracing_subscriber::EnvFilter;

/// Installs the global subscriber. `RUST_LOG` filters (default `info`).
/// Returns an error only if a subscriber was already installed.
pub fn init() -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt().with_env_filter(filter);
    if std::io::stdout().is_terminal() {
        builder.compact().try_init()
    } else {
        builder
            .json()
            .flatten_event(true)
            .with_current_span(false)
            .with_span_list(false)
            .try_init()
    }
}
