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
        Shipped => matches!(to, Delivered | Returned),
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
    pub refunded_paise: i64,
    /// Money was taken that must go back (paid after cancel, out of stock, paid twice).
    pub refund_due: bool,
    pub created_at_ms: i64,
    pub updated_at_ms: i64,
    /// Journal events so far; the next event's sequence number is `version + 1`.
    pub version: u64,
    /// Where the order is on its way to Shiprocket.
    #[serde(default)]
    pub shipping: Shipping,
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
    /// When the shipping call journaled last was made, while its answer is
    /// not recorded: a call a crash interrupted is due again at the next start.
    #[serde(default)]
    pub call_started_at_ms: Option<i64>,
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
    /// When the cleanup call journaled last was made, while its answer is not recorded.
    #[serde(default)]
    pub call_started_at_ms: Option<i64>,
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
        full: bool,
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
    if ends_shipping_call(event) {
        shipping.call_started_at_ms = None;
    }
    match event {
        OrderEvent::Created { .. } => {}
        OrderEvent::Paid { payment_id, .. } => {
            order.payment_id = Some(payment_id.clone());
            order.reserved_until_ms = None;
            shipping.paid_at_ms = Some(at_ms);
        }
        OrderEvent::PaidOutOfStock { payment_id } => {
            order.payment_id = Some(payment_id.clone());
            order.reserved_until_ms = None;
            order.refund_due = true;
        }
        OrderEvent::PaymentFailed { .. } | OrderEvent::PaymentFailureNoted { .. } => {}
        OrderEvent::ReservationExpired => order.reserved_until_ms = None,
        OrderEvent::Cancelled => {
            order.reserved_until_ms = None;
            shipping.next_attempt_at_ms = None;
            shipping.pickup_due_at_ms = None;
            if order.payment_id.is_some() && order.refunded_paise < order.amount_paise {
                order.refund_due = true;
            }
        }
        OrderEvent::ExtraPayment { .. } => order.refund_due = true,
        OrderEvent::RefundRecorded {
            payment_refunded_paise,
            full,
            ..
        } => {
            order.refunded_paise = *payment_refunded_paise;
            if *full {
                order.refund_due = false;
                shipping.next_attempt_at_ms = None;
                shipping.pickup_due_at_ms = None;
            }
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
            shipping.call_started_at_ms = Some(at_ms);
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
                cleanup.call_started_at_ms = Some(at_ms);
            }
        }
        OrderEvent::CleanupSearched { account, live } => {
            if live.is_empty() {
                shipping.drop_cleanup(account);
            } else if let Some(cleanup) = shipping.cleanup_mut(account) {
                cleanup.sr_order_ids = live.clone();
                cleanup.search_first = false;
                cleanup.next_at_ms = at_ms;
                cleanup.call_started_at_ms = None;
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
                cleanup.call_started_at_ms = None;
            }
        }
    }
    order.version += 1;
    order.updated_at_ms = at_ms;
}

/// Whether `event` records the answer to the order's shipping call (or ends
/// its shipping), so no call of it is in flight any more.
fn ends_shipping_call(event: &OrderEvent) -> bool {
    matches!(
        event,
        OrderEvent::ShippingQueued
            | OrderEvent::ShippingRetried
            | OrderEvent::ShipmentCreated { .. }
            | OrderEvent::DoubtCleared { .. }
            | OrderEvent::AwbAssigned { .. }
            | OrderEvent::ShippingDeferred { .. }
            | OrderEvent::ShippingManual { .. }
            | OrderEvent::Cancelled
            | OrderEvent::RefundRecorded { full: true, .. }
    )
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
            call_started_at_ms: None,
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
            match order.state {
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
                _ => Outcome::Record(vec![OrderEvent::ExtraPayment {
                    payment_id: payment_id.clone(),
                    amount_paise: *amount_paise,
                }]),
            }
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
        } => {
            if *payment_refunded_paise <= order.refunded_paise {
                return Outcome::AlreadyDone;
            }
            let full = *payment_refunded_paise >= *payment_amount_paise;
            // A refund of a payment that is not the order's (an extra payment) is
            // journaled but never moves the order.
            let full = full && order.payment_id.as_deref() == Some(payment_id.as_str());
            let event = OrderEvent::RefundRecorded {
                refund_id: refund_id.clone(),
                amount_paise: *amount_paise,
                payment_refunded_paise: *payment_refunded_paise,
                full,
            };
            // Refunded before it shipped: the shipment must not go out either.
            let events = if full && order.state.holds_unshipped_sale() {
                with_shiprocket_cancellation(order, vec![event], false)
            } else {
                vec![event]
            };
            record_all(order.state, events)
        }
    }
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
        assert_eq!(allowed.len(), 37);
        for (from, to) in [
            (PendingPayment, Paid),
            (Expired, OutOfStock),
            (OutOfStock, Paid),
            (ManualRequired, Shipped),
            (Delivered, Refunded),
            (Cancelled, Refunded),
        ] {
            assert!(transition_allowed(from, to), "{from} -> {to}");
        }
        for (from, to) in [
            (Paid, PendingPayment),
            (Shipped, Cancelled),
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

    mod properties {
        use proptest::prelude::*;

        use super::*;

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
