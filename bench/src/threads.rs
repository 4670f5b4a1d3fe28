//! The harness's own threads: one per load CPU, each pinned and running a
//! single-threaded tokio runtime (one event loop per core, as wrk does).
//! Thread 0 also hosts the upstream servers.
//!
//! One work-stealing runtime was tried first: with the proxies on the other
//! core its cross-thread wake-ups made some rounds collapse to a third of
//! the throughput (for every peer alike), so results were bimodal.

use std::future::Future;
use std::thread::JoinHandle;

use tokio::sync::{mpsc, oneshot};

use crate::procstat;

type Job = Box<dyn FnOnce() + Send>;

pub struct LoadThreads {
    threads: Vec<(mpsc::UnboundedSender<Job>, Option<JoinHandle<()>>)>,
}

impl LoadThreads {
    pub fn start(cpus: &[usize]) -> std::io::Result<LoadThreads> {
        let mut threads = Vec::new();
        for (index, cpu) in cpus.iter().copied().enumerate() {
            let (jobs, mut receiver) = mpsc::unbounded_channel::<Job>();
            let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
            let thread = std::thread::Builder::new().name(format!("bench-load-{index}")).spawn(move || {
                let _ = procstat::pin_current_thread(&[cpu]);
                runtime.block_on(async move {
                    while let Some(job) = receiver.recv().await {
                        job();
                    }
                });
            })?;
            threads.push((jobs, Some(thread)));
        }
        Ok(LoadThreads { threads })
    }

    pub fn len(&self) -> usize {
        self.threads.len()
    }

    pub fn is_empty(&self) -> bool {
        self.threads.is_empty()
    }

    /// Spawns `future` on thread `index`'s runtime; its output arrives on the receiver.
    pub fn spawn<F>(&self, index: usize, future: F) -> oneshot::Receiver<F::Output>
    where
        F: Future + Send + 'static,
        F::Output: Send + 'static,
    {
        let (sender, receiver) = oneshot::channel();
        let job: Job = Box::new(move || {
            tokio::spawn(async move {
                let _ = sender.send(future.await);
            });
        });
        let _ = self.threads[index % self.threads.len()].0.send(job);
        receiver
    }

    /// Runs `future` on thread `index` and waits for it (from a non-runtime thread).
    pub fn run<F>(&self, index: usize, future: F) -> anyhow::Result<F::Output>
    where
        F: Future + Send + 'static,
        F::Output: Send + 'static,
    {
        self.spawn(index, future).blocking_recv().map_err(|_| anyhow::anyhow!("a load thread stopped"))
    }
}

impl Drop for LoadThreads {
    fn drop(&mut self) {
        for (jobs, thread) in &mut self.threads {
            // Closing the channel ends the thread's loop.
            let (closed, _) = mpsc::unbounded_channel();
            *jobs = closed;
            if let Some(thread) = thread.take() {
                let _ = thread.join();
            }
        }
    }
}
