//! The overview: SPEC §9's status as a page, and the last hour's orders.

use actix_web::{web, HttpResponse};
use maud::{html, Markup};
use serde_json::Value;

use super::page::{self, rupees, text, Nav};
use super::{answered, ConsoleError, Signed};
use crate::domain::order::OrderState;
use crate::http::admin;
use crate::http::error::ApiError;
use crate::http::AppState;
use crate::storage::MinuteActivity;

/// The states an operator has to act on; each links to its list.
pub(super) const ATTENTION: [OrderState; 3] = [
    OrderState::ManualRequired,
    OrderState::OutOfStock,
    OrderState::PaymentFailed,
];

const HOUR_MS: i64 = 3_600_000;

pub(super) async fn show(
    signed: Signed,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ConsoleError> {
    let status = answered(admin::status(signed.viewer(), state.clone()).await).await?;
    let now = state.clock.now_ms();
    let activity = state
        .storage
        .activity_since(now - HOUR_MS)
        .await
        .map_err(ApiError::storage_unavailable)?;
    let body = html! {
        (right_now(&status))
        (last_hour(&activity))
        (orders_by_state(&status))
        (accounts(&status))
    };
    Ok(page::page(&signed, Nav::Overview, "Overview", true, body))
}

fn right_now(status: &Value) -> Markup {
    let paused = status["processing_paused"].as_bool().unwrap_or(false);
    let queue = &status["shipping_queue"];
    html! {
        section aria-labelledby="now" {
            h2 id="now" { "Right now" }
            dl.facts {
                div.fact.(if paused { "alarm" } else { "calm" }) {
                    dt { "Processing" }
                    dd { @if paused { "Paused " a href="/console/controls" { "(resume)" } } @else { "Running" } }
                }
                div.fact.(if status["shipping_mode"] == "manual" { "alarm" } else { "calm" }) {
                    dt { "Shipping mode" }
                    dd { (text(&status["shipping_mode"])) }
                }
                div.fact {
                    dt { "Webhooks waiting" }
                    dd { (text(&status["inbox_pending"])) }
                }
                div.fact.(if status["dlq_entries"].as_u64().unwrap_or(0) > 0 { "alarm" } else { "calm" }) {
                    dt { "Dead letters" }
                    dd { a href="/console/dlq" { (text(&status["dlq_entries"])) } }
                }
                div.fact {
                    dt { "Shipping queue" }
                    dd {
                        (text(&queue["orders"])) " orders"
                        @if queue["oldest_seconds"].as_i64().unwrap_or(0) > 0 {
                            ", oldest paid " (duration(queue["oldest_seconds"].as_i64().unwrap_or(0))) " ago"
                        }
                    }
                }
            }
        }
    }
}

fn last_hour(activity: &[MinuteActivity]) -> Markup {
    let checkouts: u64 = activity.iter().map(|m| m.checkouts).sum();
    let paid: u64 = activity.iter().map(|m| m.paid).sum();
    let revenue: i64 = activity.iter().map(|m| m.revenue_paise).sum();
    let busiest = activity
        .iter()
        .map(|m| m.checkouts)
        .max()
        .unwrap_or(0)
        .max(1);
    html! {
        section aria-labelledby="hour" {
            h2 id="hour" { "The last hour" }
            dl.facts {
                div.fact { dt { "Checkouts" } dd { (checkouts) } }
                div.fact { dt { "Paid" } dd { (paid) } }
                div.fact { dt { "Conversion" } dd { (conversion(paid, checkouts)) } }
                div.fact { dt { "Revenue" } dd { (rupees(revenue)) } }
            }
            @if activity.is_empty() {
                p { "No checkouts in the last hour." }
            } @else {
                table.minutes {
                    caption { "Orders per minute, newest first" }
                    thead { tr { th scope="col" { "Minute" } th scope="col" { "Checkouts" } th scope="col" { "Paid" } th scope="col" { "Revenue" } } }
                    tbody {
                        @for minute in activity.iter().rev() {
                            tr {
                                td { (page::time(&Value::String(crate::http::rfc3339(minute.minute_ms)))) }
                                td {
                                    meter min="0" max=(busiest) value=(minute.checkouts) aria-label={ (minute.checkouts) " checkouts" } {}
                                    " " (minute.checkouts)
                                }
                                td { (minute.paid) }
                                td { (rupees(minute.revenue_paise)) }
                            }
                        }
                    }
                }
            }
        }
    }
}

fn orders_by_state(status: &Value) -> Markup {
    html! {
        section aria-labelledby="states" {
            h2 id="states" { "Orders by state" }
            table.states {
                thead { tr { th scope="col" { "State" } th scope="col" { "Orders" } } }
                tbody {
                    @for order_state in OrderState::ALL {
                        @let count = status["orders_by_state"][order_state.as_str()].as_u64().unwrap_or(0);
                        tr.(if ATTENTION.contains(&order_state) && count > 0 { "alarm" } else { "" }) {
                            th scope="row" {
                                @if ATTENTION.contains(&order_state) {
                                    a href={ "/console/attention?state=" (order_state.as_str()) } { (order_state.as_str()) }
                                } @else {
                                    (order_state.as_str())
                                }
                            }
                            td { (count) }
                        }
                    }
                }
            }
        }
    }
}

fn accounts(status: &Value) -> Markup {
    let empty = Vec::new();
    let gateways = status["actors"]["gateways"].as_array().unwrap_or(&empty);
    html! {
        section aria-labelledby="accounts" {
            h2 id="accounts" { "Shiprocket accounts" }
            table.accounts {
                thead {
                    tr {
                        th scope="col" { "Account" } th scope="col" { "Circuit" } th scope="col" { "In flight" }
                        th scope="col" { "Calls available" } th scope="col" { "Queued" } th scope="col" { "Time to drain" }
                        th scope="col" { "Last error" }
                    }
                }
                tbody {
                    @for gateway in gateways {
                        tr.(if gateway["circuit"] == "closed" { "" } else { "alarm" }) {
                            th scope="row" { (text(&gateway["account"])) }
                            td { (text(&gateway["circuit"])) }
                            td { (text(&gateway["in_flight"])) }
                            td { (text(&gateway["limiter_available"])) }
                            td { (text(&gateway["queued"])) }
                            td { (gateway["drain_eta_secs"].as_i64().map_or_else(|| "—".to_owned(), duration)) }
                            td { (text(&gateway["last_error"])) }
                        }
                    }
                }
            }
        }
    }
}

/// `paid` of `checkouts` as a percentage.
fn conversion(paid: u64, checkouts: u64) -> String {
    if checkouts == 0 {
        return "—".into();
    }
    format!("{:.1}%", paid as f64 * 100.0 / checkouts as f64)
}

/// Seconds as `1 h 5 min`, `4 min 10 s` or `12 s`.
fn duration(secs: i64) -> String {
    let secs = secs.max(0);
    match secs {
        0..=59 => format!("{secs} s"),
        60..=3599 => format!("{} min {} s", secs / 60, secs % 60),
        _ => format!("{} h {} min", secs / 3600, secs % 3600 / 60),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn conversion_is_paid_of_checkouts() {
        assert_eq!(conversion(0, 0), "—");
        assert_eq!(conversion(1, 3), "33.3%");
        assert_eq!(conversion(5, 5), "100.0%");
    }

    #[test]
    fn durations_read_at_a_glance() {
        assert_eq!(duration(12), "12 s");
        assert_eq!(duration(250), "4 min 10 s");
        assert_eq!(duration(3_900), "1 h 5 min");
        assert_eq!(duration(-4), "0 s");
    }
}
