//! Structured logs through `tracing`: human-readable on a terminal, one JSON
//! object per line otherwise (journald, log shippers). Fields such as
//! `event_id` are separate keys so logs can be searched by them. Secrets and
//! request bodies are never logged. A daemon's every line names its instance
//! (SPEC §13), so the logs of several instances can be read together.
//!
//! Lines are written by a thread of their own: the thread that logs only
//! formats its line and hands it over. The writer gathers what arrived while
//! it wrote and sends it to stdout in one `write`, so at a sale's rate a
//! request does not pay a system call (and a journald or pipe reader's
//! wake-up) for its log line, and a reader that stops reading for a while
//! (a busy journald) stalls no request. Nothing is dropped: a logger waits
//! only when [`LINES_IN_FLIGHT`] lines are waiting.

use std::io::{BufWriter, IsTerminal};

use tracing::{Event, Subscriber};
use tracing_subscriber::fmt::format::Writer;
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields};
use tracing_subscriber::registry::LookupSpan;
use tracing_subscriber::EnvFilter;

use super::json_line::JsonLine;

/// Lines the writer thread may hold before a logger waits for it.
const LINES_IN_FLIGHT: usize = 64 * 1024;

/// Keeps the writer thread running; dropping it writes out every line logged
/// before. Hold it until the process is about to exit.
#[must_use = "dropping the guard stops the log writer"]
pub struct LogGuard {
    _writer: tracing_appender::non_blocking::WorkerGuard,
}

/// Installs the global subscriber. `RUST_LOG` filters (default `info`).
/// Returns an error only if a subscriber was already installed.
pub fn init() -> Result<LogGuard, Box<dyn std::error::Error + Send + Sync>> {
    init_for(None)
}

/// As [`init`], with `instance_id` on every line.
pub fn init_for(
    instance_id: Option<&str>,
) -> Result<LogGuard, Box<dyn std::error::Error + Send + Sync>> {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let terminal = std::io::stdout().is_terminal();
    let (writer, guard) = tracing_appender::non_blocking::NonBlockingBuilder::default()
        .lossy(false)
        .buffered_lines_limit(LINES_IN_FLIGHT)
        .thread_name("log-writer")
        .finish(BufWriter::new(std::io::stdout()));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(writer);
    let installed = if terminal {
        builder
            .event_format(Prefixed {
                inner: tracing_subscriber::fmt::format().compact(),
                instance: instance_id.map(str::to_owned),
            })
            .try_init()
    } else {
        builder.event_format(JsonLine::new(instance_id)).try_init()
    };
    installed.map(|()| LogGuard { _writer: guard })
}

/// The terminal's format with the instance as a prefix of each line.
struct Prefixed<F> {
    inner: F,
    instance: Option<String>,
}

impl<S, N, F> FormatEvent<S, N> for Prefixed<F>
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
    F: FormatEvent<S, N>,
{
    fn format_event(
        &self,
        ctx: &FmtContext<'_, S, N>,
        mut writer: Writer<'_>,
        event: &Event<'_>,
    ) -> std::fmt::Result {
        if let Some(instance) = &self.instance {
            write!(writer, "[{instance}] ")?;
        }
        self.inner.format_event(ctx, writer, event)
    }
}
