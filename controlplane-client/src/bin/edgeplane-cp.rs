//! `edgeplane-cp`: the reference control plane as a program (see the
//! crate README, "Reference control plane").
#![forbid(unsafe_code)]

use std::io::Write;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use clap::Parser;
use controlplane_client::reference::{self, ServerOptions, ServerTls};
use tracing_subscriber::EnvFilter;

/// Serves edgeplane configs from a directory the way a Pipy repo serves
/// codebases: files and manifests with ETags, long polls, status reports.
#[derive(Debug, Parser)]
#[command(name = "edgeplane-cp", version)]
struct Args {
    /// The directory to serve.
    #[arg(long)]
    dir: PathBuf,
    /// Address to listen on; port 0 picks a free one (the first stdout line
    /// says which).
    #[arg(long, default_value = "127.0.0.1:6060")]
    listen: SocketAddr,
    /// Serve TLS with this certificate chain (PEM).
    #[arg(long, requires = "tls_key")]
    tls_cert: Option<PathBuf>,
    /// The private key of --tls-cert (PEM).
    #[arg(long, requires = "tls_cert")]
    tls_key: Option<PathBuf>,
    /// Require client certificates issued by these CAs (PEM).
    #[arg(long, requires = "tls_cert")]
    client_ca: Option<PathBuf>,
    /// Require `Authorization: Bearer <TOKEN>` on every request (visible in
    /// the process list; --token-file is not).
    #[arg(long, conflicts_with = "token_file")]
    token: Option<String>,
    /// Read the bearer token from this file (surrounding whitespace ignored).
    #[arg(long)]
    token_file: Option<PathBuf>,
    /// The longest a `Prefer: wait` request is held: `60s`, `500ms`, `2m`,
    /// or plain seconds.
    #[arg(long, default_value = "60s", value_parser = parse_duration)]
    max_wait: Duration,
    /// Log level (`debug` logs every request) or a full filter like
    /// RUST_LOG's, which it overrides.
    #[arg(long)]
    log_level: Option<String>,
}

fn parse_duration(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    let split = text.find(|c: char| !c.is_ascii_digit() && c != '.').unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let number: f64 = number.parse().map_err(|_| format!("`{text}` is not a duration like 60s or 500ms"))?;
    let scale = match unit.trim() {
        "" | "s" => 1.0,
        "ms" => 0.001,
        "m" => 60.0,
        "h" => 3600.0,
        other => return Err(format!("unknown unit `{other}` (use ms, s, m or h)")),
    };
    Duration::try_from_secs_f64(number * scale).map_err(|e| format!("`{text}`: {e}"))
}

/// A bare level (`debug`) applies to this program's own logs; at `debug`
/// hyper and h2 would log every frame. Anything else is a full filter.
fn log_directives(level: &str) -> String {
    if level.parse::<tracing::Level>().is_ok() {
        format!("info,controlplane_client={level},edgeplane_cp={level}")
    } else {
        level.to_owned()
    }
}

fn read(path: &Path, what: &str) -> anyhow::Result<Vec<u8>> {
    std::fs::read(path).with_context(|| format!("{what} {}", path.display()))
}

fn options(args: &Args) -> anyhow::Result<ServerOptions> {
    let tls = match (&args.tls_cert, &args.tls_key) {
        (Some(cert), Some(key)) => Some(ServerTls {
            cert_pem: read(cert, "--tls-cert")?,
            key_pem: read(key, "--tls-key")?,
            client_ca_pem: args.client_ca.as_deref().map(|ca| read(ca, "--client-ca")).transpose()?,
        }),
        _ => None,
    };
    let token = match (&args.token, &args.token_file) {
        (Some(token), _) => Some(token.clone()),
        (None, Some(file)) => {
            let text = String::from_utf8(read(file, "--token-file")?).context("--token-file is not UTF-8")?;
            Some(text.trim().to_owned())
        }
        (None, None) => None,
    };
    Ok(ServerOptions { dir: args.dir.clone(), listen: args.listen, tls, token, max_wait: args.max_wait })
}

fn main() -> ExitCode {
    let args = Args::parse();
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(runtime) => runtime,
        Err(error) => return fail(&error.into()),
    };
    match runtime.block_on(run(args)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => fail(&error),
    }
}

/// One line with the causes, not a backtrace: a wrong path on the command
/// line is the usual failure.
fn fail(error: &anyhow::Error) -> ExitCode {
    eprintln!("edgeplane-cp: {error:#}");
    ExitCode::FAILURE
}

async fn run(args: Args) -> anyhow::Result<()> {
    let filter = match &args.log_level {
        Some(level) => EnvFilter::try_new(log_directives(level)).with_context(|| format!("--log-level {level}"))?,
        None => EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info")),
    };
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).with_ansi(ansi).init();

    let server = reference::start(options(&args)?).await?;
    // Scripts and tests read the address from here (it matters with port 0).
    let mut stdout = std::io::stdout().lock();
    writeln!(stdout, "listening on {}", server.addr())?;
    stdout.flush()?;
    drop(stdout);

    terminated().await?;
    tracing::info!("shutting down");
    server.shutdown().await;
    Ok(())
}

#[cfg(unix)]
async fn terminated() -> anyhow::Result<()> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut terminate = signal(SignalKind::terminate()).context("SIGTERM handler")?;
    let mut interrupt = signal(SignalKind::interrupt()).context("SIGINT handler")?;
    tokio::select! {
        _ = terminate.recv() => {}
        _ = interrupt.recv() => {}
    }
    Ok(())
}

#[cfg(not(unix))]
async fn terminated() -> anyhow::Result<()> {
    tokio::signal::ctrl_c().await.context("Ctrl-C handler")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("60s"), Ok(Duration::from_secs(60)));
        assert_eq!(parse_duration("45"), Ok(Duration::from_secs(45)));
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert_eq!(parse_duration("1.5s"), Ok(Duration::from_millis(1500)));
        assert!(parse_duration("soon").is_err());
        assert!(parse_duration("5d").is_err());
        assert!(parse_duration("-1s").is_err());
    }

    #[test]
    fn command_line() {
        Args::try_parse_from(["edgeplane-cp", "--dir", "d", "--token", "a", "--token-file", "f"]).unwrap_err();
        Args::try_parse_from(["edgeplane-cp", "--dir", "d", "--tls-cert", "c"]).unwrap_err();
        Args::try_parse_from(["edgeplane-cp", "--dir", "d", "--client-ca", "c"]).unwrap_err();
        let args = Args::try_parse_from(["edgeplane-cp", "--dir", "d"]).unwrap();
        assert_eq!(args.listen, "127.0.0.1:6060".parse().unwrap());
        assert_eq!(args.max_wait, Duration::from_secs(60));
    }
}
