//! Stock levels, their ledger, and per-order allocations.
//!
//! A level never changes without a ledger row in the same statement group, so
//! `on_hand` is always the sum of its ledger. An order's stock step is a
//! conditional move of its allocation row (`held` → `sold`, ...): if the row is
//! not in the expected status the step has already happened and nothing is
//! written, which makes every step safe to repeat after a crash.

use rusqlite::{params, Connection, OptionalExtension};
use serde::Serialize;

use super::{AuditedAction, SqliteStore, StorageError};
use crate::domain::stock::{
    AllocationStatus, AllocationStep, ProductFacts, StockDelta, StockLevel,
};
use crate::storage::stock_step::EncodedStep;

/// One change of one SKU, as it is stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StockStep {
    pub sku: String,
    pub delta: StockDelta,
    pub reason: String,
    pub allocation: AllocationStep,
    pub at_ms: i64,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct StockItem {
    pub sku: String,
    pub level: StockLevel,
    pub facts: ProductFacts,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Allocation {
    pub order_id: String,
    pub sku: String,
    pub quantity: i64,
    pub status: AllocationStatus,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct StockMismatch {
    pub sku: String,
    pub on_hand: i64,
    pub ledger_sum: i64,
    pub reserved: i64,
    pub ledger_reserved_sum: i64,
}

/// Applies `steps` in order inside the caller's transaction: for each, whether
/// it applied (`false`: its allocation had moved already, nothing written).
pub(super) fn apply_steps(
    conn: &Connection,
    steps: &[EncodedStep],
) -> Result<Vec<bool>, StorageError> {
    steps
        .iter()
        .map(|encoded| {
            let applied = apply_step(conn, &encoded.step)?;
            if applied {
                super::audit::append(conn, &encoded.audit)?;
            }
            Ok(applied)
        })
        .collect()
}

impl SqliteStore {
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
            .write_repeatable(move |conn| {
                if let Some((sku, facts)) = &facts {
                    put_product_facts(conn, sku, facts)?;
                }
                if let Some(record) = &record {
                    super::audit::append(conn, record)?;
                }
                apply_steps(conn, &steps)
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
        self.read(move |conn| {
            let mut stmt =
                conn.prepare_cached("SELECT on_hand, reserved FROM stock_levels WHERE sku = ?1")?;
            skus.into_iter()
                .map(|sku| {
                    let level = stmt
                        .query_row([&sku], |row| {
                            Ok(StockLevel {
                                on_hand: row.get(0)?,
                                reserved: row.get(1)?,
                            })
                        })
                        .optional()?
                        .unwrap_or_default();
                    Ok((sku, level))
                })
                .collect()
        })
        .await
    }

    /// Every SKU's level, for the shards to start from.
    pub async fn stock_levels(&self) -> Result<Vec<(String, StockLevel)>, StorageError> {
        self.read(|conn| {
            let mut stmt = conn.prepare("SELECT sku, on_hand, reserved FROM stock_levels")?;
            let rows = stmt.query_map([], |row| {
                Ok((
                    row.get::<_, String>(0)?,
                    StockLevel {
                        on_hand: row.get(1)?,
                        reserved: row.get(2)?,
                    },
                ))
            })?;
            Ok(rows.collect::<Result<Vec<_>, _>>()?)
        })
        .await
    }

    pub async fn stock_item(&self, sku: &str) -> Result<Option<StockItem>, StorageError> {
        let sku = sku.to_owned();
        self.read(move |conn| {
            Ok(conn
                .prepare_cached(
                    "SELECT on_hand, reserved, name, weight_kg, dims_cm, hsn FROM stock_levels WHERE sku = ?1",
                )?
                .query_row([&sku], |row| {
                    let dims: Option<String> = row.get(4)?;
                    Ok(StockItem {
                        sku: sku.clone(),
                        level: StockLevel {
                            on_hand: row.get(0)?,
                            reserved: row.get(1)?,
                        },
                        facts: ProductFacts {
                            name: row.get(2)?,
                            weight_kg: row.get(3)?,
                            dims_cm: dims.and_then(|d| serde_json::from_str(&d).ok()),
                            hsn: row.get(5)?,
                        },
                    })
                })
                .optional()?)
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
        self.write(move |conn| put_product_facts(conn, &sku, &facts))
            .await
    }

    /// The status of one order's allocation of one SKU, if it has one.
    pub async fn allocation_status(
        &self,
        order_id: &str,
        sku: &str,
    ) -> Result<Option<AllocationStatus>, StorageError> {
        let (order_id, sku) = (order_id.to_owned(), sku.to_owned());
        self.read(move |conn| allocation_status_of(conn, &order_id, &sku))
            .await
    }

    pub async fn allocations(&self, order_id: &str) -> Result<Vec<Allocation>, StorageError> {
        let order_id = order_id.to_owned();
        self.read(move |conn| allocations_of(conn, &order_id)).await
    }

    /// Levels that differ from the sums of their ledgers: `(checked, mismatches)`.
    pub async fn reconcile_stock(&self) -> Result<(u64, Vec<StockMismatch>), StorageError> {
        self.read(|conn| {
            let checked: i64 = conn.query_row("SELECT count(*) FROM stock_levels", [], |r| r.get(0))?;
            let mut stmt = conn.prepare(
                "SELECT l.sku, l.on_hand, coalesce(g.on_hand, 0), l.reserved, coalesce(g.reserved, 0)
                 FROM stock_levels l
                 LEFT JOIN (SELECT sku, sum(on_hand_delta) AS on_hand, sum(reserved_delta) AS reserved
                            FROM stock_ledger GROUP BY sku) g ON g.sku = l.sku
                 WHERE l.on_hand != coalesce(g.on_hand, 0) OR l.reserved != coalesce(g.reserved, 0)
                 ORDER BY l.sku",
            )?;
            let rows = stmt.query_map([], |row| {
                Ok(StockMismatch {
                    sku: row.get(0)?,
                    on_hand: row.get(1)?,
                    ledger_sum: row.get(2)?,
                    reserved: row.get(3)?,
                    ledger_reserved_sum: row.get(4)?,
                })
            })?;
            Ok((checked as u64, rows.collect::<Result<Vec<_>, _>>()?))
        })
        .await
    }
}

fn put_product_facts(
    conn: &Connection,
    sku: &str,
    facts: &ProductFacts,
) -> Result<(), StorageError> {
    let dims = facts
        .dims_cm
        .as_ref()
        .map(|d| serde_json::to_string(d).unwrap_or_default());
    conn.prepare_cached(
        "INSERT INTO stock_levels (sku, name, weight_kg, dims_cm, hsn) VALUES (?1, ?2, ?3, ?4, ?5)
         ON CONFLICT (sku) DO UPDATE SET
           name = coalesce(excluded.name, name),
           weight_kg = coalesce(excluded.weight_kg, weight_kg),
           dims_cm = coalesce(excluded.dims_cm, dims_cm),
           hsn = coalesce(excluded.hsn, hsn)",
    )?
    .execute(params![sku, facts.name, facts.weight_kg, dims, facts.hsn])?;
    Ok(())
}

fn allocations_of(conn: &Connection, order_id: &str) -> Result<Vec<Allocation>, StorageError> {
    let mut stmt = conn.prepare_cached(
        "SELECT sku, quantity, status FROM stock_allocations WHERE order_id = ?1 ORDER BY sku",
    )?;
    let rows = stmt.query_map([order_id], |row| {
        let status: String = row.get(2)?;
        Ok(Allocation {
            order_id: order_id.to_owned(),
            sku: row.get(0)?,
            quantity: row.get(1)?,
            status: AllocationStatus::parse(&status).unwrap_or(AllocationStatus::Released),
        })
    })?;
    Ok(rows.collect::<Result<Vec<_>, _>>()?)
}

fn allocation_status_of(
    conn: &Connection,
    order_id: &str,
    sku: &str,
) -> Result<Option<AllocationStatus>, StorageError> {
    let status: Option<String> = conn
        .prepare_cached("SELECT status FROM stock_allocations WHERE order_id = ?1 AND sku = ?2")?
        .query_row(params![order_id, sku], |row| row.get(0))
        .optional()?;
    Ok(status.as_deref().and_then(AllocationStatus::parse))
}

fn apply_step(conn: &Connection, step: &StockStep) -> Result<bool, StorageError> {
    let order_id = match &step.allocation {
        AllocationStep::None => None,
        AllocationStep::Create { order_id, quantity } => {
            let created = conn
                .prepare_cached(
                    "INSERT INTO stock_allocations (order_id, sku, quantity, status) VALUES (?1, ?2, ?3, 'held')
                     ON CONFLICT (order_id, sku) DO NOTHING",
                )?
                .execute(params![order_id, step.sku, quantity])?;
            if created == 0 {
                return Ok(false);
            }
            Some(order_id)
        }
        AllocationStep::Move { order_id, from, to } => {
            let moves = allocation_status_of(conn, order_id, &step.sku)?
                .is_some_and(|status| from.contains(&status));
            if !moves {
                return Ok(false);
            }
            conn.prepare_cached(
                "UPDATE stock_allocations SET status = ?3 WHERE order_id = ?1 AND sku = ?2",
            )?
            .execute(params![order_id, step.sku, to.as_str()])?;
            Some(order_id)
        }
    };
    conn.prepare_cached(
        "INSERT INTO stock_levels (sku, on_hand, reserved) VALUES (?1, ?2, ?3)
         ON CONFLICT (sku) DO UPDATE SET on_hand = on_hand + excluded.on_hand,
                                         reserved = reserved + excluded.reserved",
    )?
    .execute(params![step.sku, step.delta.on_hand, step.delta.reserved])?;
    conn.prepare_cached(
        "INSERT INTO stock_ledger (sku, on_hand_delta, reserved_delta, reason, order_id, at_ms)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
    )?
    .execute(params![
        step.sku,
        step.delta.on_hand,
        step.delta.reserved,
        step.reason,
        order_id,
        step.at_ms
    ])?;
    Ok(true)
}
