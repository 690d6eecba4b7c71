//! The CPU thread pool: one rayon pool for every CPU kernel, one thread per physical core, each
//! pinned to its core (SMT siblings left idle: AMX and AVX-512 units are per core, and a
//! second thread per core only adds contention for them and for L2).
//!
//! Size: the physical cores this process may run on, or `TANDEM_THREADS` if set. Work goes to
//! it through [`install`], whose caller (outside the pool) spins until the work ends, or sleeps
//! with `TANDEM_POOL_WAIT=block`; after the work, the pool's threads linger, spinning, for the
//! next pass ([`linger_us`]).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::OnceLock;

/// One logical CPU id per physical core this process may run on, lowest sibling first.
pub fn physical_core_ids() -> Vec<usize> {
    let allowed: Vec<usize> = core_affinity::get_core_ids()
        .map(|ids| ids.into_iter().map(|c| c.id).collect())
        .unwrap_or_else(|| {
            (0..std::thread::available_parallelism()
                .map(|n| n.get())
                .unwrap_or(1))
                .collect()
        });
    let mut seen = std::collections::HashSet::new();
    let mut out = Vec::new();
    for &cpu in &allowed {
        let path = format!("/sys/devices/system/cpu/cpu{cpu}/topology/thread_siblings_list");
        let siblings = std::fs::read_to_string(path)
            .map(|s| crate::numa::parse_cpu_list(&s))
            .unwrap_or_else(|_| vec![cpu]);
        let key = siblings.iter().copied().min().unwrap_or(cpu);
        if seen.insert(key) {
            out.push(cpu);
        }
    }
    out
}

/// Threads of the shared pool.
pub fn pool_threads() -> usize {
    pool().current_num_threads()
}

/// The shared, pinned CPU pool. Built on first use.
pub fn pool() -> &'static rayon::ThreadPool {
    static POOL: OnceLock<rayon::ThreadPool> = OnceLock::new();
    POOL.get_or_init(|| {
        let cores = physical_core_ids();
        let n = crate::env::count("TANDEM_THREADS", 1..=4096).unwrap_or(cores.len().max(1));
        let pin = cores.clone();
        rayon::ThreadPoolBuilder::new()
            .num_threads(n)
            .thread_name(|i| format!("tandem-cpu-{i}"))
            .start_handler(move |i| {
                if !pin.is_empty() {
                    core_affinity::set_for_current(core_affinity::CoreId {
                        id: pin[i % pin.len()],
                    });
                }
            })
            .build()
            .expect("build the CPU thread pool")
    })
}

/// How a thread outside the pool waits for [`install`]'s work (`TANDEM_POOL_WAIT`, read once).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Wait {
    /// Asleep, as rayon's own `install` does: woken when the work ends. Where every core runs a
    /// pool thread, the woken caller may wait for a core as long as the scheduler's time slice.
    Block,
    /// Spinning on a flag, yielding the core now and then: back within microseconds of the
    /// work's end, at the cost of sharing a core with a pool thread while it waits.
    Spin,
}

impl Wait {
    /// The name `TANDEM_POOL_WAIT` takes.
    pub fn name(self) -> &'static str {
        match self {
            Wait::Block => "block",
            Wait::Spin => "spin",
        }
    }
}

/// The wait [`install`] uses: `TANDEM_POOL_WAIT=spin|block`, spin by default. On the GPU host,
/// OPT-30B at batch 64 ran 3.8 % and 8.7 % faster end to end spinning than asleep, in two
/// pairs run in both orders (the CPU's part of a step 4–9 % shorter); one host whose sleeping
/// callers took 0.9–2.6 ms to return after their work ended ran small GEMMs 2–6× slower (the
/// spinning wait did not exist yet there; docs/BENCHMARKS.md).
pub fn wait_mode() -> Wait {
    static W: OnceLock<Wait> = OnceLock::new();
    *W.get_or_init(|| {
        let choices = [("spin", Wait::Spin), ("block", Wait::Block)];
        crate::env::choice("TANDEM_POOL_WAIT", &choices, Wait::Spin)
    })
}

/// Runs `f` on the shared pool (inline where the caller is one of its threads) and returns its
/// result; a caller outside the pool waits as [`wait_mode`] says. A panic in `f` reaches the
/// caller.
pub fn install<R: Send>(f: impl FnOnce() -> R + Send) -> R {
    install_with(wait_mode(), f)
}

/// [`install`] with the caller's wait named (benches and tests compare the two in one process).
pub fn install_with<R: Send>(wait: Wait, f: impl FnOnce() -> R + Send) -> R {
    install_lingering(wait, linger_us(), f)
}

/// [`install_with`] with the pool's linger named (see [`linger_us`]).
pub fn install_lingering<R: Send>(wait: Wait, linger_us: u64, f: impl FnOnce() -> R + Send) -> R {
    let pool = pool();
    if pool.current_thread_index().is_some() {
        return pool.install(f);
    }
    // New work: threads lingering after the last pass stop spinning and take it.
    let epoch = EPOCH.fetch_add(1, Ordering::AcqRel) + 1;
    let out = match wait {
        Wait::Block => pool.install(f),
        Wait::Spin => install_spinning(f),
    };
    if linger_us > 0 {
        linger(pool, epoch, linger_us);
    }
    out
}

/// Passes handed to the pool from outside it so far: lingering threads watch it for the next.
static EPOCH: AtomicU64 = AtomicU64::new(0);

/// How long, in microseconds, each pool thread keeps spinning after a pass from outside the
/// pool has ended, ready for the next (`TANDEM_POOL_LINGER_US`, read once; default
/// [`LINGER_US`]; 0: not at all, rayon's sleep). rayon's idle threads go to sleep after some
/// tens of microseconds, and waking them costs the next pass: on the GPU host's 16 threads a
/// pass after a 200 µs gap took 47.8 µs more than the gap asleep and 17.2 µs lingering, and
/// OPT-30B at batch 64 ran its CPU layers 10–14 % faster lingering (docs/BENCHMARKS.md,
/// twentieth session). A lingering thread yields its core every 64 turns.
pub fn linger_us() -> u64 {
    static L: OnceLock<u64> = OnceLock::new();
    *L.get_or_init(|| {
        crate::env::count("TANDEM_POOL_LINGER_US", 0..=1_000_000).unwrap_or(LINGER_US as usize)
            as u64
    })
}

/// The default of [`linger_us`].
pub const LINGER_US: u64 = 500;

/// Has every pool thread spin for up to `us` microseconds, or until a pass after `epoch` is
/// handed over.
fn linger(pool: &rayon::ThreadPool, epoch: u64, us: u64) {
    pool.spawn_broadcast(move |_| {
        let end = std::time::Instant::now() + std::time::Duration::from_micros(us);
        spin_until(|| EPOCH.load(Ordering::Acquire) != epoch || std::time::Instant::now() >= end);
    });
}

/// Returns once `done()` is true, asking it in a spin loop that yields the core every 64
/// turns (so that a thread it waits for, sharing this core, gets to run).
pub fn spin_until(mut done: impl FnMut() -> bool) {
    let mut spins = 0u32;
    while !done() {
        spins = spins.wrapping_add(1);
        if spins.is_multiple_of(64) {
            std::thread::yield_now();
        } else {
            std::hint::spin_loop();
        }
    }
}

/// `f` handed to a pool thread as one job; the caller spins on its flag.
fn install_spinning<R: Send, F: FnOnce() -> R + Send>(f: F) -> R {
    use std::sync::atomic::AtomicBool;
    struct Job<F, R> {
        f: Option<F>,
        out: Option<std::thread::Result<R>>,
        done: AtomicBool,
    }
    /// # Safety
    /// `job` points at a live `Job<F, R>` that nothing else touches until `done` is set.
    unsafe fn run<R: Send, F: FnOnce() -> R + Send>(job: usize) {
        // SAFETY: the caller's contract.
        let job = unsafe { &mut *(job as *mut Job<F, R>) };
        let f = job.f.take().expect("the job runs once");
        // On a pool thread, so `install` runs `f` right here and its parallel parts on the pool.
        let out = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            crate::pool::pool().install(f)
        }));
        job.out = Some(out);
        job.done.store(true, Ordering::Release);
    }
    let mut job = Job {
        f: Some(f),
        out: None,
        done: AtomicBool::new(false),
    };
    let addr = &mut job as *mut Job<F, R> as usize;
    let done: *const AtomicBool = &job.done;
    let go: unsafe fn(usize) = run::<R, F>;
    // SAFETY: `job` lives on this frame, which does not return (nor unwind: the job catches
    // f's panic) before the job has set `done`, its last touch of `job`.
    pool().spawn(move || unsafe { go(addr) });
    // SAFETY: `done` points into `job`, alive on this frame; it is atomic.
    spin_until(|| unsafe { &*done }.load(Ordering::Acquire));
    match job
        .out
        .take()
        .expect("the job set its result before its flag")
    {
        Ok(r) => r,
        Err(panic) => std::panic::resume_unwind(panic),
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn pool_has_threads_and_runs_work() {
        let n = super::pool_threads();
        assert!(n >= 1);
        let s: u64 = super::pool().install(|| {
            use rayon::prelude::*;
            (0..1000u64).into_par_iter().sum()
        });
        assert_eq!(s, 499_500);
    }

    #[test]
    fn spinning_install_returns_results_and_panics() {
        use rayon::prelude::*;
        let data: Vec<u64> = (0..10_000).collect();
        let s: u64 = super::install_spinning(|| data.par_iter().sum());
        assert_eq!(s, data.iter().sum::<u64>());
        let caught = std::panic::catch_unwind(|| {
            super::install_spinning(|| -> u64 { panic!("inside the pool") })
        });
        let msg = caught.expect_err("the panic reaches the caller");
        assert_eq!(msg.downcast_ref::<&str>(), Some(&"inside the pool"));
    }

    /// Threads lingering after a pass leave for the next one: a pass handed over while every
    /// thread lingers (for up to 20 s) returns its result long before the linger would end.
    #[test]
    fn lingering_threads_take_the_next_pass() {
        use rayon::prelude::*;
        let data: Vec<u64> = (0..10_000).collect();
        let want = data.iter().sum::<u64>();
        for wait in [super::Wait::Spin, super::Wait::Block] {
            let s: u64 = super::install_lingering(wait, 20_000_000, || data.par_iter().sum());
            assert_eq!(s, want);
            let t = std::time::Instant::now();
            let s: u64 = super::install_lingering(wait, 0, || data.par_iter().sum());
            assert_eq!(s, want);
            assert!(
                t.elapsed() < std::time::Duration::from_secs(10),
                "the next pass waited for the lingering threads ({:?})",
                t.elapsed()
            );
        }
    }
}
