//! A stock step as both backends write it: the step with the audit record
//! that commits beside it. Built on the caller's side, before any backend
//! runs it, so SQLite and PostgreSQL audit exactly the same entry.

use crate::domain::stock::AllocationStep;
use crate::storage::{AuditRecord, StockStep};

/// A stock step ready for a backend: the step and its audit record.
#[derive(Debug, Clone)]
pub(in crate::storage) struct EncodedStep {
    pub(in crate::storage) step: StockStep,
    pub(in crate::storage) audit: AuditRecord,
}

impl EncodedStep {
    /// Every stock change is a financial event, audited in the same commit;
    /// its record is built on the caller's thread, not the writer's.
    pub(in crate::storage) fn new(step: StockStep) -> Self {
        let (actor, order_id) = match &step.allocation {
            AllocationStep::None => ("operator", None),
            AllocationStep::Create { order_id, .. } | AllocationStep::Move { order_id, .. } => {
                ("system", Some(order_id.as_str()))
            }
        };
        let audit = AuditRecord::event(
            step.at_ms,
            actor,
            "stock.change",
            step.sku.clone(),
            serde_json::json!({
                "on_hand_delta": step.delta.on_hand,
                "reserved_delta": step.delta.reserved,
                "reason": step.reason,
                "order_id": order_id,
            })
            .to_string(),
        );
        Self { step, audit }
    }
}
