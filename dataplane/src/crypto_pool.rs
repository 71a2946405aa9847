//! Work on every core without giving up packet order: a fork-join pool for the
//! per-packet crypto of one batch.
//!
//! The loop thread prepares a batch sequentially (nonces, headers, replay pre-checks),
//! then calls [`Pool::run`] on a slice of independent [`Job`]s (seal or open one
//! message in place). The loop thread and the pool's workers claim jobs one at a time
//! from a shared counter; `run` returns when every job is done. The caller then
//! sends or delivers the batch in its original order, so parallelism never reorders
//! the packets of a flow (which would cost TCP dearly).
//!
//! Waking a sleeping worker costs one futex call per batch, never per packet; small
//! batches (under [`Pool::MIN_PARALLEL`] jobs) run inline on the caller's thread. A
//! worker that is slow to wake costs nothing: the caller has already claimed and
//! done the jobs itself.
//!
//! The jobs live on the caller's stack and borrow its buffers; workers reach them
//! through a type-erased pointer that is valid for exactly one batch. Soundness rests
//! on two rules: a job index can only be claimed together with the batch generation
//! it belongs to (one atomic word holds both), and `run` does not return before every
//! claimed job has reported done.

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;

/// One unit of parallel work.
pub trait Job: Send {
    /// Does the work (on any thread of the pool, or the caller's).
    fn run(&mut self);
}

/// The batch being worked on, as workers see it.
#[derive(Clone, Copy)]
struct Batch {
    generation: u32,
    base: usize,
    stride: usize,
    count: u32,
    call: unsafe fn(*mut u8),
}

fn no_call(_: *mut u8) {}

struct Control {
    batch: Batch,
    sleepers: usize,
    shutdown: bool,
}

struct Shared {
    control: Mutex<Control>,
    wake: Condvar,
    /// Generation (high 32 bits) and next unclaimed job index (low 32 bits).
    claim: AtomicU64,
    done: AtomicU32,
    panicked: AtomicBool,
    /// Jobs the workers (not the caller) ran, ever.
    by_workers: AtomicU64,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, Control> {
        self.control.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Claims the next job of batch `generation`, if any is left.
    fn claim(&self, generation: u32, count: u32) -> Option<u32> {
        let mut word = self.claim.load(Ordering::Acquire);
        loop {
            if (word >> 32) as u32 != generation {
                return None;
            }
            let index = word as u32;
            if index >= count {
                return None;
            }
            match self.claim.compare_exchange_weak(
                word,
                word + 1,
                Ordering::AcqRel,
                Ordering::Acquire,
            ) {
                Ok(_) => return Some(index),
                Err(now) => word = now,
            }
        }
    }

    /// Claims and runs jobs of `batch` until none is left; returns how many it ran.
    fn work(&self, batch: Batch) -> u64 {
        let mut ran = 0;
        while let Some(i) = self.claim(batch.generation, batch.count) {
            let job = batch.base + i as usize * batch.stride;
            // SAFETY: index `i` was claimed under `batch.generation`, so `batch` is the
            // descriptor the caller of `run` published for that generation, `i <
            // count`, and that caller is blocked in `run` until this job reports done:
            // `job` points at a live, unaliased element of its slice of `J`, and
            // `call` is `call_job::<J>` for that same `J`.
            let r = catch_unwind(AssertUnwindSafe(|| unsafe { (batch.call)(job as *mut u8) }));
            if r.is_err() {
                self.panicked.store(true, Ordering::Relaxed);
            }
            self.done.fetch_add(1, Ordering::Release);
            ran += 1;
        }
        ran
    }
}

/// Runs the job at `p`.
///
/// # Safety
/// `p` must point at a live `J` that no one else accesses during the call.
unsafe fn call_job<J: Job>(p: *mut u8) {
    // SAFETY: guaranteed by the caller (see `Shared::work`).
    unsafe { (*p.cast::<J>()).run() }
}

/// A fork-join pool: the caller of [`Pool::run`] plus `workers` threads.
pub struct Pool {
    shared: Arc<Shared>,
    threads: Vec<JoinHandle<()>>,
    stats: std::cell::Cell<PoolStats>,
    enabled: std::cell::Cell<bool>,
}

/// What a [`Pool`] did so far.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PoolStats {
    /// Jobs run, in total.
    pub jobs: u64,
    /// Batches handed to the workers.
    pub parallel_batches: u64,
    /// Jobs the worker threads ran (the rest ran on the caller's thread).
    pub worker_jobs: u64,
}

impl std::fmt::Debug for Pool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pool")
            .field("workers", &self.threads.len())
            .finish()
    }
}

impl Pool {
    /// Batches smaller than this run inline on the caller's thread.
    pub const MIN_PARALLEL: usize = 4;

    /// A pool with `workers` extra threads (0: everything runs on the caller's thread).
    /// Threads that cannot be started are left out (logged).
    pub fn new(workers: usize) -> Pool {
        let shared = Arc::new(Shared {
            control: Mutex::new(Control {
                batch: Batch {
                    generation: 0,
                    base: 0,
                    stride: 0,
                    count: 0,
                    call: no_call,
                },
                sleepers: 0,
                shutdown: false,
            }),
            wake: Condvar::new(),
            claim: AtomicU64::new(0),
            done: AtomicU32::new(0),
            panicked: AtomicBool::new(false),
            by_workers: AtomicU64::new(0),
        });
        let mut threads = Vec::with_capacity(workers);
        for i in 0..workers {
            let s = Arc::clone(&shared);
            match std::thread::Builder::new()
                .name(format!("pd-crypto-{i}"))
                .spawn(move || worker(&s))
            {
                Ok(t) => threads.push(t),
                Err(e) => tracing::warn!("crypto worker {i} not started: {e}"),
            }
        }
        Pool {
            shared,
            threads,
            stats: std::cell::Cell::new(PoolStats::default()),
            enabled: std::cell::Cell::new(true),
        }
    }

    /// Turns the workers on or off (off: every batch runs on the caller's thread).
    pub fn set_enabled(&self, on: bool) {
        self.enabled.set(on);
    }

    /// True when batches go to the workers.
    pub fn enabled(&self) -> bool {
        self.enabled.get() && !self.threads.is_empty()
    }

    /// What the pool did so far.
    pub fn stats(&self) -> PoolStats {
        PoolStats {
            worker_jobs: self.shared.by_workers.load(Ordering::Relaxed),
            ..self.stats.get()
        }
    }

    /// The number of worker threads (besides the caller's).
    pub fn workers(&self) -> usize {
        self.threads.len()
    }

    /// Runs every job of `jobs`, spread over the caller's thread and the workers;
    /// returns when all are done. Panics (after all jobs ended) if a job panicked.
    pub fn run<J: Job>(&self, jobs: &mut [J]) {
        let mut st = self.stats.get();
        st.jobs += jobs.len() as u64;
        self.stats.set(st);
        if !self.enabled() || jobs.len() < Self::MIN_PARALLEL {
            jobs.iter_mut().for_each(Job::run);
            return;
        }
        let Ok(count) = u32::try_from(jobs.len()) else {
            jobs.iter_mut().for_each(Job::run);
            return;
        };
        st.parallel_batches += 1;
        self.stats.set(st);
        let s = &*self.shared;
        let batch = {
            let mut control = s.lock();
            s.done.store(0, Ordering::Relaxed);
            let batch = Batch {
                generation: control.batch.generation.wrapping_add(1),
                base: jobs.as_mut_ptr() as usize,
                stride: std::mem::size_of::<J>(),
                count,
                call: call_job::<J>,
            };
            control.batch = batch;
            // Publishing the generation makes the jobs claimable (Release: the
            // descriptor and `done` reset are visible to whoever claims).
            s.claim
                .store(u64::from(batch.generation) << 32, Ordering::Release);
            if control.sleepers > 0 {
                s.wake.notify_all();
            }
            batch
        };
        s.work(batch);
        let mut spins = 0u32;
        while s.done.load(Ordering::Acquire) < count {
            if spins < 256 {
                std::hint::spin_loop();
                spins += 1;
            } else {
                // A worker was preempted in the middle of a job: let it run.
                std::thread::yield_now();
            }
        }
        if s.panicked.swap(false, Ordering::Relaxed) {
            panic!("a parallel job panicked");
        }
    }
}

/// When to use the workers: only while other cores have time to spare. On a machine
/// whose cores are all busy (a 2-core box running both tunnel ends and the traffic
/// generator, say) handing half of each batch to another thread costs more — wake-ups,
/// context switches, cache lines moving between cores — than the crypto it moves
/// (pd-bench here: 3.2 instead of 2.4 CPU seconds per GB, 6% less throughput).
///
/// Fed a sample of the system-wide CPU times every tick (100 ms); switches off at
/// once when an interval had less than [`IdleGate::OFF_IDLE_CPUS`] CPUs' worth of
/// idle time, and on only after [`IdleGate::ON_SAMPLES`] intervals in a row with at
/// least [`IdleGate::ON_IDLE_CPUS`] (the gap and the streak keep it from flapping). It
/// starts off. So a load that fills the CPUs pays for the workers at most one tick:
/// with a one-second interval and starting on, the first second of every TCP transfer
/// ran with the pool on, 5% of a 6-second run's throughput.
#[derive(Debug, Default)]
pub struct IdleGate {
    last: Option<CpuTimes>,
    on: bool,
    /// Idle intervals in a row while off.
    streak: u32,
}

/// Cumulative system-wide CPU times (any unit, e.g. clock ticks from `/proc/stat`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CpuTimes {
    /// Time spent idle (idle + iowait), summed over CPUs.
    pub idle: u64,
    /// All time, summed over CPUs.
    pub total: u64,
    /// Online CPUs.
    pub cpus: u32,
}

impl IdleGate {
    /// Idle CPUs' worth of time at or above which the workers are used.
    pub const ON_IDLE_CPUS: f64 = 0.5;
    /// Idle CPUs' worth of time below which they are not.
    pub const OFF_IDLE_CPUS: f64 = 0.25;
    /// Intervals in a row with [`IdleGate::ON_IDLE_CPUS`] idle before they are.
    pub const ON_SAMPLES: u32 = 5;

    /// A gate that starts off: the workers are used once an interval has shown
    /// idle CPU time (a busy machine never pays for waking them).
    pub fn new() -> IdleGate {
        IdleGate {
            last: None,
            on: false,
            streak: 0,
        }
    }

    /// Takes a new sample; returns whether the workers should be used from now on.
    pub fn update(&mut self, now: CpuTimes) -> bool {
        if let Some(last) = self.last.replace(now) {
            let total = now.total.saturating_sub(last.total);
            if total > 0 && now.cpus > 0 {
                let idle = now.idle.saturating_sub(last.idle).min(total);
                let idle_cpus = idle as f64 / total as f64 * f64::from(now.cpus);
                if self.on && idle_cpus < Self::OFF_IDLE_CPUS {
                    self.on = false;
                } else if !self.on {
                    self.streak = if idle_cpus >= Self::ON_IDLE_CPUS {
                        self.streak + 1
                    } else {
                        0
                    };
                    if self.streak >= Self::ON_SAMPLES {
                        self.on = true;
                        self.streak = 0;
                    }
                }
            }
        }
        self.on
    }
}

/// Reads the aggregate `cpu` line of `/proc/stat`.
pub fn read_cpu_times() -> std::io::Result<CpuTimes> {
    let text = std::fs::read_to_string("/proc/stat")?;
    parse_cpu_times(&text).ok_or_else(|| {
        std::io::Error::new(std::io::ErrorKind::InvalidData, "no cpu line in /proc/stat")
    })
}

fn parse_cpu_times(text: &str) -> Option<CpuTimes> {
    let mut lines = text.lines();
    let first = lines.next()?;
    let mut fields = first.split_ascii_whitespace();
    if fields.next()? != "cpu" {
        return None;
    }
    let v: Vec<u64> = fields.map_while(|f| f.parse().ok()).collect();
    if v.len() < 4 {
        return None;
    }
    // user nice system idle iowait irq softirq steal (guest time is inside user).
    let idle = v[3] + v.get(4).copied().unwrap_or(0);
    let total = v.iter().take(8).sum();
    let cpus = lines
        .filter(|l| {
            l.strip_prefix("cpu")
                .is_some_and(|r| r.starts_with(|c: char| c.is_ascii_digit()))
        })
        .count();
    Some(CpuTimes {
        idle,
        total,
        cpus: u32::try_from(cpus).ok()?,
    })
}

fn worker(s: &Shared) {
    let mut seen = 0u32;
    loop {
        let batch = {
            let mut control = s.lock();
            while control.batch.generation == seen && !control.shutdown {
                control.sleepers += 1;
                control = s.wake.wait(control).unwrap_or_else(|e| e.into_inner());
                control.sleepers -= 1;
            }
            if control.shutdown {
                return;
            }
            control.batch
        };
        seen = batch.generation;
        let n = s.work(batch);
        s.by_workers.fetch_add(n, Ordering::Relaxed);
    }
}

impl Drop for Pool {
    fn drop(&mut self) {
        self.shared.lock().shutdown = true;
        self.shared.wake.notify_all();
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Square<'a> {
        input: u64,
        out: &'a mut u64,
        thread: Option<std::thread::ThreadId>,
    }

    impl Job for Square<'_> {
        fn run(&mut self) {
            // A little work so that workers get a share.
            let mut x = self.input;
            for _ in 0..200 {
                x = std::hint::black_box(x.wrapping_mul(6364136223846793005).wrapping_add(1));
            }
            std::hint::black_box(x);
            *self.out = self.input * self.input;
            self.thread = Some(std::thread::current().id());
        }
    }

    /// One job per element of `outs`, squaring `base + index` into it.
    fn squares(outs: &mut [u64], base: u64) -> Vec<Square<'_>> {
        outs.iter_mut()
            .enumerate()
            .map(|(i, out)| Square {
                input: i as u64 + base,
                out,
                thread: None,
            })
            .collect()
    }

    #[test]
    fn every_job_runs_exactly_once_in_many_batches() {
        let pool = Pool::new(3);
        assert_eq!(pool.workers(), 3);
        let mut outs = vec![0u64; 200];
        let mut others = 0usize;
        for round in 0..2000u64 {
            let n = (round % 200) as usize + 1;
            outs.iter_mut().for_each(|o| *o = u64::MAX);
            let mut jobs = squares(&mut outs[..n], round);
            pool.run(&mut jobs);
            let me = std::thread::current().id();
            others += jobs.iter().filter(|j| j.thread != Some(me)).count();
            drop(jobs);
            for (i, o) in outs[..n].iter().enumerate() {
                let v = i as u64 + round;
                assert_eq!(*o, v * v, "round {round} job {i}");
            }
            assert!(outs[n..].iter().all(|o| *o == u64::MAX));
        }
        // Parallel for real: workers did some of the jobs.
        assert!(others > 0, "no job ran on a worker thread");
    }

    #[test]
    fn small_batches_and_no_workers_run_inline() {
        let pool = Pool::new(0);
        let mut outs = [0u64; 10];
        let mut jobs = squares(&mut outs, 0);
        pool.run(&mut jobs);
        let me = std::thread::current().id();
        assert!(jobs.iter().all(|j| j.thread == Some(me)));
        drop(jobs);
        assert_eq!(outs[9], 81);

        let pool = Pool::new(2);
        let mut out = 0u64;
        let mut one = [Square {
            input: 7,
            out: &mut out,
            thread: None,
        }];
        pool.run(&mut one);
        assert_eq!(one[0].thread, Some(me));
        assert_eq!(out, 49);
    }

    #[test]
    fn idle_gate_switches_with_hysteresis() {
        let t = |idle, total| CpuTimes {
            idle,
            total,
            cpus: 2,
        };
        let mut g = IdleGate::new();
        assert!(!g.update(t(0, 0)), "off until measured");
        // 75% of 2 CPUs idle = 1.5 CPUs: on after five such intervals in a row.
        let mut at = (0, 0);
        let mut step = |g: &mut IdleGate, idle: u64| {
            at = (at.0 + idle, at.1 + 200);
            g.update(t(at.0, at.1))
        };
        for _ in 0..4 {
            assert!(!step(&mut g, 150));
        }
        // A busy interval breaks the streak.
        assert!(!step(&mut g, 10));
        for _ in 0..4 {
            assert!(!step(&mut g, 150));
        }
        assert!(step(&mut g, 150), "on after five idle intervals");
        // 0.4 CPU idle: between the thresholds, stays on.
        assert!(step(&mut g, 40));
        // 10% of 2 CPUs idle = 0.2 CPU: off at once.
        assert!(!step(&mut g, 20));
        // 1 CPU idle once: stays off.
        assert!(!step(&mut g, 100));
        // No time passed (or counters went backwards): no change.
        let now = t(at.0, at.1);
        assert!(!g.update(now));
        assert!(!g.update(now));
        assert!(!g.update(t(0, 0)));
    }

    #[test]
    fn proc_stat_is_parsed() {
        let text = "cpu  100 5 50 800 20 1 2 3 0 0\ncpu0 50 2 25 400 10 0 1 1 0 0\ncpu1 50 3 25 400 10 1 1 2 0 0\nintr 1 2\n";
        assert_eq!(
            parse_cpu_times(text),
            Some(CpuTimes {
                idle: 820,
                total: 981,
                cpus: 2
            })
        );
        assert_eq!(parse_cpu_times("intr 1\n"), None);
        assert_eq!(parse_cpu_times("cpu 1 2\n"), None);
        let live = read_cpu_times().unwrap();
        assert!(live.cpus >= 1 && live.total >= live.idle);
    }

    struct Boom;
    impl Job for Boom {
        fn run(&mut self) {
            panic!("boom");
        }
    }

    #[test]
    fn a_panicking_job_is_reported_and_the_pool_survives() {
        let pool = Pool::new(1);
        let r = catch_unwind(AssertUnwindSafe(|| {
            let mut jobs: Vec<Boom> = (0..8).map(|_| Boom).collect();
            pool.run(&mut jobs);
        }));
        assert!(r.is_err());
        let mut outs = [0u64; 16];
        let mut jobs = squares(&mut outs, 0);
        pool.run(&mut jobs);
        drop(jobs);
        assert_eq!(outs[15], 225);
    }
}
