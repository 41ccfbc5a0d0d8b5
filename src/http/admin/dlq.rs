//! The dead-letter queue: listing, and an operator's replay of one entry
//! through the normal path (e.g. once the order it was missing exists).

use std::sync::Arc;

use actix_web::http::StatusCode;
use actix_web::{web, HttpRequest, HttpResponse};
use serde_json::json;

use super::{next_cursor, page_limit, Page};
use crate::actors::dispatcher::{PaymentRouter, Routed};
use crate::http::auth::{Operator, Viewer};
use crate::http::error::ApiError;
use crate::http::tracking::{apply_update, parse_update_key, Applied};
use crate::http::{rfc3339, AppState};
use crate::storage::{DeadLetterView, InboxEntry, ReplayableLetter};

pub(crate) async fn list(
    _: Viewer,
    state: web::Data<AppState>,
    page: web::Query<Page>,
) -> Result<HttpResponse, ApiError> {
    let limit = page_limit(page.limit);
    let letters = state
        .storage
        .dead_letters(page.after, limit)
        .await
        .map_err(ApiError::storage_unavailable)?;
    let next = next_cursor(&letters, limit, |l| l.letter.id);
    let entries: Vec<_> = letters.iter().map(letter_json).collect();
    Ok(HttpResponse::Ok().json(json!({"entries": entries, "next": next})))
}

fn letter_json(view: &DeadLetterView) -> serde_json::Value {
    let letter = &view.letter;
    json!({
        "id": letter.id,
        "source": letter.source,
        "reason": letter.reason,
        "detail": letter.detail,
        "event_id": letter.event_id,
        "received_at": rfc3339(letter.received_at_ms),
        "replays": view.replays,
        "last_replay_at": view.last_replay_at_ms.map(rfc3339),
        "last_replay_outcome": view.last_replay_outcome,
    })
}

/// What a replay did, as recorded on the letter.
struct ReplayOutcome {
    outcome: String,
    resolved: bool,
}

impl ReplayOutcome {
    fn resolved(outcome: impl Into<String>) -> Self {
        Self {
            outcome: outcome.into(),
            resolved: true,
        }
    }

    fn still_open(outcome: impl Into<String>) -> Self {
        Self {
            outcome: outcome.into(),
            resolved: false,
        }
    }
}

pub(crate) async fn replay(
    _: Operator,
    req: HttpRequest,
    state: web::Data<AppState>,
    path: web::Path<i64>,
) -> Result<HttpResponse, ApiError> {
    let id = path.into_inner();
    let found = state
        .storage
        .dead_letter_for_replay(id)
        .await
        .map_err(ApiError::storage_unavailable)?
        .ok_or_else(|| {
            ApiError::new(
                StatusCode::NOT_FOUND,
                "not_found",
                format!("no dead letter {id}"),
            )
        })?;
    if found.resolved {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            "already_resolved",
            format!("dead letter {id} was resolved already"),
        ));
    }
    let result = if found.letter.source.replays_payment_event() {
        replay_payment(&state, id, found).await?
    } else {
        replay_tracking(&state, id, &found).await?
    };
    state
        .storage
        .record_replay(
            id,
            result.outcome.clone(),
            result.resolved,
            state.clock.now_ms(),
            super::audit::audited_action(&req),
        )
        .await
        .map_err(ApiError::storage_unavailable)?;
    Ok(HttpResponse::Ok().json(json!({
        "id": id,
        "outcome": result.outcome,
        "resolved": result.resolved,
    })))
}

/// A Razorpay event: the inbox entry the letter was filed for, or the body the
/// letter kept (an event quarantined before it reached the inbox).
async fn replay_payment(
    state: &AppState,
    id: i64,
    found: ReplayableLetter,
) -> Result<ReplayOutcome, ApiError> {
    let letter = found.letter;
    let entry = match (found.inbox, found.body) {
        (Some(entry), _) => entry,
        (None, Some(body)) => InboxEntry {
            id: 0,
            dedup_key: letter
                .event_id
                .clone()
                .unwrap_or_else(|| format!("dlq:{id}")),
            event: String::new(),
            razorpay_order_id: None,
            event_created_at: 0,
            received_at_ms: letter.received_at_ms,
            body,
            order_id: None,
        },
        (None, None) => {
            return Err(ApiError::new(
                StatusCode::CONFLICT,
                "not_replayable",
                format!("dead letter {id} kept no event to replay"),
            ))
        }
    };
    let router = PaymentRouter {
        storage: state.storage.clone(),
        registry: state.orders.clone(),
        clock: Arc::clone(&state.clock),
    };
    let routed = router
        .route(&entry, Some(id))
        .await
        .map_err(ApiError::storage_unavailable)?;
    Ok(match routed {
        Routed::Applied => ReplayOutcome::resolved("applied"),
        Routed::NoEffect => ReplayOutcome::resolved("no_effect"),
        Routed::Unknown(detail) => ReplayOutcome::still_open(format!("unknown_order: {detail}")),
        Routed::Refused(reason) => ReplayOutcome::still_open(reason),
        Routed::Deferred => ReplayOutcome::still_open("deferred: processing is paused"),
    })
}

/// A tracking update: its key is `awb:status_id:timestamp`.
async fn replay_tracking(
    state: &AppState,
    id: i64,
    found: &ReplayableLetter,
) -> Result<ReplayOutcome, ApiError> {
    let parsed = found.letter.event_id.as_deref().and_then(parse_update_key);
    let Some((awb, status_id, timestamp)) = parsed else {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            "not_replayable",
            format!("dead letter {id} has no tracking key to replay"),
        ));
    };
    let order_id = state
        .storage
        .order_id_for_awb(&awb)
        .await
        .map_err(ApiError::storage_unavailable)?;
    let Some(order_id) = order_id else {
        return Ok(ReplayOutcome::still_open(format!(
            "unknown_shipment: still no order for AWB {awb}"
        )));
    };
    let cause = format!("replay:{id}:tracking:{awb}:{status_id}");
    Ok(
        match apply_update(state, &order_id, awb, status_id, timestamp, cause).await? {
            Applied::Yes => ReplayOutcome::resolved("applied"),
            Applied::Deferred => ReplayOutcome::still_open("deferred: processing is paused"),
            Applied::Ignored(why) => ReplayOutcome::resolved(format!("ignored: {why}")),
        },
    )
}
