//! dropshipd: the order back end of a dropshipping store. Razorpay payment
//! webhooks in; paid, stock-allocated orders through; Shiprocket shipments out.
//!
//! A map of the crate against the boxes of SPEC §1:
//!
//! | module | box |
//! | --- | --- |
//! | [`http`] | the actix-web front: webhook, storefront API, health, admin API, `/metrics` |
//! | [`actors`] | the actor system: webhook ingest, inbox dispatcher, order registry and order actors, stock supervisor and shards, timers |
//! | [`domain`] | pure rules: webhook signature and classification, order state machine, stock arithmetic, checkout validation, clock |
//! | [`storage`] | SQLite: the group-commit writer, migrations, inbox, dead letters, orders and journal, stock and ledger |
//! | [`clients`] | outside APIs' wire formats: Razorpay's payments API |
//! | [`config`] | `config.toml`, environment overrides, secret references, validation |
//! | [`telemetry`] | metric names and handles, structured logging |
//! | [`service`] | the health check, systemd readiness and watchdog |
//! | [`startup`] | assembling the above into a running daemon, and its orderly stop |
//! | [`sandbox`] | the Shiprocket sandbox: a local Shiprocket with switchable faults |
//! | [`scratch_postgres`] | a throw-away PostgreSQL server for tests, benches and the demo |
//! | [`demo`] | `dropshipd demo`: the daemon and the sandbox under real HTTP traffic and faults, then a report |
//!
//! Data flows one way: `http` → `actors` → `domain` (decide) → `storage`
//! (persist) and `clients` (effects).

pub mod actors;
pub mod clients;
pub mod config;
pub mod demo;
pub mod domain;
pub mod http;
pub mod sandbox;
pub mod scratch_postgres;
pub mod service;
pub mod startup;
pub mod storage;
pub mod telemetry;

pub use startup::{Application, StartupError, StopHandle};
