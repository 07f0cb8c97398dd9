//! A persistent fork-join pool for kernel launches.
//!
//! A decode step makes hundreds of launches, many of them microseconds long, so a launch
//! must cost far less than a thread spawn or a general-purpose task queue: the caller
//! publishes one job by bumping an epoch counter, runs chunk 0 itself, and spins until the
//! workers have run theirs. Idle workers spin briefly (the next launch usually follows
//! within microseconds) and then sleep on a condition variable, so a long GEMM on another
//! pool or an idle session does not burn a core.

use std::cell::UnsafeCell;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering::SeqCst};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// How long an idle worker spins before it sleeps.
const SPIN: Duration = Duration::from_micros(200);

/// The job of one epoch: chunk `i` is `job(i)` for `i < chunks`.
#[derive(Clone, Copy)]
struct Job {
    chunks: usize,
    /// Lifetime-erased `&(dyn Fn(usize) + Sync)`; valid while the epoch runs, because
    /// [`Pool::run`] does not return before every worker has finished with it.
    f: *const (dyn Fn(usize) + Sync),
}

struct Shared {
    job: UnsafeCell<Job>,
    /// Bumped once per job; workers run a job when they see a new value.
    epoch: AtomicU64,
    /// Workers that have not yet finished the current epoch.
    pending: AtomicUsize,
    sleepers: AtomicUsize,
    shutdown: AtomicBool,
    panicked: AtomicBool,
    lock: Mutex<()>,
    wake: Condvar,
}

// SAFETY: `job` is written only by the caller of `Pool::run` while no worker reads it
// (between epochs, with `pending == 0`), and read by workers only during an epoch; the
// SeqCst epoch/pending counters order those accesses. The closure behind it is `Sync`.
unsafe impl Sync for Shared {}
unsafe impl Send for Shared {}

/// `threads - 1` workers plus the calling thread.
pub struct Pool {
    shared: Arc<Shared>,
    workers: Vec<JoinHandle<()>>,
    /// Serialises callers: one job at a time.
    busy: Mutex<()>,
}

fn noop(_: usize) {}

impl Pool {
    pub fn new(threads: usize) -> std::io::Result<Pool> {
        let shared = Arc::new(Shared {
            job: UnsafeCell::new(Job {
                chunks: 0,
                f: &noop as &(dyn Fn(usize) + Sync),
            }),
            epoch: AtomicU64::new(0),
            pending: AtomicUsize::new(0),
            sleepers: AtomicUsize::new(0),
            shutdown: AtomicBool::new(false),
            panicked: AtomicBool::new(false),
            lock: Mutex::new(()),
            wake: Condvar::new(),
        });
        let mut pool = Pool {
            shared,
            workers: Vec::new(),
            busy: Mutex::new(()),
        };
        for id in 1..threads.max(1) {
            let s = Arc::clone(&pool.shared);
            // On failure, dropping `pool` stops the workers already started.
            let handle = std::thread::Builder::new()
                .name(format!("zambac-cpu-{id}"))
                .spawn(move || worker(&s, id))?;
            pool.workers.push(handle);
        }
        Ok(pool)
    }

    /// Threads that run chunks, the caller included.
    pub fn threads(&self) -> usize {
        self.workers.len() + 1
    }

    /// [`Pool::run`] for chunks that can fail: the first error a chunk returns, or
    /// `panicked` if one panicked.
    pub fn try_run(
        &self,
        chunks: usize,
        panicked: &str,
        f: &(dyn Fn(usize) -> Result<(), String> + Sync),
    ) -> Result<(), String> {
        let failure = std::sync::Mutex::new(None);
        let ok = self.run(chunks, &|t| {
            if let Err(e) = f(t)
                && let Ok(mut first) = failure.lock()
            {
                first.get_or_insert(e);
            }
        });
        if !ok {
            return Err(panicked.into());
        }
        match failure.into_inner() {
            Ok(Some(e)) => Err(e),
            _ => Ok(()),
        }
    }

    /// Runs `f(0) … f(chunks-1)`, chunk `i` on thread `i`; returns when all are done.
    /// `chunks` is at most [`Pool::threads`]. Returns false if a chunk panicked.
    pub fn run(&self, chunks: usize, f: &(dyn Fn(usize) + Sync)) -> bool {
        debug_assert!(chunks <= self.threads());
        if chunks <= 1 || self.workers.is_empty() {
            return catch_unwind(AssertUnwindSafe(|| (0..chunks).for_each(f))).is_ok();
        }
        let _guard = self.busy.lock().unwrap_or_else(|e| e.into_inner());
        let s = &*self.shared;
        // SAFETY: `pending == 0` (the previous `run` waited for it), so no worker reads
        // `job` now. The transmute only erases the closure's lifetime; see `Job::f`.
        unsafe {
            let f: *const (dyn Fn(usize) + Sync + 'static) = std::mem::transmute(f);
            *s.job.get() = Job { chunks, f };
        }
        s.panicked.store(false, SeqCst);
        s.pending.store(self.workers.len(), SeqCst);
        s.epoch.fetch_add(1, SeqCst);
        if s.sleepers.load(SeqCst) > 0 {
            let _l = s.lock.lock().unwrap_or_else(|e| e.into_inner());
            s.wake.notify_all();
        }
        let mine = catch_unwind(AssertUnwindSafe(|| f(0))).is_ok();
        let mut spins = 0u32;
        while s.pending.load(SeqCst) != 0 {
            if spins < 1 << 12 {
                spins += 1;
                std::hint::spin_loop();
            } else {
                std::thread::yield_now();
            }
        }
        mine && !s.panicked.load(SeqCst)
    }
}

fn worker(s: &Shared, id: usize) {
    let mut seen = 0u64;
    loop {
        seen = wait_for_epoch(s, seen);
        if s.shutdown.load(SeqCst) {
            return;
        }
        // SAFETY: the epoch was published after `job` was written; the caller keeps the
        // closure alive until `pending` reaches zero.
        let job = unsafe { *s.job.get() };
        if id < job.chunks {
            let f = unsafe { &*job.f };
            if catch_unwind(AssertUnwindSafe(|| f(id))).is_err() {
                s.panicked.store(true, SeqCst);
            }
        }
        s.pending.fetch_sub(1, SeqCst);
    }
}

/// Spins, then sleeps, until the epoch differs from `seen`; returns the new epoch.
fn wait_for_epoch(s: &Shared, seen: u64) -> u64 {
    let start = Instant::now();
    let mut spins = 0u32;
    loop {
        let e = s.epoch.load(SeqCst);
        if e != seen {
            return e;
        }
        spins = spins.wrapping_add(1);
        if !spins.is_multiple_of(1024) || start.elapsed() < SPIN {
            std::hint::spin_loop();
            continue;
        }
        let mut guard = s.lock.lock().unwrap_or_else(|e| e.into_inner());
        s.sleepers.fetch_add(1, SeqCst);
        while s.epoch.load(SeqCst) == seen {
            guard = s.wake.wait(guard).unwrap_or_else(|e| e.into_inner());
        }
        s.sleepers.fetch_sub(1, SeqCst);
        return s.epoch.load(SeqCst);
    }
}

impl Drop for Pool {
    fn drop(&mut self) {
        let s = &*self.shared;
        s.shutdown.store(true, SeqCst);
        s.epoch.fetch_add(1, SeqCst);
        {
            let _l = s.lock.lock().unwrap_or_else(|e| e.into_inner());
            s.wake.notify_all();
        }
        for w in self.workers.drain(..) {
            let _ = w.join();
        }
    }
}
