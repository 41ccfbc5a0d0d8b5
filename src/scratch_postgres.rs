//! A throw-away PostgreSQL server in a temporary folder: what the tests, the
//! benches and the demo's cluster run dropshipd's PostgreSQL backend against.
//!
//! It uses the machine's own PostgreSQL binaries (Debian's `postgresql`
//! package puts them in `/usr/lib/postgresql/<version>/bin`), listens on
//! 127.0.0.1 and a free port only, trusts local connections, and is stopped
//! and deleted when dropped. PostgreSQL refuses to run as root; as root the
//! server runs as the `postgres` user the Debian package creates.
//!
//! `fsync` is off: the server's data dies with its folder anyway, and a
//! process crash (what the tests inflict) loses nothing PostgreSQL has written.

use std::path::PathBuf;
use std::process::{Command, Output, Stdio};

/// The superuser the scratch cluster is created with.
pub const SUPERUSER: &str = "dropshipd";

#[derive(Debug, thiserror::Error)]
pub enum ScratchError {
    #[error(
        "PostgreSQL is not installed: no initdb in $DROPSHIPD_PG_BIN, /usr/lib/postgresql/*/bin or PATH \
         (Debian: apt-get install postgresql)"
    )]
    NotInstalled,
    #[error("running as root needs the `postgres` user to run the server as (Debian's postgresql package creates it)")]
    NoServerUser,
    #[error("cannot prepare the server's folder: {0}")]
    Folder(#[from] std::io::Error),
    #[error("`{command}` failed: {detail}")]
    Command { command: String, detail: String },
}

/// A running scratch server. Dropping it stops the server and deletes its data.
#[derive(Debug)]
pub struct ScratchPostgres {
    folder: tempfile::TempDir,
    bin: PathBuf,
    port: u16,
    /// The user the server runs as when we are root.
    run_as: Option<String>,
    running: bool,
}

impl ScratchPostgres {
    /// The folder of `initdb`, `pg_ctl` and `createdb`, or why there is none.
    pub fn binaries() -> Result<PathBuf, ScratchError> {
        if let Some(dir) = std::env::var_os("DROPSHIPD_PG_BIN") {
            let dir = PathBuf::from(dir);
            return if dir.join("initdb").is_file() {
                Ok(dir)
            } else {
                Err(ScratchError::NotInstalled)
            };
        }
        let mut versions: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
            .into_iter()
            .flatten()
            .flatten()
            .filter_map(|entry| {
                let version = entry.file_name().to_str()?.parse::<u32>().ok()?;
                let bin = entry.path().join("bin");
                bin.join("initdb").is_file().then_some((version, bin))
            })
            .collect();
        versions.sort();
        if let Some((_, bin)) = versions.pop() {
            return Ok(bin);
        }
        std::env::var_os("PATH")
            .iter()
            .flat_map(std::env::split_paths)
            .find(|dir| dir.join("initdb").is_file())
            .ok_or(ScratchError::NotInstalled)
    }

    /// Creates a cluster in a new temporary folder and starts it.
    pub fn start() -> Result<Self, ScratchError> {
        let bin = Self::binaries()?;
        let run_as = if is_root() {
            if !user_exists("postgres") {
                return Err(ScratchError::NoServerUser);
            }
            Some("postgres".to_owned())
        } else {
            None
        };
        let folder = tempfile::Builder::new().prefix("dropshipd-pg-").tempdir()?;
        if let Some(user) = &run_as {
            run(Command::new("chown").arg(user).arg(folder.path()))?;
        }
        let mut server = Self {
            folder,
            bin,
            port: 0,
            run_as,
            running: false,
        };
        server.run_tool(
            "initdb",
            &[
                "-D",
                &server.data().display().to_string(),
                "-U",
                SUPERUSER,
                "--auth=trust",
                "-E",
                "UTF8",
                "--no-sync",
                "--no-instructions",
            ],
        )?;
        // A port taken between our probe and the server's bind: try another.
        let mut last = None;
        for _ in 0..5 {
            server.port = free_port()?;
            match server.pg_ctl_start() {
                Ok(()) => {
                    server.running = true;
                    return Ok(server);
                }
                Err(e) => last = Some(e),
            }
        }
        Err(last.unwrap_or(ScratchError::NotInstalled))
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// A connection URL for `database` on this server.
    pub fn url(&self, database: &str) -> String {
        format!("postgres://{SUPERUSER}@127.0.0.1:{}/{database}", self.port)
    }

    /// Creates an empty database and returns its URL.
    pub fn create_database(&self, name: &str) -> Result<String, ScratchError> {
        run(Command::new(self.bin.join("createdb"))
            .args(["-h", "127.0.0.1", "-p", &self.port.to_string()])
            .args(["-U", SUPERUSER, name]))?;
        Ok(self.url(name))
    }

    /// `pg_ctl stop -m fast`: every client is disconnected and the server
    /// writes its state out before it exits.
    pub fn stop(&mut self) -> Result<(), ScratchError> {
        if self.running {
            self.run_pg_ctl(&["stop", "-m", "fast", "-w"])?;
            self.running = false;
        }
        Ok(())
    }

    /// Starts the stopped server again on the same port and data.
    pub fn start_again(&mut self) -> Result<(), ScratchError> {
        if !self.running {
            self.pg_ctl_start()?;
            self.running = true;
        }
        Ok(())
    }

    /// `pg_ctl restart -m fast`.
    pub fn restart_fast(&mut self) -> Result<(), ScratchError> {
        self.stop()?;
        self.start_again()
    }

    /// The server's own log, for a failing test to print.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.folder.path().join("server.log")).unwrap_or_default()
    }

    fn data(&self) -> PathBuf {
        self.folder.path().join("data")
    }

    fn pg_ctl_start(&self) -> Result<(), ScratchError> {
        let options = format!(
            "-c listen_addresses=127.0.0.1 -c port={} -c unix_socket_directories={} \
             -c fsync=off -c max_connections=300",
            self.port,
            self.folder.path().display()
        );
        let log = self.folder.path().join("server.log").display().to_string();
        self.run_pg_ctl(&["start", "-w", "-t", "60", "-l", &log, "-o", &options])
    }

    fn run_pg_ctl(&self, args: &[&str]) -> Result<(), ScratchError> {
        let data = self.data().display().to_string();
        let mut all = vec!["-D", data.as_str()];
        all.extend_from_slice(args);
        self.run_tool("pg_ctl", &all)
    }

    /// Runs one of the server's tools, as the server's user.
    fn run_tool(&self, tool: &str, args: &[&str]) -> Result<(), ScratchError> {
        let program = self.bin.join(tool);
        let mut command = match &self.run_as {
            Some(user) => {
                let mut command = Command::new("runuser");
                command.args(["-u", user, "--"]).arg(&program);
                command
            }
            None => Command::new(&program),
        };
        // The server's user may not be able to enter our working folder.
        command.args(args).current_dir(self.folder.path());
        run(&mut command)
    }
}

impl Drop for ScratchPostgres {
    fn drop(&mut self) {
        if self.running {
            // Immediate: nothing in it is worth a clean shutdown.
            let _ = self.run_pg_ctl(&["stop", "-m", "immediate", "-w"]);
        }
    }
}

fn run(command: &mut Command) -> Result<(), ScratchError> {
    let shown = format!("{command:?}");
    let output: Output =
        command
            .stdin(Stdio::null())
            .output()
            .map_err(|e| ScratchError::Command {
                command: shown.clone(),
                detail: e.to_string(),
            })?;
    if output.status.success() {
        Ok(())
    } else {
        Err(ScratchError::Command {
            command: shown,
            detail: format!(
                "{}: {}{}",
                output.status,
                String::from_utf8_lossy(&output.stderr).trim(),
                String::from_utf8_lossy(&output.stdout).trim()
            ),
        })
    }
}

fn free_port() -> Result<u16, ScratchError> {
    let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
    Ok(listener.local_addr()?.port())
}

fn is_root() -> bool {
    // /proc/self belongs to the process's effective user.
    std::fs::metadata("/proc/self")
        .map(|meta| std::os::unix::fs::MetadataExt::uid(&meta) == 0)
        .unwrap_or(false)
}

fn user_exists(name: &str) -> bool {
    std::fs::read_to_string("/etc/passwd")
        .map(|passwd| {
            passwd
                .lines()
                .any(|line| line.split(':').next() == Some(name))
        })
        .unwrap_or(false)
}
