//! Time and memory of loading a big mesh config: hash → parse → validate →
//! compile, as `app::start` does it, for the generated config of
//! `benches/support/scale_config.rs` (default 5,000 services, 20,000
//! endpoints) in JSON and in YAML.
//!
//! ```text
//! cargo run --release -p edgeplane --example config_scale -- [--services 5000] [--rounds 10]
//! ```
//!
//! Time: every round loads the text into a fresh `Registry` and `Metrics` (a
//! first load, as at start); dropping the table afterwards is not timed. The
//! "compile (reload)" line compiles the same config again into the registry
//! and metrics of the previous round (a reload that finds every endpoint,
//! policy and metric series already there); it is not part of the total.
//!
//! Memory: measured in a fresh child process per format (the parent's heap
//! holds what earlier rounds freed): the text is generated, VmRSS read
//! (baseline), the peak reset (`5` → /proc/self/clear_refs), the pipeline
//! run once, VmHWM read: peak extra = VmHWM − baseline. Retained = VmRSS with
//! the table (and the registry and metrics it uses) kept alive − baseline;
//! also after `malloc_trim(0)`, which hands back heap that glibc keeps cached
//! after the parse's and validation's temporaries are freed.

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
        Format::Json => scale_config::json_text(services),
        Format::Yaml => scale_config::yaml_text(services),
    }
}

fn format_name(format: Format) -> &'static str {
    match format {
        Format::Json => "json",
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

fn load(text: &str, format: Format) -> Loaded {
    let hash = hash64(text.as_bytes());
    let config = parse(text, format);
    validate(&config);
    let (registry, metrics) = (Registry::default(), Metrics::new());
    let table = compile(Arc::new(config), hash, 1, &registry, &metrics).expect("generated config compiles");
    Loaded { table, registry, metrics }
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

/// Runs in the child: one load, memory figures on one line (KiB).
fn memory_child(services: usize, format: Format) {
    let text = text(services, format);
    // The generator's JSON value is gone; give its heap back so the baseline is the text.
    malloc_trim();
    let baseline = status_kib("VmRSS:");
    std::fs::write("/proc/self/clear_refs", "5").expect("reset VmHWM (needs /proc/self/clear_refs)");
    let reset = status_kib("VmHWM:");
    let loaded = load(&text, format);
    let peak = status_kib("VmHWM:");
    let retained = status_kib("VmRSS:");
    let trimmed = if malloc_trim() { status_kib("VmRSS:") } else { retained };
    let endpoints: usize = loaded.table.clusters.iter().map(|c| c.endpoints.len()).sum();
    println!(
        "memory baseline={baseline} reset={reset} peak={peak} retained={retained} trimmed={trimmed} text={} \
         endpoints={endpoints}",
        text.len() / 1024
    );
    drop(loaded);
}

struct Memory {
    baseline: u64,
    peak: u64,
    retained: u64,
    trimmed: u64,
}

fn memory(services: usize, format: Format) -> Memory {
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
    Memory { baseline: field("baseline"), peak: field("peak"), retained: field("retained"), trimmed: field("trimmed") }
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
    // One untimed load warms the allocator and the page cache of the binary.
    let mut previous = load(&text, format);
    for _ in 0..rounds {
        let start = Instant::now();
        let h = hash64(text.as_bytes());
        let hashed = Instant::now();
        let config = parse(&text, format);
        let parsed = Instant::now();
        validate(&config);
        let validated = Instant::now();
        let (registry, metrics) = (Registry::default(), Metrics::new());
        let table = compile(Arc::new(config), h, 1, &registry, &metrics).expect("compiles");
        let compiled = Instant::now();
        hash.0.push(hashed - start);
        parse_t.0.push(parsed - hashed);
        validate_t.0.push(validated - parsed);
        compile_t.0.push(compiled - validated);
        total.0.push(compiled - start);

        // A reload of the same config into the previous round's registry.
        let config = previous.table.config.clone();
        let again = Instant::now();
        let reloaded = compile(config, h, 2, &previous.registry, &previous.metrics).expect("compiles");
        reload.0.push(again.elapsed());
        drop(reloaded);
        previous = Loaded { table, registry, metrics };
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
    println!("  {:<18} {:>11} {:>11}   ({rounds} rounds)", "stage", "median", "max");
    for (name, samples) in [
        ("hash", &hash),
        ("parse", &parse_t),
        ("validate", &validate_t),
        ("compile", &compile_t),
        ("total", &total),
        ("compile (reload)", &reload),
    ] {
        println!("  {name:<18} {} {}", ms(samples.median()), ms(samples.max()));
    }
    drop(previous);

    let m = memory(services, format);
    println!("  memory (fresh process, one load):");
    println!("    baseline RSS (text generated)       {}", mib(m.baseline));
    println!("    peak extra (VmHWM − baseline)        {}", mib(m.peak.saturating_sub(m.baseline)));
    println!("    retained (RSS after − baseline)      {}", mib(m.retained.saturating_sub(m.baseline)));
    println!("    retained after malloc_trim(0)        {}", mib(m.trimmed.saturating_sub(m.baseline)));
}

fn main() {
    let args = args();
    if let Some(format) = args.memory_child {
        memory_child(args.services, format);
        return;
    }
    println!(
        "config_scale: {} services, {} rounds, {} CPUs",
        args.services,
        args.rounds,
        std::thread::available_parallelism().map_or(0, |n| n.get())
    );
    for format in [Format::Json, Format::Yaml] {
        run_format(args.services, args.rounds, format);
    }
}
