//! Compiles every `kernels/*.ispc` for the targets in `TARGETS` with ISPC's runtime dispatch,
//! archives the objects into one static library, and binds the generated headers with bindgen.
//!
//! ISPC is found, in order, at `$ISPC`, `$TANDEM_TOOLCHAIN/bin/ispc` (default toolchain folder
//! `/opt/tandem/toolchain`, where `ci/setup.sh` puts it), or `ispc` on PATH. Without it the build
//! fails and says how to get it: nothing is stubbed.

use std::env;
use std::path::{Path, PathBuf};
use std::process::Command;

/// ISPC targets, one object each plus the dispatcher.
const TARGETS: &str = "avx2-i32x8,avx512skx-x16";
/// Kernels also compiled for avx2 alone, their exports suffixed `_avx2` (`NAME_SUFFIX`), so that
/// `TANDEM_CPU_TIER=avx2` can force that path on a machine whose dispatch would pick avx512.
const FORCED_AVX2: &[&str] = &["paged_decode"];
/// Kernels also compiled for avx512 with `-DBF16DOT`, exports suffixed `_dot`: the build whose
/// hot dot products call the AVX512-BF16 C helpers of `kernels/*.c` (run where the CPU has
/// `vdpbf16ps`).
const BF16DOT: &[&str] = &["paged_decode"];
const MIN_VERSION: (u32, u32) = (1, 23);
const DEFAULT_TOOLCHAIN: &str = "/opt/tandem/toolchain";

fn find_ispc() -> PathBuf {
    if let Some(p) = env::var_os("ISPC") {
        return PathBuf::from(p);
    }
    let tc = env::var_os("TANDEM_TOOLCHAIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| DEFAULT_TOOLCHAIN.into());
    let p = tc.join("bin/ispc");
    if p.exists() {
        return p;
    }
    PathBuf::from("ispc")
}

fn version(ispc: &Path) -> Option<(u32, u32)> {
    let out = Command::new(ispc).arg("--version").output().ok()?;
    let s = String::from_utf8_lossy(&out.stdout);
    // "Intel(r) Implicit SPMD Program Compiler (Intel(r) ISPC), 1.26.0 (build ...)"
    let v = s.split("ISPC),").nth(1)?.split_whitespace().next()?;
    let mut it = v.split('.').map(|x| x.parse::<u32>().ok());
    Some((it.next()??, it.next()??))
}

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    println!("cargo:rerun-if-changed=kernels");
    println!("cargo:rerun-if-env-changed=ISPC");
    println!("cargo:rerun-if-env-changed=TANDEM_TOOLCHAIN");
    let out = PathBuf::from(env::var("OUT_DIR").unwrap());
    let ispc = find_ispc();
    match version(&ispc) {
        Some(v) if v >= MIN_VERSION => {}
        Some(v) => panic!(
            "ispc-kernels: {} is ISPC {}.{}, but {}.{} or later is needed. Run `sudo bash ci/setup.sh`, \
             or set ISPC to a newer ispc binary.",
            ispc.display(), v.0, v.1, MIN_VERSION.0, MIN_VERSION.1
        ),
        None => panic!(
            "ispc-kernels: the ISPC compiler was not found (tried $ISPC, $TANDEM_TOOLCHAIN/bin/ispc, \
             {DEFAULT_TOOLCHAIN}/bin/ispc, and `ispc` on PATH). Run `sudo bash ci/setup.sh`, which \
             installs it, or set ISPC to an ispc ≥ {}.{} binary.",
            MIN_VERSION.0, MIN_VERSION.1
        ),
    }

    let mut sources: Vec<PathBuf> = std::fs::read_dir("kernels")
        .expect("kernels/ folder")
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "ispc"))
        .collect();
    sources.sort();
    for f in std::fs::read_dir("kernels").unwrap().flatten() {
        println!("cargo:rerun-if-changed={}", f.path().display());
    }

    let mut objects = Vec::new();
    let mut headers = Vec::new();
    let compile = |src: &Path, obj: &Path, hdr: &Path, targets: &str, defines: &[&str]| {
        let status = Command::new(&ispc)
            .arg(src)
            .args(["-O3", "--pic", "--addressing=64", "--woff"])
            .arg(format!("--target={targets}"))
            .args(defines)
            .arg("-I")
            .arg("kernels")
            .arg("-o")
            .arg(obj)
            .arg("-h")
            .arg(hdr)
            .status()
            .unwrap_or_else(|e| panic!("ispc-kernels: could not run {}: {e}", ispc.display()));
        assert!(
            status.success(),
            "ispc-kernels: ISPC failed on {} ({targets})",
            src.display()
        );
    };
    for src in &sources {
        let stem = src.file_stem().unwrap().to_str().unwrap().to_string();
        let obj = out.join(format!("{stem}.o"));
        let hdr = out.join(format!("{stem}_ispc.h"));
        compile(src, &obj, &hdr, TARGETS, &[]);
        // With several targets ISPC writes `stem.o` (the dispatcher) and `stem_<isa>.o`.
        objects.push(obj);
        for isa in TARGETS.split(',').map(|t| t.split('-').next().unwrap()) {
            objects.push(out.join(format!("{stem}_{isa}.o")));
        }
        headers.push(hdr);
        // Single-target builds beside the dispatched one: (kernels, object suffix, target, flags).
        let extra: [(&[&str], &str, &str, &[&str]); 2] = [
            (
                FORCED_AVX2,
                "only_avx2",
                "avx2-i32x8",
                &["-DNAME_SUFFIX=_avx2"],
            ),
            (
                BF16DOT,
                "dot",
                "avx512skx-x16",
                &["-DNAME_SUFFIX=_dot", "-DBF16DOT"],
            ),
        ];
        for (kernels, suffix, target, flags) in extra {
            if kernels.contains(&stem.as_str()) {
                let obj = out.join(format!("{stem}_{suffix}.o"));
                let hdr = out.join(format!("{stem}_{suffix}_ispc.h"));
                compile(src, &obj, &hdr, target, flags);
                objects.push(obj);
                headers.push(hdr);
            }
        }
    }
    // C helpers for what ISPC cannot express (bf16 dot products); each function carries its own
    // `target` attribute, so the archive assumes nothing of the CPU.
    let mut c_sources: Vec<PathBuf> = std::fs::read_dir("kernels")
        .unwrap()
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "c"))
        .collect();
    c_sources.sort();
    let mut ar = cc::Build::new();
    ar.files(&c_sources)
        .opt_level(3)
        .flag_if_supported("-std=c11");
    for o in &objects {
        assert!(
            o.exists(),
            "ispc-kernels: ISPC did not write {}",
            o.display()
        );
        ar.object(o);
    }
    ar.compile("tandem_ispc");

    let mut b = bindgen::Builder::default()
        .layout_tests(false)
        .allowlist_function("ispc_.*");
    for h in &headers {
        b = b.header(h.to_str().unwrap());
    }
    b.generate()
        .expect("ispc-kernels: bindgen on the ISPC headers (libclang is installed by ci/setup.sh)")
        .write_to_file(out.join("ispc_sys.rs"))
        .unwrap();
}
