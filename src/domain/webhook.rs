//! What a signed Razorpay webhook is, and what dropshipd does with it: its dedup
//! key, and whether it is usable or belongs in the dead-letter queue (SPEC §4).
//!
//! Classification is pure: the body bytes and the current time in, a verdict out.
//! Only the envelope is required of every event; the entities that later stages
//! act on (`payment.captured`, `order.paid`, `payment.failed`, `refund.processed`)
//! must also have the fields those stages read, so a malformed payment event is
//! quarantined at the door rather than failing deep in order processing. Unknown
//! fields are ignored everywhere, and `notes` may be `[]` or an object.

use serde::Deserialize;
use serde_json::value::RawValue;
use sha2::{Digest, Sha256};

/// Events may be stamped a little ahead of our clock; beyond this they are suspect.
pub const FUTURE_SKEW_SECS: i64 = 300;

/// Longest `X-Razorpay-Event-Id` taken as a dedup key; longer values are not ids.
pub const MAX_EVENT_ID_LEN: usize = 128;

/// The key that makes a delivery a duplicate: Razorpay's event id, the same on
/// every retry, or the body's SHA-256 when no id was sent.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct DedupKey(String);

impl DedupKey {
    pub fn from_delivery(event_id_header: Option<&str>, body: &[u8]) -> Self {
        match event_id_header.map(str::trim) {
            Some(id)
                if !id.is_empty()
                    && id.len() <= MAX_EVENT_ID_LEN
                    && id.bytes().all(|b| b.is_ascii_graphic()) =>
            {
                Self(id.to_owned())
            }
            _ => Self(format!("sha256:{}", hex::encode(Sha256::digest(body)))),
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    pub fn into_string(self) -> String {
        self.0
    }
}

/// The Razorpay events dropshipd acts on; everything else is stored and acknowledged.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ActedEvent {
    PaymentCaptured,
    OrderPaid,
    PaymentFailed,
    RefundProcessed,
}

impl ActedEvent {
    pub fn from_name(name: &str) -> Option<Self> {
        match name {
            "payment.captured" => Some(Self::PaymentCaptured),
            "order.paid" => Some(Self::OrderPaid),
            "payment.failed" => Some(Self::PaymentFailed),
            "refund.processed" => Some(Self::RefundProcessed),
            _ => None,
        }
    }
}

/// Why a signed event went to the dead-letter queue. The codes are stable.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum QuarantineReason {
    NotJson,
    UnknownShape,
    TooOld,
    FromTheFuture,
}

impl QuarantineReason {
    pub fn code(self) -> &'static str {
        match self {
            Self::NotJson => "not_json",
            Self::UnknownShape => "unknown_shape",
            Self::TooOld => "too_old",
            Self::FromTheFuture => "created_in_future",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Quarantine {
    pub reason: QuarantineReason,
    /// A human explanation; never contains body content beyond field names.
    pub detail: String,
}

/// A usable event: what the inbox records beside the raw body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WebhookEvent {
    /// The `event` field, e.g. `payment.captured`.
    pub name: String,
    pub acted: Option<ActedEvent>,
    /// Unix seconds of the event, from the envelope.
    pub created_at: i64,
    /// The Razorpay order the event is about, when it names one.
    pub razorpay_order_id: Option<String>,
    pub razorpay_payment_id: Option<String>,
}

#[derive(Deserialize)]
struct Envelope<'a> {
    entity: &'a str,
    event: &'a str,
    created_at: i64,
    #[serde(borrow)]
    payload: &'a RawValue,
}

#[derive(Deserialize)]
struct Wrapped<T> {
    entity: T,
}

/// The fields of a payment entity that order processing reads.
#[derive(Deserialize)]
struct PaymentFields {
    id: String,
    amount: i64,
    currency: String,
    order_id: Option<String>,
    #[serde(default)]
    amount_refunded: i64,
}

#[derive(Deserialize)]
struct OrderFields {
    id: String,
}

#[derive(Deserialize)]
struct RefundFields {
    id: String,
    amount: i64,
    payment_id: String,
}

#[derive(Deserialize)]
struct PaymentPayload {
    payment: Wrapped<PaymentFields>,
}

#[derive(Deserialize)]
struct OrderPaidPayload {
    payment: Wrapped<PaymentFields>,
    order: Wrapped<OrderFields>,
}

#[derive(Deserialize)]
struct RefundPayload {
    refund: Wrapped<RefundFields>,
    payment: Wrapped<PaymentFields>,
}

/// What an acted-on event says about a payment, for order processing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PaymentFacts {
    /// `payment.captured` or `order.paid`: money taken.
    Captured {
        payment_id: String,
        razorpay_order_id: Option<String>,
        amount_paise: i64,
        currency: String,
    },
    Failed {
        payment_id: String,
        razorpay_order_id: Option<String>,
    },
    /// `refund.processed`, with the payment's cumulative refunded amount.
    Refunded {
        refund_id: String,
        amount_paise: i64,
        payment_id: String,
        razorpay_order_id: Option<String>,
        payment_amount_paise: i64,
        payment_refunded_paise: i64,
    },
}

impl PaymentFacts {
    pub fn razorpay_order_id(&self) -> Option<&str> {
        match self {
            Self::Captured {
                razorpay_order_id, ..
            }
            | Self::Failed {
                razorpay_order_id, ..
            }
            | Self::Refunded {
                razorpay_order_id, ..
            } => razorpay_order_id.as_deref(),
        }
    }
}

fn acted_facts(acted: ActedEvent, payload: &str) -> Result<PaymentFacts, serde_json::Error> {
    Ok(match acted {
        ActedEvent::PaymentCaptured => {
            let p: PaymentPayload = serde_json::from_str(payload)?;
            let payment = p.payment.entity;
            PaymentFacts::Captured {
                payment_id: payment.id,
                razorpay_order_id: payment.order_id,
                amount_paise: payment.amount,
                currency: payment.currency,
            }
        }
        ActedEvent::OrderPaid => {
            let p: OrderPaidPayload = serde_json::from_str(payload)?;
            let payment = p.payment.entity;
            PaymentFacts::Captured {
                payment_id: payment.id,
                razorpay_order_id: Some(p.order.entity.id),
                amount_paise: payment.amount,
                currency: payment.currency,
            }
        }
        ActedEvent::PaymentFailed => {
            let p: PaymentPayload = serde_json::from_str(payload)?;
            PaymentFacts::Failed {
                payment_id: p.payment.entity.id,
                razorpay_order_id: p.payment.entity.order_id,
            }
        }
        ActedEvent::RefundProcessed => {
            let p: RefundPayload = serde_json::from_str(payload)?;
            let payment = p.payment.entity;
            PaymentFacts::Refunded {
                refund_id: p.refund.entity.id,
                amount_paise: p.refund.entity.amount,
                payment_id: p.refund.entity.payment_id,
                razorpay_order_id: payment.order_id,
                payment_amount_paise: payment.amount,
                payment_refunded_paise: payment.amount_refunded,
            }
        }
    })
}

/// The payment facts of a stored, accepted body; `None` for events not acted on.
pub fn payment_facts(body: &[u8]) -> Option<PaymentFacts> {
    let envelope: Envelope<'_> = serde_json::from_slice(body).ok()?;
    let acted = ActedEvent::from_name(envelope.event)?;
    acted_facts(acted, envelope.payload.get()).ok()
}

fn quarantine(reason: QuarantineReason, detail: impl Into<String>) -> Quarantine {
    Quarantine {
        reason,
        detail: detail.into(),
    }
}

fn shape_error(e: serde_json::Error) -> Quarantine {
    quarantine(QuarantineReason::UnknownShape, format!("{e}"))
}

/// Decides whether a signed body is usable at `now_secs`, with events older than
/// `accept_window_secs` quarantined.
pub fn classify(
    body: &[u8],
    now_secs: i64,
    accept_window_secs: i64,
) -> Result<WebhookEvent, Quarantine> {
    let envelope: Envelope<'_> = serde_json::from_slice(body).map_err(|e| {
        if e.is_syntax() || e.is_eof() {
            quarantine(QuarantineReason::NotJson, format!("body is not JSON: {e}"))
        } else {
            shape_error(e)
        }
    })?;
    if envelope.entity != "event" || envelope.event.is_empty() {
        return Err(quarantine(
            QuarantineReason::UnknownShape,
            "not a Razorpay event envelope (entity must be \"event\" with an event name)",
        ));
    }
    let age = now_secs - envelope.created_at;
    if age > accept_window_secs {
        return Err(quarantine(
            QuarantineReason::TooOld,
            format!("created_at is {age} s ago, beyond the {accept_window_secs} s accept window"),
        ));
    }
    if -age > FUTURE_SKEW_SECS {
        return Err(quarantine(
            QuarantineReason::FromTheFuture,
            format!("created_at is {} s in the future", -age),
        ));
    }

    let acted = ActedEvent::from_name(envelope.event);
    let payload = envelope.payload.get();
    let (razorpay_order_id, razorpay_payment_id) = match acted {
        Some(acted) => {
            let facts = acted_facts(acted, payload).map_err(shape_error)?;
            if let PaymentFacts::Refunded { payment_id, .. } = &facts {
                let refund_payment: RefundPayload =
                    serde_json::from_str(payload).map_err(shape_error)?;
                if refund_payment.payment.entity.id != *payment_id {
                    return Err(quarantine(
                        QuarantineReason::UnknownShape,
                        "refund.payment_id does not match payment.id",
                    ));
                }
            }
            let payment_id = match &facts {
                PaymentFacts::Captured { payment_id, .. }
                | PaymentFacts::Failed { payment_id, .. }
                | PaymentFacts::Refunded { payment_id, .. } => payment_id.clone(),
            };
            (
                facts.razorpay_order_id().map(str::to_owned),
                Some(payment_id),
            )
        }
        None => {
            if !payload.trim_start().starts_with('{') {
                return Err(quarantine(
                    QuarantineReason::UnknownShape,
                    "payload is not an object",
                ));
            }
            (None, None)
        }
    };
    Ok(WebhookEvent {
        name: envelope.event.to_owned(),
        acted,
        created_at: envelope.created_at,
        razorpay_order_id,
        razorpay_payment_id,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: i64 = 1_732_520_500;
    const WINDOW: i64 = 1_296_000;

    fn captured(created_at: i64) -> String {
        format!(
            r#"{{"entity":"event","account_id":"acc_X","event":"payment.captured","contains":["payment"],
            "payload":{{"payment":{{"entity":{{"id":"pay_1","entity":"payment","amount":129900,"currency":"INR",
            "status":"captured","order_id":"order_1","notes":[],"error_code":null,"fee":2598,
            "brand_new_field":{{"x":1}}}}}}}},"created_at":{created_at}}}"#
        )
    }

    #[test]
    fn dedup_key_is_the_event_id_header_or_the_body_hash() {
        assert_eq!(
            DedupKey::from_delivery(Some("evt_abc"), b"{}").as_str(),
            "evt_abc"
        );
        assert_eq!(
            DedupKey::from_delivery(Some("  evt_abc "), b"{}").as_str(),
            "evt_abc"
        );
        let hashed = DedupKey::from_delivery(None, b"{}");
        assert_eq!(
            hashed.as_str(),
            "sha256:44136fa355b3678a1146ad16f7e8649e94fb4fc21fe77e8310c060f61caaff8a"
        );
        assert_eq!(DedupKey::from_delivery(Some(""), b"{}"), hashed);
        assert_eq!(DedupKey::from_delivery(Some("bad id"), b"{}"), hashed);
        assert_ne!(DedupKey::from_delivery(None, b"{ }"), hashed);
        assert_eq!(
            DedupKey::from_delivery(Some(&"e".repeat(129)), b"{}"),
            hashed
        );
    }

    #[test]
    fn payment_captured_is_usable_and_names_its_order() {
        let event = classify(captured(NOW - 5).as_bytes(), NOW, WINDOW).unwrap();
        assert_eq!(event.name, "payment.captured");
        assert_eq!(event.acted, Some(ActedEvent::PaymentCaptured));
        assert_eq!(event.razorpay_order_id.as_deref(), Some("order_1"));
        assert_eq!(event.razorpay_payment_id.as_deref(), Some("pay_1"));
        assert_eq!(event.created_at, NOW - 5);
    }

    #[test]
    fn reference_samples_classify() {
        let order_paid = r#"{"entity":"event","account_id":"acc_Dsh0pTest0001","event":"order.paid","contains":["payment","order"],
 "payload":{
  "payment":{"entity":{"id":"pay_Q1aAuth000001","entity":"payment","amount":129900,"currency":"INR",
   "status":"captured","order_id":"order_Q1aOrder00001","method":"upi","captured":true,"amount_refunded":0,
   "refund_status":null,"email":"asha.rao@example.in","contact":"+919812345678","notes":{"ds_order":"DS-1042"},
   "fee":2598,"tax":396,"error_code":null,"created_at":1732520400}},
  "order":{"entity":{"id":"order_Q1aOrder00001","entity":"order","amount":129900,"amount_paid":129900,
   "amount_due":0,"currency":"INR","receipt":"DS-1042","offer_id":null,"status":"paid","attempts":2,
   "notes":{"ds_order":"DS-1042"},"created_at":1732520050}}},
 "created_at":1732520406}"#;
        let event = classify(order_paid.as_bytes(), NOW, WINDOW).unwrap();
        assert_eq!(event.acted, Some(ActedEvent::OrderPaid));
        assert_eq!(
            event.razorpay_order_id.as_deref(),
            Some("order_Q1aOrder00001")
        );

        let refund = r#"{"entity":"event","account_id":"acc_Dsh0pTest0001","event":"refund.processed","contains":["refund","payment"],
 "payload":{
  "refund":{"entity":{"id":"rfnd_Q1bRefund00001","entity":"refund","amount":30000,"currency":"INR",
   "payment_id":"pay_Q1aAuth000001","notes":{"reason":"item_missing"},"status":"processed"}},
  "payment":{"entity":{"id":"pay_Q1aAuth000001","entity":"payment","amount":129900,"currency":"INR",
   "status":"captured","order_id":"order_Q1aOrder00001","amount_refunded":30000,"refund_status":"partial","notes":[]}}},
 "created_at":1732520400}"#;
        let event = classify(refund.as_bytes(), NOW, WINDOW).unwrap();
        assert_eq!(event.acted, Some(ActedEvent::RefundProcessed));

        let authorized = r#"{"entity":"event","event":"payment.authorized","contains":["payment"],"payload":{"payment":{"entity":{"id":"pay_1"}}},"created_at":1732520405}"#;
        let event = classify(authorized.as_bytes(), NOW, WINDOW).unwrap();
        assert_eq!(event.acted, None);
        assert_eq!(event.name, "payment.authorized");
    }

    #[test]
    fn payment_facts_read_what_orders_need() {
        let facts = payment_facts(captured(NOW).as_bytes()).unwrap();
        assert_eq!(
            facts,
            PaymentFacts::Captured {
                payment_id: "pay_1".into(),
                razorpay_order_id: Some("order_1".into()),
                amount_paise: 129_900,
                currency: "INR".into(),
            }
        );
        assert_eq!(
            payment_facts(
                br#"{"entity":"event","event":"payment.authorized","payload":{},"created_at":1}"#
            ),
            None
        );
    }

    #[test]
    fn unusable_bodies_are_quarantined_with_a_reason() {
        let reason = |body: &str| classify(body.as_bytes(), NOW, WINDOW).unwrap_err().reason;
        assert_eq!(reason("not json"), QuarantineReason::NotJson);
        assert_eq!(reason(r#"{"entity":"event""#), QuarantineReason::NotJson);
        assert_eq!(reason("[1,2]"), QuarantineReason::UnknownShape);
        assert_eq!(
            reason(r#"{"hello":"world"}"#),
            QuarantineReason::UnknownShape
        );
        assert_eq!(
            reason(r#"{"entity":"payment","event":"x","payload":{},"created_at":1732520400}"#),
            QuarantineReason::UnknownShape
        );
        // An acted-on event without the fields processing needs.
        assert_eq!(
            reason(
                r#"{"entity":"event","event":"payment.captured","payload":{"payment":{"entity":{"id":"pay_1"}}},"created_at":1732520400}"#
            ),
            QuarantineReason::UnknownShape
        );
        // Amounts are integer paise; a float is not a Razorpay amount.
        assert_eq!(
            reason(&captured(NOW).replace("129900", "1299.00")),
            QuarantineReason::UnknownShape
        );
    }

    #[test]
    fn accept_window_and_future_skew() {
        let at = |created: i64| classify(captured(created).as_bytes(), NOW, WINDOW);
        assert!(at(NOW - WINDOW).is_ok());
        assert_eq!(
            at(NOW - WINDOW - 1).unwrap_err().reason,
            QuarantineReason::TooOld
        );
        assert!(at(NOW + FUTURE_SKEW_SECS).is_ok());
        assert_eq!(
            at(NOW + FUTURE_SKEW_SECS + 1).unwrap_err().reason,
            QuarantineReason::FromTheFuture
        );
    }
}
