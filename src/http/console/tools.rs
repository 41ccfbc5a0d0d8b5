//! The operator's tools beside orders: dead letters with replay, stock with
//! adjust and set, the kill switch and shipping mode (each behind a
//! confirmation step), and the audit log.

use actix_web::{web, HttpRequest, HttpResponse};
use maud::{html, Markup};
use serde::Deserialize;
use serde_json::{json, Value};

use super::page::{self, back, csrf, text, time, Nav};
use super::{answered, body, done, number, operator_form, ConsoleError, Form, Signed};
use crate::http::admin::{self, dlq, stock as stock_api, Page};
use crate::http::auth::{Operator, Role};
use crate::http::error::ApiError;
use crate::http::AppState;

const PAGE: u32 = 50;

#[derive(Deserialize)]
pub(super) struct After {
    after: Option<i64>,
}

#[derive(Deserialize)]
pub(super) struct Before {
    before: Option<i64>,
}

pub(super) async fn dead_letters(
    signed: Signed,
    state: web::Data<AppState>,
    query: web::Query<After>,
) -> Result<HttpResponse, ConsoleError> {
    let page = Page {
        after: query.after,
        limit: Some(PAGE),
    };
    let listed =
        answered(dlq::list(signed.viewer(), state.clone(), web::Query(page)).await).await?;
    let operator = signed.caller.role == Role::Operator;
    let empty = Vec::new();
    let entries = listed["entries"].as_array().unwrap_or(&empty);
    let body = html! {
        p { "Events that could not be applied when they arrived. Replay one once what it was missing exists (its order, say)." }
        @if entries.is_empty() {
            p { "No dead letters." }
        } @else {
            table.letters {
                thead {
                    tr {
                        th scope="col" { "#" } th scope="col" { "Source" } th scope="col" { "Reason" }
                        th scope="col" { "Event" } th scope="col" { "Received" } th scope="col" { "Last replay" }
                        @if operator { th scope="col" { span.visually-hidden { "Action" } } }
                    }
                }
                tbody {
                    @for letter in entries {
                        @let id = text(&letter["id"]);
                        tr {
                            td { (id) }
                            td { (text(&letter["source"])) }
                            td { (text(&letter["reason"])) br; small { (text(&letter["detail"])) } }
                            td { (text(&letter["event_id"])) }
                            td { (time(&letter["received_at"])) }
                            td { (text(&letter["last_replay_outcome"])) }
                            @if operator {
                                td {
                                    form method="post" action={ "/console/dlq/" (id) "/replay" } {
                                        (csrf(&signed)) (back("/console/dlq"))
                                        button type="submit" aria-label={ "Replay dead letter " (id) } { "Replay" }
                                    }
                                }
                            }
                        }
                    }
                }
            }
            (page::next_link("/console/dlq", &listed["next"]))
        }
    };
    Ok(page::page(
        &signed,
        Nav::DeadLetters,
        "Dead letters",
        false,
        body,
    ))
}

pub(super) async fn replay(
    signed: Signed,
    req: HttpRequest,
    state: web::Data<AppState>,
    path: web::Path<i64>,
    raw: web::Bytes,
) -> Result<HttpResponse, ConsoleError> {
    let (operator, form) = operator_form(&signed, &raw)?;
    let id = path.into_inner();
    let answer = dlq::replay(operator, req.clone(), state.clone(), web::Path::from(id)).await;
    let outcome = answered(answer).await.and_then(|a| {
        let said = format!("Dead letter {id}: {}", text(&a["outcome"]));
        if a["resolved"] == true {
            Ok(format!("{said} (resolved)."))
        } else {
            Err(ApiError::new(
                actix_web::http::StatusCode::CONFLICT,
                "not_resolved",
                format!("{said}; still open"),
            ))
        }
    });
    Ok(done(
        &state,
        &signed,
        &req,
        form.back("/console/dlq"),
        outcome,
    ))
}

#[derive(Deserialize)]
pub(super) struct SkuQuery {
    sku: Option<String>,
}

pub(super) async fn stock(
    signed: Signed,
    state: web::Data<AppState>,
    query: web::Query<SkuQuery>,
) -> Result<HttpResponse, ConsoleError> {
    let wanted = query
        .sku
        .as_deref()
        .map(str::trim)
        .filter(|s| !s.is_empty());
    let levels = state
        .storage
        .stock_levels()
        .await
        .map_err(ApiError::storage_unavailable)?;
    let shown: Vec<_> = levels
        .iter()
        .filter(|(sku, _)| wanted.is_none_or(|w| sku.contains(w)))
        .take(500)
        .collect();
    let operator = signed.caller.role == Role::Operator;
    let here = match wanted {
        Some(w) => format!(
            "/console/stock?sku={}",
            form_urlencoded::byte_serialize(w.as_bytes()).collect::<String>()
        ),
        None => "/console/stock".to_owned(),
    };
    let body = html! {
        form.filter method="get" action="/console/stock" {
            label for="sku" { "SKU contains" }
            input id="sku" name="sku" type="search" value=[wanted];
            button type="submit" { "Filter" }
        }
        @if shown.is_empty() {
            p { "No stock recorded" @if wanted.is_some() { " for that filter" } "." }
        } @else {
            table.stock {
                thead {
                    tr {
                        th scope="col" { "SKU" } th scope="col" { "On hand" } th scope="col" { "Reserved" } th scope="col" { "Available" }
                        @if operator { th scope="col" { "Adjust" } th scope="col" { "Set on hand" } }
                    }
                }
                tbody {
                    @for (sku, level) in &shown {
                        @let slug = page::path_segment(sku);
                        tr {
                            th scope="row" { (sku) }
                            td { (level.on_hand) }
                            td { (level.reserved) }
                            td { (level.available()) }
                            @if operator {
                                td {
                                    form.inline method="post" action={ "/console/stock/" (slug) "/adjust" } {
                                        (csrf(&signed)) (back(&here))
                                        label for={ "delta-" (slug) } { "Change by" }
                                        input id={ "delta-" (slug) } name="delta" type="number" step="1" required;
                                        label for={ "reason-" (slug) } { "Reason" }
                                        input id={ "reason-" (slug) } name="reason" type="text" required;
                                        button type="submit" aria-label={ "Adjust " (sku) } { "Adjust" }
                                    }
                                }
                                td {
                                    form.inline method="post" action={ "/console/stock/" (slug) "/set" } {
                                        (csrf(&signed)) (back(&here))
                                        label for={ "on-hand-" (slug) } { "On hand" }
                                        input id={ "on-hand-" (slug) } name="on_hand" type="number" min="0" step="1" value=(level.on_hand) required;
                                        button type="submit" aria-label={ "Set on hand of " (sku) } { "Set" }
                                    }
                                }
                            }
                        }
                    }
                }
            }
            @if shown.len() == 500 { p { "The first 500 SKUs are shown; filter to find others." } }
        }
        @if operator {
            section aria-labelledby="new-sku" {
                h2 id="new-sku" { "Stock a new SKU" }
                form.inline method="post" action="/console/stock/_/set" {
                    (csrf(&signed)) (back(&here))
                    label for="new-sku-name" { "SKU" }
                    input id="new-sku-name" name="sku" type="text" required;
                    label for="new-on-hand" { "On hand" }
                    input id="new-on-hand" name="on_hand" type="number" min="0" step="1" required;
                    button type="submit" { "Set" }
                }
            }
        }
    };
    Ok(page::page(&signed, Nav::Stock, "Stock", false, body))
}

pub(super) async fn adjust_stock(
    signed: Signed,
    req: HttpRequest,
    state: web::Data<AppState>,
    path: web::Path<String>,
    raw: web::Bytes,
) -> Result<HttpResponse, ConsoleError> {
    let (operator, form) = operator_form(&signed, &raw)?;
    let sku = path.into_inner();
    let request =
        json!({"delta": number(form.get("delta")), "reason": form.get("reason").unwrap_or("")});
    let answer = stock_api::adjust(
        operator,
        req.clone(),
        state.clone(),
        web::Path::from(sku.clone()),
        body(request),
    )
    .await;
    let outcome = answered(answer).await.map(|level| levels_now(&sku, &level));
    Ok(done(
        &state,
        &signed,
        &req,
        form.back("/console/stock"),
        outcome,
    ))
}

/// Sets a SKU's on-hand count; the path's `_` takes the SKU from the form
/// (the form that stocks a new SKU).
pub(super) async fn set_stock(
    signed: Signed,
    req: HttpRequest,
    state: web::Data<AppState>,
    path: web::Path<String>,
    raw: web::Bytes,
) -> Result<HttpResponse, ConsoleError> {
    let (operator, form) = operator_form(&signed, &raw)?;
    let mut sku = path.into_inner();
    if sku == "_" {
        sku = form.get("sku").unwrap_or("").trim().to_owned();
    }
    let request = json!({"on_hand": number(form.get("on_hand"))});
    let answer = stock_api::put(
        operator,
        req.clone(),
        state.clone(),
        web::Path::from(sku.clone()),
        body(request),
    )
    .await;
    let outcome = answered(answer).await.map(|level| levels_now(&sku, &level));
    Ok(done(
        &state,
        &signed,
        &req,
        form.back("/console/stock"),
        outcome,
    ))
}

fn levels_now(sku: &str, level: &Value) -> String {
    format!(
        "{sku}: {} on hand, {} reserved, {} available.",
        text(&level["on_hand"]),
        text(&level["reserved"]),
        text(&level["available"])
    )
}

pub(super) async fn controls(
    signed: Signed,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ConsoleError> {
    let status = answered(admin::status(signed.viewer(), state.clone()).await).await?;
    let paused = status["processing_paused"] == true;
    let manual = status["shipping_mode"] == "manual";
    let operator = signed.caller.role == Role::Operator;
    let body = html! {
        section aria-labelledby="switch" {
            h2 id="switch" { "Kill switch" }
            p {
                "Processing is " strong { @if paused { "paused" } @else { "running" } } ". "
                "While paused, webhooks are still accepted and stored; nothing advances orders until it resumes."
            }
            @if operator {
                form method="post" action={ "/console/processing/" (if paused { "resume" } else { "pause" }) } {
                    (csrf(&signed))
                    button.(if paused { "" } else { "danger" }) type="submit" { @if paused { "Resume processing…" } @else { "Pause processing…" } }
                }
            }
        }
        section aria-labelledby="mode" {
            h2 id="mode" { "Shipping mode" }
            p {
                "Shipping is " strong { (if manual { "manual" } else { "automatic" }) } ". "
                "In manual mode paid orders wait for an operator instead of going to Shiprocket."
            }
            @if operator {
                form method="post" action="/console/shipping-mode" {
                    (csrf(&signed))
                    input type="hidden" name="mode" value=(if manual { "auto" } else { "manual" });
                    button.(if manual { "" } else { "danger" }) type="submit" {
                        @if manual { "Switch to automatic shipping…" } @else { "Switch to manual shipping…" }
                    }
                }
            }
        }
    };
    Ok(page::page(&signed, Nav::Controls, "Controls", false, body))
}

/// Pause or resume: without `confirm`, the page asking to confirm.
pub(super) async fn processing(
    signed: Signed,
    req: HttpRequest,
    state: web::Data<AppState>,
    path: web::Path<String>,
    raw: web::Bytes,
) -> Result<HttpResponse, ConsoleError> {
    let (operator, form) = operator_form(&signed, &raw)?;
    let change = path.into_inner();
    let pause = match change.as_str() {
        "pause" => true,
        "resume" => false,
        _ => {
            return Err(ApiError::new(
                actix_web::http::StatusCode::NOT_FOUND,
                "not_found",
                "no such change",
            )
            .into())
        }
    };
    if !confirmed(&form) {
        let (question, consequence) = if pause {
            (
                "Pause all processing?",
                "Orders stop advancing until someone resumes. Webhooks are still accepted.",
            )
        } else {
            (
                "Resume processing?",
                "Everything stored while paused is processed now.",
            )
        };
        return Ok(confirmation(
            &signed,
            question,
            consequence,
            &format!("/console/processing/{change}"),
            &[],
        ));
    }
    let answer = if pause {
        admin::pause(operator, req.clone(), state.clone()).await
    } else {
        admin::resume(operator, req.clone(), state.clone()).await
    };
    let outcome = answered(answer).await.map(|a| {
        if a["processing_paused"] == true {
            "Processing is paused.".to_owned()
        } else {
            "Processing resumed.".to_owned()
        }
    });
    Ok(done(
        &state,
        &signed,
        &req,
        "/console/controls".into(),
        outcome,
    ))
}

/// Changes the shipping mode: without `confirm`, the page asking to confirm.
pub(super) async fn shipping_mode(
    signed: Signed,
    req: HttpRequest,
    state: web::Data<AppState>,
    raw: web::Bytes,
) -> Result<HttpResponse, ConsoleError> {
    let (operator, form) = operator_form(&signed, &raw)?;
    let mode = form.get("mode").unwrap_or("").to_owned();
    if !confirmed(&form) {
        let consequence = if mode == "manual" {
            "Paid orders stop going to Shiprocket and wait for an operator."
        } else {
            "Paid orders go to Shiprocket again, the waiting ones first."
        };
        return Ok(confirmation(
            &signed,
            &format!("Switch shipping to {mode}?"),
            consequence,
            "/console/shipping-mode",
            &[("mode", mode.as_str())],
        ));
    }
    let answer = admin::shipping_mode(
        operator,
        req.clone(),
        state.clone(),
        body(json!({"mode": mode})),
    )
    .await;
    let outcome = answered(answer)
        .await
        .map(|a| format!("Shipping mode is {} now.", text(&a["shipping_mode"])));
    Ok(done(
        &state,
        &signed,
        &req,
        "/console/controls".into(),
        outcome,
    ))
}

fn confirmed(form: &Form) -> bool {
    form.get("confirm") == Some("yes")
}

/// The confirmation step of a switch: the same form again, with `confirm`.
fn confirmation(
    signed: &Signed,
    question: &str,
    consequence: &str,
    action: &str,
    fields: &[(&str, &str)],
) -> HttpResponse {
    let body: Markup = html! {
        p.warning { (consequence) }
        form method="post" action=(action) {
            (csrf(signed))
            @for (name, value) in fields { input type="hidden" name=(name) value=(value); }
            input type="hidden" name="confirm" value="yes";
            div.action-row {
                button.danger type="submit" { "Yes, do it" }
                a.button href="/console/controls" { "No, go back" }
            }
        }
    };
    page::page(signed, Nav::Controls, question, false, body)
}

pub(super) async fn audit(
    signed: Signed,
    state: web::Data<AppState>,
    query: web::Query<Before>,
) -> Result<HttpResponse, ConsoleError> {
    // The API's own role check: a viewer is refused here as there.
    let operator = Operator::require(signed.caller.clone())?;
    // Newest first: on the day something breaks, today's entries matter.
    let page = admin::audit::AuditPage {
        after: None,
        before: query.before,
        order: Some("newest".into()),
        limit: Some(PAGE),
    };
    let listed =
        answered(admin::audit::list(operator, state.clone(), web::Query(page)).await).await?;
    let empty = Vec::new();
    let body = html! {
        p { "Every admin and console action and every financial event, newest first, each entry chained to the one before it (" code { "dropshipd audit verify" } " checks the chain)." }
        table.audit {
            thead {
                tr {
                    th scope="col" { "#" } th scope="col" { "At" } th scope="col" { "Who" } th scope="col" { "Action" }
                    th scope="col" { "Subject" } th scope="col" { "Detail" } th scope="col" { "From" }
                }
            }
            tbody {
                @for entry in listed["entries"].as_array().unwrap_or(&empty) {
                    tr {
                        td { (text(&entry["seq"])) }
                        td { (time(&entry["at"])) }
                        td { (text(&entry["actor"])) }
                        td { (text(&entry["action"])) }
                        td { (text(&entry["subject"])) }
                        td { code { (entry["detail"].to_string()) } }
                        td { (text(&entry["peer"])) br; small { (text(&entry["user_agent"])) } }
                    }
                }
            }
        }
        @if let Some(cursor) = listed["next"].as_i64() {
            p.pager { a href={ "/console/audit?before=" (cursor) } rel="next" { "Older entries" } }
        }
    };
    Ok(page::page(&signed, Nav::Audit, "Audit log", false, body))
}
