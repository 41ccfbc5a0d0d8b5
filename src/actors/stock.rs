//! The stock supervisor and its shards (SPEC §7).
//!
//! A SKU lives in shard `hash(sku) % N`; each [`StockShard`] is an actor that
//! handles one change at a time, *including its commit*, so two checkouts for
//! the last unit can never both see it available. The shard keeps its SKUs'
//! levels in memory, decides with [`crate::domain::stock::apply`], writes the
//! level, ledger row and allocation row in one commit, and only then updates
//! memory: memory is never ahead of the disk.
//!
//! [`StockSupervisor`] is the handle everything else uses. A multi-SKU
//! reservation goes shard by shard in SKU order and, on any shortfall, releases
//! what it took, so it is all-or-nothing.

use std::collections::hash_map::DefaultHasher;
use std::collections::HashMap;
use std::hash::{Hash, Hasher};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use actix::prelude::*;

use crate::domain::clock::SharedClock;
use crate::domain::order::OrderLine;
use crate::domain::stock::{self, StockChange, StockError, StockLevel};
use crate::storage::{AllocationStatus, AllocationStep, StockStep, Storage, StorageError};

#[derive(Debug, thiserror::Error)]
pub enum StockFailure {
    #[error(transparent)]
    Refused(#[from] StockError),
    #[error(transparent)]
    Storage(#[from] StorageError),
    #[error("stock shard unavailable: {0}")]
    Mailbox(#[from] MailboxError),
}

/// What a step did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StepOutcome {
    Applied,
    /// The allocation had already moved: the step happened before (a repeat).
    AlreadyDone,
}

/// One change of one SKU, optionally moving an order's allocation.
#[derive(Message)]
#[rtype(result = "Result<StepOutcome, StockFailure>")]
pub struct ApplyStock {
    pub sku: String,
    pub change: StockChange,
    pub allocation: AllocationStep,
    pub reason: String,
}

#[derive(Message)]
#[rtype(result = "StockLevel")]
pub struct ReadLevel(pub String);

/// Per-shard counters for the status page.
#[derive(Debug, Default)]
pub struct ShardStats {
    pub skus: AtomicU64,
    pub ops_total: AtomicU64,
    pub queued: AtomicU64,
}

pub struct StockShard {
    levels: HashMap<String, StockLevel>,
    storage: Storage,
    clock: SharedClock,
    stats: Arc<ShardStats>,
}

impl Actor for StockShard {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        ctx.set_mailbox_capacity(4096);
    }
}

impl Handler<ReadLevel> for StockShard {
    type Result = MessageResult<ReadLevel>;

    fn handle(&mut self, msg: ReadLevel, _: &mut Self::Context) -> Self::Result {
        MessageResult(self.levels.get(&msg.0).copied().unwrap_or_default())
    }
}

impl Handler<ApplyStock> for StockShard {
    type Result = AtomicResponse<Self, Result<StepOutcome, StockFailure>>;

    fn handle(&mut self, msg: ApplyStock, _: &mut Self::Context) -> Self::Result {
        let storage = self.storage.clone();
        let stats = Arc::clone(&self.stats);
        let at_ms = self.clock.now_ms();
        // Phase 1 (async, still atomic for this shard): has this allocation step happened?
        let check = {
            let storage = storage.clone();
            let allocation = msg.allocation.clone();
            let sku = msg.sku.clone();
            async move {
                match &allocation {
                    AllocationStep::Move { order_id, from, .. } => {
                        let status = storage.allocation_status(order_id, &sku).await?;
                        Ok::<bool, StorageError>(status.is_some_and(|s| from.contains(&s)))
                    }
                    AllocationStep::Create { order_id, .. } => {
                        Ok(storage.allocation_status(order_id, &sku).await?.is_none())
                    }
                    AllocationStep::None => Ok(true),
                }
            }
        };
        stats.queued.fetch_add(1, Ordering::Relaxed);
        AtomicResponse::new(Box::pin(check.into_actor(self).then(
            move |due, shard, _| {
                let decided = match due {
                    Err(e) => Err(StockFailure::Storage(e)),
                    Ok(false) => Ok(None),
                    Ok(true) => {
                        let level = shard.levels.get(&msg.sku).copied().unwrap_or_default();
                        stock::apply(level, msg.change)
                            .map(Some)
                            .map_err(StockFailure::Refused)
                    }
                };
                let sku = msg.sku.clone();
                let write = async move {
                    match decided? {
                        None => Ok((StepOutcome::AlreadyDone, None)),
                        Some((next, delta)) => {
                            let step = StockStep {
                                sku: msg.sku,
                                delta,
                                reason: msg.reason,
                                allocation: msg.allocation,
                                at_ms,
                            };
                            let applied = storage.apply_stock_step(step).await?;
                            Ok(if applied {
                                (StepOutcome::Applied, Some(next))
                            } else {
                                (StepOutcome::AlreadyDone, None)
                            })
                        }
                    }
                };
                write
                    .into_actor(shard)
                    .map(move |result: Result<_, StockFailure>, shard, _| {
                        stats.queued.fetch_sub(1, Ordering::Relaxed);
                        stats.ops_total.fetch_add(1, Ordering::Relaxed);
                        let (outcome, next) = result?;
                        if let Some(next) = next {
                            shard.levels.insert(sku, next);
                            stats
                                .skus
                                .store(shard.levels.len() as u64, Ordering::Relaxed);
                        }
                        Ok(outcome)
                    })
            },
        )))
    }
}

/// The handle to the shards. Cheap to clone.
#[derive(Clone)]
pub struct StockSupervisor {
    shards: Arc<Vec<(Addr<StockShard>, Arc<ShardStats>)>>,
}

/// Why a reservation failed.
#[derive(Debug, thiserror::Error)]
pub enum ReserveError {
    #[error("not enough stock for {0:?}")]
    Insufficient(Vec<String>),
    #[error(transparent)]
    Failed(#[from] StockFailure),
}

/// A status line per shard.
#[derive(Debug, Clone, serde::Serialize)]
pub struct ShardStatus {
    pub shard: usize,
    pub skus: u64,
    pub mailbox: u64,
    pub ops_total: u64,
}

impl StockSupervisor {
    /// Loads every level and starts `shards` shard actors on the current arbiter.
    pub async fn start(
        storage: Storage,
        clock: SharedClock,
        shards: usize,
    ) -> Result<Self, StorageError> {
        let shards = shards.max(1);
        let mut partitions: Vec<HashMap<String, StockLevel>> = vec![HashMap::new(); shards];
        for (sku, level) in storage.stock_levels().await? {
            partitions[shard_of(&sku, shards)].insert(sku, level);
        }
        let started = partitions
            .into_iter()
            .map(|levels| {
                let stats = Arc::new(ShardStats::default());
                stats.skus.store(levels.len() as u64, Ordering::Relaxed);
                let shard = StockShard {
                    levels,
                    storage: storage.clone(),
                    clock: Arc::clone(&clock),
                    stats: Arc::clone(&stats),
                }
                .start();
                (shard, stats)
            })
            .collect();
        Ok(Self {
            shards: Arc::new(started),
        })
    }

    fn shard(&self, sku: &str) -> &Addr<StockShard> {
        &self.shards[shard_of(sku, self.shards.len())].0
    }

    pub async fn apply(&self, message: ApplyStock) -> Result<StepOutcome, StockFailure> {
        self.shard(&message.sku).send(message).await?
    }

    pub async fn level(&self, sku: &str) -> Result<StockLevel, StockFailure> {
        Ok(self.shard(sku).send(ReadLevel(sku.to_owned())).await?)
    }

    /// Holds every line for `order_id`, or none of them.
    pub async fn reserve(&self, order_id: &str, lines: &[OrderLine]) -> Result<(), ReserveError> {
        let mut sorted: Vec<&OrderLine> = lines.iter().collect();
        sorted.sort_by(|a, b| a.sku.cmp(&b.sku));
        let mut taken = Vec::new();
        let mut short = Vec::new();
        let mut failure = None;
        for line in sorted {
            let quantity = i64::from(line.quantity);
            let result = self
                .apply(ApplyStock {
                    sku: line.sku.clone(),
                    change: StockChange::Reserve(quantity),
                    allocation: AllocationStep::Create {
                        order_id: order_id.to_owned(),
                        quantity,
                    },
                    reason: "reserve".into(),
                })
                .await;
            match result {
                Ok(_) => taken.push(line),
                Err(StockFailure::Refused(_)) => short.push(line.sku.clone()),
                Err(e) => {
                    failure = Some(e);
                    break;
                }
            }
        }
        if short.is_empty() && failure.is_none() {
            return Ok(());
        }
        for line in taken {
            self.release_line(order_id, line).await?;
        }
        match failure {
            Some(e) => Err(ReserveError::Failed(e)),
            None => Err(ReserveError::Insufficient(short)),
        }
    }

    async fn release_line(
        &self,
        order_id: &str,
        line: &OrderLine,
    ) -> Result<StepOutcome, StockFailure> {
        self.move_allocation(
            order_id,
            line,
            StockChange::Release(line.quantity.into()),
            &[AllocationStatus::Held],
            AllocationStatus::Released,
            "release",
        )
        .await
    }

    async fn move_allocation(
        &self,
        order_id: &str,
        line: &OrderLine,
        change: StockChange,
        from: &[AllocationStatus],
        to: AllocationStatus,
        reason: &str,
    ) -> Result<StepOutcome, StockFailure> {
        self.apply(ApplyStock {
            sku: line.sku.clone(),
            change,
            allocation: AllocationStep::Move {
                order_id: order_id.to_owned(),
                from: from.to_vec(),
                to,
            },
            reason: reason.to_owned(),
        })
        .await
    }

    /// Gives back every held line (expiry, cancellation before payment).
    pub async fn release(&self, order_id: &str, lines: &[OrderLine]) -> Result<(), StockFailure> {
        for line in lines {
            self.release_line(order_id, line).await?;
        }
        Ok(())
    }

    /// Turns every held line into a sale (payment).
    pub async fn sell_reserved(
        &self,
        order_id: &str,
        lines: &[OrderLine],
    ) -> Result<(), StockFailure> {
        for line in lines {
            self.move_allocation(
                order_id,
                line,
                StockChange::SellReserved(line.quantity.into()),
                &[AllocationStatus::Held],
                AllocationStatus::Sold,
                "sale",
            )
            .await?;
        }
        Ok(())
    }

    /// A late payment after expiry: sells every line anew, all or nothing.
    /// `Ok(false)` when some line has no stock left (nothing is sold then).
    pub async fn sell_unreserved(
        &self,
        order_id: &str,
        lines: &[OrderLine],
    ) -> Result<bool, StockFailure> {
        let mut sorted: Vec<&OrderLine> = lines.iter().collect();
        sorted.sort_by(|a, b| a.sku.cmp(&b.sku));
        let mut sold = Vec::new();
        for line in sorted {
            let result = self
                .move_allocation(
                    order_id,
                    line,
                    StockChange::SellUnreserved(line.quantity.into()),
                    &[AllocationStatus::Released],
                    AllocationStatus::Sold,
                    "late_sale",
                )
                .await;
            match result {
                Ok(_) => sold.push(line),
                Err(StockFailure::Refused(_)) => {
                    for line in sold {
                        self.move_allocation(
                            order_id,
                            line,
                            StockChange::Restock(line.quantity.into()),
                            &[AllocationStatus::Sold],
                            AllocationStatus::Released,
                            "late_sale_undone",
                        )
                        .await?;
                    }
                    return Ok(false);
                }
                Err(e) => return Err(e),
            }
        }
        Ok(true)
    }

    /// Puts sold, unshipped lines back on the shelf (cancellation after payment).
    pub async fn restock(&self, order_id: &str, lines: &[OrderLine]) -> Result<(), StockFailure> {
        for line in lines {
            self.move_allocation(
                order_id,
                line,
                StockChange::Restock(line.quantity.into()),
                &[AllocationStatus::Sold],
                AllocationStatus::Returned,
                "cancel_restock",
            )
            .await?;
        }
        Ok(())
    }

    pub fn shard_count(&self) -> usize {
        self.shards.len()
    }

    pub fn status(&self) -> Vec<ShardStatus> {
        self.shards
            .iter()
            .enumerate()
            .map(|(shard, (_, stats))| ShardStatus {
                shard,
                skus: stats.skus.load(Ordering::Relaxed),
                mailbox: stats.queued.load(Ordering::Relaxed),
                ops_total: stats.ops_total.load(Ordering::Relaxed),
            })
            .collect()
    }
}

/// The shard a SKU lives in. Shards are rebuilt from storage at start-up, so the
/// mapping only has to be stable for the life of a process, which
/// `DefaultHasher::new()` (fixed keys) is.
pub fn shard_of(sku: &str, shards: usize) -> usize {
    let mut hasher = DefaultHasher::new();
    sku.hash(&mut hasher);
    (hasher.finish() % shards.max(1) as u64) as usize
}
