//! The daemon's persisted switches on PostgreSQL (the kill switch, the
//! shipping mode), under the same keys and values as on SQLite: an operator's
//! flip on any instance holds for the whole cluster and survives restarts.

use super::PgStore;
use crate::storage::{AuditedAction, StorageError};

const PROCESSING_PAUSED: &str = "processing_paused";
const SHIPPING_MANUAL: &str = "shipping_manual";

impl PgStore {
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

    /// True when a write commits right now (readiness), as on SQLite.
    pub async fn probe_writable(&self, now_ms: i64) -> Result<(), StorageError> {
        self.run(move |pool| async move {
            let client = pool.get().await?;
            put(&client, "ready_probe_at_ms", &now_ms.to_string()).await
        })
        .await
    }

    async fn flag(&self, key: &'static str) -> Result<Option<bool>, StorageError> {
        self.run(move |pool| async move {
            let client = pool.get().await?;
            Ok(client
                .query_opt("SELECT value FROM daemon_state WHERE key = $1", &[&key])
                .await?
                .map(|row| row.get::<_, &str>(0) == "true"))
        })
        .await
    }

    async fn set_flag(
        &self,
        key: &'static str,
        on: bool,
        audit: Option<AuditedAction>,
    ) -> Result<(), StorageError> {
        let record = audit.as_ref().map(|a| a.record.clone());
        self.run(move |pool| async move {
            let mut client = pool.get().await?;
            let tx = client.transaction().await?;
            put(&tx, key, if on { "true" } else { "false" }).await?;
            if let Some(record) = &record {
                super::audit::append(&tx, record).await?;
            }
            tx.commit().await?;
            Ok(())
        })
        .await?;
        if let Some(audit) = audit {
            audit.committed();
        }
        Ok(())
    }
}

/// Stores `value` under `key`, replacing what was there.
pub(super) async fn put(
    client: &impl deadpool_postgres::GenericClient,
    key: &str,
    value: &str,
) -> Result<(), StorageError> {
    client
        .execute(
            "INSERT INTO daemon_state (key, value) VALUES ($1, $2)
             ON CONFLICT (key) DO UPDATE SET value = EXCLUDED.value",
            &[&key, &value],
        )
        .await?;
    Ok(())
}
