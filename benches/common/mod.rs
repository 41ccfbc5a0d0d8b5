//! Helpers shared by the benchmarks.

#[allow(dead_code)] // each benchmark uses a different part
/// The q-quantile of a Prometheus histogram in a text scrape, interpolated
/// within its bucket; `None` when the histogram is absent or empty.
pub fn quantile(scrape: &str, name: &str, q: f64) -> Option<f64> {
    let mut buckets: Vec<(f64, f64)> = scrape
        .lines()
        .filter_map(|l| l.strip_prefix(&format!("{name}_bucket{{le=\"")))
        .filter_map(|rest| {
            let (le, count) = rest.split_once("\"} ")?;
            let le = if le == "+Inf" {
                f64::INFINITY
            } else {
                le.parse().ok()?
            };
            Some((le, count.trim().parse().ok()?))
        })
        .collect();
    buckets.sort_by(|a, b| a.0.total_cmp(&b.0));
    let total = buckets.last()?.1;
    if total <= 0.0 {
        return None;
    }
    let target = q * total;
    let mut previous = (0.0, 0.0);
    for (le, count) in buckets {
        if count >= target {
            if le.is_infinite() {
                return Some(previous.0);
            }
            let span = (count - previous.1).max(1.0);
            return Some(previous.0 + (le - previous.0) * (target - previous.1) / span);
        }
        previous = (le, count);
    }
    None
}

#[allow(dead_code)] // each benchmark uses a different part
/// The value after `name` on the command line, parsed, or `default`.
pub fn arg(name: &str, default: usize) -> usize {
    let args: Vec<String> = std::env::args().collect();
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// `dropshipd serve` as its own process (the built binary, as users run it),
/// with the secrets every benchmark uses in its environment.
#[allow(dead_code)] // each benchmark uses a different part
pub struct Daemon {
    child: std::process::Child,
    pub public: String,
    pub admin: String,
}

#[allow(dead_code)]
pub const OPERATOR_TOKEN: &str = "bench-operator";
#[allow(dead_code)]
pub const VIEWER_TOKEN: &str = "bench-viewer";
#[allow(dead_code)]
pub const STOREFRONT_TOKEN: &str = "bench-storefront";

#[allow(dead_code)]
impl Daemon {
    /// Starts the daemon on `config` (with `webhook_secret`) and waits for its
    /// `listening` line; its output is drained for the rest of its life.
    pub fn start(config: &std::path::Path, webhook_secret: &str) -> Self {
        Self::start_logging(config, webhook_secret, "warn,dropshipd::startup=info")
    }

    /// As [`Daemon::start`], with `RUST_LOG` set to `log_filter` (the daemon's
    /// default is `info`, which is what a user runs).
    pub fn start_logging(config: &std::path::Path, webhook_secret: &str, log_filter: &str) -> Self {
        Self::start_with_env(config, webhook_secret, log_filter, &[])
    }

    /// As [`Daemon::start_logging`], with more environment (a database URL).
    pub fn start_with_env(
        config: &std::path::Path,
        webhook_secret: &str,
        log_filter: &str,
        env: &[(&str, &str)],
    ) -> Self {
        use std::io::{BufRead, BufReader};
        // DROPSHIPD_BIN runs another build (an A/B of two commits) under the same bench.
        let binary = std::env::var_os("DROPSHIPD_BIN")
            .map(std::path::PathBuf::from)
            .unwrap_or_else(|| env!("CARGO_BIN_EXE_dropshipd").into());
        let mut child = std::process::Command::new(binary)
            .env_clear()
            .env("RAZORPAY_WEBHOOK_SECRET", webhook_secret)
            .env("DROPSHIPD_VIEWER_TOKEN", VIEWER_TOKEN)
            .env("DROPSHIPD_OPERATOR_TOKEN", OPERATOR_TOKEN)
            .env("DROPSHIPD_STOREFRONT_TOKEN", STOREFRONT_TOKEN)
            .env("DROPSHIPD_PII_KEY", "ab".repeat(32))
            .env("SHIPROCKET_PASSWORD", "bench-password")
            .env("RUST_LOG", log_filter)
            .envs(env.iter().copied())
            .args(["--config", &config.to_string_lossy(), "serve"])
            .stdout(std::process::Stdio::piped())
            .spawn()
            .expect("start dropshipd");
        let mut lines = BufReader::new(child.stdout.take().expect("stdout")).lines();
        let (public, admin) = loop {
            let line = lines.next().expect("daemon exited").expect("read");
            let Ok(v) = serde_json::from_str::<serde_json::Value>(&line) else {
                continue;
            };
            if v["message"] == "listening" {
                break (
                    format!("http://{}", v["public_addr"].as_str().unwrap_or_default()),
                    format!("http://{}", v["admin_addr"].as_str().unwrap_or_default()),
                );
            }
        };
        std::thread::spawn(move || lines.for_each(drop));
        Self {
            child,
            public,
            admin,
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// CPU time the daemon has used so far, user and system, in seconds: work
    /// done, which the machine's noise changes far less than wall-clock rates.
    pub fn cpu_seconds(&self) -> f64 {
        process_cpu_seconds(self.pid())
    }

    /// Resident memory now and at its peak (`VmRSS`, `VmHWM`), in KiB.
    pub fn rss_kib(&self) -> (u64, u64) {
        let status =
            std::fs::read_to_string(format!("/proc/{}/status", self.pid())).unwrap_or_default();
        let field = |name: &str| {
            status
                .lines()
                .find_map(|l| l.strip_prefix(name))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
                .unwrap_or(0)
        };
        (field("VmRSS:"), field("VmHWM:"))
    }
}

/// CPU time process `pid` has used so far, user and system, in seconds.
pub fn process_cpu_seconds(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // The fields after the command name, which is in parentheses and may hold spaces.
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .map(|(_, rest)| rest.split_whitespace().collect())
        .unwrap_or_default();
    let ticks = |i: usize| {
        fields
            .get(i)
            .and_then(|v| v.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    // utime and stime are fields 14 and 15 of stat(5), 12 and 13 after the name.
    // SAFETY: sysconf has no preconditions.
    let per_second = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    (ticks(11) + ticks(12)) / per_second.max(1.0)
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
