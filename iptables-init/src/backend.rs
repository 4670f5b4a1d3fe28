//! Backends (which program applies the rules), their detection, and
//! running them with the rules on stdin.

use std::io::{ErrorKind, Write as _};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use crate::cli::BackendChoice;
use crate::error::{Error, Result};
use crate::iptables::count_rules;
use crate::values::Family;

/// Which iptables binaries: as installed, or an explicit variant.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Variant {
    /// `iptables-restore` (whatever the distribution's alternative is).
    Plain,
    /// `iptables-legacy-restore`.
    Legacy,
    /// `iptables-nft-restore`.
    Nft,
}

/// A resolved backend.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Iptables(Variant),
    Nft,
}

/// The iptables-restore flags. `--wait` because the legacy variant takes a
/// host-wide lock (/run/xtables.lock, shared by every namespace) and fails
/// at once if another iptables holds it; iptables-nft accepts and ignores it.
pub const RESTORE_ARGS: [&str; 2] = ["--noflush", "--wait"];

impl Backend {
    /// The `--backend` spelling.
    pub fn name(self) -> &'static str {
        match self {
            Backend::Iptables(Variant::Plain) => "iptables",
            Backend::Iptables(Variant::Legacy) => "iptables-legacy",
            Backend::Iptables(Variant::Nft) => "iptables-nft",
            Backend::Nft => "nft",
        }
    }

    /// The explicit backend of a choice (`None` for auto).
    pub fn from_choice(choice: BackendChoice) -> Option<Backend> {
        match choice {
            BackendChoice::Auto => None,
            BackendChoice::Iptables => Some(Backend::Iptables(Variant::Plain)),
            BackendChoice::IptablesLegacy => Some(Backend::Iptables(Variant::Legacy)),
            BackendChoice::IptablesNft => Some(Backend::Iptables(Variant::Nft)),
            BackendChoice::Nft => Some(Backend::Nft),
        }
    }

    /// The Debian package providing the backend's binaries.
    pub fn package(self) -> &'static str {
        match self {
            Backend::Iptables(_) => "iptables",
            Backend::Nft => "nftables",
        }
    }
}

fn variant_suffix(v: Variant) -> &'static str {
    match v {
        Variant::Plain => "",
        Variant::Legacy => "-legacy",
        Variant::Nft => "-nft",
    }
}

/// `iptables-legacy-restore`, `ip6tables-nft-restore`, …
pub fn restore_bin(v: Variant, f: Family) -> String {
    format!("{}{}-restore", f.iptables(), variant_suffix(v))
}

/// `iptables-legacy-save`, `ip6tables-nft-save`, …
pub fn save_bin(v: Variant, f: Family) -> String {
    format!("{}{}-save", f.iptables(), variant_suffix(v))
}

/// Looks `name` up on PATH (an executable regular file).
pub fn find_in_path(name: &str) -> Option<PathBuf> {
    use std::os::unix::fs::PermissionsExt as _;
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|dir| dir.join(name))
        .find(|p| std::fs::metadata(p).map(|m| m.is_file() && m.permissions().mode() & 0o111 != 0).unwrap_or(false))
}

/// Finds `name` or fails with exit 3, saying who wanted it and why.
pub fn require(name: &str, backend: Backend, purpose: &str) -> Result<PathBuf> {
    find_in_path(name).ok_or_else(|| Error::MissingBinary {
        binary: name.to_owned(),
        backend: backend.name().to_owned(),
        purpose: purpose.to_owned(),
        package: backend.package(),
    })
}

/// Runs `bin args…`, feeding `input` on stdin; returns stdout. A failure
/// becomes [`Error::Permission`] when the program says it was not allowed,
/// else [`Error::Rejected`] with the input line its message names.
pub fn run(bin: &Path, args: &[&str], input: Option<&str>) -> Result<String> {
    let display = display_command(bin, args);
    let mut child = Command::new(bin)
        .args(args)
        .stdin(if input.is_some() { Stdio::piped() } else { Stdio::null() })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| spawn_error(&display, bin, &e))?;
    // Written from a thread so a program that writes a lot before reading
    // all of its input cannot deadlock against us.
    let writer = match (input, child.stdin.take()) {
        (Some(text), Some(mut stdin)) => {
            let text = text.to_owned();
            Some(std::thread::spawn(move || stdin.write_all(text.as_bytes())))
        }
        _ => None,
    };
    let output = child.wait_with_output().map_err(|e| Error::Rejected {
        command: display.clone(),
        stderr: format!("waiting for it failed: {e}"),
        line: None,
    })?;
    // A write error (EPIPE) only means the program exited early; its exit
    // status and stderr say why, so a failure is reported from those.
    let write_failed = writer.is_some_and(|w| !matches!(w.join(), Ok(Ok(()))));
    let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
    if !output.status.success() {
        return Err(classify_failure(&display, &stderr, input, output.status.code()));
    }
    if write_failed {
        return Err(Error::Rejected {
            command: display,
            stderr: "it exited before reading all of the rules from its stdin".into(),
            line: None,
        });
    }
    Ok(String::from_utf8_lossy(&output.stdout).into_owned())
}

fn display_command(bin: &Path, args: &[&str]) -> String {
    let name = bin.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_else(|| bin.display().to_string());
    std::iter::once(name).chain(args.iter().map(|a| a.to_string())).collect::<Vec<_>>().join(" ")
}

fn spawn_error(display: &str, bin: &Path, e: &std::io::Error) -> Error {
    match e.kind() {
        ErrorKind::PermissionDenied => Error::Permission { what: format!("cannot execute {}: {e}", bin.display()) },
        _ => Error::Rejected { command: display.to_owned(), stderr: format!("could not start it: {e}"), line: None },
    }
}

/// Maps a failed run to an error (pure, for the unit tests).
pub fn classify_failure(display: &str, stderr: &str, input: Option<&str>, code: Option<i32>) -> Error {
    let lower = stderr.to_ascii_lowercase();
    if lower.contains("permission denied") || lower.contains("operation not permitted") {
        return Error::Permission {
            what: format!(
                "`{display}` was refused: {}. edgeplane-init must run as root with CAP_NET_ADMIN \
                 (in Kubernetes: securityContext.capabilities.add: [NET_ADMIN, NET_RAW])",
                stderr.trim()
            ),
        };
    }
    let line = input.and_then(|text| {
        let n = failing_line(stderr)?;
        let l = text.lines().nth(n.checked_sub(1)?)?;
        Some((n, l.to_owned()))
    });
    let stderr = if stderr.trim().is_empty() {
        format!("exit status {}", code.map(|c| c.to_string()).unwrap_or_else(|| "(killed by a signal)".into()))
    } else {
        stderr.to_owned()
    };
    Error::Rejected { command: display.to_owned(), stderr, line }
}

/// The input line a backend's error message names: iptables-restore says
/// `line 12 failed` or `Error occurred at line: 12`, nft says
/// `/dev/stdin:12:5-9: Error: …`.
pub fn failing_line(stderr: &str) -> Option<usize> {
    fn digits_after(s: &str) -> Option<usize> {
        let s = s.trim_start_matches([' ', ':']);
        let end = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
        s[..end].parse().ok()
    }
    for (i, _) in stderr.match_indices("stdin:") {
        if let Some(n) = digits_after(&stderr[i + "stdin".len()..]) {
            return Some(n);
        }
    }
    for (i, _) in stderr.match_indices("line") {
        if let Some(n) = digits_after(&stderr[i + "line".len()..]) {
            return Some(n);
        }
    }
    None
}

/// How auto-detection decided, for the log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Detection {
    pub backend: Backend,
    pub reason: String,
}

/// Counts the rules each iptables variant sees (IPv4 and IPv6). A failing
/// `-save` counts as none: it fails when the variant is unusable here.
/// No `-t nat`: naming a table makes iptables-legacy create it.
fn rules_seen(v: Variant) -> usize {
    [Family::V4, Family::V6]
        .into_iter()
        .filter_map(|f| find_in_path(&save_bin(v, f)))
        .filter_map(|bin| run(&bin, &[], None).ok())
        .map(|out| count_rules(&out))
        .sum()
}

/// `--backend auto`: when both iptables variants are installed, the one
/// that already has rules (ties go to nft, the default of current
/// distributions, as in Kubernetes' iptables-wrapper); else plain
/// iptables-restore; else nft.
pub fn detect() -> Result<Detection> {
    let legacy = find_in_path("iptables-legacy-save").is_some() && find_in_path("iptables-legacy-restore").is_some();
    let nft_variant = find_in_path("iptables-nft-save").is_some() && find_in_path("iptables-nft-restore").is_some();
    if legacy && nft_variant {
        let (l, n) = (rules_seen(Variant::Legacy), rules_seen(Variant::Nft));
        let backend = if l > n { Backend::Iptables(Variant::Legacy) } else { Backend::Iptables(Variant::Nft) };
        return Ok(Detection { backend, reason: format!("iptables-legacy has {l} rules, iptables-nft has {n}") });
    }
    if find_in_path("iptables-restore").is_some() {
        return Ok(Detection {
            backend: Backend::Iptables(Variant::Plain),
            reason: "iptables-restore is installed".into(),
        });
    }
    if find_in_path("nft").is_some() {
        return Ok(Detection { backend: Backend::Nft, reason: "no iptables; nft is installed".into() });
    }
    Err(Error::MissingBinary {
        binary: "iptables-restore or nft".into(),
        backend: "auto".into(),
        purpose: "to apply the rules".into(),
        package: "iptables",
    })
}

/// Backends `--cleanup --backend auto` looks at: every one installed, since
/// an earlier run may have used any of them.
pub fn installed_backends() -> Vec<Backend> {
    let mut out = Vec::new();
    let has_pair =
        |v| find_in_path(&save_bin(v, Family::V4)).is_some() && find_in_path(&restore_bin(v, Family::V4)).is_some();
    for v in [Variant::Legacy, Variant::Nft] {
        if has_pair(v) {
            out.push(Backend::Iptables(v));
        }
    }
    if out.is_empty() && has_pair(Variant::Plain) {
        out.push(Backend::Iptables(Variant::Plain));
    }
    if find_in_path("nft").is_some() {
        out.push(Backend::Nft);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn binary_names() {
        assert_eq!(restore_bin(Variant::Legacy, Family::V6), "ip6tables-legacy-restore");
        assert_eq!(save_bin(Variant::Plain, Family::V4), "iptables-save");
        assert_eq!(save_bin(Variant::Nft, Family::V4), "iptables-nft-save");
    }

    #[test]
    fn line_numbers_in_messages() {
        assert_eq!(failing_line("iptables-restore: line 12 failed\n"), Some(12));
        assert_eq!(
            failing_line("iptables-restore v1.8.9 (legacy): unknown option\nError occurred at line: 7\n"),
            Some(7)
        );
        assert_eq!(failing_line("/dev/stdin:5:10-12: Error: syntax error\n"), Some(5));
        assert_eq!(failing_line("something else"), None);
    }

    #[test]
    fn failures_are_classified() {
        let input = "a\nb\nc\n";
        let e =
            classify_failure("iptables-restore --noflush", "iptables-restore: line 2 failed\n", Some(input), Some(1));
        assert_eq!(e.exit_code(), 5);
        let msg = e.to_string();
        assert!(msg.contains("line 2 failed") && msg.contains("input line 2: b"), "{msg}");
        let e = classify_failure(
            "x",
            "iptables-restore v1.8.9 (legacy): Permission denied (you must be root)\n",
            None,
            Some(4),
        );
        assert_eq!(e.exit_code(), 4);
        assert!(e.to_string().contains("CAP_NET_ADMIN"));
        let e = classify_failure("nft -f -", "Error: Could not process rule: Operation not permitted\n", None, Some(1));
        assert_eq!(e.exit_code(), 4);
        let e = classify_failure("nft -f -", "", None, Some(1));
        assert!(e.to_string().contains("exit status 1"));
    }

    #[test]
    fn missing_binary_message() {
        let e = require("surely-not-installed-xyz", Backend::Nft, "to apply the rules").unwrap_err();
        assert_eq!(e.exit_code(), 3);
        let msg = e.to_string();
        assert!(
            msg.contains("surely-not-installed-xyz") && msg.contains("nft backend") && msg.contains("nftables"),
            "{msg}"
        );
    }
}
