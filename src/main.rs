//! The `dropshipd` binary: parses the command line and calls into the library.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use dropshipd::config::{self, ConfigSource, Settings};
use dropshipd::demo::{self, DemoOptions};
use dropshipd::sandbox::{DuplicatePolicy, Faults, SandboxServer};
use dropshipd::service::systemd;
use dropshipd::storage;
use dropshipd::telemetry::logging;
use dropshipd::Application;

// Measured under the end-to-end bench: glibc's malloc and free were about an
// eighth of the daemon's samples, its arena consolidation among them.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
#[command(
    name = "dropshipd",
    version,
    about = "Order back end: Razorpay webhooks in, Shiprocket shipments out"
)]
struct Cli {
    /// Config file [default: $DROPSHIPD_CONFIG, else config.toml]
    #[arg(long, global = true, env = "DROPSHIPD_CONFIG")]
    config: Option<PathBuf>,

    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Run the daemon (the default)
    Serve,
    /// Load the config and every referenced secret; print a masked summary
    CheckConfig,
    /// Run the Shiprocket sandbox: a local Shiprocket API with fault injection
    ShiprocketSandbox(Box<SandboxArgs>),
    /// Run the whole system on this machine with nothing to set up: orders,
    /// signed webhooks and faults over real HTTP, then a summary
    Demo(DemoArgs),
    /// Audit log tools
    #[command(subcommand)]
    Audit(AuditCommand),
}

#[derive(Subcommand)]
enum AuditCommand {
    /// Check the audit log's hash chain: prints `ok N entries` or the first broken link
    Verify {
        /// Database file [default: storage.path of the config]
        #[arg(long)]
        db: Option<PathBuf>,
    },
}

#[derive(clap::Args)]
struct DemoArgs {
    /// Orders to send
    #[arg(long, default_value_t = 1000)]
    orders: usize,
    /// Also print the summary as one line of JSON, last
    #[arg(long)]
    json: bool,
    /// Keep the daemon and its console up after the run, until Ctrl-C
    #[arg(long)]
    keep_running: bool,
}

#[derive(clap::Args)]
struct SandboxArgs {
    /// Address to listen on
    #[arg(long, default_value = "127.0.0.1:8090")]
    listen: String,
    /// Share of calls answered 500
    #[arg(long, default_value_t = 0.0)]
    error_rate: f64,
    /// Share of successful calls answered 502 after the work was done
    #[arg(long, default_value_t = 0.0)]
    error_after_work_rate: f64,
    /// Share of calls answered 429
    #[arg(long, default_value_t = 0.0)]
    throttle_rate: f64,
    /// Retry-After seconds sent with 429s
    #[arg(long)]
    retry_after_secs: Option<u64>,
    /// Share of calls that hang for --hang-ms
    #[arg(long, default_value_t = 0.0)]
    hang_rate: f64,
    #[arg(long, default_value_t = 60_000)]
    hang_ms: u64,
    /// Latency added to every answer, in milliseconds
    #[arg(long, default_value_t = 0)]
    latency_ms: u64,
    /// Token lifetime in seconds (Shiprocket: 240 hours)
    #[arg(long, default_value_t = 864_000)]
    token_ttl_secs: u64,
    /// A create for an existing channel order id: echo, reject or create
    #[arg(long, default_value = "echo")]
    duplicate: String,
    /// Calls per second above which the sandbox answers 429
    #[arg(long)]
    rate_limit_per_sec: Option<f64>,
    /// Calls the rate limit lets through at once [default: one second's worth]
    #[arg(long)]
    rate_limit_burst: Option<f64>,
    /// Share of AWB assignments failing inside an HTTP 200
    #[arg(long, default_value_t = 0.0)]
    awb_failure_rate: f64,
    /// The pickup location nickname that exists
    #[arg(long, default_value = "Primary")]
    pickup_location: String,
    /// Refuse every cancel (as for an order already picked up)
    #[arg(long)]
    cancel_refused: bool,
    /// Seed of the fault dice
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Apply the faults only to these calls (login, create, assign_awb, search, pickup, cancel)
    #[arg(long, value_delimiter = ',')]
    only_calls: Vec<String>,
    /// Apply the faults only to these accounts (API users' login e-mails)
    #[arg(long, value_delimiter = ',')]
    only_accounts: Vec<String>,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    if let Some(Command::ShiprocketSandbox(args)) = &cli.command {
        // The sandbox stands for Shiprocket, not for dropshipd: it needs no config.
        return match run_sandbox(args) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("dropshipd shiprocket-sandbox: {e:#}");
                ExitCode::FAILURE
            }
        };
    }
    if let Some(Command::Demo(args)) = &cli.command {
        // The demo builds its own configuration: it needs no file and no secrets.
        return match run_demo(args) {
            Ok(code) => code,
            Err(e) => {
                eprintln!("dropshipd demo: {e:#}");
                ExitCode::FAILURE
            }
        };
    }
    let source = match cli.config {
        Some(path) => ConfigSource {
            path,
            explicit: true,
        },
        None => ConfigSource {
            path: PathBuf::from("config.toml"),
            explicit: false,
        },
    };
    // Variables that are not UTF-8 cannot be config overrides or secrets; skip them
    // rather than panic on them.
    let vars = std::env::vars_os()
        .filter_map(|(k, v)| Some((k.into_string().ok()?, v.into_string().ok()?)))
        .collect();
    if let Some(Command::Audit(AuditCommand::Verify { db })) = &cli.command {
        // Reading the log needs the database, not the daemon's secrets.
        let path = match db {
            Some(path) => path.clone(),
            None => match config::storage_path(&source, &vars) {
                Ok(path) => path,
                Err(e) => {
                    for problem in &e.problems {
                        eprintln!("dropshipd audit verify: {problem}");
                    }
                    return ExitCode::FAILURE;
                }
            },
        };
        return audit_verify(&path);
    }
    let settings = match config::load(&source, vars) {
        Ok(settings) => settings,
        Err(e) => {
            eprintln!(
                "dropshipd: the configuration has {} problem(s):",
                e.problems.len()
            );
            for problem in &e.problems {
                eprintln!("  - {problem}");
            }
            return ExitCode::FAILURE;
        }
    };
    match cli.command.unwrap_or(Command::Serve) {
        Command::CheckConfig => {
            print!("{}", settings.summary());
            for warning in &settings.warnings {
                eprintln!("warning: {warning}");
            }
            println!("config ok: {}", source.path.display());
            ExitCode::SUCCESS
        }
        Command::ShiprocketSandbox(_) | Command::Audit(_) | Command::Demo(_) => ExitCode::SUCCESS,
        Command::Serve => match serve(settings) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                tracing::error!(error = format!("{e:#}"), "dropshipd stopped with an error");
                eprintln!("dropshipd: {e:#}");
                ExitCode::FAILURE
            }
        },
    }
}

fn audit_verify(path: &std::path::Path) -> ExitCode {
    if !path.exists() {
        eprintln!("dropshipd audit verify: no database at {}", path.display());
        return ExitCode::FAILURE;
    }
    let verified = storage::open_read_only(path)
        .map_err(storage::AuditVerifyError::from)
        .and_then(|conn| storage::verify_audit_log(&conn));
    match verified {
        Ok(entries) => {
            println!("ok {entries} entries");
            ExitCode::SUCCESS
        }
        Err(e) => {
            println!("{e}");
            ExitCode::FAILURE
        }
    }
}

fn serve(settings: Settings) -> anyhow::Result<()> {
    // The same name the daemon's status reports (host name and pid by default).
    let instance_id = dropshipd::startup::instance_id(&settings.config.cluster.instance_id);
    // Held to the end of `serve`: its drop writes out the last lines.
    let _log = logging::init_for(Some(&instance_id))
        .map_err(|e| eprintln!("dropshipd: logging not initialised: {e}"))
        .ok();
    for warning in &settings.warnings {
        tracing::warn!(warning = %warning, "configuration warning");
    }
    actix_web::rt::System::new().block_on(async move {
        let app = Application::build(settings).await?;
        let stop = app.stop_handle();
        actix_web::rt::spawn(async move {
            shutdown_signal().await;
            tracing::info!("shutdown signal received; draining in-flight requests");
            systemd::notify_stopping("draining");
            stop.stop(true).await;
        });
        app.run_until_stopped().await?;
        tracing::info!("dropshipd stopped");
        Ok(())
    })
}

fn run_sandbox(args: &SandboxArgs) -> anyhow::Result<()> {
    let _log = logging::init()
        .map_err(|e| eprintln!("dropshipd: logging not initialised: {e}"))
        .ok();
    let duplicate = match args.duplicate.as_str() {
        "echo" => DuplicatePolicy::Echo,
        "reject" => DuplicatePolicy::Reject,
        "create" => DuplicatePolicy::Create,
        other => anyhow::bail!("--duplicate takes echo, reject or create, not {other:?}"),
    };
    let faults = Faults {
        error_rate: args.error_rate,
        error_after_work_rate: args.error_after_work_rate,
        throttle_rate: args.throttle_rate,
        retry_after_secs: args.retry_after_secs,
        hang_rate: args.hang_rate,
        hang_ms: args.hang_ms,
        latency_ms: args.latency_ms,
        token_ttl_secs: args.token_ttl_secs,
        duplicate,
        rate_limit_per_sec: args.rate_limit_per_sec,
        rate_limit_burst: args.rate_limit_burst,
        awb_failure_rate: args.awb_failure_rate,
        pickup_location: args.pickup_location.clone(),
        cancel_refused: args.cancel_refused,
        only_calls: args.only_calls.clone(),
        only_accounts: args.only_accounts.clone(),
    };
    actix_web::rt::System::new().block_on(async move {
        let server = SandboxServer::bind(&args.listen, faults, args.seed, 2)?;
        tracing::info!(addr = %server.addr, "shiprocket sandbox listening");
        let handle = server.handle();
        actix_web::rt::spawn(async move {
            shutdown_signal().await;
            handle.stop(true).await;
        });
        server.run().await?;
        Ok(())
    })
}

/// Runs the demo; exits non-zero when the summary names a problem.
fn run_demo(args: &DemoArgs) -> anyhow::Result<ExitCode> {
    // The daemon's logs would drown the progress bar and the summary; they
    // are there for whoever asks with RUST_LOG.
    let _log = std::env::var_os("RUST_LOG").and_then(|_| {
        logging::init()
            .map_err(|e| eprintln!("dropshipd: logging not initialised: {e}"))
            .ok()
    });
    let options = DemoOptions {
        orders: args.orders,
        keep_running: args.keep_running,
    };
    let summary = actix_web::rt::System::new().block_on(demo::run(options))?;
    print!("{}", summary.render());
    if args.json {
        println!("{}", serde_json::to_string(&summary)?);
    }
    Ok(if summary.problems.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

async fn shutdown_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    match (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) {
        (Ok(mut term), Ok(mut int)) => {
            tokio::select! {
                _ = term.recv() => {}
                _ = int.recv() => {}
            }
        }
        _ => {
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}
