//! The Shiprocket side of the actor system (SPEC §8): one
//! [`gateway::ShiprocketGateway`] per account pulling work from the durable
//! shipping queue ([`queue::ShippingQueue`]), and the board of accounts
//! ([`router::ShippingRouter`]) that the queue, the orders and the status page
//! read. The calls and their errors are in [`calls`].

pub mod calls;
pub mod gateway;
pub mod queue;
pub mod router;

pub use calls::{Call, GatewayError, ShiprocketCall};
pub use gateway::{
    account_quota, GatewaySettings, Retire as RetireGateway, ShiprocketGateway, Work,
};
pub use queue::ShippingQueue;
pub use router::{AccountHandle, GatewayStats, GatewayStatus, ShippingRouter};
