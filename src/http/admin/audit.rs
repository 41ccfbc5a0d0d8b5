//! The admin side of the audit log: every admin action is recorded, with the
//! caller's role, peer address and user agent. A handler that changes
//! something takes its request's entry ([`audited_action`]) into the commit of
//! the change, so the two commit together (SPEC §10); one middleware records
//! every other request that authenticated (a refusal, a 403, a change that
//! failed) once its answer is known, so no new action can forget it.
//! `GET /admin/audit` reads the log back.

use actix_web::body::MessageBody;
use actix_web::dev::{Payload, ServiceRequest, ServiceResponse};
use actix_web::http::Method;
use actix_web::middleware::Next;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use actix_web::{web, HttpMessage, HttpRequest, HttpResponse};
use serde_json::json;

use super::{next_cursor, page_limit, role_name};
use crate::http::auth::{Caller, Operator};
use crate::http::error::ApiError;
use crate::http::{rfc3339, AppState};
use crate::storage::{AuditRecord, AuditedAction};

/// Request bodies larger than this are summarised by size, not recorded.
const MAX_RECORDED_BODY: usize = 16 * 1024;

/// What the middleware leaves on a request for its handler: the body as
/// received, and whether the handler committed the request's entry itself.
#[derive(Clone)]
struct Pending {
    body: web::Bytes,
    committed: Arc<AtomicBool>,
}

/// The audit entry of `request` answered `status`, if it authenticated.
fn entry_of(request: &HttpRequest, body: &[u8], status: u16) -> Option<AuditRecord> {
    let caller = request.extensions().get::<Caller>().cloned()?;
    let state = request.app_data::<web::Data<AppState>>()?;
    // Routing has happened: the route's pattern and parameters are known.
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
    let request_body = if body.len() > MAX_RECORDED_BODY {
        json!({"bytes": body.len()})
    } else {
        let is_form = request
            .headers()
            .get(actix_web::http::header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.starts_with("application/x-www-form-urlencoded"));
        match serde_json::from_slice(body) {
            Ok(json) => json,
            Err(_) if is_form => form_fields(body),
            Err(_) => serde_json::Value::Null,
        }
    };
    Some(AuditRecord {
        at_ms: state.clock.now_ms(),
        actor: role_name(caller.role).to_owned(),
        action,
        subject,
        detail: json!({"status": status, "request": request_body}).to_string(),
        peer: caller.peer,
        user_agent: caller.user_agent,
    })
}

/// A console form's fields as JSON (a field given more than once becomes a
/// list), without its CSRF token or a sign-in token; `null` for anything else.
fn form_fields(body: &[u8]) -> serde_json::Value {
    let mut fields = serde_json::Map::new();
    for (key, value) in form_urlencoded::parse(body) {
        if key == "csrf" || key == "token" {
            continue;
        }
        let value = serde_json::Value::String(value.into_owned());
        match fields.get_mut(key.as_ref()) {
            None => {
                fields.insert(key.into_owned(), value);
            }
            Some(serde_json::Value::Array(list)) => list.push(value),
            Some(first) => *first = json!([first.take(), value]),
        }
    }
    if fields.is_empty() {
        serde_json::Value::Null
    } else {
        serde_json::Value::Object(fields)
    }
}

/// The entry of the admin action `request` is carrying out, to commit with
/// its effect (as answered 200). `None` outside the middleware.
pub fn audited_action(request: &HttpRequest) -> Option<AuditedAction> {
    let pending = request.extensions().get::<Pending>().cloned()?;
    let record = entry_of(request, &pending.body, 200)?;
    Some(AuditedAction::new(record, pending.committed))
}

/// The answer an action had when its HTTP status says something else: the
/// console answers every action with a redirect to the page showing its
/// outcome, and the log records the API's verdict.
struct AnsweredAs(u16);

/// Records `status` as what `request`'s action was answered.
pub fn record_answer(request: &HttpRequest, status: actix_web::http::StatusCode) {
    request.extensions_mut().insert(AnsweredAs(status.as_u16()));
}

/// Records every non-read request that authenticated (operators acting, and
/// viewers refused with 403) once its answer is known, unless its handler
/// committed the entry with the action's effect. Unauthenticated calls are
/// not recorded: they carry no identity, and recording them would let anyone
/// grow the log.
pub async fn record_admin_actions(
    mut req: ServiceRequest,
    next: Next<impl MessageBody>,
) -> Result<ServiceResponse<impl MessageBody>, actix_web::Error> {
    if matches!(*req.method(), Method::GET | Method::HEAD | Method::OPTIONS) {
        return next.call(req).await;
    }
    let body = req.extract::<web::Bytes>().await.unwrap_or_default();
    req.set_payload(Payload::from(body.clone()));
    let committed = Arc::new(AtomicBool::new(false));
    req.extensions_mut().insert(Pending {
        body: body.clone(),
        committed: Arc::clone(&committed),
    });
    let state = req.app_data::<web::Data<AppState>>().cloned();

    let response = next.call(req).await?;

    if committed.load(Ordering::SeqCst) {
        return Ok(response);
    }
    let status = response
        .request()
        .extensions()
        .get::<AnsweredAs>()
        .map_or(response.status().as_u16(), |a| a.0);
    let record = entry_of(response.request(), &body, status);
    if let (Some(record), Some(state)) = (record, state) {
        if let Err(e) = state.storage.append_audit(record).await {
            // Nothing was changed by this request; losing its entry is an
            // operations problem to shout about, not a reason to hide the answer.
            tracing::error!(error = %e, "admin request not recorded in the audit log");
        }
    }
    Ok(response)
}

/// `?after=&limit=` (oldest first), or `?order=newest&before=&limit=`.
#[derive(serde::Deserialize)]
pub(crate) struct AuditPage {
    pub(crate) after: Option<i64>,
    pub(crate) before: Option<i64>,
    pub(crate) order: Option<String>,
    pub(crate) limit: Option<u32>,
}

/// `GET /admin/audit?after=&limit=`: oldest first; `after` takes `next`.
/// With `order=newest`, newest first and `before` takes `next`.
pub(crate) async fn list(
    _: Operator,
    state: web::Data<AppState>,
    page: web::Query<AuditPage>,
) -> Result<HttpResponse, ApiError> {
    let limit = page_limit(page.limit);
    let newest = match page.order.as_deref() {
        None | Some("") | Some("oldest") => false,
        Some("newest") => true,
        Some(other) => {
            return Err(ApiError::invalid(
                "order",
                format!("must be oldest or newest, got {other:?}"),
            ))
        }
    };
    let entries = if newest {
        state.storage.audit_entries_newest(page.before, limit).await
    } else {
        state
            .storage
            .audit_entries(page.after.unwrap_or(0), limit)
            .await
    }
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
