//! Reading a process tree's CPU time and memory from /proc, and pinning its
//! threads to CPUs.

use std::fs;
use std::io;

use nix::sched::{sched_setaffinity, CpuSet};
use nix::unistd::Pid;

/// CPU and memory of a process and all its descendants.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Usage {
    /// User + system time, seconds.
    pub cpu_seconds: f64,
    /// Resident set, KiB.
    pub rss_kib: u64,
    /// Peak resident set (VmHWM), KiB.
    pub peak_rss_kib: u64,
}

/// `pid` and every process below it (nginx's workers, for example).
pub fn tree(pid: u32) -> Vec<u32> {
    let mut all = vec![pid];
    let mut at = 0;
    let parents = parent_map();
    while at < all.len() {
        let parent = all[at];
        all.extend(parents.iter().filter(|(_, p)| *p == parent).map(|(child, _)| *child));
        at += 1;
    }
    all
}

fn parent_map() -> Vec<(u32, u32)> {
    let Ok(entries) = fs::read_dir("/proc") else { return Vec::new() };
    entries
        .filter_map(|entry| entry.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter_map(|pid| Some((pid, stat_fields(pid)?.ppid)))
        .collect()
}

struct StatFields {
    ppid: u32,
    /// utime + stime, clock ticks.
    ticks: u64,
    /// When the process started, clock ticks after boot: with the pid, an
    /// identity that a reused pid does not share.
    start: u64,
}

fn stat_fields(pid: u32) -> Option<StatFields> {
    let text = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name is in parentheses and may contain spaces.
    let after_name = &text[text.rfind(')')? + 2..];
    let fields: Vec<&str> = after_name.split_whitespace().collect();
    // Fields after the name start at field 3 (state): ppid is 4, utime 14, stime 15.
    let ppid = fields.get(1)?.parse().ok()?;
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    let start: u64 = fields.get(19)?.parse().ok()?;
    Some(StatFields { ppid, ticks: utime + stime, start })
}

fn status_kib(pid: u32, key: &str) -> Option<u64> {
    let text = fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = text.lines().find(|l| l.starts_with(key))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

fn clock_ticks() -> f64 {
    nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK).ok().flatten().map_or(100.0, |t| t as f64)
}

/// A process's start time (clock ticks after boot), to tell it from a later
/// process that reuses its pid.
pub fn start_time(pid: u32) -> Option<u64> {
    stat_fields(pid).map(|stat| stat.start)
}

/// Current usage of the process tree under `pid`.
pub fn usage(pid: u32) -> Usage {
    let hz = clock_ticks();
    let mut usage = Usage::default();
    for process in tree(pid) {
        if let Some(stat) = stat_fields(process) {
            usage.cpu_seconds += stat.ticks as f64 / hz;
        }
        usage.rss_kib += status_kib(process, "VmRSS:").unwrap_or(0);
        usage.peak_rss_kib += status_kib(process, "VmHWM:").unwrap_or(0);
    }
    usage
}

/// [`usage`] of several process trees, added up (a pair of sidecars).
pub fn usage_of(pids: &[u32]) -> Usage {
    pids.iter().map(|pid| usage(*pid)).fold(Usage::default(), |sum, one| Usage {
        cpu_seconds: sum.cpu_seconds + one.cpu_seconds,
        rss_kib: sum.rss_kib + one.rss_kib,
        peak_rss_kib: sum.peak_rss_kib + one.peak_rss_kib,
    })
}

/// Descriptors open in `pid` and every process below it (nginx's workers
/// hold the connections, not its master).
pub fn open_files(pid: u32) -> usize {
    tree(pid).into_iter().filter_map(|p| fs::read_dir(format!("/proc/{p}/fd")).ok()).map(|dir| dir.count()).sum()
}

/// Pins every thread of every process in the tree under `pid` to `cpus`.
pub fn pin_tree(pid: u32, cpus: &[usize]) -> io::Result<()> {
    for process in tree(pid) {
        let Ok(tasks) = fs::read_dir(format!("/proc/{process}/task")) else { continue };
        for task in tasks.flatten() {
            if let Some(tid) = task.file_name().to_str().and_then(|t| t.parse::<i32>().ok()) {
                // A thread may have exited meanwhile; that is fine.
                let _ = pin(Pid::from_raw(tid), cpus);
            }
        }
    }
    Ok(())
}

/// Pins the calling thread.
pub fn pin_current_thread(cpus: &[usize]) -> io::Result<()> {
    pin(Pid::from_raw(0), cpus)
}

fn pin(pid: Pid, cpus: &[usize]) -> io::Result<()> {
    let mut set = CpuSet::new();
    for cpu in cpus {
        set.set(*cpu).map_err(io::Error::from)?;
    }
    sched_setaffinity(pid, &set).map_err(io::Error::from)
}

/// CPUs this process may run on.
pub fn available_cpus() -> Vec<usize> {
    match nix::sched::sched_getaffinity(Pid::from_raw(0)) {
        Ok(set) => (0..CpuSet::count()).filter(|cpu| set.is_set(*cpu).unwrap_or(false)).collect(),
        Err(_) => (0..std::thread::available_parallelism().map_or(1, |n| n.get())).collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_this_process() {
        let me = std::process::id();
        // Burn a little CPU so the figure is above zero.
        let mut x = 0u64;
        for i in 0..20_000_000u64 {
            x = x.wrapping_add(i ^ (x >> 3));
        }
        assert!(x != 1);
        let usage = usage(me);
        assert!(usage.cpu_seconds > 0.0, "{usage:?}");
        assert!(usage.rss_kib > 100, "{usage:?}");
        assert!(usage.peak_rss_kib >= usage.rss_kib, "{usage:?}");
        assert!(tree(me).contains(&me));
        // The sum of two reads of this process: both parts are there (exact
        // figures move between reads: other tests' children come and go).
        let twice = usage_of(&[me, me]);
        assert!(twice.cpu_seconds > 0.0 && twice.rss_kib > 200, "{twice:?}");
        assert_eq!(usage_of(&[]), Usage::default());
        // At least the file held here (other tests' threads open and close theirs).
        let _held = std::fs::File::open("/proc/self/stat").unwrap();
        assert!(open_files(me) >= 1);
    }

    #[test]
    fn finds_children() {
        let mut child = std::process::Command::new("sleep").arg("5").spawn().expect("sleep");
        let tree = tree(std::process::id());
        let _ = child.kill();
        let _ = child.wait();
        assert!(tree.contains(&child.id()), "{tree:?}");
    }

    #[test]
    fn pins_threads() {
        let cpus = available_cpus();
        assert!(!cpus.is_empty());
        let first = cpus[0];
        std::thread::spawn(move || {
            pin_current_thread(&[first]).unwrap();
            let set = nix::sched::sched_getaffinity(Pid::from_raw(0)).unwrap();
            assert!(set.is_set(first).unwrap());
            assert_eq!((0..CpuSet::count()).filter(|c| set.is_set(*c).unwrap()).count(), 1);
        })
        .join()
        .unwrap();
    }
}
