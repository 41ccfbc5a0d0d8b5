//! Needs attention (the orders an operator has to act on), an order's page,
//! and the actions on orders: retry shipping (ticked, all, or one), mark
//! shipped, cancel.

use actix_web::{web, HttpRequest, HttpResponse};
use maud::{html, Markup};
use serde::Deserialize;
use serde_json::{json, Value};

use super::overview::ATTENTION;
use super::page::{self, back, csrf, rupees, text, time, Nav};
use super::{answered, body, done, operator_form, ConsoleError, Signed};
use crate::http::admin::orders::{self as api, OrderPage};
use crate::http::auth::Role;
use crate::http::error::ApiError;
use crate::http::orders::order_json;
use crate::http::AppState;

/// Orders per page of a list.
const PAGE: u32 = 50;

/// The tab of orders that owe a refund: a flag on the order, not a state.
const REFUND_DUE: &str = "refund_due";

#[derive(Deserialize)]
pub(super) struct AttentionQuery {
    state: Option<String>,
    after: Option<i64>,
}

pub(super) async fn attention(
    signed: Signed,
    state: web::Data<AppState>,
    query: web::Query<AttentionQuery>,
) -> Result<HttpResponse, ConsoleError> {
    let query = query.into_inner();
    let tab = query
        .state
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| ATTENTION[0].as_str().to_owned());
    let listed = if tab == REFUND_DUE {
        let orders = state
            .storage
            .list_refund_due(query.after, PAGE)
            .await
            .map_err(ApiError::storage_unavailable)?;
        let next = (orders.len() == PAGE as usize)
            .then(|| orders.last().map(|o| o.id))
            .flatten();
        json!({"orders": orders.iter().map(|o| order_json(&o.snapshot)).collect::<Vec<_>>(), "next": next})
    } else {
        let page = OrderPage {
            state: Some(tab.clone()),
            after: query.after,
            limit: Some(PAGE),
        };
        answered(api::list(signed.viewer(), state.clone(), web::Query(page)).await).await?
    };
    let counts = state
        .storage
        .order_counts()
        .await
        .map_err(ApiError::storage_unavailable)?;
    let operator = signed.caller.role == Role::Operator;
    let here = match query.after {
        Some(after) => format!("/console/attention?state={tab}&after={after}"),
        None => format!("/console/attention?state={tab}"),
    };
    let retryable = tab == "manual_required";
    let empty = Vec::new();
    let orders = listed["orders"].as_array().unwrap_or(&empty);
    let body = html! {
        nav.tabs aria-label="Filter by state" {
            ul {
                @for s in ATTENTION {
                    li {
                        a href={ "/console/attention?state=" (s.as_str()) }
                          aria-current=[(tab == s.as_str()).then_some("page")] {
                            (s.as_str()) " (" (counts.get(&s).copied().unwrap_or(0)) ")"
                        }
                    }
                }
                li {
                    a href={ "/console/attention?state=" (REFUND_DUE) }
                      aria-current=[(tab == REFUND_DUE).then_some("page")] { "refund due" }
                }
            }
        }
        @if orders.is_empty() {
            p { "No orders here." }
        } @else {
            form method="post" action="/console/orders/retry-shipping" {
                (csrf(&signed))
                (back(&here))
                table.orders {
                    caption { (tab) ", newest first" }
                    thead {
                        tr {
                            @if operator && retryable { th scope="col" { span.visually-hidden { "Select" } } }
                            th scope="col" { "Order" } th scope="col" { "Amount" } th scope="col" { "Updated" }
                            th scope="col" { "Last shipping error" }
                            @if operator && retryable { th scope="col" { span.visually-hidden { "Action" } } }
                        }
                    }
                    tbody {
                        @for order in orders {
                            @let id = text(&order["order_id"]);
                            tr {
                                @if operator && retryable {
                                    td {
                                        input type="checkbox" name="order" value=(id) id={ "pick-" (id) };
                                        label.visually-hidden for={ "pick-" (id) } { "Select order " (id) }
                                    }
                                }
                                th scope="row" { a href={ "/console/orders/" (page::path_segment(&id)) } { (id) } }
                                td { (rupees(order["amount_paise"].as_i64().unwrap_or(0))) }
                                td { (time(&order["updated_at"])) }
                                td { (text(&order["shipping"]["last_error"])) }
                                @if operator && retryable {
                                    td {
                                        button type="submit" formaction={ "/console/orders/" (page::path_segment(&id)) "/retry-shipping" }
                                            aria-label={ "Retry shipping of order " (id) } { "Retry" }
                                    }
                                }
                            }
                        }
                    }
                }
                @if operator && retryable {
                    p.actions { button type="submit" { "Retry shipping of the selected orders" } }
                }
            }
            (page::next_link(&format!("/console/attention?state={tab}"), &listed["next"]))
        }
        @if operator && retryable && counts.get(&ATTENTION[0]).copied().unwrap_or(0) > 0 {
            form.bulk method="post" action="/console/orders/retry-shipping" {
                (csrf(&signed))
                (back(&here))
                input type="hidden" name="all" value="manual_required";
                button type="submit" { "Retry shipping of every manual_required order" }
            }
        }
    };
    Ok(page::page(
        &signed,
        Nav::Attention,
        "Needs attention",
        false,
        body,
    ))
}

/// The ticked orders' retries, or with `all`, the API's bulk retry.
pub(super) async fn retry_selected(
    signed: Signed,
    req: HttpRequest,
    state: web::Data<AppState>,
    raw: web::Bytes,
) -> Result<HttpResponse, ConsoleError> {
    let (operator, form) = operator_form(&signed, &raw)?;
    let to = form.back("/console/attention");
    if let Some(all) = form.get("all") {
        let answer = api::retry_shipping_bulk(
            operator,
            req.clone(),
            state.clone(),
            body(json!({"state": all})),
        )
        .await;
        let outcome = answered(answer)
            .await
            .map(|a| format!("Sent {} orders back to shipping.", text(&a["count"])));
        return Ok(done(&state, &signed, &req, to, outcome));
    }
    let ids = form.all("order");
    if ids.is_empty() {
        return Ok(done(
            &state,
            &signed,
            &req,
            to,
            Err(ApiError::invalid("order", "tick at least one order")),
        ));
    }
    let results = api::retry_each(&state, &req, &operator.0, "retry_shipping_selected", ids).await;
    let refused: Vec<String> = results
        .iter()
        .filter_map(|(id, r)| r.as_ref().err().map(|e| format!("{id}: {}", e.message)))
        .collect();
    let sent = results.len() - refused.len();
    let outcome = if refused.is_empty() {
        Ok(format!("Sent {sent} orders back to shipping."))
    } else {
        Err(ApiError::new(
            refused_status(&results),
            "partly_refused",
            format!(
                "sent {sent} orders back to shipping; refused {}: {}",
                refused.len(),
                refused.join("; ")
            ),
        ))
    };
    Ok(done(&state, &signed, &req, to, outcome))
}

fn refused_status(results: &[(String, Result<(), ApiError>)]) -> actix_web::http::StatusCode {
    results
        .iter()
        .find_map(|(_, r)| r.as_ref().err().map(|e| e.status))
        .unwrap_or(actix_web::http::StatusCode::CONFLICT)
}

pub(super) async fn retry_one(
    signed: Signed,
    req: HttpRequest,
    state: web::Data<AppState>,
    path: web::Path<String>,
    raw: web::Bytes,
) -> Result<HttpResponse, ConsoleError> {
    let (operator, form) = operator_form(&signed, &raw)?;
    let id = path.into_inner();
    let answer = api::retry_shipping(
        operator,
        req.clone(),
        state.clone(),
        web::Path::from(id.clone()),
    )
    .await;
    let outcome = moved(&id, answered(answer).await);
    Ok(done(
        &state,
        &signed,
        &req,
        form.back(&order_page(&id)),
        outcome,
    ))
}

pub(super) async fn mark_shipped(
    signed: Signed,
    req: HttpRequest,
    state: web::Data<AppState>,
    path: web::Path<String>,
    raw: web::Bytes,
) -> Result<HttpResponse, ConsoleError> {
    let (operator, form) = operator_form(&signed, &raw)?;
    let id = path.into_inner();
    let request = json!({"awb": form.get("awb"), "courier": form.get("courier")});
    let answer = api::mark_shipped(
        operator,
        req.clone(),
        state.clone(),
        web::Path::from(id.clone()),
        body(request),
    )
    .await;
    let outcome = moved(&id, answered(answer).await);
    Ok(done(
        &state,
        &signed,
        &req,
        form.back(&order_page(&id)),
        outcome,
    ))
}

pub(super) async fn cancel(
    signed: Signed,
    req: HttpRequest,
    state: web::Data<AppState>,
    path: web::Path<String>,
    raw: web::Bytes,
) -> Result<HttpResponse, ConsoleError> {
    let (operator, form) = operator_form(&signed, &raw)?;
    let id = path.into_inner();
    let answer = api::cancel(
        operator,
        req.clone(),
        state.clone(),
        web::Path::from(id.clone()),
    )
    .await;
    let outcome = moved(&id, answered(answer).await);
    Ok(done(
        &state,
        &signed,
        &req,
        form.back(&order_page(&id)),
        outcome,
    ))
}

/// An order action's message: the state the order is in now.
fn moved(id: &str, answer: Result<Value, ApiError>) -> Result<String, ApiError> {
    answer.map(|a| format!("Order {id} is {} now.", text(&a["order"]["state"])))
}

fn order_page(id: &str) -> String {
    format!("/console/orders/{}", page::path_segment(id))
}

pub(super) async fn detail(
    signed: Signed,
    state: web::Data<AppState>,
    path: web::Path<String>,
) -> Result<HttpResponse, ConsoleError> {
    let id = path.into_inner();
    let found =
        answered(api::detail(signed.viewer(), state.clone(), web::Path::from(id.clone())).await)
            .await?;
    let order = &found["order"];
    let operator = signed.caller.role == Role::Operator;
    let here = order_page(&id);
    let body = html! {
        (summary(order))
        (customer(&order["customer"]))
        @if operator { (actions(&signed, &id, &here, order)) }
        (journal(&found["journal"]))
    };
    Ok(page::page(
        &signed,
        Nav::Attention,
        &format!("Order {id}"),
        false,
        body,
    ))
}

fn summary(order: &Value) -> Markup {
    let shipping = &order["shipping"];
    let empty = Vec::new();
    html! {
        section aria-labelledby="summary" {
            h2 id="summary" { "Summary" }
            dl.facts {
                div.fact { dt { "State" } dd { strong { (text(&order["state"])) } } }
                div.fact { dt { "Amount" } dd { (rupees(order["amount_paise"].as_i64().unwrap_or(0))) " " (text(&order["currency"])) } }
                div.fact { dt { "Payment" } dd { (text(&order["payment_method"])) } }
                div.fact { dt { "Refund due" } dd { @if order["refund_due"] == true { "Yes" } @else { "No" } } }
                div.fact { dt { "Created" } dd { (time(&order["created_at"])) } }
                div.fact { dt { "Updated" } dd { (time(&order["updated_at"])) } }
                div.fact { dt { "Shiprocket account" } dd { (text(&shipping["account"])) } }
                div.fact { dt { "AWB" } dd { (text(&shipping["awb"])) } }
                div.fact { dt { "Courier" } dd { (text(&shipping["courier"])) } }
                div.fact { dt { "Shipping attempts" } dd { (text(&shipping["attempts"])) } }
                div.fact.wide { dt { "Last shipping error" } dd { (text(&shipping["last_error"])) } }
            }
            table.lines {
                caption { "Items" }
                thead { tr { th scope="col" { "SKU" } th scope="col" { "Name" } th scope="col" { "Quantity" } th scope="col" { "Unit price" } } }
                tbody {
                    @for line in order["items"].as_array().unwrap_or(&empty) {
                        tr {
                            td { (text(&line["sku"])) }
                            td { (text(&line["name"])) }
                            td { (text(&line["quantity"])) }
                            td { (rupees(line["unit_price_paise"].as_i64().unwrap_or(0))) }
                        }
                    }
                }
            }
        }
    }
}

/// The customer as the API showed it to this role (masked for a viewer).
fn customer(record: &Value) -> Markup {
    let who = &record["customer"];
    let address = &record["shipping_address"];
    html! {
        section aria-labelledby="customer" {
            h2 id="customer" { "Customer" }
            dl.facts {
                div.fact { dt { "Name" } dd { (text(&who["name"])) } }
                div.fact { dt { "Email" } dd { (text(&who["email"])) } }
                div.fact { dt { "Phone" } dd { (text(&who["phone"])) } }
                div.fact {
                    dt { "Ship to" }
                    dd {
                        @for part in ["line1", "line2", "city", "state", "pincode", "country"] {
                            @if let Some(value) = address[part].as_str().filter(|v| !v.is_empty()) {
                                span.part { (value) } " "
                            }
                        }
                    }
                }
            }
        }
    }
}

fn actions(signed: &Signed, id: &str, here: &str, order: &Value) -> Markup {
    let manual = order["state"] == "manual_required";
    html! {
        section aria-labelledby="act" {
            h2 id="act" { "Act on this order" }
            div.action-row {
                @if manual {
                    form method="post" action={ (here) "/retry-shipping" } {
                        (csrf(signed)) (back(here))
                        button type="submit" { "Retry shipping" }
                    }
                }
                form.mark-shipped method="post" action={ (here) "/mark-shipped" } {
                    (csrf(signed)) (back(here))
                    label for="awb" { "AWB" }
                    input id="awb" name="awb" type="text" autocomplete="off";
                    label for="courier" { "Courier" }
                    input id="courier" name="courier" type="text" autocomplete="off";
                    button type="submit" { "Mark shipped" }
                }
                form method="post" action={ (here) "/cancel" } {
                    (csrf(signed)) (back(here))
                    button.danger type="submit" aria-label={ "Cancel order " (id) } { "Cancel order" }
                }
            }
        }
    }
}

fn journal(entries: &Value) -> Markup {
    let empty = Vec::new();
    html! {
        section aria-labelledby="journal" {
            h2 id="journal" { "Journal" }
            table.journal {
                thead { tr { th scope="col" { "#" } th scope="col" { "At" } th scope="col" { "Event" } th scope="col" { "Cause" } th scope="col" { "Data" } } }
                tbody {
                    @for entry in entries.as_array().unwrap_or(&empty) {
                        tr {
                            td { (text(&entry["seq"])) }
                            td { (time(&entry["at"])) }
                            td { (text(&entry["kind"])) }
                            td { (text(&entry["cause"])) }
                            td { code { (entry["data"].to_string()) } }
                        }
                    }
                }
            }
        }
    }
}
