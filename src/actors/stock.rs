//! The stock supervisor and its shards (SPEC §7).
//!
//! A SKU lives in shard `hash(sku) % N`; each [`StockShard`] is an actor that
//! decides one change at a time, so two checkouts for the last unit can never
//! both see it available. The shard keeps its SKUs' committed levels in memory
//! and, beside them, the changes it has decided that are not committed yet.
//!
//! An order's stock changes are committed in the same transaction as the order
//! change that implies them (SPEC §6: a reader who sees `paid` sees the sale).
//! [`StockSupervisor::prepare`] asks the shards involved to decide the order's
//! moves; the shard answers at once and records the decision as pending until
//! the [`Prepared`] is settled with the commit's outcome: added to the
//! committed level when committed, dropped when not, and read back from disk
//! when nobody knows. It does not wait for that commit: the next change is
//! decided against [`stock::deciding_level`], which counts every pending
//! change that lowers what is available and none that raises it, so a
//! decision holds whichever pending changes commit. A hot SKU therefore moves
//! at the writer's group-commit rate, not one fsync per checkout, and never
//! oversells. A multi-SKU reservation is all-or-nothing by construction.

use std::collections::hash_map::DefaultHasher;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::hash::{Hash, Hasher};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use actix::prelude::*;

use crate::domain::clock::SharedClock;
use crate::domain::order::OrderLine;
use crate::domain::stock::{
    self, reserve_moves, AllocationStatus, AllocationStep, LineMove, StockChange, StockDelta,
    StockError, StockLevel,
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

impl ApplyStock {
    /// A count of the shelf: `on_hand` becomes this, with no order, facts or
    /// audit entry attached (seeding, tools and tests).
    pub fn count(sku: &str, on_hand: i64) -> Self {
        Self {
            sku: sku.to_owned(),
            change: StockChange::Set(on_hand),
            allocation: AllocationStep::None,
            reason: "count".into(),
            facts: None,
            audit: None,
        }
    }
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

/// Decide `moves` (all of this shard's; `due` says which are still to
/// happen) for one transaction, recording them as pending under a ticket.
#[derive(Message)]
#[rtype(result = "Result<(u64, Vec<Option<StockStep>>), ReserveError>")]
struct Prepare {
    moves: Vec<(LineMove, bool)>,
    at_ms: i64,
}

/// How the transaction holding a ticket's steps ended.
#[derive(Message)]
#[rtype(result = "()")]
struct Settle {
    ticket: u64,
    outcome: Settled,
}

/// Per-shard counters for the status page.
#[derive(Debug, Default)]
pub struct ShardStats {
    pub skus: AtomicU64,
    pub ops_total: AtomicU64,
    pub queued: AtomicU64,
}

pub struct StockShard {
    /// Levels as committed.
    levels: HashMap<String, StockLevel>,
    /// Per SKU, the summed delta of each ticket decided and not yet settled.
    pending: HashMap<String, Vec<(u64, StockDelta)>>,
    /// Per ticket, its steps' SKUs and deltas, in the order they were decided.
    tickets: HashMap<u64, Vec<(String, StockDelta)>>,
    next_ticket: u64,
    /// SKUs whose level in memory may differ from the disk's until a read
    /// back succeeds: nothing is decided on them meanwhile.
    untrusted: HashSet<String>,
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

impl StockShard {
    fn publish(&self) {
        self.stats
            .skus
            .store(self.levels.len() as u64, Ordering::Relaxed);
    }

    fn committed(&self, sku: &str) -> StockLevel {
        self.levels.get(sku).copied().unwrap_or_default()
    }

    fn pending_of(&self, sku: &str) -> impl Iterator<Item = StockDelta> + '_ {
        self.pending
            .get(sku)
            .into_iter()
            .flatten()
            .map(|(_, delta)| *delta)
    }

    /// The level `change` is decided against, unless memory cannot be trusted for it.
    fn deciding(&self, sku: &str, change: StockChange) -> Result<StockLevel, StockFailure> {
        if self.untrusted.contains(sku) {
            return Err(StockFailure::Storage(StorageError::Reader(format!(
                "the level of {sku} is being read back from disk"
            ))));
        }
        let committed = self.committed(sku);
        Ok(match change {
            // A count's delta depends on the level: it is taken against what
            // the level will be once everything pending has committed.
            StockChange::Set(_) => stock::expected_level(committed, self.pending_of(sku)),
            _ => stock::deciding_level(committed, self.pending_of(sku)),
        })
    }

    /// Decides `changes` as one transaction: each on top of the ones before
    /// it (they commit together). Returns the per-change outcome, `None` for
    /// a change short of stock, or the first other refusal.
    fn decide(
        &self,
        changes: &[(&str, StockChange)],
    ) -> Result<Vec<Option<StockDelta>>, StockFailure> {
        let mut own: HashMap<&str, StockDelta> = HashMap::new();
        let mut decided = Vec::with_capacity(changes.len());
        for &(sku, change) in changes {
            let earlier = own.get(sku).copied().unwrap_or_default();
            let level = self.deciding(sku, change)?.plus(earlier);
            match stock::apply(level, change) {
                Ok((_, delta)) => {
                    own.insert(sku, earlier.plus(delta));
                    decided.push(Some(delta));
                }
                Err(StockError::Insufficient { .. }) => decided.push(None),
                Err(e) => return Err(StockFailure::Refused(e)),
            }
        }
        Ok(decided)
    }

    /// Records decided steps as pending under a new ticket.
    fn hold(&mut self, steps: Vec<(String, StockDelta)>) -> u64 {
        let ticket = self.next_ticket;
        self.next_ticket += 1;
        let mut per_sku: BTreeMap<&str, StockDelta> = BTreeMap::new();
        for (sku, delta) in &steps {
            let sum = per_sku.entry(sku).or_default();
            *sum = sum.plus(*delta);
        }
        for (sku, delta) in per_sku {
            self.pending
                .entry(sku.to_owned())
                .or_default()
                .push((ticket, delta));
        }
        self.tickets.insert(ticket, steps);
        ticket
    }

    /// Ends a ticket: what committed joins the committed levels; when nobody
    /// knows, its SKUs are read back from disk once nothing else is pending on them.
    fn settle(&mut self, ticket: u64, outcome: Settled, ctx: &mut Context<Self>) {
        let Some(steps) = self.tickets.remove(&ticket) else {
            return;
        };
        self.stats.ops_total.fetch_add(1, Ordering::Relaxed);
        for (sku, _) in &steps {
            if let Some(list) = self.pending.get_mut(sku) {
                list.retain(|(t, _)| *t != ticket);
                if list.is_empty() {
                    self.pending.remove(sku);
                }
            }
        }
        match outcome {
            Settled::Committed(applied) if applied.len() == steps.len() => {
                // A step not applied had happened before: the disk did not
                // change for it, and neither does memory.
                for ((sku, delta), applied) in steps.iter().zip(applied) {
                    if applied {
                        let next = self.committed(sku).plus(*delta);
                        self.levels.insert(sku.clone(), next);
                    }
                }
                self.publish();
            }
            Settled::NotCommitted => {}
            Settled::Committed(_) | Settled::Unknown => {
                self.untrusted
                    .extend(steps.iter().map(|(sku, _)| sku.clone()));
            }
        }
        self.reload_settled(ctx);
    }

    /// Reads back the untrusted SKUs that nothing is pending on any more.
    fn reload_settled(&mut self, ctx: &mut Context<Self>) {
        let ready: Vec<String> = self
            .untrusted
            .iter()
            .filter(|sku| !self.pending.contains_key(*sku))
            .cloned()
            .collect();
        if !ready.is_empty() {
            ctx.notify(Reload(ready));
        }
    }

    /// Puts levels read from disk in memory.
    fn trust(&mut self, skus: &[String], levels: Vec<(String, StockLevel)>) {
        for sku in skus {
            self.untrusted.remove(sku);
            self.levels.remove(sku);
        }
        for (sku, level) in levels {
            self.levels.insert(sku, level);
        }
        self.publish();
    }
}

/// What is known of an order's allocation rows before its moves are decided.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Rows {
    /// The order is not stored yet and is inserted in the same commit: no row exists.
    Absent,
    /// The rows stand as the order's committed state implies, because every
    /// stock step of an order commits with the state change that implies it:
    /// each move is taken as due without a read. Should one not be (a crash
    /// of an older build left the stock behind), either the shard refuses
    /// it, and the rows are then read and the moves decided again, or its
    /// step finds so in the commit and applies nothing, and the shard's
    /// memory follows the commit's flags. Meanwhile it has only held back
    /// units that were there, never sold units that were not.
    ImpliedByState,
    /// Unknown: read them.
    Read,
}

/// Which of one transaction's `moves` are still to happen, by their
/// allocation rows as they stand and as the moves before them leave them.
async fn moves_due(
    storage: &Storage,
    moves: &[LineMove],
    known: Rows,
) -> Result<Vec<bool>, StorageError> {
    let mut rows: HashMap<(String, String), Option<AllocationStatus>> = HashMap::new();
    let mut due = Vec::with_capacity(moves.len());
    for m in moves {
        let order_id = match &m.allocation {
            AllocationStep::None => {
                due.push(true);
                continue;
            }
            AllocationStep::Create { order_id, .. } | AllocationStep::Move { order_id, .. } => {
                order_id.clone()
            }
        };
        let key = (order_id, m.sku.clone());
        let status = match (rows.get(&key), known) {
            (Some(status), _) => *status,
            (None, Rows::Absent) => None,
            (None, Rows::ImpliedByState) => match &m.allocation {
                AllocationStep::Move { from, .. } => from.first().copied(),
                _ => None,
            },
            (None, Rows::Read) => storage.allocation_status(&key.0, &key.1).await?,
        };
        let (is_due, after) = match &m.allocation {
            AllocationStep::Create { .. } => {
                (status.is_none(), status.or(Some(AllocationStatus::Held)))
            }
            AllocationStep::Move { from, to, .. } => match status.filter(|s| from.contains(s)) {
                Some(_) => (true, Some(*to)),
                None => (false, status),
            },
            AllocationStep::None => (true, status),
        };
        rows.insert(key, after);
        due.push(is_due);
    }
    Ok(due)
}

impl Handler<ReadLevel> for StockShard {
    type Result = MessageResult<ReadLevel>;

    fn handle(&mut self, msg: ReadLevel, _: &mut Self::Context) -> Self::Result {
        MessageResult(self.committed(&msg.0))
    }
}

impl Handler<ApplyStock> for StockShard {
    type Result = ResponseActFuture<Self, Result<StepOutcome, StockFailure>>;

    fn handle(&mut self, msg: ApplyStock, _: &mut Self::Context) -> Self::Result {
        let storage = self.storage.clone();
        let at_ms = self.clock.now_ms();
        let check = {
            let storage = storage.clone();
            let single = [LineMove {
                sku: msg.sku.clone(),
                change: msg.change,
                allocation: msg.allocation.clone(),
                reason: "",
            }];
            async move {
                let due = moves_due(&storage, &single, Rows::Read).await?;
                Ok::<_, StorageError>(due.first().copied().unwrap_or(false))
            }
        };
        Box::pin(check.into_actor(self).then(move |due, shard, _| {
            // Decided when the read is back, against the levels as they are then.
            let decided = match due {
                Err(e) => Err(StockFailure::Storage(e)),
                Ok(false) => Ok(None),
                Ok(true) => shard.deciding(&msg.sku, msg.change).and_then(|level| {
                    stock::apply(level, msg.change)
                        .map(|(_, delta)| Some(delta))
                        .map_err(StockFailure::Refused)
                }),
            };
            let ticket = match &decided {
                Ok(Some(delta)) => Some(shard.hold(vec![(msg.sku.clone(), *delta)])),
                _ => None,
            };
            async move {
                let Some(delta) = decided? else {
                    return Ok(StepOutcome::AlreadyDone);
                };
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
                    .await?;
                Ok(if applied.first().copied().unwrap_or(false) {
                    StepOutcome::Applied
                } else {
                    StepOutcome::AlreadyDone
                })
            }
            .into_actor(shard)
            .map(
                move |result: Result<StepOutcome, StockFailure>, shard, ctx| {
                    if let Some(ticket) = ticket {
                        let outcome = match &result {
                            Ok(StepOutcome::Applied) => Settled::Committed(vec![true]),
                            Ok(StepOutcome::AlreadyDone) => Settled::Committed(vec![false]),
                            Err(StockFailure::Storage(e)) => settled_after(e),
                            Err(_) => Settled::NotCommitted,
                        };
                        shard.settle(ticket, outcome, ctx);
                    }
                    result
                },
            )
        }))
    }
}

impl Handler<Prepare> for StockShard {
    type Result = Result<(u64, Vec<Option<StockStep>>), ReserveError>;

    fn handle(&mut self, msg: Prepare, _: &mut Self::Context) -> Self::Result {
        let Prepare { moves, at_ms } = msg;
        let due: Vec<(&str, StockChange)> = moves
            .iter()
            .filter(|(_, due)| *due)
            .map(|(m, _)| (m.sku.as_str(), m.change))
            .collect();
        let decided = self.decide(&due)?;
        let short: Vec<String> = due
            .iter()
            .zip(&decided)
            .filter(|(_, delta)| delta.is_none())
            .map(|((sku, _), _)| (*sku).to_owned())
            .collect();
        if !short.is_empty() {
            return Err(ReserveError::Insufficient(short));
        }
        let mut deltas = decided.into_iter().flatten();
        let mut held = Vec::new();
        let steps = moves
            .into_iter()
            .map(|(m, due)| {
                let delta = if due { deltas.next() } else { None }?;
                held.push((m.sku.clone(), delta));
                Some(StockStep {
                    sku: m.sku,
                    delta,
                    reason: m.reason.to_owned(),
                    allocation: m.allocation,
                    at_ms,
                })
            })
            .collect();
        Ok((self.hold(held), steps))
    }
}

impl Handler<Settle> for StockShard {
    type Result = ();

    fn handle(&mut self, msg: Settle, ctx: &mut Self::Context) {
        self.settle(msg.ticket, msg.outcome, ctx);
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
        let asked = skus.clone();
        AtomicResponse::new(Box::pin(
            async move { storage.stock_levels_of(skus).await }
                .into_actor(self)
                .map(move |levels, shard, ctx| match levels {
                    Ok(levels) => shard.trust(&asked, levels),
                    Err(e) => {
                        tracing::error!(error = %e, "cannot read stock levels back; retrying");
                        ctx.notify_later(Reload(asked), std::time::Duration::from_millis(500));
                    }
                }),
        ))
    }
}

/// Steps decided by the shards and pending there until [`Prepared::settle`].
pub struct Prepared {
    /// Every step to commit, in move order (moves already done are left out).
    pub steps: Vec<StockStep>,
    /// Per shard: where its steps sit in `steps`, the shard and its ticket.
    shards: Vec<(Vec<usize>, Addr<StockShard>, u64)>,
}

impl Prepared {
    /// Tells the shards how the commit of `steps` ended; `applied` is the
    /// commit's flag per step.
    pub fn settle(mut self, outcome: Result<&[bool], Settled>) {
        for (positions, shard, ticket) in self.shards.drain(..) {
            let settled = match outcome {
                Ok(applied) => Settled::Committed(
                    positions
                        .iter()
                        .map(|p| applied.get(*p).copied().unwrap_or(false))
                        .collect(),
                ),
                Err(ref other) => other.clone(),
            };
            shard.do_send(Settle {
                ticket,
                outcome: settled,
            });
        }
    }

    pub fn is_empty(&self) -> bool {
        self.steps.is_empty() && self.shards.is_empty()
    }
}

impl Drop for Prepared {
    fn drop(&mut self) {
        // Dropped without a word (a panic, a cancelled future): the shards read back.
        for (_, shard, ticket) in self.shards.drain(..) {
            shard.do_send(Settle {
                ticket,
                outcome: Settled::Unknown,
            });
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
                let shard = StockShard {
                    levels,
                    pending: HashMap::new(),
                    tickets: HashMap::new(),
                    next_ticket: 0,
                    untrusted: HashSet::new(),
                    storage,
                    clock,
                    stats: shard_stats,
                }
                .start();
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

    /// Has the shards decide `moves` for one transaction and hold them as
    /// pending until the result is settled. A move refused for want of stock
    /// refuses them all ([`ReserveError::Insufficient`] names every short SKU);
    /// moves whose allocation already moved are left out, so a repeat
    /// prepares nothing.
    pub async fn prepare(&self, moves: Vec<LineMove>) -> Result<Prepared, ReserveError> {
        self.prepare_moves(moves, Rows::Read).await
    }

    /// [`Self::prepare`] for the moves of an order that is not stored yet and
    /// is inserted in the same commit (a checkout): its allocations cannot
    /// exist, so none is read first.
    pub async fn prepare_new_order(&self, moves: Vec<LineMove>) -> Result<Prepared, ReserveError> {
        self.prepare_moves(moves, Rows::Absent).await
    }

    /// [`Self::prepare`] for the moves from an order's committed state to the
    /// next, committed with that change: its allocations stand as the state
    /// implies, so none is read first (see [`Rows::ImpliedByState`]).
    pub async fn prepare_transition(&self, moves: Vec<LineMove>) -> Result<Prepared, ReserveError> {
        self.prepare_moves(moves, Rows::ImpliedByState).await
    }

    async fn prepare_moves(
        &self,
        moves: Vec<LineMove>,
        known: Rows,
    ) -> Result<Prepared, ReserveError> {
        if known != Rows::ImpliedByState {
            return self.prepare_against_levels(moves, known).await;
        }
        match self
            .prepare_against_levels(moves.clone(), Rows::ImpliedByState)
            .await
        {
            // A move taken as due may be refused only because it had
            // happened already (a sale of units no longer reserved): the
            // rows are read before the refusal is believed.
            Err(ReserveError::Insufficient(_) | ReserveError::Failed(StockFailure::Refused(_))) => {
                self.prepare_against_levels(moves, Rows::Read).await
            }
            other => other,
        }
    }

    async fn prepare_against_levels(
        &self,
        moves: Vec<LineMove>,
        known: Rows,
    ) -> Result<Prepared, ReserveError> {
        if self.storage.postgres().is_none() {
            return self.prepare_once(moves, known).await;
        }
        // With other instances changing the same SKUs, memory is a hint and
        // the database the judge (its CHECK refuses what is not there): a
        // refusal decided in memory (a shortage, a sale of units another
        // instance reserved) is read back once before it is believed.
        match self.prepare_once(moves.clone(), known).await {
            Err(ReserveError::Insufficient(_) | ReserveError::Failed(StockFailure::Refused(_))) => {
                self.reload(moves.iter().map(|m| m.sku.clone()).collect())
                    .await;
                self.prepare_once(moves, known).await
            }
            other => other,
        }
    }

    /// Reads `skus` back from storage into their shards.
    async fn reload(&self, skus: Vec<String>) {
        let mut by_shard: BTreeMap<usize, Vec<String>> = BTreeMap::new();
        for sku in skus {
            by_shard
                .entry(self.shard_index(&sku))
                .or_default()
                .push(sku);
        }
        for (index, skus) in by_shard {
            let _ = self.shards[index].0.send(Reload(skus)).await;
        }
    }

    async fn prepare_once(
        &self,
        moves: Vec<LineMove>,
        known: Rows,
    ) -> Result<Prepared, ReserveError> {
        let at_ms = self.clock.now_ms();
        let due = moves_due(&self.storage, &moves, known)
            .await
            .map_err(|e| ReserveError::Failed(StockFailure::Storage(e)))?;
        // Per shard: each move's position in `moves`, the move and whether it is due.
        type ShardMoves = Vec<(usize, (LineMove, bool))>;
        let mut by_shard: BTreeMap<usize, ShardMoves> = BTreeMap::new();
        for (position, (m, due)) in moves.into_iter().zip(due).enumerate() {
            by_shard
                .entry(self.shard_index(&m.sku))
                .or_default()
                .push((position, (m, due)));
        }
        let mut decided: Vec<(usize, StockStep)> = Vec::new();
        let mut held: Vec<(Vec<usize>, Addr<StockShard>, u64)> = Vec::new();
        let mut short = Vec::new();
        let mut failure = None;
        // Every shard is asked even after a shortage, so the refusal names
        // every SKU short of stock; nothing is committed then.
        for (index, moves) in by_shard {
            let (shard, stats) = &self.shards[index];
            let (positions, moves): (Vec<usize>, Vec<(LineMove, bool)>) = moves.into_iter().unzip();
            stats.queued.fetch_add(1, Ordering::Relaxed);
            let answer = shard.send(Prepare { moves, at_ms }).await;
            stats.queued.fetch_sub(1, Ordering::Relaxed);
            match answer {
                Ok(Ok((ticket, steps))) => {
                    let mut mine = Vec::new();
                    for (position, step) in positions.into_iter().zip(steps) {
                        if let Some(step) = step {
                            mine.push(decided.len());
                            decided.push((position, step));
                        }
                    }
                    held.push((mine, shard.clone(), ticket));
                }
                Ok(Err(ReserveError::Insufficient(skus))) => short.extend(skus),
                Ok(Err(ReserveError::Failed(e))) => {
                    failure = Some(e);
                    break;
                }
                Err(e) => {
                    failure = Some(StockFailure::Mailbox(e));
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
        StorageError::WriterStopped | StorageError::Reader(_) | StorageError::InDoubt(_) => {
            Settled::Unknown
        }
        // Refused by the database's level (another instance changed it):
        // nothing changed. Memory stays a hint, read back before the next
        // shortage it sees is believed; it is not marked unknown, which
        // would refuse every change of the SKU until the read-back.
        StorageError::StockRefused { .. } => Settled::NotCommitted,
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

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::domain::clock::SystemClock;
    use crate::domain::order::OrderState;
    use crate::storage::{PiiKey, StorageOptions};

    async fn supervisor(on_hand: i64) -> (StockSupervisor, Storage, tempfile::TempDir) {
        let dir = tempfile::tempdir().unwrap();
        let storage = Storage::open(&StorageOptions::new(
            dir.path().join("stock.db"),
            Duration::from_secs(5),
            PiiKey::from_bytes([5; 32]),
        ))
        .unwrap();
        let stock = StockSupervisor::start(storage.clone(), Arc::new(SystemClock), 4)
            .await
            .unwrap();
        stock
            .apply(ApplyStock::count("HOT", on_hand))
            .await
            .unwrap();
        (stock, storage, dir)
    }

    fn hold(order: &str, quantity: u32) -> Vec<LineMove> {
        reserve_moves(
            order,
            &[OrderLine {
                sku: "HOT".into(),
                name: "Hot tee".into(),
                quantity,
                unit_price_paise: 100,
                weight_g: None,
            }],
        )
    }

    /// What a checkout does: decide, commit with the order, settle.
    async fn checkout(stock: &StockSupervisor, storage: &Storage, order: &str) -> bool {
        let Ok(prepared) = stock.prepare_new_order(hold(order, 1)).await else {
            return false;
        };
        match storage.apply_stock_steps(prepared.steps.clone()).await {
            Ok(applied) => {
                prepared.settle(Ok(&applied));
                true
            }
            Err(e) => {
                prepared.settle(Err(settled_after(&e)));
                false
            }
        }
    }

    #[actix_rt::test]
    async fn a_hot_sku_commits_in_groups_and_never_oversells() {
        let (stock, storage, _dir) = supervisor(150).await;
        let before = storage.writer_stats().expect("sqlite").commits;
        let tasks: Vec<_> = (0..400)
            .map(|i| {
                let (stock, storage) = (stock.clone(), storage.clone());
                actix_rt::spawn(async move { checkout(&stock, &storage, &format!("o{i}")).await })
            })
            .collect();
        let mut held = 0;
        for task in tasks {
            held += usize::from(task.await.unwrap());
        }
        assert_eq!(held, 150, "every unit held once, none twice");
        let level = stock.level("HOT").await.unwrap();
        assert_eq!((level.on_hand, level.reserved), (150, 150));
        let (_, mismatches) = storage.reconcile_stock().await.unwrap();
        assert!(mismatches.is_empty(), "{mismatches:?}");
        // One commit per checkout would be 150 commits: decisions did not wait for them.
        let commits = storage.writer_stats().expect("sqlite").commits - before;
        assert!(commits < 75, "{commits} commits for 150 holds");
    }

    #[actix_rt::test]
    async fn pending_holds_count_until_settled_and_a_failed_one_frees_its_units() {
        let (stock, _storage, _dir) = supervisor(5).await;
        let first = stock.prepare_new_order(hold("a", 3)).await.unwrap();
        let second = stock.prepare_new_order(hold("b", 2)).await.unwrap();
        assert!(
            matches!(
                stock.prepare_new_order(hold("c", 1)).await,
                Err(ReserveError::Insufficient(_))
            ),
            "pending holds count against what is available"
        );
        // The first never commits; the second does. Neither waited for the other.
        first.settle(Err(Settled::NotCommitted));
        second.settle(Ok(&[true]));
        let level = stock.level("HOT").await.unwrap();
        assert_eq!((level.on_hand, level.reserved), (5, 2));
        let third = stock.prepare_new_order(hold("c", 3)).await.unwrap();
        third.settle(Err(Settled::NotCommitted));
    }

    #[actix_rt::test]
    async fn an_unknown_outcome_reads_the_level_back_once_nothing_is_pending() {
        let (stock, storage, _dir) = supervisor(5).await;
        let lost = stock.prepare_new_order(hold("a", 2)).await.unwrap();
        let committed = stock.prepare_new_order(hold("b", 1)).await.unwrap();
        // Committed for real, but the shard is told nobody knows.
        storage.apply_stock_steps(lost.steps.clone()).await.unwrap();
        lost.settle(Err(Settled::Unknown));
        assert!(
            stock.prepare_new_order(hold("c", 1)).await.is_err(),
            "nothing is decided on a SKU being read back"
        );
        let applied = storage
            .apply_stock_steps(committed.steps.clone())
            .await
            .unwrap();
        committed.settle(Ok(&applied));
        // The read-back happens once "b" is settled, and finds both holds.
        let mut level = stock.level("HOT").await.unwrap();
        for _ in 0..100 {
            if level.reserved == 3 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
            level = stock.level("HOT").await.unwrap();
        }
        assert_eq!((level.on_hand, level.reserved), (5, 3));
        let next = stock.prepare_new_order(hold("d", 2)).await.unwrap();
        next.settle(Err(Settled::NotCommitted));
    }

    #[actix_rt::test]
    async fn a_transition_taken_as_due_that_had_happened_changes_nothing() {
        let (stock, storage, _dir) = supervisor(5).await;
        assert!(checkout(&stock, &storage, "a").await);
        assert!(checkout(&stock, &storage, "b").await);
        let moves = |order: &str, to: OrderState| {
            let line = OrderLine {
                sku: "HOT".into(),
                name: "Hot tee".into(),
                quantity: 1,
                unit_price_paise: 100,
                weight_g: None,
            };
            stock::transition_moves(order, &[line], OrderState::PendingPayment, to)
        };
        let commit = |prepared: Prepared| async {
            let applied = storage
                .apply_stock_steps(prepared.steps.clone())
                .await
                .unwrap();
            prepared.settle(Ok(&applied));
            applied
        };
        let level = || async {
            let level = stock.level("HOT").await.unwrap();
            (level.on_hand, level.reserved)
        };
        let cancel = stock
            .prepare_transition(moves("a", OrderState::Cancelled))
            .await
            .unwrap();
        assert_eq!(commit(cancel).await, vec![true]);
        assert_eq!(level().await, (5, 1));
        // The same release again, as a state the rows lag behind would ask
        // for: taken as due without a read, it finds the row released in the
        // commit, and memory follows the commit.
        let again = stock
            .prepare_transition(moves("a", OrderState::Cancelled))
            .await
            .unwrap();
        assert_eq!(again.steps.len(), 1, "taken as due: nothing was read");
        assert_eq!(commit(again).await, vec![false]);
        assert_eq!(level().await, (5, 1));
        // A repeated sale would be refused (no units reserved for it any
        // more): the rows are read, and it prepares nothing.
        let sale = stock
            .prepare_transition(moves("b", OrderState::Paid))
            .await
            .unwrap();
        assert_eq!(commit(sale).await, vec![true]);
        assert_eq!(level().await, (4, 0));
        let resold = stock
            .prepare_transition(moves("b", OrderState::Paid))
            .await
            .unwrap();
        assert!(resold.steps.is_empty(), "read back: the sale had happened");
        assert!(commit(resold).await.is_empty());
        let (_, mismatches) = storage.reconcile_stock().await.unwrap();
        assert!(mismatches.is_empty(), "{mismatches:?}");
        // Every unit left can still be held, and no more.
        for order in ["c", "d", "e", "f"] {
            assert!(checkout(&stock, &storage, order).await, "{order}");
        }
        assert!(!checkout(&stock, &storage, "g").await, "no fifth unit");
    }
}
