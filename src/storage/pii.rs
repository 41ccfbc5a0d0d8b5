//! Customer data at rest (SPEC §10): AES-256-GCM under `storage.pii_key`.
//!
//! Everything that can carry a customer's name, e-mail, phone or address (raw
//! webhook bodies in the inbox and the dead-letter queue, an order's customer
//! record), and the Shiprocket API tokens that can read all of it there, is
//! sealed before it reaches the writer and opened only when read back for
//! processing. A sealed value is `MAGIC || nonce || ciphertext+tag`;
//! the associated data names the column, so a value moved to another column
//! does not open. Values written before encryption was introduced lack the
//! magic and are read as they are.

use std::cell::RefCell;

use aes_gcm::aead::{Aead, Generate, KeyInit, Payload};
use aes_gcm::{Aes256Gcm, Key};
use rand::rngs::{StdRng, SysRng};
use rand::SeedableRng;

type GcmNonce = aes_gcm::aead::Nonce<Aes256Gcm>;

use super::StorageError;

const MAGIC: &[u8; 4] = b"DSE1";
const NONCE_LEN: usize = 12;

/// Which column a sealed value belongs to (the associated data).
#[derive(Debug, Clone, Copy)]
pub(super) enum Column {
    InboxBody,
    DeadLetterBody,
    OrderCustomer,
    /// A Shiprocket API token: it can read every customer's data at Shiprocket.
    ShiprocketToken,
    /// A message for an order's actor on another instance, or its reply.
    ClusterCommand,
}

impl Column {
    fn label(self) -> &'static [u8] {
        match self {
            Self::InboxBody => b"inbox.body",
            Self::DeadLetterBody => b"dead_letters.body",
            Self::OrderCustomer => b"orders.customer",
            Self::ShiprocketToken => b"shiprocket_tokens.token",
            Self::ClusterCommand => b"cluster_commands.message",
        }
    }
}

/// A 32-byte key, parsed from the 64 hex digits of `storage.pii_key`.
#[derive(Clone)]
pub struct PiiKey([u8; 32]);

impl PiiKey {
    pub fn from_hex(hex_key: &str) -> Result<Self, StorageError> {
        let bytes = hex::decode(hex_key.trim())
            .map_err(|_| StorageError::Encoding("storage.pii_key is not 64 hex digits".into()))?;
        let key: [u8; 32] = bytes.try_into().map_err(|_| {
            StorageError::Encoding("storage.pii_key is not 32 bytes (64 hex digits)".into())
        })?;
        Ok(Self(key))
    }

    pub fn from_bytes(key: [u8; 32]) -> Self {
        Self(key)
    }
}

impl std::fmt::Debug for PiiKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("PiiKey(..)")
    }
}

thread_local! {
    /// This thread's nonce generator, seeded from the OS on first use.
    static NONCES: RefCell<Option<StdRng>> = const { RefCell::new(None) };
}

/// A nonce from this thread's CSPRNG (ChaCha12 under a 256-bit seed from the
/// OS), not a `getrandom` system call per value: every webhook body is sealed,
/// and that call was 2% of the daemon's CPU under a burst of them. GCM needs
/// nonces that never repeat under one key; independent seeds per thread and
/// per start keep the odds of a repeat those of drawing every nonce from the
/// OS. A seed the OS cannot give is an error, as a nonce it could not give was.
fn fresh_nonce() -> Result<GcmNonce, StorageError> {
    NONCES.with(|cell| {
        let mut slot = cell.borrow_mut();
        let rng = match &mut *slot {
            Some(rng) => rng,
            None => slot.insert(StdRng::try_from_rng(&mut SysRng).map_err(|e| {
                StorageError::Encoding(format!("no randomness to seed the nonces: {e}"))
            })?),
        };
        Ok(GcmNonce::generate_from_rng(rng))
    })
}

/// Seals and opens customer data.
pub(super) struct PiiCipher {
    cipher: Aes256Gcm,
}

impl PiiCipher {
    pub(super) fn new(key: &PiiKey) -> Self {
        Self {
            cipher: Aes256Gcm::new(&Key::<Aes256Gcm>::from(key.0)),
        }
    }

    pub(super) fn seal(&self, column: Column, plaintext: &[u8]) -> Result<Vec<u8>, StorageError> {
        let nonce = fresh_nonce()?;
        let sealed = self
            .cipher
            .encrypt(
                &nonce,
                Payload {
                    msg: plaintext,
                    aad: column.label(),
                },
            )
            .map_err(|_| StorageError::Encoding("encryption failed".into()))?;
        let mut out = Vec::with_capacity(MAGIC.len() + NONCE_LEN + sealed.len());
        out.extend_from_slice(MAGIC);
        out.extend_from_slice(&nonce);
        out.extend_from_slice(&sealed);
        Ok(out)
    }

    /// The plaintext of a stored value (sealed, or legacy plaintext).
    pub(super) fn open(&self, column: Column, stored: &[u8]) -> Result<Vec<u8>, StorageError> {
        let Some(rest) = stored.strip_prefix(MAGIC.as_slice()) else {
            return Ok(stored.to_vec());
        };
        if rest.len() < NONCE_LEN {
            return Err(StorageError::Encoding("sealed value is truncated".into()));
        }
        let (nonce, sealed) = rest.split_at(NONCE_LEN);
        let nonce = GcmNonce::try_from(nonce)
            .map_err(|_| StorageError::Encoding("sealed value has a bad nonce".into()))?;
        self.cipher
            .decrypt(
                &nonce,
                Payload {
                    msg: sealed,
                    aad: column.label(),
                },
            )
            .map_err(|_| {
                StorageError::Encoding(
                    "customer data does not decrypt: wrong storage.pii_key or a damaged value"
                        .into(),
                )
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cipher(byte: u8) -> PiiCipher {
        PiiCipher::new(&PiiKey::from_bytes([byte; 32]))
    }

    #[test]
    fn sealed_values_open_and_hide_their_plaintext() {
        let c = cipher(7);
        let text = br#"{"email":"asha@example.com"}"#;
        let sealed = c.seal(Column::OrderCustomer, text).unwrap();
        assert!(!sealed.windows(5).any(|w| w == b"asha@"));
        assert_eq!(c.open(Column::OrderCustomer, &sealed).unwrap(), text);
        // A fresh nonce each time: equal plaintexts do not look equal on disk.
        assert_ne!(sealed, c.seal(Column::OrderCustomer, text).unwrap());
    }

    #[test]
    fn wrong_key_wrong_column_and_damage_are_refused() {
        let sealed = cipher(7).seal(Column::InboxBody, b"body").unwrap();
        assert!(cipher(8).open(Column::InboxBody, &sealed).is_err());
        assert!(cipher(7).open(Column::DeadLetterBody, &sealed).is_err());
        let mut damaged = sealed.clone();
        let last = damaged.len() - 1;
        damaged[last] ^= 1;
        assert!(cipher(7).open(Column::InboxBody, &damaged).is_err());
        assert!(cipher(7).open(Column::InboxBody, &sealed[..10]).is_err());
    }

    /// GCM under one key must never see a nonce twice: each thread draws from
    /// its own generator, and no two draws, within or across threads, repeat.
    #[test]
    fn nonces_do_not_repeat_within_or_across_threads() {
        let c = std::sync::Arc::new(cipher(3));
        let threads: Vec<_> = (0..4)
            .map(|_| {
                let c = std::sync::Arc::clone(&c);
                std::thread::spawn(move || {
                    (0..10_000)
                        .map(|_| {
                            let sealed = c.seal(Column::InboxBody, b"{}").unwrap();
                            sealed[MAGIC.len()..MAGIC.len() + NONCE_LEN].to_vec()
                        })
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        let mut seen = std::collections::HashSet::new();
        for thread in threads {
            for nonce in thread.join().unwrap() {
                assert!(seen.insert(nonce), "a nonce repeated");
            }
        }
        assert_eq!(seen.len(), 40_000);
    }

    #[test]
    fn legacy_plaintext_reads_as_is() {
        assert_eq!(cipher(1).open(Column::InboxBody, b"{}").unwrap(), b"{}");
    }

    #[test]
    fn keys_must_be_64_hex_digits() {
        assert!(PiiKey::from_hex(&"ab".repeat(32)).is_ok());
        assert!(PiiKey::from_hex(&"ab".repeat(16)).is_err());
        assert!(PiiKey::from_hex(&"zz".repeat(32)).is_err());
    }
}
