//! The audit log's hash chain, as pure functions.
//!
//! Each entry's hash covers its own fields and the previous entry's hash, so
//! editing any stored field, or deleting an entry, breaks the link to the next
//! one. Entries are numbered from 1 without gaps, which makes a deleted first
//! entry visible too; a deleted *tail* is caught by comparing against the head
//! (sequence and hash) the writer records beside the log in the same commit.

use serde::Serialize;
use sha2::{Digest, Sha256};

/// The `prev_hash` of the first entry.
pub const GENESIS_HASH: &str = "0000000000000000000000000000000000000000000000000000000000000000";

/// One audit entry as stored: everything the hash covers, plus the hashes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct AuditEntry {
    pub seq: i64,
    pub at_ms: i64,
    /// Who: `operator`, `viewer`, or what caused a financial event (`webhook:<id>`, `timer`, ...).
    pub actor: String,
    /// What: `admin.pause`, `order.paid`, `stock.adjust`, ...
    pub action: String,
    /// The order id, SKU or entry the action concerns.
    pub subject: Option<String>,
    /// JSON text with the action's facts; never customer data.
    pub detail: String,
    pub peer: Option<String>,
    pub user_agent: Option<String>,
    pub prev_hash: String,
    pub hash: String,
}

/// The hash of an entry's fields chained to `prev_hash`, as lowercase hex.
///
/// The fields are hashed as one JSON array: every field is delimited and
/// escaped, so no two different entries serialize to the same bytes.
pub fn entry_hash(entry: &AuditEntry) -> String {
    let fields = (
        entry.seq,
        entry.at_ms,
        &entry.actor,
        &entry.action,
        &entry.subject,
        &entry.detail,
        &entry.peer,
        &entry.user_agent,
        &entry.prev_hash,
    );
    // Serialized straight into the hash: the same bytes as the array built
    // as a JSON value, without copying every field into one first (this runs
    // on the storage writer's thread, for every financial event).
    let mut hasher = Sha256::new();
    serde_json::to_writer(&mut hasher, &fields)
        .expect("integers and strings always serialize, and a hash takes any bytes");
    hex::encode(hasher.finalize())
}

/// The stored head of the log: the last entry's sequence number and hash.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuditHead {
    pub seq: i64,
    pub hash: String,
}

/// Where the chain breaks, in words an operator can act on.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ChainBreak {
    #[error(
        "entry {found} follows entry {previous}: entries {missing_from}..={missing_to} are missing"
    )]
    Gap {
        previous: i64,
        found: i64,
        missing_from: i64,
        missing_to: i64,
    },
    #[error("entry {seq}: its prev_hash does not match entry {previous}'s hash (an entry before it was changed or removed)")]
    Link { seq: i64, previous: i64 },
    #[error("entry {seq}: its contents do not match its hash (the entry was edited)")]
    Content { seq: i64 },
    #[error("the log ends at entry {last} but its recorded head is entry {head_seq}: entries after {last} were removed")]
    Truncated { last: i64, head_seq: i64 },
    #[error(
        "the last entry {seq} differs from the recorded head (the head or the entry was changed)"
    )]
    Head { seq: i64 },
}

/// Checks entries in sequence order as they are read, one at a time, so a log
/// of any length is verified in constant memory.
#[derive(Debug, Default)]
pub struct ChainVerifier {
    previous: Option<(i64, String)>,
    checked: u64,
}

impl ChainVerifier {
    pub fn new() -> Self {
        Self::default()
    }

    /// Checks the next entry against the one before it.
    pub fn push(&mut self, entry: &AuditEntry) -> Result<(), ChainBreak> {
        let (expected_seq, expected_prev) = match &self.previous {
            None => (1, GENESIS_HASH),
            Some((seq, hash)) => (seq + 1, hash.as_str()),
        };
        let previous_seq = expected_seq - 1;
        if entry.seq != expected_seq {
            return Err(ChainBreak::Gap {
                previous: previous_seq,
                found: entry.seq,
                missing_from: expected_seq,
                missing_to: entry.seq - 1,
            });
        }
        if entry.prev_hash != expected_prev {
            return Err(ChainBreak::Link {
                seq: entry.seq,
                previous: previous_seq,
            });
        }
        if entry_hash(entry) != entry.hash {
            return Err(ChainBreak::Content { seq: entry.seq });
        }
        self.previous = Some((entry.seq, entry.hash.clone()));
        self.checked += 1;
        Ok(())
    }

    /// Ends the check against the recorded head; returns the number of entries.
    pub fn finish(self, head: Option<&AuditHead>) -> Result<u64, ChainBreak> {
        let last = self.previous.as_ref().map_or(0, |(seq, _)| *seq);
        match head {
            None if last == 0 => Ok(0),
            // A log with entries but no head: the head row was deleted.
            None => Err(ChainBreak::Head { seq: last }),
            Some(head) if head.seq > last => Err(ChainBreak::Truncated {
                last,
                head_seq: head.seq,
            }),
            Some(head) => match &self.previous {
                Some((seq, hash)) if *seq == head.seq && *hash == head.hash => Ok(self.checked),
                _ => Err(ChainBreak::Head { seq: last }),
            },
        }
    }
}

/// Fills in `prev_hash` and `hash` for a new entry that follows `previous`.
pub fn seal(mut entry: AuditEntry, previous: Option<&AuditHead>) -> AuditEntry {
    let (seq, prev_hash) = match previous {
        None => (1, GENESIS_HASH.to_owned()),
        Some(head) => (head.seq + 1, head.hash.clone()),
    };
    entry.seq = seq;
    entry.prev_hash = prev_hash;
    entry.hash = entry_hash(&entry);
    entry
}

#[cfg(test)]
mod tests {
    use super::*;

    fn draft(action: &str) -> AuditEntry {
        AuditEntry {
            seq: 0,
            at_ms: 1_700_000_000_000,
            actor: "operator".into(),
            action: action.into(),
            subject: Some("ord_1".into()),
            detail: r#"{"delta":-2}"#.into(),
            peer: Some("127.0.0.1:5000".into()),
            user_agent: Some("curl/8".into()),
            prev_hash: String::new(),
            hash: String::new(),
        }
    }

    /// The hash as the log's first entries were chained: the fields built
    /// into a JSON array value, then printed. Stored hashes depend on it.
    fn hash_as_first_written(entry: &AuditEntry) -> String {
        let fields = serde_json::json!([
            entry.seq,
            entry.at_ms,
            entry.actor,
            entry.action,
            entry.subject,
            entry.detail,
            entry.peer,
            entry.user_agent,
            entry.prev_hash,
        ]);
        hex::encode(Sha256::digest(fields.to_string().as_bytes()))
    }

    #[test]
    fn the_hash_is_the_one_stored_logs_were_chained_with() {
        let mut odd = draft("order.paid");
        odd.seq = i64::MAX;
        odd.at_ms = -1;
        odd.actor = "webhook:evt_\"quoted\"\\ \u{7}\n\t é ✓".into();
        odd.detail = r#"{"note":"line\nbreak","amount_paise":74900}"#.into();
        odd.subject = None;
        odd.peer = None;
        odd.user_agent = Some(String::new());
        odd.prev_hash = GENESIS_HASH.into();
        for entry in [draft("admin.pause"), odd] {
            assert_eq!(entry_hash(&entry), hash_as_first_written(&entry));
        }
    }

    proptest::proptest! {
        #[test]
        fn any_entry_hashes_as_stored_logs_were_chained(
            seq in proptest::prelude::any::<i64>(),
            at_ms in proptest::prelude::any::<i64>(),
            actor in ".*",
            detail in ".*",
            subject in proptest::option::of(".*"),
            user_agent in proptest::option::of(".*"),
        ) {
            let entry = AuditEntry {
                seq,
                at_ms,
                actor,
                detail,
                subject,
                user_agent,
                ..draft("stock.adjust")
            };
            proptest::prop_assert_eq!(entry_hash(&entry), hash_as_first_written(&entry));
        }
    }

    fn chain(n: usize) -> Vec<AuditEntry> {
        let mut entries: Vec<AuditEntry> = Vec::new();
        for i in 0..n {
            let head = entries.last().map(|e| AuditHead {
                seq: e.seq,
                hash: e.hash.clone(),
            });
            entries.push(seal(draft(&format!("action.{i}")), head.as_ref()));
        }
        entries
    }

    fn head_of(entries: &[AuditEntry]) -> Option<AuditHead> {
        entries.last().map(|e| AuditHead {
            seq: e.seq,
            hash: e.hash.clone(),
        })
    }

    fn verify(entries: &[AuditEntry], head: Option<&AuditHead>) -> Result<u64, ChainBreak> {
        let mut verifier = ChainVerifier::new();
        for entry in entries {
            verifier.push(entry)?;
        }
        verifier.finish(head)
    }

    #[test]
    fn an_intact_chain_verifies() {
        let entries = chain(5);
        assert_eq!(entries[0].prev_hash, GENESIS_HASH);
        assert_eq!(entries[3].prev_hash, entries[2].hash);
        assert_eq!(verify(&entries, head_of(&entries).as_ref()), Ok(5));
        assert_eq!(verify(&[], None), Ok(0));
    }

    #[test]
    fn an_edited_field_is_caught_at_that_entry() {
        let mut entries = chain(4);
        entries[2].detail = r#"{"delta":-20}"#.into();
        assert_eq!(
            verify(&entries, head_of(&entries).as_ref()),
            Err(ChainBreak::Content { seq: 3 })
        );
    }

    #[test]
    fn an_edit_with_a_recomputed_hash_breaks_the_next_link() {
        let mut entries = chain(4);
        entries[1].actor = "viewer".into();
        entries[1].hash = entry_hash(&entries[1]);
        assert_eq!(
            verify(&entries, head_of(&entries).as_ref()),
            Err(ChainBreak::Link {
                seq: 3,
                previous: 2
            })
        );
    }

    #[test]
    fn deletions_are_caught_first_middle_and_last() {
        let entries = chain(5);
        let head = head_of(&entries);

        let mut middle = entries.clone();
        middle.remove(2);
        assert!(matches!(
            verify(&middle, head.as_ref()),
            Err(ChainBreak::Gap {
                previous: 2,
                found: 4,
                ..
            })
        ));

        let first = entries[1..].to_vec();
        assert!(matches!(
            verify(&first, head.as_ref()),
            Err(ChainBreak::Gap { found: 2, .. })
        ));

        let tail = entries[..3].to_vec();
        assert_eq!(
            verify(&tail, head.as_ref()),
            Err(ChainBreak::Truncated {
                last: 3,
                head_seq: 5
            })
        );
        assert_eq!(verify(&entries, None), Err(ChainBreak::Head { seq: 5 }));
    }

    #[test]
    fn renumbering_after_a_deletion_still_breaks_the_chain() {
        let mut entries = chain(4);
        entries.remove(1);
        for (i, entry) in entries.iter_mut().enumerate() {
            entry.seq = i as i64 + 1;
        }
        assert!(matches!(
            verify(&entries, head_of(&entries).as_ref()),
            Err(ChainBreak::Link { seq: 2, .. }) | Err(ChainBreak::Content { .. })
        ));
    }
}
