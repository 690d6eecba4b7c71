//! The CPU thread pool: one rayon pool for every CPU kernel, one thread per physical core, each
//! pinned to its core (SMT siblings left idle: AMX and AVX-512 units are per core, and a
//! second thread per core only adds contention for them and for L2).
//!
//! Size: the physical cores this process may run on, or `TANDEM_THREADS` if set.

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
        let n = std::env::var("TANDEM_THREADS")
            .ok()
            .and_then(|v| v.parse::<usize>().ok())
            .filter(|&n| n > 0)
            .unwrap_or(cores.len().max(1));
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
}
