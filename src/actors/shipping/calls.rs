//! The calls a gateway makes, and what their results mean to an order.

use actix::Message;

use crate::clients::shiprocket::{AdhocOrder, ShiprocketClient, ShiprocketError};
use crate::domain::order::CallKind;
use crate::domain::shipping::{Answer, CallFailure};

/// One call to Shiprocket, ready for the wire.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub enum ShiprocketCall {
    Create(Box<AdhocOrder>),
    AssignAwb(i64),
    /// By channel order id.
    Search(String),
    Pickup(i64),
    Cancel(Vec<i64>),
}

impl ShiprocketCall {
    pub fn kind(&self) -> CallKind {
        match self {
            Self::Create(_) => CallKind::CreateOrder,
            Self::AssignAwb(_) => CallKind::AssignAwb,
            Self::Search(_) => CallKind::Search,
            Self::Pickup(_) => CallKind::GeneratePickup,
            Self::Cancel(_) => CallKind::Cancel,
        }
    }

    /// Makes the call with `token`.
    pub(super) async fn perform(
        &self,
        client: &ShiprocketClient,
        token: &str,
    ) -> Result<Answer, ShiprocketError> {
        Ok(match self {
            Self::Create(order) => Answer::Created(client.create_order(token, order).await?),
            Self::AssignAwb(shipment_id) => {
                Answer::Awb(client.assign_awb(token, *shipment_id).await?)
            }
            Self::Search(channel_order_id) => {
                Answer::Found(client.search_orders(token, channel_order_id).await?)
            }
            Self::Pickup(shipment_id) => {
                client.generate_pickup(token, *shipment_id).await?;
                Answer::Done
            }
            Self::Cancel(ids) => {
                client.cancel_orders(token, ids).await?;
                Answer::Done
            }
        })
    }
}

#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum GatewayError {
    #[error("the account's circuit is open until {retry_at_ms}")]
    CircuitOpen { retry_at_ms: i64 },
    #[error("the account is throttled until {until_ms}")]
    Throttled { until_ms: i64 },
    #[error("the account's rate limit allows the next call in {wait_ms} ms")]
    RateLimited { wait_ms: u64 },
    #[error(transparent)]
    Shiprocket(#[from] ShiprocketError),
    /// The login before the call failed: the call itself never left.
    #[error("Shiprocket login failed: {0}")]
    Login(ShiprocketError),
    /// Another instance holds the account's lease now (this one was paused
    /// or cut off): the call is not made, the account's gateway is elsewhere.
    #[error("this instance no longer holds the account's lease")]
    LeaseLost,
}

impl GatewayError {
    /// What Shiprocket answered, if a request left at all.
    pub fn shiprocket(&self) -> Option<&ShiprocketError> {
        match self {
            Self::Shiprocket(error) | Self::Login(error) => Some(error),
            _ => None,
        }
    }

    /// What the failure means to the order that made the call.
    pub fn to_failure(&self) -> CallFailure {
        let message = self.to_string();
        match self {
            Self::CircuitOpen { .. }
            | Self::RateLimited { .. }
            | Self::Throttled { .. }
            | Self::Login(_)
            | Self::LeaseLost => CallFailure::NotAttempted(message),
            Self::Shiprocket(ShiprocketError::RateLimited { .. }) => {
                CallFailure::Throttled(message)
            }
            Self::Shiprocket(ShiprocketError::Unauthorized) => CallFailure::NotAttempted(message),
            Self::Shiprocket(ShiprocketError::Permanent(reason)) => {
                CallFailure::Refused(reason.clone())
            }
            Self::Shiprocket(ShiprocketError::Transient(_)) => CallFailure::Unknown(message),
        }
    }
}

/// One call now, if the account allows it: answered with the error at once
/// (circuit open, throttled, rate spent) instead of waiting. For tools and
/// tests; orders' calls come from the queue.
#[derive(Message)]
#[rtype(result = "Result<Answer, GatewayError>")]
pub struct Call(pub ShiprocketCall);
