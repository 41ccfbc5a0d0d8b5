//! How order records are encoded for storage, whichever backend stores them:
//! JSON of snapshots, events and commands, journal entries numbered and paired
//! with the audit records of financial events, and the customer record sealed
//! and opened. Done on the caller's thread, so the writer only writes.

use serde::Serialize;

use super::pii::{Column, PiiCipher};
use super::{AuditRecord, DeferredCommand, JournalAppend, StorageError, StoredOrder};

pub(super) fn to_json<T: Serialize>(value: &T) -> Result<String, StorageError> {
    serde_json::to_string(value).map_err(|e| StorageError::Encoding(e.to_string()))
}

/// What an order paid, kept in a column of its own beside the snapshot so
/// the console's count of the last hour's payments and revenue reads an
/// index, not every snapshot: the amount once a payment is recorded.
pub(super) fn paid_amount(snapshot: &crate::domain::order::OrderSnapshot) -> Option<i64> {
    snapshot.payment_id.as_ref().map(|_| snapshot.amount_paise)
}

/// An order row before its customer record is opened.
pub(super) struct OrderRow {
    pub(super) id: i64,
    pub(super) snapshot: String,
    pub(super) customer: Vec<u8>,
    pub(super) fingerprint: String,
}

impl OrderRow {
    pub(super) fn open(self, pii: &PiiCipher) -> Result<StoredOrder, StorageError> {
        let customer = pii.open(Column::OrderCustomer, &self.customer)?;
        Ok(StoredOrder {
            id: self.id,
            snapshot: serde_json::from_str(&self.snapshot)
                .map_err(|e| StorageError::Encoding(e.to_string()))?,
            customer: serde_json::from_slice(&customer)
                .map_err(|e| StorageError::Encoding(e.to_string()))?,
            fingerprint: self.fingerprint,
        })
    }
}

/// A deferred command with its command encoded, ready for the writer.
pub(super) struct EncodedDeferred {
    pub(super) order_id: String,
    pub(super) command: String,
    pub(super) cause: String,
    pub(super) received_at_ms: i64,
}

impl EncodedDeferred {
    pub(super) fn new(deferred: DeferredCommand) -> Result<Self, StorageError> {
        Ok(Self {
            command: to_json(&deferred.command)?,
            order_id: deferred.order_id,
            cause: deferred.cause,
            received_at_ms: deferred.received_at_ms,
        })
    }
}

/// A journal entry as stored, with its audit record if it moves money or goods.
pub(super) struct EncodedEntry {
    pub(super) seq: u64,
    pub(super) at_ms: i64,
    pub(super) kind: &'static str,
    pub(super) cause: String,
    pub(super) data: String,
    pub(super) audit: Option<AuditRecord>,
}

/// Encodes `journal` (numbered from `first_seq`) for the writer. A financial
/// event's audit detail is the same JSON as its journal data.
pub(super) fn encode_journal(
    order_id: &str,
    first_seq: u64,
    journal: &[JournalAppend],
) -> Result<Vec<EncodedEntry>, StorageError> {
    journal
        .iter()
        .zip(first_seq..)
        .map(|(entry, seq)| {
            let data = to_json(&entry.event)?;
            let audit = entry.event.is_financial().then(|| {
                AuditRecord::event(
                    entry.at_ms,
                    entry.cause.clone(),
                    format!("order.{}", entry.event.kind()),
                    order_id.to_owned(),
                    data.clone(),
                )
            });
            Ok(EncodedEntry {
                seq,
                at_ms: entry.at_ms,
                kind: entry.event.kind(),
                cause: entry.cause.clone(),
                data,
                audit,
            })
        })
        .collect()
}
