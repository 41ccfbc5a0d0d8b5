//! Orders through the storage API on both backends: the same calls must give
//! the same answers on SQLite and on PostgreSQL.

use std::time::Duration;

use dropshipd::domain::checkout::{Address, Customer, CustomerRecord};
use dropshipd::domain::dead_letter::{LetterReason, LetterSource};
use dropshipd::domain::order::{
    apply, genesis, Command, OrderEvent, OrderLine, OrderState, PaymentMethod,
};
use dropshipd::domain::shipping::QueueEntry;
use dropshipd::domain::stock::{AllocationStatus, AllocationStep, StockDelta};
use dropshipd::storage::{
    DeferredCommand, JournalAppend, NewOrder, OrderDeadLetter, OrderWrite, PiiKey, StockStep,
    Storage, StorageOptions, WebhookRecord,
};

use crate::postgres::{options, scratch_postgres};

fn customer() -> CustomerRecord {
    CustomerRecord {
        customer: Customer {
            name: "Asha Rao".into(),
            email: "asha@example.com".into(),
            phone: "9800000000".into(),
        },
        shipping_address: Address {
            line1: "1 MG Road".into(),
            line2: String::new(),
            city: "Pune".into(),
            state: "MH".into(),
            pincode: "411001".into(),
            country: "India".into(),
        },
    }
}

fn entry(event: OrderEvent, at_ms: i64) -> JournalAppend {
    JournalAppend {
        event,
        at_ms,
        cause: "test".into(),
    }
}

fn step(
    sku: &str,
    on_hand: i64,
    reserved: i64,
    allocation: AllocationStep,
    at_ms: i64,
) -> StockStep {
    StockStep {
        sku: sku.into(),
        delta: StockDelta { on_hand, reserved },
        reason: "test".into(),
        allocation,
        at_ms,
    }
}

/// One order's life, start to end, with every read the daemon makes of it;
/// each answer is written down as text for comparison across backends.
async fn order_life(storage: &Storage) -> Vec<String> {
    let mut seen = Vec::new();
    let mut note = |label: &str, value: String| seen.push(format!("{label}: {value}"));

    storage
        .apply_stock_steps(vec![step("TEE", 5, 0, AllocationStep::None, 1)])
        .await
        .expect("stock in");
    let created = OrderEvent::Created {
        razorpay_order_id: Some("order_L1".into()),
        payment_method: PaymentMethod::Prepaid,
        currency: "INR".into(),
        amount_paise: 149_800,
        lines: vec![OrderLine {
            sku: "TEE".into(),
            name: "Black tee M".into(),
            quantity: 2,
            unit_price_paise: 74_900,
            weight_g: Some(250),
        }],
        reserved_until_ms: Some(10_000),
    };
    let mut snapshot = genesis("XVC-L1", &created, 2).expect("genesis");
    let reserve = step(
        "TEE",
        0,
        2,
        AllocationStep::Create {
            order_id: "XVC-L1".into(),
            quantity: 2,
        },
        2,
    );
    let new_order = NewOrder {
        snapshot: snapshot.clone(),
        customer: customer(),
        fingerprint: "fp-1".into(),
        journal: vec![entry(created, 2)],
        deferred: None,
        stock: vec![reserve],
        queue: vec![],
    };
    note(
        "insert",
        format!("{:?}", storage.insert_order(new_order.clone()).await),
    );
    note(
        "insert again",
        format!("{:?}", storage.insert_order(new_order).await),
    );
    note(
        "reservations ended at 9999",
        format!("{:?}", storage.reservations_ended(9_999, 10).await),
    );
    note(
        "reservations ended at 10000",
        format!("{:?}", storage.reservations_ended(10_000, 10).await),
    );
    note(
        "unpaid",
        format!("{:?}", storage.unpaid_orders(5, 10).await),
    );

    // The payment arrives through the inbox; while it waits there, the
    // reservation does not count as ended.
    let outcome = storage
        .record_webhook(WebhookRecord::Accepted {
            dedup_key: "evt_L1".into(),
            acted_on: true,
            event: "payment.captured".into(),
            razorpay_order_id: Some("order_L1".into()),
            razorpay_payment_id: Some("pay_L1".into()),
            event_created_at: 3,
            received_at_ms: 3,
            body: b"{}".to_vec(),
        })
        .await
        .expect("webhook");
    note("webhook", format!("{outcome:?}"));
    note(
        "reservations ended with the payment waiting",
        format!("{:?}", storage.reservations_ended(10_000, 10).await),
    );
    let inbox_id = match outcome {
        dropshipd::storage::RecordOutcome::Accepted { inbox_id, .. } => inbox_id,
        other => panic!("not accepted: {other:?}"),
    };
    let paid = OrderEvent::Paid {
        payment_id: "pay_L1".into(),
        reallocated: false,
    };
    apply(&mut snapshot, &paid, 4);
    let sell = step(
        "TEE",
        -2,
        -2,
        AllocationStep::Move {
            order_id: "XVC-L1".into(),
            from: vec![AllocationStatus::Held],
            to: AllocationStatus::Sold,
        },
        4,
    );
    let write = OrderWrite {
        snapshot: snapshot.clone(),
        journal: vec![entry(paid, 4)],
        inbox_done: Some(inbox_id),
        dead_letter: Some(OrderDeadLetter {
            reason: LetterReason::AmountMismatch,
            detail: "a note beside the change".into(),
            event_id: Some("evt_L1".into()),
        }),
        queue: Some(vec![QueueEntry {
            account: None,
            due_at_ms: 4,
            paid_at_ms: 4,
            failover: false,
            calls_left: 3,
        }]),
        stock: vec![sell],
        audit: None,
    };
    note("commit", format!("{:?}", storage.commit_order(write).await));
    note("ingest", format!("{:?}", storage.ingest_counts().await));
    note("queue", format!("{:?}", storage.queue_rows("XVC-L1").await));
    note("stock", format!("{:?}", storage.stock_levels().await));
    note(
        "allocations",
        format!("{:?}", storage.allocations("XVC-L1").await),
    );

    let stored = storage
        .load_order("XVC-L1")
        .await
        .expect("load")
        .expect("order");
    note(
        "stored",
        format!(
            "{} {:?} {:?} {}",
            stored.id, stored.snapshot, stored.customer, stored.fingerprint
        ),
    );
    note(
        "snapshot",
        format!("{:?}", storage.load_snapshot("XVC-L1").await),
    );
    let (with, journal) = storage
        .order_with_journal("XVC-L1")
        .await
        .expect("journal")
        .expect("order");
    note(
        "journal",
        format!("{} {:?}", with.snapshot.version, journal),
    );
    let (history_snapshot, events) = storage
        .order_history("XVC-L1")
        .await
        .expect("history")
        .expect("order");
    assert_eq!(
        dropshipd::domain::order::replay("XVC-L1", events.iter().map(|(e, at)| (e, *at))),
        Some(history_snapshot),
        "the journal replays to the snapshot"
    );
    note(
        "activity by minute",
        format!("{:?}", storage.activity_since(0).await),
    );
    note(
        "activity since after it",
        format!("{:?}", storage.activity_since(60_000).await),
    );
    note(
        "refunds due",
        format!(
            "{:?}",
            storage
                .list_refund_due(None, 10)
                .await
                .map(|orders| orders.len())
        ),
    );
    note(
        "by razorpay id",
        format!("{:?}", storage.order_id_for_razorpay("order_L1").await),
    );
    note(
        "by unknown razorpay id",
        format!("{:?}", storage.order_id_for_razorpay("order_none").await),
    );
    note(
        "listing",
        format!(
            "{:?}",
            storage
                .list_orders(Some(OrderState::Paid), None, 10)
                .await
                .map(|orders| orders.iter().map(|o| o.id).collect::<Vec<_>>())
        ),
    );
    note(
        "listing of another state",
        format!(
            "{:?}",
            storage
                .list_orders(Some(OrderState::Cancelled), None, 10)
                .await
                .map(|orders| orders.len())
        ),
    );
    note("counts", format!("{:?}", storage.order_counts().await));
    note(
        "in state",
        format!(
            "{:?}",
            storage.order_ids_in_state(OrderState::Paid, 10).await
        ),
    );
    note(
        "repair",
        format!("{:?}", storage.orders_needing_stock_repair().await),
    );

    // Deferred commands, dead letters on their own, inbox entries with no order.
    let deferred = storage
        .defer_command(DeferredCommand {
            id: 0,
            order_id: "XVC-L1".into(),
            command: Command::Cancel,
            cause: "admin:operator".into(),
            received_at_ms: 5,
        })
        .await
        .expect("defer");
    note(
        "deferred",
        format!(
            "{:?}",
            storage.deferred_commands(10).await.map(|c| c
                .iter()
                .map(|c| (c.id, c.order_id.clone(), c.command.clone()))
                .collect::<Vec<_>>())
        ),
    );
    storage.finish_deferred(deferred).await.expect("finish");
    note(
        "deferred after",
        format!("{:?}", storage.deferred_commands(10).await.map(|c| c.len())),
    );
    storage
        .file_dead_letter(
            LetterSource::Tracking,
            OrderDeadLetter {
                reason: LetterReason::UnknownShipment,
                detail: "awb 1 is no order's".into(),
                event_id: None,
            },
            6,
        )
        .await
        .expect("dead letter");
    note(
        "dead letters",
        format!("{:?}", storage.dead_letters(None, 10).await),
    );
    note(
        "audit newest first",
        format!(
            "{:?}",
            storage
                .audit_entries_newest(None, 2)
                .await
                .map(|entries| entries
                    .iter()
                    .map(|e| (e.seq, e.action.clone()))
                    .collect::<Vec<_>>())
        ),
    );
    note(
        "audit",
        format!(
            "{:?}",
            storage.audit_entries(0, 100).await.map(|entries| entries
                .iter()
                .map(|e| (e.seq, e.action.clone()))
                .collect::<Vec<_>>())
        ),
    );
    seen
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_order_s_life_reads_the_same_on_both_backends() {
    let Some(server) = scratch_postgres("an_order_s_life_reads_the_same_on_both_backends") else {
        return;
    };
    let dir = tempfile::tempdir().expect("tempdir");
    let sqlite = Storage::open(&StorageOptions::new(
        dir.path().join("db.sqlite"),
        Duration::from_secs(5),
        PiiKey::from_bytes([7; 32]),
    ))
    .expect("sqlite");
    let url = server.create_database("order_life").expect("database");
    let postgres = Storage::open_postgres(&options(url))
        .await
        .expect("postgres");

    let on_sqlite = order_life(&sqlite).await;
    let on_postgres = order_life(&postgres).await;
    // The transcript itself says the scenario did what it meant to.
    let find = |label: &str| {
        on_sqlite
            .iter()
            .find(|line| line.starts_with(&format!("{label}: ")))
            .cloned()
            .unwrap_or_default()
    };
    assert_eq!(find("insert"), "insert: Ok(Some([true]))");
    assert_eq!(find("insert again"), "insert again: Ok(None)");
    assert_eq!(
        find("reservations ended at 10000"),
        "reservations ended at 10000: Ok([\"XVC-L1\"])"
    );
    assert_eq!(
        find("reservations ended with the payment waiting"),
        "reservations ended with the payment waiting: Ok([])"
    );
    assert_eq!(find("commit"), "commit: Ok([true])");
    assert!(
        find("stock").contains("on_hand: 3, reserved: 0"),
        "{}",
        find("stock")
    );
    assert!(find("audit").contains("order.paid"), "{}", find("audit"));
    let newest = find("audit newest first");
    let seqs: Vec<i64> = newest
        .split('(')
        .skip(2)
        .filter_map(|part| part.split(',').next()?.trim().parse().ok())
        .collect();
    assert!(seqs.len() == 2 && seqs[0] > seqs[1], "{newest}");
    assert_eq!(
        find("activity by minute"),
        "activity by minute: Ok([MinuteActivity { minute_ms: 0, checkouts: 1, paid: 1, revenue_paise: 149800 }])"
    );
    assert_eq!(
        find("activity since after it"),
        "activity since after it: Ok([])"
    );
    assert_eq!(find("refunds due"), "refunds due: Ok(0)");
    for (sqlite_line, postgres_line) in on_sqlite.iter().zip(&on_postgres) {
        assert_eq!(sqlite_line, postgres_line);
    }
    assert_eq!(on_sqlite.len(), on_postgres.len());
}

/// An instance that lost an order's partition writes nothing more for it,
/// even a write it began before the loss; the new owner's writes go through.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_order_write_commits_only_under_its_partition_s_lease() {
    use std::sync::Arc;

    use dropshipd::actors::cluster::ClusterMember;
    use dropshipd::storage::postgres::{Ownership, PgStore};
    use dropshipd::storage::StorageError;

    let Some(server) = scratch_postgres("an_order_write_commits_only_under_its_partition_s_lease")
    else {
        return;
    };
    let url = server.create_database("fenced_orders").expect("database");
    let ttl = Duration::from_secs(30);
    // One partition: whoever holds it owns every order.
    let instance = |id: &str| Arc::new(Ownership::new(id, 1));
    let (a, b) = (instance("a"), instance("b"));
    let store_for = |ownership: &Arc<Ownership>| {
        let mut options = options(url.clone());
        options.ownership = Some(Arc::clone(ownership));
        options
    };
    let on_a = Storage::open_postgres(&store_for(&a)).await.expect("a");
    let on_b = Storage::open_postgres(&store_for(&b)).await.expect("b");
    let leases = PgStore::connect(&options(url.clone()))
        .await
        .expect("leases");
    let member = |ownership: &Arc<Ownership>| {
        ClusterMember::new(leases.clone(), Arc::clone(ownership), ttl, vec![], 0)
    };
    let (mut member_a, mut member_b) = (member(&a), member(&b));

    let created = OrderEvent::Created {
        razorpay_order_id: None,
        payment_method: PaymentMethod::Prepaid,
        currency: "INR".into(),
        amount_paise: 74_900,
        lines: vec![],
        reserved_until_ms: None,
    };
    let snapshot = genesis("XVC-F1", &created, 1).expect("genesis");
    let new_order = NewOrder {
        snapshot: snapshot.clone(),
        customer: customer(),
        fingerprint: "fp".into(),
        journal: vec![entry(created, 1)],
        deferred: None,
        stock: vec![],
        queue: vec![],
    };
    // Nobody owns the partition yet: the write is refused before it starts.
    assert!(matches!(
        on_a.insert_order(new_order.clone()).await,
        Err(StorageError::LeaseLost { .. })
    ));
    let partition = a.partition_of("XVC-F1");
    member_a.round().await.expect("a's round");
    let epoch = a.fence(&partition).expect("a owns the partition").epoch;
    assert_eq!(
        on_a.insert_order(new_order).await.expect("a writes"),
        Some(vec![])
    );

    // a stops (paused): its lease and presence run out by the database's
    // clock, b takes the partition, and a still believes it holds it.
    let (client, connection) = tokio_postgres::connect(&url, tokio_postgres::NoTls)
        .await
        .expect("connect");
    tokio::spawn(connection);
    client
        .batch_execute(
            "UPDATE cluster_leases SET expires_at = now() - interval '1 second' WHERE owner = 'a';
             UPDATE cluster_instances SET expires_at = now() - interval '1 second' WHERE instance_id = 'a';",
        )
        .await
        .expect("expire a");
    member_b.round().await.expect("b's round");
    assert_eq!(b.fence(&partition).expect("b owns it now").epoch, epoch + 1);
    assert!(a.fence(&partition).is_some(), "a has not noticed");

    let mut changed = snapshot.clone();
    let cancelled = OrderEvent::Cancelled;
    apply(&mut changed, &cancelled, 2);
    let write = OrderWrite {
        snapshot: changed,
        journal: vec![entry(cancelled, 2)],
        inbox_done: None,
        dead_letter: None,
        queue: None,
        stock: vec![],
        audit: None,
    };
    assert!(
        matches!(
            on_a.commit_order(write.clone()).await,
            Err(StorageError::LeaseLost { ref resource, .. }) if *resource == partition.to_string()
        ),
        "a stale owner's write is refused"
    );
    let stored = on_b
        .load_snapshot("XVC-F1")
        .await
        .expect("load")
        .expect("order");
    assert_eq!(stored.version, 1, "nothing of a's write was committed");
    on_b.commit_order(write)
        .await
        .expect("the new owner writes");
    let stored = on_a
        .load_snapshot("XVC-F1")
        .await
        .expect("load")
        .expect("order");
    assert_eq!((stored.version, stored.state), (2, OrderState::Cancelled));
}
