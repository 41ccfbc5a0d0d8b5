//! The audit log on PostgreSQL: the same hash chain as on SQLite
//! (`domain::audit`), extended by whichever instance commits an audited
//! change. Appends are serialized across the cluster by a transaction-scoped
//! advisory lock, so the chain never forks; the head is recorded in
//! `daemon_state` in the same transaction as each append, which is how a
//! verification notices entries removed from the end.

use deadpool_postgres::GenericClient;
use tokio_postgres::Row;

use super::PgStore;
use crate::domain::audit::{AuditEntry, AuditHead, ChainVerifier};
use crate::storage::{AuditRecord, AuditVerifyError, StorageError};

/// The advisory lock every append holds until its transaction ends ("audit").
const AUDIT_LOCK: i64 = 0x0061_7564_6974;

pub(super) const HEAD_KEY: &str = "audit_head";

/// Appends `record` to the chain inside the caller's transaction, beside the
/// change it records; its sequence number.
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
    let entry = record.sealed_after(previous.as_ref());
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
    // The head only moves forward along the chain it recorded: if its entry
    // is no longer in the log as recorded, it stays, so a verification keeps
    // reporting the damage instead of new entries papering over it.
    if let (Some(head), Some(previous)) = (read_head(tx).await?, previous.as_ref()) {
        if head != *previous {
            let recorded = tx
                .query_opt("SELECT hash FROM audit_log WHERE seq = $1", &[&head.seq])
                .await?
                .map(|row| row.get::<_, String>(0));
            if recorded.as_deref() != Some(head.hash.as_str()) {
                tracing::error!(
                    head_seq = head.seq,
                    "the audit log no longer holds its recorded head: entries were removed or edited; run `dropshipd audit verify`"
                );
                return Ok(entry.seq);
            }
        }
    }
    super::daemon_state::put(tx, HEAD_KEY, &format!("{}:{}", entry.seq, entry.hash)).await?;
    Ok(entry.seq)
}

/// The head as last recorded.
async fn read_head(client: &impl GenericClient) -> Result<Option<AuditHead>, StorageError> {
    client
        .query_opt(
            "SELECT value FROM daemon_state WHERE key = $1",
            &[&HEAD_KEY],
        )
        .await?
        .map(|row| {
            let text: String = row.get(0);
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

const SELECT_ENTRIES: &str =
    "SELECT seq, at_ms, actor, action, subject, detail, peer, user_agent, prev_hash, hash FROM audit_log";

fn entry_from_row(row: &Row) -> AuditEntry {
    AuditEntry {
        seq: row.get(0),
        at_ms: row.get(1),
        actor: row.get(2),
        action: row.get(3),
        subject: row.get(4),
        detail: row.get(5),
        peer: row.get(6),
        user_agent: row.get(7),
        prev_hash: row.get(8),
        hash: row.get(9),
    }
}

impl PgStore {
    /// Records an admin action (or any entry not tied to another write).
    pub async fn append_audit(&self, record: AuditRecord) -> Result<i64, StorageError> {
        self.run(move |pool| async move {
            let mut client = pool.get().await?;
            let tx = client.transaction().await?;
            let seq = append(&tx, &record).await?;
            tx.commit().await?;
            Ok(seq)
        })
        .await
    }

    /// Entries after sequence number `after`, oldest first.
    pub async fn audit_entries(
        &self,
        after: i64,
        limit: u32,
    ) -> Result<Vec<AuditEntry>, StorageError> {
        self.run(move |pool| async move {
            let client = pool.get().await?;
            let rows = client
                .query(
                    &format!("{SELECT_ENTRIES} WHERE seq > $1 ORDER BY seq LIMIT $2"),
                    &[&after, &i64::from(limit)],
                )
                .await?;
            Ok(rows.iter().map(entry_from_row).collect())
        })
        .await
    }

    /// Entries newest first, below `before` (from the newest when `None`).
    pub async fn audit_entries_newest(
        &self,
        before: Option<i64>,
        limit: u32,
    ) -> Result<Vec<AuditEntry>, StorageError> {
        self.run(move |pool| async move {
            let client = pool.get().await?;
            let rows = client
                .query(
                    &format!("{SELECT_ENTRIES} WHERE seq < $1 ORDER BY seq DESC LIMIT $2"),
                    &[&before.unwrap_or(i64::MAX), &i64::from(limit)],
                )
                .await?;
            Ok(rows.iter().map(entry_from_row).collect())
        })
        .await
    }

    /// Walks the whole chain and its recorded head in one snapshot of the
    /// database: the number of entries, or the first broken link.
    pub async fn verify_audit_log(&self) -> Result<u64, AuditVerifyError> {
        let (entries, head) = self
            .run(|pool| async move {
                let mut client = pool.get().await?;
                let tx = client
                    .build_transaction()
                    .isolation_level(tokio_postgres::IsolationLevel::RepeatableRead)
                    .read_only(true)
                    .start()
                    .await?;
                let rows = tx
                    .query(&format!("{SELECT_ENTRIES} ORDER BY seq"), &[])
                    .await?;
                let head = read_head(&tx).await?;
                tx.commit().await?;
                Ok((rows.iter().map(entry_from_row).collect::<Vec<_>>(), head))
            })
            .await?;
        let mut verifier = ChainVerifier::new();
        for entry in &entries {
            verifier.push(entry)?;
        }
        Ok(verifier.finish(head.as_ref())?)
    }
}
