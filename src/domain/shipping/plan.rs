//! The next call an order makes on an account that has a permit for it.
//!
//! A gateway asks only when its limiter has a permit and its circuit allows a
//! call, so whatever this returns is made at once: the order never waits for
//! an account, the account's queue does. In priority:
//!
//! 1. a cleanup due on this account (cancel the order's own Shiprocket order,
//!    or duplicates left by a failover), searching first when what the account
//!    holds is not known;
//! 2. the shipping step, if this account may take it: an order in doubt is
//!    searched on the account that was called, or, once that account has been
//!    unusable for `failover_after`, failed over here with a duplicate check
//!    recorded on it in the same commit; an order not in doubt goes to any
//!    account; an order whose Shiprocket order exists stays with its account;
//! 3. the courier pickup after the AWB.
//!
//! An account with a cleanup pending for the order never creates it: the
//! cleanup would cancel what the create made.

use super::{Call, Conditions, Purpose, ShippingPolicy, Step};
use crate::domain::order::{OrderEvent, OrderSnapshot, OrderState};

/// What an order does with an account's permit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Plan {
    /// Journal `events` (the attempt among them), then make `step`'s call.
    Call { events: Vec<OrderEvent>, step: Step },
    /// Journal `events` and make no call (attempts exhausted).
    Record(Vec<OrderEvent>),
    /// Nothing for this account now.
    Nothing,
}

/// The next call `order` makes on `account` at `now_ms`. Pure.
pub fn next_call(
    order: &OrderSnapshot,
    account: &str,
    world: &impl Conditions,
    now_ms: i64,
    policy: &ShippingPolicy,
) -> Plan {
    if let Some(plan) = cleanup(order, account, now_ms, policy) {
        return plan;
    }
    if let Some(plan) = ship(order, account, world, now_ms, policy) {
        return plan;
    }
    pickup(order, account, now_ms).unwrap_or(Plan::Nothing)
}

fn cleanup(
    order: &OrderSnapshot,
    account: &str,
    now_ms: i64,
    policy: &ShippingPolicy,
) -> Option<Plan> {
    let cleanup = order.shipping.cleanup_on(account)?;
    if cleanup.next_at_ms > now_ms {
        return None;
    }
    let call = if cleanup.search_first || cleanup.sr_order_ids.is_empty() {
        Call::Search
    } else {
        Call::Cancel {
            sr_order_ids: cleanup.sr_order_ids.clone(),
        }
    };
    let attempt = OrderEvent::CleanupAttempt {
        account: account.to_owned(),
        call: call.kind(),
        attempt: cleanup.attempts + 1,
        resume_at_ms: now_ms.saturating_add(policy.call_lease_ms),
    };
    Some(Plan::Call {
        events: vec![attempt],
        step: Step {
            account: account.to_owned(),
            purpose: Purpose::Cleanup,
            call,
        },
    })
}

fn ship(
    order: &OrderSnapshot,
    account: &str,
    world: &impl Conditions,
    now_ms: i64,
    policy: &ShippingPolicy,
) -> Option<Plan> {
    let shipping = &order.shipping;
    let ship_due = shipping.next_attempt_at_ms.is_some_and(|at| at <= now_ms);
    if !order.state.is_being_shipped() || !ship_due {
        return None;
    }
    if shipping.cleanup_on(account).is_some() {
        return Some(Plan::Nothing);
    }
    let held_by = shipping.account.as_deref();
    let mut events = Vec::new();
    let call = match order.state {
        OrderState::ShipmentCreated => {
            if held_by != Some(account) {
                return Some(Plan::Nothing);
            }
            match (shipping.in_doubt, shipping.shipment_id) {
                (true, _) => Call::Search,
                (false, Some(shipment_id)) => Call::AssignAwb { shipment_id },
                (false, None) => {
                    return Some(Plan::Record(vec![OrderEvent::ShippingManual {
                        reason: "Shiprocket order has no shipment id to assign an AWB to".into(),
                    }]))
                }
            }
        }
        _ => match held_by.filter(|_| shipping.in_doubt) {
            Some(doubted) if doubted == account => Call::Search,
            Some(doubted) => {
                let unusable_for = world
                    .unusable_since_ms(doubted)
                    .map(|since| now_ms.saturating_sub(since));
                if unusable_for.is_none_or(|d| d < policy.failover_after_ms) {
                    return Some(Plan::Nothing);
                }
                events.push(OrderEvent::FailedOver {
                    from: doubted.to_owned(),
                });
                Call::Create
            }
            None => Call::Create,
        },
    };
    if !policy.backoff.may_retry(shipping.attempts) {
        let last = shipping.last_error.as_deref().unwrap_or("no answer");
        return Some(Plan::Record(vec![OrderEvent::ShippingManual {
            reason: format!(
                "gave up after {} attempts; last error: {last}",
                shipping.attempts
            ),
        }]));
    }
    events.push(OrderEvent::ShippingAttempt {
        account: account.to_owned(),
        call: call.kind(),
        attempt: shipping.attempts + 1,
        resume_at_ms: Some(now_ms.saturating_add(policy.call_lease_ms)),
    });
    Some(Plan::Call {
        events,
        step: Step {
            account: account.to_owned(),
            purpose: Purpose::Ship,
            call,
        },
    })
}

fn pickup(order: &OrderSnapshot, account: &str, now_ms: i64) -> Option<Plan> {
    let shipping = &order.shipping;
    let due = shipping.pickup_due_at_ms.is_some_and(|at| at <= now_ms);
    if order.state != OrderState::ReadyToShip
        || !due
        || shipping.account.as_deref() != Some(account)
    {
        return None;
    }
    let shipment_id = shipping.shipment_id?;
    Some(Plan::Call {
        events: Vec::new(),
        step: Step {
            account: account.to_owned(),
            purpose: Purpose::Pickup,
            call: Call::Pickup { shipment_id },
        },
    })
}

#[cfg(test)]
mod tests {
    use super::super::fixtures::{policy, queued, record, Board, NOW};
    use super::*;
    use crate::domain::order::{CallKind, CleanupPurpose};

    fn call_of(plan: &Plan) -> (&str, Purpose, &Call) {
        match plan {
            Plan::Call { step, .. } => (step.account.as_str(), step.purpose, &step.call),
            other => panic!("expected a call, got {other:?}"),
        }
    }

    fn attempt_on(order: &mut crate::domain::order::OrderSnapshot, account: &str, call: CallKind) {
        let event = OrderEvent::ShippingAttempt {
            account: account.into(),
            call,
            attempt: order.shipping.attempts + 1,
            resume_at_ms: Some(NOW + 30_000),
        };
        record(order, &[event], NOW);
    }

    #[test]
    fn a_fresh_order_is_created_on_whichever_account_asks_and_journals_first() {
        let order = queued();
        let plan = next_call(&order, "b", &Board::default(), NOW, &policy(8));
        let Plan::Call { events, step } = &plan else {
            panic!("{plan:?}")
        };
        assert_eq!((step.account.as_str(), &step.call), ("b", &Call::Create));
        assert_eq!(
            events,
            &vec![OrderEvent::ShippingAttempt {
                account: "b".into(),
                call: CallKind::CreateOrder,
                attempt: 1,
                resume_at_ms: Some(NOW + 30_000),
            }]
        );
    }

    #[test]
    fn nothing_before_the_backoff_ends() {
        let mut order = queued();
        order.shipping.next_attempt_at_ms = Some(NOW + 1);
        assert_eq!(
            next_call(&order, "a", &Board::default(), NOW, &policy(8)),
            Plan::Nothing
        );
    }

    #[test]
    fn doubt_is_searched_on_the_account_called_and_nowhere_else() {
        let mut order = queued();
        attempt_on(&mut order, "a", CallKind::CreateOrder);
        order.shipping.next_attempt_at_ms = Some(NOW);
        assert_eq!(
            call_of(&next_call(&order, "a", &Board::default(), NOW, &policy(8))),
            ("a", Purpose::Ship, &Call::Search)
        );
        // Another account waits while `a` is healthy or only briefly down.
        assert_eq!(
            next_call(&order, "b", &Board::default(), NOW, &policy(8)),
            Plan::Nothing
        );
        assert_eq!(
            next_call(
                &order,
                "b",
                &Board::down("a", NOW - 599_999),
                NOW,
                &policy(8)
            ),
            Plan::Nothing
        );
    }

    #[test]
    fn failover_records_a_duplicate_check_before_creating_elsewhere() {
        let mut order = queued();
        attempt_on(&mut order, "a", CallKind::CreateOrder);
        order.shipping.next_attempt_at_ms = Some(NOW);
        let board = Board::down("a", NOW - 600_000);
        let Plan::Call { events, step } = next_call(&order, "b", &board, NOW, &policy(8)) else {
            panic!("failover expected")
        };
        assert_eq!((step.account.as_str(), &step.call), ("b", &Call::Create));
        assert_eq!(events[0], OrderEvent::FailedOver { from: "a".into() });
        record(&mut order, &events, NOW);
        let check = order
            .shipping
            .cleanup_on("a")
            .expect("a duplicate check on a");
        assert_eq!(
            (check.purpose, check.search_first),
            (CleanupPurpose::Duplicate, true)
        );
        assert_eq!(order.shipping.account.as_deref(), Some("b"));
        assert_eq!(order.shipping.attempts, 2);
    }

    #[test]
    fn a_call_without_an_answer_is_searched_once_its_lease_is_over() {
        let mut order = queued();
        attempt_on(&mut order, "a", CallKind::CreateOrder);
        assert_eq!(
            next_call(&order, "a", &Board::default(), NOW + 29_999, &policy(8)),
            Plan::Nothing,
            "the call may still land: its answer is awaited"
        );
        assert_eq!(
            call_of(&next_call(
                &order,
                "a",
                &Board::default(),
                NOW + 30_000,
                &policy(8)
            ))
            .2,
            &Call::Search,
            "lost (a crash): searched, not created again"
        );
    }

    #[test]
    fn exhausted_attempts_go_to_an_operator_without_a_call() {
        let mut order = queued();
        for _ in 0..3 {
            attempt_on(&mut order, "a", CallKind::Search);
        }
        order.shipping.next_attempt_at_ms = Some(NOW);
        let Plan::Record(events) = next_call(&order, "a", &Board::default(), NOW, &policy(3))
        else {
            panic!("manual expected")
        };
        assert!(
            matches!(&events[..], [OrderEvent::ShippingManual { reason }] if reason.contains("3 attempts"))
        );
    }

    #[test]
    fn a_created_shipment_stays_with_its_account_for_the_awb() {
        let mut order = queued();
        attempt_on(&mut order, "a", CallKind::CreateOrder);
        let created = OrderEvent::ShipmentCreated {
            account: "a".into(),
            sr_order_id: 7,
            shipment_id: 70,
            adopted: false,
        };
        record(&mut order, &[created], NOW);
        assert_eq!(
            next_call(&order, "b", &Board::down("a", 0), NOW, &policy(8)),
            Plan::Nothing
        );
        assert_eq!(
            call_of(&next_call(&order, "a", &Board::default(), NOW, &policy(8))).2,
            &Call::AssignAwb { shipment_id: 70 }
        );
        attempt_on(&mut order, "a", CallKind::AssignAwb);
        order.shipping.next_attempt_at_ms = Some(NOW);
        assert_eq!(
            call_of(&next_call(&order, "a", &Board::default(), NOW, &policy(8))).2,
            &Call::Search
        );
    }

    #[test]
    fn cleanups_come_first_and_block_a_create_on_their_account() {
        let mut order = queued();
        let scheduled = OrderEvent::CleanupScheduled {
            account: "b".into(),
            purpose: CleanupPurpose::Duplicate,
            sr_order_ids: vec![],
            search_first: true,
        };
        record(&mut order, &[scheduled], NOW);
        assert_eq!(
            call_of(&next_call(&order, "b", &Board::default(), NOW, &policy(8))),
            ("b", Purpose::Cleanup, &Call::Search)
        );
        let searched = OrderEvent::CleanupSearched {
            account: "b".into(),
            live: vec![41, 42],
        };
        record(&mut order, &[searched], NOW);
        assert_eq!(
            call_of(&next_call(&order, "b", &Board::default(), NOW, &policy(8))).2,
            &Call::Cancel {
                sr_order_ids: vec![41, 42]
            }
        );
        let Plan::Call { events, .. } = next_call(&order, "b", &Board::default(), NOW, &policy(8))
        else {
            panic!()
        };
        record(&mut order, &events, NOW);
        // In flight: not due, and `b` must not create meanwhile; `a` may.
        assert_eq!(
            next_call(&order, "b", &Board::default(), NOW, &policy(8)),
            Plan::Nothing
        );
        assert_eq!(
            call_of(&next_call(&order, "a", &Board::default(), NOW, &policy(8))).2,
            &Call::Create
        );
    }

    #[test]
    fn a_pickup_follows_the_awb_on_the_same_account() {
        let mut order = queued();
        attempt_on(&mut order, "a", CallKind::CreateOrder);
        let events = [
            OrderEvent::ShipmentCreated {
                account: "a".into(),
                sr_order_id: 7,
                shipment_id: 70,
                adopted: false,
            },
            OrderEvent::AwbAssigned {
                awb: "AWB7".into(),
                courier: "Delhivery".into(),
            },
        ];
        record(&mut order, &events, NOW);
        assert_eq!(
            call_of(&next_call(&order, "a", &Board::default(), NOW, &policy(8))),
            ("a", Purpose::Pickup, &Call::Pickup { shipment_id: 70 })
        );
        assert_eq!(
            next_call(&order, "b", &Board::default(), NOW, &policy(8)),
            Plan::Nothing
        );
        record(&mut order, &[OrderEvent::PickupRequested], NOW);
        assert_eq!(
            next_call(&order, "a", &Board::default(), NOW, &policy(8)),
            Plan::Nothing
        );
    }
}
