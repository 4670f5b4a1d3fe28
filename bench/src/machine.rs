//! The machine a run happened on.

use crate::model::Machine;

pub fn describe() -> Machine {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    // x86 says "model name"; arm64 kernels often only give the implementer and part.
    let cpu_model = field(&cpuinfo, "model name")
        .or_else(|| field(&cpuinfo, "Hardware"))
        .or_else(|| {
            let implementer = field(&cpuinfo, "CPU implementer")?;
            let part = field(&cpuinfo, "CPU part")?;
            Some(format!("implementer {implementer} part {part}"))
        })
        .unwrap_or_else(|| "unknown".into());
    let uname = nix::sys::utsname::uname().ok();
    Machine {
        cpu_model,
        cores: crate::procstat::available_cpus().len(),
        kernel: uname.as_ref().map_or_else(|| "unknown".into(), |u| u.release().to_string_lossy().into_owned()),
        arch: std::env::consts::ARCH.into(),
        os: os_name().unwrap_or_else(|| std::env::consts::OS.into()),
    }
}

/// The current UTC time, e.g. `2026-11-22T10:00:00Z`.
pub fn now_rfc3339() -> String {
    let secs = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs());
    let (days, rem) = (secs / 86_400, secs % 86_400);
    // Civil-from-days (Howard Hinnant's algorithm).
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!("{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}Z", rem / 3600, rem % 3600 / 60, rem % 60)
}

fn field(text: &str, key: &str) -> Option<String> {
    text.lines()
        .find(|line| line.split(':').next().is_some_and(|k| k.trim() == key))
        .and_then(|line| line.split_once(':'))
        .map(|(_, value)| value.trim().to_owned())
        .filter(|value| !value.is_empty())
}

fn os_name() -> Option<String> {
    let release = std::fs::read_to_string("/etc/os-release").ok()?;
    release.lines().find_map(|line| line.strip_prefix("PRETTY_NAME=")).map(|value| value.trim_matches('"').to_owned())
}

#[cfg(test)]
mod tests {
    #[test]
    fn describes_this_machine() {
        let machine = super::describe();
        assert!(machine.cores >= 1);
        assert!(!machine.kernel.is_empty());
        assert_eq!(machine.arch, std::env::consts::ARCH);
        assert!(!machine.cpu_model.is_empty());
    }
}
