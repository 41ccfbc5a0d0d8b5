//! The Shiprocket client against the project's sandbox over real HTTP: the
//! happy path, the quirks of reference/shiprocket.md and every injected fault,
//! each classified the way the gateway needs.

use std::sync::Arc;
use std::time::Duration;

use dropshipd::clients::shiprocket::{
    AdhocOrder, ShipmentItem, ShipmentRequest, ShiprocketClient, ShiprocketError,
};
use dropshipd::sandbox::{DuplicatePolicy, Faults, Sandbox};

fn start(faults: Faults) -> (ShiprocketClient, Arc<Sandbox>, String) {
    let (sandbox, url) = crate::helpers::start_sandbox_seeded(faults, 7);
    let client = ShiprocketClient::new(&url, Duration::from_millis(500)).expect("client");
    (client, sandbox, url)
}

fn shipment(order_id: &str) -> ShipmentRequest {
    ShipmentRequest {
        channel_order_id: order_id.into(),
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

#[actix_web::test]
async fn login_create_assign_pickup_search_cancel() {
    let (client, sandbox, _) = start(Faults::default());
    let token = client
        .login("api@example.com", "secret")
        .await
        .expect("login");
    let adhoc = AdhocOrder::from_request(&shipment("XVC-S1")).expect("wire form");
    let created = client.create_order(&token, &adhoc).await.expect("create");
    let awb = client
        .assign_awb(&token, created.shipment_id)
        .await
        .expect("awb");
    assert!(!awb.awb_code.is_empty());
    assert_eq!(awb.courier_name, "Delhivery Surface");
    // A second assignment fails inside an HTTP 200.
    let again = client
        .assign_awb(&token, created.shipment_id)
        .await
        .expect_err("already assigned");
    assert_eq!(
        again,
        ShiprocketError::Permanent("AWB is already assigned".into())
    );
    client
        .generate_pickup(&token, created.shipment_id)
        .await
        .expect("pickup");

    let found = client
        .search_orders(&token, "XVC-S1")
        .await
        .expect("search");
    assert_eq!(found.len(), 1);
    assert_eq!(found[0].sr_order_id, created.sr_order_id);
    assert_eq!(found[0].awb.as_deref(), Some(awb.awb_code.as_str()));
    assert!(client
        .search_orders(&token, "XVC-NONE")
        .await
        .expect("search")
        .is_empty());

    client
        .cancel_orders(&token, &[created.sr_order_id])
        .await
        .expect("cancel");
    assert!(
        client
            .search_orders(&token, "XVC-S1")
            .await
            .expect("search")[0]
            .cancelled
    );
    // A cancelled channel id cannot be reused.
    assert!(matches!(
        client.create_order(&token, &adhoc).await,
        Err(ShiprocketError::Permanent(_))
    ));
    assert_eq!(sandbox.orders().len(), 1);
}

#[actix_web::test]
async fn duplicates_validation_and_expired_tokens() {
    let (client, sandbox, _) = start(Faults::default());
    let token = client
        .login("api@example.com", "secret")
        .await
        .expect("login");
    let adhoc = AdhocOrder::from_request(&shipment("XVC-S2")).expect("wire form");
    let first = client.create_order(&token, &adhoc).await.expect("create");
    let echo = client
        .create_order(&token, &adhoc)
        .await
        .expect("duplicate echoes");
    assert_eq!(first, echo);
    assert_eq!(sandbox.orders().len(), 1);

    sandbox.set_faults(Faults {
        duplicate: DuplicatePolicy::Reject,
        ..Faults::default()
    });
    assert!(
        matches!(client.create_order(&token, &adhoc).await, Err(ShiprocketError::Permanent(m)) if m.contains("order_id"))
    );

    let mut wrong_pickup = shipment("XVC-S3");
    wrong_pickup.pickup_location = "Warehouse 9".into();
    let refused = client
        .create_order(
            &token,
            &AdhocOrder::from_request(&wrong_pickup).expect("wire"),
        )
        .await
        .expect_err("422");
    assert!(
        matches!(&refused, ShiprocketError::Permanent(m) if m.contains("HTTP 422") && m.contains("pickup_location")),
        "{refused:?}"
    );

    sandbox.expire_tokens();
    assert_eq!(
        client.search_orders(&token, "XVC-S2").await,
        Err(ShiprocketError::Unauthorized)
    );
    let fresh = client
        .login("api@example.com", "secret")
        .await
        .expect("login again");
    assert!(client.search_orders(&fresh, "XVC-S2").await.is_ok());
    assert!(matches!(
        client.login("", "").await,
        Err(ShiprocketError::Permanent(_))
    ));
}

#[actix_web::test]
async fn injected_faults_are_classified() {
    let (client, sandbox, _) = start(Faults::default());
    let token = client
        .login("api@example.com", "secret")
        .await
        .expect("login");

    sandbox.set_faults(Faults {
        error_rate: 1.0,
        ..Faults::default()
    });
    assert!(
        matches!(client.search_orders(&token, "x").await, Err(ShiprocketError::Transient(m)) if m.contains("500"))
    );

    sandbox.set_faults(Faults {
        throttle_rate: 1.0,
        retry_after_secs: Some(3),
        ..Faults::default()
    });
    assert_eq!(
        client.search_orders(&token, "x").await,
        Err(ShiprocketError::RateLimited {
            retry_after: Some(Duration::from_secs(3))
        })
    );

    sandbox.set_faults(Faults {
        hang_rate: 1.0,
        hang_ms: 5_000,
        ..Faults::default()
    });
    assert_eq!(
        client.search_orders(&token, "x").await,
        Err(ShiprocketError::Transient("timed out".into()))
    );

    // The create happens, but the answer is lost: the caller must search before retrying.
    sandbox.set_faults(Faults {
        error_after_work_rate: 1.0,
        ..Faults::default()
    });
    let adhoc = AdhocOrder::from_request(&shipment("XVC-S4")).expect("wire");
    assert!(matches!(
        client.create_order(&token, &adhoc).await,
        Err(ShiprocketError::Transient(_))
    ));
    sandbox.set_faults(Faults::default());
    assert_eq!(
        client
            .search_orders(&token, "XVC-S4")
            .await
            .expect("search")
            .len(),
        1
    );

    sandbox.set_faults(Faults {
        rate_limit_per_sec: Some(5.0),
        ..Faults::default()
    });
    let mut limited = 0;
    for _ in 0..20 {
        if matches!(
            client.search_orders(&token, "x").await,
            Err(ShiprocketError::RateLimited { .. })
        ) {
            limited += 1;
        }
    }
    assert!(limited >= 10, "{limited} of 20 calls limited");
    let calls = sandbox.calls();
    assert!(
        calls.get("search:429").copied().unwrap_or(0) >= 10,
        "{calls:?}"
    );
}
