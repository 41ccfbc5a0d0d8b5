//! The stock supervisor and its shards (SPEC §7).
//!
//! A SKU lives in shard `hash(sku) % N`; each [`StockShard`] is an actor that
//! handles one change at a time, *including its commit*, so two checkouts for
//! the last unit can never both see it available. The shard keeps its SKUs'
//! levels in memory, decides with [`crate::domain::stock::apply`], and only
//! once the change is committed updates memory: memory is never ahead of the
//! disk.
//!
//! An order's stock changes are committed in the same transaction as the order
//! change that implies them (SPEC §6: a reader who sees `paid` sees the sale).
//! [`StockSupervisor::prepare`] asks the shards involved, in shard order (so
//! two preparations never wait for each other), to decide the order's moves;
//! each shard then holds its SKUs until the [`Prepared`] is settled with the
//! commit's outcome: applied to memory when committed, forgotten when not,
//! and read back from disk when the outcome is unknown. A multi-SKU
//! reservation is therefore all-or-nothing by construction.

use std::collections::hash_map::DefaultHasher;
use std::collections::{BTreeMap, HashMap};
use std::hash::{Hash, Hasher};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use actix::prelude::*;
use tokio::sync::oneshot;

use crate::domain::clock::SharedClock;
use crate::domain::order::OrderLine;
use crate::domain::stock::{
    self, reserve_moves, AllocationStatus, AllocationStep, LineMove, StockChange, StockError,
    StockLevel,
};
use crate::storage::{StockStep, Storage, StorageError};

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

/// One change of one SKU, optionally moving an order's allocation, committed
/// by the shard itself (an operator's change, with the product facts and the
/// audit entry that go with it).
#[derive(Message)]
#[rtype(result = "Result<StepOutcome, StockFailure>")]
pub struct ApplyStock {
    pub sku: String,
    pub change: StockChange,
    pub allocation: AllocationStep,
    pub reason: String,
    pub facts: Option<crate::domain::stock::ProductFacts>,
    pub audit: Option<crate::storage::AuditedAction>,
}

#[derive(Message)]
#[rtype(result = "StockLevel")]
pub struct ReadLevel(pub String);

/// How the commit of prepared steps ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Settled {
    /// Committed; per step, whether it applied (`false`: it had happened before).
    Committed(Vec<bool>),
    /// Not committed: nothing changed.
    NotCommitted,
    /// Nobody knows: the levels are read back from disk.
    Unknown,
}

/// Decide `moves` (all of this shard's) for one transaction and hold the
/// SKUs until `settled` says how its commit ended.
#[derive(Message)]
#[rtype(result = "()")]
struct Prepare {
    moves: Vec<LineMove>,
    at_ms: i64,
    prepared: oneshot::Sender<Result<Vec<Option<StockStep>>, ReserveError>>,
    settled: oneshot::Receiver<Settled>,
}

/// Per-shard counters for the status page.
#[derive(Debug, Default)]
pub struct ShardStats {
    pub skus: AtomicU64,
    pub ops_total: AtomicU64,
    pub queued: AtomicU64,
}

pub struct StockShard {
    levels: HashMap<String, StockLevel>,
    /// SKUs whose level in memory may differ from the disk's until a read
    /// back succeeds: nothing is decided on them meanwhile.
    untrusted: std::collections::HashSet<String>,
    storage: Storage,
    clock: SharedClock,
    stats: Arc<ShardStats>,
    address: Option<Addr<StockShard>>,
}

impl Actor for StockShard {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        ctx.set_mailbox_capacity(4096);
    }
}

impl StockShard {
    fn publish(&self) {
        self.stats
            .skus
            .store(self.levels.len() as u64, Ordering::Relaxed);
    }

    /// The level decisions start from, unless memory cannot be trusted for it.
    fn level(&self, sku: &str) -> Result<StockLevel, ReserveError> {
        if self.untrusted.contains(sku) {
            return Err(ReserveError::Failed(StockFailure::Storage(
                StorageError::Reader(format!("the level of {sku} is being read back from disk")),
            )));
        }
        Ok(self.levels.get(sku).copied().unwrap_or_default())
    }

    /// Puts levels read from disk in memory.
    fn trust(&mut self, levels: Vec<(String, StockLevel)>) {
        for (sku, level) in levels {
            self.untrusted.remove(&sku);
            self.levels.insert(sku, level);
        }
        self.publish();
    }
}

/// Whether an allocation step is still to happen, by the row's status now.
async fn step_due(
    storage: &Storage,
    sku: &str,
    allocation: &AllocationStep,
) -> Result<bool, StorageError> {
    Ok(match allocation {
        AllocationStep::Move { order_id, from, .. } => storage
            .allocation_status(order_id, sku)
            .await?
            .is_some_and(|s| from.contains(&s)),
        AllocationStep::Create { order_id, .. } => {
            storage.allocation_status(order_id, sku).await?.is_none()
        }
        AllocationStep::None => true,
    })
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
        let check = {
            let storage = storage.clone();
            let (sku, allocation) = (msg.sku.clone(), msg.allocation.clone());
            async move { step_due(&storage, &sku, &allocation).await }
        };
        stats.queued.fetch_add(1, Ordering::Relaxed);
        AtomicResponse::new(Box::pin(check.into_actor(self).then(
            move |due, shard, _| {
                let decided = match due {
                    Err(e) => Err(StockFailure::Storage(e)),
                    Ok(false) => Ok(None),
                    Ok(true) => match shard.level(&msg.sku) {
                        Ok(level) => stock::apply(level, msg.change)
                            .map(Some)
                            .map_err(StockFailure::Refused),
                        Err(ReserveError::Failed(e)) => Err(e),
                        Err(ReserveError::Insufficient(_)) => Ok(None),
                    },
                };
                let sku = msg.sku.clone();
                let write = async move {
                    match decided? {
                        None => Ok((StepOutcome::AlreadyDone, None)),
                        Some((next, delta)) => {
                            let facts = msg.facts.map(|facts| (msg.sku.clone(), facts));
                            let step = StockStep {
                                sku: msg.sku,
                                delta,
                                reason: msg.reason,
                                allocation: msg.allocation,
                                at_ms,
                            };
                            let applied = storage
                                .apply_operator_steps(vec![step], facts, msg.audit)
                                .await?
                                .first()
                                .copied()
                                .unwrap_or(false);
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
                            shard.publish();
                        }
                        Ok(outcome)
                    })
            },
        )))
    }
}

impl Handler<Prepare> for StockShard {
    type Result = AtomicResponse<Self, ()>;

    fn handle(&mut self, msg: Prepare, _: &mut Self::Context) -> Self::Result {
        let storage = self.storage.clone();
        let Prepare {
            moves,
            at_ms,
            prepared,
            settled,
        } = msg;
        self.stats.queued.fetch_add(1, Ordering::Relaxed);
        // Which moves are still to happen, by their allocation rows as they
        // stand and as the moves before them in this transaction leave them.
        let check = {
            let storage = storage.clone();
            let moves = moves.clone();
            async move {
                let mut rows: HashMap<(String, String), Option<AllocationStatus>> = HashMap::new();
                let mut due = Vec::with_capacity(moves.len());
                for m in &moves {
                    let order_id = match &m.allocation {
                        AllocationStep::None => {
                            due.push(true);
                            continue;
                        }
                        AllocationStep::Create { order_id, .. }
                        | AllocationStep::Move { order_id, .. } => order_id.clone(),
                    };
                    let key = (order_id, m.sku.clone());
                    let status = match rows.get(&key) {
                        Some(status) => *status,
                        None => storage.allocation_status(&key.0, &key.1).await?,
                    };
                    let (is_due, after) = match &m.allocation {
                        AllocationStep::Create { .. } => {
                            (status.is_none(), status.or(Some(AllocationStatus::Held)))
                        }
                        AllocationStep::Move { from, to, .. } => {
                            match status.filter(|s| from.contains(s)) {
                                Some(_) => (true, Some(*to)),
                                None => (false, status),
                            }
                        }
                        AllocationStep::None => (true, status),
                    };
                    rows.insert(key, after);
                    due.push(is_due);
                }
                Ok::<_, StorageError>(due)
            }
        };
        AtomicResponse::new(Box::pin(check.into_actor(self).then(
            move |due, shard, _| {
                // Decide against memory, each move on top of the ones before;
                // every SKU short of stock is named.
                let mut working: BTreeMap<String, StockLevel> = BTreeMap::new();
                let mut short: Vec<String> = Vec::new();
                let decided: Result<Vec<Option<(StockStep, StockLevel)>>, ReserveError> = due
                    .map_err(|e| ReserveError::Failed(StockFailure::Storage(e)))
                    .and_then(|due| {
                        let mut steps = Vec::with_capacity(moves.len());
                        for (m, due) in moves.into_iter().zip(due) {
                            if !due {
                                steps.push(None);
                                continue;
                            }
                            let level = match working.get(&m.sku) {
                                Some(level) => *level,
                                None => shard.level(&m.sku)?,
                            };
                            match stock::apply(level, m.change) {
                                Ok((next, delta)) => {
                                    working.insert(m.sku.clone(), next);
                                    steps.push(Some((
                                        StockStep {
                                            sku: m.sku,
                                            delta,
                                            reason: m.reason.to_owned(),
                                            allocation: m.allocation,
                                            at_ms,
                                        },
                                        next,
                                    )));
                                }
                                Err(StockError::Insufficient { .. }) => {
                                    short.push(m.sku);
                                    steps.push(None);
                                }
                                Err(e) => return Err(ReserveError::Failed(e.into())),
                            }
                        }
                        if short.is_empty() {
                            Ok(steps)
                        } else {
                            Err(ReserveError::Insufficient(short))
                        }
                    });
                let holding = match decided {
                    Ok(steps) => {
                        let answer = steps
                            .iter()
                            .map(|s| s.as_ref().map(|(step, _)| step.clone()))
                            .collect();
                        let _ = prepared.send(Ok(answer));
                        Some(steps)
                    }
                    Err(e) => {
                        let _ = prepared.send(Err(e));
                        None
                    }
                };
                // Held until the commit's outcome is known.
                async move {
                    let Some(steps) = holding else {
                        return (Vec::new(), None);
                    };
                    let due: Vec<(StockStep, StockLevel)> = steps.into_iter().flatten().collect();
                    let outcome = settled.await.unwrap_or(Settled::Unknown);
                    let trusted = match &outcome {
                        Settled::Committed(applied) => {
                            applied.len() == due.len() && applied.iter().all(|a| *a)
                        }
                        Settled::NotCommitted => true,
                        Settled::Unknown => false,
                    };
                    if trusted {
                        let levels = match outcome {
                            Settled::Committed(_) => {
                                due.into_iter().map(|(step, next)| (step.sku, next)).collect()
                            }
                            _ => Vec::new(),
                        };
                        return (levels, None);
                    }
                    // Committed otherwise than decided, or nobody knows: the disk says.
                    let skus: Vec<String> = due.into_iter().map(|(step, _)| step.sku).collect();
                    let read = storage.stock_levels_of(skus.clone()).await;
                    match read {
                        Ok(levels) => (levels, None),
                        Err(e) => {
                            tracing::error!(error = %e, "cannot read stock levels back; their SKUs wait");
                            (Vec::new(), Some(skus))
                        }
                    }
                }
                .into_actor(shard)
                .map(|(levels, unread), shard, _| {
                    shard.stats.queued.fetch_sub(1, Ordering::Relaxed);
                    shard.stats.ops_total.fetch_add(1, Ordering::Relaxed);
                    shard.trust(levels);
                    if let Some(skus) = unread {
                        shard.untrusted.extend(skus.iter().cloned());
                        if let Some(addr) = shard.address.as_ref() {
                            addr.do_send(Reload(skus));
                        }
                    }
                })
            },
        )))
    }
}

/// Reads `skus` back from disk into memory, until the disk answers.
#[derive(Message)]
#[rtype(result = "()")]
struct Reload(Vec<String>);

impl Handler<Reload> for StockShard {
    type Result = AtomicResponse<Self, ()>;

    fn handle(&mut self, Reload(skus): Reload, _: &mut Self::Context) -> Self::Result {
        let storage = self.storage.clone();
        let retry = skus.clone();
        AtomicResponse::new(Box::pin(
            async move { storage.stock_levels_of(skus).await }
                .into_actor(self)
                .map(move |levels, shard, ctx| match levels {
                    Ok(levels) => shard.trust(levels),
                    Err(e) => {
                        tracing::error!(error = %e, "cannot read stock levels back; retrying");
                        ctx.notify_later(Reload(retry), std::time::Duration::from_millis(500));
                    }
                }),
        ))
    }
}

/// Steps decided by the shards and held there until [`Prepared::settle`].
pub struct Prepared {
    /// Every step to commit, in move order (moves already done are left out).
    pub steps: Vec<StockStep>,
    /// Per shard: where its steps sit in `steps`, and its settle channel.
    shards: Vec<(Vec<usize>, oneshot::Sender<Settled>)>,
}

impl Prepared {
    /// Tells the shards how the commit of `steps` ended; `applied` is the
    /// commit's flag per step.
    pub fn settle(mut self, outcome: Result<&[bool], Settled>) {
        for (positions, shard) in self.shards.drain(..) {
            let settled = match outcome {
                Ok(applied) => Settled::Committed(
                    positions
                        .iter()
                        .map(|p| applied.get(*p).copied().unwrap_or(false))
                        .collect(),
                ),
                Err(ref other) => other.clone(),
            };
            let _ = shard.send(settled);
        }
    }

    pub fn is_empty(&self) -> bool {
        self.steps.is_empty() && self.shards.is_empty()
    }
}

impl Drop for Prepared {
    fn drop(&mut self) {
        // Dropped without a word (a panic, a cancelled future): the shards read back.
        for (_, shard) in self.shards.drain(..) {
            let _ = shard.send(Settled::Unknown);
        }
    }
}

/// The handle to the shards. Cheap to clone.
#[derive(Clone)]
pub struct StockSupervisor {
    shards: Arc<Vec<(Addr<StockShard>, Arc<ShardStats>)>>,
    storage: Storage,
    clock: SharedClock,
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
                let (storage, clock, shard_stats) =
                    (storage.clone(), Arc::clone(&clock), Arc::clone(&stats));
                let shard = StockShard::create(move |ctx| StockShard {
                    levels,
                    untrusted: Default::default(),
                    storage,
                    clock,
                    stats: shard_stats,
                    address: Some(ctx.address()),
                });
                (shard, stats)
            })
            .collect();
        Ok(Self {
            shards: Arc::new(started),
            storage,
            clock,
        })
    }

    fn shard_index(&self, sku: &str) -> usize {
        shard_of(sku, self.shards.len())
    }

    fn shard(&self, sku: &str) -> &Addr<StockShard> {
        &self.shards[self.shard_index(sku)].0
    }

    pub async fn apply(&self, message: ApplyStock) -> Result<StepOutcome, StockFailure> {
        self.shard(&message.sku).send(message).await?
    }

    pub async fn level(&self, sku: &str) -> Result<StockLevel, StockFailure> {
        Ok(self.shard(sku).send(ReadLevel(sku.to_owned())).await?)
    }

    /// Has the shards decide `moves` for one transaction, in shard order, and
    /// hold their SKUs until the result is settled. A move refused for want
    /// of stock refuses them all ([`ReserveError::Insufficient`] names every
    /// short SKU of the shards asked so far); moves whose allocation already
    /// moved are left out, so a repeat prepares nothing.
    pub async fn prepare(&self, moves: Vec<LineMove>) -> Result<Prepared, ReserveError> {
        let at_ms = self.clock.now_ms();
        let mut by_shard: BTreeMap<usize, Vec<(usize, LineMove)>> = BTreeMap::new();
        for (position, m) in moves.into_iter().enumerate() {
            by_shard
                .entry(self.shard_index(&m.sku))
                .or_default()
                .push((position, m));
        }
        let mut decided: Vec<(usize, StockStep)> = Vec::new();
        let mut held: Vec<(Vec<usize>, oneshot::Sender<Settled>)> = Vec::new();
        let mut short = Vec::new();
        let mut failure = None;
        // Every shard is asked even after a shortage, so the refusal names
        // every SKU short of stock; nothing is committed then.
        for (index, moves) in by_shard {
            let (prepared_tx, prepared_rx) = oneshot::channel();
            let (settle_tx, settle_rx) = oneshot::channel();
            let (positions, moves): (Vec<usize>, Vec<LineMove>) = moves.into_iter().unzip();
            self.shards[index].0.do_send(Prepare {
                moves,
                at_ms,
                prepared: prepared_tx,
                settled: settle_rx,
            });
            match prepared_rx.await {
                Ok(Ok(steps)) => {
                    let mut mine = Vec::new();
                    for (position, step) in positions.into_iter().zip(steps) {
                        if let Some(step) = step {
                            mine.push(decided.len());
                            decided.push((position, step));
                        }
                    }
                    held.push((mine, settle_tx));
                }
                Ok(Err(ReserveError::Insufficient(skus))) => short.extend(skus),
                Ok(Err(ReserveError::Failed(e))) => {
                    failure = Some(e);
                    break;
                }
                Err(_) => {
                    failure = Some(StockFailure::Mailbox(MailboxError::Closed));
                    break;
                }
            }
        }
        let prepared = Prepared {
            steps: decided.iter().map(|(_, step)| step.clone()).collect(),
            shards: held,
        };
        if let Some(e) = failure {
            prepared.settle(Err(Settled::NotCommitted));
            return Err(ReserveError::Failed(e));
        }
        if !short.is_empty() {
            prepared.settle(Err(Settled::NotCommitted));
            short.sort();
            short.dedup();
            return Err(ReserveError::Insufficient(short));
        }
        Ok(prepared)
    }

    /// Prepares `moves` and commits them on their own (no order change with
    /// them): repairs, and the tools and tests of the shards.
    pub async fn commit_moves(&self, moves: Vec<LineMove>) -> Result<(), ReserveError> {
        let prepared = self.prepare(moves).await?;
        match self.storage.apply_stock_steps(prepared.steps.clone()).await {
            Ok(applied) => {
                prepared.settle(Ok(&applied));
                Ok(())
            }
            Err(e) => {
                prepared.settle(Err(settled_after(&e)));
                Err(ReserveError::Failed(StockFailure::Storage(e)))
            }
        }
    }

    /// Holds every line for `order_id`, or none of them.
    pub async fn reserve(&self, order_id: &str, lines: &[OrderLine]) -> Result<(), ReserveError> {
        self.commit_moves(reserve_moves(order_id, lines)).await
    }

    async fn moves(
        &self,
        order_id: &str,
        lines: &[OrderLine],
        change: impl Fn(i64) -> StockChange,
        from: &[AllocationStatus],
        to: AllocationStatus,
        reason: &'static str,
    ) -> Result<(), ReserveError> {
        let moves = lines
            .iter()
            .map(|line| LineMove {
                sku: line.sku.clone(),
                change: change(i64::from(line.quantity)),
                allocation: AllocationStep::Move {
                    order_id: order_id.to_owned(),
                    from: from.to_vec(),
                    to,
                },
                reason,
            })
            .collect();
        self.commit_moves(moves).await
    }

    /// Gives back every held line (expiry, cancellation before payment).
    pub async fn release(&self, order_id: &str, lines: &[OrderLine]) -> Result<(), ReserveError> {
        use AllocationStatus as A;
        self.moves(
            order_id,
            lines,
            StockChange::Release,
            &[A::Held],
            A::Released,
            "release",
        )
        .await
    }

    /// Turns every held line into a sale (payment).
    pub async fn sell_reserved(
        &self,
        order_id: &str,
        lines: &[OrderLine],
    ) -> Result<(), ReserveError> {
        use AllocationStatus as A;
        self.moves(
            order_id,
            lines,
            StockChange::SellReserved,
            &[A::Held],
            A::Sold,
            "sale",
        )
        .await
    }

    /// A late payment after expiry: sells every line anew, all or nothing.
    pub async fn sell_unreserved(
        &self,
        order_id: &str,
        lines: &[OrderLine],
    ) -> Result<(), ReserveError> {
        use AllocationStatus as A;
        self.moves(
            order_id,
            lines,
            StockChange::SellUnreserved,
            &[A::Released],
            A::Sold,
            "late_sale",
        )
        .await
    }

    /// Puts sold, unshipped lines back on the shelf.
    pub async fn restock(&self, order_id: &str, lines: &[OrderLine]) -> Result<(), ReserveError> {
        use AllocationStatus as A;
        self.moves(
            order_id,
            lines,
            StockChange::Restock,
            &[A::Sold],
            A::Returned,
            "cancel_restock",
        )
        .await
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

/// What a failed commit means for prepared steps: a timeout is "never
/// applied" (the writer guarantees it); a stopped writer leaves it unknown.
pub fn settled_after(error: &StorageError) -> Settled {
    match error {
        StorageError::WriterStopped | StorageError::Reader(_) => Settled::Unknown,
        _ => Settled::NotCommitted,
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
