//! The operations surface (issue 5): the role matrix over every admin route,
//! the kill switch's "accept but do not advance", dead-letter replay, the audit
//! chain and its tamper detection, customer data encrypted on disk, and the
//! monitoring assets checked by Prometheus's own tool.

use std::path::Path;
use std::process::Command;

use serde_json::{json, Value};

use crate::helpers::*;

const ADMIN_UA: &str = "ops-cli/1.0";

#[derive(Clone, Copy, PartialEq)]
enum Needs {
    Viewer,
    Operator,
}

/// Every admin route of SPEC §9, with the role it needs and a body to send.
fn admin_routes() -> Vec<(&'static str, String, Needs, Option<Value>)> {
    use Needs::*;
    vec![
        ("GET", "/admin/status".into(), Viewer, None),
        ("GET", "/admin/orders".into(), Viewer, None),
        ("GET", "/admin/orders/XVC-R1".into(), Viewer, None),
        ("GET", "/admin/stock/TEE".into(), Viewer, None),
        ("GET", "/admin/stock/reconcile".into(), Viewer, None),
        ("GET", "/admin/dlq".into(), Viewer, None),
        ("GET", "/admin/audit".into(), Operator, None),
        (
            "POST",
            "/admin/orders/XVC-R1/retry-shipping".into(),
            Operator,
            None,
        ),
        (
            "POST",
            "/admin/orders/retry-shipping".into(),
            Operator,
            Some(json!({"state": "manual_required"})),
        ),
        (
            "POST",
            "/admin/orders/XVC-R1/mark-shipped".into(),
            Operator,
            Some(json!({"awb": "AWB1", "courier": "Delhivery"})),
        ),
        ("POST", "/admin/orders/XVC-R1/cancel".into(), Operator, None),
        (
            "PUT",
            "/admin/stock/TEE".into(),
            Operator,
            Some(json!({"on_hand": 10})),
        ),
        (
            "POST",
            "/admin/stock/TEE/adjust".into(),
            Operator,
            Some(json!({"delta": 1, "reason": "recount"})),
        ),
        ("POST", "/admin/dlq/999/replay".into(), Operator, None),
        ("POST", "/admin/processing/pause".into(), Operator, None),
        ("POST", "/admin/processing/resume".into(), Operator, None),
        (
            "PUT",
            "/admin/shipping-mode".into(),
            Operator,
            Some(json!({"mode": "auto"})),
        ),
    ]
}

async fn call(
    app: &TestApp,
    method: &str,
    path: &str,
    token: Option<&str>,
    body: Option<&Value>,
) -> reqwest::Response {
    let url = format!("{}{path}", app.admin);
    let mut request = match method {
        "GET" => app.client.get(url),
        "PUT" => app.client.put(url),
        _ => app.client.post(url),
    }
    .header("User-Agent", ADMIN_UA);
    if let Some(token) = token {
        request = request.bearer_auth(token);
    }
    if let Some(body) = body {
        request = request.json(body);
    }
    request.send().await.expect("admin request")
}

async fn json_of(response: reqwest::Response) -> (u16, Value) {
    let status = response.status().as_u16();
    (status, response.json().await.unwrap_or(Value::Null))
}

async fn audit_entries(app: &TestApp) -> Vec<Value> {
    let mut all = Vec::new();
    let mut after = 0i64;
    loop {
        let (status, page) = json_of(
            app.admin_get(
                &format!("/admin/audit?after={after}&limit=500"),
                Some(OPERATOR_TOKEN),
            )
            .await,
        )
        .await;
        assert_eq!(status, 200, "{page}");
        all.extend(page["entries"].as_array().cloned().unwrap_or_default());
        match page["next"].as_i64() {
            Some(next) => after = next,
            None => return all,
        }
    }
}

#[actix_web::test]
async fn every_admin_route_enforces_its_role_and_every_action_is_audited() {
    let app = spawn_app().await;
    app.set_stock("TEE", 5).await;
    app.checkout(&checkout_body("XVC-R1", "order_R1", "TEE", 1))
        .await;

    let routes = admin_routes();
    for (method, path, needs, body) in &routes {
        for token in [None, Some("not-a-token")] {
            let (status, answer) =
                json_of(call(&app, method, path, token, body.as_ref()).await).await;
            assert_eq!(status, 401, "{method} {path} with {token:?}");
            assert_eq!(answer["error"], "unauthorized", "{method} {path}");
        }
        let (viewer_status, answer) =
            json_of(call(&app, method, path, Some(VIEWER_TOKEN), body.as_ref()).await).await;
        match needs {
            Needs::Viewer => assert_eq!(viewer_status, 200, "{method} {path}: {answer}"),
            Needs::Operator => {
                assert_eq!(viewer_status, 403, "{method} {path}: {answer}");
                assert_eq!(answer["error"], "forbidden");
            }
        }
        let (operator_status, answer) =
            json_of(call(&app, method, path, Some(OPERATOR_TOKEN), body.as_ref()).await).await;
        assert!(
            ![401, 403].contains(&operator_status),
            "{method} {path}: operator got {operator_status} {answer}"
        );
        assert!(
            answer.get("error").is_none() || answer.get("message").is_some(),
            "{answer}"
        );
    }

    // Every action was recorded twice (the viewer's refusal, the operator's
    // call), with role, peer address and user agent; reads and 401s were not.
    let entries = audit_entries(&app).await;
    let admin: Vec<&Value> = entries
        .iter()
        .filter(|e| {
            e["action"]
                .as_str()
                .is_some_and(|a| a.starts_with("admin:"))
        })
        .filter(|e| e["user_agent"] == ADMIN_UA)
        .collect();
    let actions = routes
        .iter()
        .filter(|r| r.2 == Needs::Operator && r.0 != "GET");
    for (method, path, _, _) in actions {
        let recorded: Vec<&&Value> = admin
            .iter()
            .filter(|e| {
                let action = e["action"].as_str().unwrap_or_default();
                action.starts_with(&format!("admin:{method} "))
                    && path_matches(action.split_once(' ').map_or("", |(_, p)| p), path)
            })
            .collect();
        let roles: Vec<&str> = recorded
            .iter()
            .filter_map(|e| e["actor"].as_str())
            .collect();
        assert_eq!(
            roles,
            ["viewer", "operator"],
            "{method} {path}: {recorded:?}"
        );
        for entry in recorded {
            assert_eq!(entry["user_agent"], ADMIN_UA);
            let pattern = entry["action"]
                .as_str()
                .and_then(|a| a.split_once(' '))
                .map_or("", |(_, p)| p);
            let param = pattern
                .split('/')
                .zip(path.split('/'))
                .find(|(p, _)| p.starts_with('{'))
                .map(|(_, value)| value);
            assert_eq!(entry["subject"].as_str(), param, "{entry}");
            assert!(entry["peer"]
                .as_str()
                .is_some_and(|p| p.starts_with("127.0.0.1:")));
        }
    }
    let refused = admin
        .iter()
        .filter(|e| e["detail"]["status"] == 403)
        .count();
    assert_eq!(refused, admin.len() / 2);
    // The request body of an action is part of its record.
    assert!(admin
        .iter()
        .any(|e| e["detail"]["request"] == json!({"delta": 1, "reason": "recount"})));
}

/// Whether an actix route pattern (`/admin/stock/{sku}`) matches a concrete path.
fn path_matches(pattern: &str, path: &str) -> bool {
    let (p, c): (Vec<_>, Vec<_>) = (pattern.split('/').collect(), path.split('/').collect());
    p.len() == c.len()
        && p.iter()
            .zip(&c)
            .all(|(p, c)| p == c || (p.starts_with('{') && p.ends_with('}')))
}

/// Asserts that nothing but the checkout itself happened to `order_id` before
/// `resumed_at` (RFC 3339 from the same clock as the journal), once `order_id`
/// has moved after it: a stage that ignored the kill switch leaves an entry
/// stamped while paused. No sleep: the wait is for the move after the resume.
async fn moved_only_after(app: &TestApp, order_id: &str, resumed_at: &str) {
    let detail = app.admin_order(order_id, OPERATOR_TOKEN).await;
    let journal = detail["journal"].as_array().expect("journal");
    let early: Vec<_> = journal
        .iter()
        .filter(|e| e["kind"] != "created" && e["at"].as_str() < Some(resumed_at))
        .collect();
    assert!(early.is_empty(), "{order_id} moved while paused: {early:?}");
}

fn now_rfc3339() -> String {
    use dropshipd::domain::clock::{rfc3339, Clock, SystemClock};
    rfc3339(SystemClock.now_ms())
}

#[actix_web::test]
async fn paused_accepts_and_stores_but_nothing_advances_until_resumed_even_across_a_restart() {
    let app = spawn_app().await;
    app.set_stock("TEE", 10).await;
    let paused = app
        .admin_post("/admin/processing/pause", Some(OPERATOR_TOKEN))
        .await;
    assert_eq!(paused.status(), 200);

    // A prepaid checkout, its webhook, a COD checkout: all accepted.
    let created = app
        .checkout(&checkout_body("XVC-P1", "order_P1", "TEE", 1))
        .await;
    assert_eq!(created.status(), 201);
    let hook = app
        .post_webhook(&captured_for("pay_P1", "order_P1", 74_900), Some("evt_P1"))
        .await;
    assert_eq!(hook.status(), 200);
    let mut cod = checkout_body("XVC-P2", "unused", "TEE", 1);
    cod["payment_method"] = json!("cod");
    cod.as_object_mut().map(|o| o.remove("razorpay_order_id"));
    let (status, order) = json_of(app.checkout(&cod).await).await;
    assert_eq!(
        (status, order["state"].as_str()),
        (201, Some("pending_payment")),
        "{order}"
    );
    // The storefront's checkout callback is verified and kept too.
    app.checkout(&checkout_body("XVC-P3", "order_P3", "TEE", 1))
        .await;
    let signature =
        dropshipd::domain::signature::sign(RAZORPAY_KEY_SECRET.as_bytes(), b"order_P3|pay_P3");
    let callback = app
        .client
        .post(format!("{}/api/orders/XVC-P3/payment", app.public))
        .bearer_auth(STOREFRONT_TOKEN)
        .json(
            &json!({"razorpay_payment_id": "pay_P3", "razorpay_order_id": "order_P3",
                      "razorpay_signature": signature}),
        )
        .send()
        .await
        .expect("callback");
    let (status, answer) = json_of(callback).await;
    assert_eq!(status, 202, "{answer}");
    assert_eq!(answer["processing_paused"], true);

    for id in ["XVC-P1", "XVC-P2", "XVC-P3"] {
        assert_eq!(
            app.order_status(id).await["state"],
            "pending_payment",
            "{id}"
        );
    }
    assert_eq!(app.status().await["inbox_pending"], 1);

    // Restart while paused: still paused, still nothing advances.
    let dir = app.stop().await;
    let app = spawn_app_in(dir, |_| {}).await;
    assert_eq!(app.status().await["processing_paused"], true);
    for id in ["XVC-P1", "XVC-P2", "XVC-P3"] {
        assert_eq!(
            app.order_status(id).await["state"],
            "pending_payment",
            "{id}"
        );
    }

    let resumed_at = now_rfc3339();
    let resumed = app
        .admin_post("/admin/processing/resume", Some(OPERATOR_TOKEN))
        .await;
    assert_eq!(resumed.status(), 200);
    for id in ["XVC-P1", "XVC-P2", "XVC-P3"] {
        app.wait_for_state(id, "paid").await;
        moved_only_after(&app, id, &resumed_at).await;
    }
    assert_eq!(app.status().await["inbox_pending"], 0);
    // Each payment counted once: three units sold.
    assert_eq!(app.stock("TEE").await["on_hand"], 7);
}

#[actix_web::test]
async fn a_dead_letter_replays_through_the_normal_path_and_records_the_outcome() {
    let app = spawn_app().await;
    app.set_stock("TEE", 5).await;
    // The payment arrives before the storefront registered its order.
    app.post_webhook(&captured_for("pay_D1", "order_D1", 74_900), Some("evt_D1"))
        .await;
    app.wait_inbox_drained().await;
    let letter = app
        .dead_letters()
        .await
        .into_iter()
        .find(|l| l["event_id"] == "evt_D1")
        .expect("the payment was dead-lettered");
    assert_eq!(letter["reason"], "unknown_order");
    let id = letter["id"].as_i64().expect("id");
    let replay = |app: &TestApp| {
        let path = format!("/admin/dlq/{id}/replay");
        let app_admin = app.admin.clone();
        let client = app.client.clone();
        async move {
            json_of(
                client
                    .post(format!("{app_admin}{path}"))
                    .bearer_auth(OPERATOR_TOKEN)
                    .send()
                    .await
                    .expect("replay"),
            )
            .await
        }
    };

    // Replayed too early: still unknown, recorded, still open.
    let (status, outcome) = replay(&app).await;
    assert_eq!(status, 200, "{outcome}");
    assert_eq!(outcome["resolved"], false);
    assert!(outcome["outcome"]
        .as_str()
        .unwrap_or_default()
        .starts_with("unknown_order"));
    let open = app.dead_letters().await;
    let still = open.iter().find(|l| l["id"] == id).expect("still open");
    assert_eq!(still["replays"], 1);
    assert_eq!(
        open.len(),
        1,
        "a failed replay files no new letter: {open:?}"
    );

    // Once the order exists, the replay pays it, once.
    app.checkout(&checkout_body("XVC-D1", "order_D1", "TEE", 1))
        .await;
    let (status, outcome) = replay(&app).await;
    assert_eq!(
        (status, outcome["outcome"].as_str()),
        (200, Some("applied")),
        "{outcome}"
    );
    assert_eq!(outcome["resolved"], true);
    assert_eq!(app.order_status("XVC-D1").await["state"], "paid");
    assert!(app.dead_letters().await.is_empty());
    let (status, again) = replay(&app).await;
    assert_eq!(
        (status, again["error"].as_str()),
        (409, Some("already_resolved"))
    );
    let (status, missing) = json_of(
        app.client
            .post(format!("{}/admin/dlq/424242/replay", app.admin))
            .bearer_auth(OPERATOR_TOKEN)
            .send()
            .await
            .expect("replay"),
    )
    .await;
    assert_eq!(
        (status, missing["error"].as_str()),
        (404, Some("not_found"))
    );
    assert_eq!(app.stock("TEE").await["on_hand"], 4);
}

fn audit_verify(db: &Path) -> (bool, String) {
    let output = Command::new(env!("CARGO_BIN_EXE_dropshipd"))
        .args(["audit", "verify", "--db"])
        .arg(db)
        .env_clear()
        .output()
        .expect("run audit verify");
    (
        output.status.success(),
        String::from_utf8_lossy(&output.stdout).trim().to_owned(),
    )
}

/// A copy of `db` (with what its WAL holds) to tamper with.
fn copy_of(db: &Path, name: &str) -> std::path::PathBuf {
    let copy = db.with_file_name(name);
    let conn = rusqlite::Connection::open(db).expect("open db");
    conn.execute("VACUUM INTO ?1", [copy.to_string_lossy()])
        .expect("copy db");
    copy
}

/// Edits the database behind the daemon's back, as an intruder with file access would.
fn tamper(db: &Path, sql: &str) {
    let conn = rusqlite::Connection::open(db).expect("open db");
    conn.execute_batch(&format!(
        "DROP TRIGGER IF EXISTS audit_log_no_update; DROP TRIGGER IF EXISTS audit_log_no_delete; {sql}"
    ))
    .expect("tamper");
}

#[actix_web::test]
async fn the_audit_chain_records_money_and_actions_and_catches_edits_and_deletions() {
    let app = spawn_app().await;
    app.set_stock("TEE", 5).await;
    app.checkout_and_pay("A1").await;
    app.wait_for_state("XVC-A1", "paid").await;
    app.admin_post("/admin/processing/pause", Some(OPERATOR_TOKEN))
        .await;
    app.admin_post("/admin/processing/resume", Some(OPERATOR_TOKEN))
        .await;

    let entries = audit_entries(&app).await;
    let actions: Vec<&str> = entries
        .iter()
        .filter_map(|e| e["action"].as_str())
        .collect();
    assert!(actions.contains(&"stock.change"), "{actions:?}");
    assert!(actions.contains(&"order.paid"), "{actions:?}");
    assert!(
        actions.contains(&"admin:POST /admin/processing/pause"),
        "{actions:?}"
    );
    let paid = entries
        .iter()
        .find(|e| e["action"] == "order.paid")
        .expect("payment audited");
    assert_eq!(paid["subject"], "XVC-A1");
    assert_eq!(paid["actor"], "webhook:evt_A1");
    assert_eq!(entries[0]["prev_hash"], "0".repeat(64));
    for pair in entries.windows(2) {
        assert_eq!(pair[1]["prev_hash"], pair[0]["hash"]);
    }
    // No customer data in the audit log.
    assert!(!serde_json::to_string(&entries)
        .unwrap_or_default()
        .contains("asha@example.com"));

    let count = entries.len();
    let db = app.db_path.clone();
    let _dir = app.stop().await;
    assert_eq!(audit_verify(&db), (true, format!("ok {count} entries")));

    // The table refuses casual edits outright.
    let conn = rusqlite::Connection::open(&db).expect("open db");
    assert!(conn
        .execute("UPDATE audit_log SET actor = 'nobody' WHERE seq = 1", [])
        .is_err());
    assert!(conn
        .execute("DELETE FROM audit_log WHERE seq = 1", [])
        .is_err());
    drop(conn);

    // An edited field.
    let copy = copy_of(&db, "edited.db");
    tamper(
        &copy,
        "UPDATE audit_log SET actor = 'webhook:forged' WHERE action = 'order.paid'",
    );
    let (ok, report) = audit_verify(&copy);
    let seq = paid["seq"].as_i64().expect("seq");
    assert!(!ok);
    assert!(
        report.contains(&format!("entry {seq}")) && report.contains("edited"),
        "{report}"
    );

    // A deleted entry in the middle.
    let copy = copy_of(&db, "deleted.db");
    tamper(&copy, "DELETE FROM audit_log WHERE seq = 2");
    let (ok, report) = audit_verify(&copy);
    assert!(!ok);
    assert!(report.contains("entries 2..=2 are missing"), "{report}");

    // The last entries deleted.
    let copy = copy_of(&db, "truncated.db");
    tamper(
        &copy,
        &format!("DELETE FROM audit_log WHERE seq > {}", count - 2),
    );
    let (ok, report) = audit_verify(&copy);
    assert!(!ok);
    assert!(report.contains("were removed"), "{report}");
}

#[actix_web::test]
async fn customer_data_is_encrypted_on_disk_and_shown_only_to_operators() {
    let app = spawn_app().await;
    app.set_stock("TEE", 5).await;
    let email = "meera.iyer.7731@example.org";
    let phone = "9123456780";
    let line1 = "Flat 4B, Lotus Residency Lane";
    let mut checkout = checkout_body("XVC-E1", "order_E1", "TEE", 1);
    checkout["customer"] = json!({"name": "Meera Iyer", "email": email, "phone": phone});
    checkout["shipping_address"]["line1"] = json!(line1);
    assert_eq!(app.checkout(&checkout).await.status(), 201);
    // Razorpay's payment entity carries the e-mail and phone as well.
    let hook = captured_for("pay_E1", "order_E1", 74_900)
        .replace("asha.rao@example.in", email)
        .replace("+919812345678", &format!("+91{phone}"));
    app.post_webhook(&hook, Some("evt_E1")).await;
    // And one that lands in the dead-letter queue with its body.
    let stranger = captured_for("pay_E2", "order_NOBODY", 74_900)
        .replace("asha.rao@example.in", email)
        .replace(r#""created_at":"#, r#""created_at":1"#);
    app.post_webhook(&stranger, Some("evt_E2")).await;
    app.wait_for_state("XVC-E1", "paid").await;

    let operator = app.admin_order("XVC-E1", OPERATOR_TOKEN).await;
    assert_eq!(operator["order"]["customer"]["customer"]["email"], email);
    let viewer = app.admin_order("XVC-E1", VIEWER_TOKEN).await;
    let shown = viewer.to_string();
    assert!(
        !shown.contains(email) && !shown.contains(phone) && !shown.contains(line1),
        "{shown}"
    );

    let db = app.db_path.clone();
    let dir = app.stop().await;
    let mut bytes = Vec::new();
    for entry in std::fs::read_dir(dir.path()).expect("list dir") {
        let path = entry.expect("entry").path();
        if path
            .file_name()
            .and_then(|n| n.to_str())
            .is_some_and(|n| n.starts_with("dropshipd.db"))
        {
            bytes.extend(std::fs::read(&path).expect("read db file"));
        }
    }
    assert!(
        bytes.len() > 4096,
        "database files found next to {}",
        db.display()
    );
    let contains = |needle: &str| bytes.windows(needle.len()).any(|w| w == needle.as_bytes());
    for needle in [email, phone, line1, "Meera Iyer"] {
        assert!(
            !contains(needle),
            "{needle:?} is readable in the database or WAL"
        );
    }
    // The check can see plaintext: ids and SKUs are stored as they are.
    assert!(contains("XVC-E1") && contains("order_E1"));

    // The same key reads it all back after a restart.
    let app = spawn_app_in(dir, |_| {}).await;
    let operator = app.admin_order("XVC-E1", OPERATOR_TOKEN).await;
    assert_eq!(
        operator["order"]["customer"]["shipping_address"]["line1"],
        line1
    );
}

/// Where `promtool` is, if installed. CI installs it and sets
/// `DROPSHIPD_REQUIRE_PROMTOOL=1`, which turns its absence into a failure.
fn promtool() -> Option<&'static str> {
    let found = Command::new("promtool")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    if !found {
        assert!(
            std::env::var_os("DROPSHIPD_REQUIRE_PROMTOOL").is_none(),
            "promtool is required here (apt-get install prometheus)"
        );
        eprintln!("promtool not installed: monitoring checks skipped");
        return None;
    }
    Some("promtool")
}

fn run_promtool(tool: &str, args: &[&str], stdin: Option<&str>) -> (bool, String) {
    use std::io::Write;
    let mut child = Command::new(tool)
        .args(args)
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("run promtool");
    if let Some(mut input) = child.stdin.take() {
        input
            .write_all(stdin.unwrap_or_default().as_bytes())
            .expect("write to promtool");
    }
    let output = child.wait_with_output().expect("promtool output");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    (output.status.success(), text)
}

#[actix_web::test]
async fn alert_rules_and_a_live_scrape_pass_promtool() {
    let Some(tool) = promtool() else { return };
    let (ok, out) = run_promtool(tool, &["check", "rules", "monitoring/alerts.yml"], None);
    assert!(ok, "{out}");
    let (ok, out) = run_promtool(tool, &["test", "rules", "monitoring/alerts.test.yml"], None);
    assert!(ok, "{out}");

    let scrape = scrape_after_one_shipped_order("M1").await;
    let (ok, out) = run_promtool(tool, &["check", "metrics"], Some(&scrape));
    assert!(
        ok,
        "promtool check metrics:\n{out}\n--- scrape ---\n{scrape}"
    );
}

/// A daemon with a Shiprocket account (the sandbox) that took one order from
/// checkout to ready_to_ship: every metric family has series by then.
async fn scrape_after_one_shipped_order(tag: &str) -> String {
    let (_sandbox, url) = start_sandbox(dropshipd::sandbox::Faults::default());
    let app = spawn_app_with(|settings| with_shiprocket(settings, &url)).await;
    app.set_stock("TEE", 5).await;
    let id = app.checkout_and_pay(tag).await;
    app.wait_for_state(&id, "ready_to_ship").await;
    app.metrics().await
}

#[actix_web::test]
async fn every_spec_metric_is_exposed_with_its_type_and_bounded_labels() {
    let scrape = scrape_after_one_shipped_order("M2").await;
    let spec = [
        (
            "dropship_webhook_requests_total",
            "counter",
            &["outcome"][..],
        ),
        ("dropship_webhook_ack_seconds", "histogram", &[]),
        ("dropship_order_creation_seconds", "histogram", &[]),
        ("dropship_shipping_creation_seconds", "histogram", &[]),
        ("dropship_order_transitions_total", "counter", &["to"]),
        ("dropship_orders", "gauge", &["state"]),
        ("dropship_revenue_paise_total", "counter", &[]),
        ("dropship_stock_reservations_total", "counter", &["result"]),
        ("dropship_stock_reconcile_mismatches", "gauge", &[]),
        (
            "dropship_shiprocket_requests_total",
            "counter",
            &["account", "call", "outcome"],
        ),
        (
            "dropship_shiprocket_request_seconds",
            "histogram",
            &["call"],
        ),
        ("dropship_shiprocket_circuit_state", "gauge", &["account"]),
        ("dropship_inbox_pending", "gauge", &[]),
        ("dropship_dlq_entries", "gauge", &[]),
        ("dropship_actors_live", "gauge", &["kind"]),
        ("dropship_processing_paused", "gauge", &[]),
        ("dropship_shipping_queue", "gauge", &["account"]),
        ("dropship_shipping_queue_oldest_seconds", "gauge", &[]),
        ("dropship_cluster_leases", "gauge", &["kind"]),
    ];
    for (name, kind, _) in &spec {
        assert!(
            scrape.contains(&format!("# TYPE {name} {kind}")),
            "missing # TYPE {name} {kind}\n{scrape}"
        );
    }
    // Labels are the contract's, and never an order id or SKU.
    for line in scrape.lines().filter(|l| l.starts_with("dropship_")) {
        assert!(
            !line.contains("XVC-M2") && !line.contains("TEE\""),
            "{line}"
        );
        let Some((series, _)) = line.split_once('{') else {
            continue;
        };
        let base = ["_bucket", "_sum", "_count"]
            .iter()
            .find_map(|suffix| series.strip_suffix(suffix))
            .filter(|b| spec.iter().any(|(n, k, _)| n == b && *k == "histogram"))
            .unwrap_or(series);
        let Some((_, _, labels)) = spec.iter().find(|(n, _, _)| *n == base) else {
            panic!("{series} is not a SPEC metric: {line}");
        };
        let inside = line
            .split_once('{')
            .map_or("", |(_, r)| r)
            .split('}')
            .next()
            .unwrap_or("");
        for pair in inside.split(',').filter(|p| !p.is_empty()) {
            let key = pair.split('=').next().unwrap_or_default();
            assert!(
                key == "le" || labels.contains(&key),
                "unexpected label {key} in {line}"
            );
        }
    }
    assert_eq!(
        metric_value(&scrape, "dropship_revenue_paise_total"),
        Some(74_900.0)
    );
    assert_eq!(
        metric_value(&scrape, "dropship_stock_reservations_total{result=\"ok\"}"),
        Some(1.0)
    );
}

#[actix_web::test]
async fn a_payment_held_by_the_kill_switch_beats_the_reservation_clock_on_resume() {
    let clock = dropshipd::domain::clock::ManualClock::at_ms(now_secs() * 1000);
    let app = spawn_app_at(clock.clone(), |settings| {
        settings.config.api.reservation_ttl_secs = 900;
        settings.config.processing.expiry_check_ms = 20;
    })
    .await;
    app.set_stock("TEE", 1).await;
    app.admin_post("/admin/processing/pause", Some(OPERATOR_TOKEN))
        .await;
    app.checkout_and_pay("K1").await;
    // The pause outlasts the reservation.
    clock.advance_ms(3_600_000);
    app.admin_post("/admin/processing/resume", Some(OPERATOR_TOKEN))
        .await;
    app.wait_for_state("XVC-K1", "paid").await;
    let journal = app.admin_order("XVC-K1", OPERATOR_TOKEN).await;
    let kinds: Vec<&str> = journal["journal"]
        .as_array()
        .map(|j| j.iter().filter_map(|e| e["kind"].as_str()).collect())
        .unwrap_or_default();
    assert!(!kinds.contains(&"reservation_expired"), "{kinds:?}");
    assert_eq!(app.stock("TEE").await["on_hand"], 0);
}

#[actix_web::test]
async fn errors_raised_before_a_handler_runs_have_the_json_error_shape() {
    let app = spawn_app_with(|settings| settings.config.server.max_body_bytes = 64).await;
    let (status, body) = json_of(
        app.admin_get("/admin/orders?limit=many", Some(VIEWER_TOKEN))
            .await,
    )
    .await;
    assert_eq!(
        (status, body["error"].as_str()),
        (400, Some("bad_request")),
        "{body}"
    );
    assert!(body["message"].is_string());
    let (status, body) = json_of(
        app.admin_post("/admin/dlq/x/replay", Some(OPERATOR_TOKEN))
            .await,
    )
    .await;
    assert_eq!(
        (status, body["error"].as_str()),
        (404, Some("not_found")),
        "{body}"
    );
    let (status, body) = json_of(
        app.checkout(&checkout_body("XVC-J1", "order_J1", "TEE", 1))
            .await,
    )
    .await;
    assert_eq!(
        (status, body["error"].as_str()),
        (413, Some("payload_too_large")),
        "{body}"
    );
    let (status, body) = json_of(
        app.client
            .put(format!("{}/admin/shipping-mode", app.admin))
            .bearer_auth(OPERATOR_TOKEN)
            .body("not json")
            .send()
            .await
            .expect("request"),
    )
    .await;
    assert_eq!(
        (status, body["error"].as_str()),
        (422, Some("validation_failed")),
        "{body}"
    );
    assert!(body["fields"]["body"][0].is_string(), "{body}");
}

#[actix_web::test]
async fn paid_orders_found_at_a_paused_start_ship_once_resumed() {
    // Paid while no Shiprocket account was configured.
    let app = spawn_app().await;
    app.set_stock("TEE", 5).await;
    app.checkout_and_pay("Q1").await;
    app.wait_for_state("XVC-Q1", "paid").await;
    app.admin_post("/admin/processing/pause", Some(OPERATOR_TOKEN))
        .await;
    let dir = app.stop().await;

    // Restarted paused, now with an account: nothing ships until resumed.
    let (_sandbox, url) = start_sandbox(dropshipd::sandbox::Faults::default());
    let app = spawn_app_in(dir, |settings| with_shiprocket(settings, &url)).await;
    assert_eq!(app.order_status("XVC-Q1").await["state"], "paid");
    let resumed_at = now_rfc3339();
    app.admin_post("/admin/processing/resume", Some(OPERATOR_TOKEN))
        .await;
    app.wait_for_state("XVC-Q1", "ready_to_ship").await;
    let detail = app.admin_order("XVC-Q1", OPERATOR_TOKEN).await;
    let calls: Vec<_> = detail["journal"]
        .as_array()
        .expect("journal")
        .iter()
        .filter(|e| e["kind"] == "shipping_attempt")
        .collect();
    assert!(!calls.is_empty(), "{detail}");
    assert!(
        calls
            .iter()
            .all(|e| e["at"].as_str() >= Some(resumed_at.as_str())),
        "Shiprocket was called while paused: {calls:?}"
    );
}
