//! This instance's part in the cluster (SPEC §13): it announces itself,
//! renews what it holds, and takes or gives back leases a few at a time so
//! that order partitions and Shiprocket accounts spread evenly over the live
//! instances, and one of them leads the cluster-wide sweeps.
//!
//! The [`Ownership`] it keeps up to date is what the rest of the daemon asks
//! ("is this order's partition mine, and under which epoch?"), and what the
//! PostgreSQL store fences each write with: the database decides what may be
//! written, since every write for an owned resource checks its epoch in its
//! own transaction.
//! When renewals fail for longer than the lease lasts, the instance drops
//! everything it held: by then others may have taken it.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::domain::cluster::{plan_partitions, PartitionView, Resource};
use crate::storage::postgres::{LeaseRow, Notice, Ownership, PgStore};
use crate::storage::StorageError;

/// Leases an instance takes or gives back per round, per kind: when an
/// instance joins or leaves, work moves over several rounds instead of all
/// at once, and resumes at a bounded rate.
pub const MOVES_PER_ROUND: usize = 4;

/// What one round changed.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct RoundReport {
    pub gained: Vec<(Resource, i64)>,
    pub lost: Vec<Resource>,
    pub released: Vec<Resource>,
    pub live_instances: usize,
}

/// One instance's membership: the rounds of heartbeat, renewal and planning.
pub struct ClusterMember {
    store: PgStore,
    ownership: Arc<Ownership>,
    ttl: Duration,
    accounts: Vec<String>,
    /// Where this instance starts looking for free leases; differs per
    /// instance so that newcomers do not all race for the same rows.
    offset: usize,
    last_renewed: Option<Instant>,
}

impl ClusterMember {
    pub fn new(
        store: PgStore,
        ownership: Arc<Ownership>,
        ttl: Duration,
        accounts: Vec<String>,
        offset: usize,
    ) -> Self {
        let mut accounts = accounts;
        accounts.sort();
        accounts.dedup();
        Self {
            store,
            ownership,
            ttl,
            accounts,
            offset,
            last_renewed: None,
        }
    }

    pub fn ownership(&self) -> &Arc<Ownership> {
        &self.ownership
    }

    /// How often rounds run: well inside the lease, so that two renewals in a
    /// row can fail before a lease is lost.
    pub fn round_every(&self) -> Duration {
        (self.ttl / 3).max(Duration::from_millis(100))
    }

    /// One round: heartbeat, renew what is held (noting what was lost), then
    /// move towards a fair share of partitions and accounts, and take the
    /// leader's lease if nobody holds it.
    pub async fn round(&mut self) -> Result<RoundReport, StorageError> {
        let me = self.ownership.instance_id().to_owned();
        let instances = self.store.heartbeat(&me, self.ttl).await?;
        let live: BTreeSet<String> = instances
            .iter()
            .filter(|i| i.live)
            .map(|i| i.instance_id.clone())
            .collect();
        let renewed = self.store.renew_leases(&me, self.ttl).await?;
        self.last_renewed = Some(Instant::now());
        let mut report = RoundReport {
            live_instances: live.len(),
            ..RoundReport::default()
        };
        {
            let mut held = self.ownership.held_mut();
            let still: BTreeMap<Resource, i64> = renewed.into_iter().collect();
            report.lost = held
                .iter()
                .filter(|(r, e)| still.get(*r) != Some(*e))
                .map(|(r, _)| r.clone())
                .collect();
            *held = still;
        }

        let table = self.store.leases().await?;
        let partitions = self.ownership.order_partitions();
        let partition_view = view(&table, &live, (0..partitions).map(Resource::OrderPartition));
        let account_view = view(
            &table,
            &live,
            self.accounts.iter().cloned().map(Resource::Account),
        );
        let mut plans = vec![
            (
                plan_partitions(&me, &live, &partition_view, MOVES_PER_ROUND, self.offset),
                (0..partitions)
                    .map(Resource::OrderPartition)
                    .collect::<Vec<_>>(),
            ),
            (
                plan_partitions(&me, &live, &account_view, MOVES_PER_ROUND, self.offset),
                self.accounts
                    .iter()
                    .cloned()
                    .map(Resource::Account)
                    .collect(),
            ),
        ];
        let leader_free = !table.iter().any(|l| {
            l.resource == Resource::Leader
                && l.live
                && l.owner.as_ref().is_some_and(|o| live.contains(o))
        });
        for (plan, resources) in plans.drain(..) {
            for index in plan.release {
                let resource = resources[index as usize].clone();
                if self.store.release_lease(&me, &resource).await? {
                    self.ownership.held_mut().remove(&resource);
                    report.released.push(resource);
                }
            }
            for index in plan.acquire {
                let resource = resources[index as usize].clone();
                self.take(&resource, &mut report).await?;
            }
        }
        if leader_free {
            self.take(&Resource::Leader, &mut report).await?;
        }
        self.offset = self.offset.wrapping_add(1);
        Ok(report)
    }

    /// Called when a round failed: once renewals have failed for the length
    /// of a lease, nothing held can be counted on, so all of it is dropped.
    pub fn round_failed(&mut self) -> Vec<Resource> {
        let expired = self.last_renewed.is_none_or(|at| at.elapsed() >= self.ttl);
        if !expired {
            return Vec::new();
        }
        let mut held = self.ownership.held_mut();
        let lost = held.keys().cloned().collect();
        held.clear();
        lost
    }

    /// An orderly stop: every lease is given back at once.
    pub async fn leave(&mut self) -> Result<(), StorageError> {
        self.ownership.held_mut().clear();
        self.store.leave(self.ownership.instance_id()).await
    }

    async fn take(
        &mut self,
        resource: &Resource,
        report: &mut RoundReport,
    ) -> Result<(), StorageError> {
        let me = self.ownership.instance_id();
        if let Some(epoch) = self.store.acquire_lease(me, resource, self.ttl).await? {
            let previous = self.ownership.held_mut().insert(resource.clone(), epoch);
            if previous != Some(epoch) {
                report.gained.push((resource.clone(), epoch));
            }
        }
        Ok(())
    }
}

/// The lease table's view of `resources`, in order: each one's live owner.
fn view(
    table: &[LeaseRow],
    live: &BTreeSet<String>,
    resources: impl Iterator<Item = Resource>,
) -> Vec<PartitionView> {
    let owners: BTreeMap<&Resource, &LeaseRow> = table.iter().map(|l| (&l.resource, l)).collect();
    resources
        .enumerate()
        .map(|(index, resource)| PartitionView {
            partition: index as u32,
            owner: owners
                .get(&resource)
                .filter(|l| l.live)
                .and_then(|l| l.owner.clone())
                .filter(|owner| live.contains(owner)),
        })
        .collect()
}

/// Resolves when an instance announces that it left.
async fn leases_freed(notices: &mut tokio::sync::broadcast::Receiver<Notice>) {
    loop {
        match notices.recv().await {
            Ok(Notice::LeasesFreed) => return,
            // Missed among the other notices: the next round finds them free anyway.
            Ok(_) | Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => {}
            Err(tokio::sync::broadcast::error::RecvError::Closed) => {
                std::future::pending::<()>().await
            }
        }
    }
}

/// The pause between rounds while work is still moving: short, so that a
/// lone instance or the survivors of a crash reach their share in a few
/// seconds, yet each round moves only a few leases.
pub const CATCH_UP_EVERY: Duration = Duration::from_millis(250);

/// Runs rounds until `stop` resolves, then leaves the cluster. `changed` is
/// told of every round that gained, lost or gave back a lease.
pub async fn run(
    mut member: ClusterMember,
    stop: impl std::future::Future<Output = ()>,
    changed: impl Fn(&RoundReport),
) {
    tokio::pin!(stop);
    let mut notices = member.store.notices();
    loop {
        let wait = match member.round().await {
            Ok(report) => {
                let moving = !(report.gained.is_empty()
                    && report.lost.is_empty()
                    && report.released.is_empty());
                if moving {
                    for (resource, epoch) in &report.gained {
                        tracing::info!(%resource, epoch, "lease taken");
                    }
                    for resource in &report.lost {
                        tracing::warn!(%resource, "lease lost to another instance");
                    }
                    for resource in &report.released {
                        tracing::info!(%resource, "lease handed over");
                    }
                    changed(&report);
                    CATCH_UP_EVERY
                } else {
                    member.round_every()
                }
            }
            Err(e) => {
                let lost = member.round_failed();
                tracing::warn!(error = %e, dropped = lost.len(), "cluster round failed");
                if !lost.is_empty() {
                    changed(&RoundReport {
                        lost,
                        ..RoundReport::default()
                    });
                }
                member.round_every()
            }
        };
        tokio::select! {
            _ = &mut stop => break,
            _ = tokio::time::sleep(wait) => {}
            // Another instance left: its leases are free now.
            _ = leases_freed(&mut notices) => {}
        }
    }
    if let Err(e) = member.leave().await {
        tracing::warn!(error = %e, "could not hand over leases at stop; they expire by themselves");
    }
}

/// What this instance works on: everything when it runs alone (SQLite), or
/// the orders of the partitions it holds and, as leader, the cluster-wide
/// sweeps. Timers, the dispatcher and the sweeps ask it before each piece of
/// work, so a lease that moves takes its work along at the next look.
#[derive(Clone, Default)]
pub struct Scope {
    cluster: Option<Arc<Ownership>>,
}

impl Scope {
    /// A lone instance: everything is its own.
    pub fn everything() -> Self {
        Self { cluster: None }
    }

    pub fn cluster(ownership: Arc<Ownership>) -> Self {
        Self {
            cluster: Some(ownership),
        }
    }

    /// Whether `order_id`'s actor, timers and inbox entries are this instance's.
    pub fn owns_order(&self, order_id: &str) -> bool {
        self.cluster.as_ref().is_none_or(|o| o.owns_order(order_id))
    }

    /// Whether the cluster-wide sweeps (payment and stock reconciliation,
    /// events no order claims) are this instance's.
    pub fn leads(&self) -> bool {
        self.cluster
            .as_ref()
            .is_none_or(|o| o.holds(&Resource::Leader))
    }

    pub fn is_clustered(&self) -> bool {
        self.cluster.is_some()
    }
}
