//! The `edgeplane` command.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use edgeplane::logging::{self, LogFormat};

#[derive(Parser)]
#[command(name = "edgeplane", version, about = "A Rust sidecar data plane and edge gateway")]
struct Cli {
    #[command(subcommand)]
    command: Command,
    /// Log filter: a level (`info`) or tracing directives (`edgeplane=debug,hyper=warn`).
    #[arg(long, global = true, env = "EDGEPLANE_LOG_LEVEL", default_value = "info")]
    log_level: String,
    /// Log line format.
    #[arg(long, global = true, env = "EDGEPLANE_LOG_FORMAT", value_enum, default_value = "text")]
    log_format: LogFormat,
}

#[derive(Subcommand)]
enum Command {
    /// Run the proxy.
    Run {
        /// Config file (YAML, or JSON when it ends in .json).
        #[arg(long, short, env = "EDGEPLANE_CONFIG")]
        config: PathBuf,
        /// Worker threads; default: the CPUs this process may use.
        #[arg(long, env = "EDGEPLANE_WORKERS")]
        workers: Option<usize>,
        /// Admin server address, overriding the config's `admin.bind`.
        #[arg(long, env = "EDGEPLANE_ADMIN")]
        admin: Option<SocketAddr>,
        /// Do not reload when the config file changes (SIGHUP still reloads).
        #[arg(long, env = "EDGEPLANE_NO_WATCH")]
        no_watch: bool,
        /// Run the workers on one work-stealing runtime instead of one runtime
        /// per core. For benchmarking the alternative only.
        #[arg(long, env = "EDGEPLANE_SHARED_RUNTIME", hide = true)]
        shared_runtime: bool,
    },
    /// Validate a config and print every problem found (exit 1 if any).
    Check {
        #[arg(long, short, env = "EDGEPLANE_CONFIG")]
        config: PathBuf,
    },
    /// Print the JSON Schema of the config.
    Schema,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Schema => {
            println!("{:#}", config_model::json_schema());
            ExitCode::SUCCESS
        }
        Command::Check { config } => match config_model::load_and_validate(&config) {
            Ok(_) => {
                println!("{}: ok", config.display());
                ExitCode::SUCCESS
            }
            Err(errors) => {
                eprintln!("{}: {} error(s)", config.display(), errors.len());
                for error in errors {
                    eprintln!("  {error}");
                }
                ExitCode::FAILURE
            }
        },
        Command::Run { config, workers, admin, no_watch, shared_runtime } => {
            let _log_guard = match logging::init(&cli.log_level, cli.log_format) {
                Ok(guard) => guard,
                Err(error) => {
                    eprintln!("edgeplane: {error}");
                    return ExitCode::FAILURE;
                }
            };
            let workers = workers.unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get())).max(1);
            let options = edgeplane::Options {
                config_path: config,
                workers,
                admin,
                watch_config: !no_watch,
                handle_signals: true,
                runtime: if shared_runtime {
                    edgeplane::RuntimeModel::Shared
                } else {
                    edgeplane::RuntimeModel::PerCore
                },
            };
            match edgeplane::start(options) {
                Ok(proxy) => {
                    proxy.join();
                    ExitCode::SUCCESS
                }
                Err(error) => {
                    tracing::error!("{error}");
                    eprintln!("edgeplane: {error}");
                    ExitCode::FAILURE
                }
            }
        }
    }
}
