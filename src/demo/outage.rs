//! The Shiprocket outage: for [`OUTAGE`], starting when a share of the orders
//! has been sent, the sandbox answers every call with HTTP 500; then it is
//! healthy again. Meanwhile a watcher reads the gateway's circuit and the
//! shipping queue from `GET /admin/status`, as an operator's dashboard would,
//! so the summary can say what the breaker and the queue did rather than what
//! they should have done.

use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::oneshot;

use super::api::DaemonApi;
use super::load::Progress;
use crate::sandbox::{Faults, Sandbox};

/// How long Shiprocket is down.
pub const OUTAGE: Duration = Duration::from_secs(2);

/// How often the watcher reads the circuit. Well under the breaker's open
/// time (1 s in the demo), so no open spell goes unseen.
const WATCH_EVERY: Duration = Duration::from_millis(50);

/// When the outage happened, measured from the start of the traffic.
#[derive(Debug, Clone, Copy, Default)]
pub struct OutageWindow {
    pub began_after: Duration,
    pub lasted: Duration,
}

/// Waits for the moment, breaks the sandbox for [`OUTAGE`], then mends it.
pub async fn break_shiprocket(
    sandbox: Arc<Sandbox>,
    progress: Arc<Progress>,
    traffic_started: Instant,
) -> OutageWindow {
    progress.outage.notified().await;
    let healthy = sandbox.faults();
    sandbox.set_faults(Faults {
        error_rate: 1.0,
        ..healthy.clone()
    });
    let began = Instant::now();
    progress.bar.set_message("Shiprocket is down (HTTP 500)");
    tokio::time::sleep(OUTAGE).await;
    sandbox.set_faults(healthy);
    progress.bar.set_message("");
    OutageWindow {
        began_after: began.duration_since(traffic_started),
        lasted: began.elapsed(),
    }
}

/// One reading of the gateway's circuit and the shipping queue.
#[derive(Debug, Clone, PartialEq)]
pub struct CircuitSample {
    pub at: Duration,
    /// `closed`, `half_open` or `open`, as `/admin/status` reports it.
    pub circuit: String,
    /// Orders in the shipping queue.
    pub queued: u64,
}

/// Reads the first gateway's circuit every [`WATCH_EVERY`] until `stop` fires.
pub async fn watch_circuit(
    api: DaemonApi,
    started: Instant,
    mut stop: oneshot::Receiver<()>,
) -> Vec<CircuitSample> {
    let mut samples = Vec::new();
    let mut tick = tokio::time::interval(WATCH_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = &mut stop => return samples,
            _ = tick.tick() => {}
        }
        // A missed reading is a gap in the picture, not a failure of the demo.
        if let Ok(status) = api.status().await {
            if let Some(circuit) = status["actors"]["gateways"][0]["circuit"].as_str() {
                samples.push(CircuitSample {
                    at: started.elapsed(),
                    circuit: circuit.to_owned(),
                    queued: status["shipping_queue"]["orders"].as_u64().unwrap_or(0),
                });
            }
        }
    }
}

/// What the readings show: how often the circuit went (back) to open, for
/// how long it was not closed, and how the shipping queue filled and drained.
#[derive(Debug, Clone, Copy, PartialEq, Default, serde::Serialize)]
pub struct CircuitSeen {
    pub openings: usize,
    pub not_closed_secs: f64,
    /// The most orders seen queued at once, and when (from the traffic's start).
    pub queue_peak: u64,
    pub queue_peak_at_secs: f64,
    /// The first reading after the peak that found the queue empty.
    pub queue_empty_again_at_secs: Option<f64>,
}

/// Counts moves into `open` (from closed, or from a failed half-open probe),
/// adds up the time between readings that found it not closed, and finds the
/// queue's peak and when it was empty again.
pub fn circuit_seen(samples: &[CircuitSample]) -> CircuitSeen {
    let mut seen = CircuitSeen::default();
    let mut previous: Option<&CircuitSample> = None;
    for sample in samples {
        if sample.queued > seen.queue_peak {
            seen.queue_peak = sample.queued;
            seen.queue_peak_at_secs = sample.at.as_secs_f64();
            seen.queue_empty_again_at_secs = None;
        } else if sample.queued == 0 && seen.queue_peak > 0 {
            seen.queue_empty_again_at_secs
                .get_or_insert(sample.at.as_secs_f64());
        }
        let was = previous.map_or("closed", |p| p.circuit.as_str());
        if sample.circuit == "open" && was != "open" {
            seen.openings += 1;
        }
        if let Some(p) = previous {
            if p.circuit != "closed" {
                seen.not_closed_secs += sample.at.saturating_sub(p.at).as_secs_f64();
            }
        }
        previous = Some(sample);
    }
    seen
}

#[cfg(test)]
mod tests {
    use super::*;

    fn samples(states: &[&str]) -> Vec<CircuitSample> {
        states
            .iter()
            .enumerate()
            .map(|(i, s)| CircuitSample {
                at: Duration::from_millis(100 * i as u64),
                circuit: (*s).to_owned(),
                queued: 0,
            })
            .collect()
    }

    #[test]
    fn openings_count_each_move_into_open() {
        let seen = circuit_seen(&samples(&[
            "closed",
            "open",
            "open",
            "half_open",
            "open",
            "half_open",
            "closed",
            "closed",
        ]));
        assert_eq!(seen.openings, 2);
        assert!((seen.not_closed_secs - 0.5).abs() < 1e-9, "{seen:?}");
    }

    #[test]
    fn the_queue_peak_and_its_drain_are_found() {
        let mut readings = samples(&["closed"; 6]);
        for (reading, queued) in readings.iter_mut().zip([0, 3, 9, 4, 0, 0]) {
            reading.queued = queued;
        }
        let seen = circuit_seen(&readings);
        assert_eq!(seen.queue_peak, 9);
        assert!((seen.queue_peak_at_secs - 0.2).abs() < 1e-9);
        assert_eq!(seen.queue_empty_again_at_secs, Some(0.4));
    }

    #[test]
    fn a_closed_circuit_shows_nothing() {
        assert_eq!(
            circuit_seen(&samples(&["closed"; 5])),
            CircuitSeen::default()
        );
        assert_eq!(circuit_seen(&[]), CircuitSeen::default());
    }

    #[test]
    fn a_circuit_open_at_the_first_reading_counts() {
        let seen = circuit_seen(&samples(&["open", "closed"]));
        assert_eq!(seen.openings, 1);
    }
}
