//! The Shiprocket sandbox: a local stand-in for Shiprocket's API v2, for tests,
//! the demo and a store's staging (`dropshipd shiprocket-sandbox`). Shiprocket
//! has no sandbox of its own; valid credentials act on the live account.
//!
//! It reproduces the shapes and quirks of reference/shiprocket.md §13: tokens
//! that expire into `401 {"message":"Unauthenticated."}`, 422 bodies with
//! dotted field keys, an unknown pickup location refused, integer ids,
//! duplicate channel order ids (configurable), AWB failures inside HTTP 200,
//! search by channel order id, cancel answering 204. Faults are switchable
//! while it runs (`PUT /sandbox/faults`); `GET /sandbox/stats` counts calls.

pub mod faults;

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use actix_web::dev::{Server, ServerHandle};
use actix_web::http::StatusCode;
use actix_web::{web, App, HttpRequest, HttpResponse, HttpServer};
use serde_json::{json, Value};

use faults::Rng;
pub use faults::{DuplicatePolicy, Faults};

const PREFIX: &str = "/v1/external";
/// Calls that change something at Shiprocket: only their answers get lost.
const WRITES: &[&str] = &["create", "assign_awb", "pickup", "cancel"];

#[derive(Debug, Clone, serde::Serialize)]
pub struct SandboxOrder {
    /// The API user (login e-mail) whose account holds it: an account sees
    /// only its own orders, as on Shiprocket.
    pub account: String,
    pub sr_order_id: i64,
    pub channel_order_id: String,
    pub shipment_id: i64,
    pub status_code: i64,
    pub awb: Option<String>,
    pub courier: Option<String>,
    pub pickup_requested: bool,
    pub sub_total: f64,
    pub payment_method: String,
}

struct State {
    faults: Faults,
    rng: Rng,
    /// Token → when it was issued and to which API user.
    tokens: HashMap<String, (Instant, String)>,
    orders: Vec<SandboxOrder>,
    /// Where in `orders` an account's first order with a channel order id is.
    first_by_channel: HashMap<(String, String), usize>,
    /// Where in `orders` an account's shipment is (shipment ids are unique).
    by_shipment: HashMap<(String, i64), usize>,
    next_id: i64,
    calls: BTreeMap<String, u64>,
    /// Requests by endpoint as they arrive, answered or not yet.
    arrivals: BTreeMap<String, u64>,
    /// Token bucket for `rate_limit_per_sec`.
    bucket: f64,
    refilled: Instant,
}

impl State {
    /// Keeps an order, indexed: a sale's worth of orders is looked up per
    /// call, and a scan of them all would make the sandbox the bottleneck.
    fn keep(&mut self, order: SandboxOrder) {
        let at = self.orders.len();
        self.first_by_channel
            .entry((order.account.clone(), order.channel_order_id.clone()))
            .or_insert(at);
        self.by_shipment
            .insert((order.account.clone(), order.shipment_id), at);
        self.orders.push(order);
    }

    fn first_with_channel_id(
        &self,
        account: &str,
        channel_order_id: &str,
    ) -> Option<&SandboxOrder> {
        let at = self
            .first_by_channel
            .get(&(account.to_owned(), channel_order_id.to_owned()))?;
        self.orders.get(*at)
    }

    fn shipment(&mut self, account: &str, shipment_id: i64) -> Option<&mut SandboxOrder> {
        let at = *self.by_shipment.get(&(account.to_owned(), shipment_id))?;
        self.orders.get_mut(at)
    }
}

/// A running sandbox's shared state.
pub struct Sandbox {
    state: Mutex<State>,
}

/// What a fault check decided for one call.
enum Gate {
    Proceed,
    Refuse(HttpResponse),
    Hang(Duration),
}

impl Sandbox {
    pub fn new(faults: Faults, seed: u64) -> Arc<Self> {
        let bucket = faults.initial_bucket();
        Arc::new(Self {
            state: Mutex::new(State {
                faults,
                rng: Rng::seeded(seed),
                tokens: HashMap::new(),
                orders: Vec::new(),
                first_by_channel: HashMap::new(),
                by_shipment: HashMap::new(),
                next_id: 640_000_000,
                calls: BTreeMap::new(),
                arrivals: BTreeMap::new(),
                bucket,
                refilled: Instant::now(),
            }),
        })
    }

    fn with<T>(&self, f: impl FnOnce(&mut State) -> T) -> T {
        let mut guard = match self.state.lock() {
            Ok(guard) => guard,
            Err(poisoned) => poisoned.into_inner(),
        };
        f(&mut guard)
    }

    pub fn set_faults(&self, faults: Faults) {
        self.with(|s| {
            s.bucket = faults.initial_bucket();
            s.faults = faults;
        });
    }

    pub fn faults(&self) -> Faults {
        self.with(|s| s.faults.clone())
    }

    /// Calls answered so far, by endpoint and outcome (`create:200`, `login:429`, ...).
    pub fn calls(&self) -> BTreeMap<String, u64> {
        self.with(|s| s.calls.clone())
    }

    /// Requests received so far, by endpoint (`create`, `search`, ...), counted
    /// on arrival: a call still hanging is in here and not yet in [`Sandbox::calls`].
    pub fn arrivals(&self) -> BTreeMap<String, u64> {
        self.with(|s| s.arrivals.clone())
    }

    pub fn orders(&self) -> Vec<SandboxOrder> {
        self.with(|s| s.orders.clone())
    }

    /// The tokens issued so far (valid or not).
    pub fn issued_tokens(&self) -> Vec<String> {
        self.with(|s| s.tokens.keys().cloned().collect())
    }

    /// Every token issued so far stops working.
    pub fn expire_tokens(&self) {
        self.with(|s| s.tokens.clear());
    }

    fn count(&self, call: &str, status: StatusCode) {
        self.with(|s| {
            *s.calls
                .entry(format!("{call}:{}", status.as_u16()))
                .or_default() += 1
        });
    }

    /// Rate limit, injected 429s, 500s and hangs, in that order.
    fn gate(&self, call: &str, account: &str) -> Gate {
        self.with(|s| {
            if !s.faults.applies_to(call, account) {
                return Gate::Proceed;
            }
            if let Some(rate) = s.faults.rate_limit_per_sec {
                let now = Instant::now();
                let refill = now.duration_since(s.refilled).as_secs_f64() * rate;
                let capacity = s.faults.rate_limit_burst.unwrap_or(rate).max(1.0);
                s.bucket = (s.bucket + refill).min(capacity);
                s.refilled = now;
                if s.bucket < 1.0 {
                    return Gate::Refuse(too_many(s.faults.retry_after_secs));
                }
                s.bucket -= 1.0;
            }
            if s.rng.chance(s.faults.throttle_rate) {
                return Gate::Refuse(too_many(s.faults.retry_after_secs));
            }
            if s.rng.chance(s.faults.error_rate) {
                return Gate::Refuse(
                    HttpResponse::InternalServerError()
                        .json(json!({"message": "Server Error", "status_code": 500})),
                );
            }
            if s.rng.chance(s.faults.hang_rate) {
                return Gate::Hang(Duration::from_millis(s.faults.hang_ms));
            }
            Gate::Proceed
        })
    }

    /// The API user a request's token was issued to, and whether it is still valid.
    fn bearer(&self, req: &HttpRequest) -> Option<(String, bool)> {
        let token = req
            .headers()
            .get("Authorization")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))?;
        self.with(|s| {
            let ttl = Duration::from_secs(s.faults.token_ttl_secs);
            s.tokens
                .get(token)
                .map(|(issued, account)| (account.clone(), issued.elapsed() < ttl))
        })
    }
}

fn too_many(retry_after: Option<u64>) -> HttpResponse {
    let mut response = HttpResponse::TooManyRequests();
    if let Some(secs) = retry_after {
        response.insert_header(("Retry-After", secs.to_string()));
    }
    response.json(json!({"message": "Too Many Attempts.", "status_code": 429}))
}

fn unauthenticated() -> HttpResponse {
    HttpResponse::Unauthorized().json(json!({"message": "Unauthenticated."}))
}

fn invalid(errors: BTreeMap<String, Vec<String>>) -> HttpResponse {
    HttpResponse::UnprocessableEntity()
        .json(json!({"message": "Oops! Invalid Data.", "errors": errors, "status_code": 422}))
}

/// Runs `work` behind the faults: latency, gate, authentication, and the
/// after-the-work 5xx that leaves the caller unsure whether it happened.
/// `login` names its API user; every other call is made as the token's.
async fn call(
    sandbox: &Sandbox,
    name: &'static str,
    req: &HttpRequest,
    login: Option<&str>,
    work: impl FnOnce(&str) -> HttpResponse,
) -> HttpResponse {
    let bearer = sandbox.bearer(req);
    let account = login
        .map(str::to_owned)
        .or_else(|| bearer.as_ref().map(|(account, _)| account.clone()))
        .unwrap_or_default();
    let latency = sandbox.with(|s| {
        *s.arrivals.entry(name.to_owned()).or_default() += 1;
        s.faults.latency_ms
    });
    if latency > 0 {
        tokio::time::sleep(Duration::from_millis(latency)).await;
    }
    let response = match sandbox.gate(name, &account) {
        Gate::Refuse(response) => response,
        Gate::Hang(how_long) => {
            tokio::time::sleep(how_long).await;
            HttpResponse::GatewayTimeout().json(json!({"message": "Gateway Timeout"}))
        }
        Gate::Proceed if login.is_none() && !bearer.is_some_and(|(_, valid)| valid) => {
            unauthenticated()
        }
        Gate::Proceed => {
            let response = work(&account);
            let targeted = sandbox.with(|s| s.faults.applies_to(name, &account));
            let lost = WRITES.contains(&name)
                && targeted
                && response.status().is_success()
                && sandbox.with(|s| {
                    let rate = s.faults.error_after_work_rate;
                    s.rng.chance(rate)
                });
            if lost {
                HttpResponse::BadGateway().json(json!({"message": "Bad Gateway"}))
            } else {
                response
            }
        }
    };
    sandbox.count(name, response.status());
    response
}

async fn login(
    req: HttpRequest,
    body: web::Json<Value>,
    sandbox: web::Data<Sandbox>,
) -> HttpResponse {
    let email = body
        .get("email")
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_owned();
    call(&sandbox, "login", &req, Some(&email), |email| {
        let password = body
            .get("password")
            .and_then(Value::as_str)
            .unwrap_or_default();
        if email.is_empty() || password.is_empty() {
            return HttpResponse::BadRequest().json(
                json!({"message": "Invalid email and password combination", "status_code": 400}),
            );
        }
        sandbox.with(|s| {
            let token = format!("sbx.{:016x}", (s.rng.unit() * u64::MAX as f64) as u64);
            s.tokens
                .insert(token.clone(), (Instant::now(), email.to_owned()));
            HttpResponse::Ok().json(json!({
                "id": 1, "first_name": "API", "last_name": "User", "email": email,
                "company_id": 25149, "created_at": "2025-11-25 10:00:00", "token": token
            }))
        })
    })
    .await
}

fn text(body: &Value, key: &str) -> String {
    match body.get(key) {
        Some(Value::String(s)) => s.trim().to_owned(),
        Some(Value::Number(n)) => n.to_string(),
        _ => String::new(),
    }
}

fn validate_adhoc(body: &Value, pickup_location: &str) -> BTreeMap<String, Vec<String>> {
    let mut errors: BTreeMap<String, Vec<String>> = BTreeMap::new();
    let mut add = |field: &str, problem: &str| {
        errors
            .entry(field.to_owned())
            .or_default()
            .push(problem.to_owned())
    };
    for field in [
        "order_id",
        "order_date",
        "pickup_location",
        "billing_customer_name",
        "billing_address",
        "billing_city",
        "billing_state",
        "billing_country",
        "billing_email",
        "payment_method",
    ] {
        if text(body, field).is_empty() {
            add(
                field,
                &format!("The {} field is required.", field.replace('_', " ")),
            );
        }
    }
    if text(body, "order_id").len() > 50 {
        add(
            "order_id",
            "The order id may not be greater than 50 characters.",
        );
    }
    let pincode = text(body, "billing_pincode");
    if pincode.len() != 6 || !pincode.bytes().all(|b| b.is_ascii_digit()) {
        add("billing_pincode", "The billing pincode must be 6 digits.");
    }
    let phone = text(body, "billing_phone");
    if phone.len() != 10 || !phone.bytes().all(|b| b.is_ascii_digit()) {
        add("billing_phone", "The billing phone must be 10 digits.");
    }
    let given_pickup = text(body, "pickup_location");
    if !given_pickup.is_empty() && given_pickup != pickup_location {
        add(
            "pickup_location",
            "Wrong Pickup location entered. Please choose one location from data array",
        );
    }
    match body.get("order_items").and_then(Value::as_array) {
        Some(items) if !items.is_empty() => {
            for (i, item) in items.iter().enumerate() {
                for key in ["name", "sku", "units", "selling_price"] {
                    if text(item, key).is_empty() {
                        add(
                            &format!("order_items.{i}.{key}"),
                            &format!("The order_items.{i}.{key} field is required."),
                        );
                    }
                }
            }
        }
        _ => add("order_items", "The order items field is required."),
    }
    for key in ["length", "breadth", "height"] {
        if body
            .get(key)
            .and_then(Value::as_f64)
            .is_none_or(|v| v <= 0.5)
        {
            add(key, &format!("The {key} must be greater than 0.5."));
        }
    }
    if body
        .get("weight")
        .and_then(Value::as_f64)
        .is_none_or(|v| v <= 0.0)
    {
        add("weight", "The weight must be greater than 0.");
    }
    errors
}

async fn create_adhoc(
    req: HttpRequest,
    body: web::Json<Value>,
    sandbox: web::Data<Sandbox>,
) -> HttpResponse {
    call(&sandbox, "create", &req, None, |account| {
        sandbox.with(|s| {
            let errors = validate_adhoc(&body, &s.faults.pickup_location);
            if !errors.is_empty() {
                return invalid(errors);
            }
            let channel_order_id = text(&body, "order_id");
            let existing = if s.faults.duplicate == DuplicatePolicy::Create {
                None
            } else {
                s.first_with_channel_id(account, &channel_order_id).cloned()
            };
            if let Some(existing) = existing {
                if existing.status_code == 5 || s.faults.duplicate == DuplicatePolicy::Reject {
                    let mut errors = BTreeMap::new();
                    errors.insert(
                        "order_id".to_owned(),
                        vec!["Order Id already exists.".to_owned()],
                    );
                    return invalid(errors);
                }
                return HttpResponse::Ok().json(created_json(&existing));
            }
            s.next_id += 1;
            let order = SandboxOrder {
                account: account.to_owned(),
                sr_order_id: s.next_id,
                channel_order_id,
                shipment_id: s.next_id - 1_500_000,
                status_code: 1,
                awb: None,
                courier: None,
                pickup_requested: false,
                sub_total: body.get("sub_total").and_then(Value::as_f64).unwrap_or(0.0),
                payment_method: text(&body, "payment_method"),
            };
            let response = HttpResponse::Ok().json(created_json(&order));
            s.keep(order);
            response
        })
    })
    .await
}

fn created_json(order: &SandboxOrder) -> Value {
    json!({
        "order_id": order.sr_order_id, "shipment_id": order.shipment_id,
        "status": if order.status_code == 5 { "CANCELED" } else { "NEW" }, "status_code": order.status_code,
        "onboarding_completed_now": 0, "awb_code": order.awb, "courier_company_id": null, "courier_name": order.courier
    })
}

async fn assign_awb(
    req: HttpRequest,
    body: web::Json<Value>,
    sandbox: web::Data<Sandbox>,
) -> HttpResponse {
    call(&sandbox, "assign_awb", &req, None, |account| {
        let Some(shipment_id) = body.get("shipment_id").and_then(Value::as_i64) else {
            return HttpResponse::UnprocessableEntity().json(json!({"message": "Required field missing", "status_code": 422}));
        };
        sandbox.with(|s| {
            let fail = s.rng.chance(s.faults.awb_failure_rate);
            let Some(order) = s.shipment(account, shipment_id) else {
                return HttpResponse::BadRequest().json(json!({"message": "Invalid shipment id", "status_code": 400}));
            };
            if order.awb.is_some() {
                return HttpResponse::Ok().json(json!({"awb_assign_status": 0, "response": {"data": {"awb_assign_error": "AWB is already assigned"}}}));
            }
            if fail || order.status_code == 5 {
                return HttpResponse::Ok().json(json!({"awb_assign_status": 0, "message": "Please recharge your Shiprocket wallet"}));
            }
            let awb = format!("1904{:010}", order.shipment_id);
            order.awb = Some(awb.clone());
            order.courier = Some("Delhivery Surface".into());
            HttpResponse::Ok().json(json!({"awb_assign_status": 1, "response": {"data": {
                "courier_company_id": 43, "awb_code": awb, "cod": 0, "order_id": order.sr_order_id,
                "shipment_id": order.shipment_id, "awb_code_status": 1, "applied_weight": 0.5,
                "courier_name": "Delhivery Surface", "pickup_scheduled_date": "2025-11-25 14:00:00"
            }}}))
        })
    })
    .await
}

#[derive(serde::Deserialize)]
struct Search {
    search: Option<String>,
}

async fn search_orders(
    req: HttpRequest,
    query: web::Query<Search>,
    sandbox: web::Data<Sandbox>,
) -> HttpResponse {
    call(&sandbox, "search", &req, None, |account| {
        let needle = query.search.clone().unwrap_or_default();
        sandbox.with(|s| {
            let data: Vec<Value> = s
                .orders
                .iter()
                .rev()
                .filter(|o| o.account == account)
                .filter(|o| needle.is_empty() || o.channel_order_id == needle || o.awb.as_deref() == Some(needle.as_str()))
                .map(|o| json!({
                    "id": o.sr_order_id, "channel_order_id": o.channel_order_id, "channel_id": 3422553,
                    "status": if o.status_code == 5 { "CANCELED" } else { "NEW" }, "status_code": o.status_code,
                    "payment_method": o.payment_method, "total": o.sub_total,
                    "shipments": [{"id": o.shipment_id, "awb": o.awb.clone().unwrap_or_default(), "courier": o.courier.clone().unwrap_or_default()}]
                }))
                .collect();
            let total = data.len();
            HttpResponse::Ok().json(json!({"data": data, "meta": {"pagination": {"total": total, "count": total, "per_page": 50, "current_page": 1, "total_pages": 1, "links": {}}}}))
        })
    })
    .await
}

async fn generate_pickup(
    req: HttpRequest,
    body: web::Json<Value>,
    sandbox: web::Data<Sandbox>,
) -> HttpResponse {
    call(&sandbox, "pickup", &req, None, |account| {
        let id = body.get("shipment_id").and_then(Value::as_array).and_then(|a| a.first()).and_then(Value::as_i64);
        sandbox.with(|s| match id.and_then(|id| s.shipment(account, id)).filter(|o| o.awb.is_some()) {
            Some(order) => {
                order.pickup_requested = true;
                HttpResponse::Ok().json(json!({"pickup_status": 1, "response": {"pickup_scheduled_date": "2025-11-26 12:00:00", "pickup_token_number": "Reference No: 1", "status": 3, "data": "Pickup is confirmed"}}))
            }
            None => HttpResponse::BadRequest().json(json!({"message": "Invalid shipment id", "status_code": 400})),
        })
    })
    .await
}

async fn cancel_orders(
    req: HttpRequest,
    body: web::Json<Value>,
    sandbox: web::Data<Sandbox>,
) -> HttpResponse {
    call(&sandbox, "cancel", &req, None, |account| {
        let Some(ids) = body.get("ids").and_then(Value::as_array) else {
            return HttpResponse::UnprocessableEntity()
                .json(json!({"message": "The ids field is required.", "status_code": 422}));
        };
        let ids: Vec<i64> = ids.iter().filter_map(Value::as_i64).collect();
        if sandbox.with(|s| s.faults.cancel_refused) {
            return HttpResponse::BadRequest().json(json!({
                "message": "Order cannot be cancelled: it has already been picked up", "status_code": 400
            }));
        }
        sandbox.with(|s| {
            for order in s
                .orders
                .iter_mut()
                .filter(|o| o.account == account && ids.contains(&o.sr_order_id))
            {
                order.status_code = 5;
            }
        });
        HttpResponse::NoContent().finish()
    })
    .await
}

async fn put_faults(body: web::Json<Faults>, sandbox: web::Data<Sandbox>) -> HttpResponse {
    sandbox.set_faults(body.into_inner());
    HttpResponse::Ok().json(sandbox.faults())
}

async fn stats(sandbox: web::Data<Sandbox>) -> HttpResponse {
    HttpResponse::Ok().json(
        json!({"calls": sandbox.calls(), "orders": sandbox.orders(), "faults": sandbox.faults()}),
    )
}

async fn expire_tokens(sandbox: web::Data<Sandbox>) -> HttpResponse {
    sandbox.expire_tokens();
    HttpResponse::NoContent().finish()
}

/// Routes of the sandbox, for embedding in another actix-web app.
pub fn routes(cfg: &mut web::ServiceConfig) {
    cfg.service(
        web::scope(PREFIX)
            .route("/auth/login", web::post().to(login))
            .route("/orders/create/adhoc", web::post().to(create_adhoc))
            .route("/courier/assign/awb", web::post().to(assign_awb))
            .route("/orders", web::get().to(search_orders))
            .route("/courier/generate/pickup", web::post().to(generate_pickup))
            .route("/orders/cancel", web::post().to(cancel_orders)),
    )
    .route("/sandbox/faults", web::put().to(put_faults))
    .route("/sandbox/stats", web::get().to(stats))
    .route("/sandbox/expire-tokens", web::post().to(expire_tokens));
}

/// A sandbox bound to an address, not yet serving.
pub struct SandboxServer {
    pub addr: SocketAddr,
    pub sandbox: Arc<Sandbox>,
    server: Server,
}

impl SandboxServer {
    /// Binds `listen` (port 0 for any) with `faults`, on `workers` threads.
    pub fn bind(listen: &str, faults: Faults, seed: u64, workers: usize) -> std::io::Result<Self> {
        let sandbox = Sandbox::new(faults, seed);
        let data = web::Data::from(Arc::clone(&sandbox));
        let server = HttpServer::new(move || App::new().app_data(data.clone()).configure(routes))
            .workers(workers.max(1))
            .disable_signals()
            .bind(listen)?;
        let addr = server.addrs().first().copied().ok_or_else(|| {
            std::io::Error::new(std::io::ErrorKind::AddrNotAvailable, "no address bound")
        })?;
        Ok(Self {
            addr,
            sandbox,
            server: server.run(),
        })
    }

    pub fn base_url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn handle(&self) -> ServerHandle {
        self.server.handle()
    }

    /// Serves until stopped.
    pub async fn run(self) -> std::io::Result<()> {
        self.server.await
    }
}
