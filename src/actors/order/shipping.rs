//! The order's side of a gateway's turn (SPEC §6 "Exactly once toward
//! Shiprocket", §8): record the answer to its last call, then, if the account
//! holds a permit, ask [`crate::domain::shipping::next_call`] for the next one,
//! journal it and hand it over. One commit for both, and nothing here waits:
//! the gateway makes the call and comes back with its answer.

use super::lifecycle::commit_events;
use super::{Cause, Loaded, OrderDeps, OrderError, OrderReply, PlannedCall, ShippingTurn};
use crate::actors::shipping::ShiprocketCall;
use crate::clients::shiprocket::AdhocOrder;
use crate::domain::checkout::CustomerRecord;
use crate::domain::order::{apply, OrderEvent, OrderSnapshot};
use crate::domain::shipping::{after_call, next_call, Call, Plan, ShipmentRequest, Step};

/// The journal cause of everything a shipping turn records.
const SHIPPING_CAUSE: &str = "shipping";

pub(super) async fn take_turn(
    deps: &OrderDeps,
    loaded: &mut Loaded,
    turn: ShippingTurn,
    paused: bool,
) -> Result<OrderReply, OrderError> {
    let order = loaded.order.as_mut().ok_or(OrderError::NotFound)?;
    let shipping = &deps.shipping;
    let now = deps.clock.now_ms();
    // Planning reads the order as the answer leaves it; the commit applies
    // the same events to the order itself.
    let mut after = order.clone();
    let mut events = Vec::new();
    if let Some((step, result)) = &turn.answered {
        if let Err(failure) = result {
            tracing::warn!(order_id = %order.order_id, account = %step.account, call = step.call.kind().as_str(), error = failure.message(), "Shiprocket call failed");
        }
        let unit = jitter(&order.order_id, after.shipping.attempts);
        let answer = after_call(&after, step, result, now, &shipping.policy, unit);
        record(&mut after, &mut events, answer, now);
    }
    let stopped = paused || shipping.manual.load(std::sync::atomic::Ordering::SeqCst);
    let mut planned = None;
    if turn.may_call && !stopped {
        match next_call(
            &after,
            &turn.account,
            &shipping.queue,
            now,
            &shipping.policy,
        ) {
            Plan::Call {
                events: before,
                step,
            } => match wire_call(deps, &after, loaded.customer.as_ref(), &step).await? {
                Ok(call) => {
                    record(&mut after, &mut events, before, now);
                    planned = Some(PlannedCall { step, call });
                }
                // What Shiprocket would refuse goes to an operator without a call.
                Err(reason) => {
                    let manual = OrderEvent::ShippingManual {
                        reason: format!("Shiprocket would refuse the order: {reason}"),
                    };
                    record(&mut after, &mut events, vec![manual], now);
                }
            },
            Plan::Record(recorded) => record(&mut after, &mut events, recorded, now),
            Plan::Nothing => {}
        }
    }
    if !events.is_empty() {
        commit_events(deps, order, events, &Cause::named(SHIPPING_CAUSE), now).await?;
    }
    Ok(OrderReply::Planned(planned))
}

fn record(
    order: &mut OrderSnapshot,
    journal: &mut Vec<OrderEvent>,
    events: Vec<OrderEvent>,
    now: i64,
) {
    for event in &events {
        apply(order, event, now);
    }
    journal.extend(events);
}

/// The wire form of `step`'s call, or why Shiprocket would refuse it.
async fn wire_call(
    deps: &OrderDeps,
    order: &OrderSnapshot,
    known: Option<&CustomerRecord>,
    step: &Step,
) -> Result<Result<ShiprocketCall, String>, OrderError> {
    Ok(Ok(match &step.call {
        Call::Search => ShiprocketCall::Search(order.order_id.clone()),
        Call::AssignAwb { shipment_id } => ShiprocketCall::AssignAwb(*shipment_id),
        Call::Pickup { shipment_id } => ShiprocketCall::Pickup(*shipment_id),
        Call::Cancel { sr_order_ids } => ShiprocketCall::Cancel(sr_order_ids.clone()),
        Call::Create => {
            let customer = match known {
                Some(customer) => customer.clone(),
                None => {
                    let stored = deps
                        .storage
                        .load_order(&order.order_id)
                        .await?
                        .ok_or(OrderError::NotFound)?;
                    stored.customer
                }
            };
            let mut facts = Vec::with_capacity(order.lines.len());
            for line in &order.lines {
                let item = deps.storage.stock_item(&line.sku).await?;
                facts.push(item.map(|item| item.facts).unwrap_or_default());
            }
            let request =
                ShipmentRequest::for_order(order, &customer, &facts, &deps.shipping.parcel);
            match AdhocOrder::from_request(&request) {
                Ok(adhoc) => ShiprocketCall::Create(Box::new(adhoc)),
                Err(e) => return Ok(Err(e.to_string())),
            }
        }
    }))
}

/// A jitter draw that differs between orders and attempts, without a global RNG.
fn jitter(order_id: &str, attempt: u32) -> f64 {
    use std::hash::{Hash, Hasher};
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    (order_id, attempt, std::time::SystemTime::now()).hash(&mut hasher);
    (hasher.finish() >> 11) as f64 / (1u64 << 53) as f64
}
