//! Loading a big mesh config: 5,000 services, 20,000 endpoints (the
//! generated config of `support/scale_config.rs`), stage by stage.
//!
//! ```text
//! cargo bench -p edgeplane --bench config_scale
//! cargo bench -p edgeplane --bench config_scale -- pipeline_json     # one benchmark
//! ```
//!
//! The budget (issue): parse + validate + compile ≤ 100 ms. `compile_first`
//! and `pipeline_*` use a fresh `Registry` and `Metrics` per iteration, as
//! `app::start` does; `compile_reload` compiles into the ones of an earlier
//! compile, as a reload does. Dropping what an iteration built is not timed.
//! Memory figures come from `examples/config_scale.rs`.

#[path = "support/scale_config.rs"]
mod scale_config;

use std::hint::black_box;
use std::sync::Arc;
use std::time::Duration;

use config_model::{Config, Format};
use criterion::{criterion_group, criterion_main, BatchSize, Criterion, SamplingMode};
use edgeplane::balance::hash64;
use edgeplane::metrics::Metrics;
use edgeplane::route::compile::compile;
use edgeplane::route::RouteTable;
use edgeplane::state::Registry;

fn parse(text: &str, format: Format) -> Config {
    config_model::from_str(text, format).expect("generated config parses")
}

/// The real sequence of `app::start`: hash, parse, validate, compile.
fn pipeline(text: &str, format: Format) -> (RouteTable, Registry, Metrics) {
    let hash = hash64(text.as_bytes());
    let config = parse(text, format);
    config_model::validate(&config).expect("generated config is valid");
    let (registry, metrics) = (Registry::default(), Metrics::new());
    let table = compile(Arc::new(config), hash, 1, &registry, &metrics).expect("generated config compiles");
    (table, registry, metrics)
}

fn config_scale(c: &mut Criterion) {
    let services = scale_config::SERVICES;
    let json = scale_config::json_text(services);
    let yaml = scale_config::yaml_text(services);
    let config = Arc::new(parse(&json, Format::Json));
    let (registry, metrics) = (Registry::default(), Metrics::new());
    drop(compile(config.clone(), 1, 1, &registry, &metrics).unwrap());

    let mut group = c.benchmark_group("config_scale_5000");
    group
        .sample_size(20)
        .sampling_mode(SamplingMode::Flat)
        .warm_up_time(Duration::from_secs(2))
        .measurement_time(Duration::from_secs(8));
    group.bench_function("hash", |b| b.iter(|| hash64(black_box(json.as_bytes()))));
    group.bench_function("parse_json", |b| b.iter_with_large_drop(|| parse(black_box(&json), Format::Json)));
    group.bench_function("parse_yaml", |b| b.iter_with_large_drop(|| parse(black_box(&yaml), Format::Yaml)));
    group.bench_function("validate", |b| b.iter(|| config_model::validate(black_box(&config))));
    group.bench_function("compile_first", |b| {
        b.iter_batched(
            || (Registry::default(), Metrics::new()),
            |(registry, metrics)| {
                let table = compile(black_box(config.clone()), 1, 1, &registry, &metrics).unwrap();
                (table, registry, metrics)
            },
            BatchSize::PerIteration,
        )
    });
    let mut generation = 1;
    group.bench_function("compile_reload", |b| {
        b.iter_with_large_drop(|| {
            generation += 1;
            compile(black_box(config.clone()), 1, generation, &registry, &metrics).unwrap()
        })
    });
    group.bench_function("pipeline_json", |b| b.iter_with_large_drop(|| pipeline(black_box(&json), Format::Json)));
    group.bench_function("pipeline_yaml", |b| b.iter_with_large_drop(|| pipeline(black_box(&yaml), Format::Yaml)));
    group.finish();
}

criterion_group!(benches, config_scale);
criterion_main!(benches);
