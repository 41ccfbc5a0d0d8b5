//! What the demo gathers after the traffic has settled, from the same places an
//! operator would look: each order's journal (`GET /admin/orders/{id}`), the
//! daemon's counters (`GET /metrics`), stock levels and the ledger check
//! (`/admin/stock/...`), the status page, and the sandbox's record of what
//! Shiprocket was asked. The summary is computed from these facts alone.

use std::collections::{BTreeMap, BTreeSet};

use futures_util::StreamExt;
use serde_json::Value;

use super::api::DaemonApi;
use super::load::{Checkout, OrderRecord};
use super::DemoError;
use crate::sandbox::Sandbox;

/// Journals fetched at once.
const JOURNAL_FETCHES: usize = 8;

/// What one order's journal says.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct JournalFacts {
    pub state: String,
    /// `paid` entries: exactly one for a paid order, however many payment events came.
    pub paid_entries: usize,
    pub created_at_ms: Option<i64>,
    pub paid_at_ms: Option<i64>,
    /// When the AWB was assigned: the order became `ready_to_ship`.
    pub ready_at_ms: Option<i64>,
    /// Shipping steps put off (a failed call, or a circuit that was open).
    pub deferrals: usize,
    /// Of those, calls that were made and failed.
    pub failed_calls: usize,
}

/// Reads an order's facts from `GET /admin/orders/{id}`.
pub fn journal_facts(detail: &Value) -> Result<JournalFacts, String> {
    let state = detail["order"]["state"]
        .as_str()
        .ok_or_else(|| format!("no order state in {detail}"))?;
    let journal = detail["journal"]
        .as_array()
        .ok_or_else(|| format!("no journal in {detail}"))?;
    let mut facts = JournalFacts {
        state: state.to_owned(),
        ..JournalFacts::default()
    };
    for entry in journal {
        let at = entry["at"].as_str().and_then(parse_ms);
        match entry["kind"].as_str().unwrap_or_default() {
            "created" => facts.created_at_ms = facts.created_at_ms.or(at),
            "paid" => {
                facts.paid_entries += 1;
                facts.paid_at_ms = facts.paid_at_ms.or(at);
            }
            "awb_assigned" => facts.ready_at_ms = facts.ready_at_ms.or(at),
            "shipping_deferred" => {
                facts.deferrals += 1;
                if entry["data"]["not_attempted"] != Value::Bool(true) {
                    facts.failed_calls += 1;
                }
            }
            _ => {}
        }
    }
    Ok(facts)
}

/// Milliseconds since the epoch of an RFC 3339 time as the daemon writes them.
fn parse_ms(text: &str) -> Option<i64> {
    let at = humantime::parse_rfc3339(text).ok()?;
    let since = at.duration_since(std::time::UNIX_EPOCH).ok()?;
    i64::try_from(since.as_millis()).ok()
}

/// The sum of every sample of `name` in a Prometheus text scrape whose labels
/// include all of `labels`; 0 when there is none.
pub fn metric_sum(scrape: &str, name: &str, labels: &[(&str, &str)]) -> f64 {
    scrape
        .lines()
        .filter(|line| !line.starts_with('#'))
        .filter_map(|line| {
            let (series, value) = line.rsplit_once(' ')?;
            let (series_name, series_labels) = match series.split_once('{') {
                Some((n, rest)) => (n, rest.strip_suffix('}')?),
                None => (series, ""),
            };
            if series_name != name {
                return None;
            }
            let present: BTreeSet<(&str, &str)> = series_labels
                .split(',')
                .filter_map(|pair| {
                    let (k, v) = pair.split_once('=')?;
                    Some((k.trim(), v.trim().trim_matches('"')))
                })
                .collect();
            labels
                .iter()
                .all(|l| present.contains(l))
                .then(|| value.trim().parse::<f64>().ok())
                .flatten()
        })
        .sum()
}

/// One SKU after the run.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct StockFacts {
    pub sku: String,
    pub stocked: i64,
    pub on_hand: i64,
    pub reserved: i64,
    pub available: i64,
}

/// What the sandbox saw of Shiprocket's side.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct SandboxFacts {
    /// Calls answered 500 (the outage).
    pub answered_500: u64,
    pub calls: u64,
    /// Shiprocket orders that exist.
    pub orders: usize,
    /// Distinct channel order ids among them: fewer than `orders` means duplicates.
    pub distinct_orders: usize,
    /// Created orders of ours whose Shiprocket order has an AWB.
    pub with_awb: usize,
}

/// Everything the summary is computed from.
#[derive(Debug, Clone, Default)]
pub struct Evidence {
    /// Journal facts of every order whose checkout was accepted, by order id.
    pub journals: BTreeMap<String, JournalFacts>,
    /// Orders whose journal could not be read, with why.
    pub unreadable: Vec<String>,
    /// `orders_by_state` of `/admin/status`.
    pub orders_by_state: BTreeMap<String, u64>,
    pub dead_letters: u64,
    pub inbox_pending: u64,
    pub stock: Vec<StockFacts>,
    pub ledger_mismatches: usize,
    pub sandbox: SandboxFacts,
    /// The daemon's counters that back the fault claims.
    pub webhooks_accepted: f64,
    pub webhooks_duplicate: f64,
    pub webhooks_invalid_signature: f64,
    pub webhooks_quarantined: f64,
    pub reservations_insufficient: f64,
    pub revenue_paise: f64,
    pub shiprocket_transient: f64,
}

/// Gathers the evidence once the orders have settled.
pub async fn gather(
    api: &DaemonApi,
    sandbox: &Sandbox,
    records: &[OrderRecord],
    stocked: &[(&str, i64)],
) -> Result<Evidence, DemoError> {
    let mut evidence = Evidence::default();

    let created: Vec<String> = records
        .iter()
        .filter(|r| r.checkout == Checkout::Created)
        .map(|r| r.plan.order_id())
        .collect();
    let mut details = futures_util::stream::iter(created)
        .map(|order_id| async move {
            let detail = api.order_detail(&order_id).await;
            (order_id, detail)
        })
        .buffer_unordered(JOURNAL_FETCHES);
    while let Some((order_id, detail)) = details.next().await {
        match detail
            .map_err(|e| e.to_string())
            .and_then(|d| journal_facts(&d))
        {
            Ok(facts) => {
                evidence.journals.insert(order_id, facts);
            }
            Err(e) => evidence.unreadable.push(format!("{order_id}: {e}")),
        }
    }

    let status = api.status().await?;
    if let Some(by_state) = status["orders_by_state"].as_object() {
        evidence.orders_by_state = by_state
            .iter()
            .map(|(state, n)| (state.clone(), n.as_u64().unwrap_or(0)))
            .collect();
    }
    evidence.dead_letters = status["dlq_entries"].as_u64().unwrap_or(0);
    evidence.inbox_pending = status["inbox_pending"].as_u64().unwrap_or(0);

    for (sku, stocked) in stocked {
        let level = api.stock(sku).await?;
        let number = |key: &str| level[key].as_i64().unwrap_or(i64::MIN);
        evidence.stock.push(StockFacts {
            sku: (*sku).to_owned(),
            stocked: *stocked,
            on_hand: number("on_hand"),
            reserved: number("reserved"),
            available: number("available"),
        });
    }
    let reconcile = api.stock_reconcile().await?;
    evidence.ledger_mismatches = reconcile["mismatches"].as_array().map_or(0, Vec::len);

    let scrape = api.metrics().await?;
    let webhooks = |outcome| {
        metric_sum(
            &scrape,
            crate::telemetry::metrics::WEBHOOK_REQUESTS_TOTAL,
            &[("outcome", outcome)],
        )
    };
    evidence.webhooks_accepted = webhooks("accepted");
    evidence.webhooks_duplicate = webhooks("duplicate");
    evidence.webhooks_invalid_signature = webhooks("invalid_signature");
    evidence.webhooks_quarantined = webhooks("quarantined");
    evidence.reservations_insufficient = metric_sum(
        &scrape,
        crate::telemetry::metrics::STOCK_RESERVATIONS_TOTAL,
        &[("result", "insufficient")],
    );
    evidence.revenue_paise =
        metric_sum(&scrape, crate::telemetry::metrics::REVENUE_PAISE_TOTAL, &[]);
    evidence.shiprocket_transient = metric_sum(
        &scrape,
        crate::telemetry::metrics::SHIPROCKET_REQUESTS_TOTAL,
        &[("outcome", "transient")],
    );

    let calls = sandbox.calls();
    let orders = sandbox.orders();
    let ours: BTreeSet<String> = records.iter().map(|r| r.plan.order_id()).collect();
    evidence.sandbox = SandboxFacts {
        answered_500: calls
            .iter()
            .filter(|(call, _)| call.ends_with(":500"))
            .map(|(_, n)| n)
            .sum(),
        calls: calls.values().sum(),
        orders: orders.len(),
        distinct_orders: orders
            .iter()
            .map(|o| o.channel_order_id.as_str())
            .collect::<BTreeSet<_>>()
            .len(),
        with_awb: orders
            .iter()
            .filter(|o| o.awb.is_some() && ours.contains(&o.channel_order_id))
            .count(),
    };
    Ok(evidence)
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn a_journal_gives_state_times_and_counts() {
        let detail = json!({
            "order": {"order_id": "DEMO-000001", "state": "ready_to_ship"},
            "journal": [
                {"seq": 1, "at": "2026-01-05T10:00:00.000Z", "kind": "created", "data": {}},
                {"seq": 2, "at": "2026-01-05T10:00:00.004Z", "kind": "paid", "data": {}},
                {"seq": 3, "at": "2026-01-05T10:00:00.004Z", "kind": "shipping_queued", "data": {}},
                {"seq": 4, "at": "2026-01-05T10:00:00.010Z", "kind": "shipping_deferred",
                 "data": {"not_attempted": false, "in_doubt": true}},
                {"seq": 5, "at": "2026-01-05T10:00:00.300Z", "kind": "shipping_deferred",
                 "data": {"not_attempted": true, "in_doubt": true}},
                {"seq": 6, "at": "2026-01-05T10:00:01.250Z", "kind": "awb_assigned", "data": {}},
            ]
        });
        let facts = journal_facts(&detail).unwrap();
        assert_eq!(facts.state, "ready_to_ship");
        assert_eq!(facts.paid_entries, 1);
        assert_eq!(
            facts
                .paid_at_ms
                .zip(facts.created_at_ms)
                .map(|(p, c)| p - c),
            Some(4)
        );
        assert_eq!(
            facts.ready_at_ms.zip(facts.paid_at_ms).map(|(r, p)| r - p),
            Some(1246)
        );
        assert_eq!((facts.deferrals, facts.failed_calls), (2, 1));
        assert!(journal_facts(&json!({"order": {}})).is_err());
    }

    #[test]
    fn metric_sums_filter_on_name_and_labels() {
        let scrape = "\
# HELP dropship_webhook_requests_total Webhook requests.
# TYPE dropship_webhook_requests_total counter
dropship_webhook_requests_total{outcome=\"accepted\"} 950
dropship_webhook_requests_total{outcome=\"duplicate\"} 100
dropship_webhook_requests_total_extra{outcome=\"accepted\"} 7
dropship_shiprocket_requests_total{account=\"demo\",call=\"create_order\",outcome=\"transient\"} 3
dropship_shiprocket_requests_total{account=\"demo\",call=\"assign_awb\",outcome=\"transient\"} 2
dropship_shiprocket_requests_total{account=\"demo\",call=\"assign_awb\",outcome=\"ok\"} 900
dropship_revenue_paise_total 67410000
";
        let sum = |name, labels: &[(&str, &str)]| metric_sum(scrape, name, labels);
        assert_eq!(
            sum(
                "dropship_webhook_requests_total",
                &[("outcome", "accepted")]
            ),
            950.0
        );
        assert_eq!(sum("dropship_webhook_requests_total", &[]), 1050.0);
        assert_eq!(
            sum(
                "dropship_shiprocket_requests_total",
                &[("outcome", "transient")]
            ),
            5.0
        );
        assert_eq!(sum("dropship_revenue_paise_total", &[]), 67_410_000.0);
        assert_eq!(sum("dropship_absent", &[]), 0.0);
    }
}
