//! The operator's console over HTTP (SPEC §9 "The console"): sign-in and
//! out, session expiry, CSRF, the role on every action, the audit log and
//! masking. `console_browser` drives the same pages in Chromium.

use dropshipd::domain::clock::ManualClock;
use reqwest::header::{COOKIE, LOCATION, SET_COOKIE, USER_AGENT};
use reqwest::redirect::Policy;

use crate::helpers::*;

/// A browser as the console sees it: a cookie and the page's CSRF token.
pub struct Browser {
    client: reqwest::Client,
    admin: String,
    cookie: String,
    pub csrf: String,
}

/// A client that shows redirects instead of following them.
fn plain_client() -> reqwest::Client {
    reqwest::Client::builder()
        .redirect(Policy::none())
        .build()
        .expect("client")
}

/// The CSRF token a page's forms carry.
fn csrf_of(html: &str) -> Option<String> {
    let at = html.find(r#"name="csrf" value=""#)? + r#"name="csrf" value=""#.len();
    Some(html[at..at + 64].to_owned())
}

impl Browser {
    pub async fn sign_in(app: &TestApp, token: &str) -> Browser {
        let client = plain_client();
        let answer = client
            .post(format!("{}/console/sign-in", app.admin))
            .header(USER_AGENT, "console-test/1.0")
            .form(&[("token", token)])
            .send()
            .await
            .expect("sign in");
        assert_eq!(answer.status(), 303, "signed in");
        assert_eq!(answer.headers()[LOCATION], "/console");
        let set = answer.headers()[SET_COOKIE]
            .to_str()
            .expect("cookie")
            .to_owned();
        let cookie = set.split(';').next().expect("cookie pair").to_owned();
        let mut browser = Browser {
            client,
            admin: app.admin.clone(),
            cookie,
            csrf: String::new(),
        };
        let (status, page) = browser.get("/console").await;
        assert_eq!(status, 200, "{page}");
        browser.csrf = csrf_of(&page).expect("the page's forms carry a CSRF token");
        browser
    }

    pub async fn get(&self, path: &str) -> (u16, String) {
        let answer = self
            .client
            .get(format!("{}{path}", self.admin))
            .header(COOKIE, &self.cookie)
            .send()
            .await
            .expect("page");
        let status = answer.status().as_u16();
        (status, answer.text().await.expect("page text"))
    }

    /// Posts `fields` with this session's CSRF token: the status and where
    /// it redirects to.
    pub async fn post(&self, path: &str, fields: &[(&str, &str)]) -> (u16, Option<String>) {
        let mut form: Vec<(&str, &str)> = vec![("csrf", self.csrf.as_str())];
        form.extend_from_slice(fields);
        self.post_raw(path, &form).await
    }

    pub async fn post_raw(&self, path: &str, form: &[(&str, &str)]) -> (u16, Option<String>) {
        let answer = self
            .client
            .post(format!("{}{path}", self.admin))
            .header(COOKIE, &self.cookie)
            .header(USER_AGENT, "console-test/1.0")
            .form(form)
            .send()
            .await
            .expect("post");
        let to = answer
            .headers()
            .get(LOCATION)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        (answer.status().as_u16(), to)
    }
}

#[actix_web::test]
async fn signing_in_gives_an_opaque_strict_cookie_and_signing_out_ends_it() {
    let app = spawn_app().await;
    let client = plain_client();

    let answer = client
        .get(format!("{}/console", app.admin))
        .send()
        .await
        .expect("get");
    assert_eq!(answer.status(), 303, "not signed in");
    assert_eq!(answer.headers()[LOCATION], "/console/sign-in");
    let form = client
        .get(format!("{}/console/sign-in", app.admin))
        .send()
        .await
        .expect("form");
    assert_eq!(form.status(), 200);
    let form = form.text().await.expect("form text");
    assert!(
        form.contains(r#"<label for="token">"#),
        "the token field is labelled: {form}"
    );

    let refused = client
        .post(format!("{}/console/sign-in", app.admin))
        .form(&[("token", "not-a-token")])
        .send()
        .await
        .expect("refused");
    assert_eq!(refused.status(), 401);
    assert!(refused.headers().get(SET_COOKIE).is_none());
    assert!(refused
        .text()
        .await
        .expect("text")
        .contains("neither the viewer token nor the operator token"));

    let answer = client
        .post(format!("{}/console/sign-in", app.admin))
        .form(&[("token", OPERATOR_TOKEN)])
        .send()
        .await
        .expect("sign in");
    assert_eq!(answer.status(), 303);
    let cookie = answer.headers()[SET_COOKIE]
        .to_str()
        .expect("cookie")
        .to_owned();
    for attribute in ["HttpOnly", "SameSite=Strict", "Path=/console"] {
        assert!(cookie.contains(attribute), "{attribute} in {cookie}");
    }
    assert!(!cookie.contains("Secure"), "plain HTTP: {cookie}");
    assert!(
        !cookie.contains(OPERATOR_TOKEN),
        "the cookie holds a session id, not the token"
    );

    let browser = Browser::sign_in(&app, OPERATOR_TOKEN).await;
    let (status, page) = browser.get("/console").await;
    assert_eq!(status, 200);
    for shown in [
        "Orders by state",
        "Shiprocket accounts",
        "The last hour",
        "Running",
        "Signed in as",
    ] {
        assert!(page.contains(shown), "{shown} on the overview");
    }

    assert_eq!(
        browser.post_raw("/console/sign-out", &[]).await.0,
        403,
        "no CSRF token"
    );
    assert_eq!(browser.get("/console").await.0, 200, "still signed in");
    let (status, to) = browser.post("/console/sign-out", &[]).await;
    assert_eq!((status, to.as_deref()), (303, Some("/console/sign-in")));
    let (status, _) = browser.get("/console").await;
    assert_eq!(status, 303, "the session ended on the server");
    app.stop().await;
}

#[actix_web::test]
async fn a_session_idle_past_its_time_is_signed_out() {
    let clock = ManualClock::at_ms(now_secs() * 1000);
    let app = spawn_app_at(clock.clone(), |s| s.config.admin.console_idle_minutes = 10).await;
    let browser = Browser::sign_in(&app, VIEWER_TOKEN).await;
    clock.advance_ms(9 * 60_000);
    assert_eq!(
        browser.get("/console/dlq").await.0,
        200,
        "used within 10 minutes"
    );
    clock.advance_ms(9 * 60_000);
    assert_eq!(
        browser.get("/console/dlq").await.0,
        200,
        "idle time counts from the last use"
    );
    clock.advance_ms(10 * 60_000 + 1);
    assert_eq!(browser.get("/console/dlq").await.0, 303, "idle too long");
    app.stop().await;
}

#[actix_web::test]
async fn an_action_without_the_sessions_csrf_token_is_refused() {
    let app = spawn_app().await;
    let browser = Browser::sign_in(&app, OPERATOR_TOKEN).await;
    let other = Browser::sign_in(&app, OPERATOR_TOKEN).await;
    let pause = [("confirm", "yes")];
    assert_eq!(
        browser
            .post_raw("/console/processing/pause", &pause)
            .await
            .0,
        403
    );
    let foreign = [("csrf", other.csrf.as_str()), ("confirm", "yes")];
    assert_eq!(
        browser
            .post_raw("/console/processing/pause", &foreign)
            .await
            .0,
        403,
        "another session's token"
    );
    assert_eq!(
        app.status().await["processing_paused"],
        false,
        "nothing changed"
    );

    // The first post asks to confirm; only the confirmation acts.
    let (status, _) = browser.post("/console/processing/pause", &[]).await;
    assert_eq!(status, 200);
    assert_eq!(app.status().await["processing_paused"], false);
    let (status, to) = browser.post("/console/processing/pause", &pause).await;
    assert_eq!((status, to.as_deref()), (303, Some("/console/controls")));
    assert_eq!(app.status().await["processing_paused"], true);
    let (_, page) = browser.get("/console/controls").await;
    assert!(
        page.contains("Processing is paused."),
        "the outcome shows once"
    );
    let (_, page) = browser.get("/console/controls").await;
    assert!(!page.contains("Processing is paused."), "and only once");
    app.stop().await;
}

/// Every action the console offers, with a form an operator could send.
const ACTIONS: [(&str, &[(&str, &str)]); 11] = [
    ("/console/orders/retry-shipping", &[("order", "XVC-1")]),
    (
        "/console/orders/retry-shipping",
        &[("all", "manual_required")],
    ),
    ("/console/orders/XVC-1/retry-shipping", &[]),
    (
        "/console/orders/XVC-1/mark-shipped",
        &[("awb", "AWB1"), ("courier", "Delhivery")],
    ),
    ("/console/orders/XVC-1/cancel", &[]),
    ("/console/dlq/1/replay", &[]),
    (
        "/console/stock/TEE/adjust",
        &[("delta", "5"), ("reason", "count")],
    ),
    ("/console/stock/TEE/set", &[("on_hand", "50")]),
    ("/console/processing/pause", &[("confirm", "yes")]),
    ("/console/processing/resume", &[("confirm", "yes")]),
    (
        "/console/shipping-mode",
        &[("mode", "manual"), ("confirm", "yes")],
    ),
];

#[actix_web::test]
async fn a_viewer_is_offered_no_action_and_refused_every_one() {
    let app = spawn_app().await;
    app.set_stock("TEE", 10).await;
    let viewer = Browser::sign_in(&app, VIEWER_TOKEN).await;
    for (path, fields) in ACTIONS {
        assert_eq!(viewer.post(path, fields).await.0, 403, "{path} {fields:?}");
    }
    assert_eq!(
        viewer.get("/console/audit").await.0,
        403,
        "the audit log is the operator's"
    );
    assert_eq!(app.status().await["processing_paused"], false);
    assert_eq!(app.status().await["shipping_mode"], "auto");
    assert_eq!(app.stock("TEE").await["on_hand"], 10);

    for page in [
        "/console",
        "/console/attention",
        "/console/dlq",
        "/console/stock",
        "/console/controls",
    ] {
        let (status, html) = viewer.get(page).await;
        assert_eq!(status, 200, "{page}");
        // The only form a viewer gets is signing out.
        assert_eq!(
            html.matches("<form").count(),
            if page == "/console/stock" { 2 } else { 1 },
            "{page}: {html}"
        );
        assert!(
            !html.contains("Audit log"),
            "{page} links no audit log for a viewer"
        );
    }
    let operator = Browser::sign_in(&app, OPERATOR_TOKEN).await;
    let (_, html) = operator.get("/console/controls").await;
    assert!(html.contains("Pause processing"));
    assert!(html.contains("Audit log"));
    app.stop().await;
}

#[actix_web::test]
async fn console_actions_are_audited_like_api_actions() {
    let app = spawn_app().await;
    app.set_stock("TEE", 10).await;
    let operator = Browser::sign_in(&app, OPERATOR_TOKEN).await;
    let (status, _) = operator
        .post(
            "/console/stock/TEE/adjust",
            &[
                ("delta", "-3"),
                ("reason", "damaged in transit"),
                ("back", "/console/stock"),
            ],
        )
        .await;
    assert_eq!(status, 303);
    assert_eq!(app.stock("TEE").await["on_hand"], 7);
    // Refused by the API's own validation, and shown as its message.
    let (status, to) = operator
        .post(
            "/console/stock/TEE/adjust",
            &[("delta", "0"), ("reason", ""), ("back", "/console/stock")],
        )
        .await;
    assert_eq!((status, to.as_deref()), (303, Some("/console/stock")));
    let (_, page) = operator.get("/console/stock").await;
    assert!(
        page.contains("Refused (422): delta must be non-zero and reason given"),
        "{page}"
    );
    let viewer = Browser::sign_in(&app, VIEWER_TOKEN).await;
    assert_eq!(
        viewer
            .post("/console/stock/TEE/set", &[("on_hand", "0")])
            .await
            .0,
        403
    );

    let audit = app
        .admin_get("/admin/audit?limit=1000", Some(OPERATOR_TOKEN))
        .await;
    let audit: serde_json::Value = audit.json().await.expect("audit");
    let entries = audit["entries"].as_array().expect("entries");
    let of = |action: &str| -> Vec<&serde_json::Value> {
        entries.iter().filter(|e| e["action"] == action).collect()
    };
    let adjusted = of("admin:POST /console/stock/{sku}/adjust");
    assert_eq!(adjusted.len(), 2, "the change and the refusal: {entries:?}");
    let change = adjusted[0];
    assert_eq!(change["actor"], "operator");
    assert_eq!(change["subject"], "TEE");
    assert_eq!(change["user_agent"], "console-test/1.0");
    assert!(change["peer"]
        .as_str()
        .is_some_and(|p| p.starts_with("127.0.0.1:")));
    assert_eq!(change["detail"]["request"]["reason"], "damaged in transit");
    assert!(
        change["detail"]["request"].get("csrf").is_none(),
        "no CSRF token in the log"
    );
    assert_eq!(adjusted[1]["detail"]["status"], 422);
    let refused = of("admin:POST /console/stock/{sku}/set");
    assert_eq!(refused.len(), 1);
    assert_eq!(refused[0]["actor"], "viewer");
    assert_eq!(refused[0]["detail"]["status"], 403);
    let signed_in = of("admin:POST /console/sign-in");
    assert_eq!(signed_in.len(), 2, "each sign-in");
    assert!(
        !audit.to_string().contains(OPERATOR_TOKEN) && !audit.to_string().contains(VIEWER_TOKEN),
        "no token in the log"
    );
    app.stop().await;
}

#[actix_web::test]
async fn a_viewer_sees_the_customer_masked_and_an_operator_in_full() {
    let app = spawn_app().await;
    app.set_stock("TEE", 10).await;
    let answer = app
        .checkout(&checkout_body("XVC-C1", "order_c1", "TEE", 1))
        .await;
    assert_eq!(answer.status(), 201);

    let viewer = Browser::sign_in(&app, VIEWER_TOKEN).await;
    let (status, page) = viewer.get("/console/orders/XVC-C1").await;
    assert_eq!(status, 200);
    assert!(page.contains("pending_payment"));
    assert!(page.contains("A***") && page.contains("98***"), "{page}");
    for secret in ["Asha Rao", "asha@example.com", "9876543210", "12 MG Road"] {
        assert!(!page.contains(secret), "{secret} shown to a viewer");
    }
    let operator = Browser::sign_in(&app, OPERATOR_TOKEN).await;
    let (_, page) = operator.get("/console/orders/XVC-C1").await;
    for shown in ["Asha Rao", "asha@example.com", "9876543210", "12 MG Road"] {
        assert!(page.contains(shown), "{shown} shown to the operator");
    }
    let (status, page) = operator.get("/console/orders/XVC-NONE").await;
    assert_eq!(status, 404, "{page}");
    app.stop().await;
}

#[actix_web::test]
async fn the_overview_counts_the_last_hours_checkouts_and_payments() {
    let app = spawn_app().await;
    app.set_stock("TEE", 10).await;
    for n in 0..3 {
        let answer = app
            .checkout(&checkout_body(
                &format!("XVC-H{n}"),
                &format!("order_h{n}"),
                "TEE",
                1,
            ))
            .await;
        assert_eq!(answer.status(), 201);
    }
    let body = captured_for("pay_h0", "order_h0", 74_900);
    assert_eq!(app.post_webhook(&body, Some("evt_h0")).await.status(), 200);
    app.wait_inbox_drained().await;
    let operator = Browser::sign_in(&app, OPERATOR_TOKEN).await;
    let (_, page) = operator.get("/console").await;
    let fact = |name: &str| -> String {
        let at = page
            .find(&format!("<dt>{name}</dt><dd>"))
            .unwrap_or_else(|| panic!("{name} in {page}"));
        let rest = &page[at + name.len() + 13..];
        rest[..rest.find("</dd>").expect("end")].to_owned()
    };
    assert_eq!(fact("Checkouts"), "3");
    assert_eq!(fact("Paid"), "1");
    assert_eq!(fact("Conversion"), "33.3%");
    assert_eq!(fact("Revenue"), "₹749.00");
    app.stop().await;
}

#[actix_web::test]
async fn needs_attention_pages_with_the_apis_cursor_and_lists_refunds_due() {
    let (_sandbox, url) = start_sandbox(dropshipd::sandbox::Faults::default());
    let app = spawn_app_with(|s| {
        with_shiprocket(s, &url);
        s.config.shipping.mode = dropshipd::config::ShippingMode::Manual;
    })
    .await;
    app.set_stock("TEE", 100).await;
    // Manual shipping: every paid order waits for an operator.
    for n in 0..55 {
        app.checkout_and_pay(&format!("A{n:02}")).await;
    }
    // A second payment of one order: money to give back.
    let again = captured_for("pay_A00_again", "order_A00", 74_900);
    assert_eq!(
        app.post_webhook(&again, Some("evt_A00_again"))
            .await
            .status(),
        200
    );
    app.wait_inbox_drained().await;
    for n in 0..55 {
        app.wait_for_state(&format!("XVC-A{n:02}"), "manual_required")
            .await;
    }

    let operator = Browser::sign_in(&app, OPERATOR_TOKEN).await;
    let (status, first) = operator.get("/console/attention").await;
    assert_eq!(status, 200);
    assert!(first.contains("manual_required (55)"), "{first}");
    assert_eq!(first.matches(r#"name="order""#).count(), 50, "a page of 50");
    assert!(
        first.contains("XVC-A54") && !first.contains("XVC-A04<"),
        "newest first"
    );
    let at = first.find("after=").expect("a next page") + "after=".len();
    let cursor: String = first[at..]
        .chars()
        .take_while(char::is_ascii_digit)
        .collect();
    let (_, second) = operator
        .get(&format!(
            "/console/attention?state=manual_required&after={cursor}"
        ))
        .await;
    assert_eq!(second.matches(r#"name="order""#).count(), 5);
    assert!(second.contains("XVC-A00") && !second.contains("XVC-A54"));
    assert!(!second.contains(r#"rel="next""#), "the last page");

    let (_, refunds) = operator.get("/console/attention?state=refund_due").await;
    assert!(refunds.contains("XVC-A00"), "{refunds}");
    assert!(!refunds.contains("XVC-A01"), "only the order owing money");
    let (status, refused) = operator.get("/console/attention?state=nonsense").await;
    assert_eq!(status, 422, "the API's own validation: {refused}");

    // Ticked orders: one that can go back to shipping and one that cannot.
    let (status, _) = operator
        .post(
            "/console/orders/retry-shipping",
            &[
                ("order", "XVC-A01"),
                ("order", "XVC-NONE"),
                ("back", "/console/attention"),
            ],
        )
        .await;
    assert_eq!(status, 303);
    let (_, page) = operator.get("/console/attention").await;
    assert!(
        page.contains("sent 1 orders back to shipping; refused 1: XVC-NONE"),
        "{page}"
    );
    // Manual mode holds it for an operator again; the retry is on record,
    // naming its order.
    let audit = app
        .admin_get("/admin/audit?limit=1000", Some(OPERATOR_TOKEN))
        .await;
    let audit: serde_json::Value = audit.json().await.expect("audit");
    let retried: Vec<_> = audit["entries"]
        .as_array()
        .expect("entries")
        .iter()
        .filter(|e| e["action"] == "admin:POST /console/orders/retry-shipping")
        .map(|e| e["subject"].clone())
        .collect();
    assert_eq!(retried, [serde_json::json!("XVC-A01")], "{audit}");
    app.stop().await;
}

#[actix_web::test]
async fn the_audit_log_reads_newest_first_in_the_api_and_the_console() {
    let app = spawn_app().await;
    for n in 1..=5 {
        app.set_stock(&format!("SKU-{n}"), n).await;
    }
    let page = |query: &'static str| {
        let app = &app;
        async move {
            let answer = app
                .admin_get(&format!("/admin/audit?{query}"), Some(OPERATOR_TOKEN))
                .await;
            let status = answer.status().as_u16();
            (
                status,
                answer.json::<serde_json::Value>().await.expect("JSON"),
            )
        }
    };
    let (_, oldest) = page("limit=1000").await;
    let all: Vec<i64> = oldest["entries"]
        .as_array()
        .expect("entries")
        .iter()
        .map(|e| e["seq"].as_i64().expect("seq"))
        .collect();
    assert!(all.len() >= 10, "stock changes and their actions: {all:?}");
    assert!(
        all.windows(2).all(|w| w[0] < w[1]),
        "oldest first by default"
    );

    let (_, first) = page("order=newest&limit=3").await;
    let seqs = |v: &serde_json::Value| -> Vec<i64> {
        v["entries"]
            .as_array()
            .expect("entries")
            .iter()
            .map(|e| e["seq"].as_i64().expect("seq"))
            .collect()
    };
    let newest: Vec<i64> = all.iter().rev().copied().collect();
    assert_eq!(seqs(&first), newest[..3]);
    let next = first["next"].as_i64().expect("a next page");
    let answer = app
        .admin_get(
            &format!("/admin/audit?order=newest&limit=3&before={next}"),
            Some(OPERATOR_TOKEN),
        )
        .await;
    let second: serde_json::Value = answer.json().await.expect("JSON");
    assert_eq!(seqs(&second), newest[3..6]);
    let (status, refused) = page("order=sideways").await;
    assert_eq!(status, 422);
    assert_eq!(
        refused["fields"]["order"][0],
        "must be oldest or newest, got \"sideways\""
    );

    let operator = Browser::sign_in(&app, OPERATOR_TOKEN).await;
    let (_, html) = operator.get("/console/audit").await;
    let first_row = html.find("<tbody><tr><td>").expect("a row") + "<tbody><tr><td>".len();
    let shown: String = html[first_row..]
        .chars()
        .take_while(char::is_ascii_digit)
        .collect();
    // Newest first: the sign-in itself is the newest entry now.
    assert!(
        shown.parse::<i64>().expect("seq") > *newest.first().expect("one"),
        "{shown}"
    );
    app.stop().await;
}

#[actix_web::test]
async fn a_sku_with_a_space_or_a_plus_is_adjusted_through_its_own_form() {
    let app = spawn_app().await;
    app.set_stock("TEE M+", 4).await;
    let operator = Browser::sign_in(&app, OPERATOR_TOKEN).await;
    let (_, page) = operator.get("/console/stock").await;
    let action = r#"action="/console/stock/TEE%20M%2B/adjust""#;
    assert!(page.contains(action), "{page}");
    let (status, _) = operator
        .post(
            "/console/stock/TEE%20M%2B/adjust",
            &[("delta", "2"), ("reason", "found two")],
        )
        .await;
    assert_eq!(status, 303);
    assert_eq!(app.stock("TEE M+").await["on_hand"], 6);
    app.stop().await;
}
