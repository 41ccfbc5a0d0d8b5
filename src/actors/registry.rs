//! `OrderRegistry`: finds or starts the actor of an order and forwards to it.
//!
//! It keeps at most `cap` actors alive. Over the cap it asks the least recently
//! used ones to passivate; each stops only after the messages already in its
//! mailbox are handled, and is forgotten when it reports that it stopped. A
//! message that reaches an actor which has just stopped is re-sent to a fresh
//! one, which loads the order from storage: no message is lost to passivation,
//! and an order never has two live actors.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use actix::prelude::*;

use super::order::{OrderActor, OrderDeps, OrderError, OrderMsg, OrderReply, Stopped};

/// Deliver a message to an order's actor.
#[derive(Message)]
#[rtype(result = "Result<OrderReply, OrderError>")]
pub struct Route {
    pub order_id: String,
    pub msg: OrderMsg,
}

/// How many order actors are alive.
#[derive(Message)]
#[rtype(result = "usize")]
pub struct LiveCount;

struct Entry {
    addr: Addr<OrderActor>,
    incarnation: u64,
    last_used: u64,
}

pub struct OrderRegistry {
    deps: Arc<OrderDeps>,
    cap: usize,
    live: HashMap<String, Entry>,
    next_incarnation: u64,
    clock: u64,
    /// Shared with the status page and metrics.
    live_gauge: Arc<AtomicU64>,
}

impl OrderRegistry {
    pub fn new(deps: Arc<OrderDeps>, cap: usize, live_gauge: Arc<AtomicU64>) -> Self {
        Self {
            deps,
            cap: cap.max(1),
            live: HashMap::new(),
            next_incarnation: 0,
            clock: 0,
            live_gauge,
        }
    }

    fn actor_for(&mut self, order_id: &str, ctx: &mut Context<Self>) -> Addr<OrderActor> {
        self.clock += 1;
        if let Some(entry) = self.live.get_mut(order_id) {
            if entry.addr.connected() {
                entry.last_used = self.clock;
                return entry.addr.clone();
            }
        }
        if self.live.len() >= self.cap {
            self.passivate_least_recent();
        }
        self.next_incarnation += 1;
        let addr = OrderActor::new(
            order_id.to_owned(),
            self.next_incarnation,
            Arc::clone(&self.deps),
            ctx.address().recipient(),
        )
        .start();
        self.live.insert(
            order_id.to_owned(),
            Entry {
                addr: addr.clone(),
                incarnation: self.next_incarnation,
                last_used: self.clock,
            },
        );
        self.live_gauge
            .store(self.live.len() as u64, Ordering::Relaxed);
        addr
    }

    /// Asks the least recently used tenth of the actors (at least one) to stop.
    fn passivate_least_recent(&mut self) {
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
            }
        }
        self.live_gauge
            .store(self.live.len() as u64, Ordering::Relaxed);
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
        let addr = self.actor_for(&route.order_id, ctx);
        let registry = ctx.address();
        Box::pin(async move {
            match addr.send(route.msg.clone()).await {
                // The actor stopped between lookup and delivery: a fresh one takes it.
                Err(MailboxError::Closed) => registry.send(route).await?,
                other => other?,
            }
        })
    }
}

impl Handler<Stopped> for OrderRegistry {
    type Result = ();

    fn handle(&mut self, stopped: Stopped, _: &mut Self::Context) {
        let current = self
            .live
            .get(&stopped.order_id)
            .is_some_and(|e| e.incarnation == stopped.incarnation);
        if current {
            self.live.remove(&stopped.order_id);
            self.live_gauge
                .store(self.live.len() as u64, Ordering::Relaxed);
        }
    }
}

impl Handler<LiveCount> for OrderRegistry {
    type Result = usize;

    fn handle(&mut self, _: LiveCount, _: &mut Self::Context) -> usize {
        self.live.len()
    }
}
