//! `tandem probe`: the machine's measured ceilings, saved as a profile that `bench` and `sweep`
//! use for rooflines.

use std::path::{Path, PathBuf};
use std::time::Instant;

use half::bf16;
use serde::{Deserialize, Serialize};

/// Measured ceilings, bytes/s and FLOP/s; 0 where the part is absent.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct Profile {
    pub host: String,
    pub cpu_tier: String,
    pub threads: usize,
    pub dram_read_bytes_s: f64,
    pub dram_copy_bytes_s: f64,
    pub cpu_gemm_bf16_flop_s: f64,
    /// The vector units' peak: 512-bit f32 FMAs on registers, all threads (0 without
    /// AVX-512F). The same host class's figure moves with the cores other tenants share.
    #[serde(default)]
    pub cpu_fma_f32_flop_s: f64,
    /// The tile unit's peak: `tdpbf16ps` on resident tiles, all threads (0 without AMX).
    #[serde(default)]
    pub cpu_amx_tdp_bf16_flop_s: f64,
    /// Weight bytes per second batch-1 CPU GEMVs stream (our kernel, weights past the L3, four
    /// layer-shaped linears back to back, mean of five layers): what a CPU layer reads at in
    /// decode, below the plain DRAM read.
    #[serde(default)]
    pub cpu_gemv_bytes_s: f64,
    /// FLOP/s of a 64-row CPU GEMM over the same weights: a batch-64 decode step's linears,
    /// between the GEMV's bandwidth and the large-M GEMM's compute rate.
    #[serde(default)]
    pub cpu_gemm_m64_flop_s: f64,
    /// FLOP/s of a 512-row CPU GEMM over the same weights (from DRAM): a large batch's decode
    /// linears, slower than the hot 2048-row GEMM above (0 in profiles from before it).
    #[serde(default)]
    pub cpu_gemm_m512_flop_s: f64,
    pub pcie_h2d_pinned_bytes_s: f64,
    pub pcie_d2h_pinned_bytes_s: f64,
    pub pcie_h2d_pageable_bytes_s: f64,
    /// Host memory read by the CPU and by the GPU's DMA at once (CPU parallel read of one
    /// buffer while pinned host→device copies of another run back to back), in total, and the
    /// two shares: a decode step with CPU layers and streamed layers draws on both, and where
    /// the memory channels cannot feed both at full rate this sum, not DRAM + PCIe, bounds it.
    #[serde(default)]
    pub host_read_with_h2d_bytes_s: f64,
    #[serde(default)]
    pub host_read_with_h2d_cpu_bytes_s: f64,
    #[serde(default)]
    pub host_read_with_h2d_dma_bytes_s: f64,
    /// FLOP/s of the 64-row CPU GEMM over the GEMV's weights (from DRAM) while the GPU's DMA
    /// copies pinned memory in, and the DMA's bytes/s meanwhile: a batch-64 decode step's CPU
    /// layers run beside its streamed layers' copies, and lose more to them than the plain read
    /// above does (0 without a GPU, or in profiles from before it).
    #[serde(default)]
    pub cpu_gemm_m64_with_h2d_flop_s: f64,
    #[serde(default)]
    pub cpu_gemm_m64_with_h2d_dma_bytes_s: f64,
    pub hbm_copy_bytes_s: f64,
    pub gpu_gemm_bf16_flop_s: f64,
    pub notes: Vec<String>,
}

pub fn default_path() -> PathBuf {
    let base = std::env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))
        .unwrap_or_else(|| PathBuf::from("."));
    base.join("tandem").join("profile.json")
}

/// The profile at `path`: `None` where nothing is, an error naming the file where something
/// is that cannot be read or is not a profile.
pub fn read(path: &Path) -> anyhow::Result<Option<Profile>> {
    let text = match std::fs::read_to_string(path) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(anyhow::anyhow!("profile {}: {e}", path.display())),
        Ok(t) => t,
    };
    serde_json::from_str(&text)
        .map(Some)
        .map_err(|e| anyhow::anyhow!("profile {}: not a tandem profile ({e})", path.display()))
}

/// [`read`], with every failure as `None`.
pub fn load(path: &Path) -> Option<Profile> {
    read(path).ok().flatten()
}

/// Whether `tandem probe` may write its profile to `path`: where nothing is, or where an
/// earlier profile is (re-probing replaces it); any other file, or a folder, is the user's and
/// is refused, naming it.
pub fn check_replaceable(path: &Path) -> anyhow::Result<()> {
    match std::fs::symlink_metadata(path) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(anyhow::anyhow!("{}: {e}", path.display())),
        Ok(m) if m.is_file() && load(path).is_some() => Ok(()),
        Ok(_) => Err(anyhow::anyhow!(
            "{} exists and is not a tandem profile; it is left as it is (pick another --profile path)",
            path.display()
        )),
    }
}

/// Writes `p` to `path` (after [`check_replaceable`]) through a temporary file in the same
/// folder, renamed over the old profile when complete, so that an interrupted write never
/// leaves a truncated profile behind.
pub fn save(path: &Path, p: &Profile) -> anyhow::Result<()> {
    check_replaceable(path)?;
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
        _ => PathBuf::from("."),
    };
    std::fs::create_dir_all(&dir).map_err(|e| anyhow::anyhow!("create {}: {e}", dir.display()))?;
    let name = path
        .file_name()
        .ok_or_else(|| anyhow::anyhow!("{}: not a file name", path.display()))?;
    let tmp = dir.join(format!(
        ".{}.{}.tmp",
        name.to_string_lossy(),
        std::process::id()
    ));
    std::fs::write(&tmp, serde_json::to_string_pretty(p)?)
        .map_err(|e| anyhow::anyhow!("{}: {e}", tmp.display()))?;
    std::fs::rename(&tmp, path).map_err(|e| {
        let _ = std::fs::remove_file(&tmp);
        anyhow::anyhow!("{}: {e}", path.display())
    })
}

fn best_of<F: FnMut()>(reps: usize, mut f: F) -> f64 {
    (0..reps)
        .map(|_| {
            let t = Instant::now();
            f();
            t.elapsed().as_secs_f64()
        })
        .fold(f64::MAX, f64::min)
}

/// Bytes for bandwidth probes: past any last-level cache (servers have up to ~0.5 GB), but at
/// most a quarter of free memory.
pub fn probe_bytes() -> usize {
    let free: u64 = platform::numa_nodes().iter().map(|n| n.mem_free).sum();
    (2usize << 30).min((free / 4) as usize).max(64 << 20)
}

/// FLOP/s of a compute ceiling (`f` runs it once and returns its operations), best of five
/// after one warm-up; 0 where this CPU lacks the unit.
fn compute_peak(mut f: impl FnMut() -> amx_kernels::Result<u64>) -> f64 {
    let Ok(flop) = f() else {
        return 0.0;
    };
    let t = best_of(5, || {
        let _ = f();
    });
    flop as f64 / t
}

pub fn run() -> anyhow::Result<Profile> {
    let mut p = Profile {
        host: std::fs::read_to_string("/proc/sys/kernel/hostname")
            .unwrap_or_default()
            .trim()
            .to_string(),
        cpu_tier: platform::cpu_tier().to_string(),
        threads: platform::pool_threads(),
        ..Default::default()
    };
    let bytes = probe_bytes();
    eprintln!(
        "probe: DRAM read over {:.1} GiB on {} threads",
        bytes as f64 / (1u64 << 30) as f64,
        p.threads
    );
    p.dram_read_bytes_s = platform::membw::read_bandwidth(bytes, 5);
    let src: Vec<u64> = vec![1; bytes / 16];
    let mut dst: Vec<u64> = vec![0; bytes / 16];
    platform::membw::parallel_copy(&mut dst, &src); // first touch
    let t = best_of(5, || platform::membw::parallel_copy(&mut dst, &src));
    p.dram_copy_bytes_s = 2.0 * (src.len() * 8) as f64 / t;
    drop((src, dst));

    eprintln!("probe: CPU compute peaks (512-bit FMA, AMX tile products)");
    p.cpu_fma_f32_flop_s = compute_peak(|| amx_kernels::gemm::ceiling::simd_fma_ceiling(1 << 16));
    p.cpu_amx_tdp_bf16_flop_s = compute_peak(|| {
        amx_kernels::gemm::ceiling::amx_ceiling(amx_kernels::gemm::ceiling::Ceiling::Tdp, 4096)
    });

    let (m, n, k) = (2048usize, 4096usize, 4096usize);
    eprintln!("probe: CPU bf16 GEMM {m}x{n}x{k} ({})", p.cpu_tier);
    let w: Vec<bf16> = (0..n * k)
        .map(|i| bf16::from_f32(((i % 251) as f32 - 125.0) / 1000.0))
        .collect();
    let a: Vec<bf16> = (0..m * k)
        .map(|i| bf16::from_f32(((i % 113) as f32 - 56.0) / 100.0))
        .collect();
    let pw = amx_kernels::PackedWeight::from_bf16(&w, n, k)?;
    let mut c = vec![0f32; m * n];
    amx_kernels::gemm_bf16(&a, m, k, &pw, &mut c, Default::default())?;
    let t = best_of(3, || {
        amx_kernels::gemm_bf16(&a, m, k, &pw, &mut c, Default::default()).unwrap()
    });
    p.cpu_gemm_bf16_flop_s = 2.0 * (m * n * k) as f64 / t;
    drop((w, a, pw, c));

    // Batch-1 GEMVs as a decode step runs them: weights of the probe size (past the last-level
    // cache) cut into a layer's four linears in a transformer's proportions (QKV 3, out 1,
    // up 4, down 4 parts of 12), one after the other, each its own parallel pass; the mean of
    // five such layers, not the best, since a decode step pays every pass's ramp and tail.
    let k = 8192usize;
    let n = (bytes / 2 / k).max(16);
    eprintln!(
        "probe: CPU bf16 GEMV over {:.1} GiB of weights, as four layer-shaped linears",
        (n * k * 2) as f64 / (1u64 << 30) as f64
    );
    let parts: Vec<usize> = [3usize, 1, 4, 4]
        .iter()
        .map(|&p| (n * p / 12).max(16))
        .collect();
    let mut linears = Vec::new();
    for &pn in &parts {
        let w: Vec<bf16> = (0..pn * k)
            .map(|i| bf16::from_f32(((i % 61) as f32 - 30.0) / 500.0))
            .collect();
        linears.push(amx_kernels::PackedWeight::from_bf16(&w, pn, k)?);
    }
    let x: Vec<bf16> = (0..k)
        .map(|i| bf16::from_f32(((i % 7) as f32 - 3.0) / 10.0))
        .collect();
    let mut y = vec![0f32; parts.iter().copied().max().unwrap_or(16)];
    let layer = |y: &mut [f32]| {
        for (pw, &pn) in linears.iter().zip(&parts) {
            amx_kernels::gemm_bf16(&x, 1, k, pw, &mut y[..pn], Default::default()).unwrap();
        }
    };
    layer(&mut y);
    let reps = 5;
    let t0 = Instant::now();
    for _ in 0..reps {
        layer(&mut y);
    }
    let t = t0.elapsed().as_secs_f64() / reps as f64;
    p.cpu_gemv_bytes_s = (parts.iter().sum::<usize>() * k * 2) as f64 / t;
    // The 64- and 512-row GEMMs over the largest linear (a third of the bytes, still past the
    // cache).
    let (pw, n) = (&linears[2], parts[2]);
    let rows_rate = |m: usize| -> anyhow::Result<f64> {
        let x: Vec<bf16> = (0..m * k)
            .map(|i| bf16::from_f32(((i % 7) as f32 - 3.0) / 10.0))
            .collect();
        let mut y = vec![0f32; m * n];
        let mut run = || amx_kernels::gemm_bf16(&x, m, k, pw, &mut y, Default::default());
        run()?;
        let t = best_of(3, || run().unwrap());
        Ok(2.0 * (m * n * k) as f64 / t)
    };
    p.cpu_gemm_m64_flop_s = rows_rate(64)?;
    p.cpu_gemm_m512_flop_s = rows_rate(512)?;

    // A batch-64 layer's four linears, one after the other (the GEMV's weights, from DRAM),
    // for the GPU probe to run beside its copies: returns the pass's FLOPs.
    let m = 64;
    let x64: Vec<bf16> = (0..m * k)
        .map(|i| bf16::from_f32(((i % 7) as f32 - 3.0) / 10.0))
        .collect();
    let y64 = std::sync::Mutex::new(vec![0f32; m * parts.iter().copied().max().unwrap_or(16)]);
    let layer64 = || -> u64 {
        let mut y = y64.lock().unwrap_or_else(|e| e.into_inner());
        for (pw, &pn) in linears.iter().zip(&parts) {
            amx_kernels::gemm_bf16(&x64, m, k, pw, &mut y[..m * pn], Default::default())
                .expect("64-row GEMM of the probe's own shapes");
        }
        2 * (m * parts.iter().sum::<usize>() * k) as u64
    };
    match cuda_kernels::Gpu::new(0) {
        Err(e) => p
            .notes
            .push(format!("no GPU ({e}): PCIe, HBM and GPU GEMM not measured")),
        Ok(gpu) => {
            if let Err(e) = gpu_ceilings(&gpu, &mut p, Some(&layer64)) {
                p.notes.push(format!("GPU probe failed: {e}"));
            }
        }
    }
    Ok(p)
}

/// What the measurements beside host-to-device copies share: the GPU copies `n` elements of
/// `pinned` to `dst` on `s`, again and again, while the CPU works (see [`beside_h2d`]).
struct H2dCopies<'a> {
    gpu: &'a cuda_kernels::Gpu,
    s: &'a std::sync::Arc<cudarc::driver::CudaStream>,
    pinned: &'a cuda_kernels::transfer::PinnedBuf<bf16>,
    dst: &'a mut cudarc::driver::CudaSlice<bf16>,
    n: usize,
}

/// The 64-row GEMM's rate while the GPU copies (see
/// [`Profile::cpu_gemm_m64_with_h2d_flop_s`]); `layer64` runs the GEMMs and returns their FLOPs.
fn gemm_with_h2d(
    h2d: &mut H2dCopies,
    p: &mut Profile,
    layer64: &(dyn Fn() -> u64 + Sync),
) -> anyhow::Result<()> {
    eprintln!("probe: CPU 64-row GEMM while the GPU copies pinned memory in");
    layer64(); // warm-up
               // The round with the fastest GEMM.
    let rounds = beside_h2d(h2d, layer64, p)?;
    if let Some(&(cpu, dma)) = rounds.iter().max_by(|x, y| x.0.total_cmp(&y.0)) {
        p.cpu_gemm_m64_with_h2d_flop_s = cpu;
        p.cpu_gemm_m64_with_h2d_dma_bytes_s = dma;
    }
    Ok(())
}

/// Times `f` (queued on `stream`) with CUDA events, best of `reps`, seconds.
fn time_gpu(
    gpu: &cuda_kernels::Gpu,
    stream: &cudarc::driver::CudaStream,
    reps: usize,
    mut f: impl FnMut() -> anyhow::Result<()>,
) -> anyhow::Result<f64> {
    f()?; // warm-up
    let mut best = f64::MAX;
    for _ in 0..reps {
        let (a, b) = (gpu.timing_event()?, gpu.timing_event()?);
        a.record(stream)?;
        f()?;
        b.record(stream)?;
        b.synchronize()?;
        best = best.min(a.elapsed_ms(&b)? as f64 / 1e3);
    }
    Ok(best)
}

/// HBM copy, PCIe both ways (pinned, and pageable host to device), the CPU's read beside the
/// H2D copies, cuBLAS bf16 GEMM; with `layer64`, also the 64-row CPU GEMM beside the copies
/// (see [`gemm_with_h2d`]), on the same pinned and device buffers.
pub fn gpu_ceilings(
    gpu: &std::sync::Arc<cuda_kernels::Gpu>,
    p: &mut Profile,
    layer64: Option<&(dyn Fn() -> u64 + Sync)>,
) -> anyhow::Result<()> {
    use cuda_kernels::transfer::{copy_blocks_d2h, copy_blocks_h2d, PinnedBuf};
    let s = gpu.new_stream()?;
    let n = (1usize << 30) / 2; // 1 GiB of bf16
    eprintln!("probe: HBM copy, PCIe H2D/D2H (pinned, pageable) over 1 GiB");
    let src = s.alloc_zeros::<bf16>(n)?;
    let mut dst = s.alloc_zeros::<bf16>(n)?;
    let t = time_gpu(gpu, &s, 5, || Ok(s.memcpy_dtod(&src, &mut dst)?))?;
    p.hbm_copy_bytes_s = 2.0 * (n * 2) as f64 / t;
    let mut pinned = PinnedBuf::<bf16>::alloc(gpu, n)?;
    let t = time_gpu(gpu, &s, 5, || {
        Ok(copy_blocks_h2d(&s, &pinned, &mut dst, n, &[(0, 0)])?)
    })?;
    p.pcie_h2d_pinned_bytes_s = (n * 2) as f64 / t;
    let t = time_gpu(gpu, &s, 5, || {
        Ok(copy_blocks_d2h(&s, &src, &mut pinned, n, &[(0, 0)])?)
    })?;
    p.pcie_d2h_pinned_bytes_s = (n * 2) as f64 / t;
    let mut h2d = H2dCopies {
        gpu,
        s: &s,
        pinned: &pinned,
        dst: &mut dst,
        n,
    };
    host_read_with_h2d(&mut h2d, p)?;
    if let Some(layer64) = layer64 {
        if let Err(e) = gemm_with_h2d(&mut h2d, p, layer64) {
            p.notes
                .push(format!("64-row GEMM beside H2D copies failed: {e}"));
        }
    }
    let pageable = vec![bf16::ZERO; n];
    let t = time_gpu(gpu, &s, 3, || Ok(s.memcpy_htod(&pageable, &mut dst)?))?;
    p.pcie_h2d_pageable_bytes_s = (n * 2) as f64 / t;
    drop((src, dst, pinned, pageable));

    let m = 8192usize;
    eprintln!("probe: cuBLAS bf16 GEMM {m}x{m}x{m}");
    let blas = cuda_kernels::gemm::Blas::new(gpu, s.clone())?;
    let x = s.alloc_zeros::<bf16>(m * m)?;
    let w = s.alloc_zeros::<bf16>(m * m)?;
    let mut y = s.alloc_zeros::<bf16>(m * m)?;
    let ep = cuda_kernels::gemm::Epilogue::None;
    let t = time_gpu(gpu, &s, 5, || {
        Ok(blas.linear_bf16(m, m, m, &x, &w, ep, false, &mut y)?)
    })?;
    p.gpu_gemm_bf16_flop_s = 2.0 * (m * m * m) as f64 / t;
    Ok(())
}

/// The CPU reads a probe-sized buffer pass after pass on the pool while the GPU copies pinned
/// memory in (see [`beside_h2d`]): the host memory's read by both at once.
fn host_read_with_h2d(h2d: &mut H2dCopies, p: &mut Profile) -> anyhow::Result<()> {
    let bytes = probe_bytes();
    eprintln!(
        "probe: CPU read of {:.1} GiB while the GPU copies pinned memory in",
        bytes as f64 / (1u64 << 30) as f64
    );
    let mut host =
        platform::mem::HostBuf::<u64>::zeroed(bytes / 8, platform::mem::MemTier::Pageable)?;
    host.iter_mut().enumerate().for_each(|(i, x)| *x = i as u64);
    let read = || {
        std::hint::black_box(platform::membw::parallel_read(std::hint::black_box(&host)));
        (host.len() * 8) as u64
    };
    // The round with the highest total.
    let rounds = beside_h2d(h2d, &read, p)?;
    if let Some(&(cpu, dma)) = rounds
        .iter()
        .max_by(|x, y| (x.0 + x.1).total_cmp(&(y.0 + y.1)))
    {
        p.host_read_with_h2d_bytes_s = cpu + dma;
        p.host_read_with_h2d_cpu_bytes_s = cpu;
        p.host_read_with_h2d_dma_bytes_s = dma;
    }
    Ok(())
}

/// Runs `pass` (CPU work on the pool, returning what it did: bytes, FLOPs) again and again on a
/// thread of its own, so that this one can watch the GPU, while the GPU copies sixteen times;
/// only the passes that began after the copies started and ended before
/// they finished count, so each side is measured under the other's load. Up to three rounds,
/// each (CPU work per second, DMA bytes per second); a round where fewer than two passes fit
/// inside the copies ends them, with a note in `p`.
fn beside_h2d(
    h2d: &mut H2dCopies,
    pass: &(dyn Fn() -> u64 + Sync),
    p: &mut Profile,
) -> anyhow::Result<Vec<(f64, f64)>> {
    use std::sync::atomic::{AtomicBool, Ordering};
    let (gpu, s, n) = (h2d.gpu, h2d.s, h2d.n);
    let copies = 16;
    let mut rounds = Vec::new();
    for _ in 0..3 {
        let stop = AtomicBool::new(false);
        let (passes, window) = std::thread::scope(|sc| -> anyhow::Result<_> {
            let worker = sc.spawn(|| {
                let mut passes = Vec::new();
                while !stop.load(Ordering::Relaxed) {
                    let t0 = Instant::now();
                    let done = pass();
                    passes.push((t0, Instant::now(), done));
                }
                passes
            });
            // Let the worker get going, then copy, and note when the copies ran on the host's
            // clock (polled every 100 µs).
            std::thread::sleep(std::time::Duration::from_millis(30));
            let (a, b) = (gpu.timing_event()?, gpu.timing_event()?);
            a.record(s)?;
            for _ in 0..copies {
                cuda_kernels::transfer::copy_blocks_h2d(s, h2d.pinned, h2d.dst, n, &[(0, 0)])?;
            }
            b.record(s)?;
            let poll = |e: &cudarc::driver::CudaEvent| -> anyhow::Result<Instant> {
                while !e.try_is_complete()? {
                    std::thread::sleep(std::time::Duration::from_micros(100));
                }
                Ok(Instant::now())
            };
            let started = poll(&a);
            let ended = poll(&b);
            stop.store(true, Ordering::Relaxed);
            let passes = worker.join().expect("probe worker thread");
            let dma_s = a.elapsed_ms(&b)? as f64 / 1e3;
            Ok((passes, (started?, ended?, dma_s)))
        })?;
        let (started, ended, dma_s) = window;
        let inside: Vec<_> = passes
            .iter()
            .filter(|(t0, t1, _)| *t0 >= started && *t1 <= ended)
            .collect();
        if inside.len() < 2 {
            p.notes.push(format!(
                "beside H2D copies: {} CPU passes inside the {:.0} ms of copies; round not counted",
                inside.len(),
                dma_s * 1e3
            ));
            break;
        }
        let cpu_s = inside.last().unwrap().1 - inside[0].0;
        let work: u64 = inside.iter().map(|x| x.2).sum();
        let cpu = work as f64 / cpu_s.as_secs_f64();
        let dma = (copies * n * 2) as f64 / dma_s;
        rounds.push((cpu, dma));
    }
    Ok(rounds)
}

pub fn print(p: &Profile) {
    let gbs = |x: f64| {
        if x > 0.0 {
            format!("{:8.1} GB/s", x / 1e9)
        } else {
            "       —".into()
        }
    };
    let tfs = |x: f64| {
        if x > 0.0 {
            format!("{:8.2} TFLOP/s", x / 1e12)
        } else {
            "       —".into()
        }
    };
    println!(
        "DRAM read ({} threads)    {}",
        p.threads,
        gbs(p.dram_read_bytes_s)
    );
    println!("DRAM copy (read+write)    {}", gbs(p.dram_copy_bytes_s));
    println!(
        "CPU GEMM bf16 ({:10}) {}",
        p.cpu_tier,
        tfs(p.cpu_gemm_bf16_flop_s)
    );
    println!("CPU FMA f32 peak (512-bit){}", tfs(p.cpu_fma_f32_flop_s));
    println!(
        "CPU AMX bf16 tile peak    {}",
        tfs(p.cpu_amx_tdp_bf16_flop_s)
    );
    println!("CPU GEMV bf16, batch 1    {}", gbs(p.cpu_gemv_bytes_s));
    println!("CPU GEMM bf16, 64 rows    {}", tfs(p.cpu_gemm_m64_flop_s));
    println!("CPU GEMM bf16, 512 rows   {}", tfs(p.cpu_gemm_m512_flop_s));
    println!(
        "PCIe H2D pinned           {}",
        gbs(p.pcie_h2d_pinned_bytes_s)
    );
    println!(
        "PCIe D2H pinned           {}",
        gbs(p.pcie_d2h_pinned_bytes_s)
    );
    println!(
        "PCIe H2D pageable         {}",
        gbs(p.pcie_h2d_pageable_bytes_s)
    );
    if p.host_read_with_h2d_bytes_s > 0.0 {
        println!(
            "host read with H2D        {} (CPU {} + DMA {})",
            gbs(p.host_read_with_h2d_bytes_s),
            gbs(p.host_read_with_h2d_cpu_bytes_s).trim(),
            gbs(p.host_read_with_h2d_dma_bytes_s).trim()
        );
    }
    if p.cpu_gemm_m64_with_h2d_flop_s > 0.0 {
        println!(
            "CPU GEMM 64 rows with H2D {} (DMA {})",
            tfs(p.cpu_gemm_m64_with_h2d_flop_s),
            gbs(p.cpu_gemm_m64_with_h2d_dma_bytes_s).trim()
        );
    }
    println!("HBM copy (read+write)     {}", gbs(p.hbm_copy_bytes_s));
    println!("GPU GEMM bf16             {}", tfs(p.gpu_gemm_bf16_flop_s));
    for n in &p.notes {
        println!("note: {n}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `tandem probe` writes where nothing is and over an earlier profile, and refuses any other
    /// file or a folder, leaving it as it was; the write leaves no temporary file behind.
    #[test]
    fn probe_replaces_only_a_profile() {
        let dir = std::env::temp_dir().join(format!("tandem-probe-save-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let p = Profile {
            dram_read_bytes_s: 123e9,
            ..Default::default()
        };

        let fresh = dir.join("sub").join("profile.json");
        check_replaceable(&fresh).unwrap();
        save(&fresh, &p).unwrap();
        assert_eq!(load(&fresh).unwrap().dram_read_bytes_s, 123e9);
        let again = Profile {
            dram_read_bytes_s: 7e9,
            ..Default::default()
        };
        save(&fresh, &again).unwrap();
        assert_eq!(load(&fresh).unwrap().dram_read_bytes_s, 7e9);
        let left: Vec<_> = std::fs::read_dir(fresh.parent().unwrap())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(left, vec![std::ffi::OsString::from("profile.json")]);

        let mine = dir.join("notes.json");
        std::fs::write(&mine, "{\"my\": \"data\"}").unwrap();
        for path in [&mine, &dir] {
            let e = check_replaceable(path).unwrap_err().to_string();
            assert!(e.contains("not a tandem profile"), "{e}");
            let e = save(path, &p).unwrap_err().to_string();
            assert!(e.contains(&path.display().to_string()), "{e}");
        }
        assert_eq!(
            std::fs::read_to_string(&mine).unwrap(),
            "{\"my\": \"data\"}"
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }

    /// `read` tells a missing profile (`None`: bench and sweep measure now) from a file that
    /// is there but is not a profile (an error naming it and what was wrong), and reads a
    /// saved one back.
    #[test]
    fn read_tells_missing_from_unreadable() {
        let dir = std::env::temp_dir().join(format!("tandem-probe-read-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        assert!(read(&dir.join("none.json")).unwrap().is_none());
        for (name, text) in [("cut.json", "{\"dram_read"), ("other.json", "{}")] {
            let f = dir.join(name);
            std::fs::write(&f, text).unwrap();
            let e = read(&f).unwrap_err().to_string();
            assert!(
                e.contains(&f.display().to_string()) && e.contains("not a tandem profile"),
                "{e}"
            );
            assert!(load(&f).is_none());
        }
        let e = read(&dir).unwrap_err().to_string();
        assert!(e.contains(&dir.display().to_string()), "{e}");
        let f = dir.join("p.json");
        let p = Profile {
            dram_read_bytes_s: 99e9,
            ..Default::default()
        };
        save(&f, &p).unwrap();
        assert_eq!(read(&f).unwrap().unwrap().dram_read_bytes_s, 99e9);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
