//! The admin side of the audit log: every admin action is recorded, with the
//! caller's role, peer address and user agent, by one middleware rather than
//! by each handler, so no new action can forget it. `GET /admin/audit` reads
//! the log back.

use actix_web::body::MessageBody;
use actix_web::dev::{Payload, ServiceRequest, ServiceResponse};
use actix_web::http::Method;
use actix_web::middleware::Next;
use actix_web::{web, HttpMessage, HttpResponse};
use serde_json::json;

use super::{next_cursor, page_limit, role_name, Page};
use crate::http::auth::{Caller, Operator};
use crate::http::error::ApiError;
use crate::http::{rfc3339, AppState};
use crate::storage::AuditRecord;

/// Request bodies larger than this are summarised by size, not recorded.
const MAX_RECORDED_BODY: usize = 16 * 1024;

/// Records every non-read request that authenticated (operators acting, and
/// viewers refused with 403) once its answer is known. Unauthenticated calls
/// are not recorded: they carry no identity, and recording them would let
/// anyone grow the log.
pub async fn record_admin_actions(
    mut req: ServiceRequest,
    next: Next<impl MessageBody>,
) -> Result<ServiceResponse<impl MessageBody>, actix_web::Error> {
    if matches!(*req.method(), Method::GET | Method::HEAD | Method::OPTIONS) {
        return next.call(req).await;
    }
    let body = req.extract::<web::Bytes>().await.unwrap_or_default();
    req.set_payload(Payload::from(body.clone()));
    let state = req.app_data::<web::Data<AppState>>().cloned();

    let response = next.call(req).await?;

    // Routing has happened now: the route's pattern and parameters are known.
    let request = response.request();
    let action = format!(
        "admin:{} {}",
        request.method(),
        request
            .match_pattern()
            .unwrap_or_else(|| request.path().to_owned())
    );
    let subject = request
        .match_info()
        .iter()
        .next()
        .map(|(_, value)| value.to_owned());
    let caller = request.extensions().get::<Caller>().cloned();
    if let (Some(caller), Some(state)) = (caller, state) {
        let request_body = if body.len() > MAX_RECORDED_BODY {
            json!({"bytes": body.len()})
        } else {
            serde_json::from_slice(&body).unwrap_or(serde_json::Value::Null)
        };
        let record = AuditRecord {
            at_ms: state.clock.now_ms(),
            actor: role_name(caller.role).to_owned(),
            action,
            subject,
            detail: json!({"status": response.status().as_u16(), "request": request_body})
                .to_string(),
            peer: caller.peer,
            user_agent: caller.user_agent,
        };
        if let Err(e) = state.storage.append_audit(record).await {
            // The action's own effect is committed; losing its audit entry is
            // an operations problem to shout about, not a reason to hide the answer.
            tracing::error!(error = %e, "admin action not recorded in the audit log");
        }
    }
    Ok(response)
}

/// `GET /admin/audit?after=&limit=`: oldest first; `after` takes `next`.
pub(super) async fn list(
    _: Operator,
    state: web::Data<AppState>,
    page: web::Query<Page>,
) -> Result<HttpResponse, ApiError> {
    let limit = page_limit(page.limit);
    let entries = state
        .storage
        .audit_entries(page.after.unwrap_or(0), limit)
        .await
        .map_err(ApiError::storage_unavailable)?;
    let next = next_cursor(&entries, limit, |e| e.seq);
    let entries: Vec<_> = entries
        .iter()
        .map(|e| {
            json!({
                "seq": e.seq,
                "at": rfc3339(e.at_ms),
                "actor": e.actor,
                "action": e.action,
                "subject": e.subject,
                "detail": serde_json::from_str::<serde_json::Value>(&e.detail)
                    .unwrap_or(serde_json::Value::Null),
                "peer": e.peer,
                "user_agent": e.user_agent,
                "prev_hash": e.prev_hash,
                "hash": e.hash,
            })
        })
        .collect();
    Ok(HttpResponse::Ok().json(json!({"entries": entries, "next": next})))
}
