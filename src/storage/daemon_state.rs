//! Small persisted switches of the daemon itself (the kill switch), kept in a
//! key/value table so operators' decisions survive restarts.

use rusqlite::OptionalExtension;

use super::{Storage, StorageError};

const PROCESSING_PAUSED: &str = "processing_paused";
const SHIPPING_MANUAL: &str = "shipping_manual";

impl Storage {
    /// The kill switch as an operator last set it, if ever.
    pub async fn processing_paused(&self) -> Result<Option<bool>, StorageError> {
        self.read(|conn| {
            let value: Option<String> = conn
                .prepare_cached("SELECT value FROM daemon_state WHERE key = ?1")?
                .query_row([PROCESSING_PAUSED], |row| row.get(0))
                .optional()?;
            Ok(value.map(|v| v == "true"))
        })
        .await
    }

    pub async fn set_processing_paused(&self, paused: bool) -> Result<(), StorageError> {
        self.write(move |conn| {
            conn.prepare_cached(
                "INSERT INTO daemon_state (key, value) VALUES (?1, ?2)
                 ON CONFLICT (key) DO UPDATE SET value = excluded.value",
            )?
            .execute([PROCESSING_PAUSED, if paused { "true" } else { "false" }])?;
            Ok(())
        })
        .await
    }

    /// The shipping mode as an operator last set it: `Some(true)` for manual.
    pub async fn shipping_manual(&self) -> Result<Option<bool>, StorageError> {
        self.read(|conn| {
            let value: Option<String> = conn
                .prepare_cached("SELECT value FROM daemon_state WHERE key = ?1")?
                .query_row([SHIPPING_MANUAL], |row| row.get(0))
                .optional()?;
            Ok(value.map(|v| v == "true"))
        })
        .await
    }

    pub async fn set_shipping_manual(&self, manual: bool) -> Result<(), StorageError> {
        self.write(move |conn| {
            conn.prepare_cached(
                "INSERT INTO daemon_state (key, value) VALUES (?1, ?2)
                 ON CONFLICT (key) DO UPDATE SET value = excluded.value",
            )?
            .execute([SHIPPING_MANUAL, if manual { "true" } else { "false" }])?;
            Ok(())
        })
        .await
    }
}
