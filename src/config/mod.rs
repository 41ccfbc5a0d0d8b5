//! Configuration: the keys of SPEC §3, their defaults, environment overrides,
//! secret references and start-up validation.
//!
//! Loading is a pipeline of plain functions so each step is testable without a
//! process environment: read the TOML file, apply `DROPSHIPD__SECTION__KEY` and
//! `SHIPPING_MODE` overrides (`overrides`), deserialize into [`Config`]
//! (unknown keys are errors, so a typo never silently becomes a default), make
//! relative paths relative to the config file's folder, then validate every key
//! and resolve every secret, collecting *all* problems instead of stopping at
//! the first (`validate`).

mod overrides;
pub mod secret;
mod validate;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

pub use secret::{Secret, SecretEnv, SecretRef};
pub use validate::{Secrets, Settings};

/// Everything in `config.toml`. Field names are the contract of SPEC §3.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    pub server: ServerConfig,
    pub admin: AdminConfig,
    pub storage: StorageConfig,
    pub api: ApiConfig,
    pub razorpay: RazorpayConfig,
    pub shipping: ShippingConfig,
    pub shiprocket: ShiprocketConfig,
    pub stock: StockConfig,
    pub processing: ProcessingConfig,
    pub cluster: ClusterConfig,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ServerConfig {
    pub listen: String,
    pub max_body_bytes: u64,
}

impl Default for ServerConfig {
    fn default() -> Self {
        Self {
            listen: "0.0.0.0:8080".into(),
            max_body_bytes: 262_144,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AdminConfig {
    pub listen: String,
    pub viewer_token: SecretRef,
    pub operator_token: SecretRef,
    /// A console session unused this long is signed out.
    pub console_idle_minutes: u64,
}

impl Default for AdminConfig {
    fn default() -> Self {
        Self {
            listen: "127.0.0.1:9091".into(),
            viewer_token: SecretRef::new("env:DROPSHIPD_VIEWER_TOKEN"),
            operator_token: SecretRef::new("env:DROPSHIPD_OPERATOR_TOKEN"),
            console_idle_minutes: 30,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct StorageConfig {
    pub backend: StorageBackend,
    /// SQLite only.
    pub path: PathBuf,
    /// PostgreSQL only: a secret reference to `postgres://user:password@host:port/db`.
    pub postgres_url: SecretRef,
    /// PostgreSQL only: connections per instance.
    pub pool_size: u32,
    pub busy_timeout_ms: u64,
    pub pii_key: SecretRef,
}

impl Default for StorageConfig {
    fn default() -> Self {
        Self {
            backend: StorageBackend::Sqlite,
            path: PathBuf::from("data/dropshipd.db"),
            postgres_url: SecretRef::default(),
            pool_size: 16,
            busy_timeout_ms: 2000,
            pii_key: SecretRef::new("env:DROPSHIPD_PII_KEY"),
        }
    }
}

/// `storage.backend`: where the daemon's durable state lives (SPEC §13).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum StorageBackend {
    /// One embedded file, one instance.
    #[default]
    Sqlite,
    /// One shared database, any number of instances.
    Postgres,
}

impl StorageBackend {
    pub fn as_str(self) -> &'static str {
        match self {
            StorageBackend::Sqlite => "sqlite",
            StorageBackend::Postgres => "postgres",
        }
    }
}

/// `[cluster]`: how instances on one PostgreSQL database share the work.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ClusterConfig {
    /// Empty: the host name and process id.
    pub instance_id: String,
    pub lease_ttl_secs: u64,
    pub order_partitions: u32,
}

impl Default for ClusterConfig {
    fn default() -> Self {
        Self {
            instance_id: String::new(),
            lease_ttl_secs: 10,
            order_partitions: 32,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ApiConfig {
    pub storefront_token: SecretRef,
    pub reservation_ttl_secs: u64,
}

impl Default for ApiConfig {
    fn default() -> Self {
        Self {
            storefront_token: SecretRef::new("env:DROPSHIPD_STOREFRONT_TOKEN"),
            reservation_ttl_secs: 900,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RazorpayConfig {
    pub webhook_secret: SecretRef,
    pub previous_webhook_secret: SecretRef,
    pub accept_window_secs: u64,
    pub key_id: SecretRef,
    pub key_secret: SecretRef,
    pub api_base_url: String,
    pub reconcile_after_secs: u64,
    pub reconcile_interval_secs: u64,
}

impl Default for RazorpayConfig {
    fn default() -> Self {
        Self {
            webhook_secret: SecretRef::new("env:RAZORPAY_WEBHOOK_SECRET"),
            previous_webhook_secret: SecretRef::default(),
            accept_window_secs: 1_296_000,
            key_id: SecretRef::new("env:RAZORPAY_KEY_ID"),
            key_secret: SecretRef::new("env:RAZORPAY_KEY_SECRET"),
            api_base_url: "https://api.razorpay.com".into(),
            reconcile_after_secs: 600,
            reconcile_interval_secs: 60,
        }
    }
}

/// `shipping.mode`: whether paid orders go to Shiprocket automatically.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ShippingMode {
    #[default]
    Auto,
    Manual,
}

impl ShippingMode {
    pub fn as_str(self) -> &'static str {
        match self {
            ShippingMode::Auto => "auto",
            ShippingMode::Manual => "manual",
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ShippingConfig {
    pub mode: ShippingMode,
    pub max_attempts: u32,
    pub retry_base_ms: u64,
    pub retry_max_ms: u64,
    /// An order in doubt on an account unusable this long may go to another (SPEC §8).
    pub failover_after_secs: u64,
    pub pickup_location: String,
    pub default_weight_kg: f64,
    pub default_dims_cm: Vec<f64>,
}

impl Default for ShippingConfig {
    fn default() -> Self {
        Self {
            mode: ShippingMode::Auto,
            max_attempts: 8,
            retry_base_ms: 1000,
            retry_max_ms: 300_000,
            failover_after_secs: 600,
            pickup_location: "Primary".into(),
            default_weight_kg: 0.5,
            default_dims_cm: vec![20.0, 15.0, 10.0],
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ShiprocketConfig {
    pub base_url: String,
    pub requests_per_hour: u32,
    pub burst: u32,
    pub token_refresh_after_hours: u64,
    pub tracking_token: SecretRef,
    pub request_timeout_ms: u64,
    pub breaker_failure_threshold: u32,
    pub breaker_open_secs: u64,
    pub accounts: Vec<ShiprocketAccount>,
}

impl Default for ShiprocketConfig {
    fn default() -> Self {
        Self {
            base_url: "https://apiv2.shiprocket.in".into(),
            requests_per_hour: 1000,
            burst: 10,
            token_refresh_after_hours: 216,
            tracking_token: SecretRef::new("env:SHIPROCKET_TRACKING_TOKEN"),
            request_timeout_ms: 10_000,
            breaker_failure_threshold: 5,
            breaker_open_secs: 30,
            accounts: Vec::new(),
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ShiprocketAccount {
    pub name: String,
    pub email: String,
    pub password: SecretRef,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct StockConfig {
    pub shards: u32,
}

impl Default for StockConfig {
    fn default() -> Self {
        Self { shards: 16 }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ProcessingConfig {
    pub paused: bool,
    /// Order actors alive at once; beyond this the least recently used passivate.
    pub max_live_order_actors: u32,
    /// An order actor idle this long passivates.
    pub order_actor_idle_ms: u64,
    /// How often ended reservations are looked for.
    pub expiry_check_ms: u64,
}

impl Default for ProcessingConfig {
    fn default() -> Self {
        Self {
            paused: false,
            max_live_order_actors: 10_000,
            order_actor_idle_ms: 30_000,
            expiry_check_ms: 1000,
        }
    }
}

/// Every problem found while loading, one line each.
#[derive(Debug, thiserror::Error)]
#[error("{}", .problems.join("\n"))]
pub struct ConfigError {
    pub problems: Vec<String>,
}

impl ConfigError {
    fn one(problem: impl Into<String>) -> Self {
        Self {
            problems: vec![problem.into()],
        }
    }
}

/// Where the config comes from.
#[derive(Debug, Clone)]
pub struct ConfigSource {
    pub path: PathBuf,
    /// False for the implicit default `config.toml`, which may be absent (then
    /// defaults and environment overrides apply). A path the operator named must exist.
    pub explicit: bool,
}

/// Loads, overrides, validates and resolves the configuration. `vars` is the
/// process environment (overrides and `env:` secrets read it).
pub fn load(
    source: &ConfigSource,
    vars: BTreeMap<String, String>,
) -> Result<Settings, ConfigError> {
    let text = read_text(source)?;
    let file_missing = text.is_none();
    let text = text.unwrap_or_default();
    let base_dir = source
        .path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from("."));
    let config = parse(&text, &vars)?;
    let mut settings = validate::settle(config, SecretEnv { vars, base_dir })?;
    if file_missing {
        settings.warnings.push(format!(
            "no config file at {}; using defaults and environment overrides",
            source.path.display()
        ));
    }
    Ok(settings)
}

/// The config file's text; `None` when the implicit default file is absent
/// (then defaults and overrides apply). A file the operator named must exist.
fn read_text(source: &ConfigSource) -> Result<Option<String>, ConfigError> {
    match std::fs::read_to_string(&source.path) {
        Ok(text) => Ok(Some(text)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound && !source.explicit => Ok(None),
        Err(e) => Err(ConfigError::one(format!(
            "cannot read config file {}: {e}",
            source.path.display()
        ))),
    }
}

/// Where the database is, from the config file and overrides alone: tools that
/// only read the database (`audit verify`) need no secrets.
pub fn storage_path(
    source: &ConfigSource,
    vars: &BTreeMap<String, String>,
) -> Result<PathBuf, ConfigError> {
    let text = read_text(source)?.unwrap_or_default();
    let path = parse(&text, vars)?.storage.path;
    Ok(
        match source.path.parent().filter(|p| !p.as_os_str().is_empty()) {
            Some(base) if path.is_relative() => base.join(path),
            _ => path,
        },
    )
}

/// Parses config text and applies environment overrides. No validation yet.
pub fn parse(text: &str, vars: &BTreeMap<String, String>) -> Result<Config, ConfigError> {
    let mut table: toml::Table = text.parse().map_err(|e: toml::de::Error| {
        ConfigError::one(format!("config file is not valid TOML: {e}"))
    })?;
    overrides::apply(&mut table, vars)?;
    Config::deserialize(toml::Value::Table(table))
        .map_err(|e| ConfigError::one(format!("config: {}", e.to_string().trim())))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_file_gives_the_spec_defaults() {
        let config = parse("", &BTreeMap::new()).unwrap();
        assert_eq!(config.server.listen, "0.0.0.0:8080");
        assert_eq!(config.server.max_body_bytes, 262_144);
        assert_eq!(config.admin.listen, "127.0.0.1:9091");
        assert_eq!(config.razorpay.accept_window_secs, 1_296_000);
        assert_eq!(config.shiprocket.token_refresh_after_hours, 216);
        assert_eq!(config.stock.shards, 16);
        assert_eq!(config.shipping.default_dims_cm, vec![20.0, 15.0, 10.0]);
    }

    #[test]
    fn shipped_config_toml_parses_to_the_defaults() {
        let text = include_str!("../../config.toml");
        let config = parse(text, &BTreeMap::new()).unwrap();
        let defaults = Config::default();
        assert_eq!(
            toml::to_string(&config.server).unwrap(),
            toml::to_string(&defaults.server).unwrap()
        );
        assert_eq!(
            toml::to_string(&config.storage).unwrap(),
            toml::to_string(&defaults.storage).unwrap()
        );
        assert_eq!(
            toml::to_string(&config.cluster).unwrap(),
            toml::to_string(&defaults.cluster).unwrap()
        );
        assert_eq!(config.shiprocket.accounts.len(), 1);
        assert_eq!(config.shiprocket.accounts[0].name, "primary");
    }

    #[test]
    fn unknown_keys_are_named() {
        let err = parse("[server]\nlisten_addr = \"x\"\n", &BTreeMap::new()).unwrap_err();
        assert!(err.to_string().contains("listen_addr"), "{err}");
        let err = parse("[nosuch]\n", &BTreeMap::new()).unwrap_err();
        assert!(err.to_string().contains("nosuch"), "{err}");
    }

    #[test]
    fn explicit_missing_file_is_an_error_implicit_one_is_not() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("absent.toml");
        let mut vars = BTreeMap::new();
        vars.insert("RAZORPAY_WEBHOOK_SECRET".into(), "w".into());
        vars.insert("DROPSHIPD_VIEWER_TOKEN".into(), "v".into());
        vars.insert("DROPSHIPD_OPERATOR_TOKEN".into(), "o".into());
        vars.insert(
            "DROPSHIPD_PII_KEY".into(),
            "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef".into(),
        );
        let explicit = ConfigSource {
            path: missing.clone(),
            explicit: true,
        };
        assert!(load(&explicit, vars.clone()).is_err());
        let implicit = ConfigSource {
            path: missing,
            explicit: false,
        };
        let settings = load(&implicit, vars).unwrap();
        assert!(
            settings.warnings[0].contains("no config file"),
            "{:?}",
            settings.warnings
        );
        // Relative paths are relative to the config file's folder.
        assert_eq!(
            settings.config.storage.path,
            dir.path().join("data/dropshipd.db")
        );
    }
}
