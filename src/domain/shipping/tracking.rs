//! Shiprocket's tracking webhook (SPEC §8) as pure decisions: which state a
//! `shipment_status_id` means, how its timestamp orders updates, and what an
//! update does to an order.

use crate::domain::order::{
    transition_allowed, with_shiprocket_cancellation, OrderEvent, OrderSnapshot, OrderState,
    Outcome,
};

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
    let update = OrderEvent::Tracking {
        awb: awb.to_owned(),
        status_id,
        timestamp: key,
        to,
    };
    if to == Some(OrderState::Cancelled) {
        // Shiprocket says so; a search confirms it before anything else is cancelled.
        return Outcome::Record(with_shiprocket_cancellation(order, vec![update], true));
    }
    Outcome::Record(vec![update])
}

#[cfg(test)]
mod tests {
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
