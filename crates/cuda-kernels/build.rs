//! Compiles every `kernels/**/*.cu` with nvcc into one fatbin embedded in the crate.
//!
//! The sources are compiled as one translation unit (a generated file that includes each of
//! them), so the fatbin is a single module loaded once. Consequence for kernel authors: helpers
//! that are not `extern "C"` kernels go in a namespace named after their file, or in a shared
//! `.cuh` with an include guard.
//!
//! nvcc is found, in order, at `$NVCC`, under `$TANDEM_TOOLCHAIN` (default
//! `/opt/tandem/toolchain`, where `ci/setup.sh` installs CUDA 13.0 from Python packages),
//! `/usr/local/cuda/bin/nvcc`, or on PATH. Its version must be 13.0.x: the GPU host's driver is
//! CUDA 13.0 and would reject code from a newer toolkit.

use std::env;
use std::path::{Path, PathBuf};
use std::process::Command;

/// SASS for each of these, plus PTX of `PTX_ARCH` for newer GPUs to JIT. Hopper gets the
/// arch-specific `90a` image (wgmma, in `__CUDA_ARCH_FEAT_SM90_ALL` blocks), which loads on
/// compute capability 9.0 only; the PTX is plain `compute_90`, so later GPUs JIT code without
/// those blocks (their kernels trap and the launchers never pick them there).
const SM_ARCHS: &[&str] = &["80", "86", "89", "90a"];
const PTX_ARCH: &str = "90";
const REQUIRED_VERSION: &str = "13.0";
const DEFAULT_TOOLCHAIN: &str = "/opt/tandem/toolchain";

fn find_nvcc() -> Option<PathBuf> {
    if let Some(p) = env::var_os("NVCC") {
        return Some(PathBuf::from(p));
    }
    let tc = env::var_os("TANDEM_TOOLCHAIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| DEFAULT_TOOLCHAIN.into());
    let candidates = [
        tc.join("bin/nvcc"),
        PathBuf::from("/usr/local/cuda/bin/nvcc"),
    ];
    if let Some(p) = candidates.into_iter().find(|p| p.exists()) {
        return Some(p);
    }
    let ok = Command::new("nvcc")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    ok.then(|| PathBuf::from("nvcc"))
}

fn cu_files(dir: &Path, out: &mut Vec<PathBuf>) {
    let mut entries: Vec<_> = std::fs::read_dir(dir)
        .expect("kernels/ folder")
        .flatten()
        .map(|e| e.path())
        .collect();
    entries.sort();
    for p in entries {
        if p.is_dir() {
            cu_files(&p, out);
        } else if p.extension().is_some_and(|x| x == "cu" || x == "cuh") {
            println!("cargo:rerun-if-changed={}", p.display());
            if p.extension().is_some_and(|x| x == "cu") {
                out.push(p);
            }
        }
    }
}

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    println!("cargo:rerun-if-changed=kernels");
    println!("cargo:rerun-if-env-changed=NVCC");
    println!("cargo:rerun-if-env-changed=TANDEM_TOOLCHAIN");
    let out = PathBuf::from(env::var("OUT_DIR").unwrap());
    let fatbin = out.join("tandem_kernels.fatbin");

    if env::var_os("CARGO_FEATURE_CUDA").is_none() {
        std::fs::write(&fatbin, b"").unwrap();
        return;
    }
    let Some(nvcc) = find_nvcc() else {
        panic!(
            "cuda-kernels: nvcc was not found (tried $NVCC, $TANDEM_TOOLCHAIN/bin/nvcc, \
             {DEFAULT_TOOLCHAIN}/bin/nvcc, /usr/local/cuda/bin/nvcc, PATH). Run `sudo bash ci/setup.sh` \
             to install CUDA {REQUIRED_VERSION} into {DEFAULT_TOOLCHAIN}, or build without GPU kernels \
             with `--no-default-features`."
        )
    };
    let v = Command::new(&nvcc)
        .arg("--version")
        .output()
        .expect("run nvcc --version");
    let vs = String::from_utf8_lossy(&v.stdout);
    if !vs.contains(&format!("release {REQUIRED_VERSION},"))
        && env::var_os("TANDEM_ANY_NVCC").is_none()
    {
        panic!(
            "cuda-kernels: {} is not CUDA {REQUIRED_VERSION} ({}); the GPU host's driver is CUDA \
             {REQUIRED_VERSION} and rejects newer code. Run `sudo bash ci/setup.sh`, or set \
             TANDEM_ANY_NVCC=1 to accept it for a driver you know is new enough.",
            nvcc.display(),
            vs.lines().last().unwrap_or("").trim()
        );
    }

    let kdir = PathBuf::from(env::var("CARGO_MANIFEST_DIR").unwrap()).join("kernels");
    let mut files = Vec::new();
    cu_files(&kdir, &mut files);
    let unity: String = files
        .iter()
        .map(|f| format!("#include \"{}\"\n", f.display()))
        .collect();
    let unity_path = out.join("tandem_kernels.cu");
    std::fs::write(&unity_path, unity).unwrap();

    let mut cmd = Command::new(&nvcc);
    cmd.arg("-fatbin")
        .args([
            "-O3",
            "-std=c++17",
            "--threads",
            "0",
            "-lineinfo",
            "-Xcudafe",
            "--diag_suppress=177",
        ])
        // Compressed images (the driver inflates them at load): the fatbin is embedded in every
        // test, bench and tool binary, and the GPU host's carry is 64 MiB.
        .arg("-Xfatbin=-compress-all")
        .arg("-I")
        .arg(&kdir);
    for sm in SM_ARCHS {
        cmd.arg(format!("-gencode=arch=compute_{sm},code=sm_{sm}"));
    }
    cmd.arg(format!(
        "-gencode=arch=compute_{PTX_ARCH},code=compute_{PTX_ARCH}"
    ));
    cmd.arg(&unity_path).arg("-o").arg(&fatbin);
    let status = cmd
        .status()
        .unwrap_or_else(|e| panic!("cuda-kernels: could not run {}: {e}", nvcc.display()));
    assert!(
        status.success(),
        "cuda-kernels: nvcc failed on kernels/ (see the errors above)"
    );
}
