//! The audit log: an append-only table of financial events and admin actions,
//! hash-chained by `domain::audit`.
//!
//! Entries are appended inside the same write job as the change they describe,
//! so a payment is never committed without its audit entry, and the chain is
//! extended by the single writer thread, so it never forks. The head (last
//! sequence number and hash) is recorded in `daemon_state` once per commit, just
//! before it, which is how `verify` notices entries removed from the end.

use rusqlite::{params, Connection, OptionalExtension};

use super::{daemon_state, SqliteStore, StorageError};
use crate::domain::audit::{self, AuditEntry, AuditHead, ChainBreak, ChainVerifier};

const HEAD_KEY: &str = "audit_head";

/// A new audit entry, before it is numbered and chained.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct AuditRecord {
    pub at_ms: i64,
    pub actor: String,
    pub action: String,
    pub subject: Option<String>,
    /// JSON text, encoded by the caller (never on the writer's thread).
    pub detail: String,
    pub peer: Option<String>,
    pub user_agent: Option<String>,
}

impl AuditRecord {
    /// A financial event caused by the system (a webhook, a timer) or by `actor`.
    pub fn event(
        at_ms: i64,
        actor: impl Into<String>,
        action: impl Into<String>,
        subject: impl Into<String>,
        detail: String,
    ) -> Self {
        Self {
            at_ms,
            actor: actor.into(),
            action: action.into(),
            subject: Some(subject.into()),
            detail,
            peer: None,
            user_agent: None,
        }
    }
}

impl AuditRecord {
    /// The entry this record becomes when appended after `previous`: numbered
    /// and hash-chained (`domain::audit::seal`), the same on every backend.
    pub(in crate::storage) fn sealed_after(&self, previous: Option<&AuditHead>) -> AuditEntry {
        audit::seal(
            AuditEntry {
                seq: 0,
                at_ms: self.at_ms,
                actor: self.actor.clone(),
                action: self.action.clone(),
                subject: self.subject.clone(),
                detail: self.detail.clone(),
                peer: self.peer.clone(),
                user_agent: self.user_agent.clone(),
                prev_hash: String::new(),
                hash: String::new(),
            },
            previous,
        )
    }
}

/// An admin action's audit entry travelling with the write that carries out
/// the action, so that the two commit together (SPEC §10). Whoever commits it
/// says so, and whoever answered the request then knows not to record it again.
#[derive(Debug, Clone)]
pub struct AuditedAction {
    pub record: AuditRecord,
    committed: std::sync::Arc<std::sync::atomic::AtomicBool>,
}

impl AuditedAction {
    pub fn new(
        record: AuditRecord,
        committed: std::sync::Arc<std::sync::atomic::AtomicBool>,
    ) -> Self {
        Self { record, committed }
    }

    /// The entry is in the commit that just succeeded.
    pub fn committed(&self) {
        self.committed
            .store(true, std::sync::atomic::Ordering::SeqCst);
    }
}

/// Why the audit log does not verify.
#[derive(Debug, thiserror::Error)]
pub enum AuditVerifyError {
    #[error("audit log broken: {0}")]
    Broken(#[from] ChainBreak),
    #[error(transparent)]
    Storage(#[from] StorageError),
}

impl From<rusqlite::Error> for AuditVerifyError {
    fn from(e: rusqlite::Error) -> Self {
        Self::Storage(StorageError::Sqlite(e))
    }
}

/// Appends `record` to the chain. Call inside a write job, beside the change it records.
pub(super) fn append(conn: &Connection, record: &AuditRecord) -> Result<i64, StorageError> {
    let previous = last_entry(conn)?;
    let entry = record.sealed_after(previous.as_ref());
    conn.prepare_cached(
        "INSERT INTO audit_log (seq, at_ms, actor, action, subject, detail, peer, user_agent, prev_hash, hash)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)",
    )?
    .execute(params![
        entry.seq,
        entry.at_ms,
        entry.actor,
        entry.action,
        entry.subject,
        entry.detail,
        entry.peer,
        entry.user_agent,
        entry.prev_hash,
        entry.hash,
    ])?;
    Ok(entry.seq)
}

/// The newest entry's number and hash, as the current transaction sees them
/// (jobs earlier in the same batch included).
fn last_entry(conn: &Connection) -> Result<Option<AuditHead>, StorageError> {
    Ok(conn
        .prepare_cached("SELECT seq, hash FROM audit_log ORDER BY seq DESC LIMIT 1")?
        .query_row([], |row| {
            Ok(AuditHead {
                seq: row.get(0)?,
                hash: row.get(1)?,
            })
        })
        .optional()?)
}

/// Records the chain's head for the commit about to happen: run by the writer
/// once per batch, so a batch of a hundred audited changes writes it once.
///
/// The head only moves forward along the chain it recorded: if its entry is
/// no longer in the log as recorded (entries were removed or edited behind
/// the daemon's back), it is left as it is, so `verify` keeps reporting the
/// damage instead of new entries papering over it.
pub(super) fn record_head(conn: &Connection) -> Result<(), StorageError> {
    let Some(last) = last_entry(conn)? else {
        return Ok(());
    };
    if let Some(head) = read_head(conn)? {
        if head == last {
            return Ok(());
        }
        let recorded: Option<String> = conn
            .prepare_cached("SELECT hash FROM audit_log WHERE seq = ?1")?
            .query_row([head.seq], |row| row.get(0))
            .optional()?;
        if recorded.as_deref() != Some(head.hash.as_str()) {
            tracing::error!(
                head_seq = head.seq,
                "the audit log no longer holds its recorded head: entries were removed or edited; run `dropshipd audit verify`"
            );
            return Ok(());
        }
    }
    daemon_state::put(conn, HEAD_KEY, &format!("{}:{}", last.seq, last.hash))
}

/// The head as last recorded.
fn read_head(conn: &Connection) -> Result<Option<AuditHead>, StorageError> {
    daemon_state::get(conn, HEAD_KEY)?
        .map(|text| {
            text.split_once(':')
                .and_then(|(seq, hash)| {
                    Some(AuditHead {
                        seq: seq.parse().ok()?,
                        hash: hash.to_owned(),
                    })
                })
                .ok_or_else(|| StorageError::Encoding(format!("audit head {text:?}")))
        })
        .transpose()
}

fn entry_from_row(row: &rusqlite::Row<'_>) -> rusqlite::Result<AuditEntry> {
    Ok(AuditEntry {
        seq: row.get(0)?,
        at_ms: row.get(1)?,
        actor: row.get(2)?,
        action: row.get(3)?,
        subject: row.get(4)?,
        detail: row.get(5)?,
        peer: row.get(6)?,
        user_agent: row.get(7)?,
        prev_hash: row.get(8)?,
        hash: row.get(9)?,
    })
}

const SELECT_ENTRIES: &str =
    "SELECT seq, at_ms, actor, action, subject, detail, peer, user_agent, prev_hash, hash FROM audit_log";

/// Walks the whole chain on `conn` (a read-only connection is enough): the
/// number of entries, or the first broken link.
pub fn verify_audit_log(conn: &Connection) -> Result<u64, AuditVerifyError> {
    // One read transaction: the log and its head from the same snapshot, even
    // while a daemon keeps appending.
    conn.execute_batch("BEGIN")?;
    let result = (|| {
        let mut verifier = ChainVerifier::new();
        let mut stmt = conn.prepare(&format!("{SELECT_ENTRIES} ORDER BY seq"))?;
        let mut rows = stmt.query([])?;
        while let Some(row) = rows.next()? {
            verifier.push(&entry_from_row(row)?)?;
        }
        let head = read_head(conn)?;
        Ok(verifier.finish(head.as_ref())?)
    })();
    conn.execute_batch("COMMIT")?;
    result
}

impl SqliteStore {
    /// Records an admin action (or any entry not tied to another write).
    pub async fn append_audit(&self, record: AuditRecord) -> Result<i64, StorageError> {
        self.write(move |conn| append(conn, &record)).await
    }

    /// Entries after sequence number `after`, oldest first.
    pub async fn audit_entries(
        &self,
        after: i64,
        limit: u32,
    ) -> Result<Vec<AuditEntry>, StorageError> {
        self.read(move |conn| {
            let mut stmt = conn.prepare_cached(&format!(
                "{SELECT_ENTRIES} WHERE seq > ?1 ORDER BY seq LIMIT ?2"
            ))?;
            let rows = stmt.query_map(params![after, limit], entry_from_row)?;
            Ok(rows.collect::<Result<Vec<_>, _>>()?)
        })
        .await
    }

    /// Entries newest first, below `before` (from the newest when `None`).
    pub async fn audit_entries_newest(
        &self,
        before: Option<i64>,
        limit: u32,
    ) -> Result<Vec<AuditEntry>, StorageError> {
        self.read(move |conn| {
            let mut stmt = conn.prepare_cached(&format!(
                "{SELECT_ENTRIES} WHERE seq < ?1 ORDER BY seq DESC LIMIT ?2"
            ))?;
            let rows =
                stmt.query_map(params![before.unwrap_or(i64::MAX), limit], entry_from_row)?;
            Ok(rows.collect::<Result<Vec<_>, _>>()?)
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::storage::{PiiKey, StorageOptions};

    fn record(i: i64) -> AuditRecord {
        AuditRecord::event(
            i,
            "operator",
            "stock.change",
            "TEE",
            format!(r#"{{"n":{i}}}"#),
        )
    }

    #[tokio::test]
    async fn new_entries_after_a_cut_tail_do_not_hide_it() {
        let dir = tempfile::tempdir().unwrap();
        let options = StorageOptions::new(
            dir.path().join("audit.db"),
            Duration::from_secs(5),
            PiiKey::from_bytes([3; 32]),
        );
        let storage = SqliteStore::open(&options).unwrap();
        for i in 1..=5 {
            storage.append_audit(record(i)).await.unwrap();
        }
        let check = || verify_audit_log(&crate::storage::open_read_only(&options.path).unwrap());
        assert_eq!(check().unwrap(), 5);

        let intruder = Connection::open(&options.path).unwrap();
        intruder
            .execute_batch("DROP TRIGGER audit_log_no_delete; DELETE FROM audit_log WHERE seq > 3;")
            .unwrap();
        assert!(matches!(
            check(),
            Err(AuditVerifyError::Broken(ChainBreak::Truncated {
                last: 3,
                head_seq: 5
            }))
        ));
        // The daemon goes on appending past the cut, even beyond the old head.
        for i in 6..=9 {
            storage.append_audit(record(i)).await.unwrap();
        }
        assert!(check().is_err(), "the cut was papered over");
    }
}
