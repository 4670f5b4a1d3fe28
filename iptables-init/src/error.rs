//! Typed failures and the exit codes they map to.
//!
//! The codes are part of the interface (an init container's exit code is
//! what `kubectl describe pod` shows), so each failure class has its own and
//! they are listed in `--help` and the README.

use std::path::PathBuf;

/// Exit code for success.
pub const EXIT_OK: i32 = 0;
/// Bad arguments or values (clap's own usage errors also exit 2).
pub const EXIT_USAGE: i32 = 2;
/// A binary the backend needs is not installed.
pub const EXIT_MISSING_BINARY: i32 = 3;
/// Not root / no CAP_NET_ADMIN (or no CAP_SYS_ADMIN for `--netns`).
pub const EXIT_PERMISSION: i32 = 4;
/// The backend (iptables-restore, nft) rejected the rules or failed.
pub const EXIT_REJECTED: i32 = 5;
/// `--netns` could not be entered.
pub const EXIT_NETNS: i32 = 6;

/// The exit-code table shown at the end of `--help`.
pub const EXIT_CODES_HELP: &str = "\
Exit codes:
  0  success (also for --dry-run, and for --cleanup when nothing was installed)
  2  bad arguments or values (the message names the flag)
  3  a binary the backend needs is missing (Debian packages: iptables, nftables)
  4  no permission: needs root with CAP_NET_ADMIN (iptables-legacy: also CAP_NET_RAW;
     --netns: also CAP_SYS_ADMIN)
  5  the backend rejected the rules (its stderr and the offending line are printed)
  6  the --netns namespace could not be entered";

/// Everything that makes edgeplane-init fail.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A flag's value is invalid, or two flags contradict each other.
    #[error("invalid value for {flag}: {message}")]
    Usage { flag: String, message: String },

    /// A binary is not on PATH.
    #[error(
        "`{binary}` not found on PATH; the {backend} backend needs it {purpose}. \
         Install the Debian/Ubuntu package `{package}` (Alpine: apk add {package}), \
         or pick another --backend"
    )]
    MissingBinary { binary: String, backend: String, purpose: String, package: &'static str },

    /// Not allowed to change the firewall (or to enter the namespace).
    #[error("permission denied: {what}")]
    Permission { what: String },

    /// The backend ran and failed.
    #[error("{}", rejected_message(command, stderr, line.as_ref()))]
    Rejected { command: String, stderr: String, line: Option<(usize, String)> },

    /// The `--netns` path could not be opened or entered.
    #[error("cannot enter network namespace {}: {reason}", path.display())]
    Netns { path: PathBuf, reason: String },
}

fn rejected_message(command: &str, stderr: &str, line: Option<&(usize, String)>) -> String {
    let mut msg = format!("`{command}` failed");
    let stderr = stderr.trim_end();
    if stderr.is_empty() {
        msg.push_str(" (no error output)");
    } else {
        msg.push_str(":\n");
        msg.push_str(stderr);
    }
    if let Some((n, text)) = line {
        msg.push_str(&format!("\ninput line {n}: {text}"));
    }
    msg
}

impl Error {
    /// Shorthand for a usage error naming `flag`.
    pub fn usage(flag: &str, message: impl Into<String>) -> Self {
        Error::Usage { flag: flag.to_owned(), message: message.into() }
    }

    /// The process exit code for this failure.
    pub fn exit_code(&self) -> i32 {
        match self {
            Error::Usage { .. } => EXIT_USAGE,
            Error::MissingBinary { .. } => EXIT_MISSING_BINARY,
            Error::Permission { .. } => EXIT_PERMISSION,
            Error::Rejected { .. } => EXIT_REJECTED,
            Error::Netns { .. } => EXIT_NETNS,
        }
    }
}

/// Result alias for this crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;
