//! Running as one of several instances on PostgreSQL (SPEC §13): what this
//! instance starts and stops as its leases come and go.
//!
//! The membership rounds ([`crate::actors::cluster`]) keep the lease map; this
//! module turns their reports into work. A gained order partition gets its
//! interrupted stock steps finished and its paid orders queued, and the
//! dispatcher looks again; a lost one has its order actors retired. A gained
//! account starts the account's gateway, a lost one stops it. The leader also
//! clears command rows whose requester died waiting. A graceful stop hands
//! every lease over at once.

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;
use std::time::Duration;

use actix::{Actor, Addr};
use tokio::sync::{mpsc, oneshot, Notify};

use crate::actors::cluster::{self, ClusterMember, RoundReport, Scope};
use crate::actors::registry::{OrderRegistry, Retire};
use crate::actors::shipping::{
    GatewaySettings, GatewayStats, RetireGateway, ShiprocketGateway, Work,
};
use crate::actors::switch::ProcessingSwitch;
use crate::clients::shiprocket::ShiprocketClient;
use crate::domain::clock::SharedClock;
use crate::domain::cluster::Resource;
use crate::storage::postgres::Ownership;
use crate::storage::Storage;
use crate::telemetry::Metrics;

/// Command rows older than this belong to requests long answered with a 503.
const COMMANDS_KEPT_FOR: Duration = Duration::from_secs(3600);
const COMMAND_SWEEP_EVERY: Duration = Duration::from_secs(60);

/// What it takes to start one account's gateway, whenever its lease comes.
pub(super) struct AccountGateway {
    pub settings: GatewaySettings,
    pub client: ShiprocketClient,
    pub stats: Arc<GatewayStats>,
}

/// The pieces the duties act on.
pub(super) struct Duties {
    pub ownership: Arc<Ownership>,
    pub storage: Storage,
    pub registry: Addr<OrderRegistry>,
    pub accounts: Vec<AccountGateway>,
    pub work: Work,
    pub clock: SharedClock,
    pub metrics: Arc<Metrics>,
    pub switch: ProcessingSwitch,
    /// The dispatcher's wake-up: a gained partition may have entries waiting.
    pub dispatcher: Arc<Notify>,
    /// Shiprocket is configured: paid orders found on a gained partition go to shipping.
    pub ship_paid_orders: bool,
}

/// The running membership; [`Membership::leave`] hands the leases over.
pub(super) struct Membership {
    stop: Option<oneshot::Sender<()>>,
    done: Option<oneshot::Receiver<()>>,
}

impl Membership {
    /// Takes this instance's first leases (so that it starts with work, and
    /// as leader if there is none), then keeps the membership going.
    pub async fn join(mut member: ClusterMember, duties: Duties) -> Self {
        let (reports, mut incoming) = mpsc::unbounded_channel::<RoundReport>();
        match member.round().await {
            Ok(first) => {
                let _ = reports.send(first);
            }
            Err(e) => tracing::warn!(error = %e, "first cluster round failed; retrying"),
        }
        let (stop, stopped) = oneshot::channel::<()>();
        let (finished, done) = oneshot::channel::<()>();
        actix::spawn(async move {
            let changed = move |report: &RoundReport| {
                let _ = reports.send(report.clone());
            };
            cluster::run(
                member,
                async {
                    let _ = stopped.await;
                },
                changed,
            )
            .await;
            let _ = finished.send(());
        });
        let scope = Scope::cluster(Arc::clone(&duties.ownership));
        let sweep_storage = duties.storage.clone();
        actix::spawn(async move {
            let mut tick = tokio::time::interval(COMMAND_SWEEP_EVERY);
            loop {
                tick.tick().await;
                if !scope.leads() {
                    continue;
                }
                if let Some(pg) = sweep_storage.postgres() {
                    match pg.forget_old_commands(COMMANDS_KEPT_FOR).await {
                        Ok(0) => {}
                        Ok(n) => tracing::info!(
                            commands = n,
                            "cleared cluster commands nobody waits for"
                        ),
                        Err(e) => tracing::warn!(error = %e, "cannot clear old cluster commands"),
                    }
                }
            }
        });
        actix::spawn(async move {
            let mut keeper = Keeper {
                duties,
                gateways: HashMap::new(),
            };
            while let Some(report) = incoming.recv().await {
                keeper.apply(report);
            }
            keeper.stop_gateways();
        });
        Self {
            stop: Some(stop),
            done: Some(done),
        }
    }

    /// Hands every lease over (a graceful stop), waiting at most `limit`.
    pub async fn leave(&mut self, limit: Duration) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(done) = self.done.take() {
            if tokio::time::timeout(limit, done).await.is_err() {
                tracing::warn!("leases not handed over in time; they expire by themselves");
            }
        }
    }
}

/// Applies round reports: the gateways running here, by account.
struct Keeper {
    duties: Duties,
    gateways: HashMap<String, Addr<ShiprocketGateway>>,
}

impl Keeper {
    fn apply(&mut self, report: RoundReport) {
        // Losses first: a lease lost and taken again in one round (it expired
        // while renewals were late) has a new epoch, and what ran under the
        // old one is stopped before the new one starts.
        let mut lost_partitions = BTreeSet::new();
        for resource in report.lost.iter().chain(&report.released) {
            match resource {
                Resource::OrderPartition(partition) => {
                    lost_partitions.insert(*partition);
                }
                Resource::Account(account) => {
                    if let Some(gateway) = self.gateways.remove(account) {
                        gateway.do_send(RetireGateway);
                    }
                }
                Resource::Leader => {}
            }
        }
        if !lost_partitions.is_empty() {
            let ownership = Arc::clone(&self.duties.ownership);
            self.duties
                .registry
                .do_send(Retire(Box::new(move |order_id| {
                    matches!(ownership.partition_of(order_id),
                        Resource::OrderPartition(p) if lost_partitions.contains(&p))
                })));
        }
        let mut gained = BTreeSet::new();
        for (resource, _) in &report.gained {
            match resource {
                Resource::OrderPartition(partition) => {
                    gained.insert(*partition);
                }
                Resource::Account(account) => self.start_gateway(account),
                Resource::Leader => tracing::info!("this instance leads the cluster-wide sweeps"),
            }
        }
        if !gained.is_empty() {
            self.duties.dispatcher.notify_one();
            self.duties.work.queue.wake();
            self.resume_partitions(gained);
        }
    }

    fn start_gateway(&mut self, account: &str) {
        if self.gateways.contains_key(account) {
            return;
        }
        let Some(found) = self
            .duties
            .accounts
            .iter()
            .find(|a| a.settings.account == account)
        else {
            return;
        };
        tracing::info!(
            account,
            "gateway started: this instance holds the account's lease"
        );
        let gateway = ShiprocketGateway::new(
            found.settings.clone(),
            found.client.clone(),
            self.duties.storage.clone(),
            Arc::clone(&self.duties.clock),
            Arc::clone(&self.duties.metrics),
            Arc::clone(&found.stats),
        )
        .with_work(self.duties.work.clone())
        .in_cluster(Arc::clone(&self.duties.ownership))
        .start();
        self.gateways.insert(account.to_owned(), gateway);
    }

    fn stop_gateways(&mut self) {
        for (_, gateway) in self.gateways.drain() {
            gateway.do_send(RetireGateway);
        }
    }

    /// Picks up what a gained partition's previous owner left unfinished.
    fn resume_partitions(&self, partitions: BTreeSet<u32>) {
        let ownership = Arc::clone(&self.duties.ownership);
        super::resume_unfinished(
            self.duties.storage.clone(),
            self.duties.registry.clone(),
            self.duties.switch.clone(),
            self.duties.ship_paid_orders,
            move |order_id| {
                matches!(ownership.partition_of(order_id),
                    Resource::OrderPartition(p) if partitions.contains(&p))
                    && ownership.owns_order(order_id)
            },
        );
    }
}
