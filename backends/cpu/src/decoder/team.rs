//! A small team of threads that run one closure together and meet at spin barriers.
//!
//! Decoding one token of a small model is a few hundred short, dependent steps. Waking rayon
//! workers for each costs microseconds (they sleep on futexes); a team that spins between
//! steps hands work over in well under a microsecond. Idle workers spin for a while, then
//! sleep in short naps so that a paused chat does not burn the CPU.

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

type Job<'a> = dyn Fn(usize) + Sync + 'a;

struct Inner {
    /// The job of the current epoch: a `*const Job` with its lifetime erased, split into its
    /// data and vtable words; valid until every worker has reported done.
    job_ptr: AtomicUsize,
    job_meta: AtomicUsize,
    epoch: AtomicUsize,
    done: AtomicUsize,
    panicked: AtomicBool,
    stop: AtomicBool,
    bar_count: AtomicUsize,
    bar_gen: AtomicUsize,
    n: usize,
}

/// `n` threads: the caller of [`Team::run`] and `n − 1` workers.
pub struct Team {
    inner: Arc<Inner>,
    workers: Vec<JoinHandle<()>>,
}

/// Spins before a waiting worker starts napping (≈ a few hundred microseconds).
const SPINS: usize = 1 << 17;

impl Team {
    pub fn new(n: usize) -> Team {
        let n = n.max(1);
        let inner = Arc::new(Inner {
            job_ptr: AtomicUsize::new(0),
            job_meta: AtomicUsize::new(0),
            epoch: AtomicUsize::new(0),
            done: AtomicUsize::new(0),
            panicked: AtomicBool::new(false),
            stop: AtomicBool::new(false),
            bar_count: AtomicUsize::new(0),
            bar_gen: AtomicUsize::new(0),
            n,
        });
        let workers = (1..n)
            .map(|tid| {
                let inner = inner.clone();
                std::thread::Builder::new()
                    .name(format!("tensor-decoder-{tid}"))
                    .spawn(move || worker(&inner, tid))
                    .expect("spawning a decoder thread")
            })
            .collect();
        Team { inner, workers }
    }

    pub fn threads(&self) -> usize {
        self.inner.n
    }

    /// Run `f(tid)` on every thread of the team (the caller is thread 0) and return when all
    /// have finished. Panics if `f` panicked on any thread.
    pub fn run(&self, f: &Job<'_>) {
        let inner = &*self.inner;
        if inner.n > 1 {
            // SAFETY of the erasure: workers only dereference the pointer between seeing the
            // new epoch and incrementing `done`, and we wait for all of them below before `f`
            // goes out of scope.
            let raw: *const Job<'_> = f;
            let (p, m): (usize, usize) = unsafe { std::mem::transmute(raw) };
            inner.job_ptr.store(p, Ordering::Relaxed);
            inner.job_meta.store(m, Ordering::Relaxed);
            inner.done.store(0, Ordering::Relaxed);
            inner.epoch.fetch_add(1, Ordering::Release);
        }
        let mine = catch_unwind(AssertUnwindSafe(|| f(0)));
        if mine.is_err() {
            inner.panicked.store(true, Ordering::Relaxed);
        }
        let mut spins = 0u32;
        while inner.done.load(Ordering::Acquire) != inner.n - 1 {
            pause(&mut spins);
        }
        if inner.panicked.swap(false, Ordering::Relaxed) {
            panic!("a decoder thread panicked");
        }
    }

    /// Wait until every thread of the team has reached this barrier. Must be called by all
    /// of them, the same number of times, inside [`Team::run`]. If another thread panicked,
    /// the barrier still completes (that thread's catch frame counts it in).
    pub fn barrier(&self) {
        let inner = &*self.inner;
        if inner.n == 1 {
            return;
        }
        let gen = inner.bar_gen.load(Ordering::Acquire);
        if inner.bar_count.fetch_add(1, Ordering::AcqRel) + 1 == inner.n {
            inner.bar_count.store(0, Ordering::Relaxed);
            inner.bar_gen.fetch_add(1, Ordering::Release);
        } else {
            let mut spins = 0u32;
            while inner.bar_gen.load(Ordering::Acquire) == gen {
                pause(&mut spins);
            }
        }
    }
}

/// Spins before a waiter at a barrier yields its core: when other processes compete for the
/// cores, the thread it waits for may be descheduled, and spinning would only delay it.
const SPINS_BEFORE_YIELD: u32 = 1 << 11;

#[inline]
fn pause(spins: &mut u32) {
    if *spins < SPINS_BEFORE_YIELD {
        *spins += 1;
        std::hint::spin_loop();
    } else {
        std::thread::yield_now();
    }
}

fn worker(inner: &Inner, tid: usize) {
    let mut seen = 0usize;
    loop {
        let mut spins = 0usize;
        loop {
            if inner.stop.load(Ordering::Relaxed) {
                return;
            }
            let e = inner.epoch.load(Ordering::Acquire);
            if e != seen {
                seen = e;
                break;
            }
            spins += 1;
            if spins < SPINS {
                std::hint::spin_loop();
            } else {
                std::thread::sleep(Duration::from_micros(50));
            }
        }
        let p = inner.job_ptr.load(Ordering::Relaxed);
        let m = inner.job_meta.load(Ordering::Relaxed);
        // SAFETY: `run` stored a valid `*const Job` and keeps it alive until `done` counts us.
        let f: &Job<'static> =
            unsafe { &*std::mem::transmute::<(usize, usize), *const Job<'static>>((p, m)) };
        if catch_unwind(AssertUnwindSafe(|| f(tid))).is_err() {
            inner.panicked.store(true, Ordering::Relaxed);
        }
        inner.done.fetch_add(1, Ordering::Release);
    }
}

impl Drop for Team {
    fn drop(&mut self) {
        self.inner.stop.store(true, Ordering::Relaxed);
        for w in self.workers.drain(..) {
            let _ = w.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicU64;

    #[test]
    fn every_thread_runs_and_barriers_order_phases() {
        let team = Team::new(3);
        let arrived = AtomicUsize::new(0);
        let hits = AtomicU64::new(0);
        for round in 0..200 {
            team.run(&|tid| {
                hits.fetch_add(1 << (tid * 16), Ordering::Relaxed);
                arrived.fetch_add(1, Ordering::Relaxed);
                team.barrier();
                // Nobody passes the barrier before all three arrived in this round.
                assert_eq!(arrived.load(Ordering::Relaxed), 3 * (round + 1));
                team.barrier();
            });
        }
        assert_eq!(
            hits.load(Ordering::Relaxed),
            200 + (200 << 16) + (200 << 32)
        );
    }

    #[test]
    fn a_panicking_job_is_reported_and_the_team_survives() {
        let team = Team::new(2);
        let r = catch_unwind(AssertUnwindSafe(|| {
            team.run(&|tid| {
                if tid == 1 {
                    panic!("boom");
                }
            })
        }));
        assert!(r.is_err());
        let ran = AtomicUsize::new(0);
        team.run(&|_| {
            ran.fetch_add(1, Ordering::Relaxed);
        });
        assert_eq!(ran.load(Ordering::Relaxed), 2);
    }
}
