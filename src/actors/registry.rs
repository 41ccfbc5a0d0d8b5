//! `OrderRegistry`: finds or starts the actor of an order and forwards to it.
//!
//! At most `cap` order actors exist at any moment, counting those asked to stop
//! that have not stopped yet. Over the cap the registry asks the least recently
//! used tenth to passivate; each stops after the messages already in its
//! mailbox are handled. A message for an order without an actor waits in the
//! registry until one of those stops, so the cap holds strictly and nothing is
//! dropped. A message that reaches an actor which has just stopped on its own
//! (idle) is re-sent to a fresh one, which loads the order from storage: an
//! order never has two live actors.
//!
//! Actors run on arbiters of their own, one per core, taken in turn as actors
//! start, so the orders' work is not bound to the one thread that runs the
//! registry, the stock shards and the gateways.
//!
//! While the kill switch is on, a command for an order is not delivered: the
//! registry stores it as a deferred command (it runs on resume) and answers
//! [`OrderReply::Deferred`].

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use actix::prelude::*;
use tokio::sync::oneshot;

use super::order::{OrderActor, OrderDeps, OrderError, OrderMsg, OrderReply, Stopped};
use crate::storage::DeferredCommand;

/// Deliver a message to an order's actor.
#[derive(Message)]
#[rtype(result = "Result<OrderReply, OrderError>")]
pub struct Route {
    pub order_id: String,
    pub msg: OrderMsg,
}

type Reply = oneshot::Sender<Result<OrderReply, OrderError>>;

struct Entry {
    addr: Addr<OrderActor>,
    incarnation: u64,
    last_used: u64,
}

/// Live-actor figures the status page and metrics read.
#[derive(Debug, Default)]
pub struct RegistryStats {
    /// Order actors that exist now (running or stopping).
    pub live: AtomicU64,
    /// The most that ever existed at once.
    pub live_high_water: AtomicU64,
    pub started_total: AtomicU64,
    /// Messages taken and not yet answered: what a graceful stop waits for.
    pub in_flight: AtomicU64,
}

/// A round trip through the registry's mailbox, for the health check.
#[derive(Message)]
#[rtype(result = "()")]
pub struct Ping;

impl Handler<Ping> for OrderRegistry {
    type Result = ();

    fn handle(&mut self, _: Ping, _: &mut Self::Context) {}
}

/// Counts a message in flight until dropped, however its future ends.
struct InFlight(Arc<RegistryStats>);

impl InFlight {
    fn new(stats: &Arc<RegistryStats>) -> Self {
        stats.in_flight.fetch_add(1, Ordering::Relaxed);
        Self(Arc::clone(stats))
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::Relaxed);
    }
}

pub struct OrderRegistry {
    deps: Arc<OrderDeps>,
    /// Where order actors run, in turn; empty: on the registry's own arbiter.
    arbiters: Vec<ArbiterHandle>,
    cap: usize,
    live: HashMap<String, Entry>,
    /// Asked to passivate, not stopped yet: `(order id, incarnation)`.
    evicting: HashSet<(String, u64)>,
    /// Messages waiting for room under the cap.
    parked: VecDeque<(Route, Reply)>,
    next_incarnation: u64,
    clock: u64,
    stats: Arc<RegistryStats>,
}

impl OrderRegistry {
    pub fn new(deps: Arc<OrderDeps>, cap: usize, stats: Arc<RegistryStats>) -> Self {
        Self {
            deps,
            arbiters: Vec::new(),
            cap: cap.max(1),
            live: HashMap::new(),
            evicting: HashSet::new(),
            parked: VecDeque::new(),
            next_incarnation: 0,
            clock: 0,
            stats,
        }
    }

    /// Runs order actors on `arbiters`, spread in turn, instead of on the
    /// registry's arbiter: on a sale day the orders' work is most of what the
    /// actor system does, and one thread for all of it is a ceiling.
    pub fn with_arbiters(mut self, arbiters: Vec<ArbiterHandle>) -> Self {
        self.arbiters = arbiters;
        self
    }

    fn existing(&mut self, order_id: &str) -> Option<Addr<OrderActor>> {
        self.clock += 1;
        let entry = self.live.get_mut(order_id)?;
        if !entry.addr.connected() {
            // Stopped on its own (idle) and its `Stopped` is still on the way.
            self.live.remove(order_id);
            self.publish();
            return None;
        }
        entry.last_used = self.clock;
        Some(entry.addr.clone())
    }

    fn occupancy(&self) -> usize {
        self.live.len() + self.evicting.len()
    }

    fn publish(&self) {
        let live = self.occupancy() as u64;
        self.stats.live.store(live, Ordering::Relaxed);
        self.stats
            .live_high_water
            .fetch_max(live, Ordering::Relaxed);
    }

    fn start_actor(&mut self, order_id: &str, ctx: &mut Context<Self>) -> Addr<OrderActor> {
        self.next_incarnation += 1;
        let actor = OrderActor::new(
            order_id.to_owned(),
            self.next_incarnation,
            Arc::clone(&self.deps),
            ctx.address().recipient(),
        );
        let turn = (self.next_incarnation as usize).checked_rem(self.arbiters.len());
        let addr = match turn.and_then(|i| self.arbiters.get(i)) {
            Some(arbiter) => OrderActor::start_in_arbiter(arbiter, move |_| actor),
            None => actor.start(),
        };
        self.live.insert(
            order_id.to_owned(),
            Entry {
                addr: addr.clone(),
                incarnation: self.next_incarnation,
                last_used: self.clock,
            },
        );
        self.stats.started_total.fetch_add(1, Ordering::Relaxed);
        self.publish();
        addr
    }

    /// Asks the least recently used tenth of the actors (at least one) to stop.
    fn evict_least_recent(&mut self) {
        let mut by_age: Vec<(&String, u64)> =
            self.live.iter().map(|(id, e)| (id, e.last_used)).collect();
        by_age.sort_by_key(|(_, used)| *used);
        let count = (self.cap / 10).max(1);
        let victims: Vec<String> = by_age
            .into_iter()
            .take(count)
            .map(|(id, _)| id.clone())
            .collect();
        for id in victims {
            if let Some(entry) = self.live.remove(&id) {
                entry.addr.do_send(OrderMsg::Passivate);
                self.evicting.insert((id, entry.incarnation));
            }
        }
    }

    /// Delivers `route` now if its actor exists or there is room; else parks it.
    fn dispatch(&mut self, route: Route, reply: Reply, ctx: &mut Context<Self>) {
        let addr = match self.existing(&route.order_id) {
            Some(addr) => addr,
            None if self.occupancy() < self.cap => self.start_actor(&route.order_id, ctx),
            None => {
                if self.evicting.is_empty() {
                    self.evict_least_recent();
                }
                self.parked.push_back((route, reply));
                return;
            }
        };
        let registry = ctx.address();
        actix::spawn(async move {
            let result = match addr.send(route.msg.clone()).await {
                // The actor stopped between lookup and delivery: a fresh one takes it.
                Err(MailboxError::Closed) => {
                    registry.send(route).await.unwrap_or_else(|e| Err(e.into()))
                }
                other => other.unwrap_or_else(|e| Err(e.into())),
            };
            let _ = reply.send(result);
        });
    }

    fn unpark(&mut self, ctx: &mut Context<Self>) {
        while let Some((route, reply)) = self.parked.pop_front() {
            let fits = self.live.contains_key(&route.order_id) || self.occupancy() < self.cap;
            if !fits {
                self.parked.push_front((route, reply));
                if self.evicting.is_empty() {
                    self.evict_least_recent();
                }
                break;
            }
            self.dispatch(route, reply, ctx);
        }
    }
}

impl Actor for OrderRegistry {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        ctx.set_mailbox_capacity(65_536);
    }
}

impl Handler<Route> for OrderRegistry {
    type Result = ResponseFuture<Result<OrderReply, OrderError>>;

    fn handle(&mut self, route: Route, ctx: &mut Self::Context) -> Self::Result {
        let in_flight = InFlight::new(&self.stats);
        if let (true, OrderMsg::Command { command, cause }) =
            (self.deps.switch.is_paused(), &route.msg)
        {
            if cause.inbox_id.is_some() {
                // The inbox keeps it; the dispatcher delivers it on resume.
                drop(in_flight);
                return Box::pin(async { Err(OrderError::Paused) });
            }
            let deferred = DeferredCommand {
                id: 0,
                order_id: route.order_id.clone(),
                command: command.clone(),
                cause: cause.label.clone(),
                received_at_ms: self.deps.clock.now_ms(),
            };
            let storage = self.deps.storage.clone();
            return Box::pin(async move {
                let stored = storage.defer_command(deferred).await;
                drop(in_flight);
                stored
                    .map(|_| OrderReply::Deferred)
                    .map_err(OrderError::from)
            });
        }
        let (reply, answer) = oneshot::channel();
        if self.parked.is_empty() {
            self.dispatch(route, reply, ctx);
        } else {
            // Keep arrival order behind messages already waiting.
            self.parked.push_back((route, reply));
            self.unpark(ctx);
        }
        Box::pin(async move {
            let answer = answer
                .await
                .unwrap_or(Err(OrderError::Mailbox(MailboxError::Closed)));
            drop(in_flight);
            answer
        })
    }
}

impl Handler<Stopped> for OrderRegistry {
    type Result = ();

    fn handle(&mut self, stopped: Stopped, ctx: &mut Self::Context) {
        let key = (stopped.order_id, stopped.incarnation);
        if !self.evicting.remove(&key) {
            let current = self
                .live
                .get(&key.0)
                .is_some_and(|e| e.incarnation == key.1);
            if current {
                self.live.remove(&key.0);
            }
        }
        self.publish();
        self.unpark(ctx);
    }
}

/// Stops the actors of the orders `gone` picks: their partition moved to
/// another instance, whose actors load them afresh from storage. Each stops
/// after the messages already in its mailbox (whose writes the lost lease
/// refuses). Answers how many were asked to stop.
#[derive(Message)]
#[rtype(result = "usize")]
pub struct Retire(pub Box<dyn Fn(&str) -> bool + Send>);

impl Handler<Retire> for OrderRegistry {
    type Result = usize;

    fn handle(&mut self, Retire(gone): Retire, _: &mut Self::Context) -> usize {
        let leaving: Vec<String> = self.live.keys().filter(|id| gone(id)).cloned().collect();
        for id in &leaving {
            if let Some(entry) = self.live.remove(id) {
                entry.addr.do_send(OrderMsg::Passivate);
                self.evicting.insert((id.clone(), entry.incarnation));
            }
        }
        self.publish();
        leaving.len()
    }
}
