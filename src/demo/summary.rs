//! The demo's report: what happened to every order, how fast, and what each
//! fault case did, computed from the client's records and the gathered
//! [`Evidence`] by pure functions. It checks itself: every expectation the
//! demo stands for (every order accounted for, no double payment, nothing
//! forged stored, the outage survived, stock never negative) that does not
//! hold is listed in [`Summary::problems`], and the binary exits non-zero.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::time::Duration;

use serde::Serialize;

use super::api::WebhookAnswer;
use super::evidence::Evidence;
use super::load::{Checkout, OrderRecord, SCARCE_SKU};
use super::outage::{CircuitSeen, OutageWindow};

/// The final state every order that got its stock should reach.
const EXPECTED_STATE: &str = "ready_to_ship";
/// The row of checkouts refused for want of stock: no order exists for them.
pub const REFUSED_OUT_OF_STOCK: &str = "refused_out_of_stock";
/// The row of checkouts that failed otherwise.
pub const CHECKOUT_FAILED: &str = "checkout_failed";

/// The q-quantile of ascending `sorted` by nearest rank; `None` when empty.
pub fn percentile(sorted: &[f64], q: f64) -> Option<f64> {
    if sorted.is_empty() {
        return None;
    }
    let rank = (q.clamp(0.0, 1.0) * sorted.len() as f64).ceil() as usize;
    sorted.get(rank.clamp(1, sorted.len()) - 1).copied()
}

/// One latency row, in milliseconds.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Latency {
    pub what: &'static str,
    pub count: usize,
    pub p50_ms: Option<f64>,
    pub p99_ms: Option<f64>,
    pub max_ms: Option<f64>,
}

impl Latency {
    pub fn of(what: &'static str, mut samples_ms: Vec<f64>) -> Self {
        samples_ms.sort_by(f64::total_cmp);
        Self {
            what,
            count: samples_ms.len(),
            p50_ms: percentile(&samples_ms, 0.50),
            p99_ms: percentile(&samples_ms, 0.99),
            max_ms: samples_ms.last().copied(),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Throughput {
    /// HTTP requests the traffic sent (checkouts and webhooks).
    pub requests: usize,
    pub traffic_secs: f64,
    pub requests_per_sec: f64,
    /// From the first checkout until every order was in a final state.
    pub settled_secs: f64,
    pub orders_per_sec: f64,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Duplicates {
    /// Webhooks re-sent with the same event id.
    pub resent: usize,
    pub answered_duplicate: usize,
    /// The daemon's `dropship_webhook_requests_total{outcome="duplicate"}`.
    pub daemon_counted: u64,
    /// `order.paid` events sent after `payment.captured` for the same payment.
    pub order_paid_sent: usize,
    pub order_paid_accepted: usize,
    pub paid_orders: usize,
    /// Orders with more than one `paid` journal entry.
    pub double_paid: usize,
    /// The daemon's `dropship_revenue_paise_total`.
    pub revenue_paise: i64,
    /// The sum of the paid orders' amounts.
    pub expected_revenue_paise: i64,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct BadSignatures {
    pub sent: usize,
    pub refused_invalid_signature: usize,
    /// The daemon's `dropship_webhook_requests_total{outcome="invalid_signature"}`.
    pub daemon_counted: u64,
    /// Of the forged orders, the genuine webhook sent next was accepted.
    pub then_accepted: usize,
    pub dead_letters: u64,
    /// Distinct genuine events sent, and what the daemon counted as accepted:
    /// equal when nothing forged was stored.
    pub genuine_events_sent: usize,
    pub daemon_accepted: u64,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ShiprocketOutage {
    pub began_after_secs: f64,
    pub lasted_secs: f64,
    /// Calls the sandbox answered with 500.
    pub answered_500: u64,
    /// Calls the daemon saw fail (`outcome="transient"`).
    pub daemon_saw_failed: u64,
    /// The circuit, and the shipping queue filling and draining.
    pub circuit: CircuitSeen,
    /// Orders whose journal shows a shipping step put off.
    pub orders_waited: usize,
    pub orders_waited_ready: usize,
    /// Orders that exist at Shiprocket, and how many of them repeat an order id.
    pub shiprocket_orders: usize,
    pub shiprocket_duplicates: usize,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct OutOfStock {
    pub sku: &'static str,
    pub asked: usize,
    pub stocked: i64,
    pub refused_409: usize,
    /// The daemon's `dropship_stock_reservations_total{result="insufficient"}`.
    pub daemon_counted: u64,
    pub lowest_available: i64,
    pub reserved_left: i64,
    pub ledger_mismatches: usize,
}

/// The demo's report. Serialized as the `--json` line.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Summary {
    pub orders: usize,
    pub concurrency: usize,
    /// Orders by final state: the daemon's states for orders that exist, and
    /// [`REFUSED_OUT_OF_STOCK`] / [`CHECKOUT_FAILED`] for checkouts that made none.
    pub final_states: BTreeMap<String, usize>,
    pub accounted_for: usize,
    pub settled: bool,
    pub throughput: Throughput,
    pub latency: Vec<Latency>,
    pub duplicates: Duplicates,
    pub bad_signatures: BadSignatures,
    pub shiprocket_outage: ShiprocketOutage,
    pub out_of_stock: OutOfStock,
    /// Expectations that did not hold; empty on a good run.
    pub problems: Vec<String>,
}

/// What the run measured besides the evidence.
#[derive(Debug, Clone, Copy)]
pub struct RunFacts {
    pub orders: usize,
    pub concurrency: usize,
    pub traffic: Duration,
    pub settled_after: Duration,
    pub settled: bool,
    pub outage: OutageWindow,
    pub circuit: CircuitSeen,
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

fn count(records: &[OrderRecord], pick: impl Fn(&OrderRecord) -> bool) -> usize {
    records.iter().filter(|r| pick(r)).count()
}

impl Summary {
    pub fn new(run: &RunFacts, records: &[OrderRecord], evidence: &Evidence) -> Self {
        let created: Vec<&OrderRecord> = records
            .iter()
            .filter(|r| r.checkout == Checkout::Created)
            .collect();
        let journals = &evidence.journals;

        let mut final_states: BTreeMap<String, usize> = BTreeMap::new();
        for record in records {
            let row = match &record.checkout {
                Checkout::Created => journals
                    .get(&record.plan.order_id())
                    .map_or("journal_unreadable", |j| j.state.as_str()),
                Checkout::OutOfStock => REFUSED_OUT_OF_STOCK,
                Checkout::Failed(_) => CHECKOUT_FAILED,
            };
            *final_states.entry(row.to_owned()).or_default() += 1;
        }
        let accounted_for = final_states.values().sum();

        let requests: usize = records.iter().map(OrderRecord::requests).sum();
        let traffic_secs = run.traffic.as_secs_f64();
        let settled_secs = run.settled_after.as_secs_f64();
        let throughput = Throughput {
            requests,
            traffic_secs,
            requests_per_sec: requests as f64 / traffic_secs.max(1e-9),
            settled_secs,
            orders_per_sec: run.orders as f64 / settled_secs.max(1e-9),
        };

        let journal_of = |r: &&OrderRecord| journals.get(&r.plan.order_id());
        let span =
            |from: Option<i64>, to: Option<i64>| from.zip(to).map(|(from, to)| (to - from) as f64);
        // Orders whose shipping had to wait (the outage held them back).
        let waited: Vec<_> = created
            .iter()
            .filter_map(journal_of)
            .filter(|j| j.deferrals > 0)
            .collect();
        let latency = vec![
            Latency::of(
                "checkout: POST /api/orders answered",
                records
                    .iter()
                    .filter_map(|r| r.checkout_took.map(ms))
                    .collect(),
            ),
            Latency::of(
                "payment webhook: sent to 200",
                records
                    .iter()
                    .filter_map(|r| r.payment_took.map(ms))
                    .collect(),
            ),
            Latency::of(
                "order created to paid (journal)",
                created
                    .iter()
                    .filter_map(journal_of)
                    .filter_map(|j| span(j.created_at_ms, j.paid_at_ms))
                    .collect(),
            ),
            Latency::of(
                "paid to ready_to_ship (journal)",
                created
                    .iter()
                    .filter_map(journal_of)
                    .filter_map(|j| span(j.paid_at_ms, j.ready_at_ms))
                    .collect(),
            ),
            Latency::of(
                "paid to ready_to_ship, held up by the outage",
                waited
                    .iter()
                    .filter_map(|j| span(j.paid_at_ms, j.ready_at_ms))
                    .collect(),
            ),
        ];

        let paid: Vec<_> = created
            .iter()
            .filter(|r| journal_of(r).is_some_and(|j| j.paid_entries > 0))
            .collect();
        let duplicates = Duplicates {
            resent: count(records, |r| r.resend.is_some()),
            answered_duplicate: count(records, |r| r.resend == Some(WebhookAnswer::Duplicate)),
            daemon_counted: evidence.webhooks_duplicate as u64,
            order_paid_sent: count(records, |r| r.order_paid.is_some()),
            order_paid_accepted: count(records, |r| r.order_paid == Some(WebhookAnswer::Accepted)),
            paid_orders: paid.len(),
            double_paid: created
                .iter()
                .filter(|r| journal_of(r).is_some_and(|j| j.paid_entries > 1))
                .count(),
            revenue_paise: evidence.revenue_paise as i64,
            expected_revenue_paise: paid.iter().map(|r| r.plan.amount_paise()).sum(),
        };

        let bad_signatures = BadSignatures {
            sent: count(records, |r| r.forged.is_some()),
            refused_invalid_signature: count(records, |r| {
                r.forged == Some(WebhookAnswer::InvalidSignature)
            }),
            daemon_counted: evidence.webhooks_invalid_signature as u64,
            then_accepted: count(records, |r| {
                r.forged.is_some() && r.payment == Some(WebhookAnswer::Accepted)
            }),
            dead_letters: evidence.dead_letters,
            genuine_events_sent: count(records, |r| r.payment.is_some())
                + count(records, |r| r.order_paid.is_some()),
            daemon_accepted: evidence.webhooks_accepted as u64,
        };

        let shiprocket_outage = ShiprocketOutage {
            began_after_secs: run.outage.began_after.as_secs_f64(),
            lasted_secs: run.outage.lasted.as_secs_f64(),
            answered_500: evidence.sandbox.answered_500,
            daemon_saw_failed: evidence.shiprocket_transient as u64,
            circuit: run.circuit,
            orders_waited: waited.len(),
            orders_waited_ready: waited.iter().filter(|j| j.state == EXPECTED_STATE).count(),
            shiprocket_orders: evidence.sandbox.orders,
            shiprocket_duplicates: evidence.sandbox.orders - evidence.sandbox.distinct_orders,
        };

        let scarce = evidence.stock.iter().find(|s| s.sku == SCARCE_SKU);
        let out_of_stock = OutOfStock {
            sku: SCARCE_SKU,
            asked: count(records, |r| r.plan.is_scarce()),
            stocked: scarce.map_or(0, |s| s.stocked),
            refused_409: count(records, |r| r.checkout == Checkout::OutOfStock),
            daemon_counted: evidence.reservations_insufficient as u64,
            lowest_available: evidence
                .stock
                .iter()
                .map(|s| s.available)
                .min()
                .unwrap_or(0),
            reserved_left: evidence.stock.iter().map(|s| s.reserved).sum(),
            ledger_mismatches: evidence.ledger_mismatches,
        };

        let mut summary = Self {
            orders: run.orders,
            concurrency: run.concurrency,
            final_states,
            accounted_for,
            settled: run.settled,
            throughput,
            latency,
            duplicates,
            bad_signatures,
            shiprocket_outage,
            out_of_stock,
            problems: Vec::new(),
        };
        summary.problems = problems(&summary, records, evidence);
        summary
    }

    /// The human report.
    pub fn render(&self) -> String {
        let mut out = String::new();
        // Writing to a String cannot fail.
        let _ = self.write(&mut out);
        out
    }

    fn write(&self, out: &mut String) -> std::fmt::Result {
        writeln!(
            out,
            "dropshipd demo: {} orders over real HTTP, {} at a time, against a daemon with a temporary database and the built-in Shiprocket sandbox",
            self.orders, self.concurrency
        )?;
        writeln!(out)?;
        writeln!(out, "Orders by final state")?;
        let mut rows: Vec<_> = self.final_states.iter().collect();
        rows.sort_by(|a, b| b.1.cmp(a.1).then(a.0.cmp(b.0)));
        for (state, n) in rows {
            let label = match state.as_str() {
                REFUSED_OUT_OF_STOCK => "refused at checkout: out of stock (409)",
                CHECKOUT_FAILED => "checkout failed",
                other => other,
            };
            writeln!(out, "  {label:<42}{n:>8}")?;
        }
        writeln!(
            out,
            "  {:<42}{:>8}  of {} asked for",
            "total", self.accounted_for, self.orders
        )?;
        writeln!(out)?;

        let t = &self.throughput;
        writeln!(out, "Throughput")?;
        writeln!(
            out,
            "  traffic     {} requests (checkouts and webhooks) in {:.2} s: {:.0} requests/s",
            t.requests, t.traffic_secs, t.requests_per_sec
        )?;
        writeln!(
            out,
            "  end to end  {} orders to a final state in {:.2} s: {:.0} orders/s, the {:.1} s Shiprocket outage included",
            self.orders, t.settled_secs, t.orders_per_sec, self.shiprocket_outage.lasted_secs
        )?;
        writeln!(out)?;

        writeln!(
            out,
            "{:<48}{:>7}{:>11}{:>11}{:>11}",
            "Latency", "count", "p50", "p99", "max"
        )?;
        for row in &self.latency {
            writeln!(
                out,
                "  {:<46}{:>7}{:>11}{:>11}{:>11}",
                row.what,
                row.count,
                show_ms(row.p50_ms),
                show_ms(row.p99_ms),
                show_ms(row.max_ms)
            )?;
        }
        writeln!(out)?;

        writeln!(out, "Fault cases")?;
        let d = &self.duplicates;
        writeln!(
            out,
            "  duplicates         {} webhooks re-sent with the same event id: {} answered \"duplicate\" (daemon counted {})",
            d.resent, d.answered_duplicate, d.daemon_counted
        )?;
        writeln!(
            out,
            "                     {} order.paid sent after payment.captured: {} accepted, no second effect",
            d.order_paid_sent, d.order_paid_accepted
        )?;
        writeln!(
            out,
            "                     {} orders paid, {} paid twice (journal); revenue counted {} = the paid orders' sum {}",
            d.paid_orders,
            d.double_paid,
            rupees(d.revenue_paise),
            rupees(d.expected_revenue_paise)
        )?;
        let b = &self.bad_signatures;
        writeln!(
            out,
            "  bad signatures     {} forged webhooks: {} refused 400 invalid_signature (daemon counted {}); {} then accepted when genuine",
            b.sent, b.refused_invalid_signature, b.daemon_counted, b.then_accepted
        )?;
        writeln!(
            out,
            "                     nothing stored: {} dead letters, {} accepted = {} genuine events sent",
            b.dead_letters, b.daemon_accepted, b.genuine_events_sent
        )?;
        let o = &self.shiprocket_outage;
        writeln!(
            out,
            "  Shiprocket outage  {:.1} s of HTTP 500 from {:.2} s: {} calls failed (daemon saw {}); circuit opened {} times, not closed for {:.1} s",
            o.lasted_secs,
            o.began_after_secs,
            o.answered_500,
            o.daemon_saw_failed,
            o.circuit.openings,
            o.circuit.not_closed_secs
        )?;
        let drained = o.circuit.queue_empty_again_at_secs.map_or_else(
            || "not yet empty".to_owned(),
            |at| format!("empty again at {at:.2} s"),
        );
        writeln!(
            out,
            "                     the shipping queue peaked at {} orders at {:.2} s, {drained}; {} orders had a call fail, {} of them now ready_to_ship",
            o.circuit.queue_peak, o.circuit.queue_peak_at_secs, o.orders_waited, o.orders_waited_ready
        )?;
        writeln!(
            out,
            "                     Shiprocket holds {} orders, {} duplicates",
            o.shiprocket_orders, o.shiprocket_duplicates
        )?;
        let s = &self.out_of_stock;
        writeln!(
            out,
            "  out of stock       {}: {} asked for, {} stocked: {} checkouts refused 409 insufficient_stock (daemon counted {})",
            s.sku, s.asked, s.stocked, s.refused_409, s.daemon_counted
        )?;
        writeln!(
            out,
            "                     lowest available of any SKU {}, {} units left reserved, {} ledger mismatches",
            s.lowest_available, s.reserved_left, s.ledger_mismatches
        )?;
        writeln!(out)?;
        if self.problems.is_empty() {
            writeln!(
                out,
                "Every order is accounted for and every fault case did what it should."
            )?;
        } else {
            writeln!(out, "PROBLEMS ({}):", self.problems.len())?;
            for problem in &self.problems {
                writeln!(out, "  - {problem}")?;
            }
        }
        Ok(())
    }
}

fn show_ms(value: Option<f64>) -> String {
    match value {
        None => "-".into(),
        Some(ms) if ms < 10.0 => format!("{ms:.2} ms"),
        Some(ms) if ms < 1000.0 => format!("{ms:.1} ms"),
        Some(ms) => format!("{:.2} s", ms / 1000.0),
    }
}

/// Paise as rupees, `₹1,234.50`.
pub fn rupees(paise: i64) -> String {
    let sign = if paise < 0 { "-" } else { "" };
    let paise = paise.unsigned_abs();
    let whole = (paise / 100).to_string();
    let mut grouped = String::new();
    for (i, digit) in whole.chars().enumerate() {
        if i > 0 && (whole.len() - i).is_multiple_of(3) {
            grouped.push(',');
        }
        grouped.push(digit);
    }
    format!("{sign}₹{grouped}.{:02}", paise % 100)
}

/// Every expectation of the demo that the run did not meet, in words.
fn problems(summary: &Summary, records: &[OrderRecord], evidence: &Evidence) -> Vec<String> {
    let mut problems = Vec::new();
    let mut expect = |holds: bool, problem: String| {
        if !holds {
            problems.push(problem);
        }
    };
    let orders = summary.orders;
    expect(
        records.len() == orders && summary.accounted_for == orders,
        format!(
            "{} of {orders} orders are accounted for",
            summary.accounted_for
        ),
    );
    expect(
        summary.settled,
        "some orders were still in flight when the demo stopped waiting".into(),
    );
    let failed: Vec<&str> = records
        .iter()
        .filter_map(|r| match &r.checkout {
            Checkout::Failed(why) => Some(why.as_str()),
            _ => None,
        })
        .collect();
    expect(
        failed.is_empty(),
        format!(
            "{} checkouts failed; the first: {}",
            failed.len(),
            failed.first().unwrap_or(&"")
        ),
    );
    expect(
        evidence.unreadable.is_empty(),
        format!(
            "{} journals could not be read; the first: {}",
            evidence.unreadable.len(),
            evidence.unreadable.first().map_or("", String::as_str)
        ),
    );
    let created = count(records, |r| r.checkout == Checkout::Created);
    let elsewhere: BTreeMap<&str, usize> = summary
        .final_states
        .iter()
        .filter(|(state, _)| {
            ![EXPECTED_STATE, REFUSED_OUT_OF_STOCK, CHECKOUT_FAILED].contains(&state.as_str())
        })
        .map(|(state, n)| (state.as_str(), *n))
        .collect();
    expect(
        elsewhere.is_empty(),
        format!("orders that got their stock ended elsewhere than {EXPECTED_STATE}: {elsewhere:?}"),
    );
    let daemon_counts: BTreeMap<&str, usize> = evidence
        .orders_by_state
        .iter()
        .filter(|(_, n)| **n > 0)
        .map(|(state, n)| (state.as_str(), *n as usize))
        .collect();
    let journal_counts: BTreeMap<&str, usize> = summary
        .final_states
        .iter()
        .filter(|(state, _)| ![REFUSED_OUT_OF_STOCK, CHECKOUT_FAILED].contains(&state.as_str()))
        .map(|(state, n)| (state.as_str(), *n))
        .collect();
    expect(
        daemon_counts == journal_counts,
        format!("/admin/status counts {daemon_counts:?} but the journals say {journal_counts:?}"),
    );
    expect(
        evidence.inbox_pending == 0,
        format!(
            "{} inbox entries were never processed",
            evidence.inbox_pending
        ),
    );
    let payments_accepted = count(records, |r| r.payment == Some(WebhookAnswer::Accepted));
    expect(
        payments_accepted == created,
        format!("{payments_accepted} of {created} genuine payment webhooks were accepted"),
    );

    let d = &summary.duplicates;
    expect(
        d.answered_duplicate == d.resent && d.daemon_counted == d.resent as u64,
        format!(
            "{} webhooks re-sent, {} answered duplicate, the daemon counted {}",
            d.resent, d.answered_duplicate, d.daemon_counted
        ),
    );
    expect(
        d.order_paid_accepted == d.order_paid_sent,
        format!(
            "{} of {} order.paid events were accepted",
            d.order_paid_accepted, d.order_paid_sent
        ),
    );
    expect(
        d.double_paid == 0 && d.paid_orders == created,
        format!(
            "{} of {created} orders paid, {} of them twice",
            d.paid_orders, d.double_paid
        ),
    );
    expect(
        d.revenue_paise == d.expected_revenue_paise,
        format!(
            "revenue counted {} but the paid orders sum to {}",
            rupees(d.revenue_paise),
            rupees(d.expected_revenue_paise)
        ),
    );

    let b = &summary.bad_signatures;
    expect(
        b.refused_invalid_signature == b.sent && b.daemon_counted == b.sent as u64,
        format!(
            "{} forged webhooks, {} refused with 400, the daemon counted {}",
            b.sent, b.refused_invalid_signature, b.daemon_counted
        ),
    );
    expect(
        b.then_accepted == b.sent,
        format!(
            "{} of {} genuine webhooks after a forged one were accepted",
            b.then_accepted, b.sent
        ),
    );
    expect(
        b.dead_letters == 0 && b.daemon_accepted == b.genuine_events_sent as u64,
        format!(
            "{} dead letters, {} webhooks accepted for {} genuine events sent",
            b.dead_letters, b.daemon_accepted, b.genuine_events_sent
        ),
    );

    let o = &summary.shiprocket_outage;
    expect(
        o.orders_waited_ready == o.orders_waited,
        format!(
            "{} of {} orders held up by the outage reached {EXPECTED_STATE}",
            o.orders_waited_ready, o.orders_waited
        ),
    );
    let ready = summary
        .final_states
        .get(EXPECTED_STATE)
        .copied()
        .unwrap_or(0);
    expect(
        o.shiprocket_duplicates == 0 && evidence.sandbox.with_awb == ready,
        format!(
            "Shiprocket holds {} orders ({} duplicates, {} with an AWB) for {ready} ready to ship",
            o.shiprocket_orders, o.shiprocket_duplicates, evidence.sandbox.with_awb
        ),
    );

    let s = &summary.out_of_stock;
    let scarce_sold = records
        .iter()
        .filter(|r| r.plan.is_scarce() && r.checkout == Checkout::Created)
        .count();
    expect(
        s.refused_409 as i64 == s.asked as i64 - s.stocked
            && scarce_sold as i64 == s.stocked
            && s.daemon_counted == s.refused_409 as u64,
        format!(
            "{}: {} asked for {} in stock, {} sold, {} refused, the daemon counted {}",
            s.sku, s.asked, s.stocked, scarce_sold, s.refused_409, s.daemon_counted
        ),
    );
    expect(
        s.lowest_available >= 0 && s.reserved_left == 0 && s.ledger_mismatches == 0,
        format!(
            "stock: lowest available {}, {} reserved left, {} ledger mismatches",
            s.lowest_available, s.reserved_left, s.ledger_mismatches
        ),
    );
    for level in &evidence.stock {
        let sold: i64 = records
            .iter()
            .filter(|r| r.checkout == Checkout::Created && r.plan.product().sku == level.sku)
            .map(|r| r.plan.quantity)
            .sum();
        expect(
            level.on_hand == level.stocked - sold,
            format!(
                "{}: {} stocked, {sold} sold, but {} on hand",
                level.sku, level.stocked, level.on_hand
            ),
        );
    }
    problems
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::demo::evidence::{JournalFacts, SandboxFacts, StockFacts};
    use crate::demo::load::{plan, stocking};

    #[test]
    fn percentiles_use_the_nearest_rank() {
        let samples: Vec<f64> = (1..=100).map(f64::from).collect();
        assert_eq!(percentile(&samples, 0.5), Some(50.0));
        assert_eq!(percentile(&samples, 0.99), Some(99.0));
        assert_eq!(percentile(&samples, 1.0), Some(100.0));
        assert_eq!(percentile(&samples, 0.0), Some(1.0));
        assert_eq!(percentile(&[7.0], 0.99), Some(7.0));
        assert_eq!(percentile(&[], 0.5), None);
        let row = Latency::of("x", vec![3.0, 1.0, 2.0]);
        assert_eq!(
            (row.count, row.p50_ms, row.max_ms),
            (3, Some(2.0), Some(3.0))
        );
    }

    #[test]
    fn rupees_group_thousands() {
        assert_eq!(rupees(74_900), "₹749.00");
        assert_eq!(rupees(71_230_050), "₹712,300.50");
        assert_eq!(rupees(0), "₹0.00");
        assert_eq!(rupees(-150), "-₹1.50");
    }

    /// A run in which everything went right, built by hand.
    fn good_run(orders: usize) -> (Vec<OrderRecord>, Evidence) {
        let stocked = stocking(orders);
        let mut scarce_left = stocked
            .iter()
            .find(|(p, _)| p.sku == SCARCE_SKU)
            .map_or(0, |s| s.1);
        let mut records = Vec::new();
        let mut evidence = Evidence::default();
        for index in 0..orders {
            let plan = plan(index);
            let refused = plan.is_scarce() && {
                let none = scarce_left == 0;
                scarce_left -= i64::from(!none);
                none
            };
            let accepted = Some(WebhookAnswer::Accepted);
            let record = OrderRecord {
                checkout: if refused {
                    Checkout::OutOfStock
                } else {
                    Checkout::Created
                },
                checkout_took: Some(Duration::from_millis(2)),
                forged: (!refused && plan.forged_first).then_some(WebhookAnswer::InvalidSignature),
                payment: if refused { None } else { accepted.clone() },
                payment_took: (!refused).then_some(Duration::from_millis(1)),
                resend: (!refused && plan.resend).then_some(WebhookAnswer::Duplicate),
                order_paid: if !refused && plan.order_paid_too {
                    accepted
                } else {
                    None
                },
                plan,
            };
            if !refused {
                evidence.journals.insert(
                    record.plan.order_id(),
                    JournalFacts {
                        state: "ready_to_ship".into(),
                        paid_entries: 1,
                        created_at_ms: Some(0),
                        paid_at_ms: Some(3),
                        ready_at_ms: Some(if index % 4 == 0 { 2500 } else { 30 }),
                        deferrals: usize::from(index % 4 == 0),
                        failed_calls: 0,
                    },
                );
                evidence.revenue_paise += record.plan.amount_paise() as f64;
            }
            records.push(record);
        }
        let created = evidence.journals.len();
        evidence
            .orders_by_state
            .insert("ready_to_ship".into(), created as u64);
        evidence.orders_by_state.insert("paid".into(), 0);
        evidence.webhooks_duplicate = count(&records, |r| r.resend.is_some()) as f64;
        evidence.webhooks_invalid_signature = count(&records, |r| r.forged.is_some()) as f64;
        evidence.webhooks_accepted = (count(&records, |r| r.payment.is_some())
            + count(&records, |r| r.order_paid.is_some()))
            as f64;
        evidence.reservations_insufficient =
            count(&records, |r| r.checkout == Checkout::OutOfStock) as f64;
        for (product, on_hand) in stocked {
            let sold: i64 = records
                .iter()
                .filter(|r| r.checkout == Checkout::Created && r.plan.product().sku == product.sku)
                .map(|r| r.plan.quantity)
                .sum();
            evidence.stock.push(StockFacts {
                sku: product.sku.into(),
                stocked: on_hand,
                on_hand: on_hand - sold,
                reserved: 0,
                available: on_hand - sold,
            });
        }
        evidence.sandbox = SandboxFacts {
            answered_500: 12,
            calls: 3 * created as u64 + 12,
            orders: created,
            distinct_orders: created,
            with_awb: created,
        };
        (records, evidence)
    }

    fn run_facts(orders: usize) -> RunFacts {
        RunFacts {
            orders,
            concurrency: 32,
            traffic: Duration::from_millis(800),
            settled_after: Duration::from_millis(3200),
            settled: true,
            outage: OutageWindow {
                began_after: Duration::from_millis(300),
                lasted: Duration::from_secs(2),
            },
            circuit: CircuitSeen {
                openings: 2,
                not_closed_secs: 2.4,
                queue_peak: 40,
                queue_peak_at_secs: 1.9,
                queue_empty_again_at_secs: Some(2.8),
            },
        }
    }

    #[test]
    fn a_good_run_accounts_for_every_order_and_finds_no_problem() {
        let (records, evidence) = good_run(200);
        let summary = Summary::new(&run_facts(200), &records, &evidence);
        assert_eq!(summary.problems, Vec::<String>::new());
        assert_eq!(summary.accounted_for, 200);
        assert_eq!(summary.final_states["ready_to_ship"], 180);
        assert_eq!(summary.final_states[REFUSED_OUT_OF_STOCK], 20);
        assert_eq!(summary.out_of_stock.refused_409, 20);
        assert_eq!(summary.duplicates.resent, 20);
        assert_eq!(summary.bad_signatures.sent, 10);
        assert_eq!(
            summary.latency[4].count,
            summary.shiprocket_outage.orders_waited
        );
        let text = summary.render();
        assert!(
            text.contains("refused at checkout: out of stock (409)"),
            "{text}"
        );
        assert!(text.contains("Every order is accounted for"), "{text}");
        let json: serde_json::Value =
            serde_json::from_str(&serde_json::to_string(&summary).unwrap()).unwrap();
        assert_eq!(json["final_states"]["ready_to_ship"], 180);
    }

    #[test]
    fn each_broken_promise_is_named() {
        let (mut records, mut evidence) = good_run(200);
        // A second `paid` entry, a stored forgery, a stranded order, a duplicate at Shiprocket.
        if let Some(j) = evidence.journals.get_mut("DEMO-000000") {
            j.paid_entries = 2;
        }
        evidence.dead_letters = 1;
        if let Some(j) = evidence.journals.get_mut("DEMO-000001") {
            j.state = "awaiting_shipment".into();
        }
        evidence.sandbox.orders += 1;
        records[2].resend = Some(WebhookAnswer::Accepted);
        let summary = Summary::new(&run_facts(200), &records, &evidence);
        let all = summary.problems.join("\n");
        for needle in [
            "twice",
            "dead letters",
            "ended elsewhere",
            "/admin/status counts",
            "duplicates",
            "answered duplicate",
        ] {
            assert!(all.contains(needle), "{needle:?} missing from:\n{all}");
        }
        assert!(summary.render().contains("PROBLEMS"));
    }

    #[test]
    fn a_missing_order_is_not_accounted_for() {
        let (mut records, evidence) = good_run(50);
        records.pop();
        let summary = Summary::new(&run_facts(50), &records, &evidence);
        assert_eq!(summary.accounted_for, 49);
        assert!(
            summary.problems[0].contains("49 of 50"),
            "{:?}",
            summary.problems
        );
    }
}
