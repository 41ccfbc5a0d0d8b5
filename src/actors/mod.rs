//! The actor system of SPEC §1. Actors hold state, receive messages, ask the
//! pure rules in [`crate::domain`] what to do, persist through
//! [`crate::storage`], and reply. They contain no business rule of their own.

pub mod cluster;
pub mod dispatcher;
pub mod ingest;
pub mod order;
pub mod order_link;
pub mod registry;
pub mod shipping;
pub mod stock;
pub mod switch;
pub mod timers;
