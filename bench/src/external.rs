//! Driving wrk and h2load, to cross-check the built-in load generator.

use std::net::SocketAddr;
use std::process::Command;
use std::time::Duration;

use anyhow::{bail, Context};

use crate::model::Latency;
use crate::scenario::Tool;

/// What an external tool reported for one run.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ToolRun {
    pub requests_per_second: f64,
    pub completed: u64,
    pub errors: u64,
    pub latency: Latency,
}

pub fn installed(tool: Tool) -> bool {
    crate::peers::find_program(tool.program()).is_some()
}

/// Runs the tool against `target` for `duration` (the caller's thread
/// affinity, i.e. the load CPUs, is inherited).
pub fn run(
    tool: Tool,
    target: SocketAddr,
    connections: usize,
    streams: usize,
    threads: usize,
    duration: Duration,
) -> anyhow::Result<ToolRun> {
    let seconds = duration.as_secs_f64().ceil().max(1.0) as u64;
    let url = format!("http://{target}/");
    let output = match tool {
        Tool::Wrk => Command::new(tool.program())
            .args(["-t", &threads.to_string(), "-c", &connections.max(threads).to_string()])
            .args(["-d", &format!("{seconds}s"), "--latency", &url])
            .output(),
        Tool::H2load => Command::new(tool.program())
            .args(["-t", &threads.to_string(), "-c", &connections.max(threads).to_string()])
            .args(["-m", &streams.to_string(), "-D", &seconds.to_string(), &url])
            .output(),
    }
    .with_context(|| format!("running {}", tool.program()))?;
    let text = String::from_utf8_lossy(&output.stdout);
    if !output.status.success() {
        bail!("{} failed: {}", tool.program(), String::from_utf8_lossy(&output.stderr).trim());
    }
    match tool {
        Tool::Wrk => parse_wrk(&text),
        Tool::H2load => parse_h2load(&text),
    }
}

/// wrk's `--latency` output.
pub fn parse_wrk(text: &str) -> anyhow::Result<ToolRun> {
    let mut run = ToolRun::default();
    for line in text.lines().map(str::trim) {
        let words: Vec<&str> = line.split_whitespace().collect();
        match words.as_slice() {
            ["Requests/sec:", rate] => run.requests_per_second = rate.parse()?,
            [count, "requests", "in", ..] => run.completed = count.parse()?,
            ["50%", value] => run.latency.p50 = micros(value)?,
            ["90%", value] => run.latency.p90 = micros(value)?,
            ["99%", value] => run.latency.p99 = micros(value)?,
            ["Latency", mean, _stdev, max, ..] => {
                run.latency.mean = micros(mean)? as f64;
                run.latency.max = micros(max)?;
            }
            ["Non-2xx", "or", "3xx", "responses:", count] => run.errors += count.parse::<u64>()?,
            ["Socket", "errors:", rest @ ..] => {
                run.errors += rest.iter().filter_map(|w| w.trim_end_matches(',').parse::<u64>().ok()).sum::<u64>();
            }
            _ => {}
        }
    }
    if run.requests_per_second == 0.0 {
        bail!("no Requests/sec line in wrk's output");
    }
    run.completed = run.completed.saturating_sub(run.errors);
    Ok(run)
}

/// h2load's summary. It gives min/max/mean per request, no percentiles.
pub fn parse_h2load(text: &str) -> anyhow::Result<ToolRun> {
    let mut run = ToolRun::default();
    for line in text.lines().map(str::trim) {
        let words: Vec<&str> = line.split_whitespace().collect();
        match words.as_slice() {
            ["finished", "in", _, rate, "req/s,", ..] => run.requests_per_second = rate.parse()?,
            ["requests:", _total, "total,", _, "started,", _, "done,", succeeded, "succeeded,", failed, "failed,", errored, "errored,", timeout, "timeout"] =>
            {
                run.completed = succeeded.parse()?;
                run.errors = failed.parse::<u64>()? + errored.parse::<u64>()? + timeout.parse::<u64>()?;
            }
            ["time", "for", "request:", _min, max, mean, ..] => {
                run.latency.max = micros(max)?;
                run.latency.mean = micros(mean)? as f64;
            }
            _ => {}
        }
    }
    if run.requests_per_second == 0.0 {
        bail!("no 'finished in' line in h2load's output");
    }
    Ok(run)
}

/// `951.00us`, `1.04ms`, `2.5s` → microseconds.
fn micros(text: &str) -> anyhow::Result<u64> {
    let (number, scale) = if let Some(n) = text.strip_suffix("us") {
        (n, 1.0)
    } else if let Some(n) = text.strip_suffix("ms") {
        (n, 1e3)
    } else if let Some(n) = text.strip_suffix('s') {
        (n, 1e6)
    } else {
        bail!("not a duration: {text:?}");
    };
    Ok((number.parse::<f64>().with_context(|| format!("not a duration: {text:?}"))? * scale).round() as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    const WRK: &str = "Running 3s test @ http://127.0.0.1:8082/
  1 threads and 64 connections
  Thread Stats   Avg      Stdev     Max   +/- Stdev
    Latency     1.02ms  250.12us   9.87ms   90.00%
    Req/Sec    62.11k     3.21k   66.00k    80.00%
  Latency Distribution
     50%  951.00us
     75%    1.04ms
     90%    1.13ms
     99%    1.38ms
  186330 requests in 3.00s, 16.35MB read
  Non-2xx or 3xx responses: 30
Requests/sec:  62103.52
Transfer/sec:      5.45MB
";

    const H2LOAD: &str = "starting benchmark...
finished in 3.00s, 31004.33 req/s, 1.47MB/s
requests: 93013 total, 93013 started, 93013 done, 93010 succeeded, 3 failed, 0 errored, 0 timeout
status codes: 93010 2xx, 0 3xx, 0 4xx, 3 5xx
                     min         max         mean         sd        +/- sd
time for request:     1.05ms     23.91ms     16.44ms      2.01ms    84.26%
";

    #[test]
    fn parses_wrk() {
        let run = parse_wrk(WRK).unwrap();
        assert_eq!(run.requests_per_second, 62103.52);
        assert_eq!(run.errors, 30);
        assert_eq!(run.completed, 186_300);
        assert_eq!((run.latency.p50, run.latency.p90, run.latency.p99), (951, 1130, 1380));
        assert_eq!(run.latency.max, 9870);
        assert!(parse_wrk("garbage").is_err());
    }

    #[test]
    fn parses_h2load() {
        let run = parse_h2load(H2LOAD).unwrap();
        assert_eq!(run.requests_per_second, 31004.33);
        assert_eq!((run.completed, run.errors), (93_010, 3));
        assert_eq!(run.latency.max, 23_910);
        assert_eq!(run.latency.mean, 16_440.0);
        assert!(parse_h2load("").is_err());
    }
}
