//! Shipping decisions (SPEC §6, §8) as pure functions: what a failed Shiprocket
//! call does to an order, and what a tracking update does.

use super::backoff::Backoff;
use super::order::{transition_allowed, OrderEvent, OrderSnapshot, OrderState, Outcome};

/// How a Shiprocket call failed, as the order sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CallFailure {
    /// Transport, timeout, 5xx: the call may or may not have taken effect.
    Unknown(String),
    /// 429: Shiprocket asked us to slow down; nothing happened.
    Throttled {
        error: String,
        retry_after_ms: Option<i64>,
    },
    /// A validation refusal: retrying will not help.
    Refused(String),
    /// No call was made (every circuit open); try again at `retry_at_ms`.
    NotAttempted { error: String, retry_at_ms: i64 },
}

/// The event a failed call records. `unit` is a uniform draw in [0, 1) for jitter.
pub fn after_failure(
    order: &OrderSnapshot,
    failure: &CallFailure,
    now_ms: i64,
    backoff: &Backoff,
    unit: f64,
) -> OrderEvent {
    let attempts = order.shipping.attempts;
    let delay_ms =
        i64::try_from(backoff.delay(attempts.max(1), unit).as_millis()).unwrap_or(i64::MAX);
    match failure {
        CallFailure::Refused(message) => OrderEvent::ShippingManual {
            reason: format!("Shiprocket refused the order: {message}"),
        },
        CallFailure::NotAttempted { error, retry_at_ms } => OrderEvent::ShippingDeferred {
            error: error.clone(),
            next_attempt_at_ms: (*retry_at_ms).max(now_ms),
            not_attempted: true,
            in_doubt: order.shipping.in_doubt,
        },
        CallFailure::Unknown(error) | CallFailure::Throttled { error, .. }
            if !backoff.may_retry(attempts) =>
        {
            OrderEvent::ShippingManual {
                reason: format!("gave up after {attempts} attempts; last error: {error}"),
            }
        }
        CallFailure::Unknown(error) => OrderEvent::ShippingDeferred {
            error: error.clone(),
            next_attempt_at_ms: now_ms.saturating_add(delay_ms),
            not_attempted: false,
            in_doubt: true,
        },
        CallFailure::Throttled {
            error,
            retry_after_ms,
        } => OrderEvent::ShippingDeferred {
            error: error.clone(),
            next_attempt_at_ms: now_ms.saturating_add(delay_ms.max(retry_after_ms.unwrap_or(0))),
            not_attempted: false,
            // A 429 is answered before any work: the call did not happen.
            in_doubt: false,
        },
    }
}

/// The state a Shiprocket `shipment_status_id` moves an order to (SPEC §8).
pub fn tracking_target(status_id: i64) -> Option<OrderState> {
    match status_id {
        6 | 17 | 18 | 42 => Some(OrderState::Shipped),
        7 => Some(OrderState::Delivered),
        8 => Some(OrderState::Cancelled),
        10 => Some(OrderState::Returned),
        _ => None,
    }
}

/// Shiprocket's `current_timestamp` (`DD MM YYYY HH:MM:SS`) as a sortable key
/// (`YYYYMMDDHHMMSS`); `None` if it is not in that shape.
pub fn tracking_time_key(timestamp: &str) -> Option<String> {
    let digits: Vec<&str> = timestamp
        .split([' ', ':', '-', '/'])
        .filter(|p| !p.is_empty())
        .collect();
    match digits.as_slice() {
        [dd, mm, yyyy, h, m, s]
            if [dd, mm, h, m, s].iter().all(|p| p.len() <= 2) && yyyy.len() == 4 =>
        {
            let all = [yyyy, mm, dd, h, m, s];
            if all.iter().all(|p| p.bytes().all(|b| b.is_ascii_digit())) {
                Some(all.iter().map(|p| format!("{p:0>2}")).collect())
            } else {
                None
            }
        }
        _ => None,
    }
}

/// What a tracking update does to an order: a transition where the lifecycle
/// allows it, a journal entry where it does not, nothing for a repeat or an
/// update older than the newest applied.
pub fn decide_tracking(
    order: &OrderSnapshot,
    awb: &str,
    status_id: i64,
    timestamp: &str,
) -> Outcome {
    let key = tracking_time_key(timestamp).unwrap_or_default();
    if let Some((last_key, last_status)) = &order.shipping.last_tracking {
        if *last_key == key && *last_status == status_id {
            return Outcome::AlreadyDone;
        }
        if key < *last_key {
            return Outcome::Ignored;
        }
    }
    let to = tracking_target(status_id)
        .filter(|to| *to != order.state && transition_allowed(order.state, *to));
    Outcome::Record(vec![OrderEvent::Tracking {
        awb: awb.to_owned(),
        status_id,
        timestamp: key,
        to,
    }])
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::domain::order::{genesis, OrderLine, PaymentMethod};

    fn order(state: OrderState, attempts: u32) -> OrderSnapshot {
        let created = OrderEvent::Created {
            razorpay_order_id: None,
            payment_method: PaymentMethod::Prepaid,
            currency: "INR".into(),
            amount_paise: 100,
            lines: vec![OrderLine {
                sku: "A".into(),
                name: "A".into(),
                quantity: 1,
                unit_price_paise: 100,
                weight_g: None,
            }],
            reserved_until_ms: None,
        };
        let mut order = genesis("O-1", &created, 0).unwrap();
        order.state = state;
        order.shipping.attempts = attempts;
        order
    }

    fn backoff() -> Backoff {
        Backoff {
            base: Duration::from_millis(1000),
            max: Duration::from_millis(300_000),
            max_attempts: 3,
        }
    }

    #[test]
    fn failures_defer_with_backoff_then_give_up() {
        let o = order(OrderState::AwaitingShipment, 2);
        match after_failure(
            &o,
            &CallFailure::Unknown("HTTP 503".into()),
            10_000,
            &backoff(),
            0.0,
        ) {
            OrderEvent::ShippingDeferred {
                next_attempt_at_ms,
                in_doubt,
                ..
            } => {
                assert_eq!(next_attempt_at_ms, 11_000);
                assert!(in_doubt);
            }
            other => panic!("{other:?}"),
        }
        let exhausted = order(OrderState::AwaitingShipment, 3);
        assert!(matches!(
            after_failure(
                &exhausted,
                &CallFailure::Unknown("x".into()),
                0,
                &backoff(),
                0.5
            ),
            OrderEvent::ShippingManual { .. }
        ));
        assert!(matches!(
            after_failure(&o, &CallFailure::Refused("bad pincode".into()), 0, &backoff(), 0.5),
            OrderEvent::ShippingManual { reason } if reason.contains("bad pincode")
        ));
        // An outage never exhausts attempts.
        assert!(matches!(
            after_failure(
                &exhausted,
                &CallFailure::NotAttempted {
                    error: "open".into(),
                    retry_at_ms: 5
                },
                0,
                &backoff(),
                0.0
            ),
            OrderEvent::ShippingDeferred {
                not_attempted: true,
                next_attempt_at_ms: 5,
                ..
            }
        ));
        match after_failure(
            &o,
            &CallFailure::Throttled {
                error: "429".into(),
                retry_after_ms: Some(60_000),
            },
            0,
            &backoff(),
            0.0,
        ) {
            OrderEvent::ShippingDeferred {
                next_attempt_at_ms,
                in_doubt,
                ..
            } => {
                assert_eq!(next_attempt_at_ms, 60_000);
                assert!(!in_doubt);
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn tracking_statuses_map_as_spec_section_8_says() {
        for id in [6, 17, 18, 42] {
            assert_eq!(tracking_target(id), Some(OrderState::Shipped));
        }
        assert_eq!(tracking_target(7), Some(OrderState::Delivered));
        assert_eq!(tracking_target(8), Some(OrderState::Cancelled));
        assert_eq!(tracking_target(10), Some(OrderState::Returned));
        assert_eq!(tracking_target(20), None);
        assert_eq!(
            tracking_time_key("26 11 2025 18:05:11").as_deref(),
            Some("20251126180511")
        );
        assert_eq!(tracking_time_key("garbage"), None);
    }

    #[test]
    fn tracking_moves_forward_only_and_dedups() {
        let mut o = order(OrderState::ReadyToShip, 0);
        let Outcome::Record(events) = decide_tracking(&o, "AWB1", 42, "26 11 2025 10:02:40") else {
            panic!()
        };
        assert!(matches!(
            &events[0],
            OrderEvent::Tracking {
                to: Some(OrderState::Shipped),
                ..
            }
        ));
        crate::domain::order::apply(&mut o, &events[0], 1);
        assert_eq!(o.state, OrderState::Shipped);
        assert_eq!(
            decide_tracking(&o, "AWB1", 42, "26 11 2025 10:02:40"),
            Outcome::AlreadyDone
        );
        assert_eq!(
            decide_tracking(&o, "AWB1", 7, "25 11 2025 10:00:00"),
            Outcome::Ignored
        );
        // In transit after shipped: journaled, no transition.
        let Outcome::Record(events) = decide_tracking(&o, "AWB1", 18, "26 11 2025 18:05:11") else {
            panic!()
        };
        assert!(matches!(&events[0], OrderEvent::Tracking { to: None, .. }));
        // Cancelled after shipped is not in the table: journaled only.
        let Outcome::Record(events) = decide_tracking(&o, "AWB1", 8, "27 11 2025 09:00:00") else {
            panic!()
        };
        assert!(matches!(&events[0], OrderEvent::Tracking { to: None, .. }));
        let Outcome::Record(events) = decide_tracking(&o, "AWB1", 7, "28 11 2025 09:00:00") else {
            panic!()
        };
        assert!(matches!(
            &events[0],
            OrderEvent::Tracking {
                to: Some(OrderState::Delivered),
                ..
            }
        ));
    }
}
