//! The binary's own surface: `check-config`, and what `serve` writes to its logs.

use crate::helpers::*;

#[test]
fn check_config_prints_a_masked_summary() {
    let dir = tempfile::tempdir().expect("temp dir");
    let config = write_daemon_config(dir.path());
    let output = daemon_command(&config)
        .arg("check-config")
        .output()
        .expect("run check-config");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(
        stdout.contains("env:RAZORPAY_WEBHOOK_SECRET (set, ****)"),
        "{stdout}"
    );
    assert!(stdout.contains("config ok"), "{stdout}");
    for secret in [WEBHOOK_SECRET, VIEWER_TOKEN, OPERATOR_TOKEN] {
        assert!(!stdout.contains(secret), "secret printed:\n{stdout}");
    }
}

#[test]
fn check_config_names_every_problem_and_exits_1() {
    let dir = tempfile::tempdir().expect("temp dir");
    let config = dir.path().join("config.toml");
    std::fs::write(
        &config,
        "[server]\nlisten = \"nowhere\"\n[stock]\nshards = 0\n",
    )
    .expect("write");
    let output = daemon_command(&config)
        .env_remove("RAZORPAY_WEBHOOK_SECRET")
        .env("DROPSHIPD__SERVER__MAX_BODY_BYTES", "12")
        .arg("check-config")
        .output()
        .expect("run check-config");
    assert_eq!(output.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&output.stderr);
    for problem in [
        "server.listen",
        "server.max_body_bytes",
        "stock.shards",
        "RAZORPAY_WEBHOOK_SECRET",
    ] {
        assert!(stderr.contains(problem), "missing {problem} in:\n{stderr}");
    }

    let missing = daemon_command(&dir.path().join("absent.toml"))
        .arg("check-config")
        .output()
        .expect("run check-config");
    assert_eq!(missing.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&missing.stderr).contains("absent.toml"));
}

#[tokio::test]
async fn serve_logs_json_with_the_event_id_and_never_a_secret_or_a_body() {
    let dir = tempfile::tempdir().expect("temp dir");
    let config = write_daemon_config(dir.path());
    let daemon = Daemon::start(&config);
    let client = reqwest::Client::new();
    let marker = "pay_LOGMARKER";
    let body = payment_captured(marker, "order_LOGMARKER", now_secs());
    let signature = dropshipd::domain::signature::sign(WEBHOOK_SECRET.as_bytes(), body.as_bytes());
    for (event_id, signature) in [("evt_LOG1", signature.as_str()), ("evt_LOG2", "0000")] {
        client
            .post(format!("{}/webhooks/razorpay", daemon.public))
            .header("X-Razorpay-Signature", signature)
            .header("X-Razorpay-Event-Id", event_id)
            .body(body.clone())
            .send()
            .await
            .expect("webhook");
    }
    let mut accepted_line = None;
    let mut rejected_line = None;
    for _ in 0..100 {
        let logs = daemon.logs();
        accepted_line = logs
            .iter()
            .find(|l| l.contains("webhook accepted"))
            .cloned();
        rejected_line = logs
            .iter()
            .find(|l| l.contains("invalid signature"))
            .cloned();
        if accepted_line.is_some() && rejected_line.is_some() {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    let accepted: serde_json::Value =
        serde_json::from_str(&accepted_line.expect("an accepted log line")).expect("JSON log line");
    assert_eq!(accepted["event_id"], "evt_LOG1");
    assert_eq!(accepted["level"], "INFO");
    let rejected: serde_json::Value =
        serde_json::from_str(&rejected_line.expect("a rejected log line")).expect("JSON log line");
    assert!(
        rejected["peer"]
            .as_str()
            .is_some_and(|p| p.starts_with("127.0.0.1:")),
        "{rejected}"
    );

    for line in daemon.logs() {
        for secret in [WEBHOOK_SECRET, VIEWER_TOKEN, OPERATOR_TOKEN, marker] {
            assert!(!line.contains(secret), "{secret:?} in a log line: {line}");
        }
    }
}

/// Logs are written by a thread of their own: when whatever reads the daemon's
/// stdout (journald, a pipe) stops reading, webhooks are still answered, and
/// once it reads again every line arrives.
#[tokio::test]
async fn a_log_reader_that_stops_reading_stalls_no_webhook_and_loses_no_line() {
    // Far more INFO lines than a pipe holds (64 KiB): with each line written
    // by the thread that logs it, the workers would block and these requests
    // time out.
    const WEBHOOKS: usize = 1_500;
    let dir = tempfile::tempdir().expect("temp dir");
    let config = write_daemon_config(dir.path());
    let (mut daemon, lines) = Daemon::start_holding_stdout(&config);
    // From here nothing reads stdout until every webhook was answered.
    let client = reqwest::Client::builder()
        .timeout(std::time::Duration::from_secs(10))
        .build()
        .expect("client");
    let next = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let senders: Vec<_> = (0..8)
        .map(|_| {
            let (client, next, public) = (client.clone(), next.clone(), daemon.public.clone());
            tokio::spawn(async move {
                loop {
                    let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    if i >= WEBHOOKS {
                        return;
                    }
                    let body = payment_captured(
                        &format!("pay_STALL{i}"),
                        &format!("order_STALL{i}"),
                        now_secs(),
                    );
                    let signature = dropshipd::domain::signature::sign(
                        WEBHOOK_SECRET.as_bytes(),
                        body.as_bytes(),
                    );
                    let response = client
                        .post(format!("{public}/webhooks/razorpay"))
                        .header("X-Razorpay-Signature", signature)
                        .header("X-Razorpay-Event-Id", format!("evt_STALL{i}"))
                        .body(body)
                        .send()
                        .await
                        .unwrap_or_else(|e| {
                            panic!("webhook {i} not answered while stdout was not read: {e}")
                        });
                    assert_eq!(response.status(), 200, "webhook {i}");
                }
            })
        })
        .collect();
    for sender in senders {
        sender.await.expect("sender");
    }

    // An orderly stop, then reading again: every accepted event's line
    // arrives before stdout closes.
    daemon.terminate();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in lines.map_while(Result::ok) {
            if tx.send(line).is_err() {
                return;
            }
        }
    });
    let mut logged = std::collections::HashSet::new();
    while let Ok(line) = rx.recv_timeout(std::time::Duration::from_secs(30)) {
        if let Ok(json) = serde_json::from_str::<serde_json::Value>(&line) {
            if json["message"] == "webhook accepted" {
                if let Some(event_id) = json["event_id"].as_str() {
                    logged.insert(event_id.to_owned());
                }
            }
        }
    }
    let exited = daemon
        .wait_exit(std::time::Duration::from_secs(30))
        .expect("dropshipd exits after SIGTERM");
    assert!(exited.success(), "SIGTERM exits 0: {exited}");
    assert_eq!(
        logged.len(),
        WEBHOOKS,
        "lines lost while the reader was stalled"
    );
}

#[tokio::test]
async fn shiprocket_sandbox_runs_as_its_own_server_without_a_config() {
    use std::io::{BufRead, BufReader};
    use std::process::{Command, Stdio};

    let mut child = Command::new(env!("CARGO_BIN_EXE_dropshipd"))
        .env_clear()
        .env("RUST_LOG", "info")
        .args([
            "shiprocket-sandbox",
            "--listen",
            "127.0.0.1:0",
            "--throttle-rate",
            "0",
        ])
        .stdout(Stdio::piped())
        .spawn()
        .expect("start the sandbox");
    let stdout = child.stdout.take().expect("stdout");
    let addr = BufReader::new(stdout)
        .lines()
        .map_while(Result::ok)
        .find_map(|line| {
            let json: serde_json::Value = serde_json::from_str(&line).ok()?;
            json["addr"].as_str().map(str::to_owned)
        })
        .expect("the sandbox logs its address");
    let client = dropshipd::clients::shiprocket::ShiprocketClient::new(
        &format!("http://{addr}"),
        std::time::Duration::from_secs(5),
    )
    .expect("client");
    let token = client.login("api@example.com", "secret").await;
    let _ = child.kill();
    let _ = child.wait();
    assert!(token.is_ok_and(|t| !t.is_empty()));
}

#[tokio::test]
async fn a_second_daemon_on_the_same_database_is_refused_naming_the_file_and_the_holder() {
    let dir = tempfile::tempdir().expect("temp dir");
    let config = write_daemon_config(dir.path());
    let first = Daemon::start(&config);
    let second = daemon_command(&config)
        .arg("serve")
        .output()
        .expect("run a second serve");
    assert_eq!(second.status.code(), Some(1), "the second start must fail");
    let stderr = String::from_utf8_lossy(&second.stderr);
    let lock = dir.path().join("data/dropshipd.db.lock");
    assert!(
        stderr.contains(&format!("pid {}", first.pid()))
            && stderr.contains(&lock.display().to_string()),
        "{stderr}"
    );
    // The first one is untouched.
    let ready = reqwest::get(format!("{}/healthz", first.public))
        .await
        .expect("healthz");
    assert_eq!(ready.status(), 200);
}
