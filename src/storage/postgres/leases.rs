//! Instances and leases (SPEC §13), by the database's clock: an instance's
//! own clock may be wrong or paused, the database's is the one every instance
//! shares. A lease is taken only when it is free or expired, every new owner
//! gets a higher epoch, and [`hold`] makes a write's transaction depend on the
//! epoch it was made under.

use std::collections::BTreeMap;
use std::sync::RwLock;
use std::time::Duration;

use deadpool_postgres::GenericClient;
use tokio_postgres::Row;

use super::PgStore;
use crate::domain::cluster::{partition_of, LeaseKind, Resource};
use crate::storage::StorageError;

/// A lease as the table holds it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LeaseRow {
    pub resource: Resource,
    pub owner: Option<String>,
    pub epoch: i64,
    pub expires_at_ms: i64,
    /// Held and not expired, by the database's clock.
    pub live: bool,
}

/// An instance as the table holds it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InstanceView {
    pub instance_id: String,
    pub last_seen_ms: i64,
    pub live: bool,
}

/// What a write made for an owned resource was made under.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fence {
    pub instance_id: String,
    pub resource: Resource,
    pub epoch: i64,
}

/// What this instance holds, by resource, with each lease's epoch: kept
/// up to date by the cluster membership's rounds, read by whatever decides
/// what to work on, and by the writes that must be fenced.
#[derive(Debug, Default)]
pub struct Ownership {
    instance_id: String,
    order_partitions: u32,
    held: RwLock<BTreeMap<Resource, i64>>,
}

impl Ownership {
    pub fn new(instance_id: impl Into<String>, order_partitions: u32) -> Self {
        Self {
            instance_id: instance_id.into(),
            order_partitions: order_partitions.max(1),
            held: RwLock::default(),
        }
    }

    pub fn instance_id(&self) -> &str {
        &self.instance_id
    }

    pub fn order_partitions(&self) -> u32 {
        self.order_partitions
    }

    /// The fence a write for `resource` must carry, if it is ours now.
    pub fn fence(&self, resource: &Resource) -> Option<Fence> {
        let epoch = *self.read().get(resource)?;
        Some(Fence {
            instance_id: self.instance_id.clone(),
            resource: resource.clone(),
            epoch,
        })
    }

    /// The partition `order_id` belongs to.
    pub fn partition_of(&self, order_id: &str) -> Resource {
        Resource::OrderPartition(partition_of(order_id, self.order_partitions))
    }

    /// The fence for writing `order_id`, if its partition is ours.
    pub fn order_fence(&self, order_id: &str) -> Option<Fence> {
        self.fence(&self.partition_of(order_id))
    }

    /// Whether `order_id`'s partition is ours now.
    pub fn owns_order(&self, order_id: &str) -> bool {
        self.read().contains_key(&self.partition_of(order_id))
    }

    /// Whether `resource` is ours now.
    pub fn holds(&self, resource: &Resource) -> bool {
        self.read().contains_key(resource)
    }

    /// The order partitions held, in order.
    pub fn partitions(&self) -> Vec<u32> {
        self.read()
            .keys()
            .filter_map(|resource| match resource {
                Resource::OrderPartition(partition) => Some(*partition),
                _ => None,
            })
            .collect()
    }

    /// Every lease held, in resource order.
    pub fn held(&self) -> Vec<(Resource, i64)> {
        self.read().iter().map(|(r, e)| (r.clone(), *e)).collect()
    }

    /// How many leases of each kind are held (every kind, zeros too).
    pub fn counts(&self) -> BTreeMap<LeaseKind, usize> {
        let mut counts: BTreeMap<LeaseKind, usize> =
            LeaseKind::ALL.into_iter().map(|k| (k, 0)).collect();
        for resource in self.read().keys() {
            *counts.entry(resource.kind()).or_default() += 1;
        }
        counts
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, BTreeMap<Resource, i64>> {
        // A panic while holding the lock leaves plain data behind: keep using it.
        self.held
            .read()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    pub(crate) fn held_mut(&self) -> std::sync::RwLockWriteGuard<'_, BTreeMap<Resource, i64>> {
        self.held
            .write()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

fn ttl_ms(ttl: Duration) -> i64 {
    i64::try_from(ttl.as_millis()).unwrap_or(i64::MAX)
}

/// A timestamp column as milliseconds since the epoch, as the rest of the schema keeps time.
fn ms_of(column: &str) -> String {
    format!("(extract(epoch FROM {column}) * 1000)::bigint")
}

impl PgStore {
    /// Announces `instance_id` as live for `ttl` more, and lists every
    /// instance the table knows.
    pub async fn heartbeat(
        &self,
        instance_id: &str,
        ttl: Duration,
    ) -> Result<Vec<InstanceView>, StorageError> {
        let instance_id = instance_id.to_owned();
        let ttl = ttl_ms(ttl);
        self.run_leases(move |pool| async move {
            let client = pool.get().await?;
            client
                .execute(
                    "INSERT INTO cluster_instances (instance_id, started_at, last_seen, expires_at)
                     VALUES ($1, now(), now(), now() + $2::bigint * interval '1 millisecond')
                     ON CONFLICT (instance_id) DO UPDATE
                     SET last_seen = now(), expires_at = EXCLUDED.expires_at",
                    &[&instance_id, &ttl],
                )
                .await?;
            list_instances(&client).await
        })
        .await
    }

    /// Every instance the table knows, live or not.
    pub async fn instances(&self) -> Result<Vec<InstanceView>, StorageError> {
        self.run_leases(|pool| async move {
            let client = pool.get().await?;
            list_instances(&client).await
        })
        .await
    }

    /// An orderly stop: every lease of `instance_id` is released at once (so
    /// others take them on their next round) and the instance leaves.
    pub async fn leave(&self, instance_id: &str) -> Result<(), StorageError> {
        let instance_id = instance_id.to_owned();
        self.run_leases(move |pool| async move {
            let mut client = pool.get().await?;
            let tx = client.transaction().await?;
            tx.execute(
                "UPDATE cluster_leases SET owner = NULL, expires_at = now() WHERE owner = $1",
                &[&instance_id],
            )
            .await?;
            tx.execute(
                "DELETE FROM cluster_instances WHERE instance_id = $1",
                &[&instance_id],
            )
            .await?;
            // Delivered at commit: the others take the leases at once.
            tx.execute(
                "SELECT pg_notify($1, $2)",
                &[&super::commands::LEASES_CHANNEL, &instance_id],
            )
            .await?;
            tx.commit().await?;
            Ok(())
        })
        .await
    }

    /// Every lease, in resource order.
    pub async fn leases(&self) -> Result<Vec<LeaseRow>, StorageError> {
        self.run_leases(|pool| async move {
            let client = pool.get().await?;
            let rows = client
                .query(
                    &format!(
                        "SELECT resource, owner, epoch, {}, owner IS NOT NULL AND expires_at > now()
                         FROM cluster_leases ORDER BY resource",
                        ms_of("expires_at")
                    ),
                    &[],
                )
                .await?;
            rows.iter().map(lease_row).collect()
        })
        .await
    }

    /// Takes `resource` for `ttl` if it is free or its lease expired, and
    /// returns the new epoch; `None` while someone else holds it. Taking a
    /// lease one already holds renews it under the same epoch.
    pub async fn acquire_lease(
        &self,
        instance_id: &str,
        resource: &Resource,
        ttl: Duration,
    ) -> Result<Option<i64>, StorageError> {
        let instance_id = instance_id.to_owned();
        let (key, kind) = (resource.to_string(), resource.kind().as_str());
        let ttl = ttl_ms(ttl);
        self.run_leases(move |pool| async move {
            let mut client = pool.get().await?;
            let tx = client.transaction().await?;
            // Writes hold the row FOR KEY SHARE, which a renewal's UPDATE
            // does not wait for but this lock does: a takeover waits for
            // every write in flight under the old epoch, and a row held up
            // longer than the lease pool's lock_timeout is "not now".
            match tx
                .execute(
                    "SELECT 1 FROM cluster_leases WHERE resource = $1 FOR UPDATE",
                    &[&key],
                )
                .await
            {
                Ok(_) => {}
                Err(e) if e.code() == Some(&tokio_postgres::error::SqlState::LOCK_NOT_AVAILABLE) => {
                    return Ok(None)
                }
                Err(e) => return Err(e.into()),
            }
            let row = tx
                .query_opt(
                    "INSERT INTO cluster_leases AS l (resource, kind, owner, epoch, acquired_at, expires_at)
                     VALUES ($1, $2, $3, 1, now(), now() + $4::bigint * interval '1 millisecond')
                     ON CONFLICT (resource) DO UPDATE
                     SET owner = EXCLUDED.owner,
                         epoch = CASE WHEN l.owner = EXCLUDED.owner AND l.expires_at > now()
                                      THEN l.epoch ELSE l.epoch + 1 END,
                         acquired_at = CASE WHEN l.owner = EXCLUDED.owner AND l.expires_at > now()
                                            THEN l.acquired_at ELSE now() END,
                         expires_at = EXCLUDED.expires_at
                     WHERE l.owner IS NULL OR l.expires_at <= now() OR l.owner = EXCLUDED.owner
                     RETURNING epoch",
                    &[&key, &kind, &instance_id, &ttl],
                )
                .await?;
            tx.commit().await?;
            Ok(row.map(|row| row.get(0)))
        })
        .await
    }

    /// Extends every lease `instance_id` still holds by `ttl`, and returns
    /// them. A lease that expired is not renewed: it is lost, even if nobody
    /// took it yet, and must be acquired again (under a new epoch).
    pub async fn renew_leases(
        &self,
        instance_id: &str,
        ttl: Duration,
    ) -> Result<Vec<(Resource, i64)>, StorageError> {
        let instance_id = instance_id.to_owned();
        let ttl = ttl_ms(ttl);
        self.run_leases(move |pool| async move {
            let client = pool.get().await?;
            let rows = client
                .query(
                    "UPDATE cluster_leases
                     SET expires_at = now() + $2::bigint * interval '1 millisecond'
                     WHERE owner = $1 AND expires_at > now()
                     RETURNING resource, epoch",
                    &[&instance_id, &ttl],
                )
                .await?;
            let mut held = rows
                .iter()
                .map(|row| Ok((parse_resource(row.get(0))?, row.get(1))))
                .collect::<Result<Vec<_>, StorageError>>()?;
            held.sort();
            Ok(held)
        })
        .await
    }

    /// Gives `resource` back at once; false if `instance_id` did not hold it.
    pub async fn release_lease(
        &self,
        instance_id: &str,
        resource: &Resource,
    ) -> Result<bool, StorageError> {
        let instance_id = instance_id.to_owned();
        let key = resource.to_string();
        self.run_leases(move |pool| async move {
            let client = pool.get().await?;
            let released = client
                .execute(
                    "UPDATE cluster_leases SET owner = NULL, expires_at = now()
                     WHERE resource = $1 AND owner = $2",
                    &[&key, &instance_id],
                )
                .await?;
            Ok(released == 1)
        })
        .await
    }

    /// Whether a write under `fence` would commit right now.
    pub async fn check_fence(&self, fence: &Fence) -> Result<(), StorageError> {
        let fence = fence.clone();
        self.run(move |pool| async move {
            let mut client = pool.get().await?;
            let tx = client.transaction().await?;
            hold(&tx, &fence).await?;
            tx.commit().await?;
            Ok(())
        })
        .await
    }
}

/// Makes the transaction `tx` depend on `fence`: it fails with
/// [`StorageError::LeaseLost`] unless the lease is still the fence's owner's,
/// at the fence's epoch and unexpired; and the row stays share-locked until
/// `tx` ends, so no takeover can commit in between. The lock is KEY SHARE:
/// renewals (plain updates) pass it, so writes waiting on a busy row never
/// hold up the renewal of the lease they depend on; a takeover's
/// `FOR UPDATE` waits for it.
pub async fn hold(tx: &impl GenericClient, fence: &Fence) -> Result<(), StorageError> {
    let held = tx
        .query_opt(
            "SELECT 1 FROM cluster_leases
             WHERE resource = $1 AND owner = $2 AND epoch = $3 AND expires_at > now()
             FOR KEY SHARE",
            &[
                &fence.resource.to_string(),
                &fence.instance_id,
                &fence.epoch,
            ],
        )
        .await?;
    match held {
        Some(_) => Ok(()),
        None => Err(StorageError::LeaseLost {
            resource: fence.resource.to_string(),
            epoch: fence.epoch,
        }),
    }
}

async fn list_instances(client: &impl GenericClient) -> Result<Vec<InstanceView>, StorageError> {
    let rows = client
        .query(
            &format!(
                "SELECT instance_id, {}, expires_at > now() FROM cluster_instances
                 ORDER BY instance_id",
                ms_of("last_seen")
            ),
            &[],
        )
        .await?;
    Ok(rows
        .iter()
        .map(|row| InstanceView {
            instance_id: row.get(0),
            last_seen_ms: row.get(1),
            live: row.get(2),
        })
        .collect())
}

fn lease_row(row: &Row) -> Result<LeaseRow, StorageError> {
    Ok(LeaseRow {
        resource: parse_resource(row.get(0))?,
        owner: row.get(1),
        epoch: row.get(2),
        expires_at_ms: row.get(3),
        live: row.get(4),
    })
}

fn parse_resource(text: &str) -> Result<Resource, StorageError> {
    Resource::parse(text)
        .ok_or_else(|| StorageError::Encoding(format!("unknown lease resource {text:?}")))
}
