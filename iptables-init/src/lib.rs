//! edgeplane-init: the transparent-interception rules of an injected
//! edgeplane sidecar, computed as data and applied with iptables-restore or
//! nft.
//!
//! ```text
//!  Cli ─▶ Config ─▶ rules::build (per family) ─▶ RuleSet
//!                                                 ├─▶ iptables::render_restore ─▶ iptables-restore --noflush
//!                                                 └─▶ nft::render_nft          ─▶ nft -f -
//! ```
//!
//! With the defaults, the IPv4 restore input is osm-edge's (`osm-init`)
//! byte for byte; `--chain-prefix FSM` gives FSM's chain names.
#![forbid(unsafe_code)]

pub mod backend;
pub mod cli;
pub mod error;
pub mod iptables;
pub mod nft;
pub mod rules;
pub mod system;
pub mod values;

use std::io::Write;

pub use cli::{Cli, Config};
pub use error::{Error, Result};

use backend::{Backend, Variant, RESTORE_ARGS};
use cli::Ipv6Mode;
use iptables::NatState;
use values::Family;

/// One program run: what is fed to which program.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Step {
    /// What the input covers (`IPv4`, `IPv4+IPv6`).
    pub label: String,
    /// The program's name (as looked up on PATH).
    pub program: String,
    pub args: Vec<&'static str>,
    /// The program's stdin; `None` when there is nothing to do.
    pub input: Option<String>,
}

impl Step {
    /// The dry-run form: a header line naming the family and the command,
    /// then the exact input.
    pub fn display(&self) -> String {
        let mut s = format!("### {}: {} {}\n", self.label, self.program, self.args.join(" "));
        match &self.input {
            Some(input) => s.push_str(input),
            None => s.push_str("# nothing to remove\n"),
        }
        s
    }
}

/// The dry-run text of `steps`: each step's [`Step::display`], separated
/// by an empty line.
pub fn display_steps(steps: &[Step]) -> String {
    steps.iter().map(Step::display).collect::<Vec<_>>().join("\n")
}

/// The families that get rules: IPv4 always, IPv6 when on.
pub fn families(ipv6: bool) -> Vec<Family> {
    if ipv6 {
        vec![Family::V4, Family::V6]
    } else {
        vec![Family::V4]
    }
}

/// The steps installing `cfg`'s rules with `backend`. `state` gives what an
/// earlier run left in a family (only the iptables backends need it).
pub fn plan_apply(
    cfg: &Config,
    backend: Backend,
    families: &[Family],
    state: &dyn Fn(Family) -> NatState,
) -> Vec<Step> {
    let sets: Vec<rules::RuleSet> = families.iter().map(|&f| rules::build(cfg, f)).collect();
    match backend {
        Backend::Iptables(v) => sets
            .iter()
            .map(|rs| Step {
                label: rs.family.name().into(),
                program: backend::restore_bin(v, rs.family),
                args: RESTORE_ARGS.to_vec(),
                input: Some(iptables::render_restore(rs, &state(rs.family).stale)),
            })
            .collect(),
        Backend::Nft => vec![Step {
            label: families.iter().map(|f| f.name()).collect::<Vec<_>>().join("+"),
            program: "nft".into(),
            args: vec!["-f", "-"],
            input: Some(nft::render_nft(&sets)),
        }],
    }
}

fn log(log: &mut dyn Write, msg: impl AsRef<str>) {
    // Nowhere to report a failing stderr; the exit code still tells.
    let _ = writeln!(log, "edgeplane-init: {}", msg.as_ref());
}

/// Reads what an earlier run left in a family's nat table.
fn read_state(v: Variant, f: Family, cfg: &Config) -> Result<NatState> {
    let name = backend::save_bin(v, f);
    let purpose = match f {
        Family::V4 => "to read the current IPv4 rules".to_owned(),
        Family::V6 => "to read the current IPv6 rules (--ipv6 off skips IPv6)".to_owned(),
    };
    let bin = backend::require(&name, Backend::Iptables(v), &purpose)?;
    let text = backend::run(&bin, &[], None)?;
    Ok(iptables::parse_save(&text, &cfg.chain_prefix))
}

/// Runs (or, for a dry run, prints) `steps`, all binaries having been
/// found first so a missing one fails before anything changed.
fn execute(cfg: &Config, backend: Backend, steps: &[Step], out: &mut dyn Write, logw: &mut dyn Write) -> Result<()> {
    if cfg.dry_run {
        let _ = out.write_all(display_steps(steps).as_bytes());
        return Ok(());
    }
    let mut resolved = Vec::new();
    for step in steps.iter().filter(|s| s.input.is_some()) {
        let purpose = format!("to apply the {} rules", step.label);
        resolved.push((step, backend::require(&step.program, backend, &purpose)?));
    }
    for (step, bin) in resolved {
        backend::run(&bin, &step.args, step.input.as_deref()).map_err(|e| match e {
            // Without CAP_NET_RAW the legacy variant only says "unable to
            // initialize table"; the plain variant may be legacy underneath.
            Error::Rejected { ref stderr, .. }
                if stderr.contains("unable to initialize table") && system::has_net_raw() == Some(false) =>
            {
                system::net_raw_error(&step.program)
            }
            e => e,
        })?;
        let done = if cfg.cleanup { "removed our rules" } else { "applied" };
        log(logw, format!("{}: {done} with {} {}", step.label, step.program, step.args.join(" ")));
    }
    for step in steps.iter().filter(|s| s.input.is_none()) {
        log(logw, format!("{}: nothing of ours installed for {}", step.label, step.program));
    }
    Ok(())
}

/// The legacy variant needs CAP_NET_RAW too (a raw socket), and without it
/// fails with an unhelpful "unable to initialize table": check up front.
fn lacks_net_raw(cfg: &Config, backend: Backend) -> bool {
    !cfg.dry_run && backend == Backend::Iptables(Variant::Legacy) && system::has_net_raw() == Some(false)
}

/// Runs edgeplane-init with a checked config. The dry-run text goes to
/// `out`, progress and warnings to `logw`.
pub fn run(cfg: &Config, out: &mut dyn Write, logw: &mut dyn Write) -> Result<()> {
    if !cfg.dry_run {
        system::check_net_admin()?;
    }
    if let Some(ns) = &cfg.netns {
        system::enter_netns(ns)?;
    }
    let ipv6 = match cfg.ipv6 {
        Ipv6Mode::On => true,
        Ipv6Mode::Off => false,
        Ipv6Mode::Auto => system::ipv6_in_use(),
    };
    if cfg.cleanup {
        cleanup(cfg, out, logw)
    } else {
        apply(cfg, ipv6, out, logw)
    }
}

fn apply(cfg: &Config, ipv6: bool, out: &mut dyn Write, logw: &mut dyn Write) -> Result<()> {
    let families = families(ipv6);
    for unused in cfg.unused_for(&families) {
        log(logw, format!("warning: ignoring {unused}: no IPv6 rules are installed (use --ipv6 on for them)"));
    }
    let backend = match Backend::from_choice(cfg.backend) {
        Some(b) => b,
        None => {
            let d = backend::detect()?;
            log(logw, format!("backend auto: using {} ({})", d.backend.name(), d.reason));
            d.backend
        }
    };
    if lacks_net_raw(cfg, backend) {
        return Err(system::net_raw_error(&backend::restore_bin(Variant::Legacy, Family::V4)));
    }
    let mut states = Vec::new();
    if let Backend::Iptables(v) = backend {
        // Every family's state is read before anything is applied, so a
        // missing ip6tables fails before the IPv4 rules changed.
        for &f in &families {
            match read_state(v, f, cfg) {
                Ok(st) => states.push((f, st)),
                Err(e) if cfg.dry_run => {
                    log(logw, format!("warning: {e}; showing the rules without the deletes a real run may add"));
                    states.push((f, NatState::default()));
                }
                Err(e) => return Err(e),
            }
        }
    }
    let state = |f: Family| states.iter().find(|(g, _)| *g == f).map(|(_, s)| s.clone()).unwrap_or_default();
    let steps = plan_apply(cfg, backend, &families, &state);
    execute(cfg, backend, &steps, out, logw)
}

fn cleanup(cfg: &Config, out: &mut dyn Write, logw: &mut dyn Write) -> Result<()> {
    let explicit = Backend::from_choice(cfg.backend);
    let backends = match explicit {
        Some(b) => vec![b],
        None => {
            let found = backend::installed_backends();
            if found.is_empty() {
                return Err(Error::MissingBinary {
                    binary: "iptables-restore or nft".into(),
                    backend: "auto".into(),
                    purpose: "to remove the rules".into(),
                    package: "iptables",
                });
            }
            found
        }
    };
    // IPv6 is cleaned unless explicitly off: an earlier run may have
    // installed IPv6 rules even when `auto` says no IPv6 today.
    let families = families(cfg.ipv6 != Ipv6Mode::Off);
    let mut steps: Vec<(Backend, Step)> = Vec::new();
    for b in backends {
        if lacks_net_raw(cfg, b) {
            if explicit.is_some() {
                return Err(system::net_raw_error(&backend::restore_bin(Variant::Legacy, Family::V4)));
            }
            log(logw, "warning: skipping the iptables-legacy rules: it needs CAP_NET_RAW, which this process lacks");
            continue;
        }
        match b {
            Backend::Iptables(v) => {
                for &f in &families {
                    // With --ipv6 auto a missing ip6tables or an unusable
                    // ip6 nat table just means nothing of ours is there.
                    let optional = f == Family::V6 && cfg.ipv6 == Ipv6Mode::Auto;
                    let state = match read_state(v, f, cfg) {
                        Ok(st) => st,
                        Err(_) if optional => continue,
                        Err(e) if cfg.dry_run => {
                            log(logw, format!("warning: {e}"));
                            continue;
                        }
                        Err(e) => return Err(e),
                    };
                    let input = iptables::render_cleanup(&state, &cfg.chain_prefix);
                    let step = Step {
                        label: f.name().into(),
                        program: backend::restore_bin(v, f),
                        args: RESTORE_ARGS.to_vec(),
                        input,
                    };
                    steps.push((b, step));
                }
            }
            Backend::Nft => {
                let step = Step {
                    label: families.iter().map(|f| f.name()).collect::<Vec<_>>().join("+"),
                    program: "nft".into(),
                    args: vec!["-f", "-"],
                    input: Some(nft::render_nft_cleanup(&families, &cfg.chain_prefix)),
                };
                steps.push((b, step));
            }
        }
    }
    if cfg.dry_run {
        let only: Vec<Step> = steps.into_iter().map(|(_, s)| s).collect();
        let _ = out.write_all(display_steps(&only).as_bytes());
        return Ok(());
    }
    // Look every binary up before running any.
    for (b, step) in steps.iter().filter(|(_, s)| s.input.is_some()) {
        backend::require(&step.program, *b, "to remove the rules")?;
    }
    for (b, step) in &steps {
        execute(cfg, *b, std::slice::from_ref(step), out, logw)?;
    }
    Ok(())
}
