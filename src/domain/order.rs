//! The order lifecycle of SPEC §6 as a pure state machine.
//!
//! Three pieces, each exhaustively matched:
//! - [`transition_allowed`]: the table of SPEC §6, the only place that says
//!   which state may follow which;
//! - [`decide`]: given an order's snapshot and a command (a payment, a timer, an
//!   operator), which journal events to record, or why nothing happens;
//! - [`apply`]: how one journal event changes a snapshot. Replaying an order's
//!   journal through `apply` rebuilds its snapshot exactly; `decide` never
//!   mutates, so the journal is the only history.
//!
//! Payments are idempotent by construction: a confirmation for the payment that
//! already paid the order is [`Outcome::AlreadyDone`], so `payment.captured`,
//! `order.paid` and the checkout callback, in any order and any number, pay an
//! order once.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// Where an order is in its life. Snake case on the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OrderState {
    PendingPayment,
    PaymentFailed,
    Expired,
    Paid,
    OutOfStock,
    AwaitingShipment,
    ShipmentCreated,
    ReadyToShip,
    ManualRequired,
    Shipped,
    Delivered,
    Returned,
    Cancelled,
    Refunded,
}

impl OrderState {
    pub const ALL: [OrderState; 14] = [
        Self::PendingPayment,
        Self::PaymentFailed,
        Self::Expired,
        Self::Paid,
        Self::OutOfStock,
        Self::AwaitingShipment,
        Self::ShipmentCreated,
        Self::ReadyToShip,
        Self::ManualRequired,
        Self::Shipped,
        Self::Delivered,
        Self::Returned,
        Self::Cancelled,
        Self::Refunded,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::PendingPayment => "pending_payment",
            Self::PaymentFailed => "payment_failed",
            Self::Expired => "expired",
            Self::Paid => "paid",
            Self::OutOfStock => "out_of_stock",
            Self::AwaitingShipment => "awaiting_shipment",
            Self::ShipmentCreated => "shipment_created",
            Self::ReadyToShip => "ready_to_ship",
            Self::ManualRequired => "manual_required",
            Self::Shipped => "shipped",
            Self::Delivered => "delivered",
            Self::Returned => "returned",
            Self::Cancelled => "cancelled",
            Self::Refunded => "refunded",
        }
    }

    pub fn parse(text: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|s| s.as_str() == text)
    }

    /// Whether the order holds reserved (not yet sold) stock.
    pub fn holds_reservation(self) -> bool {
        matches!(self, Self::PendingPayment | Self::PaymentFailed)
    }

    /// Whether the order waits for its payment (and so may be reconciled with Razorpay).
    pub fn awaits_payment(self) -> bool {
        self.holds_reservation()
    }

    /// Whether Shiprocket calls are still to make before `ready_to_ship`.
    pub fn is_being_shipped(self) -> bool {
        matches!(self, Self::AwaitingShipment | Self::ShipmentCreated)
    }

    /// Whether stock was sold to the order and has not left the warehouse.
    pub fn holds_unshipped_sale(self) -> bool {
        matches!(
            self,
            Self::Paid
                | Self::AwaitingShipment
                | Self::ShipmentCreated
                | Self::ReadyToShip
                | Self::ManualRequired
        )
    }
}

impl std::fmt::Display for OrderState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// SPEC §6's table: may an order in `from` move to `to`?
pub fn transition_allowed(from: OrderState, to: OrderState) -> bool {
    use OrderState::*;
    match from {
        PendingPayment => matches!(to, Paid | PaymentFailed | Expired | Cancelled),
        PaymentFailed => matches!(to, Paid | Expired | Cancelled),
        Expired => matches!(to, Paid | OutOfStock | Cancelled),
        Paid => matches!(to, AwaitingShipment | Cancelled | Refunded),
        OutOfStock => matches!(to, Paid | Cancelled | Refunded),
        AwaitingShipment => matches!(to, ShipmentCreated | ManualRequired | Cancelled | Refunded),
        ShipmentCreated => matches!(to, ReadyToShip | ManualRequired | Cancelled | Refunded),
        ReadyToShip => matches!(to, Shipped | Cancelled | Refunded),
        ManualRequired => matches!(to, AwaitingShipment | Shipped | Cancelled | Refunded),
        Shipped => matches!(to, Delivered | Returned | Refunded),
        Delivered => matches!(to, Returned | Refunded),
        Returned => matches!(to, Refunded),
        Cancelled => matches!(to, Refunded),
        Refunded => false,
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PaymentMethod {
    Prepaid,
    Cod,
}

/// One order line, as reserved and sold.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OrderLine {
    pub sku: String,
    pub name: String,
    pub quantity: u32,
    pub unit_price_paise: i64,
    /// Grams, to keep the snapshot free of floats; absent means "use the SKU's or the default".
    pub weight_g: Option<u32>,
}

/// Everything the state machine knows about an order.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OrderSnapshot {
    pub order_id: String,
    pub razorpay_order_id: Option<String>,
    pub payment_method: PaymentMethod,
    pub currency: String,
    pub amount_paise: i64,
    pub lines: Vec<OrderLine>,
    pub state: OrderState,
    pub reserved_until_ms: Option<i64>,
    /// The payment that paid the order.
    pub payment_id: Option<String>,
    /// What the paying payment has had refunded.
    pub refunded_paise: i64,
    /// Money was taken that must go back and is not back yet: a second
    /// payment, or the paying one of an order cancelled or out of stock.
    pub refund_due: bool,
    /// Every captured payment of the order, by id, with its amount.
    #[serde(default)]
    pub payments: BTreeMap<String, i64>,
    /// Refunded so far, per payment, as Razorpay counts it.
    #[serde(default)]
    pub refunds: BTreeMap<String, i64>,
    /// Every refund journaled, by Razorpay's refund id.
    #[serde(default)]
    pub refund_ids: std::collections::BTreeSet<String>,
    /// Refunds that arrived before their payment was confirmed: applied
    /// once it is.
    #[serde(default)]
    pub pending_refunds: Vec<PendingRefund>,
    pub created_at_ms: i64,
    pub updated_at_ms: i64,
    /// Journal events so far; the next event's sequence number is `version + 1`.
    pub version: u64,
    /// Where the order is on its way to Shiprocket.
    #[serde(default)]
    pub shipping: Shipping,
}

/// A refund waiting for its payment (events out of order).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PendingRefund {
    pub refund_id: String,
    pub payment_id: String,
    pub amount_paise: i64,
    pub payment_amount_paise: i64,
    pub payment_refunded_paise: i64,
}

/// The shipping side of an order (SPEC §6, §8). Everything the shipping
/// decisions of [`crate::domain::shipping`] read, and nothing they could derive.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Shipping {
    /// Calls made toward Shiprocket to ship this order: searches, creates and
    /// AWB assignments. `shipping.max_attempts` bounds it.
    pub attempts: u32,
    /// When the next shipping call is due; none while nothing is due.
    pub next_attempt_at_ms: Option<i64>,
    /// The Shiprocket account that holds (or may hold) the order.
    pub account: Option<String>,
    pub sr_order_id: Option<i64>,
    pub shipment_id: Option<i64>,
    pub awb: Option<String>,
    pub courier: Option<String>,
    pub last_error: Option<String>,
    /// A call to `account` was journaled whose outcome is not known (timeout,
    /// 5xx, crash): only an answered search of that account clears it.
    pub in_doubt: bool,
    /// When the order became paid: the shipping queue's order, oldest first,
    /// and `dropship_shipping_creation_seconds`.
    pub paid_at_ms: Option<i64>,
    /// The newest tracking update applied: (Shiprocket timestamp, status id).
    pub last_tracking: Option<(String, i64)>,
    /// When a courier pickup is to be requested (after the AWB).
    #[serde(default)]
    pub pickup_due_at_ms: Option<i64>,
    /// When the parcel left with the courier (or an operator said so): from
    /// then on a refund or return leaves the units where they are.
    #[serde(default)]
    pub shipped_at_ms: Option<i64>,
    /// Shiprocket orders to cancel, one entry per account: the order's own after
    /// a cancellation or refund, duplicates left on an account it failed over from.
    #[serde(default)]
    pub cleanups: Vec<Cleanup>,
}

impl Shipping {
    /// The pending cleanup on `account`, if any.
    pub fn cleanup_on(&self, account: &str) -> Option<&Cleanup> {
        self.cleanups.iter().find(|c| c.account == account)
    }

    /// Whether Shiprocket has, or may have, an order for this one on its account.
    pub fn may_exist_at_shiprocket(&self) -> bool {
        self.account.is_some() && (self.sr_order_id.is_some() || self.in_doubt)
    }

    fn cleanup_mut(&mut self, account: &str) -> Option<&mut Cleanup> {
        self.cleanups.iter_mut().find(|c| c.account == account)
    }

    fn drop_cleanup(&mut self, account: &str) {
        self.cleanups.retain(|c| c.account != account);
    }
}

/// Why Shiprocket orders are being cancelled on an account.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CleanupPurpose {
    /// Created (or maybe created) on an account the order failed over from.
    Duplicate,
    /// The order was cancelled or refunded here: its shipment must not go out.
    Cancel,
}

/// A durable promise to leave no live Shiprocket order for this channel order
/// id on `account`: search when what exists there is not known, then cancel
/// every live match. Retried with backoff until Shiprocket confirms.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Cleanup {
    pub account: String,
    pub purpose: CleanupPurpose,
    /// Shiprocket order ids known to be live there.
    pub sr_order_ids: Vec<i64>,
    /// What the account holds is not known: search before cancelling.
    pub search_first: bool,
    pub attempts: u32,
    pub next_at_ms: i64,
    pub last_error: Option<String>,
}

/// The Shiprocket calls an order makes, as journaled and as the `call` label
/// of the Shiprocket metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CallKind {
    Search,
    CreateOrder,
    AssignAwb,
    GeneratePickup,
    Cancel,
}

impl CallKind {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Search => "search",
            Self::CreateOrder => "create_order",
            Self::AssignAwb => "assign_awb",
            Self::GeneratePickup => "generate_pickup",
            Self::Cancel => "cancel",
        }
    }
}

/// A journal event: what happened to an order. Serialized into the journal.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum OrderEvent {
    Created {
        razorpay_order_id: Option<String>,
        payment_method: PaymentMethod,
        currency: String,
        amount_paise: i64,
        lines: Vec<OrderLine>,
        reserved_until_ms: Option<i64>,
    },
    /// Payment confirmed; stock sold from the reservation, or allocated anew after expiry.
    Paid {
        payment_id: String,
        reallocated: bool,
    },
    /// Payment confirmed after expiry with no stock left: money to refund.
    PaidOutOfStock {
        payment_id: String,
    },
    PaymentFailed {
        payment_id: Option<String>,
    },
    /// A failed attempt recorded without a state change (already failed, or already paid).
    PaymentFailureNoted {
        payment_id: Option<String>,
    },
    ReservationExpired,
    Cancelled,
    /// A second, different payment for an order already paid or cancelled.
    ExtraPayment {
        payment_id: String,
        amount_paise: i64,
    },
    RefundRecorded {
        refund_id: String,
        amount_paise: i64,
        /// The payment's cumulative refunded amount after this refund.
        payment_refunded_paise: i64,
        /// The paying payment is refunded in full: the order is refunded.
        full: bool,
        /// The payment refunded (absent in journals of older versions: the paying one).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        payment_id: Option<String>,
    },
    /// A refund of a payment not confirmed yet: it waits for it.
    RefundPending {
        refund: PendingRefund,
    },
    /// A full refund the lifecycle does not allow from the order's state: the
    /// money moved, so it is journaled and filed for an operator
    /// (`refund_unapplied` in the dead-letter queue).
    RefundUnapplied {
        refund_id: String,
        payment_id: String,
        amount_paise: i64,
        payment_refunded_paise: i64,
        state: OrderState,
    },
    /// Paid and handed to shipping: the order enters the shipping queue.
    ShippingQueued,
    /// A shipping call is about to be made (recorded before the call).
    ShippingAttempt {
        account: String,
        call: CallKind,
        attempt: u32,
        /// If no outcome is recorded by then (a crash), the step is due again.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        resume_at_ms: Option<i64>,
    },
    /// Shiprocket holds the order (created now, or found by search and adopted).
    ShipmentCreated {
        account: String,
        sr_order_id: i64,
        shipment_id: i64,
        adopted: bool,
    },
    /// A search of the account in doubt answered: it holds no order for this one.
    DoubtCleared {
        account: String,
    },
    AwbAssigned {
        awb: String,
        courier: String,
    },
    /// A call failed or could not be made; try again at `next_attempt_at_ms`.
    ShippingDeferred {
        error: String,
        next_attempt_at_ms: i64,
        /// The call never happened (429, a refused token): it does not count.
        not_attempted: bool,
        /// Whether the order is in doubt on its account after this.
        in_doubt: bool,
    },
    /// The account in doubt stayed unusable for `shipping.failover_after_secs`:
    /// the order goes to another account, and `from` gets a duplicate check.
    FailedOver {
        from: String,
    },
    /// Automatic shipping stopped: an operator decides.
    ShippingManual {
        reason: String,
    },
    /// An operator sent the order back to automatic shipping.
    ShippingRetried,
    PickupRequested,
    /// The pickup request failed; it can be made from Shiprocket's panel.
    PickupFailed {
        error: String,
    },
    PickupDeferred {
        error: String,
        next_at_ms: i64,
    },
    /// Handed to the courier, by tracking or by an operator.
    Shipped {
        awb: Option<String>,
        courier: Option<String>,
        by: String,
    },
    /// A Shiprocket tracking update; `to` is the state it moves the order to, if any.
    Tracking {
        awb: String,
        status_id: i64,
        timestamp: String,
        to: Option<OrderState>,
    },
    /// Shiprocket orders on `account` must be cancelled (recorded with the
    /// cancellation, refund or failover that makes it so).
    CleanupScheduled {
        account: String,
        purpose: CleanupPurpose,
        sr_order_ids: Vec<i64>,
        search_first: bool,
    },
    /// A cleanup call is about to be made (recorded before the call).
    CleanupAttempt {
        account: String,
        call: CallKind,
        attempt: u32,
        resume_at_ms: i64,
    },
    /// A search for the cleanup answered: these orders are live there (none: done).
    CleanupSearched {
        account: String,
        live: Vec<i64>,
    },
    /// Shiprocket confirmed the cancellation of the order's own Shiprocket order.
    ShiprocketCancelled {
        account: String,
        sr_order_ids: Vec<i64>,
    },
    /// Duplicates on an account the order failed over from were cancelled.
    DuplicateCancelled {
        account: String,
        sr_order_ids: Vec<i64>,
    },
    CleanupDeferred {
        account: String,
        error: String,
        next_at_ms: i64,
        search_first: bool,
        not_attempted: bool,
    },
    /// Shiprocket refused the cancellation for good (picked up already, ...):
    /// filed in the dead-letter queue as `shiprocket_cancel_failed`.
    ShiprocketCancelFailed {
        account: String,
        error: String,
    },
}

impl OrderEvent {
    pub fn kind(&self) -> &'static str {
        match self {
            Self::Created { .. } => "created",
            Self::Paid { .. } => "paid",
            Self::PaidOutOfStock { .. } => "paid_out_of_stock",
            Self::PaymentFailed { .. } => "payment_failed",
            Self::PaymentFailureNoted { .. } => "payment_failure_noted",
            Self::ReservationExpired => "reservation_expired",
            Self::Cancelled => "cancelled",
            Self::ExtraPayment { .. } => "extra_payment",
            Self::RefundRecorded { .. } => "refund_recorded",
            Self::RefundPending { .. } => "refund_pending",
            Self::RefundUnapplied { .. } => "refund_unapplied",
            Self::ShippingQueued => "shipping_queued",
            Self::ShippingAttempt { .. } => "shipping_attempt",
            Self::ShipmentCreated { .. } => "shipment_created",
            Self::DoubtCleared { .. } => "doubt_cleared",
            Self::AwbAssigned { .. } => "awb_assigned",
            Self::ShippingDeferred { .. } => "shipping_deferred",
            Self::FailedOver { .. } => "failed_over",
            Self::ShippingManual { .. } => "manual_required",
            Self::ShippingRetried => "shipping_retried",
            Self::PickupRequested => "pickup_requested",
            Self::PickupFailed { .. } => "pickup_failed",
            Self::PickupDeferred { .. } => "pickup_deferred",
            Self::Shipped { .. } => "shipped",
            Self::Tracking { .. } => "tracking",
            Self::CleanupScheduled { .. } => "cleanup_scheduled",
            Self::CleanupAttempt { .. } => "cleanup_attempt",
            Self::CleanupSearched { .. } => "cleanup_searched",
            Self::ShiprocketCancelled { .. } => "shiprocket_cancelled",
            Self::DuplicateCancelled { .. } => "duplicate_cancelled",
            Self::CleanupDeferred { .. } => "cleanup_deferred",
            Self::ShiprocketCancelFailed { .. } => "shiprocket_cancel_failed",
        }
    }

    /// Money or goods moved: the audit log records it (SPEC §10).
    pub fn is_financial(&self) -> bool {
        matches!(
            self,
            Self::Paid { .. }
                | Self::PaidOutOfStock { .. }
                | Self::PaymentFailed { .. }
                | Self::ExtraPayment { .. }
                | Self::RefundRecorded { .. }
                | Self::RefundUnapplied { .. }
                | Self::Cancelled
                | Self::ShipmentCreated { .. }
                | Self::AwbAssigned { .. }
                | Self::Shipped { .. }
                | Self::ShiprocketCancelled { .. }
                | Self::DuplicateCancelled { .. }
                | Self::ShiprocketCancelFailed { .. }
        )
    }

    /// The state this event moves the order to, if it moves it. Every
    /// transition `decide` emits is checked against the table from `from`.
    pub fn target(&self) -> Option<OrderState> {
        match self {
            Self::Created { .. } => Some(OrderState::PendingPayment),
            Self::Paid { .. } => Some(OrderState::Paid),
            Self::PaidOutOfStock { .. } => Some(OrderState::OutOfStock),
            Self::PaymentFailed { .. } => Some(OrderState::PaymentFailed),
            Self::ReservationExpired => Some(OrderState::Expired),
            Self::Cancelled => Some(OrderState::Cancelled),
            Self::RefundRecorded { full: true, .. } => Some(OrderState::Refunded),
            Self::ShippingQueued | Self::ShippingRetried => Some(OrderState::AwaitingShipment),
            Self::ShipmentCreated { .. } => Some(OrderState::ShipmentCreated),
            Self::AwbAssigned { .. } => Some(OrderState::ReadyToShip),
            Self::ShippingManual { .. } => Some(OrderState::ManualRequired),
            Self::Shipped { .. } => Some(OrderState::Shipped),
            Self::Tracking { to, .. } => *to,
            Self::PaymentFailureNoted { .. }
            | Self::ExtraPayment { .. }
            | Self::RefundRecorded { full: false, .. }
            | Self::RefundPending { .. }
            | Self::RefundUnapplied { .. }
            | Self::ShippingAttempt { .. }
            | Self::DoubtCleared { .. }
            | Self::ShippingDeferred { .. }
            | Self::FailedOver { .. }
            | Self::PickupRequested
            | Self::PickupFailed { .. }
            | Self::PickupDeferred { .. }
            | Self::CleanupScheduled { .. }
            | Self::CleanupAttempt { .. }
            | Self::CleanupSearched { .. }
            | Self::ShiprocketCancelled { .. }
            | Self::DuplicateCancelled { .. }
            | Self::CleanupDeferred { .. }
            | Self::ShiprocketCancelFailed { .. } => None,
        }
    }
}

/// The snapshot a `Created` event starts; `None` for any other event.
pub fn genesis(order_id: &str, event: &OrderEvent, at_ms: i64) -> Option<OrderSnapshot> {
    match event {
        OrderEvent::Created {
            razorpay_order_id,
            payment_method,
            currency,
            amount_paise,
            lines,
            reserved_until_ms,
        } => Some(OrderSnapshot {
            order_id: order_id.to_owned(),
            razorpay_order_id: razorpay_order_id.clone(),
            payment_method: *payment_method,
            currency: currency.clone(),
            amount_paise: *amount_paise,
            lines: lines.clone(),
            state: OrderState::PendingPayment,
            reserved_until_ms: *reserved_until_ms,
            payment_id: None,
            refunded_paise: 0,
            refund_due: false,
            payments: BTreeMap::new(),
            refunds: BTreeMap::new(),
            refund_ids: Default::default(),
            pending_refunds: Vec::new(),
            created_at_ms: at_ms,
            updated_at_ms: at_ms,
            version: 1,
            shipping: Shipping::default(),
        }),
        _ => None,
    }
}

/// Applies one journal event to a snapshot. The only code that changes one.
pub fn apply(order: &mut OrderSnapshot, event: &OrderEvent, at_ms: i64) {
    if let Some(to) = event.target() {
        order.state = to;
    }
    let shipping = &mut order.shipping;
    match event {
        OrderEvent::Created { .. } => {}
        OrderEvent::Paid { payment_id, .. } => {
            order.payment_id = Some(payment_id.clone());
            order
                .payments
                .insert(payment_id.clone(), order.amount_paise);
            order.reserved_until_ms = None;
            shipping.paid_at_ms = Some(at_ms);
        }
        OrderEvent::PaidOutOfStock { payment_id } => {
            order.payment_id = Some(payment_id.clone());
            order
                .payments
                .insert(payment_id.clone(), order.amount_paise);
            order.reserved_until_ms = None;
        }
        OrderEvent::PaymentFailed { .. } | OrderEvent::PaymentFailureNoted { .. } => {}
        OrderEvent::ReservationExpired => order.reserved_until_ms = None,
        OrderEvent::Cancelled => {
            order.reserved_until_ms = None;
            shipping.next_attempt_at_ms = None;
            shipping.pickup_due_at_ms = None;
        }
        OrderEvent::ExtraPayment {
            payment_id,
            amount_paise,
        } => {
            order.payments.insert(payment_id.clone(), *amount_paise);
        }
        OrderEvent::RefundRecorded {
            refund_id,
            payment_refunded_paise,
            full,
            payment_id,
            ..
        } => {
            let paid_by = payment_id.clone().or_else(|| order.payment_id.clone());
            if let Some(paid_by) = paid_by {
                note_refund(order, &paid_by, *payment_refunded_paise);
            }
            order.refund_ids.insert(refund_id.clone());
            order.pending_refunds.retain(|r| &r.refund_id != refund_id);
            if *full {
                let shipping = &mut order.shipping;
                shipping.next_attempt_at_ms = None;
                shipping.pickup_due_at_ms = None;
            }
        }
        OrderEvent::RefundPending { refund } => {
            if !order
                .pending_refunds
                .iter()
                .any(|r| r.refund_id == refund.refund_id)
            {
                order.pending_refunds.push(refund.clone());
            }
        }
        OrderEvent::RefundUnapplied {
            refund_id,
            payment_id,
            payment_refunded_paise,
            ..
        } => {
            note_refund(order, payment_id, *payment_refunded_paise);
            order.refund_ids.insert(refund_id.clone());
            order.pending_refunds.retain(|r| &r.refund_id != refund_id);
        }
        OrderEvent::ShippingQueued | OrderEvent::ShippingRetried => {
            if matches!(event, OrderEvent::ShippingRetried) {
                shipping.attempts = 0;
            }
            shipping.next_attempt_at_ms = Some(at_ms);
            shipping.last_error = None;
        }
        OrderEvent::ShippingAttempt {
            account,
            resume_at_ms,
            ..
        } => {
            shipping.attempts += 1;
            shipping.account = Some(account.clone());
            shipping.in_doubt = true;
            if resume_at_ms.is_some() {
                shipping.next_attempt_at_ms = *resume_at_ms;
            }
        }
        OrderEvent::ShipmentCreated {
            account,
            sr_order_id,
            shipment_id,
            ..
        } => {
            shipping.account = Some(account.clone());
            shipping.sr_order_id = Some(*sr_order_id);
            shipping.shipment_id = Some(*shipment_id);
            shipping.in_doubt = false;
            shipping.next_attempt_at_ms = Some(at_ms);
        }
        OrderEvent::DoubtCleared { .. } => {
            shipping.in_doubt = false;
            shipping.next_attempt_at_ms = Some(at_ms);
        }
        OrderEvent::AwbAssigned { awb, courier } => {
            shipping.awb = Some(awb.clone());
            shipping.courier = Some(courier.clone());
            shipping.in_doubt = false;
            shipping.next_attempt_at_ms = None;
            shipping.last_error = None;
            shipping.pickup_due_at_ms = Some(at_ms);
        }
        OrderEvent::ShippingDeferred {
            error,
            next_attempt_at_ms,
            not_attempted,
            in_doubt,
        } => {
            if *not_attempted {
                shipping.attempts = shipping.attempts.saturating_sub(1);
            }
            shipping.in_doubt = *in_doubt;
            shipping.last_error = Some(error.clone());
            shipping.next_attempt_at_ms = Some(*next_attempt_at_ms);
        }
        OrderEvent::FailedOver { from } => {
            upsert_cleanup(shipping, from, CleanupPurpose::Duplicate, &[], true, at_ms);
            shipping.in_doubt = false;
            shipping.account = None;
        }
        OrderEvent::ShippingManual { reason } => {
            shipping.last_error = Some(reason.clone());
            shipping.next_attempt_at_ms = None;
        }
        OrderEvent::PickupRequested | OrderEvent::PickupFailed { .. } => {
            shipping.pickup_due_at_ms = None;
            if let OrderEvent::PickupFailed { error } = event {
                shipping.last_error = Some(error.clone());
            }
        }
        OrderEvent::PickupDeferred { error, next_at_ms } => {
            shipping.pickup_due_at_ms = Some(*next_at_ms);
            shipping.last_error = Some(error.clone());
        }
        OrderEvent::Shipped { awb, courier, .. } => {
            if awb.is_some() {
                shipping.awb = awb.clone();
            }
            if courier.is_some() {
                shipping.courier = courier.clone();
            }
            shipping.next_attempt_at_ms = None;
            shipping.pickup_due_at_ms = None;
            shipping.shipped_at_ms.get_or_insert(at_ms);
        }
        OrderEvent::Tracking {
            status_id,
            timestamp,
            to,
            ..
        } => {
            shipping.last_tracking = Some((timestamp.clone(), *status_id));
            if matches!(
                to,
                Some(OrderState::Shipped | OrderState::Delivered | OrderState::Returned)
            ) {
                shipping.shipped_at_ms.get_or_insert(at_ms);
            }
            if to.is_some() {
                // Picked up, delivered, cancelled or returned: no pickup to ask for.
                shipping.pickup_due_at_ms = None;
                shipping.next_attempt_at_ms = None;
            }
        }
        OrderEvent::CleanupScheduled {
            account,
            purpose,
            sr_order_ids,
            search_first,
        } => upsert_cleanup(
            shipping,
            account,
            *purpose,
            sr_order_ids,
            *search_first,
            at_ms,
        ),
        OrderEvent::CleanupAttempt {
            account,
            resume_at_ms,
            ..
        } => {
            if let Some(cleanup) = shipping.cleanup_mut(account) {
                cleanup.attempts += 1;
                cleanup.next_at_ms = *resume_at_ms;
            }
        }
        OrderEvent::CleanupSearched { account, live } => {
            if live.is_empty() {
                shipping.drop_cleanup(account);
            } else if let Some(cleanup) = shipping.cleanup_mut(account) {
                cleanup.sr_order_ids = live.clone();
                cleanup.search_first = false;
                cleanup.next_at_ms = at_ms;
            }
        }
        OrderEvent::ShiprocketCancelled { account, .. }
        | OrderEvent::DuplicateCancelled { account, .. }
        | OrderEvent::ShiprocketCancelFailed { account, .. } => shipping.drop_cleanup(account),
        OrderEvent::CleanupDeferred {
            account,
            error,
            next_at_ms,
            search_first,
            not_attempted,
        } => {
            if let Some(cleanup) = shipping.cleanup_mut(account) {
                if *not_attempted {
                    cleanup.attempts = cleanup.attempts.saturating_sub(1);
                }
                cleanup.search_first = *search_first;
                cleanup.next_at_ms = *next_at_ms;
                cleanup.last_error = Some(error.clone());
            }
        }
    }
    order.refund_due = money_owed(order);
    order.version += 1;
    order.updated_at_ms = at_ms;
}

/// Counts `refunded` (Razorpay's running total) against `payment_id`.
fn note_refund(order: &mut OrderSnapshot, payment_id: &str, refunded: i64) {
    let total = order.refunds.entry(payment_id.to_owned()).or_insert(0);
    *total = (*total).max(refunded);
    if order.payment_id.as_deref() == Some(payment_id) {
        order.refunded_paise = *total;
    }
}

/// Whether money was taken that must go back and is not back: any payment
/// but the paying one, and the paying one when the order will not ship
/// (cancelled, out of stock), until refunded in full.
fn money_owed(order: &OrderSnapshot) -> bool {
    order.payments.iter().any(|(payment_id, amount)| {
        let back = order.refunds.get(payment_id).copied().unwrap_or(0) >= *amount;
        let paying = order.payment_id.as_deref() == Some(payment_id.as_str());
        !back && (!paying || matches!(order.state, OrderState::Cancelled | OrderState::OutOfStock))
    })
}

/// Adds a cleanup on `account`, or widens the one there: the stronger purpose,
/// every id known, and a search if either side needed one.
fn upsert_cleanup(
    shipping: &mut Shipping,
    account: &str,
    purpose: CleanupPurpose,
    sr_order_ids: &[i64],
    search_first: bool,
    at_ms: i64,
) {
    match shipping.cleanup_mut(account) {
        Some(cleanup) => {
            cleanup.purpose = cleanup.purpose.max(purpose);
            for id in sr_order_ids {
                if !cleanup.sr_order_ids.contains(id) {
                    cleanup.sr_order_ids.push(*id);
                }
            }
            cleanup.search_first |= search_first;
            cleanup.next_at_ms = cleanup.next_at_ms.min(at_ms);
        }
        None => shipping.cleanups.push(Cleanup {
            account: account.to_owned(),
            purpose,
            sr_order_ids: sr_order_ids.to_vec(),
            search_first: search_first || sr_order_ids.is_empty(),
            attempts: 0,
            next_at_ms: at_ms,
            last_error: None,
        }),
    }
}
/// Rebuilds a snapshot from its journal (`(event, at_ms)` in sequence order).
pub fn replay<'a>(
    order_id: &str,
    journal: impl IntoIterator<Item = (&'a OrderEvent, i64)>,
) -> Option<OrderSnapshot> {
    let mut events = journal.into_iter();
    let (first, at) = events.next()?;
    let mut order = genesis(order_id, first, at)?;
    for (event, at) in events {
        apply(&mut order, event, at);
    }
    Some(order)
}

/// What an order is asked to do.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "command", rename_all = "snake_case")]
pub enum Command {
    /// A captured payment (webhook, checkout callback or reconciliation).
    ConfirmPayment {
        payment_id: String,
        amount_paise: i64,
        currency: String,
        /// Only for an expired order: whether stock could be allocated again.
        stock_reallocated: Option<bool>,
    },
    FailPayment {
        payment_id: Option<String>,
    },
    /// The reservation timer fired at `now_ms`.
    ExpireReservation {
        now_ms: i64,
    },
    Cancel,
    RecordRefund {
        refund_id: String,
        amount_paise: i64,
        payment_id: String,
        payment_amount_paise: i64,
        payment_refunded_paise: i64,
    },
    /// A paid order goes to shipping; `manual` sends it straight to an operator.
    QueueShipping {
        manual: Option<String>,
    },
    /// An operator sends a `manual_required` order back to automatic shipping.
    RetryShipping,
    /// Shipping is stopped (manual mode): a queued order goes to an operator.
    HoldShipping {
        reason: String,
    },
    /// An operator fulfilled the order by hand.
    MarkShipped {
        awb: Option<String>,
        courier: Option<String>,
    },
    /// A Shiprocket tracking update.
    Track {
        awb: String,
        status_id: i64,
        timestamp: String,
    },
}

/// Why a command changed nothing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Record these events, in order.
    Record(Vec<OrderEvent>),
    /// The command's effect is already in the journal (a repeated payment or refund).
    AlreadyDone,
    /// Nothing to do now (a timer that fired early, an expiry after payment).
    Ignored,
    /// The payment's amount or currency differs from the order's: dead-letter it.
    AmountMismatch,
    /// An expired order got a payment: ask the stock supervisor, then decide again
    /// with `stock_reallocated` set.
    NeedsStock,
    /// SPEC §6 does not allow it from the current state.
    InvalidTransition { from: OrderState, to: OrderState },
}

fn record(from: OrderState, event: OrderEvent) -> Outcome {
    record_all(from, vec![event])
}

/// Records `events` in order if every transition among them is allowed.
fn record_all(from: OrderState, events: Vec<OrderEvent>) -> Outcome {
    let mut state = from;
    for event in &events {
        if let Some(to) = event.target() {
            if !transition_allowed(state, to) {
                return Outcome::InvalidTransition { from: state, to };
            }
            state = to;
        }
    }
    Outcome::Record(events)
}

/// `events` (a cancellation or a refund), followed by the durable Shiprocket
/// cancellation they imply when Shiprocket has, or may have, an order for this
/// one (SPEC §6). `reported_cancelled`: Shiprocket itself said so (tracking
/// status 8), so a search confirms it before anything is cancelled.
pub fn with_shiprocket_cancellation(
    order: &OrderSnapshot,
    mut events: Vec<OrderEvent>,
    reported_cancelled: bool,
) -> Vec<OrderEvent> {
    let shipping = &order.shipping;
    if let (true, Some(account)) = (shipping.may_exist_at_shiprocket(), &shipping.account) {
        events.push(OrderEvent::CleanupScheduled {
            account: account.clone(),
            purpose: CleanupPurpose::Cancel,
            sr_order_ids: shipping.sr_order_id.into_iter().collect(),
            search_first: shipping.in_doubt || reported_cancelled,
        });
    }
    events
}

/// Decides what `command` does to `order`. Pure; see the module docs.
pub fn decide(order: &OrderSnapshot, command: &Command) -> Outcome {
    use OrderState as S;
    match command {
        Command::ConfirmPayment {
            payment_id,
            amount_paise,
            currency,
            stock_reallocated,
        } => {
            if order.payment_id.as_deref() == Some(payment_id.as_str()) {
                return Outcome::AlreadyDone;
            }
            if *amount_paise != order.amount_paise
                || !currency.eq_ignore_ascii_case(&order.currency)
            {
                return Outcome::AmountMismatch;
            }
            let paid = match order.state {
                S::PendingPayment | S::PaymentFailed => record(
                    order.state,
                    OrderEvent::Paid {
                        payment_id: payment_id.clone(),
                        reallocated: false,
                    },
                ),
                S::Expired => match stock_reallocated {
                    None => Outcome::NeedsStock,
                    Some(true) => record(
                        order.state,
                        OrderEvent::Paid {
                            payment_id: payment_id.clone(),
                            reallocated: true,
                        },
                    ),
                    Some(false) => record(
                        order.state,
                        OrderEvent::PaidOutOfStock {
                            payment_id: payment_id.clone(),
                        },
                    ),
                },
                // Paid already by another payment, or cancelled before the money came.
                _ if order.payments.contains_key(payment_id) => Outcome::AlreadyDone,
                _ => Outcome::Record(vec![OrderEvent::ExtraPayment {
                    payment_id: payment_id.clone(),
                    amount_paise: *amount_paise,
                }]),
            };
            with_waiting_refunds(order, paid)
        }
        Command::FailPayment { payment_id } => match order.state {
            S::PendingPayment => record(
                order.state,
                OrderEvent::PaymentFailed {
                    payment_id: payment_id.clone(),
                },
            ),
            _ => Outcome::Record(vec![OrderEvent::PaymentFailureNoted {
                payment_id: payment_id.clone(),
            }]),
        },
        Command::ExpireReservation { now_ms } => match (order.state, order.reserved_until_ms) {
            (state, Some(until)) if state.holds_reservation() && until <= *now_ms => {
                record(order.state, OrderEvent::ReservationExpired)
            }
            _ => Outcome::Ignored,
        },
        Command::Cancel => record_all(
            order.state,
            with_shiprocket_cancellation(order, vec![OrderEvent::Cancelled], false),
        ),
        Command::HoldShipping { reason } => match order.state {
            S::AwaitingShipment | S::ShipmentCreated => record(
                order.state,
                OrderEvent::ShippingManual {
                    reason: reason.clone(),
                },
            ),
            _ => Outcome::Ignored,
        },
        Command::QueueShipping { manual } => {
            let mut events = vec![OrderEvent::ShippingQueued];
            if let Some(reason) = manual {
                events.push(OrderEvent::ShippingManual {
                    reason: reason.clone(),
                });
            }
            record_all(order.state, events)
        }
        Command::RetryShipping => record(order.state, OrderEvent::ShippingRetried),
        Command::MarkShipped { awb, courier } => record(
            order.state,
            OrderEvent::Shipped {
                awb: awb.clone(),
                courier: courier.clone(),
                by: "operator".into(),
            },
        ),
        Command::Track {
            awb,
            status_id,
            timestamp,
        } => crate::domain::shipping::decide_tracking(order, awb, *status_id, timestamp),
        Command::RecordRefund {
            refund_id,
            amount_paise,
            payment_id,
            payment_amount_paise,
            payment_refunded_paise,
        } => decide_refund(
            order,
            &PendingRefund {
                refund_id: refund_id.clone(),
                payment_id: payment_id.clone(),
                amount_paise: *amount_paise,
                payment_amount_paise: *payment_amount_paise,
                payment_refunded_paise: *payment_refunded_paise,
            },
        ),
    }
}

/// What a refund does (SPEC §6 "Refunds and cancellations are money and
/// goods"): counted against its own payment; the paying payment refunded in
/// full refunds the order (and, before it shipped, cancels its shipment);
/// one the lifecycle does not allow is journaled `refund_unapplied`; one for
/// a payment not confirmed yet waits for it.
fn decide_refund(order: &OrderSnapshot, refund: &PendingRefund) -> Outcome {
    // Each refund once, whatever the order its deliveries came in.
    if order.refund_ids.contains(&refund.refund_id) {
        return Outcome::AlreadyDone;
    }
    if !order.payments.contains_key(&refund.payment_id) && order.payment_id.is_none() {
        let waiting = order
            .pending_refunds
            .iter()
            .any(|r| r.refund_id == refund.refund_id);
        return if waiting {
            Outcome::AlreadyDone
        } else {
            Outcome::Record(vec![OrderEvent::RefundPending {
                refund: refund.clone(),
            }])
        };
    }
    let paying = order.payment_id.as_deref() == Some(refund.payment_id.as_str());
    // Razorpay's running total may already count refunds delivered later, so
    // a second one "in full" finds the order refunded: journaled, no move.
    let full = paying
        && refund.payment_refunded_paise >= refund.payment_amount_paise
        && order.state != OrderState::Refunded;
    let recorded = |full: bool| OrderEvent::RefundRecorded {
        refund_id: refund.refund_id.clone(),
        amount_paise: refund.amount_paise,
        payment_refunded_paise: refund.payment_refunded_paise,
        full,
        payment_id: Some(refund.payment_id.clone()),
    };
    if !full {
        return Outcome::Record(vec![recorded(false)]);
    }
    if !transition_allowed(order.state, OrderState::Refunded) {
        return Outcome::Record(vec![OrderEvent::RefundUnapplied {
            refund_id: refund.refund_id.clone(),
            payment_id: refund.payment_id.clone(),
            amount_paise: refund.amount_paise,
            payment_refunded_paise: refund.payment_refunded_paise,
            state: order.state,
        }]);
    }
    // Refunded before it shipped: the shipment must not go out either.
    let events = if order.state.holds_unshipped_sale() {
        with_shiprocket_cancellation(order, vec![recorded(true)], false)
    } else {
        vec![recorded(true)]
    };
    record_all(order.state, events)
}

/// `payment` recorded, then the refunds that were waiting for it.
fn with_waiting_refunds(order: &OrderSnapshot, payment: Outcome) -> Outcome {
    let Outcome::Record(mut events) = payment else {
        return payment;
    };
    let mut after = order.clone();
    let at = after.updated_at_ms;
    for event in &events {
        apply(&mut after, event, at);
    }
    let waiting: Vec<PendingRefund> = after
        .pending_refunds
        .iter()
        .filter(|r| after.payments.contains_key(&r.payment_id))
        .cloned()
        .collect();
    for refund in waiting {
        if let Outcome::Record(more) = decide_refund(&after, &refund) {
            for event in &more {
                apply(&mut after, event, at);
            }
            events.extend(more);
        }
    }
    record_all(order.state, events)
}

#[cfg(test)]
mod tests {
    use super::*;

    pub(crate) fn new_order(state: OrderState) -> OrderSnapshot {
        let created = OrderEvent::Created {
            razorpay_order_id: Some("order_1".into()),
            payment_method: PaymentMethod::Prepaid,
            currency: "INR".into(),
            amount_paise: 149_800,
            lines: vec![OrderLine {
                sku: "TSHIRT-BLK-M".into(),
                name: "Black tee M".into(),
                quantity: 2,
                unit_price_paise: 74_900,
                weight_g: Some(250),
            }],
            reserved_until_ms: Some(1_000),
        };
        let mut order = genesis("XVC-1", &created, 0).unwrap();
        order.state = state;
        order
    }

    fn pay(id: &str) -> Command {
        Command::ConfirmPayment {
            payment_id: id.into(),
            amount_paise: 149_800,
            currency: "INR".into(),
            stock_reallocated: None,
        }
    }

    #[test]
    fn the_table_matches_spec_section_6() {
        use OrderState::*;
        let allowed: Vec<(OrderState, OrderState)> = OrderState::ALL
            .iter()
            .flat_map(|from| OrderState::ALL.iter().map(move |to| (*from, *to)))
            .filter(|(from, to)| transition_allowed(*from, *to))
            .collect();
        assert_eq!(allowed.len(), 38);
        for (from, to) in [
            (PendingPayment, Paid),
            (Expired, OutOfStock),
            (OutOfStock, Paid),
            (ManualRequired, Shipped),
            (Delivered, Refunded),
            (Shipped, Refunded),
            (Cancelled, Refunded),
        ] {
            assert!(transition_allowed(from, to), "{from} -> {to}");
        }
        for (from, to) in [
            (Paid, PendingPayment),
            (Shipped, Cancelled),
            (Refunded, Refunded),
            (Refunded, Paid),
            (Returned, Delivered),
        ] {
            assert!(!transition_allowed(from, to), "{from} -> {to}");
        }
        assert!(OrderState::ALL.iter().all(|s| !transition_allowed(*s, *s)));
    }

    #[test]
    fn state_names_round_trip() {
        for state in OrderState::ALL {
            assert_eq!(OrderState::parse(state.as_str()), Some(state));
            assert_eq!(serde_json::to_value(state).unwrap(), state.as_str());
        }
    }

    #[test]
    fn the_same_payment_pays_once() {
        let mut order = new_order(OrderState::PendingPayment);
        let Outcome::Record(events) = decide(&order, &pay("pay_1")) else {
            panic!("first payment should record");
        };
        assert_eq!(
            events,
            vec![OrderEvent::Paid {
                payment_id: "pay_1".into(),
                reallocated: false
            }]
        );
        apply(&mut order, &events[0], 5);
        assert_eq!(order.state, OrderState::Paid);
        assert_eq!(decide(&order, &pay("pay_1")), Outcome::AlreadyDone);
        // A different payment for a paid order is money to give back, not a second sale.
        let Outcome::Record(events) = decide(&order, &pay("pay_2")) else {
            panic!("extra payment should be journaled");
        };
        apply(&mut order, &events[0], 6);
        assert_eq!(order.state, OrderState::Paid);
        assert!(order.refund_due);
    }

    #[test]
    fn failed_then_captured_pays() {
        let mut order = new_order(OrderState::PendingPayment);
        let Outcome::Record(events) = decide(
            &order,
            &Command::FailPayment {
                payment_id: Some("pay_f".into()),
            },
        ) else {
            panic!()
        };
        apply(&mut order, &events[0], 1);
        assert_eq!(order.state, OrderState::PaymentFailed);
        let Outcome::Record(events) = decide(&order, &pay("pay_ok")) else {
            panic!()
        };
        apply(&mut order, &events[0], 2);
        assert_eq!(order.state, OrderState::Paid);
        // A late failure after success changes nothing but the journal.
        assert_eq!(
            decide(
                &order,
                &Command::FailPayment {
                    payment_id: Some("pay_f".into())
                }
            ),
            Outcome::Record(vec![OrderEvent::PaymentFailureNoted {
                payment_id: Some("pay_f".into())
            }])
        );
    }

    #[test]
    fn wrong_amount_or_currency_is_a_mismatch() {
        let order = new_order(OrderState::PendingPayment);
        let mut command = pay("pay_1");
        if let Command::ConfirmPayment { amount_paise, .. } = &mut command {
            *amount_paise = 100;
        }
        assert_eq!(decide(&order, &command), Outcome::AmountMismatch);
        let usd = Command::ConfirmPayment {
            payment_id: "pay_1".into(),
            amount_paise: 149_800,
            currency: "USD".into(),
            stock_reallocated: None,
        };
        assert_eq!(decide(&order, &usd), Outcome::AmountMismatch);
    }

    #[test]
    fn expiry_only_after_the_deadline_and_late_payment_needs_stock() {
        let mut order = new_order(OrderState::PendingPayment);
        assert_eq!(
            decide(&order, &Command::ExpireReservation { now_ms: 999 }),
            Outcome::Ignored
        );
        let Outcome::Record(events) = decide(&order, &Command::ExpireReservation { now_ms: 1_000 })
        else {
            panic!()
        };
        apply(&mut order, &events[0], 1_000);
        assert_eq!(order.state, OrderState::Expired);
        assert_eq!(decide(&order, &pay("pay_late")), Outcome::NeedsStock);
        let with_stock = Command::ConfirmPayment {
            payment_id: "pay_late".into(),
            amount_paise: 149_800,
            currency: "INR".into(),
            stock_reallocated: Some(false),
        };
        let Outcome::Record(events) = decide(&order, &with_stock) else {
            panic!()
        };
        apply(&mut order, &events[0], 1_001);
        assert_eq!(order.state, OrderState::OutOfStock);
        assert!(order.refund_due);
    }

    #[test]
    fn cancel_follows_the_table_and_flags_taken_money() {
        let shipped = new_order(OrderState::Shipped);
        assert_eq!(
            decide(&shipped, &Command::Cancel),
            Outcome::InvalidTransition {
                from: OrderState::Shipped,
                to: OrderState::Cancelled
            }
        );
        let mut paid = new_order(OrderState::PendingPayment);
        let Outcome::Record(events) = decide(&paid, &pay("pay_1")) else {
            panic!()
        };
        apply(&mut paid, &events[0], 1);
        let Outcome::Record(events) = decide(&paid, &Command::Cancel) else {
            panic!()
        };
        apply(&mut paid, &events[0], 2);
        assert_eq!(paid.state, OrderState::Cancelled);
        assert!(paid.refund_due);
    }

    #[test]
    fn partial_refunds_journal_and_a_full_one_refunds() {
        let mut order = new_order(OrderState::PendingPayment);
        let Outcome::Record(events) = decide(&order, &pay("pay_1")) else {
            panic!()
        };
        apply(&mut order, &events[0], 1);
        let refund = |id: &str, amount: i64, total: i64| Command::RecordRefund {
            refund_id: id.into(),
            amount_paise: amount,
            payment_id: "pay_1".into(),
            payment_amount_paise: 149_800,
            payment_refunded_paise: total,
        };
        let Outcome::Record(events) = decide(&order, &refund("rfnd_1", 30_000, 30_000)) else {
            panic!()
        };
        apply(&mut order, &events[0], 2);
        assert_eq!(order.state, OrderState::Paid);
        assert_eq!(
            decide(&order, &refund("rfnd_1", 30_000, 30_000)),
            Outcome::AlreadyDone
        );
        let Outcome::Record(events) = decide(&order, &refund("rfnd_2", 119_800, 149_800)) else {
            panic!()
        };
        apply(&mut order, &events[0], 3);
        assert_eq!(order.state, OrderState::Refunded);
        assert_eq!(order.refunded_paise, 149_800);
    }

    fn refund(id: &str, payment: &str, amount: i64, total: i64) -> Command {
        Command::RecordRefund {
            refund_id: id.into(),
            amount_paise: amount,
            payment_id: payment.into(),
            payment_amount_paise: 149_800,
            payment_refunded_paise: total,
        }
    }

    /// Applies what `command` records at `at`; the outcome.
    fn run(order: &mut OrderSnapshot, command: &Command, at: i64) -> Outcome {
        let outcome = decide(order, command);
        if let Outcome::Record(events) = &outcome {
            for event in events {
                if let Some(to) = event.target() {
                    assert!(
                        transition_allowed(order.state, to),
                        "{} -> {to}",
                        order.state
                    );
                }
                apply(order, event, at);
            }
        }
        outcome
    }

    #[test]
    fn a_refund_in_transit_refunds_a_shipped_order() {
        let mut order = new_order(OrderState::PendingPayment);
        run(&mut order, &pay("pay_1"), 1);
        order.state = OrderState::Shipped;
        run(&mut order, &refund("rfnd_1", "pay_1", 149_800, 149_800), 2);
        assert_eq!(order.state, OrderState::Refunded);
    }

    #[test]
    fn a_refund_the_lifecycle_refuses_is_journaled_unapplied() {
        let mut order = new_order(OrderState::PendingPayment);
        run(&mut order, &pay("pay_1"), 1);
        run(&mut order, &refund("rfnd_1", "pay_1", 100_000, 100_000), 2);
        // Every paid state may be refunded today; a state the table refuses
        // stands in for any it may refuse tomorrow.
        order.state = OrderState::PendingPayment;
        let outcome = run(&mut order, &refund("rfnd_2", "pay_1", 49_800, 149_800), 3);
        assert!(matches!(
            outcome,
            Outcome::Record(ref events) if matches!(events[..], [OrderEvent::RefundUnapplied { .. }])
        ));
        assert_eq!(
            order.refunds["pay_1"], 149_800,
            "the money moved all the same"
        );
    }

    #[test]
    fn a_refund_before_its_payment_waits_and_applies_after_it() {
        let mut order = new_order(OrderState::PendingPayment);
        let outcome = run(&mut order, &refund("rfnd_1", "pay_1", 149_800, 149_800), 1);
        assert!(
            matches!(outcome, Outcome::Record(ref e) if matches!(e[..], [OrderEvent::RefundPending { .. }]))
        );
        assert_eq!(order.state, OrderState::PendingPayment);
        assert_eq!(
            decide(&order, &refund("rfnd_1", "pay_1", 149_800, 149_800)),
            Outcome::AlreadyDone
        );
        run(&mut order, &pay("pay_1"), 2);
        assert_eq!(order.state, OrderState::Refunded);
        assert!(order.pending_refunds.is_empty());
        assert!(!order.refund_due);
        // A refund whose running total counted it already is journaled, nothing more.
        let late = run(&mut order, &refund("rfnd_0", "pay_1", 20_000, 149_800), 3);
        assert!(
            matches!(late, Outcome::Record(ref e) if matches!(e[..], [OrderEvent::RefundRecorded { full: false, .. }]))
        );
        assert_eq!(order.state, OrderState::Refunded);
    }

    #[test]
    fn refunds_count_against_their_own_payment() {
        let mut order = new_order(OrderState::PendingPayment);
        run(&mut order, &pay("pay_1"), 1);
        run(&mut order, &pay("pay_2"), 2);
        assert!(order.refund_due, "the second payment must go back");
        run(&mut order, &refund("rfnd_2", "pay_2", 149_800, 149_800), 3);
        assert_eq!(order.state, OrderState::Paid, "another payment's refund");
        assert!(!order.refund_due, "the money is back");
        assert_eq!(order.refunded_paise, 0);
        run(&mut order, &refund("rfnd_1", "pay_1", 49_800, 49_800), 4);
        assert_eq!(
            (order.state, order.refunded_paise),
            (OrderState::Paid, 49_800)
        );
        run(&mut order, &refund("rfnd_3", "pay_1", 100_000, 149_800), 5);
        assert_eq!(order.state, OrderState::Refunded);
    }

    mod properties {
        use proptest::prelude::*;

        use super::*;

        #[derive(Debug, Clone)]
        enum MoneyEvent {
            Captured(&'static str),
            /// A refund of a payment: (refund id, payment, this refund, running total).
            Refund(&'static str, &'static str, i64, i64),
        }

        fn money_events() -> impl Strategy<Value = Vec<MoneyEvent>> {
            use MoneyEvent::*;
            let pool = [
                Captured("pay_1"),
                Captured("pay_2"),
                Refund("rfnd_1a", "pay_1", 50_000, 50_000),
                Refund("rfnd_1b", "pay_1", 99_800, 149_800),
                Refund("rfnd_2", "pay_2", 149_800, 149_800),
            ];
            // Any subset, each delivered once or twice, in any order.
            proptest::collection::vec((any::<bool>(), any::<bool>()), pool.len())
                .prop_map(move |picks| {
                    let mut events = Vec::new();
                    for (event, (keep, twice)) in pool.iter().zip(picks) {
                        if keep {
                            events.push(event.clone());
                            if twice {
                                events.push(event.clone());
                            }
                        }
                    }
                    events
                })
                .prop_shuffle()
        }

        proptest! {
            /// Refunds over two payments, duplicated and before or after their
            /// payments: the order is refunded exactly when the payment that
            /// paid it is refunded in full, `refund_due` says whether the other
            /// payment's money is still out, a refund waits only for a payment
            /// that never came, and the journal replays to the snapshot.
            #[test]
            fn refunds_land_on_their_payment_in_any_order(events in money_events()) {
                let mut order = new_order(OrderState::PendingPayment);
                let created = OrderEvent::Created {
                    razorpay_order_id: order.razorpay_order_id.clone(),
                    payment_method: order.payment_method,
                    currency: order.currency.clone(),
                    amount_paise: order.amount_paise,
                    lines: order.lines.clone(),
                    reserved_until_ms: order.reserved_until_ms,
                };
                let mut journal = vec![(created, 0i64)];
                let mut refunded_transitions = 0;
                for (at, event) in events.iter().enumerate() {
                    let at = at as i64 + 1;
                    let command = match event {
                        MoneyEvent::Captured(id) => pay(id),
                        MoneyEvent::Refund(id, payment, amount, total) => refund(id, payment, *amount, *total),
                    };
                    if let Outcome::Record(recorded) = decide(&order, &command) {
                        for e in recorded {
                            if let Some(to) = e.target() {
                                prop_assert!(transition_allowed(order.state, to), "{} -> {}", order.state, to);
                                if to == OrderState::Refunded {
                                    refunded_transitions += 1;
                                }
                            }
                            apply(&mut order, &e, at);
                            journal.push((e, at));
                        }
                    }
                }
                let paying = events.iter().find_map(|e| match e {
                    MoneyEvent::Captured(id) => Some(*id),
                    _ => None,
                });
                let captured = |p: &str| events.iter().any(|e| matches!(e, MoneyEvent::Captured(id) if *id == p));
                let refunded_in_full = |p: &str| events.iter().any(|e| {
                    matches!(e, MoneyEvent::Refund(_, payment, _, total) if *payment == p && *total == 149_800)
                });
                prop_assert_eq!(order.payment_id.as_deref(), paying);
                let expect_refunded = paying.is_some_and(refunded_in_full);
                prop_assert_eq!(order.state == OrderState::Refunded, expect_refunded, "{:?}", events);
                prop_assert!(refunded_transitions <= 1);
                let other = match paying { Some("pay_1") => Some("pay_2"), Some(_) => Some("pay_1"), None => None };
                let owed = other.is_some_and(|o| captured(o) && !refunded_in_full(o));
                prop_assert_eq!(order.refund_due, owed, "{:?}", events);
                for waiting in &order.pending_refunds {
                    prop_assert!(!captured(&waiting.payment_id), "{} waits though its payment came", waiting.refund_id);
                }
                let rebuilt = replay("XVC-1", journal.iter().map(|(e, at)| (e, *at))).unwrap();
                prop_assert_eq!(rebuilt, order);
            }
        }

        #[derive(Debug, Clone)]
        enum Input {
            /// The order's real payment, by webhook, `order.paid` or callback: all the same command.
            Captured,
            /// A second payment by the same customer.
            OtherCaptured,
            Failed,
            Expire,
            Cancel,
        }

        fn input() -> impl Strategy<Value = Input> {
            prop_oneof![
                4 => Just(Input::Captured),
                1 => Just(Input::OtherCaptured),
                3 => Just(Input::Failed),
                1 => Just(Input::Expire),
                1 => Just(Input::Cancel),
            ]
        }

        proptest! {
            /// Duplicated, reordered payment events and callbacks: at most one `paid`
            /// transition, every transition allowed by the table, and the journal
            /// replays to the snapshot.
            #[test]
            fn payments_in_any_order_pay_once(inputs in proptest::collection::vec(input(), 1..40), stock in any::<bool>()) {
                let mut order = new_order(OrderState::PendingPayment);
                order.version = 1;
                let created = OrderEvent::Created {
                    razorpay_order_id: order.razorpay_order_id.clone(),
                    payment_method: order.payment_method,
                    currency: order.currency.clone(),
                    amount_paise: order.amount_paise,
                    lines: order.lines.clone(),
                    reserved_until_ms: order.reserved_until_ms,
                };
                let mut journal = vec![(created, 0i64)];
                let mut paid_transitions = 0;
                for (at, input) in inputs.iter().enumerate() {
                    let at = at as i64 + 1;
                    let payment = |id: &str, realloc: Option<bool>| Command::ConfirmPayment {
                        payment_id: id.into(),
                        amount_paise: 149_800,
                        currency: "INR".into(),
                        stock_reallocated: realloc,
                    };
                    let command = match input {
                        Input::Captured => payment("pay_real", None),
                        Input::OtherCaptured => payment("pay_other", None),
                        Input::Failed => Command::FailPayment { payment_id: Some("pay_failed".into()) },
                        Input::Expire => Command::ExpireReservation { now_ms: 10_000 },
                        Input::Cancel => Command::Cancel,
                    };
                    let mut outcome = decide(&order, &command);
                    if outcome == Outcome::NeedsStock {
                        if let Command::ConfirmPayment { payment_id, .. } = &command {
                            outcome = decide(&order, &payment(payment_id, Some(stock)));
                        }
                    }
                    if let Outcome::Record(events) = outcome {
                        for event in events {
                            if let Some(to) = event.target() {
                                prop_assert!(transition_allowed(order.state, to), "{} -> {}", order.state, to);
                                if to == OrderState::Paid || to == OrderState::OutOfStock {
                                    paid_transitions += 1;
                                }
                            }
                            apply(&mut order, &event, at);
                            journal.push((event, at));
                        }
                    }
                }
                prop_assert!(paid_transitions <= 1);
                if inputs.iter().any(|i| matches!(i, Input::Captured | Input::OtherCaptured)) {
                    prop_assert!(order.payment_id.is_some() || order.state == OrderState::Cancelled);
                }
                let rebuilt = replay("XVC-1", journal.iter().map(|(e, at)| (e, *at))).unwrap();
                prop_assert_eq!(rebuilt, order);
            }
        }
    }
}
