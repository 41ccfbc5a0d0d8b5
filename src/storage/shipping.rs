//! Shiprocket tokens per account.

use rusqlite::{params, OptionalExtension};

use super::{Storage, StorageError};

impl Storage {
    /// The cached token of `account` and when it was issued.
    pub async fn shiprocket_token(
        &self,
        account: &str,
    ) -> Result<Option<(String, i64)>, StorageError> {
        let account = account.to_owned();
        self.read(move |conn| {
            Ok(conn
                .prepare_cached(
                    "SELECT token, issued_at_ms FROM shiprocket_tokens WHERE account = ?1",
                )?
                .query_row([&account], |row| Ok((row.get(0)?, row.get(1)?)))
                .optional()?)
        })
        .await
    }

    pub async fn save_shiprocket_token(
        &self,
        account: &str,
        token: &str,
        issued_at_ms: i64,
    ) -> Result<(), StorageError> {
        let (account, token) = (account.to_owned(), token.to_owned());
        self.write(move |conn| {
            conn.prepare_cached(
                "INSERT INTO shiprocket_tokens (account, token, issued_at_ms) VALUES (?1, ?2, ?3)
                 ON CONFLICT (account) DO UPDATE SET token = excluded.token, issued_at_ms = excluded.issued_at_ms",
            )?
            .execute(params![account, token, issued_at_ms])?;
            Ok(())
        })
        .await
    }
}
