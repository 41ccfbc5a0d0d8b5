//! Shipping decisions (SPEC §6 "Exactly once toward Shiprocket", §8) as pure
//! functions. The actors only carry them out:
//!
//! - [`plan::next_call`]: given an order, the account that has a permit to
//!   call, the health of the other accounts and the clock, what is the next
//!   call (search, create, assign AWB, pickup, cancel, a duplicate check), what
//!   to journal before it, or why there is none (not due, not this account's,
//!   attempts exhausted);
//! - [`outcome::after_call`]: what a call's answer or failure records;
//! - [`queue::queue_entries`]: the rows the order keeps in the durable
//!   shipping queue, derived from its snapshot so that the two never disagree;
//! - [`tracking`]: what Shiprocket's tracking updates do;
//! - [`shipment`]: the shipment an order sends, and Shiprocket's answers.
//!
//! Doubt belongs to the account that was called: after a call whose outcome is
//! unknown only an answered search of that account clears it, and every call
//! counts toward `shipping.max_attempts`, searches too.

pub mod outcome;
pub mod plan;
pub mod queue;
pub mod shipment;
pub mod tracking;

pub use outcome::after_call;
pub use plan::{next_call, Plan};
pub use queue::{drain_secs, queue_entries, QueueEntry};
pub use shipment::{
    live_matches, AssignedAwb, CreatedShipment, FoundOrder, ParcelDefaults, ShipmentItem,
    ShipmentRequest,
};
pub use tracking::{decide_tracking, tracking_target, tracking_time_key};

use super::backoff::Backoff;
use super::order::CallKind;
use serde::{Deserialize, Serialize};

/// The rules of SPEC §8 that the decisions need.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ShippingPolicy {
    pub backoff: Backoff,
    /// How long the account an order is in doubt on must stay unusable before
    /// the order may be created on another (`shipping.failover_after_secs`).
    pub failover_after_ms: i64,
    /// How long after a call is journaled it is due again if no outcome comes
    /// (a crash mid-call). Longer than the call can take: a request still in
    /// flight when the process died may yet land at Shiprocket, and the
    /// search that follows must see it.
    pub call_lease_ms: i64,
}

/// What a decision knows beyond the order: the accounts' health.
pub trait Conditions {
    /// Since when `account` has been unusable (circuit open or half-open, or
    /// throttled), if it is now.
    fn unusable_since_ms(&self, account: &str) -> Option<i64>;
}

/// Why a call is made: the step of the order it serves.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Purpose {
    /// Getting the order to `ready_to_ship` (search, create, assign AWB).
    Ship,
    /// Asking the courier to collect it.
    Pickup,
    /// Cancelling Shiprocket orders on an account (the order's own, or duplicates).
    Cleanup,
}

/// One Shiprocket call, in dropshipd's terms.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Call {
    /// `GET orders?search=` by the order's channel id.
    Search,
    /// `POST orders/create/adhoc` with the order's shipment.
    Create,
    AssignAwb {
        shipment_id: i64,
    },
    Pickup {
        shipment_id: i64,
    },
    Cancel {
        sr_order_ids: Vec<i64>,
    },
}

impl Call {
    pub fn kind(&self) -> CallKind {
        match self {
            Self::Search => CallKind::Search,
            Self::Create => CallKind::CreateOrder,
            Self::AssignAwb { .. } => CallKind::AssignAwb,
            Self::Pickup { .. } => CallKind::GeneratePickup,
            Self::Cancel { .. } => CallKind::Cancel,
        }
    }
}

/// A call an order makes on an account, and why.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Step {
    pub account: String,
    pub purpose: Purpose,
    pub call: Call,
}

/// What Shiprocket answered.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Answer {
    Created(CreatedShipment),
    Awb(AssignedAwb),
    Found(Vec<FoundOrder>),
    Done,
}

/// How a call failed, as the order sees it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum CallFailure {
    /// Transport, timeout, 5xx: the call may or may not have taken effect.
    Unknown(String),
    /// 429: Shiprocket asked us to slow down before doing anything.
    Throttled(String),
    /// A validation refusal: retrying will not help.
    Refused(String),
    /// The call never left (a refused token, the account's limiter spent).
    NotAttempted(String),
}

impl CallFailure {
    pub fn message(&self) -> &str {
        match self {
            Self::Unknown(m) | Self::Throttled(m) | Self::Refused(m) | Self::NotAttempted(m) => m,
        }
    }

    /// Nothing happened at Shiprocket: the attempt does not count.
    fn not_attempted(&self) -> bool {
        matches!(self, Self::Throttled(_) | Self::NotAttempted(_))
    }
}

#[cfg(test)]
pub(crate) mod fixtures {
    //! Orders in shipping states, for the tests of this module's parts.

    use std::collections::BTreeMap;
    use std::time::Duration;

    use super::*;
    use crate::domain::order::{
        apply, genesis, OrderEvent, OrderLine, OrderSnapshot, OrderState, PaymentMethod,
    };

    pub const NOW: i64 = 1_764_000_000_000;

    pub fn policy(max_attempts: u32) -> ShippingPolicy {
        ShippingPolicy {
            backoff: Backoff {
                base: Duration::from_millis(1000),
                max: Duration::from_millis(300_000),
                max_attempts,
            },
            failover_after_ms: 600_000,
            call_lease_ms: 30_000,
        }
    }

    /// A paid order, queued for shipping at `NOW`.
    pub fn queued() -> OrderSnapshot {
        let created = OrderEvent::Created {
            razorpay_order_id: Some("order_Q1".into()),
            payment_method: PaymentMethod::Prepaid,
            currency: "INR".into(),
            amount_paise: 74_900,
            lines: vec![OrderLine {
                sku: "TEE".into(),
                name: "Tee".into(),
                quantity: 1,
                unit_price_paise: 74_900,
                weight_g: None,
            }],
            reserved_until_ms: Some(NOW + 900_000),
        };
        let mut order = genesis("XVC-Q1", &created, NOW - 10).expect("genesis");
        for event in [
            OrderEvent::Paid {
                payment_id: "pay_Q1".into(),
                reallocated: false,
            },
            OrderEvent::ShippingQueued,
        ] {
            apply(&mut order, &event, NOW);
        }
        assert_eq!(order.state, OrderState::AwaitingShipment);
        order
    }

    /// Applies `events` at `at`.
    pub fn record(order: &mut OrderSnapshot, events: &[OrderEvent], at: i64) {
        for event in events {
            if let Some(to) = event.target() {
                assert!(
                    crate::domain::order::transition_allowed(order.state, to),
                    "{} -> {to} by {event:?}",
                    order.state
                );
            }
            apply(order, event, at);
        }
    }

    /// Accounts' health: unusable since the given time.
    #[derive(Default)]
    pub struct Board(pub BTreeMap<String, i64>);

    impl Board {
        pub fn down(account: &str, since: i64) -> Self {
            Self(BTreeMap::from([(account.to_owned(), since)]))
        }
    }

    impl Conditions for Board {
        fn unusable_since_ms(&self, account: &str) -> Option<i64> {
            self.0.get(account).copied()
        }
    }
}
