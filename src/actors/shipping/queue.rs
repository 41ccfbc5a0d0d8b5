//! The shipping queue as the gateways see it (SPEC §8 "The shipping queue").
//!
//! The queue itself is rows in storage, written with each order's snapshot
//! (`domain::shipping::queue`); a queued order is a row, not a live actor or
//! task, so memory does not grow with the backlog. This handle adds what only
//! a running daemon needs:
//!
//! - which orders a gateway is working on right now (a claim), so that one
//!   order makes one call at a time whichever gateways see its rows;
//! - a wake-up for gateways when an order's work becomes due, so they need
//!   not poll fast;
//! - where each gateway may take work from: its own rows, the rows any account
//!   may take, and the rows in doubt on accounts that have been unusable for
//!   `shipping.failover_after_secs`.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};

use tokio::sync::watch;

use super::router::ShippingRouter;
use crate::domain::clock::SharedClock;
use crate::domain::shipping::Conditions;
use crate::storage::{QueueBacklog, QueueSource, QueuedOrder, Storage, StorageError};

#[derive(Clone)]
pub struct ShippingQueue {
    inner: Arc<Inner>,
}

struct Inner {
    storage: Storage,
    router: ShippingRouter,
    clock: SharedClock,
    failover_after_ms: i64,
    claimed: Mutex<HashSet<String>>,
    wake: watch::Sender<u64>,
}

impl ShippingQueue {
    pub fn new(
        storage: Storage,
        router: ShippingRouter,
        clock: SharedClock,
        failover_after_ms: i64,
    ) -> Self {
        Self {
            inner: Arc::new(Inner {
                storage,
                router,
                clock,
                failover_after_ms,
                claimed: Mutex::new(HashSet::new()),
                wake: watch::channel(0).0,
            }),
        }
    }

    /// Tells every gateway that work may be due.
    pub fn wake(&self) {
        self.inner.wake.send_modify(|n| *n = n.wrapping_add(1));
    }

    /// Wake-ups, for a gateway to listen to.
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.inner.wake.subscribe()
    }

    /// Up to `limit` orders with work due for `account` now, oldest paid
    /// first, none of them claimed.
    pub async fn due_for(
        &self,
        account: &str,
        limit: u32,
    ) -> Result<Vec<QueuedOrder>, StorageError> {
        let inner = &self.inner;
        let mut sources = vec![
            QueueSource {
                account: Some(account.to_owned()),
                failover_only: false,
            },
            QueueSource {
                account: None,
                failover_only: false,
            },
        ];
        sources.extend(
            inner
                .router
                .failover_sources(account, inner.failover_after_ms)
                .into_iter()
                .map(|from| QueueSource {
                    account: Some(from),
                    failover_only: true,
                }),
        );
        let claimed = self.claimed_count() as u32;
        let due = inner
            .storage
            .shipping_due(sources, inner.clock.now_ms(), limit + claimed)
            .await?;
        let claimed = inner.claimed.lock().map(|c| c.clone()).unwrap_or_default();
        Ok(due
            .into_iter()
            .filter(|q| !claimed.contains(&q.order_id))
            .take(limit as usize)
            .collect())
    }

    /// Takes `order_id` for one gateway; false if another has it.
    pub fn claim(&self, order_id: &str) -> bool {
        self.inner
            .claimed
            .lock()
            .map(|mut c| c.insert(order_id.to_owned()))
            .unwrap_or(false)
    }

    pub fn release(&self, order_id: &str) {
        if let Ok(mut claimed) = self.inner.claimed.lock() {
            claimed.remove(order_id);
        }
    }

    pub fn claimed_count(&self) -> usize {
        self.inner.claimed.lock().map(|c| c.len()).unwrap_or(0)
    }

    /// The backlog per account, for the status page and metrics.
    pub async fn backlog(&self) -> Result<Vec<QueueBacklog>, StorageError> {
        self.inner.storage.shipping_backlog().await
    }

    pub fn router(&self) -> &ShippingRouter {
        &self.inner.router
    }
}

/// What an order planning its next call knows of the accounts.
impl Conditions for ShippingQueue {
    fn unusable_since_ms(&self, account: &str) -> Option<i64> {
        self.inner.router.unusable_since_ms(account)
    }
}
