//! Worker threads: one single-threaded tokio runtime per worker, each with
//! its own `SO_REUSEPORT` socket per listener and its own upstream pools.
//!
//! Why not one multi-threaded runtime: measured on the 2-core target, a
//! current-thread runtime per core spends less CPU per request (no work
//! stealing, no cross-thread wakeups) and lets pools be thread-local and
//! lock-free; see docs/ARCHITECTURE.md.

use std::collections::HashMap;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use tokio::sync::mpsc;
use tokio::task::JoinHandle as TaskHandle;

use crate::listen::accept_loop;
use crate::pool;
use crate::state::Shared;

/// How often a worker closes its pools' expired idle connections.
const SWEEP_INTERVAL: Duration = Duration::from_secs(2);

pub enum Command {
    /// Start accepting on this socket for the listener in `slot`.
    Listen { slot: usize, socket: std::net::TcpListener },
    /// Stop accepting for the listener in `slot` (its socket closes).
    Unlisten { slot: usize },
    /// Stop accepting on every listener; answers once the sockets are closed.
    UnlistenAll(tokio::sync::oneshot::Sender<()>),
    /// Drop the pools of endpoints that left the config.
    Release(Vec<usize>),
    /// Stop the worker; connections still open are cut.
    Exit,
}

pub struct Worker {
    commands: mpsc::UnboundedSender<Command>,
    thread: Option<JoinHandle<()>>,
}

impl Worker {
    /// `shared_threads`: run this worker on a multi-thread runtime with that
    /// many threads instead (the alternative model, kept for measuring).
    pub fn spawn(index: usize, shared: Arc<Shared>, shared_threads: Option<usize>) -> std::io::Result<Worker> {
        let (commands, receiver) = mpsc::unbounded_channel();
        let runtime = match shared_threads {
            None => tokio::runtime::Builder::new_current_thread().enable_all().build()?,
            Some(threads) => tokio::runtime::Builder::new_multi_thread()
                .worker_threads(threads)
                .thread_name("edgeplane-worker")
                .enable_all()
                .build()?,
        };
        let thread = std::thread::Builder::new()
            .name(format!("edgeplane-worker-{index}"))
            .spawn(move || runtime.block_on(run(receiver, shared)))?;
        Ok(Worker { commands, thread: Some(thread) })
    }

    pub fn send(&self, command: Command) {
        // A worker that is gone has nothing left to do with the command.
        let _ = self.commands.send(command);
    }

    /// Stops the worker and waits for its thread.
    pub fn exit(mut self) {
        self.send(Command::Exit);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

async fn run(mut commands: mpsc::UnboundedReceiver<Command>, shared: Arc<Shared>) {
    let mut accepting: HashMap<usize, TaskHandle<()>> = HashMap::new();
    let sweeper = tokio::spawn(async {
        let mut ticks = tokio::time::interval(SWEEP_INTERVAL);
        loop {
            ticks.tick().await;
            pool::sweep_idle();
        }
    });
    while let Some(command) = commands.recv().await {
        match command {
            Command::Listen { slot, socket } => match tokio::net::TcpListener::from_std(socket) {
                Ok(listener) => {
                    let task = tokio::spawn(accept_loop(listener, slot, shared.clone()));
                    if let Some(previous) = accepting.insert(slot, task) {
                        previous.abort();
                    }
                }
                Err(error) => tracing::error!(%error, "cannot register listener socket"),
            },
            Command::Unlisten { slot } => {
                if let Some(task) = accepting.remove(&slot) {
                    task.abort();
                }
            }
            Command::UnlistenAll(done) => {
                for (_, task) in accepting.drain() {
                    task.abort();
                    // An aborted task drops its socket when it next runs; wait
                    // for that so "closed" is true when we answer.
                    let _ = task.await;
                }
                let _ = done.send(());
            }
            Command::Release(ids) => pool::release(&ids),
            Command::Exit => break,
        }
    }
    sweeper.abort();
    for (_, task) in accepting.drain() {
        task.abort();
    }
}
