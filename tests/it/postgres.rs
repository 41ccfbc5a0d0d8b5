//! The PostgreSQL backend against a real, throw-away PostgreSQL server:
//! migrations from instances starting at once, and leases with fencing.

use std::time::Duration;

use dropshipd::domain::cluster::Resource;
use dropshipd::scratch_postgres::{ScratchError, ScratchPostgres};
use dropshipd::storage::postgres::{hold, Fence, PgOptions, PgStore};
use dropshipd::storage::{PiiKey, StorageError};

/// A scratch server, or `None` (with the reason printed) where PostgreSQL is
/// not installed. With `DROPSHIPD_REQUIRE_POSTGRES` set, as in CI, its absence fails.
pub fn scratch_postgres(test: &str) -> Option<ScratchPostgres> {
    match ScratchPostgres::start() {
        Ok(server) => Some(server),
        Err(e @ (ScratchError::NotInstalled | ScratchError::NoServerUser))
            if std::env::var_os("DROPSHIPD_REQUIRE_POSTGRES").is_none() =>
        {
            eprintln!("skipped {test}: {e}");
            None
        }
        Err(e) => panic!("cannot start PostgreSQL for {test}: {e}"),
    }
}

pub(crate) fn options(url: String) -> PgOptions {
    PgOptions {
        url,
        pool_size: 4,
        busy_timeout: Duration::from_secs(5),
        pii_key: PiiKey::from_bytes([7; 32]),
        abandon_after: Duration::from_secs(5),
        ownership: None,
    }
}

const TTL: Duration = Duration::from_secs(30);
/// A lease that is already over when the next transaction starts: expiry by
/// the database's clock without waiting for it.
const EXPIRED: Duration = Duration::ZERO;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn instances_starting_at_once_migrate_the_schema_once() {
    let Some(server) = scratch_postgres("instances_starting_at_once_migrate_the_schema_once")
    else {
        return;
    };
    let url = server.create_database("migrations").expect("database");
    let starts: Vec<_> = (0..3)
        .map(|_| {
            let url = url.clone();
            tokio::spawn(async move { PgStore::connect(&options(url)).await })
        })
        .collect();
    let mut stores = Vec::new();
    for start in starts {
        stores.push(start.await.expect("task").expect("every instance starts"));
    }
    let version = stores[0].schema_version().await.expect("version");
    assert!(version >= 1);
    for store in &stores {
        assert_eq!(store.schema_version().await.expect("version"), version);
    }
    // A fourth start later finds nothing to do.
    let again = PgStore::connect(&options(url.clone()))
        .await
        .expect("restart");
    assert_eq!(again.schema_version().await.expect("version"), version);

    // A database a newer dropshipd migrated is refused, not guessed at.
    let (client, connection) = tokio_postgres::connect(&url, tokio_postgres::NoTls)
        .await
        .expect("connect");
    tokio::spawn(connection);
    client
        .execute(
            "INSERT INTO schema_migrations (version) VALUES ($1)",
            &[&(version as i32 + 1)],
        )
        .await
        .expect("a future version");
    match PgStore::connect(&options(url)).await {
        Err(StorageError::SchemaTooNew { found, supported }) => {
            assert_eq!((found, supported), (version + 1, version));
        }
        Err(other) => panic!("expected SchemaTooNew, got {other}"),
        Ok(_) => panic!("a newer schema was accepted"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lease_has_one_owner_and_a_new_epoch_with_each_new_one() {
    let Some(server) = scratch_postgres("a_lease_has_one_owner_and_a_new_epoch_with_each_new_one")
    else {
        return;
    };
    let url = server.create_database("leases").expect("database");
    let store = PgStore::connect(&options(url)).await.expect("connect");
    let partition = Resource::OrderPartition(7);

    let epoch_a = store
        .acquire_lease("a", &partition, TTL)
        .await
        .expect("acquire")
        .expect("a free lease is taken");
    assert_eq!(epoch_a, 1);
    assert_eq!(
        store
            .acquire_lease("b", &partition, TTL)
            .await
            .expect("acquire"),
        None,
        "a live lease is not taken from its owner"
    );
    assert_eq!(
        store
            .acquire_lease("a", &partition, TTL)
            .await
            .expect("acquire"),
        Some(1),
        "taking one's own lease renews it under the same epoch"
    );
    let fence_a = Fence {
        instance_id: "a".into(),
        resource: partition.clone(),
        epoch: epoch_a,
    };
    store
        .check_fence(&fence_a)
        .await
        .expect("a's writes commit");

    // a stops renewing (paused, partitioned): its lease runs out.
    assert_eq!(
        store.renew_leases("a", EXPIRED).await.expect("renew"),
        vec![(partition.clone(), 1)]
    );
    assert!(
        store
            .renew_leases("a", TTL)
            .await
            .expect("renew")
            .is_empty(),
        "an expired lease is lost"
    );
    assert!(matches!(
        store.check_fence(&fence_a).await,
        Err(StorageError::LeaseLost { epoch: 1, .. })
    ));
    let epoch_b = store
        .acquire_lease("b", &partition, TTL)
        .await
        .expect("acquire")
        .expect("an expired lease is taken");
    assert_eq!(epoch_b, 2);
    // a comes back: nothing it writes under its old epoch commits, and
    // asking again does not take the lease back.
    assert!(matches!(
        store.check_fence(&fence_a).await,
        Err(StorageError::LeaseLost { .. })
    ));
    assert_eq!(
        store
            .acquire_lease("a", &partition, TTL)
            .await
            .expect("acquire"),
        None
    );
    let fence_b = Fence {
        instance_id: "b".into(),
        resource: partition.clone(),
        epoch: epoch_b,
    };
    store
        .check_fence(&fence_b)
        .await
        .expect("b's writes commit");

    // A release hands over at once, and the next owner's epoch is higher.
    assert!(store.release_lease("b", &partition).await.expect("release"));
    assert!(!store
        .release_lease("b", &partition)
        .await
        .expect("release twice"));
    assert!(matches!(
        store.check_fence(&fence_b).await,
        Err(StorageError::LeaseLost { .. })
    ));
    assert_eq!(
        store
            .acquire_lease("a", &partition, TTL)
            .await
            .expect("acquire"),
        Some(3)
    );

    let table = store.leases().await.expect("leases");
    assert_eq!(table.len(), 1);
    assert_eq!(table[0].owner.as_deref(), Some("a"));
    assert_eq!((table[0].epoch, table[0].live), (3, true));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_leaving_instance_frees_its_leases_and_expired_instances_show_as_gone() {
    let Some(server) =
        scratch_postgres("a_leaving_instance_frees_its_leases_and_expired_instances_show_as_gone")
    else {
        return;
    };
    let url = server.create_database("instances").expect("database");
    let store = PgStore::connect(&options(url)).await.expect("connect");
    store.heartbeat("a", TTL).await.expect("a");
    store.heartbeat("b", EXPIRED).await.expect("b");
    let seen = store.heartbeat("c", TTL).await.expect("c");
    let live: Vec<(&str, bool)> = seen
        .iter()
        .map(|i| (i.instance_id.as_str(), i.live))
        .collect();
    assert_eq!(live, vec![("a", true), ("b", false), ("c", true)]);

    for resource in [Resource::Leader, Resource::Account("primary".into())] {
        assert_eq!(
            store
                .acquire_lease("a", &resource, TTL)
                .await
                .expect("acquire"),
            Some(1)
        );
    }
    store.leave("a").await.expect("leave");
    assert!(store
        .leases()
        .await
        .expect("leases")
        .iter()
        .all(|l| !l.live));
    assert_eq!(
        store
            .acquire_lease("c", &Resource::Leader, TTL)
            .await
            .expect("acquire"),
        Some(2),
        "a released lease is taken at once"
    );
    let after = store.heartbeat("c", TTL).await.expect("c");
    assert!(after.iter().all(|i| i.instance_id != "a"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_takeover_waits_for_a_write_in_flight_under_the_old_epoch() {
    let Some(server) =
        scratch_postgres("a_takeover_waits_for_a_write_in_flight_under_the_old_epoch")
    else {
        return;
    };
    let url = server.create_database("fencing").expect("database");
    let store = PgStore::connect(&options(url.clone()))
        .await
        .expect("connect");
    let partition = Resource::OrderPartition(0);
    // A lease about to end, by the database's clock.
    let epoch = store
        .acquire_lease("a", &partition, Duration::from_millis(500))
        .await
        .expect("acquire")
        .expect("free");

    // a's write holds the fence in an open transaction...
    let pool = deadpool_postgres::Config {
        url: Some(url.clone()),
        ..Default::default()
    }
    .create_pool(
        Some(deadpool_postgres::Runtime::Tokio1),
        tokio_postgres::NoTls,
    )
    .expect("pool");
    let mut client = pool.get().await.expect("connection");
    let write = client.transaction().await.expect("begin");
    let fence = Fence {
        instance_id: "a".into(),
        resource: partition.clone(),
        epoch,
    };
    hold(&write, &fence).await.expect("a holds the lease");

    // ...so b cannot take it until that write is over, even once it expired.
    let takeover = {
        let store = store.clone();
        let partition = partition.clone();
        tokio::spawn(async move {
            loop {
                if let Some(epoch) = store
                    .acquire_lease("b", &partition, TTL)
                    .await
                    .expect("acquire")
                {
                    return epoch;
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        })
    };
    // Wait until the lease has expired and b's attempt is blocked on a's row
    // lock, both as the server sees them.
    let (watcher, connection) = tokio_postgres::connect(&url, tokio_postgres::NoTls)
        .await
        .expect("connect");
    tokio::spawn(connection);
    loop {
        let row = watcher
            .query_one(
                "SELECT (SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock'),
                        (SELECT expires_at < clock_timestamp() FROM cluster_leases WHERE resource = $1)",
                &[&partition.to_string()],
            )
            .await
            .expect("activity");
        let (waiting, expired): (i64, bool) = (row.get(0), row.get(1));
        if waiting > 0 && expired {
            break;
        }
        assert!(
            !takeover.is_finished(),
            "b took a lease while a's write held it"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    write.commit().await.expect("a's write commits");
    assert_eq!(takeover.await.expect("b"), epoch + 1);
}

mod membership {
    use std::collections::BTreeMap;
    use std::sync::Arc;

    use dropshipd::actors::cluster::ClusterMember;
    use dropshipd::domain::cluster::{LeaseKind, Resource};
    use dropshipd::storage::postgres::Ownership;

    use super::*;

    const PARTITIONS: u32 = 12;

    fn member(store: &PgStore, id: &str, offset: usize) -> ClusterMember {
        ClusterMember::new(
            store.clone(),
            Arc::new(Ownership::new(id, PARTITIONS)),
            TTL,
            vec!["primary".into(), "secondary".into()],
            offset,
        )
    }

    /// Rounds of every member in turn until a whole pass changes nothing.
    async fn settle(members: &mut [&mut ClusterMember]) -> usize {
        for pass in 0..40 {
            let mut changed = false;
            for member in members.iter_mut() {
                let report = member.round().await.expect("round");
                changed |= !(report.gained.is_empty()
                    && report.lost.is_empty()
                    && report.released.is_empty());
            }
            if !changed {
                return pass;
            }
        }
        panic!("the cluster never settled");
    }

    fn kinds(member: &ClusterMember) -> (usize, usize, usize) {
        let counts = member.ownership().counts();
        (
            counts[&LeaseKind::OrderPartition],
            counts[&LeaseKind::Account],
            counts[&LeaseKind::Leader],
        )
    }

    /// Every lease in the table has exactly one live owner among `ids`.
    async fn owners(store: &PgStore) -> BTreeMap<Resource, (String, i64)> {
        store
            .leases()
            .await
            .expect("leases")
            .into_iter()
            .filter(|l| l.live)
            .filter_map(|l| Some((l.resource, (l.owner?, l.epoch))))
            .collect()
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn leases_spread_evenly_move_when_an_instance_dies_and_come_back_when_it_returns() {
        let Some(server) = scratch_postgres(
            "leases_spread_evenly_move_when_an_instance_dies_and_come_back_when_it_returns",
        ) else {
            return;
        };
        let url = server.create_database("membership").expect("database");
        let store = PgStore::connect(&options(url.clone()))
            .await
            .expect("connect");
        let (mut a, mut b, mut c) = (
            member(&store, "a", 0),
            member(&store, "b", 5),
            member(&store, "c", 9),
        );

        settle(&mut [&mut a, &mut b, &mut c]).await;
        let spread = [kinds(&a), kinds(&b), kinds(&c)];
        assert_eq!(
            spread.iter().map(|k| k.0).collect::<Vec<_>>(),
            vec![4, 4, 4],
            "partitions spread evenly: {spread:?}"
        );
        assert_eq!(
            spread.iter().map(|k| k.1).sum::<usize>(),
            2,
            "each account has one gateway"
        );
        assert!(spread.iter().all(|k| k.1 <= 1), "{spread:?}");
        assert_eq!(spread.iter().map(|k| k.2).sum::<usize>(), 1, "one leader");
        let before = owners(&store).await;
        assert_eq!(before.len(), PARTITIONS as usize + 3);
        let c_held: Vec<Resource> = c.ownership().held().into_iter().map(|(r, _)| r).collect();

        // c dies: its leases and its presence run out by the database's clock.
        let (client, connection) = tokio_postgres::connect(&url, tokio_postgres::NoTls)
            .await
            .expect("connect");
        tokio::spawn(connection);
        client
            .batch_execute(
                "UPDATE cluster_leases SET expires_at = now() - interval '1 second' WHERE owner = 'c';
                 UPDATE cluster_instances SET expires_at = now() - interval '1 second' WHERE instance_id = 'c';",
            )
            .await
            .expect("expire c");
        settle(&mut [&mut a, &mut b]).await;
        assert_eq!((kinds(&a).0, kinds(&b).0), (6, 6));
        let after = owners(&store).await;
        assert_eq!(
            after.len(),
            PARTITIONS as usize + 3,
            "nothing is left without an owner"
        );
        for resource in &c_held {
            let (owner, epoch) = &after[resource];
            assert_ne!(owner, "c");
            assert_eq!(
                *epoch,
                before[resource].1 + 1,
                "a new owner, a new epoch: {resource}"
            );
        }

        // c comes back: what it held is gone, and it gets its share again.
        let report = c.round().await.expect("c's round");
        let mut lost = report.lost.clone();
        lost.sort();
        assert_eq!(lost, c_held, "c learns it lost everything");
        settle(&mut [&mut a, &mut b, &mut c]).await;
        assert_eq!(
            [kinds(&a).0, kinds(&b).0, kinds(&c).0],
            [4, 4, 4],
            "the newcomer is made room for"
        );

        // An orderly stop hands over at once.
        a.leave().await.expect("leave");
        settle(&mut [&mut b, &mut c]).await;
        assert_eq!((kinds(&b).0, kinds(&c).0), (6, 6));
        let last = owners(&store).await;
        assert!(last.values().all(|(owner, _)| owner != "a"));
        assert_eq!(last.len(), PARTITIONS as usize + 3);
    }
}
