//! Razorpay's REST API, for payment reconciliation (SPEC §6): the payments of an
//! order, `GET /v1/orders/{id}/payments`, with HTTP Basic auth `key_id:key_secret`
//! (reference/razorpay.md §6).

use std::time::Duration;

use serde::Deserialize;

use crate::config::Secret;

#[derive(Debug, thiserror::Error)]
pub enum RazorpayError {
    #[error("request to Razorpay failed: {0}")]
    Transport(#[from] reqwest::Error),
    #[error("Razorpay answered {status}: {description}")]
    Api { status: u16, description: String },
    #[error("{0:?} is not a Razorpay order id")]
    NotAnOrderId(String),
}

/// A payment as the API lists it; only the fields reconciliation reads.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct ApiPayment {
    pub id: String,
    pub amount: i64,
    pub currency: String,
    pub status: String,
    #[serde(default)]
    pub captured: bool,
    pub order_id: Option<String>,
}

impl ApiPayment {
    pub fn is_captured(&self) -> bool {
        self.status == "captured"
            || (self.captured && self.status != "refunded" && self.status != "failed")
    }
}

#[derive(Deserialize)]
struct Collection {
    items: Vec<ApiPayment>,
}

#[derive(Deserialize)]
struct ErrorBody {
    error: ErrorDetail,
}

#[derive(Deserialize)]
struct ErrorDetail {
    description: Option<String>,
}

#[derive(Clone)]
pub struct RazorpayClient {
    http: reqwest::Client,
    base_url: String,
    key_id: Secret,
    key_secret: Secret,
}

impl RazorpayClient {
    pub fn new(
        base_url: &str,
        key_id: Secret,
        key_secret: Secret,
        timeout: Duration,
    ) -> Result<Self, RazorpayError> {
        Ok(Self {
            http: reqwest::Client::builder().timeout(timeout).build()?,
            base_url: base_url.trim_end_matches('/').to_owned(),
            key_id,
            key_secret,
        })
    }

    /// The payments made against a Razorpay order (authorised, captured,
    /// failed). The id goes into the URL's path, so only an id of Razorpay's
    /// shape is asked about.
    pub async fn order_payments(
        &self,
        razorpay_order_id: &str,
    ) -> Result<Vec<ApiPayment>, RazorpayError> {
        if !crate::domain::checkout::valid_razorpay_order_id(razorpay_order_id) {
            return Err(RazorpayError::NotAnOrderId(razorpay_order_id.to_owned()));
        }
        let response = self
            .http
            .get(format!(
                "{}/v1/orders/{razorpay_order_id}/payments",
                self.base_url
            ))
            .basic_auth(self.key_id.expose(), Some(self.key_secret.expose()))
            .send()
            .await?;
        let status = response.status();
        if !status.is_success() {
            let description = response
                .json::<ErrorBody>()
                .await
                .ok()
                .and_then(|b| b.error.description)
                .unwrap_or_else(|| status.to_string());
            return Err(RazorpayError::Api {
                status: status.as_u16(),
                description,
            });
        }
        Ok(response.json::<Collection>().await?.items)
    }
}
