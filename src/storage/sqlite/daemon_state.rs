//! Small persisted switches of the daemon itself (the kill switch, the shipping
//! mode, the audit chain's head), kept in a key/value table so operators'
//! decisions survive restarts.

use rusqlite::{Connection, OptionalExtension};

use super::{AuditedAction, SqliteStore, StorageError};

const PROCESSING_PAUSED: &str = "processing_paused";
const SHIPPING_MANUAL: &str = "shipping_manual";

/// The value stored under `key`, if any.
pub(super) fn get(conn: &Connection, key: &str) -> Result<Option<String>, StorageError> {
    Ok(conn
        .prepare_cached("SELECT value FROM daemon_state WHERE key = ?1")?
        .query_row([key], |row| row.get(0))
        .optional()?)
}

/// Stores `value` under `key`, replacing what was there.
pub(super) fn put(conn: &Connection, key: &str, value: &str) -> Result<(), StorageError> {
    conn.prepare_cached(
        "INSERT INTO daemon_state (key, value) VALUES (?1, ?2)
         ON CONFLICT (key) DO UPDATE SET value = excluded.value",
    )?
    .execute([key, value])?;
    Ok(())
}

impl SqliteStore {
    /// The kill switch as an operator last set it, if ever.
    pub async fn processing_paused(&self) -> Result<Option<bool>, StorageError> {
        self.flag(PROCESSING_PAUSED).await
    }

    /// Sets the kill switch; `audit` is the operator's action, committed with it.
    pub async fn set_processing_paused(
        &self,
        paused: bool,
        audit: Option<AuditedAction>,
    ) -> Result<(), StorageError> {
        self.set_flag(PROCESSING_PAUSED, paused, audit).await
    }

    /// The shipping mode as an operator last set it: `Some(true)` for manual.
    pub async fn shipping_manual(&self) -> Result<Option<bool>, StorageError> {
        self.flag(SHIPPING_MANUAL).await
    }

    /// Sets the shipping mode; `audit` is the operator's action, committed with it.
    pub async fn set_shipping_manual(
        &self,
        manual: bool,
        audit: Option<AuditedAction>,
    ) -> Result<(), StorageError> {
        self.set_flag(SHIPPING_MANUAL, manual, audit).await
    }

    async fn flag(&self, key: &'static str) -> Result<Option<bool>, StorageError> {
        self.read(move |conn| Ok(get(conn, key)?.map(|v| v == "true")))
            .await
    }

    async fn set_flag(
        &self,
        key: &'static str,
        on: bool,
        audit: Option<AuditedAction>,
    ) -> Result<(), StorageError> {
        let record = audit.as_ref().map(|a| a.record.clone());
        self.write(move |conn| {
            put(conn, key, if on { "true" } else { "false" })?;
            if let Some(record) = &record {
                super::audit::append(conn, record)?;
            }
            Ok(())
        })
        .await?;
        if let Some(audit) = audit {
            audit.committed();
        }
        Ok(())
    }
}
