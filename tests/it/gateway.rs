//! The Shiprocket gateway against the sandbox, through its direct `Call`:
//! token caching and single-flight re-login, the circuit breaker on an
//! injected clock with its one probe, 429s. Orders' calls through the queue
//! are in `shipping.rs`.

use std::sync::Arc;
use std::time::Duration;

use actix::{Actor, Addr};
use dropshipd::actors::shipping::{
    AccountHandle, Call, GatewayError, GatewaySettings, GatewayStats, ShippingRouter,
    ShiprocketCall, ShiprocketGateway,
};
use dropshipd::clients::shiprocket::{ShiprocketClient, ShiprocketError};
use dropshipd::config::Secret;
use dropshipd::domain::clock::ManualClock;
use dropshipd::domain::shipping::Answer;
use dropshipd::sandbox::{Faults, Sandbox};
use dropshipd::storage::{Storage, StorageOptions};
use dropshipd::telemetry::Metrics;

use crate::helpers::{metric_value, start_sandbox_seeded};

struct Rig {
    storage: Storage,
    clock: ManualClock,
    metrics: Arc<Metrics>,
    _dir: tempfile::TempDir,
}

fn rig() -> Rig {
    let dir = tempfile::tempdir().expect("temp dir");
    let storage = Storage::open(&StorageOptions::new(
        dir.path().join("gw.db"),
        Duration::from_secs(5),
        dropshipd::storage::PiiKey::from_bytes([7; 32]),
    ))
    .expect("storage");
    Rig {
        storage,
        clock: ManualClock::at_ms(1_764_000_000_000),
        metrics: Metrics::new(),
        _dir: dir,
    }
}

fn sandbox() -> (Arc<Sandbox>, String) {
    start_sandbox_seeded(Faults::default(), 3)
}

fn settings(account: &str, threshold: u32) -> GatewaySettings {
    GatewaySettings {
        account: account.into(),
        email: format!("{account}@example.com"),
        password: Secret::new("api-password"),
        requests_per_hour: 360_000,
        burst: 100,
        token_refresh_after: Duration::from_secs(216 * 3600),
        breaker_threshold: threshold,
        breaker_open: Duration::from_secs(30),
    }
}

fn gateway(
    rig: &Rig,
    url: &str,
    settings: GatewaySettings,
) -> (Addr<ShiprocketGateway>, AccountHandle) {
    let client = ShiprocketClient::new(url, Duration::from_secs(2)).expect("client");
    let handle = AccountHandle {
        account: settings.account.clone(),
        stats: Arc::new(GatewayStats::default()),
        requests_per_hour: settings.requests_per_hour,
        burst: settings.burst,
    };
    let addr = ShiprocketGateway::new(
        settings,
        client,
        rig.storage.clone(),
        Arc::new(rig.clock.clone()),
        Arc::clone(&rig.metrics),
        Arc::clone(&handle.stats),
    )
    .start();
    (addr, handle)
}

async fn search(addr: &Addr<ShiprocketGateway>) -> Result<Answer, GatewayError> {
    addr.send(Call(ShiprocketCall::Search("XVC-1".into())))
        .await
        .expect("mailbox")
}

fn logins(sandbox: &Sandbox) -> u64 {
    sandbox.calls().get("login:200").copied().unwrap_or(0)
}

#[actix_web::test]
async fn the_token_is_cached_reused_after_a_restart_and_refreshed_once() {
    let rig = rig();
    let (sandbox, url) = sandbox();
    let (first, _) = gateway(&rig, &url, settings("primary", 5));
    for _ in 0..3 {
        assert!(search(&first).await.is_ok());
    }
    assert_eq!(logins(&sandbox), 1);

    // Cached sealed: the token reads every customer's data at Shiprocket.
    let token = sandbox.issued_tokens().pop().expect("a token");
    let mut bytes = Vec::new();
    for entry in std::fs::read_dir(rig._dir.path()).expect("list dir") {
        bytes.extend(std::fs::read(entry.expect("entry").path()).expect("read db file"));
    }
    assert!(
        !bytes.windows(token.len()).any(|w| w == token.as_bytes()),
        "the Shiprocket token is readable in the database"
    );

    // A new gateway (a restarted daemon) finds the token in storage.
    let (second, _) = gateway(&rig, &url, settings("primary", 5));
    assert!(search(&second).await.is_ok());
    assert_eq!(logins(&sandbox), 1);

    // Revoked: ten concurrent calls see 401 and cause one login between them.
    sandbox.expire_tokens();
    let calls = futures_util::future::join_all((0..10).map(|_| search(&second))).await;
    assert!(calls.iter().all(Result::is_ok), "{calls:?}");
    assert_eq!(logins(&sandbox), 2);

    // Old enough: refreshed before use.
    rig.clock.advance_ms(217 * 3600 * 1000);
    assert!(search(&second).await.is_ok());
    assert_eq!(logins(&sandbox), 3);
}

#[actix_web::test]
async fn a_5xx_storm_opens_the_circuit_and_a_probe_closes_it() {
    let rig = rig();
    let (sandbox, url) = sandbox();
    let (addr, handle) = gateway(&rig, &url, settings("primary", 3));
    let router = ShippingRouter::new(vec![handle], Arc::new(rig.clock.clone()));
    assert!(search(&addr).await.is_ok());

    sandbox.set_faults(Faults {
        error_rate: 1.0,
        ..Faults::default()
    });
    for _ in 0..3 {
        assert!(matches!(
            search(&addr).await,
            Err(GatewayError::Shiprocket(ShiprocketError::Transient(_)))
        ));
    }
    let before = sandbox.calls().get("search:500").copied();
    assert!(matches!(
        search(&addr).await,
        Err(GatewayError::CircuitOpen { .. })
    ));
    assert_eq!(
        sandbox.calls().get("search:500").copied(),
        before,
        "an open circuit makes no call"
    );
    assert_eq!(router.status(&[])[0].circuit, "open");

    sandbox.set_faults(Faults::default());
    rig.clock.advance_ms(30_000);
    assert_eq!(router.status(&[])[0].circuit, "half_open");
    assert!(
        search(&addr).await.is_ok(),
        "the probe goes through and succeeds"
    );
    assert_eq!(router.status(&[])[0].circuit, "closed");

    let scrape = rig.metrics.render();
    assert_eq!(
        metric_value(&scrape, "dropship_shiprocket_requests_total{account=\"primary\",call=\"search\",outcome=\"transient\"}"),
        Some(3.0)
    );
    assert_eq!(
        metric_value(&scrape, "dropship_shiprocket_requests_total{account=\"primary\",call=\"search\",outcome=\"circuit_open\"}"),
        Some(1.0)
    );
    assert_eq!(
        metric_value(
            &scrape,
            "dropship_shiprocket_circuit_state{account=\"primary\"}"
        ),
        Some(0.0)
    );
}

#[actix_web::test]
async fn throttling_and_validation_never_open_the_circuit() {
    let rig = rig();
    let (sandbox, url) = sandbox();
    let (addr, _) = gateway(&rig, &url, settings("primary", 1));
    assert!(search(&addr).await.is_ok());
    sandbox.set_faults(Faults {
        throttle_rate: 1.0,
        retry_after_secs: Some(0),
        ..Faults::default()
    });
    for _ in 0..3 {
        assert!(matches!(
            search(&addr).await,
            Err(GatewayError::Shiprocket(
                ShiprocketError::RateLimited { .. }
            ))
        ));
    }
    sandbox.set_faults(Faults::default());
    let refused = addr
        .send(Call(ShiprocketCall::AssignAwb(12345)))
        .await
        .expect("mailbox");
    assert!(matches!(
        refused,
        Err(GatewayError::Shiprocket(ShiprocketError::Permanent(_)))
    ));
    assert!(search(&addr).await.is_ok(), "the circuit stayed closed");
}

#[actix_web::test]
async fn half_open_lets_exactly_one_probe_through() {
    let rig = rig();
    let (sandbox, url) = sandbox();
    let (addr, handle) = gateway(&rig, &url, settings("primary", 1));
    let router = ShippingRouter::new(vec![handle], Arc::new(rig.clock.clone()));
    assert!(search(&addr).await.is_ok());
    sandbox.set_faults(Faults {
        error_rate: 1.0,
        ..Faults::default()
    });
    assert!(search(&addr).await.is_err());
    assert_eq!(router.status(&[])[0].circuit, "open");

    // The probe hangs: while it is in flight every other call is refused at once.
    sandbox.set_faults(Faults {
        hang_rate: 1.0,
        hang_ms: 1_500,
        ..Faults::default()
    });
    rig.clock.advance_ms(30_000);
    let probe = {
        let addr = addr.clone();
        actix_web::rt::spawn(async move { search(&addr).await })
    };
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let arrived = || sandbox.arrivals().get("search").copied().unwrap_or(0);
    while arrived() < 3 {
        assert!(
            std::time::Instant::now() < deadline,
            "the probe never reached Shiprocket"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    for _ in 0..5 {
        assert!(matches!(
            search(&addr).await,
            Err(GatewayError::CircuitOpen { .. })
        ));
    }
    // The healthy search, the failure that opened the circuit, the probe.
    assert_eq!(arrived(), 3, "{:?}", sandbox.arrivals());
    let _ = probe.await;
}
