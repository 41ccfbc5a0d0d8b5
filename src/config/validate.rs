//! Start-up validation: every key checked, every secret resolved, and every
//! problem reported at once, so an operator fixes a config in one pass.

use std::collections::BTreeSet;
use std::fmt::Write as _;
use std::net::SocketAddr;

use super::secret::{self, Secret, SecretEnv, SecretRef};
use super::{Config, ConfigError, StorageBackend};

/// The resolved secrets. Optional ones are `None` when not set.
#[derive(Debug, Clone)]
pub struct Secrets {
    pub webhook_secret: Secret,
    pub previous_webhook_secret: Option<Secret>,
    pub viewer_token: Secret,
    pub operator_token: Secret,
    pub storefront_token: Option<Secret>,
    pub pii_key: Option<Secret>,
    /// Resolved when `storage.backend = "postgres"` (required then).
    pub postgres_url: Option<Secret>,
    pub razorpay_key_id: Option<Secret>,
    pub razorpay_key_secret: Option<Secret>,
    pub tracking_token: Option<Secret>,
    /// One per `[[shiprocket.accounts]]`, in the same order.
    pub shiprocket_passwords: Vec<Option<Secret>>,
}

impl Secrets {
    /// Secrets for tests and tools that build a config in code.
    pub fn for_webhooks(webhook_secret: &str, viewer_token: &str, operator_token: &str) -> Self {
        Self {
            webhook_secret: Secret::new(webhook_secret),
            previous_webhook_secret: None,
            viewer_token: Secret::new(viewer_token),
            operator_token: Secret::new(operator_token),
            storefront_token: None,
            pii_key: None,
            postgres_url: None,
            razorpay_key_id: None,
            razorpay_key_secret: None,
            tracking_token: None,
            shiprocket_passwords: Vec::new(),
        }
    }
}

/// A validated config with its secrets: what the daemon runs on.
#[derive(Debug, Clone)]
pub struct Settings {
    pub config: Config,
    pub secrets: Secrets,
    /// Accepted but worth an operator's attention (literal secrets, a public admin listener).
    pub warnings: Vec<String>,
}

/// How far a listener reaches, which decides whether exposing it deserves a warning.
fn parse_listen(key: &str, value: &str, problems: &mut Vec<String>) -> Option<SocketAddr> {
    match value.parse::<SocketAddr>() {
        Ok(addr) => Some(addr),
        Err(_) => {
            problems.push(format!(
                "{key}: {value:?} is not an address like 127.0.0.1:8080"
            ));
            None
        }
    }
}

fn positive(value: f64) -> bool {
    value.is_finite() && value > 0.0
}

fn check_url(key: &str, value: &str, problems: &mut Vec<String>) {
    if !(value.starts_with("http://") || value.starts_with("https://")) {
        problems.push(format!("{key}: {value:?} is not an http(s) URL"));
    }
}

pub(super) fn settle(mut config: Config, env: SecretEnv) -> Result<Settings, ConfigError> {
    let mut problems = Vec::new();
    let mut warnings = Vec::new();

    if config.storage.path.is_relative() {
        config.storage.path = env.base_dir.join(&config.storage.path);
    }

    parse_listen("server.listen", &config.server.listen, &mut problems);
    if let Some(admin) = parse_listen("admin.listen", &config.admin.listen, &mut problems) {
        if !admin.ip().is_loopback() {
            warnings.push(format!(
                "admin.listen {admin} is not a loopback address: the admin API and /metrics are reachable from the network"
            ));
        }
    }
    if !(1024..=64 * 1024 * 1024).contains(&config.server.max_body_bytes) {
        problems.push("server.max_body_bytes: must be between 1024 and 67108864".into());
    }
    if config.storage.busy_timeout_ms == 0 {
        problems.push("storage.busy_timeout_ms: must be at least 1".into());
    }
    if !(1..=1000).contains(&config.storage.pool_size) {
        problems.push("storage.pool_size: must be between 1 and 1000".into());
    }
    let cl = &config.cluster;
    if !(2..=3600).contains(&cl.lease_ttl_secs) {
        problems.push(
            "cluster.lease_ttl_secs: must be between 2 and 3600 (leases are renewed several times within it)"
                .into(),
        );
    }
    if !(1..=4096).contains(&cl.order_partitions) {
        problems.push("cluster.order_partitions: must be between 1 and 4096".into());
    }
    if cl.instance_id.len() > 128 || cl.instance_id.chars().any(|c| c.is_control()) {
        problems.push("cluster.instance_id: at most 128 characters, no control characters".into());
    }
    if config.api.reservation_ttl_secs == 0 {
        problems.push("api.reservation_ttl_secs: must be at least 1".into());
    }
    let rp = &config.razorpay;
    if rp.accept_window_secs < 86_400 {
        problems.push(
            "razorpay.accept_window_secs: must be at least 86400, since Razorpay retries for 24 hours".into(),
        );
    }
    check_url("razorpay.api_base_url", &rp.api_base_url, &mut problems);
    if rp.reconcile_interval_secs == 0 {
        problems.push("razorpay.reconcile_interval_secs: must be at least 1".into());
    }
    let sh = &config.shipping;
    if sh.max_attempts == 0 {
        problems.push("shipping.max_attempts: must be at least 1".into());
    }
    if sh.retry_base_ms == 0 || sh.retry_base_ms > sh.retry_max_ms {
        problems.push(
            "shipping.retry_base_ms: must be at least 1 and at most shipping.retry_max_ms".into(),
        );
    }
    if sh.failover_after_secs == 0 {
        problems.push("shipping.failover_after_secs: must be at least 1".into());
    }
    if sh.pickup_location.trim().is_empty() {
        problems.push("shipping.pickup_location: must not be empty".into());
    }
    if !positive(sh.default_weight_kg) {
        problems.push("shipping.default_weight_kg: must be above 0".into());
    }
    if sh.default_dims_cm.len() != 3 || sh.default_dims_cm.iter().any(|d| !positive(*d)) {
        problems.push(
            "shipping.default_dims_cm: must be three lengths above 0 (length, breadth, height)"
                .into(),
        );
    }
    let sr = &config.shiprocket;
    check_url("shiprocket.base_url", &sr.base_url, &mut problems);
    for (key, value) in [
        (
            "shiprocket.requests_per_hour",
            u64::from(sr.requests_per_hour),
        ),
        ("shiprocket.burst", u64::from(sr.burst)),
        (
            "shiprocket.token_refresh_after_hours",
            sr.token_refresh_after_hours,
        ),
        ("shiprocket.request_timeout_ms", sr.request_timeout_ms),
        (
            "shiprocket.breaker_failure_threshold",
            u64::from(sr.breaker_failure_threshold),
        ),
        ("shiprocket.breaker_open_secs", sr.breaker_open_secs),
    ] {
        if value == 0 {
            problems.push(format!("{key}: must be at least 1"));
        }
    }
    if sr.token_refresh_after_hours >= 240 {
        problems.push(
            "shiprocket.token_refresh_after_hours: must be below 240, the token's lifetime".into(),
        );
    }
    let mut names = BTreeSet::new();
    for (i, account) in sr.accounts.iter().enumerate() {
        if account.name.trim().is_empty() {
            problems.push(format!("shiprocket.accounts[{i}].name: must not be empty"));
        } else if !names.insert(account.name.as_str()) {
            problems.push(format!(
                "shiprocket.accounts[{i}].name: {:?} is used twice",
                account.name
            ));
        }
        if !account.email.contains('@') {
            problems.push(format!(
                "shiprocket.accounts[{i}].email: {:?} is not an e-mail address",
                account.email
            ));
        }
    }
    if config.processing.max_live_order_actors == 0 {
        problems.push("processing.max_live_order_actors: must be at least 1".into());
    }
    if config.processing.order_actor_idle_ms == 0 || config.processing.expiry_check_ms == 0 {
        problems.push(
            "processing.order_actor_idle_ms and processing.expiry_check_ms: must be at least 1"
                .into(),
        );
    }
    if !(1..=1024).contains(&config.stock.shards) {
        problems.push("stock.shards: must be between 1 and 1024".into());
    }

    let mut resolve = |key: &str, reference: &SecretRef, required: bool| -> Option<Secret> {
        match secret::resolve(reference, required, &env) {
            Ok(resolved) => {
                if resolved.literal {
                    warnings.push(format!(
                        "{key} holds a literal secret in the config file; use env:, file: or cred: instead"
                    ));
                }
                resolved.value
            }
            Err(e) => {
                problems.push(format!("{key}: {e}"));
                None
            }
        }
    };
    let webhook_secret = resolve(
        "razorpay.webhook_secret",
        &config.razorpay.webhook_secret,
        true,
    );
    let previous_webhook_secret = resolve(
        "razorpay.previous_webhook_secret",
        &config.razorpay.previous_webhook_secret,
        false,
    );
    let viewer_token = resolve("admin.viewer_token", &config.admin.viewer_token, true);
    let operator_token = resolve("admin.operator_token", &config.admin.operator_token, true);
    let storefront_token = resolve("api.storefront_token", &config.api.storefront_token, false);
    let postgres = config.storage.backend == StorageBackend::Postgres;
    let postgres_url = resolve(
        "storage.postgres_url",
        &config.storage.postgres_url,
        postgres,
    );
    // Customer data is never stored in the clear (SPEC §10), so the key is required.
    let pii_key = resolve("storage.pii_key", &config.storage.pii_key, true);
    let razorpay_key_id = resolve("razorpay.key_id", &config.razorpay.key_id, false);
    let razorpay_key_secret = resolve("razorpay.key_secret", &config.razorpay.key_secret, false);
    let tracking_token = resolve(
        "shiprocket.tracking_token",
        &config.shiprocket.tracking_token,
        false,
    );
    let shiprocket_passwords: Vec<Option<Secret>> = config
        .shiprocket
        .accounts
        .iter()
        .enumerate()
        .map(|(i, a)| {
            resolve(
                &format!("shiprocket.accounts[{i}].password"),
                &a.password,
                false,
            )
        })
        .collect();

    if let (Some(viewer), Some(operator)) = (&viewer_token, &operator_token) {
        if viewer == operator {
            problems.push(
                "admin.viewer_token and admin.operator_token must differ, or roles mean nothing"
                    .into(),
            );
        }
    }
    if let Some(url) = postgres_url.as_ref().filter(|_| postgres) {
        let text = url.expose();
        if !(text.starts_with("postgres://") || text.starts_with("postgresql://")) {
            problems.push(
                "storage.postgres_url: must be a URL like postgres://user:password@host:5432/db"
                    .into(),
            );
        }
    }
    if let Some(key) = &pii_key {
        let hex = key.expose();
        if hex.len() != 64 || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
            problems.push("storage.pii_key: must be 32 bytes written as 64 hex digits".into());
        }
    }
    if razorpay_key_id.is_some() != razorpay_key_secret.is_some() {
        problems.push("razorpay.key_id and razorpay.key_secret: set both or neither".into());
    }

    match (webhook_secret, viewer_token, operator_token) {
        (Some(webhook_secret), Some(viewer_token), Some(operator_token)) if problems.is_empty() => {
            Ok(Settings {
                config,
                secrets: Secrets {
                    webhook_secret,
                    previous_webhook_secret,
                    viewer_token,
                    operator_token,
                    storefront_token,
                    pii_key,
                    postgres_url,
                    razorpay_key_id,
                    razorpay_key_secret,
                    tracking_token,
                    shiprocket_passwords,
                },
                warnings,
            })
        }
        _ => Err(ConfigError { problems }),
    }
}

impl Settings {
    /// The `check-config` summary: every key that matters, secrets shown only as
    /// their reference and whether they resolved.
    pub fn summary(&self) -> String {
        let c = &self.config;
        let s = &self.secrets;
        let secret = |reference: &SecretRef, value: Option<&Secret>| match value {
            Some(_) => format!("{} (set, ****)", reference.describe()),
            None => format!("{} (not set)", reference.describe()),
        };
        let mut out = String::new();
        let mut line = |k: &str, v: String| {
            let _ = writeln!(out, "{k:<36} {v}");
        };
        line("server.listen", c.server.listen.clone());
        line("server.max_body_bytes", c.server.max_body_bytes.to_string());
        line("admin.listen", c.admin.listen.clone());
        line(
            "admin.viewer_token",
            secret(&c.admin.viewer_token, Some(&s.viewer_token)),
        );
        line(
            "admin.operator_token",
            secret(&c.admin.operator_token, Some(&s.operator_token)),
        );
        line("storage.backend", c.storage.backend.as_str().to_owned());
        line("storage.path", c.storage.path.display().to_string());
        line(
            "storage.postgres_url",
            secret(&c.storage.postgres_url, s.postgres_url.as_ref()),
        );
        line("storage.pool_size", c.storage.pool_size.to_string());
        line(
            "storage.busy_timeout_ms",
            c.storage.busy_timeout_ms.to_string(),
        );
        line(
            "storage.pii_key",
            secret(&c.storage.pii_key, s.pii_key.as_ref()),
        );
        line(
            "api.storefront_token",
            secret(&c.api.storefront_token, s.storefront_token.as_ref()),
        );
        line(
            "api.reservation_ttl_secs",
            c.api.reservation_ttl_secs.to_string(),
        );
        line(
            "razorpay.webhook_secret",
            secret(&c.razorpay.webhook_secret, Some(&s.webhook_secret)),
        );
        line(
            "razorpay.previous_webhook_secret",
            secret(
                &c.razorpay.previous_webhook_secret,
                s.previous_webhook_secret.as_ref(),
            ),
        );
        line(
            "razorpay.accept_window_secs",
            c.razorpay.accept_window_secs.to_string(),
        );
        line(
            "razorpay.key_id",
            secret(&c.razorpay.key_id, s.razorpay_key_id.as_ref()),
        );
        line(
            "razorpay.key_secret",
            secret(&c.razorpay.key_secret, s.razorpay_key_secret.as_ref()),
        );
        line("razorpay.api_base_url", c.razorpay.api_base_url.clone());
        line("shipping.mode", c.shipping.mode.as_str().to_owned());
        line("shipping.max_attempts", c.shipping.max_attempts.to_string());
        line(
            "shipping.failover_after_secs",
            c.shipping.failover_after_secs.to_string(),
        );
        line("shiprocket.base_url", c.shiprocket.base_url.clone());
        line(
            "shiprocket.requests_per_hour",
            c.shiprocket.requests_per_hour.to_string(),
        );
        line("shiprocket.burst", c.shiprocket.burst.to_string());
        line(
            "shiprocket.tracking_token",
            secret(&c.shiprocket.tracking_token, s.tracking_token.as_ref()),
        );
        for (i, account) in c.shiprocket.accounts.iter().enumerate() {
            let password = s.shiprocket_passwords.get(i).and_then(Option::as_ref);
            line(
                &format!("shiprocket.accounts[{i}]"),
                format!(
                    "{} <{}> password {}",
                    account.name,
                    account.email,
                    secret(&account.password, password)
                ),
            );
        }
        line("stock.shards", c.stock.shards.to_string());
        line("processing.paused", c.processing.paused.to_string());
        if c.storage.backend == StorageBackend::Postgres {
            let id = if c.cluster.instance_id.is_empty() {
                "(host name and process id)".to_owned()
            } else {
                c.cluster.instance_id.clone()
            };
            line("cluster.instance_id", id);
            line(
                "cluster.lease_ttl_secs",
                c.cluster.lease_ttl_secs.to_string(),
            );
            line(
                "cluster.order_partitions",
                c.cluster.order_partitions.to_string(),
            );
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;
    use std::path::PathBuf;

    use super::super::parse;
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> SecretEnv {
        SecretEnv {
            vars: pairs
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            base_dir: PathBuf::from("/etc/dropshipd"),
        }
    }

    fn good_env() -> SecretEnv {
        env(&[
            ("RAZORPAY_WEBHOOK_SECRET", "whsec"),
            ("DROPSHIPD_VIEWER_TOKEN", "viewer"),
            ("DROPSHIPD_OPERATOR_TOKEN", "operator"),
            (
                "DROPSHIPD_PII_KEY",
                "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef",
            ),
        ])
    }

    #[test]
    fn defaults_with_the_required_secrets_are_valid() {
        let settings = settle(Config::default(), good_env()).unwrap();
        assert_eq!(settings.secrets.webhook_secret.expose(), "whsec");
        assert!(settings.secrets.previous_webhook_secret.is_none());
        assert_eq!(
            settings.config.storage.path,
            PathBuf::from("/etc/dropshipd/data/dropshipd.db")
        );
        assert!(settings.warnings.is_empty());
    }

    #[test]
    fn every_problem_is_reported_at_once() {
        let text = r#"
            [server]
            listen = "nowhere"
            [storage]
            pii_key = "env:PII"
            [shipping]
            retry_base_ms = 10
            retry_max_ms = 5
            default_dims_cm = [1, 2]
            [stock]
            shards = 0
        "#;
        let config = parse(text, &BTreeMap::new()).unwrap();
        let err = settle(
            config,
            env(&[
                ("PII", "not-hex"),
                ("DROPSHIPD_VIEWER_TOKEN", "same"),
                ("DROPSHIPD_OPERATOR_TOKEN", "same"),
            ]),
        )
        .unwrap_err();
        let all = err.to_string();
        for expected in [
            "server.listen",
            "storage.pii_key",
            "shipping.retry_base_ms",
            "shipping.default_dims_cm",
            "stock.shards",
            "razorpay.webhook_secret: environment variable RAZORPAY_WEBHOOK_SECRET is not set",
            "must differ",
        ] {
            assert!(all.contains(expected), "missing {expected:?} in:\n{all}");
        }
        assert_eq!(err.problems.len(), 7, "{all}");
    }

    #[test]
    fn the_postgres_backend_needs_its_url_and_sane_cluster_keys() {
        let text = r#"
            [storage]
            backend = "postgres"
            postgres_url = "env:PG_URL"
            pool_size = 0
            [cluster]
            lease_ttl_secs = 1
            order_partitions = 0
        "#;
        let config = parse(text, &BTreeMap::new()).unwrap();
        let err = settle(config, good_env()).unwrap_err();
        let all = err.to_string();
        for expected in [
            "storage.postgres_url: environment variable PG_URL is not set",
            "storage.pool_size",
            "cluster.lease_ttl_secs",
            "cluster.order_partitions",
        ] {
            assert!(all.contains(expected), "missing {expected:?} in:\n{all}");
        }
        assert_eq!(err.problems.len(), 4, "{all}");

        let config = parse(text, &BTreeMap::new()).unwrap();
        let mut vars = good_env();
        vars.vars.insert("PG_URL".into(), "mysql://x".into());
        let err = settle(config, vars).unwrap_err().to_string();
        assert!(err.contains("storage.postgres_url: must be a URL"), "{err}");

        let good = r#"
            [storage]
            backend = "postgres"
            postgres_url = "env:PG_URL"
            [cluster]
            instance_id = "web-1"
        "#;
        let mut vars = good_env();
        vars.vars
            .insert("PG_URL".into(), "postgres://shop:pw@db:5432/shop".into());
        let settings = settle(parse(good, &BTreeMap::new()).unwrap(), vars).unwrap();
        assert_eq!(settings.config.storage.backend, StorageBackend::Postgres);
        assert_eq!(settings.config.storage.pool_size, 16);
        assert_eq!(settings.config.cluster.lease_ttl_secs, 10);
        assert_eq!(settings.config.cluster.order_partitions, 32);
        let summary = settings.summary();
        assert!(summary.contains("cluster.instance_id"), "{summary}");
        assert!(!summary.contains("pw@db"), "the URL is a secret: {summary}");
    }

    #[test]
    fn on_sqlite_the_postgres_url_is_not_needed() {
        let settings = settle(Config::default(), good_env()).unwrap();
        assert_eq!(settings.config.storage.backend, StorageBackend::Sqlite);
        assert!(settings.secrets.postgres_url.is_none());
        assert!(!settings.summary().contains("cluster."));
    }

    #[test]
    fn literal_secrets_and_public_admin_listener_warn() {
        let mut config = Config::default();
        config.razorpay.webhook_secret = SecretRef::new("literally-in-the-file");
        config.admin.listen = "0.0.0.0:9091".into();
        let settings = settle(config, good_env()).unwrap();
        assert_eq!(settings.warnings.len(), 2, "{:?}", settings.warnings);
        assert!(!settings
            .warnings
            .join(" ")
            .contains("literally-in-the-file"));
    }

    #[test]
    fn summary_masks_every_secret() {
        let mut config = Config::default();
        config.razorpay.webhook_secret = SecretRef::new("literal-webhook-secret");
        let env = env(&[
            ("DROPSHIPD_VIEWER_TOKEN", "vt-5ecret-1"),
            ("DROPSHIPD_OPERATOR_TOKEN", "ot-5ecret-2"),
            (
                "DROPSHIPD_PII_KEY",
                "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef",
            ),
        ]);
        let settings = settle(config, env).unwrap();
        let summary = settings.summary();
        for secret in ["literal-webhook-secret", "vt-5ecret-1", "ot-5ecret-2"] {
            assert!(!summary.contains(secret), "{secret} leaked:\n{summary}");
        }
        assert!(summary.contains("env:DROPSHIPD_VIEWER_TOKEN (set, ****)"));
        assert!(
            !summary.contains("0123456789abcdef"),
            "pii key leaked:\n{summary}"
        );
        assert!(summary.contains("env:DROPSHIPD_PII_KEY (set, ****)"));
        assert!(summary.contains("env:RAZORPAY_KEY_ID (not set)"));
    }
}
