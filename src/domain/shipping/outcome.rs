//! What a Shiprocket call's answer, or its failure, records on the order.
//!
//! - An unknown outcome (timeout, 5xx) leaves the order in doubt on the account
//!   called; only an answered search of that account clears it. A search that
//!   fails, a 429 or a refused token leave the doubt as it was.
//! - A 429 or a refused token means nothing happened: the attempt is given
//!   back. Everything else counts; `max_attempts` spent sends the order to an
//!   operator.
//! - A search adopts a live Shiprocket order instead of creating another; if
//!   it finds several, the others get a cleanup.
//! - A cleanup is retried with backoff until Shiprocket confirms; a refusal
//!   of the cancel is final (`shiprocket_cancel_failed`, filed for an operator).
//!
//! An answer that arrives after the order moved on (it was cancelled while the
//! call was in flight) records only what Shiprocket now holds, so the
//! cancellation can cancel it there.

use super::{live_matches, Answer, Call, CallFailure, Purpose, ShippingPolicy, Step};
use crate::domain::order::{CleanupPurpose, OrderEvent, OrderSnapshot, OrderState};

/// The events that record `result` of `step` for `order` at `now_ms`. `unit`
/// is a uniform draw in [0, 1) for the backoff's jitter. Pure.
pub fn after_call(
    order: &OrderSnapshot,
    step: &Step,
    result: &Result<Answer, CallFailure>,
    now_ms: i64,
    policy: &ShippingPolicy,
    unit: f64,
) -> Vec<OrderEvent> {
    match step.purpose {
        Purpose::Ship => ship(order, step, result, now_ms, policy, unit),
        Purpose::Pickup => pickup(order, result, now_ms),
        Purpose::Cleanup => cleanup(order, step, result, now_ms, policy, unit),
    }
}

fn delay_ms(policy: &ShippingPolicy, attempts: u32, unit: f64) -> i64 {
    i64::try_from(policy.backoff.delay(attempts.max(1), unit).as_millis()).unwrap_or(i64::MAX)
}

fn ship(
    order: &OrderSnapshot,
    step: &Step,
    result: &Result<Answer, CallFailure>,
    now_ms: i64,
    policy: &ShippingPolicy,
    unit: f64,
) -> Vec<OrderEvent> {
    let account = step.account.clone();
    if !order.state.is_being_shipped() {
        return stale_ship_answer(order, step, result);
    }
    match (&step.call, result) {
        (Call::Create, Ok(Answer::Created(created))) => vec![OrderEvent::ShipmentCreated {
            account,
            sr_order_id: created.sr_order_id,
            shipment_id: created.shipment_id,
            adopted: false,
        }],
        (Call::AssignAwb { .. }, Ok(Answer::Awb(assigned))) => vec![OrderEvent::AwbAssigned {
            awb: assigned.awb_code.clone(),
            courier: assigned.courier_name.clone(),
        }],
        (Call::Search, Ok(Answer::Found(found))) => adopt(order, &account, found),
        // A refused search leaves the doubt unresolved: it is a failed search.
        (Call::Search, Err(CallFailure::Refused(error))) => failed(
            order,
            step,
            &CallFailure::Unknown(error.clone()),
            now_ms,
            policy,
            unit,
        ),
        (_, Err(failure)) => failed(order, step, failure, now_ms, policy, unit),
        (_, Ok(answer)) => failed(
            order,
            step,
            &CallFailure::Unknown(format!("unexpected answer {answer:?}")),
            now_ms,
            policy,
            unit,
        ),
    }
}

/// After a search of the account in doubt: what Shiprocket holds decides.
fn adopt(order: &OrderSnapshot, account: &str, found: &[super::FoundOrder]) -> Vec<OrderEvent> {
    let live: Vec<_> = live_matches(found, &order.order_id).collect();
    if order.state == OrderState::ShipmentCreated {
        // The AWB call was in doubt: did it assign one?
        return match live
            .iter()
            .find(|f| Some(f.sr_order_id) == order.shipping.sr_order_id)
        {
            Some(ours) => match &ours.awb {
                Some(awb) => vec![OrderEvent::AwbAssigned {
                    awb: awb.clone(),
                    courier: ours.courier.clone().unwrap_or_default(),
                }],
                None => vec![OrderEvent::DoubtCleared {
                    account: account.to_owned(),
                }],
            },
            None => vec![OrderEvent::ShippingManual {
                reason: format!(
                    "Shiprocket order {} is cancelled or gone",
                    order.shipping.sr_order_id.unwrap_or_default()
                ),
            }],
        };
    }
    // Prefer the one that got furthest; the rest are duplicates to cancel.
    let Some(keep) = live
        .iter()
        .find(|f| f.awb.is_some() && f.shipment_id.is_some())
        .or_else(|| live.iter().find(|f| f.shipment_id.is_some()))
    else {
        return match live.first() {
            None => vec![OrderEvent::DoubtCleared {
                account: account.to_owned(),
            }],
            Some(found) => vec![OrderEvent::ShippingManual {
                reason: format!(
                    "Shiprocket order {} exists without a shipment",
                    found.sr_order_id
                ),
            }],
        };
    };
    let mut events = vec![OrderEvent::ShipmentCreated {
        account: account.to_owned(),
        sr_order_id: keep.sr_order_id,
        shipment_id: keep.shipment_id.unwrap_or_default(),
        adopted: true,
    }];
    if let Some(awb) = &keep.awb {
        events.push(OrderEvent::AwbAssigned {
            awb: awb.clone(),
            courier: keep.courier.clone().unwrap_or_default(),
        });
    }
    let others: Vec<i64> = live
        .iter()
        .map(|f| f.sr_order_id)
        .filter(|id| *id != keep.sr_order_id)
        .collect();
    if !others.is_empty() {
        events.push(OrderEvent::CleanupScheduled {
            account: account.to_owned(),
            purpose: CleanupPurpose::Duplicate,
            sr_order_ids: others,
            search_first: false,
        });
    }
    events
}

fn failed(
    order: &OrderSnapshot,
    step: &Step,
    failure: &CallFailure,
    now_ms: i64,
    policy: &ShippingPolicy,
    unit: f64,
) -> Vec<OrderEvent> {
    let attempts = order.shipping.attempts;
    let error = failure.message().to_owned();
    if failure.not_attempted() {
        // Nothing happened: the doubt is what it was before this call, which
        // only a search is made under.
        return vec![OrderEvent::ShippingDeferred {
            error,
            next_attempt_at_ms: now_ms,
            not_attempted: true,
            in_doubt: step.call == Call::Search,
        }];
    }
    match failure {
        CallFailure::Refused(message) => vec![OrderEvent::ShippingManual {
            reason: format!("Shiprocket refused the order: {message}"),
        }],
        _ if !policy.backoff.may_retry(attempts) => vec![OrderEvent::ShippingManual {
            reason: format!("gave up after {attempts} attempts; last error: {error}"),
        }],
        _ => vec![OrderEvent::ShippingDeferred {
            error,
            next_attempt_at_ms: now_ms.saturating_add(delay_ms(policy, attempts, unit)),
            not_attempted: false,
            in_doubt: true,
        }],
    }
}

/// A shipping answer for an order that was cancelled or refunded meanwhile:
/// an order Shiprocket created goes on the cleanup of that account.
fn stale_ship_answer(
    order: &OrderSnapshot,
    step: &Step,
    result: &Result<Answer, CallFailure>,
) -> Vec<OrderEvent> {
    let ended = matches!(order.state, OrderState::Cancelled | OrderState::Refunded);
    match result {
        Ok(Answer::Created(created)) if ended => vec![OrderEvent::CleanupScheduled {
            account: step.account.clone(),
            purpose: CleanupPurpose::Cancel,
            sr_order_ids: vec![created.sr_order_id],
            search_first: false,
        }],
        _ => Vec::new(),
    }
}

fn pickup(
    order: &OrderSnapshot,
    result: &Result<Answer, CallFailure>,
    now_ms: i64,
) -> Vec<OrderEvent> {
    if order.state != OrderState::ReadyToShip {
        return Vec::new();
    }
    match result {
        Ok(Answer::Done) => vec![OrderEvent::PickupRequested],
        Err(failure) if failure.not_attempted() => vec![OrderEvent::PickupDeferred {
            error: failure.message().to_owned(),
            next_at_ms: now_ms,
        }],
        Err(failure) => vec![OrderEvent::PickupFailed {
            error: failure.message().to_owned(),
        }],
        Ok(answer) => vec![OrderEvent::PickupFailed {
            error: format!("unexpected answer {answer:?}"),
        }],
    }
}

fn cleanup(
    order: &OrderSnapshot,
    step: &Step,
    result: &Result<Answer, CallFailure>,
    now_ms: i64,
    policy: &ShippingPolicy,
    unit: f64,
) -> Vec<OrderEvent> {
    let account = step.account.clone();
    let Some(pending) = order.shipping.cleanup_on(&account) else {
        return Vec::new();
    };
    match (&step.call, result) {
        (Call::Search, Ok(Answer::Found(found))) => {
            // A duplicate check never cancels the order's own shipment.
            let own = (pending.purpose == CleanupPurpose::Duplicate
                && order.shipping.account.as_deref() == Some(account.as_str()))
            .then_some(order.shipping.sr_order_id)
            .flatten();
            let live = live_matches(found, &order.order_id)
                .map(|f| f.sr_order_id)
                .filter(|id| Some(*id) != own)
                .collect();
            vec![OrderEvent::CleanupSearched { account, live }]
        }
        (Call::Cancel { sr_order_ids }, Ok(_)) => {
            let sr_order_ids = sr_order_ids.clone();
            vec![match pending.purpose {
                CleanupPurpose::Cancel => OrderEvent::ShiprocketCancelled {
                    account,
                    sr_order_ids,
                },
                CleanupPurpose::Duplicate => OrderEvent::DuplicateCancelled {
                    account,
                    sr_order_ids,
                },
            }]
        }
        (Call::Cancel { .. }, Err(CallFailure::Refused(error))) => {
            vec![OrderEvent::ShiprocketCancelFailed {
                account,
                error: error.clone(),
            }]
        }
        (_, Err(failure)) if failure.not_attempted() => vec![OrderEvent::CleanupDeferred {
            account,
            error: failure.message().to_owned(),
            next_at_ms: now_ms,
            search_first: pending.search_first,
            not_attempted: true,
        }],
        (_, outcome) => {
            let error = match outcome {
                Err(failure) => failure.message().to_owned(),
                Ok(answer) => format!("unexpected answer {answer:?}"),
            };
            // Did the cancel happen? A search will tell.
            vec![OrderEvent::CleanupDeferred {
                account,
                error,
                next_at_ms: now_ms.saturating_add(delay_ms(policy, pending.attempts, unit)),
                search_first: true,
                not_attempted: false,
            }]
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::fixtures::{policy, queued, record, Board, NOW};
    use super::super::{next_call, AssignedAwb, CreatedShipment, FoundOrder, Plan};
    use super::*;
    use crate::domain::order::{decide, Command, Outcome};

    fn found(id: i64, shipment: Option<i64>, awb: Option<&str>, cancelled: bool) -> FoundOrder {
        FoundOrder {
            sr_order_id: id,
            channel_order_id: "XVC-Q1".into(),
            cancelled,
            shipment_id: shipment,
            awb: awb.map(str::to_owned),
            courier: awb.map(|_| "Delhivery".to_owned()),
        }
    }

    /// Plans on `account`, records the plan's events, then the answer's.
    fn turn(
        order: &mut OrderSnapshot,
        account: &str,
        result: Result<Answer, CallFailure>,
        max_attempts: u32,
    ) -> Step {
        // Planned late enough for any backoff to have ended.
        let plan_at = NOW + 30 * 86_400_000;
        let Plan::Call { events, step } = next_call(
            order,
            account,
            &Board::default(),
            plan_at,
            &policy(max_attempts),
        ) else {
            panic!("no call planned for {order:?}")
        };
        record(order, &events, NOW);
        let events = after_call(order, &step, &result, NOW, &policy(max_attempts), 0.0);
        record(order, &events, NOW);
        step
    }

    #[test]
    fn the_healthy_path_creates_assigns_and_asks_for_a_pickup() {
        let mut order = queued();
        let created = CreatedShipment {
            sr_order_id: 7,
            shipment_id: 70,
        };
        turn(&mut order, "a", Ok(Answer::Created(created)), 8);
        assert_eq!(order.state, OrderState::ShipmentCreated);
        let awb = AssignedAwb {
            awb_code: "AWB7".into(),
            courier_name: "Delhivery".into(),
        };
        turn(&mut order, "a", Ok(Answer::Awb(awb)), 8);
        assert_eq!(order.state, OrderState::ReadyToShip);
        let step = turn(&mut order, "a", Ok(Answer::Done), 8);
        assert_eq!(step.purpose, Purpose::Pickup);
        assert_eq!(order.shipping.pickup_due_at_ms, None);
        assert_eq!(
            order.shipping.attempts, 2,
            "the pickup is not a shipping attempt"
        );
    }

    #[test]
    fn an_unknown_create_is_searched_and_a_live_match_adopted() {
        let mut order = queued();
        turn(
            &mut order,
            "a",
            Err(CallFailure::Unknown("HTTP 502".into())),
            8,
        );
        assert!(order.shipping.in_doubt);
        let step = turn(
            &mut order,
            "a",
            Ok(Answer::Found(vec![
                found(5, Some(50), None, true),
                found(6, Some(60), Some("AWB6"), false),
                found(8, Some(80), None, false),
            ])),
            8,
        );
        assert_eq!(step.call, Call::Search);
        assert_eq!(order.state, OrderState::ReadyToShip);
        assert_eq!(order.shipping.sr_order_id, Some(6));
        let extra = order
            .shipping
            .cleanup_on("a")
            .expect("the duplicate is cleaned up");
        assert_eq!(extra.sr_order_ids, vec![8]);
        assert!(!extra.search_first);
    }

    #[test]
    fn a_throttled_or_failed_search_keeps_the_doubt() {
        let mut order = queued();
        turn(
            &mut order,
            "a",
            Err(CallFailure::Unknown("timeout".into())),
            8,
        );
        turn(
            &mut order,
            "a",
            Err(CallFailure::Throttled("429".into())),
            8,
        );
        assert!(order.shipping.in_doubt, "a 429 never clears doubt");
        assert_eq!(order.shipping.attempts, 1, "a 429 is not an attempt");
        turn(
            &mut order,
            "a",
            Err(CallFailure::Unknown("HTTP 503".into())),
            8,
        );
        assert!(order.shipping.in_doubt);
        assert_eq!(order.shipping.attempts, 2, "a failed search is an attempt");
        turn(&mut order, "a", Ok(Answer::Found(vec![])), 8);
        assert!(
            !order.shipping.in_doubt,
            "only an answered search clears it"
        );
    }

    #[test]
    fn a_throttled_create_was_never_made() {
        let mut order = queued();
        turn(
            &mut order,
            "a",
            Err(CallFailure::Throttled("429".into())),
            8,
        );
        assert!(!order.shipping.in_doubt);
        assert_eq!(order.shipping.attempts, 0);
    }

    #[test]
    fn every_failing_call_counts_until_an_operator_takes_over() {
        let mut order = queued();
        let mut calls = 0;
        while order.state == OrderState::AwaitingShipment {
            turn(
                &mut order,
                "a",
                Err(CallFailure::Unknown("HTTP 503".into())),
                3,
            );
            calls += 1;
            assert!(calls <= 3, "more calls than max_attempts");
        }
        assert_eq!(order.state, OrderState::ManualRequired);
        assert_eq!(calls, 3);
    }

    #[test]
    fn a_refusal_goes_to_an_operator_with_shiprockets_message() {
        let mut order = queued();
        turn(
            &mut order,
            "a",
            Err(CallFailure::Refused("pickup_location: wrong".into())),
            8,
        );
        assert_eq!(order.state, OrderState::ManualRequired);
        assert!(order
            .shipping
            .last_error
            .as_deref()
            .is_some_and(|e| e.contains("pickup_location")));
    }

    #[test]
    fn a_cancellation_is_retried_until_shiprocket_confirms() {
        let mut order = queued();
        let created = CreatedShipment {
            sr_order_id: 7,
            shipment_id: 70,
        };
        turn(&mut order, "a", Ok(Answer::Created(created)), 8);
        let Outcome::Record(events) = decide(&order, &Command::Cancel) else {
            panic!()
        };
        record(&mut order, &events, NOW);
        assert_eq!(order.state, OrderState::Cancelled);
        let step = turn(
            &mut order,
            "a",
            Err(CallFailure::Unknown("HTTP 500".into())),
            8,
        );
        assert_eq!(
            step.call,
            Call::Cancel {
                sr_order_ids: vec![7]
            }
        );
        let pending = order.shipping.cleanup_on("a").expect("still pending");
        assert!(pending.search_first && pending.next_at_ms > NOW);
        // The search finds it cancelled after all: done.
        turn(
            &mut order,
            "a",
            Ok(Answer::Found(vec![found(7, Some(70), None, true)])),
            8,
        );
        assert!(order.shipping.cleanups.is_empty());
    }

    #[test]
    fn a_refused_cancel_is_final() {
        let mut order = queued();
        let created = CreatedShipment {
            sr_order_id: 7,
            shipment_id: 70,
        };
        turn(&mut order, "a", Ok(Answer::Created(created)), 8);
        let Outcome::Record(events) = decide(&order, &Command::Cancel) else {
            panic!()
        };
        record(&mut order, &events, NOW);
        let before = order.version;
        turn(
            &mut order,
            "a",
            Err(CallFailure::Refused("already picked up".into())),
            8,
        );
        assert!(order.shipping.cleanups.is_empty());
        assert_eq!(order.version, before + 2);
    }

    #[test]
    fn a_create_answered_after_a_cancellation_is_cancelled_too() {
        let mut order = queued();
        // The create is journaled and in flight when the operator cancels.
        let Plan::Call { events, step } =
            next_call(&order, "a", &Board::default(), NOW, &policy(8))
        else {
            panic!()
        };
        record(&mut order, &events, NOW);
        let Outcome::Record(events) = decide(&order, &Command::Cancel) else {
            panic!()
        };
        record(&mut order, &events, NOW);
        let pending = order.shipping.cleanup_on("a").expect("in doubt: a cleanup");
        assert!(pending.search_first);
        let created = Ok(Answer::Created(CreatedShipment {
            sr_order_id: 9,
            shipment_id: 90,
        }));
        let events = after_call(&order, &step, &created, NOW, &policy(8), 0.0);
        record(&mut order, &events, NOW);
        assert_eq!(order.state, OrderState::Cancelled);
        assert_eq!(
            order
                .shipping
                .cleanup_on("a")
                .expect("pending")
                .sr_order_ids,
            vec![9]
        );
    }

    #[test]
    fn a_duplicate_check_spares_the_order_it_keeps() {
        let mut order = queued();
        let created = CreatedShipment {
            sr_order_id: 7,
            shipment_id: 70,
        };
        turn(&mut order, "a", Ok(Answer::Created(created)), 8);
        let scheduled = OrderEvent::CleanupScheduled {
            account: "a".into(),
            purpose: CleanupPurpose::Duplicate,
            sr_order_ids: vec![],
            search_first: true,
        };
        record(&mut order, &[scheduled], NOW);
        turn(
            &mut order,
            "a",
            Ok(Answer::Found(vec![
                found(7, Some(70), None, false),
                found(8, Some(80), None, false),
            ])),
            8,
        );
        assert_eq!(
            order
                .shipping
                .cleanup_on("a")
                .expect("pending")
                .sr_order_ids,
            vec![8]
        );
    }

    mod exactly_once {
        //! The whole shipping path against a model of two Shiprocket
        //! accounts that fail in every way: whatever happens, no more than
        //! one live Shiprocket order remains once cleanups have run, the
        //! order ready to ship holds exactly that one, and the calls made to
        //! ship it never exceed `max_attempts` counted calls.

        use std::collections::BTreeMap;

        use proptest::prelude::*;

        use super::*;

        #[derive(Debug, Clone, Copy)]
        enum Fate {
            /// Done and answered.
            Ok,
            /// Done, but the answer was lost (502 after the work, a timeout).
            LostAnswer,
            /// Not done: 500 before any work.
            Failed,
            /// 429.
            Throttled,
        }

        fn fate() -> impl Strategy<Value = Fate> {
            prop_oneof![
                3 => Just(Fate::Ok),
                2 => Just(Fate::LostAnswer),
                2 => Just(Fate::Failed),
                1 => Just(Fate::Throttled),
            ]
        }

        #[derive(Default)]
        struct Shiprocket {
            next_id: i64,
            /// sr_order_id → (account, cancelled, awb)
            orders: BTreeMap<i64, (String, bool, Option<String>)>,
        }

        impl Shiprocket {
            fn perform(
                &mut self,
                account: &str,
                call: &Call,
                fate: Fate,
            ) -> Result<Answer, CallFailure> {
                if matches!(fate, Fate::Failed) {
                    return Err(CallFailure::Unknown("HTTP 500".into()));
                }
                if matches!(fate, Fate::Throttled) {
                    return Err(CallFailure::Throttled("HTTP 429".into()));
                }
                let answer = match call {
                    Call::Search => Answer::Found(
                        self.orders
                            .iter()
                            .filter(|(_, (a, _, _))| a == account)
                            .map(|(id, (_, cancelled, awb))| FoundOrder {
                                sr_order_id: *id,
                                channel_order_id: "XVC-Q1".into(),
                                cancelled: *cancelled,
                                shipment_id: Some(id + 1000),
                                awb: awb.clone(),
                                courier: awb.as_ref().map(|_| "C".into()),
                            })
                            .collect(),
                    ),
                    Call::Create => {
                        self.next_id += 1;
                        self.orders
                            .insert(self.next_id, (account.to_owned(), false, None));
                        Answer::Created(CreatedShipment {
                            sr_order_id: self.next_id,
                            shipment_id: self.next_id + 1000,
                        })
                    }
                    Call::AssignAwb { shipment_id } => {
                        let id = shipment_id - 1000;
                        match self.orders.get_mut(&id) {
                            Some((_, false, awb)) => {
                                let code = format!("AWB{id}");
                                *awb = Some(code.clone());
                                Answer::Awb(AssignedAwb {
                                    awb_code: code,
                                    courier_name: "C".into(),
                                })
                            }
                            _ => return Err(CallFailure::Refused("no such shipment".into())),
                        }
                    }
                    Call::Pickup { .. } => Answer::Done,
                    Call::Cancel { sr_order_ids } => {
                        for id in sr_order_ids {
                            if let Some(entry) = self.orders.get_mut(id) {
                                entry.1 = true;
                            }
                        }
                        Answer::Done
                    }
                };
                match fate {
                    Fate::LostAnswer => Err(CallFailure::Unknown("HTTP 502".into())),
                    _ => Ok(answer),
                }
            }

            fn live(&self) -> Vec<i64> {
                self.orders
                    .iter()
                    .filter(|(_, (_, cancelled, _))| !cancelled)
                    .map(|(id, _)| *id)
                    .collect()
            }
        }

        proptest! {
            #[test]
            fn no_duplicate_survives_and_attempts_stay_bounded(
                fates in proptest::collection::vec((fate(), any::<bool>(), any::<bool>()), 1..60),
                cancel_at in proptest::option::of(0usize..60),
                max_attempts in 2u32..8,
            ) {
                let policy = policy(max_attempts);
                let mut order = queued();
                let mut shiprocket = Shiprocket::default();
                let mut now = NOW;
                let mut counted_ship_calls = 0u32;
                // `a` is down for a long stretch on the flag; `b` always answers.
                for (turn_no, (fate, use_b, a_down)) in fates.iter().enumerate() {
                    if cancel_at == Some(turn_no) {
                        if let Outcome::Record(events) = decide(&order, &Command::Cancel) {
                            record(&mut order, &events, now);
                        }
                    }
                    let account = if *use_b { "b" } else { "a" };
                    let board = if *a_down { Board::down("a", now - 700_000) } else { Board::default() };
                    if *a_down && account == "a" {
                        continue;
                    }
                    let Plan::Call { events, step } = next_call(&order, account, &board, now, &policy) else {
                        if let Plan::Record(events) = next_call(&order, account, &board, now, &policy) {
                            record(&mut order, &events, now);
                        }
                        now += 400_000;
                        continue;
                    };
                    record(&mut order, &events, now);
                    let result = shiprocket.perform(account, &step.call, *fate);
                    if step.purpose == Purpose::Ship && !matches!(fate, Fate::Throttled) {
                        counted_ship_calls += 1;
                    }
                    let events = after_call(&order, &step, &result, now, &policy, 0.5);
                    record(&mut order, &events, now);
                    prop_assert!(order.shipping.attempts <= max_attempts);
                    now += 400_000;
                }
                prop_assert!(counted_ship_calls <= max_attempts, "{counted_ship_calls} calls");
                // Then every account answers: cleanups run to the end.
                for _ in 0..40 {
                    let mut called = false;
                    for account in ["a", "b"] {
                        let Plan::Call { events, step } = next_call(&order, account, &Board::default(), now, &policy) else { continue };
                        if step.purpose != Purpose::Cleanup { continue; }
                        record(&mut order, &events, now);
                        let result = shiprocket.perform(account, &step.call, Fate::Ok);
                        let events = after_call(&order, &step, &result, now, &policy, 0.5);
                        record(&mut order, &events, now);
                        called = true;
                    }
                    if !called { break; }
                    now += 400_000;
                }
                prop_assert!(order.shipping.cleanups.is_empty(), "{:?}", order.shipping.cleanups);
                let live = shiprocket.live();
                match order.state {
                    OrderState::Cancelled => prop_assert!(live.is_empty(), "cancelled yet live {live:?}"),
                    OrderState::ReadyToShip | OrderState::ShipmentCreated => {
                        prop_assert_eq!(live, order.shipping.sr_order_id.into_iter().collect::<Vec<_>>());
                    }
                    _ => prop_assert!(live.len() <= 1, "duplicates {live:?} for {:?}", order.state),
                }
            }
        }
    }
}
