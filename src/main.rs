//! The `dropshipd` binary: parses the command line and calls into the library.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use dropshipd::config::{self, ConfigSource, Settings};
use dropshipd::telemetry::logging;
use dropshipd::Application;

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
}

fn main() -> ExitCode {
    let cli = Cli::parse();
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

fn serve(settings: Settings) -> anyhow::Result<()> {
    if let Err(e) = logging::init() {
        eprintln!("dropshipd: logging not initialised: {e}");
    }
    for warning in &settings.warnings {
        tracing::warn!(warning = %warning, "configuration warning");
    }
    actix_web::rt::System::new().block_on(async move {
        let app = Application::build(settings).await?;
        let stop = app.stop_handle();
        actix_web::rt::spawn(async move {
            shutdown_signal().await;
            tracing::info!("shutdown signal received; draining in-flight requests");
            stop.stop(true).await;
        });
        app.run_until_stopped().await?;
        tracing::info!("dropshipd stopped");
        Ok(())
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
