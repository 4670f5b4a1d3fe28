//! Wakes held long polls when something in the served directory may have
//! changed. An event only says "look again": the held request re-hashes and
//! decides from the ETag, so spurious or merged events cost a re-hash, and
//! missed ones are covered by the periodic re-check in the wait loop.

use std::path::Path;

use notify::event::{AccessKind, AccessMode};
use notify::{EventKind, RecommendedWatcher, RecursiveMode, Watcher};
use tokio::sync::watch;

/// Watches `root` recursively and bumps `changes` on every event that may
/// mean new content. `None` (with a warning) if the platform refuses, e.g.
/// when inotify watches are exhausted; long polls then rely on re-checks.
pub(super) fn start(root: &Path, changes: watch::Sender<u64>) -> Option<RecommendedWatcher> {
    let handler = move |event: notify::Result<notify::Event>| {
        let relevant = match &event {
            // Our own reads show up as opens and closes; only a close after
            // writing says anything about the content.
            Ok(event) => match event.kind {
                EventKind::Access(AccessKind::Close(AccessMode::Write)) => true,
                EventKind::Access(_) => false,
                _ => true,
            },
            // An error (a queue overflow, say) may hide changes.
            Err(_) => true,
        };
        if relevant {
            changes.send_modify(|generation| *generation = generation.wrapping_add(1));
        }
    };
    let mut watcher = match notify::recommended_watcher(handler) {
        Ok(watcher) => watcher,
        Err(error) => {
            tracing::warn!(%error, "cannot watch the served directory; long polls re-check periodically");
            return None;
        }
    };
    if let Err(error) = watcher.watch(root, RecursiveMode::Recursive) {
        tracing::warn!(%error, dir = %root.display(), "cannot watch the served directory; long polls re-check periodically");
        return None;
    }
    Some(watcher)
}
