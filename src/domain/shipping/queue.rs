//! The order's rows in the durable shipping queue (SPEC §8), derived from its
//! snapshot. Storage rewrites them in the same commit as every snapshot whose
//! rows change, so a queued order is a row, its place in the queue can never
//! disagree with its journal, and a restart finds the queue as it was.
//!
//! One row per account the order has work for: `None` while any account may
//! take it (nothing was sent yet, or the last send was answered), the account
//! itself once that account holds or may hold the order.

use crate::domain::order::{OrderSnapshot, OrderState};

#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct QueueEntry {
    /// The account that must make the calls; `None` while any may.
    pub account: Option<String>,
    pub due_at_ms: i64,
    /// When the order was paid: the queue is drained oldest paid first.
    pub paid_at_ms: i64,
    /// In doubt on `account` with nothing created: another account may take
    /// it once this one has been unusable for `failover_after`.
    pub failover: bool,
    /// Calls still to make: the time-to-drain estimate.
    pub calls_left: u32,
}

/// The queue rows of `order`, one per account, sorted.
pub fn queue_entries(order: &OrderSnapshot) -> Vec<QueueEntry> {
    let shipping = &order.shipping;
    let paid_at_ms = shipping.paid_at_ms.unwrap_or(order.created_at_ms);
    let mut entries: Vec<QueueEntry> = Vec::new();
    let mut add = |account: Option<&String>, due_at_ms: i64, failover: bool, calls: u32| {
        let account = account.cloned();
        match entries.iter_mut().find(|e| e.account == account) {
            Some(entry) => {
                entry.due_at_ms = entry.due_at_ms.min(due_at_ms);
                entry.failover |= failover;
                entry.calls_left += calls;
            }
            None => entries.push(QueueEntry {
                account,
                due_at_ms,
                paid_at_ms,
                failover,
                calls_left: calls,
            }),
        }
    };
    let doubt = u32::from(shipping.in_doubt);
    match (order.state, shipping.next_attempt_at_ms) {
        (OrderState::AwaitingShipment, Some(due)) => {
            // Create, assign the AWB, ask for the pickup; a search first if in doubt.
            let bound = shipping
                .in_doubt
                .then_some(shipping.account.as_ref())
                .flatten();
            add(bound, due, bound.is_some(), 3 + doubt);
        }
        (OrderState::ShipmentCreated, Some(due)) => {
            add(shipping.account.as_ref(), due, false, 2 + doubt);
        }
        _ => {}
    }
    if let (OrderState::ReadyToShip, Some(due)) = (order.state, shipping.pickup_due_at_ms) {
        add(shipping.account.as_ref(), due, false, 1);
    }
    for cleanup in &shipping.cleanups {
        let search = u32::from(cleanup.search_first || cleanup.sr_order_ids.is_empty());
        add(
            Some(&cleanup.account),
            cleanup.next_at_ms,
            false,
            search + 1,
        );
    }
    entries.sort();
    entries
}

/// Seconds to make `calls` at `per_hour` with `ready_now` permits in hand:
/// the backlog's time to drain at the configured rate.
pub fn drain_secs(calls: u64, ready_now: u32, per_hour: u32) -> u64 {
    let waiting = calls.saturating_sub(u64::from(ready_now));
    if waiting == 0 {
        return 0;
    }
    (waiting.saturating_mul(3600)).div_ceil(u64::from(per_hour.max(1)))
}

#[cfg(test)]
mod tests {
    use super::super::fixtures::{queued, record, NOW};
    use super::*;
    use crate::domain::order::{CallKind, OrderEvent};

    #[test]
    fn the_drain_time_is_the_calls_beyond_the_burst_at_the_hourly_rate() {
        // 1,500 orders × 3 calls at 1,000 an hour with 10 in hand: 4.49 hours.
        assert_eq!(drain_secs(4500, 10, 1000), 16_164);
        assert_eq!(drain_secs(5, 10, 1000), 0);
        assert_eq!(drain_secs(1, 0, 3600), 1);
        assert_eq!(
            drain_secs(1, 0, 0),
            3600,
            "a rate of 0 is read as 1 an hour"
        );
    }

    #[test]
    fn a_fresh_order_waits_for_any_account() {
        assert_eq!(
            queue_entries(&queued()),
            vec![QueueEntry {
                account: None,
                due_at_ms: NOW,
                paid_at_ms: NOW,
                failover: false,
                calls_left: 3,
            }]
        );
    }

    #[test]
    fn doubt_binds_the_order_to_the_account_called_and_allows_failover() {
        let mut order = queued();
        let attempt = OrderEvent::ShippingAttempt {
            account: "a".into(),
            call: CallKind::CreateOrder,
            attempt: 1,
            resume_at_ms: Some(NOW + 30_000),
        };
        record(&mut order, &[attempt], NOW);
        let entries = queue_entries(&order);
        assert_eq!(entries.len(), 1);
        assert_eq!(entries[0].account.as_deref(), Some("a"));
        assert!(entries[0].failover);
        assert_eq!(
            entries[0].due_at_ms,
            NOW + 30_000,
            "due again after the lease"
        );
    }

    #[test]
    fn a_cancelled_order_keeps_only_its_cleanup() {
        let mut order = queued();
        let events = [
            OrderEvent::ShippingAttempt {
                account: "a".into(),
                call: CallKind::CreateOrder,
                attempt: 1,
                resume_at_ms: Some(NOW + 30_000),
            },
            OrderEvent::ShipmentCreated {
                account: "a".into(),
                sr_order_id: 7,
                shipment_id: 70,
                adopted: false,
            },
        ];
        record(&mut order, &events, NOW);
        assert!(!queue_entries(&order)[0].failover, "created: it stays on a");
        let outcome = crate::domain::order::decide(&order, &crate::domain::order::Command::Cancel);
        let crate::domain::order::Outcome::Record(events) = outcome else {
            panic!()
        };
        record(&mut order, &events, NOW + 5);
        let entries = queue_entries(&order);
        assert_eq!(entries.len(), 1);
        assert_eq!(
            (entries[0].account.as_deref(), entries[0].calls_left),
            (Some("a"), 1),
            "the id is known: one cancel call"
        );
        record(
            &mut order,
            &[OrderEvent::ShiprocketCancelled {
                account: "a".into(),
                sr_order_ids: vec![7],
            }],
            NOW + 6,
        );
        assert!(queue_entries(&order).is_empty());
    }
}
