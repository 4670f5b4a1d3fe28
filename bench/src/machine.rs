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

/// The current UTC time, e.g. `2026-11-22T10:00:00.123Z`.
pub fn now_rfc3339() -> String {
    edgeplane::access_log::rfc3339(std::time::SystemTime::now())
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
