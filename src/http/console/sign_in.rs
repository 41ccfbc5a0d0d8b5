//! Signing in (with the viewer or operator token, or a one-time link) and out.

use actix_web::cookie::{time::Duration as CookieAge, Cookie, SameSite};
use actix_web::http::header::LOCATION;
use actix_web::http::StatusCode;
use actix_web::{web, HttpRequest, HttpResponse};
use maud::html;
use serde::Deserialize;

use super::session::COOKIE;
use super::{checked, page, ConsoleError, Form, Signed};
use crate::http::auth::{caller_of, AdminTokens, Role};
use crate::http::AppState;
use crate::storage::AuditRecord;

#[derive(Deserialize)]
pub(super) struct Once {
    once: Option<String>,
}

/// The sign-in form; with `?once=`, a one-time link's sign-in.
pub(super) async fn form(
    req: HttpRequest,
    state: web::Data<AppState>,
    query: web::Query<Once>,
) -> HttpResponse {
    let Some(code) = query.once.as_deref() else {
        return sign_in_page(StatusCode::OK, None);
    };
    match state.console.redeem_link(code) {
        Some(role) => {
            // A GET, which the audit middleware passes by: recorded here.
            let caller = caller_of(&req, role);
            let record = AuditRecord {
                at_ms: state.clock.now_ms(),
                actor: page::role_name(role).to_owned(),
                action: "admin:GET /console/sign-in?once".into(),
                subject: None,
                detail: serde_json::json!({"status": 303, "one_time_link": true}).to_string(),
                peer: caller.peer,
                user_agent: caller.user_agent,
            };
            if let Err(e) = state.storage.append_audit(record).await {
                tracing::error!(error = %e, "console sign-in not recorded in the audit log");
            }
            signed_in(&req, &state, role)
        }
        None => sign_in_page(
            StatusCode::UNAUTHORIZED,
            Some("That sign-in link was used already or has expired. Sign in with a token."),
        ),
    }
}

pub(super) async fn submit(
    req: HttpRequest,
    state: web::Data<AppState>,
    tokens: web::Data<AdminTokens>,
    body: web::Bytes,
) -> HttpResponse {
    let form = Form::parse(&body);
    match form
        .get("token")
        .map(str::trim)
        .and_then(|t| tokens.role_of(t))
    {
        Some(role) => signed_in(&req, &state, role),
        None => sign_in_page(
            StatusCode::UNAUTHORIZED,
            Some("That is neither the viewer token nor the operator token."),
        ),
    }
}

/// Starts a session for `role` and sends the browser to the overview.
fn signed_in(req: &HttpRequest, state: &AppState, role: Role) -> HttpResponse {
    let id = match state.console.start(role) {
        Ok((id, _)) => id,
        Err(why) => {
            tracing::error!(error = %why, "no console session");
            return sign_in_page(
                StatusCode::SERVICE_UNAVAILABLE,
                Some(&format!("Cannot sign in now: {why}.")),
            );
        }
    };
    // Who signed in, for the audit log (the token itself is never recorded).
    caller_of(req, role);
    tracing::info!(role = ?role, peer = req.peer_addr().map(|a| a.to_string()).unwrap_or_default(), "console sign-in");
    let cookie = Cookie::build(COOKIE, id)
        .path("/console")
        .http_only(true)
        .same_site(SameSite::Strict)
        .secure(req.connection_info().scheme() == "https")
        .finish();
    HttpResponse::SeeOther()
        .cookie(cookie)
        .insert_header((LOCATION, "/console"))
        .finish()
}

pub(super) async fn sign_out(
    signed: Signed,
    state: web::Data<AppState>,
    body: web::Bytes,
) -> Result<HttpResponse, ConsoleError> {
    checked(&signed, &body)?;
    state.console.end(&signed.session_id);
    let gone = Cookie::build(COOKIE, "")
        .path("/console")
        .http_only(true)
        .same_site(SameSite::Strict)
        .max_age(CookieAge::ZERO)
        .finish();
    Ok(HttpResponse::SeeOther()
        .cookie(gone)
        .insert_header((LOCATION, "/console/sign-in"))
        .finish())
}

fn sign_in_page(status: StatusCode, problem: Option<&str>) -> HttpResponse {
    page::bare(
        status,
        "Sign in to the dropshipd console",
        html! {
            @if let Some(problem) = problem {
                p.flash.error role="alert" { (problem) }
            }
            form.sign-in method="post" action="/console/sign-in" {
                label for="token" { "Viewer or operator token" }
                input id="token" name="token" type="password" autocomplete="current-password" required autofocus;
                button type="submit" { "Sign in" }
            }
            p.hint { "The viewer token shows; the operator token also acts. The token is checked once and never stored in the browser." }
        },
    )
}
