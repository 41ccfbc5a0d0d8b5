//! The operator's console (SPEC §9 "The console"): server-rendered pages on
//! the admin listener for the day of a sale and the day something breaks.
//!
//! It is a second face on the admin API, not a second implementation: each
//! page and each action calls the API's own handler with the signed-in
//! caller and renders the JSON it answers. Validation, refusals, the role an
//! action needs and its audit entry are therefore the API's by construction,
//! and an error the API would answer is the message the page shows.
//!
//! Every action is a plain form post (no script needed), answered with a
//! redirect to the page it came from, which shows the outcome once. A form
//! carries its session's CSRF token; the session cookie is `SameSite=Strict`.

mod orders;
mod overview;
mod page;
pub mod session;
mod sign_in;
mod tools;

use std::future::{ready, Ready};

use actix_web::body::MessageBody;
use actix_web::dev::Payload;
use actix_web::http::header::LOCATION;
use actix_web::http::StatusCode;
use actix_web::{web, FromRequest, HttpRequest, HttpResponse, ResponseError};
use maud::html;
use serde_json::Value;

use super::auth::{caller_of, Caller, Operator, Viewer};
use super::error::ApiError;
use super::AppState;
use session::{Flash, Session};

pub fn routes(cfg: &mut web::ServiceConfig) {
    cfg.service(
        web::scope("/console")
            .route("", web::get().to(overview::show))
            .route("/", web::get().to(overview::show))
            .route("/style.css", web::get().to(style))
            .route("/console.js", web::get().to(script))
            .route("/sign-in", web::get().to(sign_in::form))
            .route("/sign-in", web::post().to(sign_in::submit))
            .route("/sign-out", web::post().to(sign_in::sign_out))
            .route("/attention", web::get().to(orders::attention))
            .route(
                "/orders/retry-shipping",
                web::post().to(orders::retry_selected),
            )
            .route("/orders/{order_id}", web::get().to(orders::detail))
            .route(
                "/orders/{order_id}/retry-shipping",
                web::post().to(orders::retry_one),
            )
            .route(
                "/orders/{order_id}/mark-shipped",
                web::post().to(orders::mark_shipped),
            )
            .route("/orders/{order_id}/cancel", web::post().to(orders::cancel))
            .route("/dlq", web::get().to(tools::dead_letters))
            .route("/dlq/{id}/replay", web::post().to(tools::replay))
            .route("/stock", web::get().to(tools::stock))
            .route("/stock/{sku}/adjust", web::post().to(tools::adjust_stock))
            .route("/stock/{sku}/set", web::post().to(tools::set_stock))
            .route("/controls", web::get().to(tools::controls))
            .route("/processing/{change}", web::post().to(tools::processing))
            .route("/shipping-mode", web::post().to(tools::shipping_mode))
            .route("/audit", web::get().to(tools::audit)),
    );
}

async fn style() -> HttpResponse {
    HttpResponse::Ok()
        .content_type("text/css; charset=utf-8")
        .insert_header(("Cache-Control", "max-age=300"))
        .body(include_str!("style.css"))
}

async fn script() -> HttpResponse {
    HttpResponse::Ok()
        .content_type("text/javascript; charset=utf-8")
        .insert_header(("Cache-Control", "max-age=300"))
        .body(include_str!("console.js"))
}

/// A signed-in browser: its session and the caller it acts as, left on the
/// request for the audit log exactly as a bearer token's caller is.
pub(super) struct Signed {
    pub caller: Caller,
    pub session_id: String,
    pub session: Session,
    /// The last action's outcome, shown once.
    pub flash: Option<Flash>,
}

impl Signed {
    fn viewer(&self) -> Viewer {
        Viewer(self.caller.clone())
    }
}

impl FromRequest for Signed {
    type Error = ConsoleError;
    type Future = Ready<Result<Self, ConsoleError>>;

    fn from_request(req: &HttpRequest, _: &mut Payload) -> Self::Future {
        let signed = (|| {
            let state = req.app_data::<web::Data<AppState>>()?;
            let id = req.cookie(session::COOKIE)?.value().to_owned();
            let (session, flash) = state.console.resume(&id)?;
            Some(Signed {
                caller: caller_of(req, session.role),
                session_id: id,
                session,
                flash,
            })
        })();
        ready(signed.ok_or(ConsoleError::SignIn))
    }
}

/// Why a console request was not carried out.
#[derive(Debug, thiserror::Error)]
pub(super) enum ConsoleError {
    #[error("sign in first")]
    SignIn,
    #[error("this form did not come from your console session; reload the page and try again")]
    Csrf,
    /// What the API answered instead of a page (a 403 for a viewer, a 404).
    #[error("{}", .0.message)]
    Api(ApiError),
}

impl From<ApiError> for ConsoleError {
    fn from(error: ApiError) -> Self {
        ConsoleError::Api(error)
    }
}

impl ResponseError for ConsoleError {
    fn status_code(&self) -> StatusCode {
        match self {
            ConsoleError::SignIn => StatusCode::SEE_OTHER,
            ConsoleError::Csrf => StatusCode::FORBIDDEN,
            ConsoleError::Api(e) => e.status,
        }
    }

    fn error_response(&self) -> HttpResponse {
        if let ConsoleError::SignIn = self {
            return HttpResponse::SeeOther()
                .insert_header((LOCATION, "/console/sign-in"))
                .finish();
        }
        let status = self.status_code();
        let title = status.canonical_reason().unwrap_or("Refused");
        page::bare(
            status,
            title,
            html! {
                p.flash.error role="alert" { (self.to_string()) }
                p { a href="/console" { "Back to the console" } }
            },
        )
    }
}

/// A form as posted: its fields in order, a field possibly more than once.
pub(super) struct Form(Vec<(String, String)>);

impl Form {
    fn parse(body: &[u8]) -> Self {
        Form(form_urlencoded::parse(body).into_owned().collect())
    }

    fn get(&self, key: &str) -> Option<&str> {
        self.0
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }

    fn all(&self, key: &str) -> Vec<String> {
        self.0
            .iter()
            .filter(|(k, _)| k == key)
            .map(|(_, v)| v.clone())
            .collect()
    }

    /// Where to go once the action has run: the form's `back` if it is a
    /// console page, else `default` (never another site).
    fn back(&self, default: &str) -> String {
        match self.get("back") {
            Some(to)
                if to.starts_with("/console")
                    && !to.contains("//")
                    && !to.contains('\\')
                    && !to.chars().any(char::is_control) =>
            {
                to.to_owned()
            }
            _ => default.to_owned(),
        }
    }
}

/// The checks of a form that changes something: it carries the session's
/// CSRF token and is posted by `signed`. Signing out needs no more.
fn checked(signed: &Signed, body: &[u8]) -> Result<Form, ConsoleError> {
    let form = Form::parse(body);
    match form.get("csrf") {
        Some(token) if signed.session.csrf_matches(token) => Ok(form),
        _ => Err(ConsoleError::Csrf),
    }
}

/// As [`checked`], for an action only an operator may take (403 otherwise,
/// the API's own refusal).
fn operator_form(signed: &Signed, body: &[u8]) -> Result<(Operator, Form), ConsoleError> {
    let form = checked(signed, body)?;
    let operator = Operator::require(signed.caller.clone())?;
    Ok((operator, form))
}

/// The JSON an admin API handler answered, or its refusal.
async fn answered(answer: Result<HttpResponse, ApiError>) -> Result<Value, ApiError> {
    let response = answer?;
    let bytes = actix_web::body::to_bytes(response.into_body().boxed())
        .await
        .map_err(|e| internal(format!("reading the API's answer: {e}")))?;
    serde_json::from_slice(&bytes).map_err(|e| internal(format!("the API's answer: {e}")))
}

fn internal(message: String) -> ApiError {
    ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "internal_error", message)
}

/// A JSON body for an API handler.
fn body(json: Value) -> web::Bytes {
    web::Bytes::from(json.to_string())
}

/// A form's number as JSON: a number if it reads as one, else the text, so
/// the API's own validation names the problem.
fn number(text: Option<&str>) -> Value {
    let text = text.unwrap_or("").trim();
    text.parse::<i64>()
        .map(Value::from)
        .unwrap_or_else(|_| Value::String(text.to_owned()))
}

/// Shows the outcome of an action once, on the page at `back`.
fn done(
    state: &AppState,
    signed: &Signed,
    req: &HttpRequest,
    back: String,
    outcome: Result<String, ApiError>,
) -> HttpResponse {
    let flash = match outcome {
        Ok(text) => Flash { ok: true, text },
        Err(e) => {
            super::admin::audit::record_answer(req, e.status);
            Flash {
                ok: false,
                text: format!("Refused ({}): {}", e.status.as_u16(), e.message),
            }
        }
    };
    state.console.flash(&signed.session_id, flash);
    HttpResponse::SeeOther()
        .insert_header((LOCATION, back))
        .finish()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_form_returns_only_to_console_pages() {
        let form = |back: &str| Form(vec![("back".into(), back.into())]);
        assert_eq!(
            form("/console/attention?state=out_of_stock").back("/console"),
            "/console/attention?state=out_of_stock"
        );
        assert_eq!(form("https://evil.example/").back("/console"), "/console");
        assert_eq!(form("//evil.example/console").back("/console"), "/console");
        assert_eq!(form("/console//evil.example").back("/console"), "/console");
        assert_eq!(
            form("/console\r\nSet-Cookie: x").back("/console"),
            "/console"
        );
        assert_eq!(Form(vec![]).back("/console/dlq"), "/console/dlq");
    }

    #[test]
    fn repeated_fields_are_all_kept() {
        let form = Form::parse(b"order=A&order=B%20C&csrf=t");
        assert_eq!(form.all("order"), ["A", "B C"]);
        assert_eq!(form.get("csrf"), Some("t"));
        assert_eq!(form.get("missing"), None);
    }

    #[test]
    fn numbers_pass_through_as_numbers_and_the_rest_as_text() {
        assert_eq!(number(Some(" 12 ")), Value::from(12));
        assert_eq!(number(Some("-3")), Value::from(-3));
        assert_eq!(number(Some("twelve")), Value::from("twelve"));
        assert_eq!(number(None), Value::from(""));
    }
}
