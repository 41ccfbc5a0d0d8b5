//! The audit log on PostgreSQL: the same hash chain as on SQLite
//! (`domain::audit`), extended by whichever instance commits an audited
//! change. Appends are serialized across the cluster by a transaction-scoped
//! advisory lock, so the chain never forks; the head is recorded in
//! `daemon_state` in the same transaction as each append, which is how a
//! verification notices entries removed from the end.

use deadpool_postgres::GenericClient;

use crate::domain::audit::{self, AuditEntry, AuditHead};
use crate::storage::{AuditRecord, StorageError};

/// The advisory lock every append holds until its transaction ends ("audit").
const AUDIT_LOCK: i64 = 0x0061_7564_6974;

#[allow(dead_code)]
pub(super) const HEAD_KEY: &str = "audit_head";

/// Appends `record` to the chain inside the caller's transaction, beside the
/// change it records; its sequence number.
#[allow(dead_code)] // the ports of orders and stock call it
pub(super) async fn append(
    tx: &impl GenericClient,
    record: &AuditRecord,
) -> Result<i64, StorageError> {
    tx.execute("SELECT pg_advisory_xact_lock($1)", &[&AUDIT_LOCK])
        .await?;
    let previous = tx
        .query_opt(
            "SELECT seq, hash FROM audit_log ORDER BY seq DESC LIMIT 1",
            &[],
        )
        .await?
        .map(|row| AuditHead {
            seq: row.get(0),
            hash: row.get(1),
        });
    let entry = audit::seal(
        AuditEntry {
            seq: 0,
            at_ms: record.at_ms,
            actor: record.actor.clone(),
            action: record.action.clone(),
            subject: record.subject.clone(),
            detail: record.detail.clone(),
            peer: record.peer.clone(),
            user_agent: record.user_agent.clone(),
            prev_hash: String::new(),
            hash: String::new(),
        },
        previous.as_ref(),
    );
    tx.execute(
        "INSERT INTO audit_log (seq, at_ms, actor, action, subject, detail, peer, user_agent, prev_hash, hash)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)",
        &[
            &entry.seq,
            &entry.at_ms,
            &entry.actor,
            &entry.action,
            &entry.subject,
            &entry.detail,
            &entry.peer,
            &entry.user_agent,
            &entry.prev_hash,
            &entry.hash,
        ],
    )
    .await?;
    tx.execute(
        "INSERT INTO daemon_state (key, value) VALUES ($1, $2)
         ON CONFLICT (key) DO UPDATE SET value = EXCLUDED.value",
        &[&HEAD_KEY, &format!("{}:{}", entry.seq, entry.hash)],
    )
    .await?;
    Ok(entry.seq)
}
