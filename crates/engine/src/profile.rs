//! Where the CPU's share of a step goes, by sublayer: with `TANDEM_PROFILE=1` the CPU executor
//! adds each sublayer's wall time to a process-wide counter, and `tandem bench` prints the
//! split of the timed steps. Off, a span costs one relaxed load.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::OnceLock;
use std::time::Instant;

/// The CPU sublayers timed.
#[derive(Clone, Copy, Debug)]
pub enum Part {
    /// Norm, QKV projection, RoPE (S1).
    Qkv,
    /// Attention over the host KV cache, the append included (S2 + S3).
    Attention,
    /// Output projection into the residual (S4).
    Out,
    /// Norm and FC1 or gate/up with its activation (S5).
    Up,
    /// FC2 or down into the residual (S6).
    Down,
    /// Final norm, LM head.
    Head,
}

const PARTS: [(Part, &str); 6] = [
    (Part::Qkv, "norm+qkv"),
    (Part::Attention, "attention"),
    (Part::Out, "out proj"),
    (Part::Up, "norm+up"),
    (Part::Down, "down"),
    (Part::Head, "head"),
];

static NANOS: [AtomicU64; 6] = [const { AtomicU64::new(0) }; 6];
static PAUSED: AtomicBool = AtomicBool::new(false);

fn on() -> bool {
    static ON: OnceLock<bool> = OnceLock::new();
    *ON.get_or_init(|| platform::env::switch("TANDEM_PROFILE", false))
        && !PAUSED.load(Ordering::Relaxed)
}

/// Whether profiling was asked for (`TANDEM_PROFILE`).
pub fn enabled() -> bool {
    on()
}

/// Runs `f`, adding its wall time to `part` when profiling.
pub fn span<T>(part: Part, f: impl FnOnce() -> T) -> T {
    if !on() {
        return f();
    }
    let t = Instant::now();
    let r = f();
    NANOS[part as usize].fetch_add(t.elapsed().as_nanos() as u64, Ordering::Relaxed);
    r
}

/// Stops (or resumes) counting, e.g. around untimed warm-up steps.
pub fn pause(paused: bool) {
    PAUSED.store(paused, Ordering::Relaxed);
}

/// The counted seconds per part, in sublayer order, and resets them.
pub fn take() -> Vec<(&'static str, f64)> {
    PARTS
        .iter()
        .map(|&(p, name)| {
            (
                name,
                NANOS[p as usize].swap(0, Ordering::Relaxed) as f64 / 1e9,
            )
        })
        .collect()
}
