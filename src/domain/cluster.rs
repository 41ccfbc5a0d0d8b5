//! Who owns what when several instances share one PostgreSQL database
//! (SPEC §13): the leased resources, the partition an order belongs to, and
//! each instance's next step towards an even spread of partitions.
//!
//! Every instance runs [`plan_partitions`] on the same view of the lease
//! table and moves at most a few partitions per round, so when instances come
//! and go the partitions drift to an even spread instead of all changing hands
//! at once, and no two instances chase the same free partition first.

use std::collections::BTreeSet;
use std::fmt;

/// What kind of thing a lease gives its owner (the `kind` label of
/// `dropship_cluster_leases`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum LeaseKind {
    /// A share of the orders: their actors, timers and inbox dispatching.
    OrderPartition,
    /// A Shiprocket account's only gateway in the cluster.
    Account,
    /// The cluster-wide sweeps (payment and stock reconciliation).
    Leader,
}

impl LeaseKind {
    pub const ALL: [LeaseKind; 3] = [Self::OrderPartition, Self::Account, Self::Leader];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::OrderPartition => "order_partition",
            Self::Account => "account",
            Self::Leader => "leader",
        }
    }

    pub fn parse(text: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|kind| kind.as_str() == text)
    }
}

/// One leased resource; its text form is the lease table's key.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Resource {
    OrderPartition(u32),
    Account(String),
    Leader,
}

impl Resource {
    pub fn kind(&self) -> LeaseKind {
        match self {
            Self::OrderPartition(_) => LeaseKind::OrderPartition,
            Self::Account(_) => LeaseKind::Account,
            Self::Leader => LeaseKind::Leader,
        }
    }

    /// The inverse of `Display`.
    pub fn parse(text: &str) -> Option<Self> {
        if text == "leader" {
            return Some(Self::Leader);
        }
        let (kind, rest) = text.split_once(':')?;
        match kind {
            "order_partition" => rest.parse().ok().map(Self::OrderPartition),
            "account" if !rest.is_empty() => Some(Self::Account(rest.to_owned())),
            _ => None,
        }
    }
}

impl fmt::Display for Resource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::OrderPartition(n) => write!(f, "order_partition:{n}"),
            Self::Account(name) => write!(f, "account:{name}"),
            Self::Leader => f.write_str("leader"),
        }
    }
}

/// The partition an order belongs to: `hash(order_id) % partitions`, with a
/// hash that every instance and every build computes alike (FNV-1a, 64 bit).
pub fn partition_of(order_id: &str, partitions: u32) -> u32 {
    const OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
    const PRIME: u64 = 0x0000_0100_0000_01b3;
    let hash = order_id.bytes().fold(OFFSET, |hash, byte| {
        (hash ^ u64::from(byte)).wrapping_mul(PRIME)
    });
    (hash % u64::from(partitions.max(1))) as u32
}

/// How many partitions each live instance should hold: `partitions / n`, and
/// one more for the first `partitions % n` instances in id order.
pub fn fair_share(me: &str, live: &BTreeSet<String>, partitions: u32) -> u32 {
    let n = live.len().max(1) as u32;
    let rank = live.iter().position(|id| id == me).unwrap_or(live.len()) as u32;
    partitions / n + u32::from(rank < partitions % n)
}

/// One partition as the lease table shows it now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PartitionView {
    pub partition: u32,
    /// The holder of a live lease; `None` when free or expired.
    pub owner: Option<String>,
}

/// What an instance does this round.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PartitionPlan {
    pub acquire: Vec<u32>,
    pub release: Vec<u32>,
}

/// The next step for `me` towards its fair share, moving at most `max_moves`
/// partitions. Free partitions are taken starting at `offset` (random per
/// instance and round), so instances looking at the same free set spread
/// over it rather than racing for the same rows. An instance over its share
/// gives back its highest partitions; one under it takes only free ones:
/// nobody takes a partition from a live owner.
pub fn plan_partitions(
    me: &str,
    live: &BTreeSet<String>,
    partitions: &[PartitionView],
    max_moves: usize,
    offset: usize,
) -> PartitionPlan {
    let total = partitions.len() as u32;
    let target = fair_share(me, live, total) as usize;
    let mine: Vec<u32> = partitions
        .iter()
        .filter(|p| p.owner.as_deref() == Some(me))
        .map(|p| p.partition)
        .collect();
    let mut plan = PartitionPlan::default();
    if mine.len() > target {
        let excess = (mine.len() - target).min(max_moves);
        plan.release = mine.iter().rev().take(excess).copied().collect();
        return plan;
    }
    let wanted = (target - mine.len()).min(max_moves);
    // A partition whose owner is not live is as good as free: its lease will
    // have expired by the database's clock before anyone can take it.
    let free: Vec<u32> = partitions
        .iter()
        .filter(|p| p.owner.as_ref().is_none_or(|owner| !live.contains(owner)))
        .map(|p| p.partition)
        .collect();
    if free.is_empty() {
        return plan;
    }
    let start = offset % free.len();
    plan.acquire = free
        .iter()
        .cycle()
        .skip(start)
        .take(wanted.min(free.len()))
        .copied()
        .collect();
    plan
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn live(ids: &[&str]) -> BTreeSet<String> {
        ids.iter().map(|id| id.to_string()).collect()
    }

    fn view(owners: &[Option<&str>]) -> Vec<PartitionView> {
        owners
            .iter()
            .enumerate()
            .map(|(i, owner)| PartitionView {
                partition: i as u32,
                owner: owner.map(str::to_owned),
            })
            .collect()
    }

    #[test]
    fn resources_read_back_what_they_print() {
        for resource in [
            Resource::OrderPartition(0),
            Resource::OrderPartition(31),
            Resource::Account("primary".into()),
            Resource::Account("with:colon".into()),
            Resource::Leader,
        ] {
            assert_eq!(Resource::parse(&resource.to_string()), Some(resource));
        }
        for bad in [
            "",
            "order_partition:",
            "order_partition:x",
            "account:",
            "lead",
            "x:1",
        ] {
            assert_eq!(Resource::parse(bad), None, "{bad:?}");
        }
        assert_eq!(Resource::Leader.kind().as_str(), "leader");
        assert_eq!(
            LeaseKind::parse("order_partition"),
            Some(LeaseKind::OrderPartition)
        );
    }

    #[test]
    fn the_partition_of_an_order_is_fixed_across_builds() {
        // Pinned values: changing the hash would move every stored order to a
        // different owner while old instances still run.
        assert_eq!(partition_of("", 32), (0xcbf2_9ce4_8422_2325u64 % 32) as u32);
        assert_eq!(partition_of("XVC-1001", 32), 9);
        assert_eq!(partition_of("XVC-1001", 7), 0);
        let spread: BTreeSet<u32> = (0..1000)
            .map(|i| partition_of(&format!("XVC-{i}"), 32))
            .collect();
        assert_eq!(spread.len(), 32, "a thousand orders reach every partition");
        assert_eq!(partition_of("XVC-1", 0), 0, "no partitions counts as one");
    }

    #[test]
    fn shares_add_up_and_differ_by_at_most_one() {
        let three = live(&["a", "b", "c"]);
        let shares: Vec<u32> = ["a", "b", "c"]
            .iter()
            .map(|id| fair_share(id, &three, 32))
            .collect();
        assert_eq!(shares, vec![11, 11, 10]);
    }

    #[test]
    fn a_lone_instance_takes_free_partitions_a_few_at_a_time() {
        let plan = plan_partitions("a", &live(&["a"]), &view(&[None; 8]), 3, 5);
        assert_eq!(plan.acquire, vec![5, 6, 7]);
        assert!(plan.release.is_empty());
    }

    #[test]
    fn a_newcomer_is_made_room_for_and_nobody_steals() {
        let everyone = live(&["a", "b"]);
        let all_a = view(&[Some("a"); 8]);
        // b finds nothing free: it takes nothing from a live owner.
        assert_eq!(
            plan_partitions("b", &everyone, &all_a, 2, 0),
            PartitionPlan::default()
        );
        // a gives back its highest, at most two per round.
        let plan = plan_partitions("a", &everyone, &all_a, 2, 0);
        assert_eq!(plan.release, vec![7, 6]);
    }

    #[test]
    fn the_partitions_of_a_dead_instance_count_as_free() {
        let owners = [Some("a"), Some("dead"), Some("dead"), Some("a")];
        let plan = plan_partitions("b", &live(&["a", "b"]), &view(&owners), 4, 0);
        assert_eq!(plan.acquire, vec![1, 2]);
    }

    /// Rounds of every instance's plan applied to one table until nothing moves.
    fn settle(ids: &[String], table: &mut [PartitionView], max_moves: usize, seed: usize) -> usize {
        let everyone: BTreeSet<String> = ids.iter().cloned().collect();
        for round in 0..200 {
            let mut moved = false;
            for (i, id) in ids.iter().enumerate() {
                let plan = plan_partitions(id, &everyone, table, max_moves, seed + round * 7 + i);
                for p in plan.release {
                    table[p as usize].owner = None;
                    moved = true;
                }
                for p in plan.acquire {
                    // The database lets only one instance take a free row.
                    let row = &mut table[p as usize];
                    if row.owner.as_ref().is_none_or(|o| !everyone.contains(o)) {
                        row.owner = Some(id.clone());
                        moved = true;
                    }
                }
            }
            if !moved {
                return round;
            }
        }
        panic!("the partitions never settled");
    }

    proptest! {
        #[test]
        fn any_cluster_settles_on_an_even_spread(
            instances in 1usize..6,
            partitions in 1usize..64,
            max_moves in 1usize..5,
            seed in 0usize..1000,
            start_owner in proptest::collection::vec(0usize..8, 64),
        ) {
            let ids: Vec<String> = (0..instances).map(|i| format!("i{i}")).collect();
            // Owners from before: some live, some gone (index beyond `instances`).
            let mut table: Vec<PartitionView> = (0..partitions)
                .map(|p| PartitionView {
                    partition: p as u32,
                    owner: Some(format!("i{}", start_owner[p])),
                })
                .collect();
            settle(&ids, &mut table, max_moves, seed);
            let everyone: BTreeSet<String> = ids.iter().cloned().collect();
            for id in &ids {
                let held = table.iter().filter(|p| p.owner.as_ref() == Some(id)).count();
                prop_assert_eq!(held as u32, fair_share(id, &everyone, partitions as u32));
            }
            prop_assert!(table.iter().all(|p| p.owner.as_ref().is_some_and(|o| everyone.contains(o))));
        }
    }
}
