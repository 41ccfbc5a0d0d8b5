//! The traffic: shoppers checking out and paying, sent over real HTTP as a
//! storefront and Razorpay would send them, with the fault cases mixed in on a
//! fixed schedule ([`plan`]) so that the summary knows exactly how many of
//! each to expect and can hold the daemon to it.
//!
//! Each order is one checkout (`POST /api/orders`) and, if it got its stock, a
//! signed `payment.captured` webhook for the Razorpay order id the checkout
//! answered with. On schedule, a forged signature goes first, the same webhook
//! is re-sent, or Razorpay's `order.paid` for the same payment follows. One
//! product is scarce, so some checkouts are refused for want of stock.

use std::cell::RefCell;
use std::rc::Rc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use indicatif::ProgressBar;
use serde_json::{json, Value};
use tokio::sync::Notify;

use super::api::{DaemonApi, Signature, WebhookAnswer};
use crate::domain::clock::{Clock, SystemClock};

/// Orders in flight at once, like as many shoppers at the same moment.
pub const CONCURRENCY: usize = 32;

/// A product of the demo store.
#[derive(Debug)]
pub struct Product {
    pub sku: &'static str,
    pub name: &'static str,
    pub unit_price_paise: i64,
    pub weight_kg: f64,
}

/// The store's catalogue. Order `i` buys `CATALOGUE[i % CATALOGUE.len()]`.
pub const CATALOGUE: [Product; 5] = [
    Product {
        sku: "TEE-BLK-M",
        name: "Black tee M",
        unit_price_paise: 74_900,
        weight_kg: 0.25,
    },
    Product {
        sku: "TEE-WHT-L",
        name: "White tee L",
        unit_price_paise: 74_900,
        weight_kg: 0.25,
    },
    Product {
        sku: "MUG-CLASSIC",
        name: "Classic mug",
        unit_price_paise: 39_900,
        weight_kg: 0.4,
    },
    Product {
        sku: "CAP-NAVY",
        name: "Navy cap",
        unit_price_paise: 59_900,
        weight_kg: 0.15,
    },
    Product {
        sku: SCARCE_SKU,
        name: "Limited hoodie",
        unit_price_paise: 249_900,
        weight_kg: 0.7,
    },
];

/// The limited edition: stocked for half of the shoppers who ask for it.
pub const SCARCE_SKU: &str = "HOODIE-LTD";

/// What order `index` does. Pure, so counts can be predicted for any N.
#[derive(Debug, Clone, PartialEq)]
pub struct Plan {
    pub index: usize,
    pub product: usize,
    pub quantity: i64,
    /// A webhook with a forged signature first (expect 400), then the genuine one.
    pub forged_first: bool,
    /// The genuine webhook sent twice with the same event id (expect `duplicate`).
    pub resend: bool,
    /// Razorpay's `order.paid` for the same payment, after `payment.captured`
    /// (a new event, accepted, with no second effect).
    pub order_paid_too: bool,
}

impl Plan {
    pub fn product(&self) -> &'static Product {
        &CATALOGUE[self.product]
    }

    pub fn order_id(&self) -> String {
        format!("DEMO-{:06}", self.index)
    }

    pub fn amount_paise(&self) -> i64 {
        self.product().unit_price_paise * self.quantity
    }

    pub fn is_scarce(&self) -> bool {
        self.product().sku == SCARCE_SKU
    }
}

/// The schedule. Faults fall on orders of the plentiful products only, so
/// each is sent exactly as often as scheduled.
pub fn plan(index: usize) -> Plan {
    let product = index % CATALOGUE.len();
    let scarce = CATALOGUE[product].sku == SCARCE_SKU;
    Plan {
        index,
        product,
        // Scarce units go one per shopper, so refusals can be counted exactly.
        quantity: if !scarce && index.is_multiple_of(3) {
            2
        } else {
            1
        },
        forged_first: index % 20 == 7,
        resend: index % 10 == 3,
        order_paid_too: index % 10 == 8,
    }
}

/// Units of each SKU to put on the shelf for `orders` orders: enough of every
/// product but the scarce one, which gets half of what is asked for.
pub fn stocking(orders: usize) -> Vec<(&'static Product, i64)> {
    CATALOGUE
        .iter()
        .enumerate()
        .map(|(p, product)| {
            let asked: i64 = (0..orders)
                .map(plan)
                .filter(|plan| plan.product == p)
                .map(|plan| plan.quantity)
                .sum();
            let on_hand = if product.sku == SCARCE_SKU {
                asked / 2
            } else {
                asked
            };
            (product, on_hand)
        })
        .collect()
}

/// The storefront's checkout for `plan` (SPEC §5).
pub fn checkout_body(plan: &Plan) -> Value {
    let product = plan.product();
    let customers = [
        (
            "Asha Rao",
            "asha@example.com",
            "9876543210",
            "560001",
            "Bengaluru",
            "Karnataka",
        ),
        (
            "Vikram Nair",
            "vikram@example.com",
            "9812345678",
            "400001",
            "Mumbai",
            "Maharashtra",
        ),
        (
            "Meera Iyer",
            "meera@example.com",
            "9900112233",
            "600001",
            "Chennai",
            "Tamil Nadu",
        ),
    ];
    let (name, email, phone, pincode, city, state) = customers[plan.index % customers.len()];
    json!({
        "order_id": plan.order_id(),
        "razorpay_order_id": format!("order_DEMO{:06}", plan.index),
        "payment_method": "prepaid",
        "currency": "INR",
        "amount_paise": plan.amount_paise(),
        "customer": {"name": name, "email": email, "phone": phone},
        "shipping_address": {"line1": format!("{} MG Road", 1 + plan.index % 90), "line2": "",
                             "city": city, "state": state, "pincode": pincode, "country": "India"},
        "items": [{"sku": product.sku, "name": product.name, "quantity": plan.quantity,
                   "unit_price_paise": product.unit_price_paise, "weight_kg": product.weight_kg}]
    })
}

/// A `payment.captured` event in Razorpay's shape.
pub fn payment_captured(
    payment_id: &str,
    razorpay_order_id: &str,
    amount_paise: i64,
    now_secs: i64,
) -> String {
    json!({
        "entity": "event", "account_id": "acc_DemoStore0001", "event": "payment.captured",
        "contains": ["payment"],
        "payload": {"payment": {"entity": {
            "id": payment_id, "entity": "payment", "amount": amount_paise, "currency": "INR",
            "status": "captured", "order_id": razorpay_order_id, "method": "upi",
            "amount_refunded": 0, "refund_status": null, "captured": true, "notes": [],
            "created_at": now_secs
        }}},
        "created_at": now_secs
    })
    .to_string()
}

/// An `order.paid` event: the same payment, seen through its order.
pub fn order_paid(
    payment_id: &str,
    razorpay_order_id: &str,
    amount_paise: i64,
    now_secs: i64,
) -> String {
    json!({
        "entity": "event", "account_id": "acc_DemoStore0001", "event": "order.paid",
        "contains": ["payment", "order"],
        "payload": {
            "payment": {"entity": {
                "id": payment_id, "entity": "payment", "amount": amount_paise, "currency": "INR",
                "status": "captured", "order_id": razorpay_order_id, "captured": true, "notes": []
            }},
            "order": {"entity": {
                "id": razorpay_order_id, "entity": "order", "amount": amount_paise,
                "amount_paid": amount_paise, "amount_due": 0, "currency": "INR", "status": "paid"
            }}
        },
        "created_at": now_secs
    })
    .to_string()
}

/// How a checkout ended.
#[derive(Debug, Clone, PartialEq)]
pub enum Checkout {
    /// 201: the order exists, stock reserved.
    Created,
    /// 409 `insufficient_stock`: no order, nothing reserved.
    OutOfStock,
    /// Anything else.
    Failed(String),
}

/// What the client saw of one order.
#[derive(Debug, Clone)]
pub struct OrderRecord {
    pub plan: Plan,
    pub checkout: Checkout,
    pub checkout_took: Option<Duration>,
    /// The forged webhook's answer, when one was sent.
    pub forged: Option<WebhookAnswer>,
    /// The genuine `payment.captured`'s answer.
    pub payment: Option<WebhookAnswer>,
    pub payment_took: Option<Duration>,
    /// The same webhook re-sent.
    pub resend: Option<WebhookAnswer>,
    /// The later `order.paid`.
    pub order_paid: Option<WebhookAnswer>,
}

impl OrderRecord {
    /// HTTP requests this order cost.
    pub fn requests(&self) -> usize {
        usize::from(self.checkout_took.is_some())
            + [&self.forged, &self.payment, &self.resend, &self.order_paid]
                .iter()
                .filter(|a| a.is_some())
                .count()
    }
}

/// Shared progress of a run, and the signal for the outage's moment.
pub struct Progress {
    /// Counts orders finished.
    pub bar: ProgressBar,
    /// Orders handed to a worker so far: the next order's index.
    pub started: AtomicUsize,
    /// Notified once, when order number `outage_at` starts.
    pub outage: Notify,
    pub outage_at: usize,
}

/// Sends `orders` orders at [`CONCURRENCY`] and returns what each got, in order.
pub async fn run(api: &DaemonApi, orders: usize, progress: Arc<Progress>) -> Vec<OrderRecord> {
    let records = Rc::new(RefCell::new(Vec::with_capacity(orders)));
    let workers: Vec<_> = (0..CONCURRENCY.min(orders))
        .map(|_| {
            let (api, progress, records) =
                (api.clone(), Arc::clone(&progress), Rc::clone(&records));
            actix_web::rt::spawn(async move {
                loop {
                    let index = progress.started.fetch_add(1, Ordering::SeqCst);
                    if index >= orders {
                        break;
                    }
                    if index == progress.outage_at {
                        progress.outage.notify_one();
                    }
                    let record = one_order(&api, plan(index)).await;
                    records.borrow_mut().push(record);
                    progress.bar.inc(1);
                }
            })
        })
        .collect();
    for worker in workers {
        // A worker cannot panic short of a bug; its orders are then missing
        // from the records, and the summary says so.
        let _ = worker.await;
    }
    let mut records = records.take();
    records.sort_by_key(|r| r.plan.index);
    records
}

async fn one_order(api: &DaemonApi, plan: Plan) -> OrderRecord {
    let mut record = OrderRecord {
        plan,
        checkout: Checkout::Failed("not sent".into()),
        checkout_took: None,
        forged: None,
        payment: None,
        payment_took: None,
        resend: None,
        order_paid: None,
    };
    let plan = &record.plan;
    let razorpay_order_id = match api.checkout(&checkout_body(plan)).await {
        Ok(timed) => {
            record.checkout_took = Some(timed.took);
            let (status, body) = timed.value;
            match (status.as_u16(), body["error"].as_str()) {
                (201, _) => match body["razorpay_order_id"].as_str() {
                    Some(id) => {
                        record.checkout = Checkout::Created;
                        id.to_owned()
                    }
                    None => {
                        record.checkout =
                            Checkout::Failed(format!("201 without razorpay_order_id: {body}"));
                        return record;
                    }
                },
                (409, Some("insufficient_stock")) => {
                    record.checkout = Checkout::OutOfStock;
                    return record;
                }
                (status, _) => {
                    record.checkout = Checkout::Failed(format!("HTTP {status}: {body}"));
                    return record;
                }
            }
        }
        Err(e) => {
            record.checkout = Checkout::Failed(e.to_string());
            return record;
        }
    };
    let payment_id = format!("pay_DEMO{:06}", plan.index);
    let now = SystemClock.now_secs();
    let captured = payment_captured(&payment_id, &razorpay_order_id, plan.amount_paise(), now);
    let event_id = format!("evt_DEMO{:06}_captured", plan.index);
    if plan.forged_first {
        let answer = api
            .razorpay_webhook(&captured, &event_id, Signature::Forged)
            .await;
        record.forged = Some(answer.value);
    }
    let answer = api
        .razorpay_webhook(&captured, &event_id, Signature::Genuine)
        .await;
    record.payment = Some(answer.value);
    record.payment_took = Some(answer.took);
    if plan.resend {
        let answer = api
            .razorpay_webhook(&captured, &event_id, Signature::Genuine)
            .await;
        record.resend = Some(answer.value);
    }
    if plan.order_paid_too {
        let paid = order_paid(&payment_id, &razorpay_order_id, plan.amount_paise(), now);
        let event_id = format!("evt_DEMO{:06}_paid", plan.index);
        let answer = api
            .razorpay_webhook(&paid, &event_id, Signature::Genuine)
            .await;
        record.order_paid = Some(answer.value);
    }
    record
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::checkout;

    #[test]
    fn every_planned_checkout_is_valid() {
        for index in 0..60 {
            let body = checkout_body(&plan(index));
            assert!(checkout::validate(&body).is_ok(), "{body}");
        }
    }

    #[test]
    fn faults_never_fall_on_the_scarce_product() {
        for index in 0..10_000 {
            let plan = plan(index);
            if plan.is_scarce() {
                assert!(!plan.forged_first && !plan.resend && !plan.order_paid_too);
                assert_eq!(plan.quantity, 1);
            }
        }
    }

    #[test]
    fn the_scarce_product_is_stocked_for_half_its_asks_and_the_rest_fully() {
        let stock = stocking(1000);
        let scarce = stock.iter().find(|(p, _)| p.sku == SCARCE_SKU).map(|s| s.1);
        assert_eq!(scarce, Some(100), "200 of 1000 shoppers ask for it");
        let asked_tee: i64 = (0..1000)
            .map(plan)
            .filter(|p| p.product().sku == "TEE-BLK-M")
            .map(|p| p.quantity)
            .sum();
        let tee = stock
            .iter()
            .find(|(p, _)| p.sku == "TEE-BLK-M")
            .map(|s| s.1);
        assert_eq!(tee, Some(asked_tee));
        // One order still finds a shelf.
        assert!(stocking(1).iter().all(|(_, n)| *n >= 0));
    }

    #[test]
    fn the_schedule_has_the_advertised_shares() {
        let plans: Vec<_> = (0..1000).map(plan).collect();
        assert_eq!(plans.iter().filter(|p| p.forged_first).count(), 50);
        assert_eq!(plans.iter().filter(|p| p.resend).count(), 100);
        assert_eq!(plans.iter().filter(|p| p.order_paid_too).count(), 100);
    }

    #[test]
    fn webhook_bodies_carry_the_order_and_amount() {
        let body: Value = serde_json::from_str(&payment_captured(
            "pay_1",
            "order_1",
            149_800,
            1_700_000_000,
        ))
        .unwrap();
        assert_eq!(body["payload"]["payment"]["entity"]["order_id"], "order_1");
        assert_eq!(body["payload"]["payment"]["entity"]["amount"], 149_800);
        let body: Value =
            serde_json::from_str(&order_paid("pay_1", "order_1", 149_800, 1_700_000_000)).unwrap();
        assert_eq!(body["event"], "order.paid");
        assert_eq!(body["payload"]["order"]["entity"]["id"], "order_1");
    }
}
