//! The daemon's side of its service manager: a health check of the actor
//! system itself, readiness and watchdog keep-alives for systemd driven by
//! that check, and the orderly stop on SIGTERM.

pub mod health;
pub mod systemd;
