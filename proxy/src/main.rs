//! The `edgeplane` command.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use edgeplane::logging::{self, LogFormat};

mod admin_call;

#[derive(Parser)]
#[command(
    name = "edgeplane",
    version,
    about = "A Rust sidecar data plane and edge gateway",
    override_usage = "edgeplane [OPTIONS] <COMMAND>\n       edgeplane [OPTIONS] [--admin-port <PORT>] <REPO_URL>"
)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    /// Run as a Pipy sidecar, as osm-edge/FSM start one: pull the config from
    /// this Pipy repo (a URL ending in `/`; `config.json.gz` or `config.json`
    /// in it), polling every 5 s.
    #[arg(value_name = "REPO_URL")]
    repo: Option<String>,
    /// With a repo URL: serve the admin API (`/ready`, `/metrics`, `/config`)
    /// on 127.0.0.1:<PORT> (default 6060, as Pipy).
    #[arg(long, value_name = "PORT", requires = "repo")]
    admin_port: Option<u16>,
    /// Log filter: a level (`info`; Pipy's `debug`, `info`, `warn`, `error`)
    /// or tracing directives (`edgeplane=debug,hyper=warn`).
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
        #[arg(long, short, env = "EDGEPLANE_CONFIG", required_unless_present_any = ["control_plane", "bootstrap"], conflicts_with_all = ["control_plane", "bootstrap"])]
        config: Option<PathBuf>,
        /// Pull the config from this control-plane URL instead (a file, or a
        /// Pipy-repo codebase when it ends in `/`); overrides the bootstrap
        /// file's `control_plane.url`.
        #[arg(long, env = "EDGEPLANE_CONTROL_PLANE")]
        control_plane: Option<String>,
        /// Bootstrap file: the control plane's URL, TLS, token, polling and
        /// persistence settings (see docs/configuration.md "Bootstrap").
        #[arg(long, env = "EDGEPLANE_BOOTSTRAP")]
        bootstrap: Option<PathBuf>,
        /// Where the last config from the control plane is kept; overrides
        /// the bootstrap file's `control_plane.persist`.
        #[arg(long, env = "EDGEPLANE_PERSIST")]
        persist: Option<PathBuf>,
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
        #[arg(
            long,
            short,
            env = "EDGEPLANE_CONFIG",
            required_unless_present = "bootstrap",
            conflicts_with = "bootstrap"
        )]
        config: Option<PathBuf>,
        /// Check a bootstrap file instead.
        #[arg(long)]
        bootstrap: Option<PathBuf>,
    },
    /// Print the JSON Schema of the config.
    Schema,
    /// Wait until a running proxy's `/ready` answers 200 (exit 0), or fail
    /// after the timeout (exit 1). For a Kubernetes postStart hook that holds
    /// the application container until the sidecar is ready.
    WaitReady {
        /// The proxy's admin address.
        #[arg(long, env = "EDGEPLANE_ADMIN", default_value = "127.0.0.1:15000")]
        admin: SocketAddr,
        /// How long to wait (`30s`, `2m`).
        #[arg(long, default_value = "60s", value_parser = config_model::parse_duration)]
        timeout: std::time::Duration,
    },
    /// Ask a running proxy to exit now (`POST /quitquitquit`), e.g. when a
    /// Job's work is done. Exit 0 if it accepted.
    Quit {
        /// The proxy's admin address (loopback: the admin server refuses others).
        #[arg(long, env = "EDGEPLANE_ADMIN", default_value = "127.0.0.1:15000")]
        admin: SocketAddr,
    },
}

/// Pipy's default admin port.
const PIPY_ADMIN_PORT: u16 = 6060;

fn main() -> ExitCode {
    let cli = Cli::parse();
    // Not clap's `args_conflicts_with_subcommands`: that would refuse a
    // global option before the subcommand (`edgeplane --log-level=debug run`).
    if cli.repo.is_some() && cli.command.is_some() {
        <Cli as clap::CommandFactory>::command()
            .error(clap::error::ErrorKind::ArgumentConflict, "a repo URL cannot be used with a subcommand")
            .exit();
    }
    let Some(command) = cli.command else {
        let Some(repo) = cli.repo else {
            let mut help = <Cli as clap::CommandFactory>::command();
            let _ = help.print_help();
            return ExitCode::from(2);
        };
        let admin = SocketAddr::from(([127, 0, 0, 1], cli.admin_port.unwrap_or(PIPY_ADMIN_PORT)));
        let source = match pipy_source(repo) {
            Ok(source) => source,
            Err(errors) => return report_errors("edgeplane: invalid repo URL:", &errors),
        };
        let osm = match edgeplane::osm::OsmPorts::from_env(|name| std::env::var(name).ok()) {
            Ok(ports) => ports,
            Err(error) => {
                eprintln!("edgeplane: {error}");
                return ExitCode::FAILURE;
            }
        };
        let options = edgeplane::Options {
            source,
            workers: default_workers(None),
            admin: Some(admin),
            watch_config: false,
            handle_signals: true,
            runtime: edgeplane::RuntimeModel::PerCore,
            osm: Some(osm),
        };
        return run(&cli.log_level, cli.log_format, options);
    };
    match command {
        Command::Schema => {
            println!("{:#}", config_model::json_schema());
            ExitCode::SUCCESS
        }
        Command::WaitReady { admin, timeout } => match admin_call::wait_ready(admin, timeout) {
            Ok(waited) => {
                println!("edgeplane at {admin} is ready (waited {} ms)", waited.as_millis());
                ExitCode::SUCCESS
            }
            Err(error) => {
                eprintln!("edgeplane wait-ready: {error}");
                ExitCode::FAILURE
            }
        },
        Command::Quit { admin } => match admin_call::call(admin, "POST", "/quitquitquit") {
            Ok(200) => ExitCode::SUCCESS,
            Ok(status) => {
                eprintln!("edgeplane quit: {admin} answered {status}");
                ExitCode::FAILURE
            }
            Err(error) => {
                eprintln!("edgeplane quit: {error}");
                ExitCode::FAILURE
            }
        },
        Command::Check { config, bootstrap } => {
            let (path, result) = match (config, bootstrap) {
                (Some(config), _) => {
                    let result = config_model::load_and_validate(&config).map(drop);
                    (config, result)
                }
                (None, Some(bootstrap)) => {
                    let result = config_model::load_bootstrap(&bootstrap).map(drop);
                    (bootstrap, result)
                }
                (None, None) => unreachable!("clap requires one"),
            };
            match result {
                Ok(()) => {
                    println!("{}: ok", path.display());
                    ExitCode::SUCCESS
                }
                Err(errors) => report_errors(format!("{}: {} error(s)", path.display(), errors.len()), &errors),
            }
        }
        Command::Run { config, control_plane, bootstrap, persist, workers, admin, no_watch, shared_runtime } => {
            let (source, admin) = match config_source(config, control_plane, bootstrap, persist, admin) {
                Ok(chosen) => chosen,
                Err(errors) => return report_errors("edgeplane: invalid bootstrap:", &errors),
            };
            let options = edgeplane::Options {
                source,
                workers: default_workers(workers),
                admin,
                watch_config: !no_watch,
                handle_signals: true,
                runtime: if shared_runtime {
                    edgeplane::RuntimeModel::Shared
                } else {
                    edgeplane::RuntimeModel::PerCore
                },
                osm: None,
            };
            run(&cli.log_level, cli.log_format, options)
        }
    }
}

/// One worker per CPU unless told.
fn default_workers(workers: Option<usize>) -> usize {
    workers.unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get())).max(1)
}

/// Runs the proxy until it exits.
fn run(log_level: &str, log_format: LogFormat, options: edgeplane::Options) -> ExitCode {
    let _log_guard = match logging::init(pipy_level(log_level), log_format) {
        Ok(guard) => guard,
        Err(error) => {
            eprintln!("edgeplane: {error}");
            return ExitCode::FAILURE;
        }
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

/// `warning` (a target name to tracing, which would silence everything
/// else) is `warn`; every other filter is tracing's.
fn pipy_level(level: &str) -> &str {
    if level.eq_ignore_ascii_case("warning") {
        "warn"
    } else {
        level
    }
}

/// Prints `heading` and the errors under it; the exit code of a failure.
fn report_errors(heading: impl std::fmt::Display, errors: &[impl std::fmt::Display]) -> ExitCode {
    eprintln!("{heading}");
    for error in errors {
        eprintln!("  {error}");
    }
    ExitCode::FAILURE
}

/// The control plane of the Pipy form: the repo, polled with HEAD every 5 s
/// as Pipy does, nothing persisted (a sidecar's filesystem is its pod's),
/// and a status report POSTed to the codebase URL after every poll, which
/// is how a Pipy repo lists its instances.
fn pipy_source(url: String) -> Result<edgeplane::ConfigSource, Vec<String>> {
    let mut control_plane = config_model::ControlPlane::new(url);
    control_plane.interval = config_model::Duration::from("5s");
    control_plane.persist = None;
    control_plane.report_status = true;
    control_plane.report_every_poll = true;
    let bootstrap = config_model::Bootstrap { control_plane, admin: Default::default() };
    config_model::validate_bootstrap(&bootstrap)
        .map_err(|errors| errors.iter().map(ToString::to_string).collect::<Vec<_>>())?;
    let token = std::env::var("EDGEPLANE_CONTROL_PLANE_TOKEN").ok().filter(|token| !token.is_empty());
    Ok(edgeplane::ConfigSource::ControlPlane { settings: Box::new(bootstrap.control_plane), token })
}

/// The config file, or the control plane from the bootstrap file and the
/// flags; with a control plane, the admin address is the bootstrap's
/// unless `--admin` says otherwise.
fn config_source(
    config: Option<PathBuf>,
    url: Option<String>,
    bootstrap: Option<PathBuf>,
    persist: Option<PathBuf>,
    admin: Option<SocketAddr>,
) -> Result<(edgeplane::ConfigSource, Option<SocketAddr>), Vec<String>> {
    if let Some(config) = config {
        return Ok((edgeplane::ConfigSource::File(config), admin));
    }
    let mut chosen = match &bootstrap {
        Some(path) => {
            let text =
                std::fs::read_to_string(path).map_err(|e| vec![format!("cannot read {}: {e}", path.display())])?;
            config_model::bootstrap_from_str(&text, config_model::Format::from_path(path))
                .map_err(|e| vec![format!("{}: {e}", path.display())])?
        }
        None => config_model::Bootstrap {
            control_plane: config_model::ControlPlane::new(String::new()),
            admin: Default::default(),
        },
    };
    if let Some(url) = url {
        chosen.control_plane.url = url;
    }
    if let Some(persist) = persist {
        chosen.control_plane.persist = Some(persist.display().to_string());
    }
    config_model::validate_bootstrap(&chosen)
        .map_err(|errors| errors.iter().map(ToString::to_string).collect::<Vec<_>>())?;
    let admin = match admin {
        Some(admin) => admin,
        None => chosen.admin.bind.parse().map_err(|message| vec![format!("admin.bind: {message}")])?,
    };
    let token = std::env::var("EDGEPLANE_CONTROL_PLANE_TOKEN").ok().filter(|token| !token.is_empty());
    let source = edgeplane::ConfigSource::ControlPlane { settings: Box::new(chosen.control_plane), token };
    Ok((source, Some(admin)))
}
