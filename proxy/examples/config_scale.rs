//! Time and memory of loading a big mesh config: hash → parse → validate →
//! compile, as `app::start` does it, for the generated config of
//! `benches/support/scale_config.rs` (default 5,000 services, 20,000
//! endpoints) in JSON and in YAML.
//!
//! ```text
//! cargo run --release -p edgeplane --example config_scale -- [--services 5000] [--rounds 10]
//! ```
//!
//! Time, in process: every round loads the text into a fresh `Registry` and
//! `Metrics` (a first load, as at start) in a process that has loaded it
//! before, so the allocator mostly reuses memory freed by earlier rounds;
//! dropping the table afterwards is not timed. The "compile (reload)" line
//! compiles the same config again into the registry and metrics of the
//! previous round (a reload that finds every endpoint, policy and metric
//! series already there); it is not part of the total.
//!
//! Time, fresh process: the same load as the first thing a new process does
//! after generating the text (every page of the table faulted in for the
//! first time, as at start), in up to 5 child processes per format.
//!
//! Memory: measured in those children (the parent's heap holds what earlier
//! rounds freed): the text is generated, VmRSS read (baseline), the peak
//! reset (`5` → /proc/self/clear_refs), the pipeline run once, VmHWM read:
//! peak extra = VmHWM − baseline. Retained = VmRSS with the table (and the
//! registry and metrics it uses) kept alive − baseline; also after
//! `malloc_trim(0)`, which hands back heap that glibc keeps cached after the
//! parse's and validation's temporaries are freed. The largest figure of the
//! children is shown.

#[path = "../benches/support/scale_config.rs"]
mod scale_config;

use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use config_model::{Config, Format};
use edgeplane::balance::hash64;
use edgeplane::metrics::Metrics;
use edgeplane::route::compile::compile;
use edgeplane::route::RouteTable;
use edgeplane::state::Registry;

struct Args {
    services: usize,
    rounds: usize,
    /// Internal: run the memory measurement of one format and print it.
    memory_child: Option<Format>,
}

fn args() -> Args {
    let mut args = Args { services: scale_config::SERVICES, rounds: 10, memory_child: None };
    let mut it = std::env::args().skip(1);
    while let Some(arg) = it.next() {
        let mut value = || it.next().unwrap_or_else(|| panic!("{arg} needs a value"));
        match arg.as_str() {
            "--services" => args.services = value().parse().expect("--services N"),
            "--rounds" => args.rounds = value().parse().expect("--rounds N"),
            "--memory-child" => {
                args.memory_child = Some(match value().as_str() {
                    "json" => Format::Json,
                    "yaml" => Format::Yaml,
                    other => panic!("unknown format {other}"),
                })
            }
            "--bench" => {} // `cargo bench`-style flags are ignored
            other => panic!("unknown argument {other}; use --services N --rounds N"),
        }
    }
    assert!(args.services >= 1 && args.rounds >= 1);
    args
}

fn text(services: usize, format: Format) -> String {
    match format {
        // The generated configs are edgeplane's own, never a PipyConf.
        Format::Json | Format::PipyConf => scale_config::json_text(services),
        Format::Yaml => scale_config::yaml_text(services),
    }
}

fn format_name(format: Format) -> &'static str {
    match format {
        Format::Json => "json",
        Format::PipyConf => "pipyconf",
        Format::Yaml => "yaml",
    }
}

/// The real sequence (`app::start`): hash, parse, validate, compile.
struct Loaded {
    table: RouteTable,
    registry: Registry,
    metrics: Metrics,
}

fn parse(text: &str, format: Format) -> Config {
    config_model::from_str(text, format).expect("generated config parses")
}

fn validate(config: &Config) {
    if let Err(errors) = config_model::validate(config) {
        panic!("generated config is invalid: {} errors, first {}", errors.len(), errors[0]);
    }
}

/// Wall time of each stage of one load: hash, parse, validate, compile.
type Stages = [Duration; 4];

/// One load into a fresh `Registry` and `Metrics`, timed stage by stage.
fn load(text: &str, format: Format) -> (Loaded, Stages) {
    let start = Instant::now();
    let hash = hash64(text.as_bytes());
    let hashed = Instant::now();
    let config = parse(text, format);
    let parsed = Instant::now();
    validate(&config);
    let validated = Instant::now();
    let (registry, metrics) = (Registry::default(), Metrics::new());
    let table = compile(Arc::new(config), hash, 1, &registry, &metrics).expect("generated config compiles");
    let compiled = Instant::now();
    (Loaded { table, registry, metrics }, [hashed - start, parsed - hashed, validated - parsed, compiled - validated])
}

fn status_kib(field: &str) -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").expect("/proc/self/status");
    let line = status.lines().find(|line| line.starts_with(field)).unwrap_or_else(|| panic!("{field} in status"));
    line[field.len()..].trim().trim_end_matches("kB").trim().parse().expect("a kB figure")
}

#[cfg(all(target_os = "linux", target_env = "gnu"))]
fn malloc_trim() -> bool {
    extern "C" {
        fn malloc_trim(pad: usize) -> std::ffi::c_int;
    }
    // SAFETY: glibc's malloc_trim takes no pointers and may be called at any time.
    unsafe { malloc_trim(0) };
    true
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn malloc_trim() -> bool {
    false
}

/// Runs in the child: one load in a fresh process, its memory (KiB) and stage
/// times (µs) on one line.
fn memory_child(services: usize, format: Format) {
    let text = text(services, format);
    // The generator's JSON value is gone; give its heap back so the baseline is the text.
    malloc_trim();
    let baseline = status_kib("VmRSS:");
    std::fs::write("/proc/self/clear_refs", "5").expect("reset VmHWM (needs /proc/self/clear_refs)");
    let reset = status_kib("VmHWM:");
    let (loaded, stages) = load(&text, format);
    let peak = status_kib("VmHWM:");
    let retained = status_kib("VmRSS:");
    let trimmed = if malloc_trim() { status_kib("VmRSS:") } else { retained };
    let endpoints: usize = loaded.table.clusters.iter().map(|c| c.endpoints.len()).sum();
    let us = |d: Duration| d.as_micros();
    println!(
        "memory baseline={baseline} reset={reset} peak={peak} retained={retained} trimmed={trimmed} text={} \
         endpoints={endpoints} hash={} parse={} validate={} compile={}",
        text.len() / 1024,
        us(stages[0]),
        us(stages[1]),
        us(stages[2]),
        us(stages[3]),
    );
    drop(loaded);
}

/// What one fresh process measured.
struct Cold {
    baseline: u64,
    peak: u64,
    retained: u64,
    trimmed: u64,
    stages: Stages,
}

fn cold(services: usize, format: Format) -> Cold {
    let exe = std::env::current_exe().expect("current exe");
    let output = Command::new(exe)
        .args(["--services", &services.to_string(), "--memory-child", format_name(format)])
        .output()
        .expect("run the memory child");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "memory child failed: {stdout}{}", String::from_utf8_lossy(&output.stderr));
    let line = stdout.lines().find(|l| l.starts_with("memory ")).expect("memory line");
    let field = |name: &str| -> u64 {
        line.split_whitespace()
            .find_map(|kv| kv.strip_prefix(name).and_then(|v| v.strip_prefix('=')))
            .unwrap_or_else(|| panic!("{name} in {line}"))
            .parse()
            .expect("a number")
    };
    Cold {
        baseline: field("baseline"),
        peak: field("peak"),
        retained: field("retained"),
        trimmed: field("trimmed"),
        stages: ["hash", "parse", "validate", "compile"].map(|stage| Duration::from_micros(field(stage))),
    }
}

#[derive(Default)]
struct Samples(Vec<Duration>);

impl Samples {
    fn median(&self) -> Duration {
        let mut sorted = self.0.clone();
        sorted.sort();
        let n = sorted.len();
        if n % 2 == 1 {
            sorted[n / 2]
        } else {
            (sorted[n / 2 - 1] + sorted[n / 2]) / 2
        }
    }
    fn max(&self) -> Duration {
        self.0.iter().max().copied().unwrap_or_default()
    }
}

fn ms(d: Duration) -> String {
    format!("{:8.2} ms", d.as_secs_f64() * 1e3)
}

fn mib(kib: u64) -> String {
    format!("{:6.1} MiB", kib as f64 / 1024.0)
}

fn run_format(services: usize, rounds: usize, format: Format) {
    let text = text(services, format);
    let (mut hash, mut parse_t, mut validate_t, mut compile_t, mut total, mut reload) = (
        Samples::default(),
        Samples::default(),
        Samples::default(),
        Samples::default(),
        Samples::default(),
        Samples::default(),
    );
    let record = |stages: Stages, samples: [&mut Samples; 5]| {
        let [hash, parse, validate, compile, total] = samples;
        hash.0.push(stages[0]);
        parse.0.push(stages[1]);
        validate.0.push(stages[2]);
        compile.0.push(stages[3]);
        total.0.push(stages.iter().sum());
    };
    // One untimed load warms the allocator and the page cache of the binary.
    let (mut previous, _) = load(&text, format);
    for _ in 0..rounds {
        let (loaded, stages) = load(&text, format);
        record(stages, [&mut hash, &mut parse_t, &mut validate_t, &mut compile_t, &mut total]);

        // A reload of the same config into the previous round's registry.
        let config = previous.table.config.clone();
        let hash = previous.table.config_hash;
        let again = Instant::now();
        let reloaded = compile(config, hash, 2, &previous.registry, &previous.metrics).expect("compiles");
        reload.0.push(again.elapsed());
        drop(reloaded);
        previous = loaded;
    }

    let table = &previous.table;
    let endpoints: usize = table.clusters.iter().map(|c| c.endpoints.len()).sum();
    let listeners: Vec<_> = table.listeners.iter().flatten().collect();
    let routes: usize = listeners.iter().map(|l| l.routes.len()).sum();
    println!(
        "\n{} ({} bytes, {:.2} MiB): {} services, {} clusters, {} endpoints, {} listeners, {} routes",
        format_name(format).to_uppercase(),
        text.len(),
        text.len() as f64 / (1024.0 * 1024.0),
        services,
        table.clusters.len(),
        endpoints,
        listeners.len(),
        routes
    );
    drop(previous);

    // The first load of a process: fresh memory (every page faulted in), cold caches.
    let colds: Vec<Cold> = (0..rounds.min(COLD_RUNS)).map(|_| cold(services, format)).collect();
    let [mut c_hash, mut c_parse, mut c_validate, mut c_compile, mut c_total] = Default::default();
    for c in &colds {
        record(c.stages, [&mut c_hash, &mut c_parse, &mut c_validate, &mut c_compile, &mut c_total]);
    }

    println!(
        "  {:<18} {:>11} {:>11}   {:>11} {:>11}",
        "",
        "in process",
        format!("({rounds} rounds)"),
        "fresh proc",
        format!("({} runs)", colds.len())
    );
    println!("  {:<18} {:>11} {:>11}   {:>11} {:>11}", "stage", "median", "max", "median", "max");
    for (name, warm, cold) in [
        ("hash", &hash, &c_hash),
        ("parse", &parse_t, &c_parse),
        ("validate", &validate_t, &c_validate),
        ("compile", &compile_t, &c_compile),
        ("total", &total, &c_total),
    ] {
        println!("  {name:<18} {} {}   {} {}", ms(warm.median()), ms(warm.max()), ms(cold.median()), ms(cold.max()));
    }
    println!("  {:<18} {} {}", "compile (reload)", ms(reload.median()), ms(reload.max()));

    // Memory: the largest figure of the fresh processes.
    let most = |f: fn(&Cold) -> u64| colds.iter().map(f).max().unwrap_or(0);
    println!("  memory (fresh process, one load; the largest of {} runs):", colds.len());
    println!("    baseline RSS (text generated)        {}", mib(most(|c| c.baseline)));
    println!("    peak extra (VmHWM − baseline)        {}", mib(most(|c| c.peak.saturating_sub(c.baseline))));
    println!("    retained (RSS after − baseline)      {}", mib(most(|c| c.retained.saturating_sub(c.baseline))));
    println!("    retained after malloc_trim(0)        {}", mib(most(|c| c.trimmed.saturating_sub(c.baseline))));
}

/// Fresh processes per format (each generates the text again).
const COLD_RUNS: usize = 5;

fn main() {
    let args = args();
    if let Some(format) = args.memory_child {
        memory_child(args.services, format);
        return;
    }
    // Wall times on a busy machine are not the proxy's: say how busy it was.
    let load = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    println!(
        "config_scale: {} services, {} rounds, {} CPUs, load average {}",
        args.services,
        args.rounds,
        std::thread::available_parallelism().map_or(0, |n| n.get()),
        load.split_whitespace().take(3).collect::<Vec<_>>().join(" ")
    );
    for format in [Format::Json, Format::Yaml] {
        run_format(args.services, args.rounds, format);
    }
}
