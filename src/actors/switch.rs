//! The kill switch (SPEC §9 `POST /admin/processing/pause`): one type that
//! every stage which advances orders consults. It persists an operator's flip,
//! keeps `dropship_processing_paused` in step, and wakes whoever waits for
//! processing to resume (the dispatcher, the start-up sweep) through a
//! `watch`, so nobody polls it.
//!
//! While it is on, webhooks and checkouts are still accepted and stored; the
//! registry stores every command for an order as a deferred command instead
//! of delivering it, and the dispatcher, the timers and the gateways take no
//! new work. On resume the dispatcher runs the deferred commands first.

use std::sync::Arc;

use tokio::sync::watch;

use crate::storage::{AuditedAction, Storage, StorageError};
use crate::telemetry::Metrics;

#[derive(Clone)]
pub struct ProcessingSwitch {
    state: Arc<watch::Sender<bool>>,
    storage: Storage,
    metrics: Arc<Metrics>,
}

impl ProcessingSwitch {
    /// The switch at `paused` (an operator's persisted flip, else the config's).
    pub fn new(paused: bool, storage: Storage, metrics: Arc<Metrics>) -> Self {
        let switch = Self {
            state: Arc::new(watch::channel(paused).0),
            storage,
            metrics,
        };
        switch.publish(paused);
        switch
    }

    pub fn is_paused(&self) -> bool {
        *self.state.borrow()
    }

    /// An operator's flip: persisted (with the action's audit entry) before it
    /// takes effect.
    pub async fn set(
        &self,
        paused: bool,
        audit: Option<AuditedAction>,
    ) -> Result<(), StorageError> {
        self.storage.set_processing_paused(paused, audit).await?;
        self.apply(paused);
        Ok(())
    }

    /// Holds processing for the rest of this process's life (an orderly
    /// stop); the next start reads the operator's persisted switch.
    pub fn hold(&self) {
        self.apply(true);
    }

    /// Returns once processing is not paused.
    pub async fn resumed(&self) {
        let mut state = self.state.subscribe();
        let _ = state.wait_for(|paused| !paused).await;
    }

    /// Flips of the switch, for a loop to wake on.
    pub fn subscribe(&self) -> watch::Receiver<bool> {
        self.state.subscribe()
    }

    fn apply(&self, paused: bool) {
        self.state.send_replace(paused);
        self.publish(paused);
    }

    fn publish(&self, paused: bool) {
        self.metrics
            .processing_paused
            .set(if paused { 1.0 } else { 0.0 });
    }
}
