//! The demo's HTTP client of the daemon: one method per endpoint it uses, sending
//! what a storefront, Razorpay and an operator would send. Everything the demo
//! reports about the daemon comes through here (or from the sandbox's own
//! counters), so each claim in the summary is one an outsider could check.

use std::time::{Duration, Instant};

use reqwest::StatusCode;
use serde_json::Value;

use super::DemoError;
use crate::config::Secret;
use crate::domain::signature::sign;
use crate::http::webhook::{EVENT_ID_HEADER, SIGNATURE_HEADER};

/// How long any one request may take before it counts as failed.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

/// The credentials the demo holds, as each party would hold its own.
#[derive(Clone)]
pub struct Credentials {
    pub storefront_token: Secret,
    pub viewer_token: Secret,
    pub operator_token: Secret,
    pub webhook_secret: Secret,
    /// A secret that is not the webhook secret: what a forger signs with.
    pub forged_secret: Secret,
}

/// Whether a webhook carries Razorpay's signature or a forger's.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Signature {
    Genuine,
    Forged,
}

/// What the webhook endpoint answered (SPEC §4), or what went wrong asking.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WebhookAnswer {
    Accepted,
    Duplicate,
    Quarantined(String),
    InvalidSignature,
    /// Anything else: an unexpected status or body, or no answer at all.
    Other(String),
}

impl WebhookAnswer {
    /// Reads an answer from its status and JSON body.
    pub fn classify(status: u16, body: &Value) -> Self {
        let field = |key: &str| body.get(key).and_then(Value::as_str).unwrap_or_default();
        match (status, field("status"), field("error")) {
            (200, "accepted", _) => Self::Accepted,
            (200, "duplicate", _) => Self::Duplicate,
            (200, "quarantined", _) => Self::Quarantined(field("reason").to_owned()),
            (400, _, "invalid_signature") => Self::InvalidSignature,
            _ => Self::Other(format!("HTTP {status}: {body}")),
        }
    }
}

/// A request's answer and how long it took to come back.
pub struct Timed<T> {
    pub value: T,
    pub took: Duration,
}

/// The daemon's two listeners, seen from outside.
#[derive(Clone)]
pub struct DaemonApi {
    client: reqwest::Client,
    public: String,
    admin: String,
    credentials: Credentials,
}

impl DaemonApi {
    pub fn new(
        public: String,
        admin: String,
        credentials: Credentials,
        connections: usize,
    ) -> Result<Self, DemoError> {
        let client = reqwest::Client::builder()
            .pool_max_idle_per_host(connections)
            .timeout(REQUEST_TIMEOUT)
            .build()
            .map_err(|source| DemoError::Request {
                what: "building the HTTP client".into(),
                source,
            })?;
        Ok(Self {
            client,
            public,
            admin,
            credentials,
        })
    }

    pub fn public_url(&self) -> &str {
        &self.public
    }

    pub fn admin_url(&self) -> &str {
        &self.admin
    }

    /// `POST /api/orders`: the status and JSON body, timed.
    pub async fn checkout(&self, body: &Value) -> Result<Timed<(StatusCode, Value)>, DemoError> {
        let what = "POST /api/orders";
        let started = Instant::now();
        let response = self
            .client
            .post(format!("{}/api/orders", self.public))
            .bearer_auth(self.credentials.storefront_token.expose())
            .json(body)
            .send()
            .await
            .map_err(|source| request_error(what, source))?;
        let status = response.status();
        let body = response
            .json()
            .await
            .map_err(|source| request_error(what, source))?;
        Ok(Timed {
            value: (status, body),
            took: started.elapsed(),
        })
    }

    /// `POST /webhooks/razorpay` with `body` signed as `signature` says, timed.
    /// A request that gets no answer is an [`WebhookAnswer::Other`], not an
    /// error: the demo counts it against the daemon and goes on.
    pub async fn razorpay_webhook(
        &self,
        body: &str,
        event_id: &str,
        signature: Signature,
    ) -> Timed<WebhookAnswer> {
        let key = match signature {
            Signature::Genuine => &self.credentials.webhook_secret,
            Signature::Forged => &self.credentials.forged_secret,
        };
        let started = Instant::now();
        let sent = self
            .client
            .post(format!("{}/webhooks/razorpay", self.public))
            .header("Content-Type", "application/json")
            .header("User-Agent", "Razorpay-Webhook/v1")
            .header(
                SIGNATURE_HEADER,
                sign(key.expose().as_bytes(), body.as_bytes()),
            )
            .header(EVENT_ID_HEADER, event_id)
            .body(body.to_owned())
            .send()
            .await;
        let value = match sent {
            Ok(response) => {
                let status = response.status().as_u16();
                match response.json::<Value>().await {
                    Ok(body) => WebhookAnswer::classify(status, &body),
                    Err(e) => WebhookAnswer::Other(format!("HTTP {status}, unreadable body: {e}")),
                }
            }
            Err(e) => WebhookAnswer::Other(format!("no answer: {e}")),
        };
        Timed {
            value,
            took: started.elapsed(),
        }
    }

    /// `PUT /admin/stock/{sku}` as the operator.
    pub async fn put_stock(&self, sku: &str, body: &Value) -> Result<(), DemoError> {
        let what = format!("PUT /admin/stock/{sku}");
        let response = self
            .client
            .put(format!("{}/admin/stock/{sku}", self.admin))
            .bearer_auth(self.credentials.operator_token.expose())
            .json(body)
            .send()
            .await
            .map_err(|source| request_error(&what, source))?;
        expect_ok(&what, response).await.map(drop)
    }

    /// `GET /admin/stock/{sku}` as a viewer.
    pub async fn stock(&self, sku: &str) -> Result<Value, DemoError> {
        self.admin_get(&format!("/admin/stock/{sku}")).await
    }

    /// `GET /admin/stock/reconcile`: ledger against levels.
    pub async fn stock_reconcile(&self) -> Result<Value, DemoError> {
        self.admin_get("/admin/stock/reconcile").await
    }

    /// `GET /admin/status`.
    pub async fn status(&self) -> Result<Value, DemoError> {
        self.admin_get("/admin/status").await
    }

    /// `GET /admin/orders/{id}`: the order with its journal.
    pub async fn order_detail(&self, order_id: &str) -> Result<Value, DemoError> {
        self.admin_get(&format!("/admin/orders/{order_id}")).await
    }

    /// `GET /metrics`: the Prometheus text.
    pub async fn metrics(&self) -> Result<String, DemoError> {
        let what = "GET /metrics";
        let response = self
            .client
            .get(format!("{}/metrics", self.admin))
            .send()
            .await
            .map_err(|source| request_error(what, source))?;
        expect_ok(what, response)
            .await?
            .text()
            .await
            .map_err(|source| request_error(what, source))
    }

    async fn admin_get(&self, path: &str) -> Result<Value, DemoError> {
        let what = format!("GET {path}");
        let response = self
            .client
            .get(format!("{}{path}", self.admin))
            .bearer_auth(self.credentials.viewer_token.expose())
            .send()
            .await
            .map_err(|source| request_error(&what, source))?;
        expect_ok(&what, response)
            .await?
            .json()
            .await
            .map_err(|source| request_error(&what, source))
    }
}

fn request_error(what: &str, source: reqwest::Error) -> DemoError {
    DemoError::Request {
        what: what.to_owned(),
        source,
    }
}

async fn expect_ok(
    what: &str,
    response: reqwest::Response,
) -> Result<reqwest::Response, DemoError> {
    let status = response.status();
    if status.is_success() {
        return Ok(response);
    }
    let body = response.text().await.unwrap_or_default();
    Err(DemoError::Unexpected {
        what: what.to_owned(),
        status: status.as_u16(),
        body,
    })
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::WebhookAnswer;

    #[test]
    fn webhook_answers_are_read_from_status_and_body() {
        let accepted = json!({"status": "accepted", "event_id": "evt_1"});
        assert_eq!(
            WebhookAnswer::classify(200, &accepted),
            WebhookAnswer::Accepted
        );
        let duplicate = json!({"status": "duplicate", "event_id": "evt_1"});
        assert_eq!(
            WebhookAnswer::classify(200, &duplicate),
            WebhookAnswer::Duplicate
        );
        let quarantined = json!({"status": "quarantined", "reason": "too_old"});
        assert_eq!(
            WebhookAnswer::classify(200, &quarantined),
            WebhookAnswer::Quarantined("too_old".into())
        );
        let refused = json!({"error": "invalid_signature", "message": "no"});
        assert_eq!(
            WebhookAnswer::classify(400, &refused),
            WebhookAnswer::InvalidSignature
        );
        // The right words with the wrong status are not the answer they claim.
        assert!(matches!(
            WebhookAnswer::classify(503, &accepted),
            WebhookAnswer::Other(_)
        ));
        assert!(matches!(
            WebhookAnswer::classify(200, &refused),
            WebhookAnswer::Other(_)
        ));
    }
}
