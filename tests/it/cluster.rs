//! Several daemons on one PostgreSQL database (SPEC §13), in this test's
//! actix system: any instance takes any request and answers as one node
//! would, whichever instance owns the order.

use std::sync::Arc;
use std::time::Duration;

use dropshipd::config::{Secret, Settings, StorageBackend};
use dropshipd::sandbox::Faults;

use crate::helpers::{
    captured_for, checkout_body, spawn_app_in, start_sandbox, with_shiprocket, TestApp,
    OPERATOR_TOKEN,
};
use crate::postgres::scratch_postgres;

/// `settings` as instance `name` of a cluster on `url`.
pub(crate) fn clustered(settings: &mut Settings, url: &str, name: &str) {
    settings.config.storage.backend = StorageBackend::Postgres;
    settings.secrets.postgres_url = Some(Secret::new(url));
    settings.config.storage.pool_size = 8;
    settings.config.cluster.instance_id = name.to_owned();
    settings.config.cluster.lease_ttl_secs = 3;
    settings.config.cluster.order_partitions = 12;
}

async fn start_cluster(url: &str, shiprocket: Option<&str>) -> Vec<TestApp> {
    let mut apps = Vec::new();
    for name in ["a", "b", "c"] {
        let dir = Arc::new(tempfile::tempdir().expect("temp dir"));
        apps.push(
            spawn_app_in(dir, |s| {
                clustered(s, url, name);
                if let Some(url) = shiprocket {
                    with_shiprocket(s, url);
                }
            })
            .await,
        );
    }
    apps
}

/// A lease's kind, from its resource (`order_partition:3`, `account:primary`, `leader`).
fn kind(lease: &serde_json::Value) -> &str {
    lease["resource"]
        .as_str()
        .and_then(|r| r.split(':').next())
        .unwrap_or_default()
}

/// Waits until the partitions are spread over all three (4 each of 12).
async fn settled(apps: &[TestApp]) {
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        let mut counts = Vec::new();
        for app in apps {
            let status = app.status().await;
            counts.push(status["cluster"]["leases"].as_array().map_or(0, |leases| {
                leases
                    .iter()
                    .filter(|l| {
                        kind(l) == "order_partition"
                            && l["owner"] == status["cluster"]["instance_id"]
                    })
                    .count()
            }));
        }
        if counts == [4, 4, 4] {
            return;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "partitions never spread evenly: {counts:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[actix_web::test]
async fn any_instance_takes_any_request_and_each_order_ships_once() {
    let Some(server) = scratch_postgres("any_instance_takes_any_request_and_each_order_ships_once")
    else {
        return;
    };
    let url = server.create_database("cluster_any").expect("database");
    let (sandbox, sandbox_url) = start_sandbox(Faults::default());
    let apps = start_cluster(&url, Some(&sandbox_url)).await;
    settled(&apps).await;
    apps[0].set_stock("TEE", 100).await;

    const ORDERS: usize = 30;
    for i in 0..ORDERS {
        let (order_id, rzp) = (format!("XVC-C{i}"), format!("order_c{i}"));
        // The checkout on one instance, its payment on the next.
        let created = apps[i % 3]
            .checkout(&checkout_body(&order_id, &rzp, "TEE", 1))
            .await;
        let status = created.status();
        let body: serde_json::Value = created.json().await.expect("checkout JSON");
        assert_eq!(status, 201, "checkout {order_id}: {body}");
        assert_eq!(body["order_id"], order_id.as_str());
        // The same checkout again, on the third: the same order, 200.
        let again = apps[(i + 2) % 3]
            .checkout(&checkout_body(&order_id, &rzp, "TEE", 1))
            .await;
        assert_eq!(again.status(), 200, "repeated checkout {order_id}");
        let paid = apps[(i + 1) % 3]
            .post_webhook(
                &captured_for(&format!("pay_c{i}"), &rzp, 74_900),
                Some(&format!("evt_c{i}")),
            )
            .await;
        assert_eq!(paid.status(), 200);
    }
    for i in 0..ORDERS {
        let order_id = format!("XVC-C{i}");
        apps[(i + 2) % 3]
            .wait_for_state(&order_id, "ready_to_ship")
            .await;
    }
    // An operator's read on any instance sees the same order.
    let seen = apps[1].admin_order("XVC-C0", OPERATOR_TOKEN).await;
    assert_eq!(seen["order"]["state"], "ready_to_ship", "{seen}");

    let orders = sandbox.orders();
    assert_eq!(orders.len(), ORDERS, "one Shiprocket order per paid order");
    let stock = apps[2].stock("TEE").await;
    assert_eq!(stock["on_hand"], 100 - ORDERS as i64, "{stock}");
    assert_eq!(stock["reserved"], 0, "{stock}");

    // Exactly one gateway for the account and one leader in the cluster.
    let status = apps[0].status().await;
    let leases = status["cluster"]["leases"].as_array().expect("leases");
    let accounts: Vec<_> = leases.iter().filter(|l| kind(l) == "account").collect();
    assert_eq!(accounts.len(), 1, "{leases:?}");
    let leaders: Vec<_> = leases.iter().filter(|l| kind(l) == "leader").collect();
    assert_eq!(leaders.len(), 1, "{leases:?}");
    for app in apps {
        app.stop().await;
    }
}
