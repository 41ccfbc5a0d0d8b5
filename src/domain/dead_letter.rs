//! What a dead letter can be: where it came from and why it was filed.
//!
//! The codes are the words operators read in `GET /admin/dlq` and alerts match on
//! (SPEC §5, §6, §7), and the admin API decides from the source what a replay re-runs.
//! Enums rather than strings so that a new reason is a compile error wherever letters
//! are read, and a misspelt one cannot be filed.

use super::webhook::QuarantineReason;

/// Who sent the thing that could not be applied.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum LetterSource {
    /// A Razorpay webhook refused before it reached the inbox.
    Razorpay,
    /// An order's own lifecycle (an inbox entry it could not apply, or a Shiprocket
    /// outcome that needs a person).
    Order,
    /// A Shiprocket tracking update.
    Tracking,
}

impl LetterSource {
    pub const ALL: [Self; 3] = [Self::Razorpay, Self::Order, Self::Tracking];

    pub fn code(self) -> &'static str {
        match self {
            Self::Razorpay => "razorpay",
            Self::Order => "order",
            Self::Tracking => "tracking",
        }
    }

    pub fn from_code(code: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|s| s.code() == code)
    }

    /// Whether a replay re-runs a Razorpay event (else a tracking update).
    pub fn replays_payment_event(self) -> bool {
        matches!(self, Self::Razorpay | Self::Order)
    }
}

/// Why a letter was filed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum LetterReason {
    NotJson,
    /// Valid JSON in a shape the daemon does not read (webhook or tracking update).
    UnknownShape,
    TooOld,
    #[serde(rename = "created_in_future")]
    FromTheFuture,
    /// Paid amount or currency differs from the order's.
    AmountMismatch,
    /// A payment event for a Razorpay order no checkout created.
    UnknownOrder,
    /// A tracking update for an AWB no order has.
    UnknownShipment,
    /// Shiprocket refused for good to cancel a shipment of a cancelled order.
    ShiprocketCancelFailed,
    /// A refund the order's state cannot take.
    RefundUnapplied,
}

impl LetterReason {
    pub const ALL: [Self; 9] = [
        Self::NotJson,
        Self::UnknownShape,
        Self::TooOld,
        Self::FromTheFuture,
        Self::AmountMismatch,
        Self::UnknownOrder,
        Self::UnknownShipment,
        Self::ShiprocketCancelFailed,
        Self::RefundUnapplied,
    ];

    pub fn code(self) -> &'static str {
        match self {
            Self::NotJson => "not_json",
            Self::UnknownShape => "unknown_shape",
            Self::TooOld => "too_old",
            Self::FromTheFuture => "created_in_future",
            Self::AmountMismatch => "amount_mismatch",
            Self::UnknownOrder => "unknown_order",
            Self::UnknownShipment => "unknown_shipment",
            Self::ShiprocketCancelFailed => "shiprocket_cancel_failed",
            Self::RefundUnapplied => "refund_unapplied",
        }
    }

    pub fn from_code(code: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|r| r.code() == code)
    }
}

impl From<QuarantineReason> for LetterReason {
    fn from(reason: QuarantineReason) -> Self {
        match reason {
            QuarantineReason::NotJson => Self::NotJson,
            QuarantineReason::UnknownShape => Self::UnknownShape,
            QuarantineReason::TooOld => Self::TooOld,
            QuarantineReason::FromTheFuture => Self::FromTheFuture,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_code_reads_back_as_itself_and_serializes_as_its_code() {
        for reason in LetterReason::ALL {
            assert_eq!(LetterReason::from_code(reason.code()), Some(reason));
            assert_eq!(
                serde_json::to_value(reason).ok(),
                Some(serde_json::json!(reason.code()))
            );
        }
        for source in LetterSource::ALL {
            assert_eq!(LetterSource::from_code(source.code()), Some(source));
            assert_eq!(
                serde_json::to_value(source).ok(),
                Some(serde_json::json!(source.code()))
            );
        }
        assert_eq!(LetterReason::from_code("misspelt"), None);
    }

    #[test]
    fn quarantine_reasons_keep_their_codes() {
        for q in [
            QuarantineReason::NotJson,
            QuarantineReason::UnknownShape,
            QuarantineReason::TooOld,
            QuarantineReason::FromTheFuture,
        ] {
            assert_eq!(LetterReason::from(q).code(), q.code());
        }
    }
}
