//! `dropshipd demo`: the built binary, with nothing set up, runs 200 orders and
//! its summary accounts for every one of them and for every fault case.

use std::process::Command;

use dropshipd::demo::load::{plan, stocking, SCARCE_SKU};
use serde_json::Value;

#[test]
fn demo_accounts_for_every_order_and_fault_case() {
    let orders = 200;
    // The demo's temporary folder goes here, so the test can see it is removed.
    let tmp = tempfile::tempdir().expect("temp dir");
    let output = Command::new(env!("CARGO_BIN_EXE_dropshipd"))
        .env_clear()
        .env("TMPDIR", tmp.path())
        .args(["demo", "--orders", &orders.to_string(), "--json"])
        .output()
        .expect("run dropshipd demo");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success(),
        "demo exited {:?}\nstdout:\n{stdout}\nstderr:\n{stderr}",
        output.status
    );
    for heading in [
        "Orders by final state",
        "Throughput",
        "Latency",
        "Fault cases",
    ] {
        assert!(stdout.contains(heading), "no {heading:?} in:\n{stdout}");
    }
    let summary: Value = stdout
        .lines()
        .last()
        .and_then(|line| serde_json::from_str(line).ok())
        .unwrap_or_else(|| panic!("the last line is not the JSON summary:\n{stdout}"));
    assert_eq!(summary["problems"], serde_json::json!([]), "{stdout}");

    // Every order is in exactly one row, and the rows are the expected ones.
    let states = summary["final_states"].as_object().expect("final_states");
    let total: u64 = states.values().filter_map(Value::as_u64).sum();
    assert_eq!(total, orders as u64, "{states:?}");
    assert_eq!(summary["accounted_for"], orders);
    let scarce_asked = (0..orders).filter(|i| plan(*i).is_scarce()).count() as u64;
    let scarce_stocked = stocking(orders)
        .iter()
        .find(|(p, _)| p.sku == SCARCE_SKU)
        .map(|(_, n)| *n as u64)
        .expect("the scarce SKU is stocked");
    let refused = scarce_asked - scarce_stocked;
    assert!(refused > 0);
    assert_eq!(states.len(), 2, "{states:?}");
    assert_eq!(states["refused_out_of_stock"], refused);
    assert_eq!(states["ready_to_ship"], orders as u64 - refused);

    let duplicates = &summary["duplicates"];
    let resent = (0..orders).filter(|i| plan(*i).resend).count() as u64;
    assert!(resent > 0);
    assert_eq!(duplicates["resent"], resent);
    assert_eq!(duplicates["answered_duplicate"], resent);
    assert_eq!(duplicates["daemon_counted"], resent);
    assert_eq!(duplicates["double_paid"], 0);
    assert_eq!(duplicates["paid_orders"], orders as u64 - refused);

    let forged = &summary["bad_signatures"];
    let sent = (0..orders).filter(|i| plan(*i).forged_first).count() as u64;
    assert!(sent > 0);
    assert_eq!(forged["sent"], sent);
    assert_eq!(forged["refused_invalid_signature"], sent);
    assert_eq!(forged["daemon_counted"], sent);
    assert_eq!(forged["dead_letters"], 0);
    assert_eq!(forged["daemon_accepted"], forged["genuine_events_sent"]);

    let outage = &summary["shiprocket_outage"];
    assert!(
        outage["answered_500"].as_u64() > Some(0),
        "the outage hit nothing: {outage}"
    );
    assert!(outage["orders_waited"].as_u64() > Some(0), "{outage}");
    assert_eq!(outage["orders_waited"], outage["orders_waited_ready"]);
    assert_eq!(outage["shiprocket_orders"], orders as u64 - refused);
    assert_eq!(outage["shiprocket_duplicates"], 0);

    let stock = &summary["out_of_stock"];
    assert_eq!(stock["refused_409"], refused);
    assert_eq!(stock["daemon_counted"], refused);
    assert!(stock["lowest_available"].as_i64() >= Some(0), "{stock}");
    assert_eq!(stock["reserved_left"], 0);
    assert_eq!(stock["ledger_mismatches"], 0);

    let leftovers: Vec<_> = std::fs::read_dir(tmp.path())
        .expect("read temp dir")
        .filter_map(Result::ok)
        .map(|e| e.file_name())
        .collect();
    assert!(leftovers.is_empty(), "the demo left {leftovers:?} behind");
}

/// The demo prints a one-time operator link to its console; with
/// `--keep-running` the console stays up after the run until Ctrl-C.
#[actix_web::test]
async fn the_demo_prints_a_one_time_console_link_that_works_while_it_runs() {
    use std::io::{BufRead, BufReader};
    use std::process::Stdio;

    let tmp = tempfile::tempdir().expect("temp dir");
    let mut demo = Command::new(env!("CARGO_BIN_EXE_dropshipd"))
        .env_clear()
        .env("TMPDIR", tmp.path())
        .args(["demo", "--orders", "20", "--keep-running"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("run dropshipd demo");
    let (lines, read) = std::sync::mpsc::channel();
    let stdout = demo.stdout.take().expect("stdout");
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if lines.send(line).is_err() {
                break;
            }
        }
    });
    let next_line_with = |text: &str| loop {
        let line = read
            .recv_timeout(std::time::Duration::from_secs(120))
            .unwrap_or_else(|_| panic!("no line with {text:?}"));
        if line.contains(text) {
            return line;
        }
    };
    let line = next_line_with("/console/sign-in?once=");
    let link = line
        .split_whitespace()
        .find(|w| w.starts_with("http://127.0.0.1:"))
        .expect("the link")
        .to_owned();
    next_line_with("stay up until Ctrl-C");

    let client = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .expect("client");
    let signed_in = client.get(&link).send().await.expect("follow the link");
    assert_eq!(signed_in.status(), 303);
    let cookie = signed_in.headers()[reqwest::header::SET_COOKIE]
        .to_str()
        .expect("cookie")
        .split(';')
        .next()
        .expect("cookie pair")
        .to_owned();
    let again = client.get(&link).send().await.expect("the link again");
    assert_eq!(again.status(), 401, "the link works once");
    let console = link.split("/sign-in").next().expect("console address");
    let overview = client
        .get(console)
        .header(reqwest::header::COOKIE, &cookie)
        .send()
        .await
        .expect("overview");
    assert_eq!(overview.status(), 200);
    let page = overview.text().await.expect("page");
    assert!(
        page.contains("Signed in as <strong>operator</strong>"),
        "{page}"
    );

    // Ctrl-C ends it in order.
    // SAFETY: `kill` with a child's pid and a signal number has no memory effects.
    unsafe { libc::kill(demo.id() as i32, libc::SIGINT) };
    let status = demo.wait().expect("demo exits");
    assert!(status.success(), "{status:?}");
}
