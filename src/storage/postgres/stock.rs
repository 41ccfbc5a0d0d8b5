//! Stock levels, their ledger, and per-order allocations on PostgreSQL: the
//! same rules as on SQLite (a level changes only with a ledger row in the same
//! transaction; an order's step is a conditional move of its allocation row,
//! so a repeat writes nothing), made safe for several instances writing at
//! once.
//!
//! On SQLite one writer thread orders every change. Here concurrent
//! transactions from any instance meet in the database, so each one locks
//! the `stock_levels` rows of all the SKUs it touches before it changes any of
//! them, always in the same order (by SKU, byte-wise), which is what keeps two
//! transactions taking the same rows from ever waiting on each other in a
//! circle. With the rows locked, a step is checked against the level it will
//! change: a change that would leave fewer units on hand than are reserved
//! is refused and its whole transaction rolls back (a multi-SKU reservation
//! is all or nothing). The `stock_available_never_negative` CHECK constraint
//! stands behind that check for any writer that skips it.

use std::collections::{BTreeMap, BTreeSet};

use deadpool_postgres::GenericClient;
use tokio_postgres::error::SqlState;

use super::PgStore;
use crate::domain::stock::{
    AllocationStatus, AllocationStep, ProductFacts, StockError, StockLevel,
};
use crate::storage::stock_step::EncodedStep;
use crate::storage::{
    Allocation, AuditedAction, StockItem, StockMismatch, StockStep, StorageError,
};

/// The rows a transaction holds locked, with their levels as it changes them.
pub(super) struct Locked {
    levels: BTreeMap<String, StockLevel>,
    /// Rows this transaction inserted to have something to lock: SQLite has a
    /// row only for a SKU some change reached, so the ones nothing reached go
    /// again before commit.
    created: BTreeSet<String>,
    /// Rows a change reached (a step, or product facts).
    touched: BTreeSet<String>,
}

/// Locks the rows of `skus` in byte order of SKU, inserting the missing ones
/// (in that order as well) so that a SKU's first change has a row to lock.
///
/// The order has to be the same in every transaction, and not the locale's:
/// `COLLATE "C"` sorts as Rust sorts strings.
async fn lock_levels<'a>(
    tx: &impl GenericClient,
    skus: impl IntoIterator<Item = &'a str>,
) -> Result<Locked, StorageError> {
    let skus: Vec<&str> = skus
        .into_iter()
        .collect::<BTreeSet<_>>()
        .into_iter()
        .collect();
    let mut locked = Locked {
        levels: BTreeMap::new(),
        created: BTreeSet::new(),
        touched: BTreeSet::new(),
    };
    if skus.is_empty() {
        return Ok(locked);
    }
    let insert = tx
        .prepare_cached(
            "INSERT INTO stock_levels (sku)
             SELECT sku FROM unnest($1::text[]) AS wanted (sku) ORDER BY sku COLLATE \"C\"
             ON CONFLICT (sku) DO NOTHING
             RETURNING sku",
        )
        .await?;
    for row in tx.query(&insert, &[&skus]).await? {
        locked.created.insert(row.get(0));
    }
    // ORDER BY runs below the locking step, so the rows are locked in this order.
    let select = tx
        .prepare_cached(
            "SELECT sku, on_hand, reserved FROM stock_levels WHERE sku = ANY($1)
             ORDER BY sku COLLATE \"C\" FOR UPDATE",
        )
        .await?;
    for row in tx.query(&select, &[&skus]).await? {
        locked.levels.insert(
            row.get(0),
            StockLevel {
                on_hand: row.get(1),
                reserved: row.get(2),
            },
        );
    }
    Ok(locked)
}

/// Removes the rows [`lock_levels`] inserted that no change reached.
async fn forget_untouched(tx: &impl GenericClient, locked: &Locked) -> Result<(), StorageError> {
    let untouched: Vec<&str> = locked
        .created
        .difference(&locked.touched)
        .map(String::as_str)
        .collect();
    if !untouched.is_empty() {
        tx.execute(
            "DELETE FROM stock_levels WHERE sku = ANY($1)",
            &[&untouched],
        )
        .await?;
    }
    Ok(())
}

/// Applies `steps` in order inside the caller's transaction: for each, whether
/// it applied (`false`: its allocation had moved already, nothing written).
/// Fails, writing nothing the caller can commit, if a step would take a
/// level below what it may.
///
/// It locks the rows of all its SKUs first. A caller that locks other rows or
/// appends to the audit log (whose lock every stock change takes after its
/// rows) earlier in the same transaction would risk a deadlock with a
/// concurrent stock change: such a caller takes the rows with [`lock_steps`]
/// first, then applies them with [`apply_locked_steps`] (as orders do).
#[cfg(test)]
pub(super) async fn apply_steps(
    tx: &impl GenericClient,
    steps: &[EncodedStep],
) -> Result<Vec<bool>, StorageError> {
    let locked = lock_steps(tx, steps).await?;
    apply_locked_steps(tx, steps, locked).await
}

/// Locks the stock rows `steps` change, before anything else the transaction does.
pub(super) async fn lock_steps(
    tx: &impl GenericClient,
    steps: &[EncodedStep],
) -> Result<Locked, StorageError> {
    lock_levels(tx, steps.iter().map(|e| e.step.sku.as_str())).await
}

/// Applies `steps` under the rows [`lock_steps`] locked for them.
pub(super) async fn apply_locked_steps(
    tx: &impl GenericClient,
    steps: &[EncodedStep],
    mut locked: Locked,
) -> Result<Vec<bool>, StorageError> {
    let applied = apply_locked(tx, steps, &mut locked).await?;
    forget_untouched(tx, &locked).await?;
    Ok(applied)
}

/// [`apply_steps`] once the rows are locked.
async fn apply_locked(
    tx: &impl GenericClient,
    steps: &[EncodedStep],
    locked: &mut Locked,
) -> Result<Vec<bool>, StorageError> {
    let mut applied = Vec::with_capacity(steps.len());
    for encoded in steps {
        let done = apply_step(tx, &encoded.step, locked).await?;
        if done {
            super::audit::append(tx, &encoded.audit).await?;
        }
        applied.push(done);
    }
    Ok(applied)
}

async fn apply_step(
    tx: &impl GenericClient,
    step: &StockStep,
    locked: &mut Locked,
) -> Result<bool, StorageError> {
    let order_id = match &step.allocation {
        AllocationStep::None => None,
        AllocationStep::Create { order_id, quantity } => {
            let insert = tx
                .prepare_cached(
                    "INSERT INTO stock_allocations (order_id, sku, quantity, status)
                     VALUES ($1, $2, $3, 'held')
                     ON CONFLICT (order_id, sku) DO NOTHING",
                )
                .await?;
            if tx
                .execute(&insert, &[order_id, &step.sku, quantity])
                .await?
                == 0
            {
                return Ok(false);
            }
            Some(order_id)
        }
        AllocationStep::Move { order_id, from, to } => {
            // One conditional statement, not a read then a write: another
            // instance moving the same row waits for this one, then finds the
            // status changed and moves nothing.
            let from: Vec<&str> = from.iter().map(|s| s.as_str()).collect();
            let update = tx
                .prepare_cached(
                    "UPDATE stock_allocations SET status = $3
                     WHERE order_id = $1 AND sku = $2 AND status = ANY($4)",
                )
                .await?;
            let moved = tx
                .execute(&update, &[order_id, &step.sku, &to.as_str(), &from])
                .await?;
            if moved == 0 {
                return Ok(false);
            }
            Some(order_id)
        }
    };
    let level = locked.levels.get(&step.sku).copied().ok_or_else(|| {
        StorageError::Postgres(format!("stock level of {:?} was not locked", step.sku))
    })?;
    if let Some(refusal) = refusal(level, step) {
        return Err(refused(&step.sku, refusal));
    }
    let update = tx
        .prepare_cached(
            "UPDATE stock_levels SET on_hand = on_hand + $2, reserved = reserved + $3
             WHERE sku = $1 RETURNING on_hand, reserved",
        )
        .await?;
    let row = tx
        .query_one(
            &update,
            &[&step.sku, &step.delta.on_hand, &step.delta.reserved],
        )
        .await
        .map_err(|e| {
            if e.code() == Some(&SqlState::CHECK_VIOLATION) {
                refused(
                    &step.sku,
                    StockError::BelowReserved {
                        on_hand: level.on_hand + step.delta.on_hand,
                        reserved: level.reserved + step.delta.reserved,
                    },
                )
            } else {
                e.into()
            }
        })?;
    locked.levels.insert(
        step.sku.clone(),
        StockLevel {
            on_hand: row.get(0),
            reserved: row.get(1),
        },
    );
    locked.touched.insert(step.sku.clone());
    let ledger = tx
        .prepare_cached(
            "INSERT INTO stock_ledger (sku, on_hand_delta, reserved_delta, reason, order_id, at_ms)
             VALUES ($1, $2, $3, $4, $5, $6)",
        )
        .await?;
    tx.execute(
        &ledger,
        &[
            &step.sku,
            &step.delta.on_hand,
            &step.delta.reserved,
            &step.reason,
            &order_id,
            &step.at_ms,
        ],
    )
    .await?;
    Ok(true)
}

/// Why the database would refuse `step` on `level` (the CHECK constraint's
/// rule), in the domain's terms: a hold or an order's sale of units not held
/// wants units that are not there; any other change would leave `reserved`
/// negative or above `on_hand`.
fn refusal(level: StockLevel, step: &StockStep) -> Option<StockError> {
    let delta = step.delta;
    let next = level.plus(delta);
    if next.reserved < 0 {
        return Some(StockError::NotReserved {
            reserved: level.reserved,
            wanted: -delta.reserved,
        });
    }
    if next.available() >= 0 {
        return None;
    }
    let holds = delta.on_hand == 0 && delta.reserved > 0;
    let sells_unheld = delta.reserved == 0
        && delta.on_hand < 0
        && !matches!(step.allocation, AllocationStep::None);
    Some(if holds || sells_unheld {
        StockError::Insufficient {
            available: level.available(),
            wanted: delta.reserved - delta.on_hand,
        }
    } else {
        StockError::BelowReserved {
            on_hand: next.on_hand,
            reserved: next.reserved,
        }
    })
}

/// A refused change: nothing of its transaction commits.
fn refused(sku: &str, error: StockError) -> StorageError {
    StorageError::StockRefused {
        sku: sku.to_owned(),
        error,
    }
}

impl PgStore {
    /// Applies a step; `false` when its allocation move had already happened.
    pub async fn apply_stock_step(&self, step: StockStep) -> Result<bool, StorageError> {
        let applied = self.apply_stock_steps(vec![step]).await?;
        Ok(applied.first().copied().unwrap_or(false))
    }

    /// Applies `steps` in one commit, each flagged as applied or already done.
    pub async fn apply_stock_steps(
        &self,
        steps: Vec<StockStep>,
    ) -> Result<Vec<bool>, StorageError> {
        self.apply_operator_steps(steps, None, None).await
    }

    /// An operator's stock change: the steps, the product facts given with
    /// them and the action's audit entry, in one commit.
    pub async fn apply_operator_steps(
        &self,
        steps: Vec<StockStep>,
        facts: Option<(String, ProductFacts)>,
        audit: Option<AuditedAction>,
    ) -> Result<Vec<bool>, StorageError> {
        let steps: Vec<EncodedStep> = steps.into_iter().map(EncodedStep::new).collect();
        let record = audit.as_ref().map(|a| a.record.clone());
        let applied = self
            .run(move |pool| async move {
                let mut client = pool.get().await?;
                let tx = client.transaction().await?;
                // Every row first, the facts' too, and only then the audit
                // log's lock: the order every stock change takes them in.
                let skus = steps
                    .iter()
                    .map(|e| e.step.sku.as_str())
                    .chain(facts.as_ref().map(|(sku, _)| sku.as_str()));
                let mut locked = lock_levels(&tx, skus).await?;
                if let Some((sku, facts)) = &facts {
                    put_product_facts(&tx, sku, facts).await?;
                    locked.touched.insert(sku.clone());
                }
                if let Some(record) = &record {
                    super::audit::append(&tx, record).await?;
                }
                let applied = apply_locked(&tx, &steps, &mut locked).await?;
                forget_untouched(&tx, &locked).await?;
                tx.commit().await?;
                Ok(applied)
            })
            .await?;
        if let Some(audit) = audit {
            audit.committed();
        }
        Ok(applied)
    }

    /// The levels of `skus` as committed now.
    pub async fn stock_levels_of(
        &self,
        skus: Vec<String>,
    ) -> Result<Vec<(String, StockLevel)>, StorageError> {
        self.run(move |pool| async move {
            let client = pool.get().await?;
            let select = client
                .prepare_cached(
                    "SELECT sku, on_hand, reserved FROM stock_levels WHERE sku = ANY($1)",
                )
                .await?;
            let found: BTreeMap<String, StockLevel> = client
                .query(&select, &[&skus])
                .await?
                .iter()
                .map(|row| {
                    (
                        row.get(0),
                        StockLevel {
                            on_hand: row.get(1),
                            reserved: row.get(2),
                        },
                    )
                })
                .collect();
            Ok(skus
                .into_iter()
                .map(|sku| {
                    let level = found.get(&sku).copied().unwrap_or_default();
                    (sku, level)
                })
                .collect())
        })
        .await
    }

    /// Every SKU's level, for the shards to start from.
    pub async fn stock_levels(&self) -> Result<Vec<(String, StockLevel)>, StorageError> {
        self.run(|pool| async move {
            let client = pool.get().await?;
            let rows = client
                .query(
                    "SELECT sku, on_hand, reserved FROM stock_levels ORDER BY sku COLLATE \"C\"",
                    &[],
                )
                .await?;
            Ok(rows
                .iter()
                .map(|row| {
                    (
                        row.get(0),
                        StockLevel {
                            on_hand: row.get(1),
                            reserved: row.get(2),
                        },
                    )
                })
                .collect())
        })
        .await
    }

    pub async fn stock_item(&self, sku: &str) -> Result<Option<StockItem>, StorageError> {
        let sku = sku.to_owned();
        self.run(move |pool| async move {
            let client = pool.get().await?;
            let select = client
                .prepare_cached(
                    "SELECT on_hand, reserved, name, weight_kg, dims_cm, hsn
                     FROM stock_levels WHERE sku = $1",
                )
                .await?;
            let row = client.query_opt(&select, &[&sku]).await?;
            Ok(row.map(|row| {
                let dims: Option<String> = row.get(4);
                StockItem {
                    sku: sku.clone(),
                    level: StockLevel {
                        on_hand: row.get(0),
                        reserved: row.get(1),
                    },
                    facts: ProductFacts {
                        name: row.get(2),
                        weight_kg: row.get(3),
                        dims_cm: dims.and_then(|d| serde_json::from_str(&d).ok()),
                        hsn: row.get(5),
                    },
                }
            }))
        })
        .await
    }

    /// Records product facts; absent fields keep their stored value.
    pub async fn set_product_facts(
        &self,
        sku: &str,
        facts: ProductFacts,
    ) -> Result<(), StorageError> {
        let sku = sku.to_owned();
        self.run(move |pool| async move {
            let client = pool.get().await?;
            put_product_facts(&client, &sku, &facts).await
        })
        .await
    }

    /// The status of one order's allocation of one SKU, if it has one.
    pub async fn allocation_status(
        &self,
        order_id: &str,
        sku: &str,
    ) -> Result<Option<AllocationStatus>, StorageError> {
        let (order_id, sku) = (order_id.to_owned(), sku.to_owned());
        self.run(move |pool| async move {
            let client = pool.get().await?;
            let select = client
                .prepare_cached(
                    "SELECT status FROM stock_allocations WHERE order_id = $1 AND sku = $2",
                )
                .await?;
            let status: Option<String> = client
                .query_opt(&select, &[&order_id, &sku])
                .await?
                .map(|row| row.get(0));
            Ok(status.as_deref().and_then(AllocationStatus::parse))
        })
        .await
    }

    pub async fn allocations(&self, order_id: &str) -> Result<Vec<Allocation>, StorageError> {
        let order_id = order_id.to_owned();
        self.run(move |pool| async move {
            let client = pool.get().await?;
            let select = client
                .prepare_cached(
                    "SELECT sku, quantity, status FROM stock_allocations WHERE order_id = $1
                     ORDER BY sku COLLATE \"C\"",
                )
                .await?;
            let rows = client.query(&select, &[&order_id]).await?;
            Ok(rows
                .iter()
                .map(|row| {
                    let status: &str = row.get(2);
                    Allocation {
                        order_id: order_id.clone(),
                        sku: row.get(0),
                        quantity: row.get(1),
                        status: AllocationStatus::parse(status)
                            .unwrap_or(AllocationStatus::Released),
                    }
                })
                .collect())
        })
        .await
    }

    /// Levels that differ from the sums of their ledgers: `(checked, mismatches)`.
    pub async fn reconcile_stock(&self) -> Result<(u64, Vec<StockMismatch>), StorageError> {
        self.run(|pool| async move {
            let mut client = pool.get().await?;
            // One snapshot for the count and the comparison, as on SQLite.
            let tx = client
                .build_transaction()
                .isolation_level(tokio_postgres::IsolationLevel::RepeatableRead)
                .read_only(true)
                .start()
                .await?;
            let checked: i64 = tx
                .query_one("SELECT count(*) FROM stock_levels", &[])
                .await?
                .get(0);
            let rows = tx
                .query(
                    "SELECT l.sku, l.on_hand, coalesce(g.on_hand, 0), l.reserved, coalesce(g.reserved, 0)
                     FROM stock_levels l
                     LEFT JOIN (SELECT sku, sum(on_hand_delta)::bigint AS on_hand,
                                       sum(reserved_delta)::bigint AS reserved
                                FROM stock_ledger GROUP BY sku) g ON g.sku = l.sku
                     WHERE l.on_hand <> coalesce(g.on_hand, 0) OR l.reserved <> coalesce(g.reserved, 0)
                     ORDER BY l.sku COLLATE \"C\"",
                    &[],
                )
                .await?;
            tx.commit().await?;
            let mismatches = rows
                .iter()
                .map(|row| StockMismatch {
                    sku: row.get(0),
                    on_hand: row.get(1),
                    ledger_sum: row.get(2),
                    reserved: row.get(3),
                    ledger_reserved_sum: row.get(4),
                })
                .collect();
            Ok((checked.max(0) as u64, mismatches))
        })
        .await
    }
}

async fn put_product_facts(
    client: &impl GenericClient,
    sku: &str,
    facts: &ProductFacts,
) -> Result<(), StorageError> {
    let dims = facts
        .dims_cm
        .as_ref()
        .map(|d| serde_json::to_string(d).unwrap_or_default());
    let upsert = client
        .prepare_cached(
            "INSERT INTO stock_levels (sku, name, weight_kg, dims_cm, hsn) VALUES ($1, $2, $3, $4, $5)
             ON CONFLICT (sku) DO UPDATE SET
               name = coalesce(EXCLUDED.name, stock_levels.name),
               weight_kg = coalesce(EXCLUDED.weight_kg, stock_levels.weight_kg),
               dims_cm = coalesce(EXCLUDED.dims_cm, stock_levels.dims_cm),
               hsn = coalesce(EXCLUDED.hsn, stock_levels.hsn)",
        )
        .await?;
    client
        .execute(
            &upsert,
            &[&sku, &facts.name, &facts.weight_kg, &dims, &facts.hsn],
        )
        .await?;
    Ok(())
}

#[cfg(test)]
pub(super) mod tests {
    use super::*;
    use crate::domain::stock::StockDelta;

    fn step(on_hand: i64, reserved: i64, allocation: AllocationStep) -> StockStep {
        StockStep {
            sku: "A".into(),
            delta: StockDelta { on_hand, reserved },
            reason: "test".into(),
            allocation,
            at_ms: 0,
        }
    }

    fn order() -> AllocationStep {
        AllocationStep::Create {
            order_id: "o".into(),
            quantity: 1,
        }
    }

    #[test]
    fn refusals_are_the_domains_errors() {
        let level = StockLevel {
            on_hand: 5,
            reserved: 3,
        };
        assert_eq!(refusal(level, &step(0, 2, order())), None);
        assert_eq!(
            refusal(level, &step(0, 3, order())),
            Some(StockError::Insufficient {
                available: 2,
                wanted: 3
            })
        );
        assert_eq!(
            refusal(level, &step(-3, 0, order())),
            Some(StockError::Insufficient {
                available: 2,
                wanted: 3
            })
        );
        assert_eq!(
            refusal(level, &step(0, -4, order())),
            Some(StockError::NotReserved {
                reserved: 3,
                wanted: 4
            })
        );
        assert_eq!(
            refusal(level, &step(-3, 0, AllocationStep::None)),
            Some(StockError::BelowReserved {
                on_hand: 2,
                reserved: 3
            })
        );
        assert_eq!(refusal(level, &step(-2, 0, AllocationStep::None)), None);
        assert_eq!(refusal(level, &step(-3, -3, order())), None);
    }

    /// A store on a scratch server, or `None` where PostgreSQL is not installed.
    pub(in crate::storage::postgres) async fn scratch_store(
        name: &str,
    ) -> Option<(crate::scratch_postgres::ScratchPostgres, PgStore)> {
        use crate::scratch_postgres::{ScratchError, ScratchPostgres};
        let server = match ScratchPostgres::start() {
            Ok(server) => server,
            Err(e @ (ScratchError::NotInstalled | ScratchError::NoServerUser))
                if std::env::var_os("DROPSHIPD_REQUIRE_POSTGRES").is_none() =>
            {
                eprintln!("skipped {name}: {e}");
                return None;
            }
            Err(e) => panic!("cannot start PostgreSQL for {name}: {e}"),
        };
        let url = server.create_database(name).expect("database");
        let store = PgStore::connect(&super::super::PgOptions {
            url,
            pool_size: 2,
            busy_timeout: std::time::Duration::from_secs(5),
            pii_key: crate::storage::PiiKey::from_bytes([7; 32]),
            abandon_after: std::time::Duration::from_secs(5),
            ownership: None,
        })
        .await
        .expect("connect");
        Some((server, store))
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn apply_steps_writes_inside_the_callers_transaction() {
        let Some((_server, store)) = scratch_store("apply_steps_in_tx").await else {
            return;
        };
        let steps = vec![
            EncodedStep::new(step(5, 0, AllocationStep::None)),
            EncodedStep::new(step(0, 1, order())),
            EncodedStep::new(step(0, 1, order())),
        ];
        for commit in [false, true] {
            let steps = steps.clone();
            let applied = store
                .run(move |pool| async move {
                    let mut client = pool.get().await?;
                    let tx = client.transaction().await?;
                    let applied = apply_steps(&tx, &steps).await?;
                    if commit {
                        tx.commit().await?;
                    } else {
                        tx.rollback().await?;
                    }
                    Ok(applied)
                })
                .await
                .expect("apply");
            assert_eq!(
                applied,
                vec![true, true, false],
                "the repeat within one call"
            );
            let levels = store.stock_levels().await.expect("levels");
            if commit {
                assert_eq!(
                    levels,
                    vec![(
                        "A".to_owned(),
                        StockLevel {
                            on_hand: 5,
                            reserved: 1
                        }
                    )]
                );
            } else {
                assert!(levels.is_empty(), "a rolled back caller leaves nothing");
            }
        }
        assert_eq!(
            store.reconcile_stock().await.expect("reconcile"),
            (1, vec![])
        );
    }
}
