//! Shiprocket's API v2 (reference/shiprocket.md): the one module that knows its
//! paths, JSON keys and quirks. Money goes out in rupees (dropshipd keeps
//! paise), phones as 10 digits, PIN codes as 6-digit integers; some failures
//! arrive as HTTP 200 with a flag, so success is read from the body.
//!
//! Every call returns a [`ShiprocketError`] classified for the gateway:
//! transient (retry with backoff, counts toward the circuit breaker), rate
//! limited (slow down, counts toward nothing), auth (log in again), or
//! permanent (a validation failure: send the order to an operator).

use std::time::Duration;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::io_thread::IoThread;

pub use crate::domain::shipping::{
    AssignedAwb, CreatedShipment, FoundOrder, ShipmentItem, ShipmentRequest,
};

pub const API_PREFIX: &str = "/v1/external";

#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ShiprocketError {
    /// Transport failure, timeout, 5xx: the outcome of a write is unknown.
    #[error("Shiprocket unavailable: {0}")]
    Transient(String),
    /// 429: the account is over its rate; wait `retry_after` if given.
    #[error("Shiprocket rate limit hit")]
    RateLimited { retry_after: Option<Duration> },
    /// 401: the token expired or was revoked.
    #[error("Shiprocket refused the token")]
    Unauthorized,
    /// 4xx validation, or a failure flag in a 200: retrying will not help.
    #[error("Shiprocket refused the request: {0}")]
    Permanent(String),
}

impl ShiprocketError {
    /// The `outcome` label of `dropship_shiprocket_requests_total`.
    pub fn outcome(&self) -> &'static str {
        match self {
            Self::Transient(_) => "transient",
            Self::RateLimited { .. } => "rate_limited",
            Self::Unauthorized => "unauthorized",
            Self::Permanent(_) => "rejected",
        }
    }
}

/// `POST orders/create/adhoc`, as Shiprocket names things.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AdhocOrder {
    pub order_id: String,
    pub order_date: String,
    pub pickup_location: String,
    pub billing_customer_name: String,
    pub billing_last_name: String,
    pub billing_address: String,
    pub billing_address_2: String,
    pub billing_city: String,
    pub billing_pincode: u32,
    pub billing_state: String,
    pub billing_country: String,
    pub billing_email: String,
    pub billing_phone: u64,
    pub shipping_is_billing: bool,
    pub order_items: Vec<AdhocItem>,
    pub payment_method: String,
    pub sub_total: f64,
    pub length: f64,
    pub breadth: f64,
    pub height: f64,
    pub weight: f64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AdhocItem {
    pub name: String,
    pub sku: String,
    pub units: u32,
    pub selling_price: f64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hsn: Option<String>,
}

fn rupees(paise: i64) -> f64 {
    paise as f64 / 100.0
}

impl AdhocOrder {
    /// The wire form of `request`. Fails on data Shiprocket would refuse (a
    /// phone or PIN that is not digits), before any call is made.
    pub fn from_request(request: &ShipmentRequest) -> Result<Self, ShiprocketError> {
        let pincode = request
            .pincode
            .parse::<u32>()
            .ok()
            .filter(|p| (100_000..=999_999).contains(p))
            .ok_or_else(|| {
                ShiprocketError::Permanent(format!("pincode {:?} is not 6 digits", request.pincode))
            })?;
        let phone = Some(request.phone.as_str())
            .filter(|p| p.len() == 10)
            .and_then(|p| p.parse::<u64>().ok())
            .ok_or_else(|| ShiprocketError::Permanent("phone is not 10 digits".into()))?;
        let (first, last) = match request.customer_name.trim().rsplit_once(' ') {
            Some((first, last)) => (first.to_owned(), last.to_owned()),
            None => (request.customer_name.trim().to_owned(), String::new()),
        };
        Ok(AdhocOrder {
            order_id: request.channel_order_id.clone(),
            order_date: request.order_date.clone(),
            pickup_location: request.pickup_location.clone(),
            billing_customer_name: first,
            billing_last_name: last,
            billing_address: request.line1.clone(),
            billing_address_2: request.line2.clone(),
            billing_city: request.city.chars().take(30).collect(),
            billing_pincode: pincode,
            billing_state: request.state.clone(),
            billing_country: request.country.clone(),
            billing_email: request.email.clone(),
            billing_phone: phone,
            shipping_is_billing: true,
            order_items: request
                .items
                .iter()
                .map(|i| AdhocItem {
                    name: if i.name.is_empty() {
                        i.sku.clone()
                    } else {
                        i.name.clone()
                    },
                    sku: i.sku.clone(),
                    units: i.units,
                    selling_price: rupees(i.unit_price_paise),
                    hsn: i.hsn.clone(),
                })
                .collect(),
            payment_method: if request.cod { "COD" } else { "Prepaid" }.into(),
            sub_total: rupees(request.amount_paise),
            length: request.dims_cm[0].max(0.5),
            breadth: request.dims_cm[1].max(0.5),
            height: request.dims_cm[2].max(0.5),
            weight: request.weight_kg.max(0.01),
        })
    }
}

/// Classifies a non-2xx answer. `body` is whatever came back.
pub fn classify_status(
    status: u16,
    body: &Value,
    retry_after: Option<Duration>,
) -> ShiprocketError {
    let message = error_message(body).unwrap_or_else(|| format!("HTTP {status}"));
    match status {
        401 => ShiprocketError::Unauthorized,
        429 => ShiprocketError::RateLimited { retry_after },
        408 | 500..=599 => ShiprocketError::Transient(format!("HTTP {status}: {message}")),
        _ => ShiprocketError::Permanent(format!("HTTP {status}: {message}")),
    }
}

/// Shiprocket's human message: `errors` (per field) first, then `message`.
pub fn error_message(body: &Value) -> Option<String> {
    if let Some(errors) = body.get("errors").and_then(Value::as_object) {
        let parts: Vec<String> = errors
            .iter()
            .map(|(field, problems)| {
                let problems = match problems {
                    Value::Array(list) => list
                        .iter()
                        .filter_map(Value::as_str)
                        .collect::<Vec<_>>()
                        .join("; "),
                    other => other.to_string(),
                };
                format!("{field}: {problems}")
            })
            .collect();
        if !parts.is_empty() {
            return Some(parts.join(", "));
        }
    }
    body.get("message")
        .and_then(Value::as_str)
        .map(str::to_owned)
}

fn as_i64(value: &Value) -> Option<i64> {
    value
        .as_i64()
        .or_else(|| value.as_str().and_then(|s| s.parse().ok()))
}

/// Reads a create-adhoc success body; a 2xx without a `shipment_id` is a failure.
pub fn parse_created(body: &Value) -> Result<CreatedShipment, ShiprocketError> {
    match (
        body.get("order_id").and_then(as_i64),
        body.get("shipment_id").and_then(as_i64),
    ) {
        (Some(sr_order_id), Some(shipment_id)) => Ok(CreatedShipment {
            sr_order_id,
            shipment_id,
        }),
        _ => Err(ShiprocketError::Permanent(
            error_message(body).unwrap_or_else(|| "order created without a shipment_id".into()),
        )),
    }
}

/// Reads an assign-AWB body: `awb_assign_status` must be 1.
pub fn parse_awb(body: &Value) -> Result<AssignedAwb, ShiprocketError> {
    let data = &body["response"]["data"];
    match (
        body.get("awb_assign_status").and_then(as_i64),
        data.get("awb_code").and_then(Value::as_str),
    ) {
        (Some(1), Some(awb)) if !awb.is_empty() => Ok(AssignedAwb {
            awb_code: awb.to_owned(),
            courier_name: data
                .get("courier_name")
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_owned(),
        }),
        _ => Err(ShiprocketError::Permanent(
            data.get("awb_assign_error")
                .and_then(Value::as_str)
                .map(str::to_owned)
                .or_else(|| error_message(body))
                .unwrap_or_else(|| "AWB not assigned".into()),
        )),
    }
}

/// Reads a search body into the orders it lists.
pub fn parse_search(body: &Value) -> Vec<FoundOrder> {
    body.get("data")
        .and_then(Value::as_array)
        .map(|orders| {
            orders
                .iter()
                .filter_map(|o| {
                    let shipment = o
                        .get("shipments")
                        .and_then(Value::as_array)
                        .and_then(|s| s.first());
                    let text = |v: Option<&Value>| {
                        v.and_then(Value::as_str)
                            .filter(|s| !s.is_empty())
                            .map(str::to_owned)
                    };
                    Some(FoundOrder {
                        sr_order_id: o.get("id").and_then(as_i64)?,
                        channel_order_id: o
                            .get("channel_order_id")
                            .and_then(Value::as_str)?
                            .to_owned(),
                        cancelled: o.get("status_code").and_then(as_i64) == Some(5)
                            || o.get("status").and_then(Value::as_str).is_some_and(|s| {
                                s.eq_ignore_ascii_case("CANCELED")
                                    || s.eq_ignore_ascii_case("CANCELLED")
                            }),
                        shipment_id: shipment.and_then(|s| s.get("id")).and_then(as_i64),
                        awb: text(shipment.and_then(|s| s.get("awb"))),
                        courier: text(shipment.and_then(|s| s.get("courier"))),
                    })
                })
                .collect()
        })
        .unwrap_or_default()
}

/// One request and its answer, on the client's I/O thread.
async fn exchange(request: reqwest::RequestBuilder) -> Result<Value, ShiprocketError> {
    let response = request.send().await.map_err(|e| {
        ShiprocketError::Transient(if e.is_timeout() {
            "timed out".into()
        } else {
            e.to_string()
        })
    })?;
    let status = response.status().as_u16();
    let retry_after = response
        .headers()
        .get(reqwest::header::RETRY_AFTER)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok())
        .map(Duration::from_secs);
    let text = response
        .text()
        .await
        .map_err(|e| ShiprocketError::Transient(e.to_string()))?;
    let body: Value = if text.trim().is_empty() {
        Value::Null
    } else {
        serde_json::from_str(&text).unwrap_or(Value::String(text))
    };
    if (200..300).contains(&status) {
        Ok(body)
    } else {
        Err(classify_status(status, &body, retry_after))
    }
}

/// The HTTP client. Tokens are the caller's: the gateway owns and refreshes them.
///
/// Its exchanges run on an I/O thread of its own ([`IoThread`]), shared by
/// its clones: the caller's thread only builds the request and reads the
/// answer.
#[derive(Clone)]
pub struct ShiprocketClient {
    http: reqwest::Client,
    base_url: String,
    io: IoThread,
}

impl ShiprocketClient {
    pub fn new(base_url: &str, timeout: Duration) -> Result<Self, ShiprocketError> {
        let http = reqwest::Client::builder()
            .timeout(timeout)
            .build()
            .map_err(|e| ShiprocketError::Transient(e.to_string()))?;
        let io = IoThread::start("shiprocket-io")
            .map_err(|e| ShiprocketError::Transient(e.to_string()))?;
        Ok(Self {
            http,
            base_url: base_url.trim_end_matches('/').to_owned(),
            io,
        })
    }

    fn url(&self, path: &str) -> String {
        format!("{}{API_PREFIX}/{path}", self.base_url)
    }

    async fn send(&self, request: reqwest::RequestBuilder) -> Result<Value, ShiprocketError> {
        self.io
            .run(exchange(request))
            .await
            .map_err(|e| ShiprocketError::Transient(e.to_string()))?
    }

    /// `POST auth/login` → a token.
    pub async fn login(&self, email: &str, password: &str) -> Result<String, ShiprocketError> {
        let body = self
            .send(
                self.http
                    .post(self.url("auth/login"))
                    .json(&serde_json::json!({"email": email, "password": password})),
            )
            .await
            .map_err(|e| match e {
                // A refused login is not a token problem to retry: credentials are wrong.
                ShiprocketError::Unauthorized => ShiprocketError::Permanent(
                    "login refused: check the account's e-mail and password".into(),
                ),
                other => other,
            })?;
        body.get("token")
            .and_then(Value::as_str)
            .filter(|t| !t.is_empty())
            .map(str::to_owned)
            .ok_or_else(|| {
                ShiprocketError::Permanent(
                    error_message(&body).unwrap_or_else(|| "login returned no token".into()),
                )
            })
    }

    pub async fn create_order(
        &self,
        token: &str,
        order: &AdhocOrder,
    ) -> Result<CreatedShipment, ShiprocketError> {
        let body = self
            .send(
                self.http
                    .post(self.url("orders/create/adhoc"))
                    .bearer_auth(token)
                    .json(order),
            )
            .await?;
        parse_created(&body)
    }

    pub async fn assign_awb(
        &self,
        token: &str,
        shipment_id: i64,
    ) -> Result<AssignedAwb, ShiprocketError> {
        let body = self
            .send(
                self.http
                    .post(self.url("courier/assign/awb"))
                    .bearer_auth(token)
                    .json(&serde_json::json!({"shipment_id": shipment_id})),
            )
            .await?;
        parse_awb(&body)
    }

    /// Orders whose channel order id (or AWB) matches `search`.
    pub async fn search_orders(
        &self,
        token: &str,
        search: &str,
    ) -> Result<Vec<FoundOrder>, ShiprocketError> {
        let body = self
            .send(
                self.http
                    .get(self.url("orders"))
                    .bearer_auth(token)
                    .query(&[("search", search)]),
            )
            .await?;
        Ok(parse_search(&body))
    }

    pub async fn generate_pickup(
        &self,
        token: &str,
        shipment_id: i64,
    ) -> Result<(), ShiprocketError> {
        let body = self
            .send(
                self.http
                    .post(self.url("courier/generate/pickup"))
                    .bearer_auth(token)
                    .json(&serde_json::json!({"shipment_id": [shipment_id]})),
            )
            .await?;
        match body.get("pickup_status").and_then(as_i64) {
            Some(0) => Err(ShiprocketError::Permanent(
                error_message(&body).unwrap_or_else(|| "pickup not generated".into()),
            )),
            _ => Ok(()),
        }
    }

    pub async fn cancel_orders(
        &self,
        token: &str,
        sr_order_ids: &[i64],
    ) -> Result<(), ShiprocketError> {
        self.send(
            self.http
                .post(self.url("orders/cancel"))
                .bearer_auth(token)
                .json(&serde_json::json!({"ids": sr_order_ids})),
        )
        .await
        .map(|_| ())
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn request() -> ShipmentRequest {
        ShipmentRequest {
            channel_order_id: "XVC-100231".into(),
            order_date: "2025-11-25 14:30".into(),
            pickup_location: "Primary".into(),
            cod: false,
            amount_paise: 149_800,
            customer_name: "Asha Rao".into(),
            email: "asha@example.com".into(),
            phone: "9876543210".into(),
            line1: "12 MG Road".into(),
            line2: String::new(),
            city: "Bengaluru".into(),
            state: "Karnataka".into(),
            pincode: "560001".into(),
            country: "India".into(),
            items: vec![ShipmentItem {
                sku: "TSHIRT-BLK-M".into(),
                name: "Black tee M".into(),
                units: 2,
                unit_price_paise: 74_900,
                hsn: None,
            }],
            weight_kg: 0.5,
            dims_cm: [20.0, 15.0, 10.0],
        }
    }

    #[test]
    fn adhoc_order_speaks_rupees_and_integers() {
        let adhoc = AdhocOrder::from_request(&request()).unwrap();
        let wire = serde_json::to_value(&adhoc).unwrap();
        assert_eq!(wire["order_id"], "XVC-100231");
        assert_eq!(wire["sub_total"], 1498.0);
        assert_eq!(wire["order_items"][0]["selling_price"], 749.0);
        assert_eq!(wire["billing_pincode"], 560001);
        assert_eq!(wire["billing_phone"], 9876543210u64);
        assert_eq!(wire["billing_customer_name"], "Asha");
        assert_eq!(wire["billing_last_name"], "Rao");
        assert_eq!(wire["payment_method"], "Prepaid");
        assert_eq!(wire["shipping_is_billing"], true);
        assert!(wire["order_items"][0].get("hsn").is_none());

        let mut bad = request();
        bad.pincode = "56001".into();
        assert!(matches!(
            AdhocOrder::from_request(&bad),
            Err(ShiprocketError::Permanent(_))
        ));
    }

    #[test]
    fn statuses_classify() {
        let validation = json!({"message":"Oops! Invalid Data.","errors":{"order_items.4.hsn":["HSN should be numeric"]},"status_code":422});
        assert_eq!(
            classify_status(422, &validation, None),
            ShiprocketError::Permanent("HTTP 422: order_items.4.hsn: HSN should be numeric".into())
        );
        assert_eq!(
            classify_status(401, &json!({"message":"Unauthenticated."}), None),
            ShiprocketError::Unauthorized
        );
        assert_eq!(
            classify_status(429, &Value::Null, Some(Duration::from_secs(7))),
            ShiprocketError::RateLimited {
                retry_after: Some(Duration::from_secs(7))
            }
        );
        for status in [500, 502, 503, 504] {
            assert!(matches!(
                classify_status(status, &Value::Null, None),
                ShiprocketError::Transient(_)
            ));
        }
    }

    #[test]
    fn bodies_decide_success_not_the_status() {
        let created = json!({"order_id": 640112233, "shipment_id": 638845501, "status": "NEW", "status_code": 1});
        assert_eq!(
            parse_created(&created).unwrap(),
            CreatedShipment {
                sr_order_id: 640112233,
                shipment_id: 638845501
            }
        );
        assert!(parse_created(&json!({"status": "NEW"})).is_err());

        let assigned = json!({"awb_assign_status": 1, "response": {"data": {"awb_code": "19041700112233", "courier_name": "Delhivery Surface"}}});
        assert_eq!(parse_awb(&assigned).unwrap().awb_code, "19041700112233");
        let refused = json!({"awb_assign_status": 0, "response": {"data": {"awb_assign_error": "AWB is already assigned"}}});
        assert_eq!(
            parse_awb(&refused).unwrap_err(),
            ShiprocketError::Permanent("AWB is already assigned".into())
        );
        let wallet = json!({"awb_assign_status": 0, "message": "Please recharge your wallet"});
        assert_eq!(
            parse_awb(&wallet).unwrap_err(),
            ShiprocketError::Permanent("Please recharge your wallet".into())
        );
    }

    #[test]
    fn search_reads_orders_and_their_shipments() {
        let body = json!({"data": [
            {"id": 1, "channel_order_id": "XVC-1", "status": "CANCELED", "status_code": 5, "shipments": [{"id": 11, "awb": "", "courier": ""}]},
            {"id": 2, "channel_order_id": "XVC-1", "status": "NEW", "status_code": 1, "shipments": [{"id": 22, "awb": "AWB2", "courier": "Delhivery"}]}
        ], "meta": {"pagination": {"total": 2}}});
        let found = parse_search(&body);
        assert_eq!(found.len(), 2);
        assert!(found[0].cancelled);
        assert_eq!(found[0].awb, None);
        assert_eq!(found[1].shipment_id, Some(22));
        assert_eq!(found[1].awb.as_deref(), Some("AWB2"));
        assert!(parse_search(&json!({"message": "x"})).is_empty());
    }
}
