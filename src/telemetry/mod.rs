//! Logs and metrics: how dropshipd tells operators what it is doing.

mod json_line;
pub mod logging;
pub mod metrics;

pub use self::metrics::Metrics;
