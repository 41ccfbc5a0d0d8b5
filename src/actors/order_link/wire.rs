//! How an order message and its answer travel between instances: JSON of
//! the domain's own types, sealed by storage. Only the messages another
//! instance may send are here; start-up repairs and passivation are sent by
//! the partition's owner to its own actors and never travel.

use std::sync::atomic::AtomicBool;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::actors::order::{Cause, OrderError, OrderMsg, OrderReply, PlannedCall, ShippingTurn};
use crate::actors::shipping::ShiprocketCall;
use crate::actors::stock::StockFailure;
use crate::domain::checkout::ValidCheckout;
use crate::domain::order::{Command, OrderSnapshot, OrderState};
use crate::domain::shipping::{Answer, CallFailure, Step};
use crate::domain::stock::StockError;
use crate::storage::{AuditRecord, AuditedAction, StorageError};

#[derive(Debug, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub(super) enum WireMsg {
    Create {
        checkout: Box<ValidCheckout>,
        fingerprint: String,
    },
    Command {
        command: Command,
        cause: WireCause,
    },
    Shipping {
        account: String,
        answered: Option<(Step, Result<Answer, CallFailure>)>,
        may_call: bool,
    },
}

#[derive(Debug, Serialize, Deserialize)]
pub(super) struct WireCause {
    label: String,
    event_id: Option<String>,
    inbox_id: Option<i64>,
    received_at_ms: Option<i64>,
    replay_of: Option<i64>,
    audit: Option<AuditRecord>,
}

/// The owner's answer. `audit_committed` tells the requester that the
/// operator's audit entry went in with the effect, as the local flag would.
#[derive(Debug, Serialize, Deserialize)]
pub(super) struct WireAnswer {
    reply: Result<WireReply, WireError>,
    audit_committed: bool,
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
enum WireReply {
    Created(Box<OrderSnapshot>),
    Existing(Box<OrderSnapshot>),
    Order(Box<OrderSnapshot>),
    Planned(Option<(Step, ShiprocketCall)>),
    Deferred,
    Passivated,
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
enum WireError {
    NotFound,
    Conflict,
    InsufficientStock(Vec<String>),
    AmountMismatch,
    InvalidTransition {
        from: OrderState,
        to: OrderState,
    },
    Paused,
    StockRefused(StockError),
    /// Storage or the stock shard failed on the owner: worth a retry.
    Unavailable(String),
}

impl WireMsg {
    /// The wire form of `msg`, or `None` for messages that never travel.
    pub(super) fn from_msg(msg: &OrderMsg) -> Option<Self> {
        Some(match msg {
            OrderMsg::Create {
                checkout,
                fingerprint,
            } => Self::Create {
                checkout: checkout.clone(),
                fingerprint: fingerprint.clone(),
            },
            OrderMsg::Command { command, cause } => Self::Command {
                command: command.clone(),
                cause: WireCause {
                    label: cause.label.clone(),
                    event_id: cause.event_id.clone(),
                    inbox_id: cause.inbox_id,
                    received_at_ms: cause.received_at_ms,
                    replay_of: cause.replay_of,
                    audit: cause.audit.as_ref().map(|a| a.record.clone()),
                },
            },
            OrderMsg::Shipping(turn) => Self::Shipping {
                account: turn.account.clone(),
                answered: turn.answered.clone(),
                may_call: turn.may_call,
            },
            OrderMsg::RepairStock | OrderMsg::QueuePaid | OrderMsg::Passivate => return None,
        })
    }

    /// The message for the owner's actor, and the flag its audit entry (if
    /// any) raises when it commits.
    pub(super) fn into_msg(self) -> (OrderMsg, Arc<AtomicBool>) {
        let committed = Arc::new(AtomicBool::new(false));
        let msg = match self {
            Self::Create {
                checkout,
                fingerprint,
            } => OrderMsg::Create {
                checkout,
                fingerprint,
            },
            Self::Command { command, cause } => OrderMsg::Command {
                command,
                cause: Cause {
                    label: cause.label,
                    event_id: cause.event_id,
                    inbox_id: cause.inbox_id,
                    received_at_ms: cause.received_at_ms,
                    replay_of: cause.replay_of,
                    audit: cause
                        .audit
                        .map(|record| AuditedAction::new(record, Arc::clone(&committed))),
                },
            },
            Self::Shipping {
                account,
                answered,
                may_call,
            } => OrderMsg::Shipping(ShippingTurn {
                account,
                answered,
                may_call,
            }),
        };
        (msg, committed)
    }
}

impl WireAnswer {
    pub(super) fn new(reply: &Result<OrderReply, OrderError>, audit_committed: bool) -> Self {
        let reply = match reply {
            Ok(reply) => Ok(match reply {
                OrderReply::Created(o) => WireReply::Created(Box::new(o.clone())),
                OrderReply::Existing(o) => WireReply::Existing(Box::new(o.clone())),
                OrderReply::Order(o) => WireReply::Order(Box::new(o.clone())),
                OrderReply::Planned(planned) => {
                    WireReply::Planned(planned.as_ref().map(|p| (p.step.clone(), p.call.clone())))
                }
                OrderReply::Deferred => WireReply::Deferred,
                OrderReply::Passivated => WireReply::Passivated,
            }),
            Err(error) => Err(match error {
                OrderError::NotFound => WireError::NotFound,
                OrderError::Conflict => WireError::Conflict,
                OrderError::InsufficientStock(skus) => WireError::InsufficientStock(skus.clone()),
                OrderError::AmountMismatch => WireError::AmountMismatch,
                OrderError::InvalidTransition { from, to } => WireError::InvalidTransition {
                    from: *from,
                    to: *to,
                },
                OrderError::Paused => WireError::Paused,
                OrderError::Stock(StockFailure::Refused(e)) => WireError::StockRefused(*e),
                other => WireError::Unavailable(other.to_string()),
            }),
        };
        Self {
            reply,
            audit_committed,
        }
    }

    pub(super) fn audit_committed(&self) -> bool {
        self.audit_committed
    }

    pub(super) fn into_reply(self) -> Result<OrderReply, OrderError> {
        match self.reply {
            Ok(reply) => Ok(match reply {
                WireReply::Created(o) => OrderReply::Created(*o),
                WireReply::Existing(o) => OrderReply::Existing(*o),
                WireReply::Order(o) => OrderReply::Order(*o),
                WireReply::Planned(planned) => {
                    OrderReply::Planned(planned.map(|(step, call)| PlannedCall { step, call }))
                }
                WireReply::Deferred => OrderReply::Deferred,
                WireReply::Passivated => OrderReply::Passivated,
            }),
            Err(error) => Err(match error {
                WireError::NotFound => OrderError::NotFound,
                WireError::Conflict => OrderError::Conflict,
                WireError::InsufficientStock(skus) => OrderError::InsufficientStock(skus),
                WireError::AmountMismatch => OrderError::AmountMismatch,
                WireError::InvalidTransition { from, to } => {
                    OrderError::InvalidTransition { from, to }
                }
                WireError::Paused => OrderError::Paused,
                WireError::StockRefused(e) => OrderError::Stock(StockFailure::Refused(e)),
                WireError::Unavailable(message) => {
                    OrderError::Storage(StorageError::Postgres(message))
                }
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::shipping::{Call, Purpose};

    fn round_trip(answer: WireAnswer) -> Result<OrderReply, OrderError> {
        let bytes = serde_json::to_vec(&answer).expect("encode");
        serde_json::from_slice::<WireAnswer>(&bytes)
            .expect("decode")
            .into_reply()
    }

    #[test]
    fn a_shipping_turn_travels_whole() {
        let step = Step {
            account: "primary".into(),
            purpose: Purpose::Ship,
            call: Call::AssignAwb { shipment_id: 7 },
        };
        let msg = OrderMsg::Shipping(ShippingTurn {
            account: "primary".into(),
            answered: Some((step.clone(), Err(CallFailure::Throttled("429".into())))),
            may_call: true,
        });
        let wire = WireMsg::from_msg(&msg).expect("a shipping turn travels");
        let bytes = serde_json::to_vec(&wire).expect("encode");
        let (back, _) = serde_json::from_slice::<WireMsg>(&bytes)
            .expect("decode")
            .into_msg();
        match back {
            OrderMsg::Shipping(turn) => {
                assert_eq!(turn.account, "primary");
                assert!(turn.may_call);
                assert_eq!(
                    turn.answered,
                    Some((step, Err(CallFailure::Throttled("429".into()))))
                );
            }
            _ => panic!("not a shipping turn"),
        }
        let planned = Ok(OrderReply::Planned(Some(PlannedCall {
            step: Step {
                account: "primary".into(),
                purpose: Purpose::Pickup,
                call: Call::Pickup { shipment_id: 9 },
            },
            call: ShiprocketCall::Pickup(9),
        })));
        match round_trip(WireAnswer::new(&planned, false)) {
            Ok(OrderReply::Planned(Some(p))) => assert_eq!(p.call, ShiprocketCall::Pickup(9)),
            other => panic!("unexpected {other:?}"),
        }
    }

    #[test]
    fn refusals_keep_their_meaning_and_failures_stay_retryable() {
        let refused = Err(OrderError::InvalidTransition {
            from: OrderState::Cancelled,
            to: OrderState::Paid,
        });
        assert!(matches!(
            round_trip(WireAnswer::new(&refused, false)),
            Err(OrderError::InvalidTransition {
                from: OrderState::Cancelled,
                to: OrderState::Paid
            })
        ));
        let short = Err(OrderError::InsufficientStock(vec!["SKU-1".into()]));
        assert!(matches!(
            round_trip(WireAnswer::new(&short, false)),
            Err(OrderError::InsufficientStock(skus)) if skus == ["SKU-1"]
        ));
        let failed = Err(OrderError::Storage(StorageError::Timeout(
            std::time::Duration::from_secs(1),
        )));
        assert!(matches!(
            round_trip(WireAnswer::new(&failed, true)),
            Err(OrderError::Storage(_))
        ));
    }

    #[test]
    fn local_only_messages_do_not_travel() {
        assert!(WireMsg::from_msg(&OrderMsg::RepairStock).is_none());
        assert!(WireMsg::from_msg(&OrderMsg::QueuePaid).is_none());
        assert!(WireMsg::from_msg(&OrderMsg::Passivate).is_none());
    }
}
