//! How numbers read in the report and on the charts' axes.

/// An integer with thousands separators: `56,120`.
pub fn thousands(value: f64) -> String {
    let rounded = value.round();
    let digits = format!("{}", rounded.abs() as u64);
    let mut out = String::with_capacity(digits.len() + digits.len() / 3 + 1);
    if rounded < 0.0 {
        out.push('-');
    }
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// A throughput or rate, with as many decimals as its size calls for:
/// `56,120`, `42.5`, `3.14`.
pub fn amount(value: f64) -> String {
    if !value.is_finite() {
        return "—".into();
    }
    let magnitude = value.abs();
    if magnitude >= 100.0 {
        thousands(value)
    } else if magnitude >= 10.0 {
        format!("{value:.1}")
    } else {
        format!("{value:.2}")
    }
}

/// Median with its range, `56,120 (55,010–57,300)`; just the median when every round agreed.
pub fn amount_with_range(median: f64, min: f64, max: f64) -> String {
    let (m, lo, hi) = (amount(median), amount(min), amount(max));
    if lo == hi {
        m
    } else {
        format!("{m} ({lo}–{hi})")
    }
}

/// Microseconds as an operator reads them: `85 µs`, `1.24 ms`, `12.4 ms`, `240 ms`, `1.50 s`.
pub fn micros(us: f64) -> String {
    if !us.is_finite() {
        return "—".into();
    }
    let us = us.round();
    if us < 1_000.0 {
        format!("{us:.0} µs")
    } else if us < 10_000.0 {
        format!("{:.2} ms", us / 1e3)
    } else if us < 100_000.0 {
        format!("{:.1} ms", us / 1e3)
    } else if us < 1_000_000.0 {
        format!("{:.0} ms", us / 1e3)
    } else {
        format!("{:.2} s", us / 1e6)
    }
}

/// Short axis tick labels for latency: `50 µs`, `1 ms`, `2.5 ms`, `1 s`.
pub fn micros_tick(us: f64) -> String {
    let (value, unit) = if us >= 1e6 {
        (us / 1e6, "s")
    } else if us >= 1e3 {
        (us / 1e3, "ms")
    } else {
        (us, "µs")
    };
    format!("{} {unit}", trim(value))
}

/// Compact axis tick labels: `0`, `500`, `25k`, `1.5M`.
pub fn compact(value: f64) -> String {
    let magnitude = value.abs();
    if magnitude >= 1e6 {
        format!("{}M", trim(value / 1e6))
    } else if magnitude >= 1e3 {
        format!("{}k", trim(value / 1e3))
    } else {
        trim(value)
    }
}

/// At most two decimals, trailing zeros dropped: `2.5`, `3`, `0.12`.
pub fn trim(value: f64) -> String {
    let text = format!("{value:.2}");
    let text = text.trim_end_matches('0').trim_end_matches('.');
    if text == "-0" {
        "0".into()
    } else {
        text.into()
    }
}

/// KiB as MiB with one decimal: `8.5 MiB`.
pub fn mib(kib: f64) -> String {
    format!("{:.1} MiB", kib / 1024.0)
}

/// `value / reference` as `0.57×`, or `—` when there is nothing to compare with.
pub fn ratio(value: f64, reference: f64) -> String {
    if reference > 0.0 && value.is_finite() && reference.is_finite() {
        format!("{:.2}×", value / reference)
    } else {
        "—".into()
    }
}

/// A byte count: `64 B`, `16 KiB`, `1 MiB`, `1500 B`.
pub fn bytes(n: usize) -> String {
    const KIB: usize = 1024;
    const MIB: usize = 1024 * 1024;
    if n >= MIB && n.is_multiple_of(MIB) {
        format!("{} MiB", n / MIB)
    } else if n >= KIB && n.is_multiple_of(KIB) {
        format!("{} KiB", n / KIB)
    } else {
        format!("{n} B")
    }
}

/// Seconds without needless decimals: `10 s`, `2.5 s`.
pub fn seconds(secs: f64) -> String {
    format!("{} s", trim(secs))
}

/// A CPU list the way `taskset` and cpusets write it: `0-3,6`.
pub fn cpu_list(cpus: &[usize]) -> String {
    let mut sorted = cpus.to_vec();
    sorted.sort_unstable();
    sorted.dedup();
    let mut parts = Vec::new();
    let mut i = 0;
    while i < sorted.len() {
        let start = sorted[i];
        let mut end = start;
        while i + 1 < sorted.len() && sorted[i + 1] == end + 1 {
            i += 1;
            end = sorted[i];
        }
        parts.push(if start == end { start.to_string() } else { format!("{start}-{end}") });
        i += 1;
    }
    parts.join(",")
}

/// `CPU 1` or `CPUs 0-3`.
pub fn cpus(cpus: &[usize]) -> String {
    let plural = cpus.len() > 1;
    format!("CPU{} {}", if plural { "s" } else { "" }, cpu_list(cpus))
}

/// `1 thread`, `4 threads`.
pub fn plural(n: usize, one: &str, many: &str) -> String {
    format!("{n} {}", if n == 1 { one } else { many })
}

/// Text made safe for a Markdown table cell.
pub fn cell(text: &str) -> String {
    text.replace('|', "\\|").replace(['\r', '\n'], " ")
}

/// Text made safe for one Markdown line.
pub fn line(text: &str) -> String {
    text.replace(['\r', '\n'], " ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers() {
        assert_eq!(thousands(56_120.4), "56,120");
        assert_eq!(thousands(999.0), "999");
        assert_eq!(thousands(1_000.0), "1,000");
        assert_eq!(thousands(1_234_567.0), "1,234,567");
        assert_eq!(amount(42.53), "42.5");
        assert_eq!(amount(3.256), "3.26");
        assert_eq!(amount_with_range(56_120.0, 55_010.0, 57_300.0), "56,120 (55,010–57,300)");
        assert_eq!(amount_with_range(100.0, 100.0, 100.0), "100");
        assert_eq!(compact(25_000.0), "25k");
        assert_eq!(compact(1_500_000.0), "1.5M");
        assert_eq!(compact(0.0), "0");
        assert_eq!(compact(250.0), "250");
    }

    #[test]
    fn latencies() {
        assert_eq!(micros(85.0), "85 µs");
        assert_eq!(micros(999.4), "999 µs");
        assert_eq!(micros(1_240.0), "1.24 ms");
        assert_eq!(micros(12_400.0), "12.4 ms");
        assert_eq!(micros(240_000.0), "240 ms");
        assert_eq!(micros(1_500_000.0), "1.50 s");
        assert_eq!(micros_tick(50.0), "50 µs");
        assert_eq!(micros_tick(2_500.0), "2.5 ms");
        assert_eq!(micros_tick(1_000_000.0), "1 s");
    }

    #[test]
    fn sizes_ratios_and_cpus() {
        assert_eq!(mib(8_704.0), "8.5 MiB");
        assert_eq!(ratio(60_000.0, 100_000.0), "0.60×");
        assert_eq!(ratio(1.0, 0.0), "—");
        assert_eq!(bytes(64), "64 B");
        assert_eq!(bytes(16 * 1024), "16 KiB");
        assert_eq!(bytes(1500), "1500 B");
        assert_eq!(seconds(10.0), "10 s");
        assert_eq!(seconds(2.5), "2.5 s");
        assert_eq!(cpu_list(&[3, 0, 1, 2, 6]), "0-3,6");
        assert_eq!(cpus(&[1]), "CPU 1");
        assert_eq!(cpus(&[0, 1]), "CPUs 0-1");
        assert_eq!(cell("a|b\nc"), "a\\|b c");
    }
}
