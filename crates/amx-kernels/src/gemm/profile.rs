//! Where the time of the pool's GEMM calls goes, with `TANDEM_AMX_PROFILE=1` (off by default:
//! then each call and item pays one check of a flag read once).
//!
//! Per call it adds up: preparing A (quantizing it, or copying it into the tile panel; also its
//! jobs' time summed over the threads, and the process's minor page faults meanwhile), the
//! work run on the pool (from handing it over to its return), within that the time until the
//! first item starts (waking the pool) and after the last one ends (the join), and per item the
//! kernel's time and the tail of a block (adding its K slices, finishing and the epilogue).
//! Per call it also keeps, for each pool thread, when it began its first item and how long its
//! kernels took: the latest such start and the busiest thread's kernels tell a late thread from
//! an uneven split. [`take`] returns the sums since the last call and clears them; the benches
//! print them per cell. The kernels' busy fraction, `kernel / (threads × run)`, tells idle
//! threads (too few items, an uneven split, waking) from slow kernels.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::OnceLock;
use std::time::Instant;

/// Whether `TANDEM_AMX_PROFILE=1` (read once).
pub fn enabled() -> bool {
    static ON: OnceLock<bool> = OnceLock::new();
    *ON.get_or_init(|| platform::env::switch("TANDEM_AMX_PROFILE", false))
}

/// Sums over the calls since the last [`take`] (nanoseconds, but the counts).
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Breakdown {
    /// Calls that ran on the pool.
    pub calls: u64,
    /// Items (blocks, or blocks × K slices) of those calls.
    pub items: u64,
    /// Preparing A: quantizing (int8) or copying it into the tile panel.
    pub prep_ns: u64,
    /// Preparing A, its jobs' time summed over the threads (the work, without waiting).
    pub prep_work_ns: u64,
    /// Where the blocks' items run A's jobs (`TANDEM_AMX_PREP=items`): the items' time in
    /// them, running jobs or waiting for them, summed over the threads.
    pub prep_items_ns: u64,
    /// Minor page faults of the process while A was prepared.
    pub prep_faults: u64,
    /// Minor page faults of the process while the pool ran the items.
    pub run_faults: u64,
    /// The pool's part of the calls, from handing the items over to the return.
    pub run_ns: u64,
    /// From handing over to the first item's start.
    pub wake_ns: u64,
    /// From the last item's end to the return.
    pub join_ns: u64,
    /// The items' kernels, summed over the threads.
    pub kernel_ns: u64,
    /// The blocks' tails (K slices added, finish, epilogue), summed over the threads.
    pub tail_ns: u64,
    /// From handing over to the start of the last pool thread to begin an item.
    pub late_ns: u64,
    /// The kernels of the busiest thread (the one whose kernels took longest in its call).
    pub max_kernel_ns: u64,
    /// Pool threads that ran at least one item.
    pub threads: u64,
}

impl Breakdown {
    /// The kernels' share of the pool's time: `kernel / (threads × run)`.
    pub fn busy(&self, threads: usize) -> f64 {
        self.kernel_ns as f64 / (threads as f64 * self.run_ns.max(1) as f64)
    }

    /// One line of per-call means (µs) and the busy fraction on `threads` threads.
    pub fn line(&self, threads: usize) -> String {
        let per = |ns: u64| ns as f64 / 1e3 / self.calls.max(1) as f64;
        format!(
            "calls {} items/call {:.1} prep {:.1} us (work {:.1}, in items {:.1}, faults {:.1}) run {:.1} us \
             (wake {:.1}, join {:.1}, faults {:.1}) kernel {:.1} us tail {:.1} us (thread-sums) last start {:.1} us busiest kernels \
             {:.1} us threads {:.1} busy {:.3}",
            self.calls,
            self.items as f64 / self.calls.max(1) as f64,
            per(self.prep_ns),
            per(self.prep_work_ns),
            per(self.prep_items_ns),
            self.prep_faults as f64 / self.calls.max(1) as f64,
            per(self.run_ns),
            per(self.wake_ns),
            per(self.join_ns),
            self.run_faults as f64 / self.calls.max(1) as f64,
            per(self.kernel_ns),
            per(self.tail_ns),
            per(self.late_ns),
            per(self.max_kernel_ns),
            self.threads as f64 / self.calls.max(1) as f64,
            self.busy(threads)
        )
    }
}

/// One sum per [`Field`].
const FIELDS: usize = Field::Threads as usize + 1;

struct Sums([AtomicU64; FIELDS]);

static SUMS: Sums = Sums([const { AtomicU64::new(0) }; FIELDS]);

/// The sums [`take`] reads (`Threads` last: [`FIELDS`] counts on it).
#[derive(Clone, Copy)]
pub(crate) enum Field {
    Calls = 0,
    Items,
    Prep,
    PrepWork,
    PrepItems,
    PrepFaults,
    RunFaults,
    Run,
    Wake,
    Join,
    Kernel,
    Tail,
    Late,
    MaxKernel,
    Threads,
}

/// Adds `v` to `field`.
pub(crate) fn add(field: Field, v: u64) {
    SUMS.0[field as usize].fetch_add(v, Ordering::Relaxed);
}

/// The sums since the last call, cleared.
pub fn take() -> Breakdown {
    let t = |f: Field| SUMS.0[f as usize].swap(0, Ordering::Relaxed);
    Breakdown {
        calls: t(Field::Calls),
        items: t(Field::Items),
        prep_ns: t(Field::Prep),
        prep_work_ns: t(Field::PrepWork),
        prep_items_ns: t(Field::PrepItems),
        prep_faults: t(Field::PrepFaults),
        run_faults: t(Field::RunFaults),
        run_ns: t(Field::Run),
        wake_ns: t(Field::Wake),
        join_ns: t(Field::Join),
        kernel_ns: t(Field::Kernel),
        tail_ns: t(Field::Tail),
        late_ns: t(Field::Late),
        max_kernel_ns: t(Field::MaxKernel),
        threads: t(Field::Threads),
    }
}

/// A start time where profiling is on.
#[derive(Clone, Copy)]
pub(crate) struct Mark(Option<Instant>);

impl Mark {
    pub(crate) fn now() -> Mark {
        Mark(enabled().then(Instant::now))
    }

    /// Nanoseconds since the mark (0 where profiling is off).
    pub(crate) fn ns(&self) -> u64 {
        self.0.map_or(0, |t| t.elapsed().as_nanos() as u64)
    }

    /// Adds the time since the mark to `field`, where profiling is on.
    pub(crate) fn add_to(&self, field: Field) {
        if self.0.is_some() {
            add(field, self.ns());
        }
    }
}

/// The process's minor page faults at a point, where profiling is on.
#[derive(Clone, Copy)]
pub(crate) struct Faults(Option<u64>);

impl Faults {
    pub(crate) fn now() -> Faults {
        Faults(enabled().then(platform::mem::minor_faults))
    }

    /// Adds the faults since this point to `field`, where profiling is on.
    pub(crate) fn add_to(&self, field: Field) {
        if let Some(f0) = self.0 {
            add(field, platform::mem::minor_faults().saturating_sub(f0));
        }
    }
}

/// Pool threads a run's per-thread figures are kept for (threads past it are left out).
const THREAD_SLOTS: usize = 256;

/// One pool thread's part of a run.
struct ThreadSlot {
    /// Its first item's start, nanoseconds after the hand-over (`u64::MAX`: none).
    start: AtomicU64,
    /// Its kernels' time.
    kernel: AtomicU64,
}

/// One pool run's first item start and last item end, nanoseconds after its hand-over, and
/// (profiling on) each pool thread's first start and kernel time.
pub(crate) struct Span {
    first: AtomicU64,
    last: AtomicU64,
    threads: Option<Box<[ThreadSlot]>>,
}

impl Span {
    pub(crate) fn new() -> Span {
        Span {
            first: AtomicU64::new(u64::MAX),
            last: AtomicU64::new(0),
            threads: enabled().then(|| {
                (0..THREAD_SLOTS)
                    .map(|_| ThreadSlot {
                        start: AtomicU64::new(u64::MAX),
                        kernel: AtomicU64::new(0),
                    })
                    .collect()
            }),
        }
    }

    /// The calling pool thread's slot, where profiling is on.
    fn slot(&self) -> Option<&ThreadSlot> {
        let threads = self.threads.as_ref()?;
        threads.get(rayon::current_thread_index().unwrap_or(THREAD_SLOTS - 1))
    }

    /// An item starts (`t0`: its run's hand-over).
    pub(crate) fn start(&self, t0: &Mark) {
        if t0.0.is_some() {
            let now = t0.ns();
            self.first.fetch_min(now, Ordering::Relaxed);
            if let Some(slot) = self.slot() {
                slot.start.fetch_min(now, Ordering::Relaxed);
            }
        }
    }

    /// An item's kernel, begun at `t`, has ended.
    pub(crate) fn kernel(&self, t: &Mark) {
        if t.0.is_some() {
            let ns = t.ns();
            add(Field::Kernel, ns);
            if let Some(slot) = self.slot() {
                slot.kernel.fetch_add(ns, Ordering::Relaxed);
            }
        }
    }

    /// An item ends.
    pub(crate) fn end(&self, t0: &Mark) {
        if t0.0.is_some() {
            self.last.fetch_max(t0.ns(), Ordering::Relaxed);
        }
    }

    /// Books a run that began at `t0` (a [`Mark`] taken with profiling on): its wake, join and
    /// whole time, its items, and its threads' latest start and longest kernels.
    pub(crate) fn book(&self, t0: &Mark, items: usize) {
        if t0.0.is_none() {
            return;
        }
        let run = t0.ns();
        let first = self.first.load(Ordering::Relaxed).min(run);
        let last = self.last.load(Ordering::Relaxed).min(run);
        add(Field::Calls, 1);
        add(Field::Items, items as u64);
        add(Field::Run, run);
        add(Field::Wake, first);
        add(Field::Join, run - last);
        if let Some(threads) = &self.threads {
            let started = threads
                .iter()
                .map(|t| t.start.load(Ordering::Relaxed))
                .filter(|&s| s != u64::MAX);
            let (mut n, mut late) = (0, 0);
            for s in started {
                n += 1;
                late = late.max(s.min(run));
            }
            let busiest = threads.iter().map(|t| t.kernel.load(Ordering::Relaxed));
            add(Field::Threads, n);
            add(Field::Late, late);
            add(Field::MaxKernel, busiest.max().unwrap_or(0));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn breakdown_line_reads_means_per_call() {
        let b = Breakdown {
            calls: 2,
            items: 8,
            prep_ns: 2_000,
            prep_work_ns: 16_000,
            prep_items_ns: 0,
            prep_faults: 6,
            run_faults: 0,
            run_ns: 10_000,
            wake_ns: 1_000,
            join_ns: 600,
            kernel_ns: 32_000,
            tail_ns: 4_000,
            late_ns: 3_000,
            max_kernel_ns: 9_000,
            threads: 8,
        };
        assert!((b.busy(4) - 0.8).abs() < 1e-12);
        let line = b.line(4);
        assert!(line.contains("items/call 4.0"), "{line}");
        assert!(
            line.contains(
                "prep 1.0 us (work 8.0, in items 0.0, faults 3.0) run 5.0 us (wake 0.5, join 0.3, faults 0.0)"
            ),
            "{line}"
        );
        assert!(
            line.contains("last start 1.5 us busiest kernels 4.5 us threads 4.0"),
            "{line}"
        );
        assert!(line.contains("busy 0.800"), "{line}");
    }
}
