//! Metric names (the contract of SPEC §9), their help text, and the handles the
//! rest of the daemon records through.
//!
//! Each running daemon owns its own Prometheus recorder instead of installing a
//! process-global one: two daemons in one test process then never mix their
//! counts, and `/metrics` renders exactly this daemon's figures. Handles are
//! registered once at start-up, so recording is an atomic add with no lookup.

use std::sync::Arc;

use crate::domain::cluster::LeaseKind;
use crate::domain::order::OrderState;

use metrics::{
    Counter, Gauge, Histogram, Key, KeyName, Label, Level, Metadata, Recorder, SharedString, Unit,
};
use metrics_exporter_prometheus::{
    Matcher, PrometheusBuilder, PrometheusHandle, PrometheusRecorder,
};

pub const WEBHOOK_REQUESTS_TOTAL: &str = "dropship_webhook_requests_total";
pub const WEBHOOK_ACK_SECONDS: &str = "dropship_webhook_ack_seconds";
pub const INBOX_PENDING: &str = "dropship_inbox_pending";
pub const DLQ_ENTRIES: &str = "dropship_dlq_entries";
pub const PROCESSING_PAUSED: &str = "dropship_processing_paused";
pub const ORDER_CREATION_SECONDS: &str = "dropship_order_creation_seconds";
pub const SHIPPING_CREATION_SECONDS: &str = "dropship_shipping_creation_seconds";
pub const ORDER_TRANSITIONS_TOTAL: &str = "dropship_order_transitions_total";
pub const ORDERS: &str = "dropship_orders";
pub const REVENUE_PAISE_TOTAL: &str = "dropship_revenue_paise_total";
pub const STOCK_RESERVATIONS_TOTAL: &str = "dropship_stock_reservations_total";
pub const STOCK_RECONCILE_MISMATCHES: &str = "dropship_stock_reconcile_mismatches";
pub const ACTORS_LIVE: &str = "dropship_actors_live";
pub const SHIPROCKET_REQUESTS_TOTAL: &str = "dropship_shiprocket_requests_total";
pub const SHIPROCKET_REQUEST_SECONDS: &str = "dropship_shiprocket_request_seconds";
pub const SHIPROCKET_CIRCUIT_STATE: &str = "dropship_shiprocket_circuit_state";
pub const SHIPPING_QUEUE: &str = "dropship_shipping_queue";
pub const SHIPPING_QUEUE_OLDEST_SECONDS: &str = "dropship_shipping_queue_oldest_seconds";
pub const CLUSTER_LEASES: &str = "dropship_cluster_leases";

/// Latency buckets for every `_seconds` histogram: sub-millisecond acks up to
/// the multi-second waits of a throttled Shiprocket.
const SECONDS_BUCKETS: &[f64] = &[
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
];

const METADATA: Metadata<'static> = Metadata::new("dropshipd", Level::INFO, None);

/// How a webhook request ended; the `outcome` label of `dropship_webhook_requests_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WebhookOutcome {
    Accepted,
    Duplicate,
    Quarantined,
    InvalidSignature,
    TooLarge,
    Unavailable,
}

impl WebhookOutcome {
    pub const ALL: [WebhookOutcome; 6] = [
        Self::Accepted,
        Self::Duplicate,
        Self::Quarantined,
        Self::InvalidSignature,
        Self::TooLarge,
        Self::Unavailable,
    ];

    pub fn label(self) -> &'static str {
        match self {
            Self::Accepted => "accepted",
            Self::Duplicate => "duplicate",
            Self::Quarantined => "quarantined",
            Self::InvalidSignature => "invalid_signature",
            Self::TooLarge => "too_large",
            Self::Unavailable => "unavailable",
        }
    }
}

/// The daemon's metrics: its recorder and the registered handles.
pub struct Metrics {
    recorder: PrometheusRecorder,
    handle: PrometheusHandle,
    webhook_requests: [Counter; 6],
    pub webhook_ack_seconds: Histogram,
    pub inbox_pending: Gauge,
    pub dlq_entries: Gauge,
    pub processing_paused: Gauge,
    pub order_creation_seconds: Histogram,
    pub shipping_creation_seconds: Histogram,
    order_transitions: Vec<Counter>,
    orders: Vec<Gauge>,
    revenue_paise: Counter,
    stock_reservations: [Counter; 2],
    pub stock_reconcile_mismatches: Gauge,
    /// `dropship_actors_live{kind}` for order, stock_shard and webhook_ingest.
    pub actors_live_orders: Gauge,
    pub actors_live_stock_shards: Gauge,
    pub actors_live_ingest: Gauge,
    shipping_queue_oldest_seconds: Gauge,
    /// `dropship_cluster_leases{kind}`, in [`LeaseKind::ALL`]'s order.
    cluster_leases: Vec<Gauge>,
}

impl Metrics {
    pub fn new() -> Arc<Self> {
        let recorder = PrometheusBuilder::new()
            .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), SECONDS_BUCKETS)
            .map(PrometheusBuilder::build_recorder)
            .unwrap_or_else(|_| PrometheusBuilder::new().build_recorder());
        let handle = recorder.handle();
        describe_counter(
            &recorder,
            WEBHOOK_REQUESTS_TOTAL,
            None,
            "Razorpay webhook requests, by how they ended.",
        );
        describe_histogram(
            &recorder,
            WEBHOOK_ACK_SECONDS,
            "Time from a webhook request arriving to its 200 leaving.",
        );
        describe_gauge(
            &recorder,
            INBOX_PENDING,
            "Accepted webhooks not yet processed.",
        );
        describe_gauge(
            &recorder,
            DLQ_ENTRIES,
            "Open entries in the dead-letter queue.",
        );
        describe_gauge(
            &recorder,
            PROCESSING_PAUSED,
            "1 while the kill switch holds order processing, else 0.",
        );
        describe_histogram(
            &recorder,
            ORDER_CREATION_SECONDS,
            "Time from a payment event being accepted to its order's paid state being committed.",
        );
        describe_histogram(
            &recorder,
            SHIPPING_CREATION_SECONDS,
            "Time from an order being paid to it being ready to ship (AWB assigned).",
        );
        describe_counter(
            &recorder,
            ORDER_TRANSITIONS_TOTAL,
            None,
            "Order state transitions, by the state entered.",
        );
        describe_gauge(&recorder, ORDERS, "Orders currently in each state.");
        describe_counter(
            &recorder,
            REVENUE_PAISE_TOTAL,
            None,
            "Amounts of orders that became paid, in paise.",
        );
        describe_counter(
            &recorder,
            STOCK_RESERVATIONS_TOTAL,
            None,
            "Stock reservations for checkouts, by result.",
        );
        describe_gauge(
            &recorder,
            STOCK_RECONCILE_MISMATCHES,
            "SKUs whose level disagrees with their ledger at the last reconciliation.",
        );
        describe_counter(
            &recorder,
            SHIPROCKET_REQUESTS_TOTAL,
            None,
            "Shiprocket API calls, by account, call and outcome.",
        );
        describe_histogram(
            &recorder,
            SHIPROCKET_REQUEST_SECONDS,
            "Duration of Shiprocket API calls, by call.",
        );
        describe_gauge(
            &recorder,
            SHIPROCKET_CIRCUIT_STATE,
            "Circuit breaker per Shiprocket account: 0 closed, 1 half-open, 2 open.",
        );
        describe_gauge(&recorder, ACTORS_LIVE, "Live actors, by kind.");
        describe_gauge(
            &recorder,
            SHIPPING_QUEUE,
            "Orders in the shipping queue, by the account that must take them (any: not yet assigned).",
        );
        describe_gauge(
            &recorder,
            SHIPPING_QUEUE_OLDEST_SECONDS,
            "Age of the payment of the oldest order in the shipping queue.",
        );

        let webhook_requests = WebhookOutcome::ALL.map(|outcome| {
            recorder.register_counter(
                &Key::from_parts(
                    WEBHOOK_REQUESTS_TOTAL,
                    vec![Label::new("outcome", outcome.label())],
                ),
                &METADATA,
            )
        });
        let webhook_ack_seconds =
            recorder.register_histogram(&Key::from_name(WEBHOOK_ACK_SECONDS), &METADATA);
        let inbox_pending = recorder.register_gauge(&Key::from_name(INBOX_PENDING), &METADATA);
        let dlq_entries = recorder.register_gauge(&Key::from_name(DLQ_ENTRIES), &METADATA);
        let processing_paused =
            recorder.register_gauge(&Key::from_name(PROCESSING_PAUSED), &METADATA);
        let by_state = |name: &'static str| -> Vec<Key> {
            OrderState::ALL
                .iter()
                .map(|s| Key::from_parts(name, vec![Label::new("state", s.as_str())]))
                .collect()
        };
        let order_transitions = OrderState::ALL
            .iter()
            .map(|s| {
                recorder.register_counter(
                    &Key::from_parts(ORDER_TRANSITIONS_TOTAL, vec![Label::new("to", s.as_str())]),
                    &METADATA,
                )
            })
            .collect();
        let orders = by_state(ORDERS)
            .iter()
            .map(|k| recorder.register_gauge(k, &METADATA))
            .collect();
        let stock_reservations = ["ok", "insufficient"].map(|result| {
            recorder.register_counter(
                &Key::from_parts(STOCK_RESERVATIONS_TOTAL, vec![Label::new("result", result)]),
                &METADATA,
            )
        });
        let actor_gauge = |kind: &'static str| {
            recorder.register_gauge(
                &Key::from_parts(ACTORS_LIVE, vec![Label::new("kind", kind)]),
                &METADATA,
            )
        };
        let actors_live_orders = actor_gauge("order");
        let actors_live_stock_shards = actor_gauge("stock_shard");
        let actors_live_ingest = actor_gauge("webhook_ingest");
        let order_creation_seconds =
            recorder.register_histogram(&Key::from_name(ORDER_CREATION_SECONDS), &METADATA);
        let shipping_creation_seconds =
            recorder.register_histogram(&Key::from_name(SHIPPING_CREATION_SECONDS), &METADATA);
        let revenue_paise =
            recorder.register_counter(&Key::from_name(REVENUE_PAISE_TOTAL), &METADATA);
        let stock_reconcile_mismatches =
            recorder.register_gauge(&Key::from_name(STOCK_RECONCILE_MISMATCHES), &METADATA);
        let shipping_queue_oldest_seconds =
            recorder.register_gauge(&Key::from_name(SHIPPING_QUEUE_OLDEST_SECONDS), &METADATA);
        describe_gauge(
            &recorder,
            CLUSTER_LEASES,
            "Leases this instance holds, by kind (postgres backend).",
        );
        let cluster_leases = LeaseKind::ALL
            .iter()
            .map(|kind| {
                recorder.register_gauge(
                    &Key::from_parts(CLUSTER_LEASES, vec![Label::new("kind", kind.as_str())]),
                    &METADATA,
                )
            })
            .collect();
        Arc::new(Self {
            recorder,
            handle,
            webhook_requests,
            webhook_ack_seconds,
            inbox_pending,
            dlq_entries,
            processing_paused,
            order_creation_seconds,
            shipping_creation_seconds,
            order_transitions,
            orders,
            revenue_paise,
            stock_reservations,
            stock_reconcile_mismatches,
            actors_live_orders,
            actors_live_stock_shards,
            actors_live_ingest,
            shipping_queue_oldest_seconds,
            cluster_leases,
        })
    }

    /// Sets `dropship_cluster_leases{kind}` from this instance's count per kind.
    pub fn set_cluster_leases(&self, counts: &std::collections::BTreeMap<LeaseKind, usize>) {
        for (kind, gauge) in LeaseKind::ALL.iter().zip(&self.cluster_leases) {
            gauge.set(counts.get(kind).copied().unwrap_or(0) as f64);
        }
    }

    pub fn order_transition(&self, to: OrderState) {
        if let Some(counter) = self.order_transitions.get(to as usize) {
            counter.increment(1);
        }
    }

    /// Sets `dropship_orders{state}` from a count per state.
    pub fn set_order_counts(&self, counts: &std::collections::BTreeMap<OrderState, u64>) {
        for (state, gauge) in OrderState::ALL.iter().zip(&self.orders) {
            gauge.set(counts.get(state).copied().unwrap_or(0) as f64);
        }
    }

    pub fn revenue(&self, paise: i64) {
        self.revenue_paise.increment(paise.max(0) as u64);
    }

    /// One Shiprocket call. `account` comes from the config, so labels stay bounded.
    pub fn shiprocket_request(
        &self,
        account: &str,
        call: &'static str,
        outcome: &'static str,
        seconds: Option<f64>,
    ) {
        let labels = vec![
            Label::new("account", account.to_owned()),
            Label::new("call", call),
            Label::new("outcome", outcome),
        ];
        self.recorder
            .register_counter(
                &Key::from_parts(SHIPROCKET_REQUESTS_TOTAL, labels),
                &METADATA,
            )
            .increment(1);
        if let Some(seconds) = seconds {
            self.recorder
                .register_histogram(
                    &Key::from_parts(SHIPROCKET_REQUEST_SECONDS, vec![Label::new("call", call)]),
                    &METADATA,
                )
                .record(seconds);
        }
    }

    pub fn shiprocket_circuit(&self, account: &str, value: f64) {
        self.recorder
            .register_gauge(
                &Key::from_parts(
                    SHIPROCKET_CIRCUIT_STATE,
                    vec![Label::new("account", account.to_owned())],
                ),
                &METADATA,
            )
            .set(value);
    }

    /// Sets `dropship_shipping_queue{account}` for every configured account
    /// and `any`, zeros included, and the oldest queued payment's age.
    pub fn set_shipping_queue(
        &self,
        accounts: &[&str],
        backlog: &[crate::storage::QueueBacklog],
        now_ms: i64,
    ) {
        let queued = |account: Option<&str>| {
            backlog
                .iter()
                .find(|b| b.account.as_deref() == account)
                .map_or(0, |b| b.orders)
        };
        let gauge = |label: &str, value: u64| {
            self.recorder
                .register_gauge(
                    &Key::from_parts(
                        SHIPPING_QUEUE,
                        vec![Label::new("account", label.to_owned())],
                    ),
                    &METADATA,
                )
                .set(value as f64);
        };
        gauge("any", queued(None));
        for account in accounts {
            gauge(account, queued(Some(account)));
        }
        let oldest = backlog.iter().filter_map(|b| b.oldest_paid_at_ms).min();
        self.shipping_queue_oldest_seconds
            .set(oldest.map_or(0.0, |at| (now_ms - at).max(0) as f64 / 1000.0));
    }

    pub fn stock_reservation(&self, ok: bool) {
        self.stock_reservations[usize::from(!ok)].increment(1);
    }

    pub fn webhook_request(&self, outcome: WebhookOutcome) {
        self.webhook_requests[outcome as usize].increment(1);
    }

    /// The Prometheus text exposition of every metric.
    pub fn render(&self) -> String {
        self.handle.render()
    }

    /// Drains histogram buffers; call periodically so an unscraped daemon's memory stays flat.
    pub fn run_upkeep(&self) {
        self.handle.run_upkeep();
    }
}

fn describe_counter(
    recorder: &PrometheusRecorder,
    name: &'static str,
    unit: Option<Unit>,
    help: &'static str,
) {
    recorder.describe_counter(
        KeyName::from_const_str(name),
        unit,
        SharedString::const_str(help),
    );
}

fn describe_gauge(recorder: &PrometheusRecorder, name: &'static str, help: &'static str) {
    recorder.describe_gauge(
        KeyName::from_const_str(name),
        None,
        SharedString::const_str(help),
    );
}

fn describe_histogram(recorder: &PrometheusRecorder, name: &'static str, help: &'static str) {
    recorder.describe_histogram(
        KeyName::from_const_str(name),
        Some(Unit::Seconds),
        SharedString::const_str(help),
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_contract_names_and_types() {
        let metrics = Metrics::new();
        metrics.webhook_request(WebhookOutcome::Accepted);
        metrics.webhook_request(WebhookOutcome::Accepted);
        metrics.webhook_request(WebhookOutcome::TooLarge);
        metrics.webhook_ack_seconds.record(0.002);
        metrics.inbox_pending.set(7.0);
        let text = metrics.render();
        assert!(
            text.contains("dropship_webhook_requests_total{outcome=\"accepted\"} 2"),
            "{text}"
        );
        assert!(
            text.contains("dropship_webhook_requests_total{outcome=\"too_large\"} 1"),
            "{text}"
        );
        assert!(
            text.contains("# TYPE dropship_webhook_ack_seconds histogram"),
            "{text}"
        );
        assert!(
            text.contains("dropship_webhook_ack_seconds_bucket{le=\"0.0025\"} 1"),
            "{text}"
        );
        assert!(text.contains("dropship_inbox_pending 7"), "{text}");
    }

    #[test]
    fn two_daemons_do_not_share_counts() {
        let a = Metrics::new();
        let b = Metrics::new();
        a.webhook_request(WebhookOutcome::Duplicate);
        assert!(a.render().contains("outcome=\"duplicate\"} 1"));
        assert!(b.render().contains("outcome=\"duplicate\"} 0"));
    }
}
