//! `OrderLink`: the way to an order's actor, wherever in the cluster it runs.
//!
//! On one instance (SQLite) every order's actor is local and the link is the
//! registry. With several instances (SPEC §13) only the owner of an order's
//! partition runs its actor; any instance may take the request. A message for
//! an order owned elsewhere becomes a command row in the shared database
//! ([`crate::storage::postgres`]): the owner's [`CommandServer`] runs it
//! through its own registry and writes the reply into the row, under its
//! partition lease; the requester takes the reply and answers as on one node.
//! `NOTIFY` wakes both ends; polling is the guarantee. While a partition is
//! between owners its commands simply wait in the table for the next one.

mod wire;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use actix::{Addr, MailboxError};
use tokio::sync::{broadcast, oneshot};

use self::wire::{WireAnswer, WireMsg};
use super::order::{OrderError, OrderMsg, OrderReply};
use super::registry::{OrderRegistry, Route};
use crate::domain::cluster::Resource;
use crate::storage::postgres::{Notice, Ownership, PgStore, WaitingCommand};
use crate::storage::StorageError;

/// How long a requester waits for the owner's reply. Longer than a
/// takeover (a lease's TTL and a few rounds), so a command sent to an owner
/// that dies is run by the next one while the request is still open.
const REPLY_TIMEOUT: Duration = Duration::from_secs(30);
/// How often each end looks without a notification.
const POLL_EVERY: Duration = Duration::from_millis(200);
/// Commands read per look.
const BATCH: u32 = 256;

/// What a send answers: the actor's reply, or why the message did not arrive.
pub type Delivery = Result<Result<OrderReply, OrderError>, MailboxError>;

#[derive(Clone)]
pub struct OrderLink {
    local: Addr<OrderRegistry>,
    cluster: Option<Arc<Remote>>,
}

struct Remote {
    store: PgStore,
    ownership: Arc<Ownership>,
    /// Commands sent and not yet answered, by id.
    waiting: Mutex<HashMap<i64, oneshot::Sender<Vec<u8>>>>,
}

impl OrderLink {
    /// Every order's actor is in `registry`.
    pub fn local(registry: Addr<OrderRegistry>) -> Self {
        Self {
            local: registry,
            cluster: None,
        }
    }

    /// Orders of the partitions `ownership` holds are in `registry`; the
    /// others are reached through `store`. Starts the reply collector on
    /// the current (actix) runtime.
    pub fn clustered(
        registry: Addr<OrderRegistry>,
        store: PgStore,
        ownership: Arc<Ownership>,
    ) -> Self {
        let remote = Arc::new(Remote {
            store,
            ownership,
            waiting: Mutex::new(HashMap::new()),
        });
        actix::spawn(collect_replies(Arc::clone(&remote)));
        Self {
            local: registry,
            cluster: Some(remote),
        }
    }

    /// The local registry (its mailbox is what the health check pings).
    pub fn registry(&self) -> &Addr<OrderRegistry> {
        &self.local
    }

    /// Delivers `route` to its order's actor and waits for the reply.
    pub async fn send(&self, route: Route) -> Delivery {
        match &self.cluster {
            Some(remote) if !remote.ownership.owns_order(&route.order_id) => {
                Ok(remote.send(route).await)
            }
            _ => self.local.send(route).await,
        }
    }
}

impl Remote {
    async fn send(&self, route: Route) -> Result<OrderReply, OrderError> {
        let Some(wire) = WireMsg::from_msg(&route.msg) else {
            // Repairs are sent by an owner to its own orders only.
            return Err(OrderError::Storage(StorageError::LeaseLost {
                resource: self.ownership.partition_of(&route.order_id).to_string(),
                epoch: 0,
            }));
        };
        let audit = match &route.msg {
            OrderMsg::Command { cause, .. } => cause.audit.clone(),
            _ => None,
        };
        let message =
            serde_json::to_vec(&wire).map_err(|e| StorageError::Encoding(e.to_string()))?;
        let Resource::OrderPartition(partition) = self.ownership.partition_of(&route.order_id)
        else {
            return Err(OrderError::NotFound);
        };
        let (tx, rx) = oneshot::channel();
        let id = self
            .store
            .submit_command(partition, &route.order_id, &message)
            .await?;
        self.lock().insert(id, tx);
        let bytes = match tokio::time::timeout(REPLY_TIMEOUT, rx).await {
            Ok(Ok(bytes)) => bytes,
            _ => {
                self.lock().remove(&id);
                // Withdrawn before anyone answered: nothing ran, or what runs
                // now cannot tell anyone; the caller's 503 invites a retry
                // that the order's own rules make safe.
                if !self.store.withdraw_command(id).await.unwrap_or(true) {
                    if let Some((_, bytes)) =
                        self.store.take_replies(&[id]).await?.into_iter().next()
                    {
                        return self.decode(&bytes, audit.as_ref());
                    }
                }
                return Err(OrderError::Storage(StorageError::InDoubt(REPLY_TIMEOUT)));
            }
        };
        self.decode(&bytes, audit.as_ref())
    }

    fn decode(
        &self,
        bytes: &[u8],
        audit: Option<&crate::storage::AuditedAction>,
    ) -> Result<OrderReply, OrderError> {
        let answer: WireAnswer = serde_json::from_slice(bytes)
            .map_err(|e| StorageError::Encoding(format!("a cluster reply: {e}")))?;
        if answer.audit_committed() {
            if let Some(audit) = audit {
                audit.committed();
            }
        }
        answer.into_reply()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<i64, oneshot::Sender<Vec<u8>>>> {
        self.waiting
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

/// Hands each reply that arrives to the request waiting for it.
async fn collect_replies(remote: Arc<Remote>) {
    let mut notices = remote.store.notices();
    loop {
        wait_for(&mut notices, POLL_EVERY, |notice| {
            matches!(notice, Notice::Reply { .. } | Notice::Resync)
        })
        .await;
        let ids: Vec<i64> = remote.lock().keys().copied().collect();
        if ids.is_empty() {
            continue;
        }
        match remote.store.take_replies(&ids).await {
            Ok(replies) => {
                let mut waiting = remote.lock();
                for (id, bytes) in replies {
                    if let Some(tx) = waiting.remove(&id) {
                        let _ = tx.send(bytes);
                    }
                }
            }
            Err(e) => tracing::warn!(error = %e, "cannot read cluster replies; retrying"),
        }
    }
}

/// Waits until a notice `wanted` accepts arrives or `every` passes, then
/// swallows the notices already queued (one look serves them all).
async fn wait_for(
    notices: &mut broadcast::Receiver<Notice>,
    every: Duration,
    wanted: impl Fn(&Notice) -> bool,
) {
    let _ = tokio::time::timeout(every, async {
        loop {
            match notices.recv().await {
                Ok(notice) if wanted(&notice) => return,
                Ok(_) => {}
                Err(broadcast::error::RecvError::Lagged(_)) => return,
                // The store is gone; the timeout paces the caller.
                Err(broadcast::error::RecvError::Closed) => std::future::pending().await,
            }
        }
    })
    .await;
    while !matches!(
        notices.try_recv(),
        Err(broadcast::error::TryRecvError::Empty | broadcast::error::TryRecvError::Closed)
    ) {}
}

/// Runs the commands other instances left for this instance's partitions.
pub struct CommandServer {
    pub store: PgStore,
    pub ownership: Arc<Ownership>,
    pub registry: Addr<OrderRegistry>,
}

impl CommandServer {
    /// Runs until the system stops. Commands of one order run one after the
    /// other, in the order they were left; different orders in parallel.
    pub async fn run(self) {
        let this = Arc::new(self);
        let running: Arc<Mutex<HashSet<i64>>> = Arc::default();
        let mut notices = this.store.notices();
        loop {
            let partitions = this.ownership.partitions();
            if !partitions.is_empty() {
                match this.store.waiting_commands(&partitions, BATCH).await {
                    Ok(commands) => this.start(commands, &running),
                    Err(e) => tracing::warn!(error = %e, "cannot read cluster commands; retrying"),
                }
            }
            let ownership = Arc::clone(&this.ownership);
            wait_for(&mut notices, POLL_EVERY, move |notice| match notice {
                Notice::Command { partition } => {
                    ownership.holds(&Resource::OrderPartition(*partition))
                }
                Notice::Resync => true,
                Notice::Reply { .. } | Notice::LeasesFreed => false,
            })
            .await;
        }
    }

    fn start(self: &Arc<Self>, commands: Vec<WaitingCommand>, running: &Arc<Mutex<HashSet<i64>>>) {
        let mut by_order: BTreeMap<String, Vec<WaitingCommand>> = BTreeMap::new();
        {
            let mut running = running.lock().unwrap_or_else(|p| p.into_inner());
            for command in commands {
                if running.insert(command.id) {
                    by_order
                        .entry(command.order_id.clone())
                        .or_default()
                        .push(command);
                }
            }
        }
        for (_, chain) in by_order {
            let (this, running) = (Arc::clone(self), Arc::clone(running));
            actix::spawn(async move {
                for command in chain {
                    let id = command.id;
                    this.serve(command).await;
                    running
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .remove(&id);
                }
            });
        }
    }

    async fn serve(&self, command: WaitingCommand) {
        let WaitingCommand {
            id,
            order_id,
            message,
        } = command;
        let Some(fence) = self.ownership.order_fence(&order_id) else {
            return; // Moved on: the next owner runs it.
        };
        let (reply, committed) = match serde_json::from_slice::<WireMsg>(&message) {
            Ok(wire) => {
                let (msg, committed) = wire.into_msg();
                let delivered = self
                    .registry
                    .send(Route {
                        order_id: order_id.clone(),
                        msg,
                    })
                    .await;
                let reply = delivered.unwrap_or_else(|e| Err(OrderError::Mailbox(e)));
                (reply, committed.load(Ordering::SeqCst))
            }
            Err(e) => (
                Err(OrderError::Storage(StorageError::Encoding(format!(
                    "a cluster command this build cannot read: {e}"
                )))),
                false,
            ),
        };
        if matches!(
            &reply,
            Err(OrderError::Storage(StorageError::LeaseLost { .. }))
        ) {
            return; // Lost the partition meanwhile: the next owner runs it.
        }
        let answer = WireAnswer::new(&reply, committed);
        let bytes = match serde_json::to_vec(&answer) {
            Ok(bytes) => bytes,
            Err(e) => {
                tracing::error!(command = id, error = %e, "cannot encode a cluster reply");
                return;
            }
        };
        if let Err(e) = self.store.answer_command(id, &bytes, fence).await {
            tracing::warn!(command = id, order_id = %order_id, error = %e, "cluster reply not written; the command runs again");
        }
    }
}
