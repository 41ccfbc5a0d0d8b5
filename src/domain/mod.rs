//! Pure rules: no I/O, no actors, no clocks of their own. Everything here is a
//! plain function or type with unit tests; actors call into it to decide, then
//! persist and act.

pub mod audit;
pub mod backoff;
pub mod breaker;
pub mod checkout;
pub mod clock;
pub mod cluster;
pub mod dead_letter;
pub mod order;
pub mod shipping;
pub mod signature;
pub mod stock;
pub mod webhook;
