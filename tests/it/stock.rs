//! The stock supervisor and shards against a real database: concurrency cannot
//! oversell, reservations are all-or-nothing, every step is idempotent, and
//! the ledger always balances.

use std::sync::Arc;

use dropshipd::actors::stock::{ApplyStock, ReserveError, StockSupervisor};
use dropshipd::domain::clock::SystemClock;
use dropshipd::domain::order::OrderLine;
use dropshipd::storage::{AllocationStatus, Storage, StorageOptions};

async fn supervisor(dir: &tempfile::TempDir) -> (Storage, StockSupervisor) {
    let storage = Storage::open(&StorageOptions::new(
        dir.path().join("stock.db"),
        std::time::Duration::from_secs(5),
        dropshipd::storage::PiiKey::from_bytes([7; 32]),
    ))
    .expect("storage");
    let stock = StockSupervisor::start(storage.clone(), Arc::new(SystemClock), 4)
        .await
        .expect("supervisor");
    (storage, stock)
}

fn line(sku: &str, quantity: u32) -> OrderLine {
    OrderLine {
        sku: sku.into(),
        name: sku.into(),
        quantity,
        unit_price_paise: 100,
        weight_g: None,
    }
}

async fn set(stock: &StockSupervisor, sku: &str, on_hand: i64) {
    stock
        .apply(ApplyStock::count(sku, on_hand))
        .await
        .expect("set stock");
}

#[actix_web::test]
async fn a_hot_sku_never_oversells() {
    let dir = tempfile::tempdir().expect("temp dir");
    let (storage, stock) = supervisor(&dir).await;
    set(&stock, "HOT", 300).await;
    let attempts = (0..1000).map(|i| {
        let stock = stock.clone();
        async move { stock.reserve(&format!("O-{i}"), &[line("HOT", 1)]).await }
    });
    let results = futures_util::future::join_all(attempts).await;
    let ok = results.iter().filter(|r| r.is_ok()).count();
    let short = results
        .iter()
        .filter(|r| matches!(r, Err(ReserveError::Insufficient(skus)) if skus == &vec!["HOT".to_string()]))
        .count();
    assert_eq!((ok, short), (300, 700));
    let level = stock.level("HOT").await.expect("level");
    assert_eq!(
        (level.on_hand, level.reserved, level.available()),
        (300, 300, 0)
    );
    let item = storage
        .stock_item("HOT")
        .await
        .expect("read")
        .expect("stored");
    assert_eq!(item.level, level);
    let (checked, mismatches) = storage.reconcile_stock().await.expect("reconcile");
    assert_eq!((checked, mismatches.len()), (1, 0));
}

#[actix_web::test]
async fn multi_sku_reservations_are_all_or_nothing_and_steps_repeat_safely() {
    let dir = tempfile::tempdir().expect("temp dir");
    let (storage, stock) = supervisor(&dir).await;
    set(&stock, "A", 5).await;
    set(&stock, "B", 1).await;
    set(&stock, "C", 5).await;

    let err = stock
        .reserve("O-1", &[line("C", 2), line("B", 2), line("A", 2)])
        .await
        .expect_err("B is short");
    assert!(matches!(err, ReserveError::Insufficient(skus) if skus == vec!["B".to_string()]));
    for sku in ["A", "B", "C"] {
        assert_eq!(stock.level(sku).await.expect("level").reserved, 0, "{sku}");
    }

    let lines = [line("A", 2), line("C", 1)];
    stock.reserve("O-2", &lines).await.expect("reserve");
    stock
        .reserve("O-2", &lines)
        .await
        .expect("a repeat holds nothing more");
    assert_eq!(stock.level("A").await.expect("level").reserved, 2);

    stock.sell_reserved("O-2", &lines).await.expect("sell");
    stock
        .sell_reserved("O-2", &lines)
        .await
        .expect("a repeat sells nothing more");
    let a = stock.level("A").await.expect("level");
    assert_eq!((a.on_hand, a.reserved), (3, 0));
    let allocations = storage.allocations("O-2").await.expect("allocations");
    assert!(allocations
        .iter()
        .all(|a| a.status == AllocationStatus::Sold));

    stock.restock("O-2", &lines).await.expect("restock");
    stock.restock("O-2", &lines).await.expect("repeat");
    assert_eq!(stock.level("A").await.expect("level").on_hand, 5);

    // A late sale after release, all or nothing.
    stock
        .reserve("O-3", &[line("A", 1), line("B", 1)])
        .await
        .expect("reserve");
    stock
        .release("O-3", &[line("A", 1), line("B", 1)])
        .await
        .expect("release");
    set(&stock, "B", 0).await;
    let sold = stock
        .sell_unreserved("O-3", &[line("A", 1), line("B", 1)])
        .await;
    assert!(
        matches!(&sold, Err(ReserveError::Insufficient(skus)) if skus == &["B".to_string()]),
        "{sold:?}"
    );
    assert_eq!(stock.level("A").await.expect("level").on_hand, 5);

    let (_, mismatches) = storage.reconcile_stock().await.expect("reconcile");
    assert!(mismatches.is_empty(), "{mismatches:?}");
}
