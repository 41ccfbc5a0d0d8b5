//! systemd's notify protocol (`Type=notify`): READY once storage, actors and
//! listeners are up; WATCHDOG keep-alives only while the health check passes,
//! so a stuck writer or dispatcher gets the process restarted; STOPPING on a
//! stop signal. Every call is a no-op when not started by systemd (no
//! `NOTIFY_SOCKET`), which is how tests and `cargo run` see it.

use std::time::Duration;

use sd_notify::NotifyState;

use super::health::HealthCheck;

fn send(states: &[NotifyState<'_>]) {
    if let Err(e) = sd_notify::notify(states) {
        tracing::warn!(error = %e, "cannot notify the service manager");
    }
}

/// Startup is finished: the daemon takes requests.
pub fn notify_ready(status: &str) {
    send(&[NotifyState::Ready, NotifyState::Status(status)]);
}

/// A stop was asked for; draining follows.
pub fn notify_stopping(status: &str) {
    send(&[NotifyState::Stopping, NotifyState::Status(status)]);
}

/// The watchdog period systemd set (`WatchdogSec`), if any.
pub fn watchdog_period() -> Option<Duration> {
    sd_notify::watchdog_enabled()
}

/// Sends a keep-alive every half period while `check` finds no problem. When
/// it finds one, keep-alives stop (and the status says why): systemd then
/// kills and restarts the daemon once the period runs out, unless the problem
/// clears first.
pub async fn run_watchdog(check: HealthCheck, period: Duration) {
    let every = period / 2;
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut failing = false;
    loop {
        tick.tick().await;
        let problems = check.problems(every).await;
        if problems.is_empty() {
            if failing {
                tracing::info!("health check passes again; watchdog keep-alives resume");
                send(&[NotifyState::Status("serving")]);
                failing = false;
            }
            send(&[NotifyState::Watchdog]);
        } else {
            let summary = problems.join("; ");
            tracing::error!(problems = %summary, "health check failed; withholding the watchdog keep-alive");
            send(&[NotifyState::Status(&format!("unhealthy: {summary}"))]);
            failing = true;
        }
    }
}
