//! Stock and shipping on PostgreSQL against SQLite: the same calls give the
//! same answers and leave the same ledger and audit entries; and on
//! PostgreSQL, several instances changing one SKU at once neither oversell
//! nor deadlock.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use dropshipd::domain::shipping::QueueEntry;
use dropshipd::domain::stock::{StockDelta, StockError, StockLevel};
use dropshipd::scratch_postgres::ScratchPostgres;
use dropshipd::storage::postgres::PgStore;
use dropshipd::storage::{
    AllocationStatus, AllocationStep, AuditRecord, AuditedAction, ProductFacts, QueueBacklog,
    QueueSource, StockMismatch, StockStep, Storage, StorageError, StorageOptions,
};

use crate::postgres::{options, scratch_postgres};

/// One store of each kind, fresh, and raw connections to look behind them.
struct Both {
    sqlite: Storage,
    pg: PgStore,
    raw: tokio_postgres::Client,
    sqlite_path: std::path::PathBuf,
    _dir: tempfile::TempDir,
    _server: ScratchPostgres,
}

async fn both(test: &str) -> Option<Both> {
    let server = scratch_postgres(test)?;
    let url = server.create_database(test).expect("database");
    let pg = PgStore::connect(&options(url.clone()))
        .await
        .expect("connect");
    let dir = tempfile::tempdir().expect("tempdir");
    let sqlite_path = dir.path().join("stock.db");
    let sqlite = Storage::open(&StorageOptions::new(
        sqlite_path.clone(),
        Duration::from_secs(5),
        dropshipd::storage::PiiKey::from_bytes([7; 32]),
    ))
    .expect("sqlite");
    Some(Both {
        sqlite,
        pg,
        raw: raw(&url).await,
        sqlite_path,
        _dir: dir,
        _server: server,
    })
}

async fn raw(url: &str) -> tokio_postgres::Client {
    let (client, connection) = tokio_postgres::connect(url, tokio_postgres::NoTls)
        .await
        .expect("raw connection");
    tokio::spawn(connection);
    client
}

/// Runs the same call on both backends, asserts equal answers, returns one.
macro_rules! same {
    ($both:expr, $method:ident ( $($arg:expr),* $(,)? )) => {{
        let sqlite = $both
            .sqlite
            .$method($($arg),*)
            .await
            .expect(concat!("sqlite ", stringify!($method)));
        let pg = $both
            .pg
            .$method($($arg),*)
            .await
            .expect(concat!("postgres ", stringify!($method)));
        assert_eq!(sqlite, pg, concat!(stringify!($method), " differs between the backends"));
        pg
    }};
}

fn step(sku: &str, on_hand: i64, reserved: i64, allocation: AllocationStep) -> StockStep {
    StockStep {
        sku: sku.into(),
        delta: StockDelta { on_hand, reserved },
        reason: "test".into(),
        allocation,
        at_ms: 1_000,
    }
}

fn count(sku: &str, on_hand: i64) -> StockStep {
    step(sku, on_hand, 0, AllocationStep::None)
}

fn reserve(order: &str, sku: &str, quantity: i64) -> StockStep {
    step(
        sku,
        0,
        quantity,
        AllocationStep::Create {
            order_id: order.into(),
            quantity,
        },
    )
}

fn moving(
    order: &str,
    sku: &str,
    on_hand: i64,
    reserved: i64,
    from: AllocationStatus,
    to: AllocationStatus,
) -> StockStep {
    step(
        sku,
        on_hand,
        reserved,
        AllocationStep::Move {
            order_id: order.into(),
            from: vec![from],
            to,
        },
    )
}

fn level(on_hand: i64, reserved: i64) -> StockLevel {
    StockLevel { on_hand, reserved }
}

fn action(what: &str, sku: &str) -> (AuditedAction, Arc<AtomicBool>) {
    let flag = Arc::new(AtomicBool::new(false));
    let record = AuditRecord::event(
        2_000,
        "operator",
        what,
        sku,
        format!("{{\"sku\":\"{sku}\"}}"),
    );
    (AuditedAction::new(record, Arc::clone(&flag)), flag)
}

type Entry = (String, String, Option<String>, String);

/// Every audit entry of both, as (actor, action, subject, detail).
async fn audit_trails(both: &Both) -> (Vec<Entry>, Vec<Entry>) {
    let sqlite = both
        .sqlite
        .audit_entries(0, 10_000)
        .await
        .expect("sqlite audit")
        .into_iter()
        .map(|e| (e.actor, e.action, e.subject, e.detail))
        .collect();
    let pg = both
        .raw
        .query(
            "SELECT actor, action, subject, detail FROM audit_log ORDER BY seq",
            &[],
        )
        .await
        .expect("postgres audit")
        .iter()
        .map(|r| (r.get(0), r.get(1), r.get(2), r.get(3)))
        .collect();
    (sqlite, pg)
}

async fn ledger_rows(both: &Both) -> (i64, i64) {
    let sqlite_path = both.sqlite_path.clone();
    let sqlite = tokio::task::spawn_blocking(move || {
        let conn = dropshipd::storage::open_read_only(&sqlite_path).expect("read-only");
        conn.query_row("SELECT count(*) FROM stock_ledger", [], |r| r.get(0))
            .expect("sqlite ledger")
    })
    .await
    .expect("task");
    let pg = both
        .raw
        .query_one("SELECT count(*) FROM stock_ledger", &[])
        .await
        .expect("postgres ledger")
        .get(0);
    (sqlite, pg)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn operator_counts_and_corrections_are_stored_and_audited_alike() {
    let Some(both) = both("operator_steps").await else {
        return;
    };
    let facts = ProductFacts {
        name: Some("Mug".into()),
        weight_kg: Some(0.4),
        dims_cm: Some(vec![10.0, 8.0, 12.5]),
        hsn: Some("6912".into()),
    };
    let (sqlite_set, sqlite_flag) = action("stock.set", "MUG");
    let (pg_set, pg_flag) = action("stock.set", "MUG");
    let applied_sqlite = both
        .sqlite
        .apply_operator_steps(
            vec![count("MUG", 10)],
            Some(("MUG".into(), facts.clone())),
            Some(sqlite_set),
        )
        .await
        .expect("sqlite set");
    let applied_pg = both
        .pg
        .apply_operator_steps(
            vec![count("MUG", 10)],
            Some(("MUG".into(), facts.clone())),
            Some(pg_set),
        )
        .await
        .expect("postgres set");
    assert_eq!(applied_sqlite, vec![true]);
    assert_eq!(applied_pg, vec![true]);
    assert!(sqlite_flag.load(Ordering::SeqCst) && pg_flag.load(Ordering::SeqCst));

    let (sqlite_adjust, _) = action("stock.adjust", "MUG");
    let (pg_adjust, pg_flag) = action("stock.adjust", "MUG");
    both.sqlite
        .apply_operator_steps(vec![count("MUG", -3)], None, Some(sqlite_adjust))
        .await
        .expect("sqlite adjust");
    both.pg
        .apply_operator_steps(vec![count("MUG", -3)], None, Some(pg_adjust))
        .await
        .expect("postgres adjust");
    assert!(pg_flag.load(Ordering::SeqCst));
    // Facts alone, with a SKU no step ever reached.
    same!(both, set_product_facts("BOWL", ProductFacts::default()));
    same!(
        both,
        set_product_facts(
            "MUG",
            ProductFacts {
                name: Some("Big mug".into()),
                ..ProductFacts::default()
            },
        )
    );

    let item = same!(both, stock_item("MUG")).expect("a stored item");
    assert_eq!(item.level, level(7, 0));
    assert_eq!(item.facts.name.as_deref(), Some("Big mug"));
    assert_eq!(item.facts.dims_cm, Some(vec![10.0, 8.0, 12.5]), "kept");
    assert_eq!(item.facts.weight_kg, Some(0.4));
    assert_eq!(same!(both, stock_item("NONE")), None);
    assert_eq!(
        same!(both, stock_levels()),
        vec![("BOWL".into(), level(0, 0)), ("MUG".into(), level(7, 0))]
    );
    assert_eq!(
        same!(
            both,
            stock_levels_of(vec!["MUG".into(), "NONE".into(), "MUG".into()])
        ),
        vec![
            ("MUG".into(), level(7, 0)),
            ("NONE".into(), level(0, 0)),
            ("MUG".into(), level(7, 0))
        ]
    );

    let (sqlite, pg) = audit_trails(&both).await;
    assert_eq!(sqlite, pg);
    let actions: Vec<&str> = pg.iter().map(|e| e.1.as_str()).collect();
    assert_eq!(
        actions,
        ["stock.set", "stock.change", "stock.adjust", "stock.change"],
        "the operator's entry, then its step's"
    );
    assert_eq!(ledger_rows(&both).await, (2, 2));
    assert_eq!(same!(both, reconcile_stock()), (2, Vec::new()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_order_step_moves_its_allocation_once() {
    let Some(both) = both("order_steps").await else {
        return;
    };
    use AllocationStatus::*;
    same!(both, apply_stock_steps(vec![count("A", 5), count("B", 5)]));

    let script: Vec<(StockStep, StockLevel, AllocationStatus)> = vec![
        (reserve("o1", "A", 2), level(5, 2), Held),
        (moving("o1", "A", -2, -2, Held, Sold), level(3, 0), Sold),
        (
            moving("o1", "A", 2, 0, Sold, Returned),
            level(5, 0),
            Returned,
        ),
        (reserve("o2", "B", 1), level(5, 1), Held),
        (
            moving("o2", "B", 0, -1, Held, Released),
            level(5, 0),
            Released,
        ),
    ];
    for (step, after, status) in script {
        let (order, sku) = match &step.allocation {
            AllocationStep::Create { order_id, .. } | AllocationStep::Move { order_id, .. } => {
                (order_id.clone(), step.sku.clone())
            }
            AllocationStep::None => unreachable!("order steps only"),
        };
        assert!(
            same!(both, apply_stock_step(step.clone())),
            "{step:?} applies"
        );
        let ledger = ledger_rows(&both).await;
        let (audit, _) = audit_trails(&both).await;
        assert!(
            !same!(both, apply_stock_step(step.clone())),
            "{step:?} again"
        );
        assert_eq!(
            ledger_rows(&both).await,
            ledger,
            "a repeat writes no ledger row"
        );
        let (sqlite_audit, pg_audit) = audit_trails(&both).await;
        assert_eq!(sqlite_audit.len(), audit.len(), "nor audit entry");
        assert_eq!(pg_audit.len(), audit.len(), "nor audit entry");
        assert_eq!(
            same!(both, stock_levels_of(vec![sku.clone()])),
            vec![(sku.clone(), after)]
        );
        assert_eq!(same!(both, allocation_status(&order, &sku)), Some(status));
    }
    let allocations = same!(both, allocations("o1"));
    assert_eq!(allocations.len(), 1);
    assert_eq!(
        (allocations[0].quantity, allocations[0].status),
        (2, Returned)
    );
    assert!(same!(both, allocations("nobody")).is_empty());
    assert_eq!(same!(both, allocation_status("nobody", "A")), None);

    // A move of an allocation that never existed does nothing, and leaves no
    // level behind for a SKU nothing ever changed.
    assert!(!same!(
        both,
        apply_stock_step(moving("o3", "C", 0, -1, Held, Released))
    ));
    assert_eq!(same!(both, stock_item("C")), None);
    assert_eq!(same!(both, stock_levels()).len(), 2);

    let (sqlite, pg) = audit_trails(&both).await;
    assert_eq!(sqlite, pg);
    assert_eq!(pg.len(), 7, "two counts and five order steps");
    assert_eq!(ledger_rows(&both).await, (7, 7));
    assert_eq!(same!(both, reconcile_stock()), (2, Vec::new()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reservation_short_of_one_sku_reserves_none() {
    let Some(both) = both("all_or_nothing").await else {
        return;
    };
    let pg = &both.pg;
    pg.apply_stock_steps(vec![count("A", 5), count("B", 1)])
        .await
        .expect("counts");
    let before = ledger_rows(&both).await.1;

    // Short of B, and of a SKU with no row at all: nothing of either call stays.
    for short in [
        vec![reserve("o1", "A", 2), reserve("o1", "B", 2)],
        vec![reserve("o1", "A", 2), reserve("o1", "NEW", 1)],
    ] {
        match pg.apply_stock_steps(short).await {
            Err(StorageError::StockRefused {
                error: StockError::Insufficient { .. },
                ..
            }) => {}
            other => panic!("a short reservation must fail, got {other:?}"),
        }
    }
    assert_eq!(
        pg.stock_levels().await.expect("levels"),
        vec![("A".into(), level(5, 0)), ("B".into(), level(1, 0))]
    );
    assert!(pg.allocations("o1").await.expect("allocations").is_empty());
    assert_eq!(ledger_rows(&both).await.1, before);

    // An operator cannot count below what is held, nor an order sell units twice.
    assert_eq!(
        pg.apply_stock_steps(vec![reserve("o1", "A", 2), reserve("o1", "B", 1)])
            .await
            .expect("enough of both"),
        vec![true, true]
    );
    match pg.apply_stock_step(count("A", -4)).await {
        Err(StorageError::StockRefused { sku, error }) => {
            assert_eq!(sku, "A");
            assert_eq!(
                error.to_string(),
                "on_hand 1 would fall below the 2 units reserved"
            );
        }
        other => panic!("a count below the reserved units must fail, got {other:?}"),
    }
    match pg
        .apply_stock_step(moving(
            "o9",
            "B",
            -2,
            -2,
            AllocationStatus::Sold,
            AllocationStatus::Sold,
        ))
        .await
    {
        Ok(false) => {}
        other => panic!("no allocation, nothing moves: {other:?}"),
    }
    assert_eq!(
        pg.stock_levels_of(vec!["A".into(), "B".into()])
            .await
            .expect("levels"),
        vec![("A".into(), level(5, 2)), ("B".into(), level(1, 1))]
    );
    // The database itself refuses what the arithmetic would: the last line.
    let refused = both
        .raw
        .execute(
            "UPDATE stock_levels SET reserved = reserved + 1 WHERE sku = 'B'",
            &[],
        )
        .await
        .expect_err("the CHECK constraint");
    assert_eq!(
        refused.code(),
        Some(&tokio_postgres::error::SqlState::CHECK_VIOLATION)
    );
    assert_eq!(pg.reconcile_stock().await.expect("reconcile"), (2, vec![]));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_ledger_balances_and_a_tampered_level_is_found() {
    let Some(both) = both("ledger_balances").await else {
        return;
    };
    same!(both, apply_stock_steps(vec![count("A", 5), count("B", 3)]));
    same!(
        both,
        apply_stock_steps(vec![reserve("o1", "A", 2), reserve("o1", "B", 1)])
    );
    same!(
        both,
        apply_stock_step(moving(
            "o1",
            "A",
            -2,
            -2,
            AllocationStatus::Held,
            AllocationStatus::Sold
        ))
    );
    assert_eq!(same!(both, reconcile_stock()), (2, Vec::new()));

    both.raw
        .execute(
            "UPDATE stock_levels SET on_hand = on_hand + 1 WHERE sku = 'B'",
            &[],
        )
        .await
        .expect("tamper postgres");
    let sqlite_path = both.sqlite_path.clone();
    tokio::task::spawn_blocking(move || {
        let conn = rusqlite::Connection::open(&sqlite_path).expect("open");
        conn.busy_timeout(Duration::from_secs(5)).expect("busy");
        conn.execute(
            "UPDATE stock_levels SET on_hand = on_hand + 1 WHERE sku = 'B'",
            [],
        )
        .expect("tamper sqlite");
    })
    .await
    .expect("task");
    assert_eq!(
        same!(both, reconcile_stock()),
        (
            2,
            vec![StockMismatch {
                sku: "B".into(),
                on_hand: 4,
                ledger_sum: 3,
                reserved: 1,
                ledger_reserved_sum: 1,
            }]
        )
    );
}

/// Instances: separate stores, each with its own pool and runtime.
async fn instances(url: &str, n: usize) -> Vec<PgStore> {
    let mut stores = Vec::new();
    for _ in 0..n {
        let mut opts = options(url.to_owned());
        // A thousand callers queue for 16 connections: the last waits long.
        opts.busy_timeout = Duration::from_secs(60);
        stores.push(PgStore::connect(&opts).await.expect("connect"));
    }
    stores
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn instances_racing_for_a_hot_sku_sell_exactly_what_there_is() {
    let Some(server) = scratch_postgres("hot_sku") else {
        return;
    };
    let url = server.create_database("hot_sku").expect("database");
    let stores = instances(&url, 4).await;
    stores[0]
        .apply_stock_step(count("HOT", 300))
        .await
        .expect("count");

    let watcher = raw(&url).await;
    let tasks: Vec<_> = (0..1000)
        .map(|i| {
            let store = stores[i % stores.len()].clone();
            tokio::spawn(async move {
                store
                    .apply_stock_step(reserve(&format!("order-{i}"), "HOT", 1))
                    .await
            })
        })
        .collect();
    // While they run, available is never below zero.
    let mut lowest = i64::MAX;
    while !tasks.iter().all(|t| t.is_finished()) {
        let row = watcher
            .query_one(
                "SELECT on_hand - reserved, reserved FROM stock_levels WHERE sku = 'HOT'",
                &[],
            )
            .await
            .expect("watch");
        lowest = lowest.min(row.get::<_, i64>(0)).min(row.get::<_, i64>(1));
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let (mut applied, mut refused) = (0, 0);
    for task in tasks {
        match task.await.expect("task") {
            Ok(true) => applied += 1,
            Ok(false) => panic!("every order is new: no repeats"),
            Err(StorageError::StockRefused {
                sku,
                error: StockError::Insufficient { .. },
            }) if sku == "HOT" => refused += 1,
            Err(other) => panic!("only a shortage may refuse a reservation: {other}"),
        }
    }
    assert_eq!((applied, refused), (300, 700));
    assert!(lowest >= 0, "available or reserved went to {lowest}");
    let store = &stores[1];
    assert_eq!(
        store
            .stock_levels_of(vec!["HOT".into()])
            .await
            .expect("level"),
        vec![("HOT".into(), level(300, 300))]
    );
    assert_eq!(
        store.reconcile_stock().await.expect("reconcile"),
        (1, vec![])
    );
    let counts = watcher
        .query_one(
            "SELECT (SELECT count(*) FROM stock_allocations),
                    (SELECT count(*) FROM stock_ledger),
                    (SELECT count(*) FROM audit_log)",
            &[],
        )
        .await
        .expect("counts");
    assert_eq!(
        (
            counts.get::<_, i64>(0),
            counts.get::<_, i64>(1),
            counts.get::<_, i64>(2)
        ),
        (300, 301, 301)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reservations_taking_skus_in_opposite_orders_never_deadlock() {
    let Some(server) = scratch_postgres("opposite_orders") else {
        return;
    };
    let url = server.create_database("opposite_orders").expect("database");
    let stores = instances(&url, 3).await;
    stores[0]
        .apply_stock_steps(vec![count("A", 1000), count("B", 1000), count("C", 1000)])
        .await
        .expect("counts");
    let tasks: Vec<_> = (0..240)
        .map(|i| {
            let store = stores[i % stores.len()].clone();
            let order = format!("order-{i}");
            let mut skus = ["A", "B", "C"];
            if i % 2 == 1 {
                skus.reverse();
            }
            if i % 3 == 2 {
                skus.rotate_left(1);
            }
            tokio::spawn(async move {
                let steps = skus.iter().map(|sku| reserve(&order, sku, 1)).collect();
                store.apply_stock_steps(steps).await
            })
        })
        .collect();
    for task in tasks {
        assert_eq!(
            task.await.expect("task").expect("no deadlock, no error"),
            vec![true, true, true]
        );
    }
    assert_eq!(
        stores[2].stock_levels().await.expect("levels"),
        vec![
            ("A".into(), level(1000, 240)),
            ("B".into(), level(1000, 240)),
            ("C".into(), level(1000, 240)),
        ]
    );
    assert_eq!(
        stores[1].reconcile_stock().await.expect("reconcile"),
        (3, vec![])
    );
}

fn entry(account: Option<&str>, due: i64, paid: i64, failover: bool, calls: u32) -> QueueEntry {
    QueueEntry {
        account: account.map(str::to_owned),
        due_at_ms: due,
        paid_at_ms: paid,
        failover,
        calls_left: calls,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_shipping_queue_answers_alike() {
    let Some(both) = both("shipping_queue").await else {
        return;
    };
    // Queue rows are written by an order's commit; the orders port is not
    // here yet, so both get the same rows directly.
    let orders = [
        ("o1", "awaiting_shipment"),
        ("o2", "shipment_created"),
        ("o3", "shipped"),
        ("o4", "awaiting_shipment"),
        ("O5", "awaiting_shipment"),
    ];
    let rows = [
        ("o1", entry(Some("a1"), 100, 10, false, 2)),
        ("o1", entry(Some("a2"), 100, 10, true, 2)),
        ("o2", entry(None, 50, 5, false, 3)),
        ("o3", entry(Some("a1"), 10, 1, false, 1)),
        ("o4", entry(Some("a1"), 500, 20, false, 1)),
        ("O5", entry(Some("a1"), 100, 10, false, 4)),
    ];
    for (order_id, state) in orders {
        both.raw
            .execute(
                "INSERT INTO orders (order_id, state, snapshot, customer, fingerprint, created_at_ms, updated_at_ms)
                 VALUES ($1, $2, '{}', ''::bytea, 'f', 0, 0)",
                &[&order_id, &state],
            )
            .await
            .expect("postgres order");
    }
    for (order_id, row) in &rows {
        both.raw
            .execute(
                "INSERT INTO shipping_queue (order_id, account, due_at_ms, paid_at_ms, failover, calls_left)
                 VALUES ($1, $2, $3, $4, $5, $6)",
                &[
                    order_id,
                    &row.account.clone().unwrap_or_default(),
                    &row.due_at_ms,
                    &row.paid_at_ms,
                    &i64::from(row.failover),
                    &i64::from(row.calls_left),
                ],
            )
            .await
            .expect("postgres queue row");
    }
    let sqlite_path = both.sqlite_path.clone();
    let sqlite_rows = rows.clone();
    tokio::task::spawn_blocking(move || {
        let conn = rusqlite::Connection::open(&sqlite_path).expect("open");
        conn.busy_timeout(Duration::from_secs(5)).expect("busy");
        for (order_id, state) in orders {
            conn.execute(
                "INSERT INTO orders (order_id, state, snapshot, customer, fingerprint, created_at_ms, updated_at_ms)
                 VALUES (?1, ?2, '{}', '', 'f', 0, 0)",
                rusqlite::params![order_id, state],
            )
            .expect("sqlite order");
        }
        for (order_id, row) in &sqlite_rows {
            conn.execute(
                "INSERT INTO shipping_queue (order_id, account, due_at_ms, paid_at_ms, failover, calls_left)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
                rusqlite::params![
                    order_id,
                    row.account.clone().unwrap_or_default(),
                    row.due_at_ms,
                    row.paid_at_ms,
                    row.failover,
                    row.calls_left
                ],
            )
            .expect("sqlite queue row");
        }
    })
    .await
    .expect("task");

    assert_eq!(
        same!(both, queue_rows("o1")),
        vec![
            entry(Some("a1"), 100, 10, false, 2),
            entry(Some("a2"), 100, 10, true, 2)
        ]
    );
    assert!(same!(both, queue_rows("none")).is_empty());

    let sources = vec![
        QueueSource {
            account: Some("a1".into()),
            failover_only: false,
        },
        QueueSource {
            account: None,
            failover_only: false,
        },
        QueueSource {
            account: Some("a2".into()),
            failover_only: true,
        },
    ];
    let due = same!(both, shipping_due(sources.clone(), 100, 10));
    let listed: Vec<(&str, Option<&str>)> = due
        .iter()
        .map(|q| (q.order_id.as_str(), q.account.as_deref()))
        .collect();
    assert_eq!(
        listed,
        [
            ("o3", Some("a1")),
            ("o2", None),
            ("O5", Some("a1")),
            ("o1", Some("a1"))
        ],
        "oldest paid first, ties byte-wise, each order once"
    );
    assert_eq!(same!(both, shipping_due(sources.clone(), 100, 2)).len(), 2);
    assert_eq!(same!(both, shipping_due(sources.clone(), 9, 10)), vec![]);

    assert_eq!(
        same!(both, shipments_due(100, 10)),
        ["O5", "o1", "o2"],
        "being shipped, due, byte order"
    );
    assert_eq!(same!(both, shipments_due(1_000, 2)), ["O5", "o1"]);

    assert_eq!(
        same!(both, shipping_backlog()),
        vec![
            QueueBacklog {
                account: None,
                orders: 1,
                calls: 3,
                oldest_paid_at_ms: Some(5)
            },
            QueueBacklog {
                account: Some("a1".into()),
                orders: 4,
                calls: 8,
                oldest_paid_at_ms: Some(1)
            },
            QueueBacklog {
                account: Some("a2".into()),
                orders: 1,
                calls: 2,
                oldest_paid_at_ms: Some(10)
            },
        ]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shiprocket_tokens_round_trip_sealed() {
    let Some(both) = both("shiprocket_tokens").await else {
        return;
    };
    assert_eq!(same!(both, shiprocket_token("main")), None);
    same!(both, save_shiprocket_token("main", "token-one", 1_000));
    same!(both, save_shiprocket_token("main", "token-two", 2_000));
    same!(both, save_shiprocket_token("backup", "token-b", 3_000));
    assert_eq!(
        same!(both, shiprocket_token("main")),
        Some(("token-two".into(), 2_000))
    );
    assert_eq!(
        same!(both, shiprocket_token("backup")),
        Some(("token-b".into(), 3_000))
    );
    // At rest it is sealed, not the token.
    let stored: Vec<u8> = both
        .raw
        .query_one(
            "SELECT token FROM shiprocket_tokens WHERE account = 'main'",
            &[],
        )
        .await
        .expect("stored")
        .get(0);
    assert!(stored.starts_with(b"DSE1"));
    assert!(!stored.windows(9).any(|w| w == b"token-two"));
}
