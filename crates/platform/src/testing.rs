//! Skipping tests honestly.
//!
//! A test that needs hardware this machine lacks calls [`skip_unless`]: it prints why it skips
//! (so the log shows it), and returns false. On a machine that must run it (the GPU host's test
//! run sets `TANDEM_REQUIRE=amx,gpu`), a missing feature is a failure instead of a skip.

/// Returns true when the test may go on. `what` is a short feature name (`amx`, `gpu`, `avx512`),
/// `why` the reason it is missing.
pub fn skip_unless(available: bool, what: &str, why: &str) -> bool {
    if available {
        return true;
    }
    let test = std::thread::current().name().unwrap_or("?").to_string();
    let required = std::env::var("TANDEM_REQUIRE")
        .map(|v| v.split(',').any(|f| f.trim().eq_ignore_ascii_case(what)))
        .unwrap_or(false);
    if required {
        panic!("{test}: needs {what}, which TANDEM_REQUIRE demands, but: {why}");
    }
    // Straight to the process's stderr: the test harness captures `eprintln!` of passing tests,
    // and a skip must be seen.
    use std::io::Write;
    let _ = writeln!(std::io::stderr(), "SKIP {test}: needs {what}: {why}");
    false
}

/// For tests of AMX code: true when AMX tiles can be used here.
pub fn amx_or_skip() -> bool {
    let c = crate::cpu_caps();
    let why = if !c.amx_tile {
        "this CPU has no AMX (CPUID leaf 7 EDX bit 24 clear)".to_string()
    } else {
        c.amx_refused
            .clone()
            .unwrap_or_else(|| "AMX permission not granted".into())
    };
    skip_unless(c.best_tier() == crate::CpuTier::Amx, "amx", &why)
}

/// For tests of a given CPU tier's code path.
pub fn tier_or_skip(tier: crate::CpuTier) -> bool {
    if tier == crate::CpuTier::Amx {
        return amx_or_skip();
    }
    skip_unless(
        tier.available(),
        tier.name(),
        &format!("this CPU lacks the {tier} instructions"),
    )
}
