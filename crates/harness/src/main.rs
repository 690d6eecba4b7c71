//! `tandem`: the command line.

mod probe;
mod sweep;

use std::path::{Path, PathBuf};

use anyhow::{bail, Context};
use clap::{Args, Parser, Subcommand};
use engine::bench::{BenchResult, Roofline};
use engine::caps::Capabilities;
use engine::config::ModelConfig;
use engine::placement::{LayerOverride, Policy};
use engine::plan::{Plan, RunSpec};
use engine::weights::Weights;
use indicatif::{ProgressBar, ProgressStyle};
use platform::MemTier;

#[derive(Parser)]
#[command(
    name = "tandem",
    version,
    about = "One LLM on one GPU host, with the CPU as a full partner (LIA + NEO)."
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// What this machine offers: CPU features and kernel tier, NUMA nodes, GPUs.
    Info {
        /// Print JSON instead of the table.
        #[arg(long)]
        json: bool,
    },
    /// Measure the machine's ceilings (DRAM, PCIe, HBM, CPU and GPU GEMM) and save a profile.
    Probe {
        /// Where to save the profile (default: ~/.cache/tandem/profile.json).
        #[arg(long)]
        profile: Option<PathBuf>,
    },
    /// Offline generation benchmark with LIA's flags: prefill then greedy decode.
    Bench(BenchArgs),
    /// A resumable grid of bench runs with a CSV and plots.
    Sweep(sweep::SweepArgs),
}

#[derive(Args, Debug)]
pub struct BenchArgs {
    /// Model: a preset (opt-1.3b ... opt-175b, llama2-7b, llama3-8b, llama3-70b; dummy weights)
    /// or a folder with an HF config.json and safetensors. Default: sized to this machine.
    #[arg(short = 'm', long)]
    model: Option<String>,
    #[arg(long, default_value_t = 32)]
    input_tokens: usize,
    #[arg(long, default_value_t = 32)]
    max_new_tokens: usize,
    #[arg(long, default_value_t = 1)]
    batch_size: usize,
    #[arg(long, default_value_t = 3)]
    num_iter: usize,
    #[arg(long, default_value_t = 1)]
    num_warmup: usize,
    /// Print every decode step's latency.
    #[arg(long)]
    token_latency: bool,
    /// 0 (full GPU), 1 (full CPU), 2 (attention on CPU) or six 0/1 flags, S1..S6, 1 = CPU.
    #[arg(long)]
    prefill_policy: Option<String>,
    #[arg(long, alias = "decode-policy")]
    decoding_policy: Option<String>,
    /// Percentage of layers (the first ones) whose weights stay on the GPU (0 to 100; a value
    /// outside is refused by the placement, negative ones included, by name).
    #[arg(long, allow_negative_numbers = true)]
    gpu_percentage: Option<f64>,
    #[arg(long, default_value_t = 1)]
    num_minibatch: usize,
    /// With the automatic split: `adaptive` makes every host layer a split layer (packed for
    /// the CPU; streamed ones unpacked on the GPU from that layout) and rebalances them between
    /// the CPU and PCIe after every decode step from the step's measured times; `fixed` keeps
    /// the first split; `plain` is LIA's static split with plain streamed layers. By default:
    /// `adaptive` while a layer's KV is small against its weights (CPU layers attending on the
    /// host) and, past that (CPU layers attending on the GPU), where the CPU takes at least a
    /// third of the host layers (batch 64 on OPT-30B); `plain` where PCIe carries most of them
    /// (batch 512), which would pay the unpacking on its copy stream.
    #[arg(long, value_enum)]
    split_steps: Option<SplitSteps>,
    /// Keep host weights in pinned memory (for PCIe streaming).
    #[arg(long)]
    pin_weight: bool,
    /// Where non-resident weights live: pageable, pinned or numa:N.
    #[arg(long, default_value = "pageable")]
    weights_tier: String,
    /// LIA's CXL switch: weights on the NUMA node given by --cxl-node.
    #[arg(long)]
    enable_cxl: bool,
    #[arg(long)]
    cxl_node: Option<u32>,
    /// Per-layer override, repeatable: [prefill@|decode@]A-B:POLICY, e.g. 24-47:1.
    #[arg(long)]
    layer_policy: Vec<String>,
    /// Seed of the synthetic prompts and dummy weights.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Where to write the JSON result (must not exist). Default: results/bench-<model>-<time>.json.
    #[arg(long)]
    json: Option<PathBuf>,
    /// Measured ceilings for the roofline (from `tandem probe`).
    #[arg(long)]
    profile: Option<PathBuf>,
}

fn default_model(caps: &Capabilities) -> &'static str {
    // With a GPU: LLaMA-3-8B (16 GB of bf16) resident on it if it fits with room for KV;
    // otherwise a model that decodes at a few tokens per second on a small CPU machine.
    match caps.gpus.first() {
        Some(g) if g.free_mem > 24 << 30 => "llama3-8b",
        _ => "opt-1.3b",
    }
}

/// Set while a sweep runs configurations: their own progress bars and plan lines stay hidden.
static QUIET: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

fn quiet() -> bool {
    QUIET.load(std::sync::atomic::Ordering::Relaxed)
}

fn bar(len: u64, what: &str) -> ProgressBar {
    if quiet() {
        return ProgressBar::hidden();
    }
    let pb = ProgressBar::new(len);
    pb.set_style(
        ProgressStyle::with_template("{msg:24} [{bar:40}] {pos}/{len} {elapsed}")
            .unwrap()
            .progress_chars("=> "),
    );
    pb.set_message(what.to_string());
    pb
}

fn load_weights(model: &str, tier: MemTier, seed: u64) -> anyhow::Result<Weights> {
    let (cfg, folder) = model_source(model)?;
    if folder {
        let pb = bar(cfg.layers as u64, "loading weights");
        let w = Weights::load(Path::new(model), tier, &|l| pb.set_position(l as u64))?;
        pb.finish();
        return Ok(w);
    }
    let pb = bar(cfg.layers as u64, "dummy weights");
    let w = Weights::dummy(&cfg, tier, seed, &|l| pb.set_position(l as u64))?;
    pb.finish();
    Ok(w)
}

fn model_config(model: &str) -> anyhow::Result<ModelConfig> {
    Ok(model_source(model)?.0)
}

/// The configuration `-m` names, and whether it is a checkpoint folder (else a preset). A
/// folder without `config.json`, or a path that names no folder, is an error saying so.
fn model_source(model: &str) -> anyhow::Result<(ModelConfig, bool)> {
    let path = Path::new(model);
    if path.join("config.json").exists() {
        return Ok((ModelConfig::from_file(&path.join("config.json"))?, true));
    }
    if path.exists() {
        bail!("{model}: a folder without config.json; expected an HF checkpoint folder or a preset name");
    }
    if model.contains(std::path::MAIN_SEPARATOR) || model.starts_with('.') {
        bail!(
            "{model}: no such folder; expected an HF checkpoint folder (with config.json) or a preset: {}",
            engine::config::PRESETS.join(", ")
        );
    }
    Ok((ModelConfig::preset(model)?, false))
}

/// One bench run's inputs and outputs.
struct Measured {
    cfg: ModelConfig,
    plan: Plan,
    result: BenchResult,
    roof: Roofline,
    /// The same roofline with the DRAM read measured again in this process right after the
    /// decode (the host's read rate drifts between runs: 98–123 GB/s across calls on the GPU
    /// host), where the step reads host memory.
    roof_same_run: Option<Roofline>,
    /// Where the rate that `roof`'s compute bounds hold the CPU to comes from, in words.
    cpu_rate_basis: String,
    caps: Capabilities,
}

impl Measured {
    fn json(&self) -> serde_json::Value {
        serde_json::json!({
            "model": self.cfg, "plan": self.plan, "result": self.result,
            "roofline": self.roof, "roofline_same_run": self.roof_same_run, "caps": self.caps,
            "cpu": {
                "tier": platform::cpu_tier().to_string(),
                "threads": platform::pool_threads(),
                "pool_wait": platform::pool::wait_mode().name(),
                "pool_linger_us": platform::pool::linger_us(),
            },
        })
    }
}

fn bench(a: BenchArgs) -> anyhow::Result<()> {
    if let Some(p) = a.json.as_ref().filter(|p| p.exists()) {
        bail!(
            "{} exists; results are never overwritten: pick another --json path",
            p.display()
        );
    }
    let m = measure(&a, true)?;
    report(&m.result, &m.roof, a.token_latency);
    if let Some(r) = &m.roof_same_run {
        report_roofline(
            &m.result,
            r,
            "roofline (same run)  ",
            &format!(
                "DRAM read {:.1} GB/s measured right after the decode; the probe's: {:.1}",
                r.dram_read_bytes_s / 1e9,
                m.roof.dram_read_bytes_s / 1e9
            ),
        );
    }
    report_compute_bound(&m.result, &m.roof, &m.cpu_rate_basis);
    let s = &m.plan.spec;
    let out = a.json.clone().unwrap_or_else(|| {
        let ts = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        PathBuf::from("results").join(format!(
            "bench-{}-b{}-i{}-o{}-{ts}.json",
            m.cfg.name, s.batch_size, s.input_tokens, s.max_new_tokens
        ))
    });
    write_new(&out, &m.json())?;
    println!("wrote {}", out.display());
    Ok(())
}

/// Plans, loads and runs one bench configuration (`verbose`: print the plan and progress).
fn measure(a: &BenchArgs, verbose: bool) -> anyhow::Result<Measured> {
    QUIET.store(!verbose, std::sync::atomic::Ordering::Relaxed);
    let caps = Capabilities::detect();
    let model = a
        .model
        .clone()
        .unwrap_or_else(|| default_model(&caps).to_string());
    let cfg = model_config(&model)?;
    // Defaults: full GPU with every layer resident when there is a GPU, full CPU otherwise.
    let pol = |s: &Option<String>, d: &str| -> anyhow::Result<Policy> {
        Ok(s.as_deref().unwrap_or(d).parse()?)
    };
    let no_gpu = caps.gpus.is_empty();
    let d = if no_gpu { "1" } else { "0" };
    let mut tier: MemTier = a.weights_tier.parse()?;
    if a.enable_cxl {
        let node = a.cxl_node.context("--enable-cxl needs --cxl-node N (the CXL memory's NUMA node; `tandem info` lists them)")?;
        tier = MemTier::Numa(node);
    }
    if a.pin_weight && tier == MemTier::Pageable {
        tier = MemTier::Pinned;
    }
    let (prefill_policy, decode_policy) = (pol(&a.prefill_policy, d)?, pol(&a.decoding_policy, d)?);
    // Layers stay resident by default only where some sublayer runs on the GPU.
    let gpu_default = !no_gpu && (prefill_policy.any_gpu() || decode_policy.any_gpu());
    let spec = RunSpec {
        batch_size: a.batch_size,
        input_tokens: a.input_tokens,
        max_new_tokens: a.max_new_tokens,
        prefill_policy,
        decode_policy,
        gpu_percentage: a
            .gpu_percentage
            .unwrap_or(if gpu_default { 100.0 } else { 0.0 }),
        num_minibatch: a.num_minibatch,
        pin_weight: a.pin_weight,
        weight_tier: tier,
        layer_overrides: a
            .layer_policy
            .iter()
            .map(|s| s.parse::<LayerOverride>())
            .collect::<Result<_, _>>()?,
    };
    if spec.max_new_tokens == 0 {
        bail!("--max-new-tokens must be at least 1");
    }
    let policies_given =
        a.prefill_policy.is_some() || a.decoding_policy.is_some() || !a.layer_policy.is_empty();
    // No placement asked for: as many layers resident as fit, and LIA's split of the rest
    // between CPU compute and PCIe streaming from the measured bandwidths.
    let auto = !no_gpu && !policies_given;
    if a.split_steps.is_some() && !auto {
        anyhow::bail!(
            "--split-steps applies to the automatic split, which runs only with a GPU and without \
             --prefill-policy, --decoding-policy or --layer-policy"
        );
    }
    let mut spec = spec;
    if auto && a.gpu_percentage.is_none() {
        spec.gpu_percentage = Plan::max_fitting_percentage(&cfg, &spec, &caps).unwrap_or(0.0);
    }
    // Refuse what cannot run before measuring anything. The automatic split may keep the CPU
    // layers' KV on the host instead of the GPU: there, either way fitting is enough for now.
    if let Err(e) = Plan::new(&cfg, spec.clone(), &caps) {
        let host_kv_fits = auto
            && host_attention_split(&cfg, &spec).is_ok_and(|ov| {
                let s = RunSpec {
                    layer_overrides: ov,
                    ..spec.clone()
                };
                Plan::new(&cfg, s, &caps).is_ok()
            });
        if !host_kv_fits {
            return Err(e.into());
        }
    }
    let profile = load_profile(a.profile.as_deref(), !no_gpu)?;
    // `start`: see `auto_placement`.
    let mut start = None;
    if auto {
        let split_layers = a.split_steps.map(|s| s != SplitSteps::Plain);
        (spec.layer_overrides, start) = auto_placement(&cfg, &spec, &caps, &profile, split_layers)?;
    }
    if let (Some(st), Some(SplitSteps::Fixed)) = (start.as_mut(), a.split_steps) {
        st.rebalance = false;
    }
    let mut plan = Plan::new(&cfg, spec, &caps)?;
    let full_cpu = plan.full_cpu();
    let s = &plan.spec;
    if !quiet() {
        println!(
            "model {} ({:.2} B parameters), batch {}, input {}, output {}",
            cfg.name,
            cfg.total_params() as f64 / 1e9,
            s.batch_size,
            s.input_tokens,
            s.max_new_tokens
        );
        let engine::plan::LayerCounts {
            resident,
            streamed,
            cpu: on_cpu,
        } = plan.layer_counts();
        println!(
        "layers: {resident} GPU-resident, {streamed} streamed over PCIe, {on_cpu} computed on the CPU{}",
        if auto { " (automatic split from the measured DRAM and PCIe bandwidths)" } else { "" }
    );
        println!(
            "layer map (decode): {}",
            engine::placement::layer_map(&plan.layers)
        );
        println!(
        "placement: prefill {} decode {}, {resident}/{} layers GPU-resident, weights tier {}, CPU tier {} on {} threads (pool wait: {}, linger {} µs)",
        s.prefill_policy,
        s.decode_policy,
        cfg.layers,
        s.weight_tier,
        platform::cpu_tier(),
        platform::pool_threads(),
        platform::pool::wait_mode().name(),
        platform::pool::linger_us()
    );
    }
    // Pinned host memory is made by the GPU executor (page-locking needs the driver).
    let host_tier = if s.weight_tier == MemTier::Pinned {
        MemTier::Pageable
    } else {
        s.weight_tier
    };
    let w = load_weights(&model, host_tier, a.seed)?;
    let pb = bar((a.num_warmup + a.num_iter) as u64, "iterations");
    let progress = |i: usize| pb.set_position(i as u64);
    let blocks = engine::bench::kv_blocks(&plan);
    let vocab = cfg.vocab;
    let go = |session: &mut engine::bench::WithSession| {
        engine::bench::run(
            &plan,
            vocab,
            a.num_iter,
            a.num_warmup,
            a.seed,
            session,
            &progress,
        )
    };
    let r = if full_cpu {
        let model = engine::exec::cpu::CpuModel::new(w)?;
        go(&mut |f| {
            f(&mut engine::exec::cpu::CpuSession::new(
                &model, blocks, host_tier,
            )?)
        })?
    } else {
        let gpu = cuda_kernels::Gpu::new(0)?;
        let pin = s.weight_tier == MemTier::Pinned;
        let nbuf = plan.staging_buffers(&caps);
        let mut model = engine::exec::gpu::GpuModel::with_staging(gpu, w, &plan.layers, pin, nbuf)?;
        if let Some(st) = start {
            if st.rebalance {
                model.set_adaptive_split(st.streamed, st.pcie_bytes_s);
            } else {
                model.set_fixed_split(st.streamed);
            }
        }
        // A prefill minibatch's tokens: its step buffers are made with the session, before the
        // bench's clock starts (see `GpuSession::reserve`).
        let per = engine::bench::minibatch_len(s.batch_size, s.num_minibatch);
        let (mb_tokens, mbs) = (per * s.input_tokens, s.batch_size.div_ceil(per));
        let r = go(&mut |f| {
            let mut session = engine::exec::gpu::GpuSession::new(&mut model, blocks, host_tier)?;
            session.reserve(mb_tokens, mbs)?;
            f(&mut session)
        })?;
        if let Some(st) = start {
            // The roofline and the layer map below are for the split the steps settled on.
            let (on_cpu, on_gpu) = model.split_counts();
            let marks = engine::placement::spread(on_cpu + on_gpu, on_gpu);
            let mut split = marks.into_iter();
            for l in plan.layers.iter_mut() {
                // (`split.next()` only for split layers: the marks follow their order.)
                if !l.gpu_resident
                    && l.prefill.gpu_linears()
                    && !l.decode.gpu_linears()
                    && split.next() == Some(true)
                {
                    // Streamed, its attention stays where its KV is.
                    l.decode = if l.decode.attention_on_cpu() {
                        engine::placement::Policy::ATTENTION_ON_CPU
                    } else {
                        engine::placement::Policy::FULL_GPU
                    };
                }
            }
            if !quiet() {
                if st.rebalance {
                    println!(
                        "adaptive split: decode began with {} of {} host layers streamed and ended with {on_gpu} (the CPU computing {on_cpu})",
                        st.streamed,
                        on_cpu + on_gpu
                    );
                } else {
                    println!(
                        "fixed split: decode streamed {on_gpu} of {} host layers (the CPU computing {on_cpu})",
                        on_cpu + on_gpu
                    );
                }
                println!(
                    "layer map (last decode step): {}",
                    engine::placement::layer_map(&plan.layers)
                );
            }
        }
        r
    };
    pb.finish();

    let pcie = pcie_rate(&profile, s.weight_tier);
    let roof = Roofline::decode(
        &plan,
        &cfg,
        profile.dram_read_bytes_s,
        profile.hbm_copy_bytes_s,
        pcie,
        if s.weight_tier == MemTier::Pinned {
            profile.host_read_with_h2d_bytes_s
        } else {
            0.0
        },
    );
    let cpu_rate = cpu_compute_rate(&profile, s, roof.pcie_bytes > 0);
    let roof = roof.with_cpu_compute(cpu_rate.flop_s);
    // The DRAM read again, now, where the step reads host memory on the CPU side.
    let roof_same_run = (roof.host_weight_bytes + roof.host_kv_bytes > 0).then(|| {
        let now = platform::membw::read_bandwidth(probe::probe_bytes(), 5);
        Roofline::decode(
            &plan,
            &cfg,
            now,
            profile.hbm_copy_bytes_s,
            pcie,
            roof.host_total_bytes_s,
        )
        .with_cpu_compute(cpu_rate.flop_s)
    });
    Ok(Measured {
        cfg,
        plan,
        result: r,
        roof,
        roof_same_run,
        cpu_rate_basis: cpu_rate.basis,
        caps,
    })
}

/// Phase of the automatic split's overrides: decode only where the prefill runs on the GPU
/// (compute-bound: every layer streamed for it), both phases otherwise.
fn split_phase(spec: &RunSpec) -> engine::placement::Phase {
    if spec.prefill_policy.gpu_linears() {
        engine::placement::Phase::Decode
    } else {
        engine::placement::Phase::Both
    }
}

/// Every non-resident layer a CPU layer (for the automatic split's phase) with `policy`.
fn every_host_layer(
    cfg: &ModelConfig,
    spec: &RunSpec,
    policy: Policy,
) -> anyhow::Result<Vec<LayerOverride>> {
    let resident = engine::placement::resident_layers(cfg.layers, spec.gpu_percentage)?;
    Ok(engine::placement::auto_split(
        cfg.layers,
        resident,
        1.0,
        0.0,
        split_phase(spec),
        policy,
    ))
}

/// Every non-resident layer a CPU layer with its attention on the host (policy 1): the
/// placement of the automatic split that needs the least HBM.
fn host_attention_split(cfg: &ModelConfig, spec: &RunSpec) -> anyhow::Result<Vec<LayerOverride>> {
    every_host_layer(cfg, spec, Policy::FULL_CPU)
}

/// How the automatic split's decode steps start, for its split layers.
#[derive(Clone, Copy, Debug, PartialEq)]
struct SplitStart {
    /// Split layers the first decode step streams (the rest run on the CPU).
    streamed: usize,
    /// The PCIe rate the adaptive split balances the CPU's measured time against.
    pcie_bytes_s: f64,
    /// Whether the steps rebalance (unless `--split-steps fixed`).
    rebalance: bool,
}

/// `--split-steps`: see [`BenchArgs`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
enum SplitSteps {
    Adaptive,
    Fixed,
    Plain,
}

/// LIA's split of the non-resident layers between CPU compute and PCIe streaming, from the
/// measured bandwidths: the layer overrides, and where its layers are split layers, how the
/// decode steps start.
///
/// While a layer's KV is a small part of its weights (small batches), the CPU layers attend
/// over host KV, and with a GPU prefill every host layer is a split layer (packed once for the
/// CPU, streamed and unpacked for prefills) whose decode moves between CPU compute and PCIe
/// streaming as measured times say (a split layer streamed for decode still attends on the
/// CPU). Past that, the CPU layers attend on the GPU where HBM holds their KV (policy
/// (1,0,0,1,1,1)): host memory then serves only weights, to the CPU and to the PCIe streaming.
/// There, with a GPU prefill, every host layer is a split layer too (a split layer streamed
/// for decode attends on the GPU) where `split_layers` says so, or by default where LIA's share
/// gives the CPU at least a third of the host layers, and the first decode step streams that
/// share; otherwise LIA's split with plain streamed layers, which skip the unpacking on the
/// copy stream (the PCIe-bound batch 512 would pay it). `split_layers = Some(false)` asks for
/// LIA's plain split at every batch. Measured on the GPU host at batch 64, alternated in one
/// call: the rebalanced split layers ran 1.01–1.05× LIA's plain split (docs/BENCHMARKS.md).
fn auto_placement(
    cfg: &ModelConfig,
    spec: &RunSpec,
    caps: &Capabilities,
    profile: &probe::Profile,
    split_layers: Option<bool>,
) -> anyhow::Result<(Vec<LayerOverride>, Option<SplitStart>)> {
    let resident = engine::placement::resident_layers(cfg.layers, spec.gpu_percentage)?;
    let (cpu_share, pcie) = contended_rates(profile, spec.weight_tier);
    let phase = split_phase(spec);
    let host = cfg.layers - resident;
    let ctx = spec.input_tokens + spec.max_new_tokens;
    let kv_layer = spec.batch_size * ctx * 2 * cfg.kv_dim() * 2;
    let small_kv = 20 * kv_layer <= 2 * cfg.layer_params();
    let split = |policy: Policy| {
        let rate = cpu_share * cpu_decode_rate(cfg, spec, profile, policy.attention_on_cpu());
        engine::placement::auto_split(cfg.layers, resident, rate, pcie, phase, policy)
    };
    if spec.prefill_policy.gpu_linears()
        && host > 0
        && pcie > 0.0
        && small_kv
        && split_layers != Some(false)
    {
        let on_gpu = host - split(Policy::FULL_CPU).len();
        let start = SplitStart {
            streamed: on_gpu,
            pcie_bytes_s: pcie,
            rebalance: true,
        };
        return Ok((host_attention_split(cfg, spec)?, Some(start)));
    }
    if !small_kv && host > 0 {
        let ov = split(Policy::LINEARS_ON_CPU);
        // With a GPU prefill, asked for or where the CPU takes a third of the host layers:
        // every host layer a split layer attending on the GPU, the first decode step streaming
        // LIA's share.
        let wanted = split_layers.unwrap_or(3 * ov.len() >= host);
        if wanted && phase == engine::placement::Phase::Decode && pcie > 0.0 {
            let trial = RunSpec {
                layer_overrides: every_host_layer(cfg, spec, Policy::LINEARS_ON_CPU)?,
                ..spec.clone()
            };
            if Plan::new(cfg, trial.clone(), caps).is_ok() {
                let start = SplitStart {
                    streamed: host - ov.len(),
                    pcie_bytes_s: pcie,
                    rebalance: true,
                };
                return Ok((trial.layer_overrides, Some(start)));
            }
        }
        let trial = RunSpec {
            layer_overrides: ov,
            ..spec.clone()
        };
        if Plan::new(cfg, trial.clone(), caps).is_ok() {
            return Ok((trial.layer_overrides, None));
        }
    }
    Ok((split(Policy::FULL_CPU), None))
}

/// The probe profile named (or the default one); measured now, quickly, if there is none.
fn load_profile(path: Option<&Path>, gpu: bool) -> anyhow::Result<probe::Profile> {
    let path = path
        .map(Path::to_path_buf)
        .unwrap_or_else(probe::default_path);
    // A file that is there but unreadable is the user's mistake to hear about, not a reason to
    // measure quietly in its place.
    if let Some(p) = probe::read(&path).map_err(|e| {
        anyhow::anyhow!(
            "{e}; it is left as it is: name another --profile, or move it away and run `tandem probe`"
        )
    })? {
        return Ok(p);
    }
    eprintln!(
        "no profile at {} (run `tandem probe`); measuring the bandwidths placement and roofline need now",
        path.display()
    );
    let mut p = probe::Profile {
        dram_read_bytes_s: platform::membw::read_bandwidth(probe::probe_bytes(), 3),
        ..Default::default()
    };
    if gpu {
        if let Ok(g) = cuda_kernels::Gpu::new(0) {
            probe::gpu_ceilings(&g, &mut p, None)?;
        }
    }
    Ok(p)
}

/// The rate, in weight bytes per second, at which the CPU decodes a layer at this batch, from
/// the probe: its linears take the longer of streaming the weights (the GEMV's rate) and
/// computing them (at [`cpu_gemm_rate`] for the rows of one minibatch), and its
/// attention, where it runs on the CPU, reads the batch's KV at the DRAM read rate. LIA's
/// split gives the CPU a share of the layers in proportion to this rate against PCIe's.
fn cpu_decode_rate(
    cfg: &engine::config::ModelConfig,
    spec: &RunSpec,
    p: &probe::Profile,
    attention_on_cpu: bool,
) -> f64 {
    let stream = if p.cpu_gemv_bytes_s > 0.0 {
        p.cpu_gemv_bytes_s
    } else {
        p.dram_read_bytes_s
    };
    let w = 2.0 * cfg.layer_params() as f64;
    let b = spec.batch_size as f64;
    let flops = 2.0 * b * cfg.layer_params() as f64;
    let rate = cpu_gemm_rate(
        p,
        engine::bench::minibatch_len(spec.batch_size, spec.num_minibatch),
    );
    let linears = (w / stream).max(if rate > 0.0 { flops / rate } else { 0.0 });
    let ctx = (spec.input_tokens + spec.max_new_tokens / 2) as f64;
    let kv = b * ctx * 2.0 * cfg.kv_dim() as f64 * 2.0;
    let attention = if attention_on_cpu && p.dram_read_bytes_s > 0.0 {
        kv / p.dram_read_bytes_s
    } else {
        0.0
    };
    w / (linears + attention)
}

/// The probe's CPU GEMM rate for `rows` rows of a decode step's linears: measured at 64 and
/// 512 rows over weights from DRAM and at 2048 rows over a cached one, and in between on a
/// straight line in log(rows), held flat outside. Points the profile lacks (0) are left out.
fn cpu_gemm_rate(p: &probe::Profile, rows: usize) -> f64 {
    let points: Vec<(f64, f64)> = [
        (64.0, p.cpu_gemm_m64_flop_s),
        (512.0, p.cpu_gemm_m512_flop_s),
        (2048.0, p.cpu_gemm_bf16_flop_s),
    ]
    .into_iter()
    .filter(|&(_, r)| r > 0.0)
    .collect();
    let x = (rows.max(1) as f64).ln();
    match points.iter().position(|&(m, _)| x <= m.ln()) {
        None => points.last().map_or(0.0, |&(_, r)| r),
        Some(0) => points[0].1,
        Some(i) => {
            let ((m0, r0), (m1, r1)) = (points[i - 1], points[i]);
            let t = (x - m0.ln()) / (m1.ln() - m0.ln());
            r0 + t * (r1 - r0)
        }
    }
}

/// A CPU GEMM rate for the compute roofline, and where it comes from, in words.
struct CpuRate {
    flop_s: f64,
    basis: String,
}

/// The CPU GEMM rate a decode step's CPU linears can run at, from the probe: its rate for the
/// rows of one minibatch ([`cpu_gemm_rate`]) and, where pinned weights also stream over PCIe
/// meanwhile, times the fraction of its 64-row rate the probe's GEMM kept beside the copies.
fn cpu_compute_rate(p: &probe::Profile, spec: &RunSpec, streams: bool) -> CpuRate {
    let rows = engine::bench::minibatch_len(spec.batch_size, spec.num_minibatch);
    let rate = cpu_gemm_rate(p, rows);
    // Below the probe's least row count the rate is its 64-row one, which fewer rows (a GEMM
    // bound by the weights' read) cannot pass: a looser bound, said as such.
    let mut basis = if rows < 64 {
        let s = if rows == 1 { "" } else { "s" };
        format!("the probe's 64-row CPU GEMM rate, which {rows} row{s} cannot pass")
    } else {
        format!("the probe's CPU GEMM rate for {rows} rows")
    };
    let (beside, alone) = (p.cpu_gemm_m64_with_h2d_flop_s, p.cpu_gemm_m64_flop_s);
    let flop_s = if streams && spec.weight_tier == MemTier::Pinned && beside > 0.0 && alone > 0.0 {
        basis += ", beside the copies";
        rate * (beside / alone).min(1.0)
    } else {
        rate
    };
    CpuRate { flop_s, basis }
}

/// What the split's two sides get while both read host memory at once: the fraction of its
/// own read rate left to the CPU, and the copies' rate. With pinned weights these come from the
/// probe's `host read with H2D` (the CPU reading while the GPU copies in): on the GPU hosts the
/// copies ran at 45–49 GB/s there against 55 alone, and the CPU's read at 0.82–1.0 of its own,
/// and a split from the rates alone left the side that lost more as the step's long pole.
/// Otherwise (pageable weights, or a profile without that figure): 1 and the PCIe rate.
fn contended_rates(p: &probe::Profile, tier: MemTier) -> (f64, f64) {
    let pcie = pcie_rate(p, tier);
    let (cpu, dma) = (
        p.host_read_with_h2d_cpu_bytes_s,
        p.host_read_with_h2d_dma_bytes_s,
    );
    if tier != MemTier::Pinned || cpu <= 0.0 || dma <= 0.0 || p.dram_read_bytes_s <= 0.0 {
        return (1.0, pcie);
    }
    ((cpu / p.dram_read_bytes_s).min(1.0), dma.min(pcie))
}

/// PCIe bandwidth for weights on `tier` (pinned copies run at full speed, pageable ones not).
fn pcie_rate(p: &probe::Profile, tier: MemTier) -> f64 {
    if tier == MemTier::Pinned {
        p.pcie_h2d_pinned_bytes_s
    } else {
        p.pcie_h2d_pageable_bytes_s
    }
}

/// Writes a new file; an existing one is never overwritten.
fn write_new(path: &Path, v: &serde_json::Value) -> anyhow::Result<()> {
    if let Some(d) = path.parent() {
        std::fs::create_dir_all(d).with_context(|| format!("create {}", d.display()))?;
    }
    let f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(path)
        .with_context(|| {
            format!(
                "{} (results are never overwritten; pick another --json path)",
                path.display()
            )
        })?;
    serde_json::to_writer_pretty(f, v)?;
    Ok(())
}

fn report(r: &BenchResult, roof: &Roofline, per_token: bool) {
    let ms = |x: f64| x * 1e3;
    println!();
    println!(
        "first-token latency   {:10.2} ms  (± {:.2})",
        ms(r.first_token.mean),
        ms(r.first_token.stdev)
    );
    println!(
        "next-token latency    {:10.2} ms mean, P50 {:.2}, P90 {:.2}, P99 {:.2} ms",
        ms(r.next_token.mean),
        ms(r.next_token.p50),
        ms(r.next_token.p90),
        ms(r.next_token.p99)
    );
    for (phase, t) in [("prefill", &r.prefill_trace), ("decode", &r.decode_trace)] {
        if let Some(t) = t.as_ref().filter(|t| t.layers_copied > 0) {
            println!(
                "{phase} overlap        PCIe copies {:.1} ms ({} layers), GPU compute {:.1} ms ({} layers), wall {:.1} ms: {:.0}% of the shorter hidden",
                ms(t.copy_s),
                t.layers_copied,
                ms(t.compute_s),
                t.layers_computed,
                ms(t.wall_s),
                100.0 * t.hidden_fraction()
            );
        }
    }
    if !r.decode_profile.is_empty() {
        let total: f64 = r.decode_profile.iter().map(|(_, v)| v).sum();
        let parts: Vec<String> = r
            .decode_profile
            .iter()
            .map(|(k, v)| format!("{k} {:.1}", ms(*v)))
            .collect();
        println!(
            "CPU per decode step   {:.1} ms: {} ms (TANDEM_PROFILE)",
            ms(total),
            parts.join(", ")
        );
    }
    let spread = engine::bench::Stats::of(&r.throughput_samples);
    println!(
        "throughput            {:10.2} tokens/s (± {:.2}), decode alone {:.2} tokens/s",
        r.throughput_tok_s, spread.stdev, r.decode_tok_s
    );
    report_roofline(r, roof, "roofline             ", "");
    if per_token {
        let steps: Vec<String> = r
            .next_token_samples
            .iter()
            .map(|x| format!("{:.2}", ms(*x)))
            .collect();
        println!("decode steps (ms)     {}", steps.join(" "));
    }
}

/// The roofline line: the step's bytes by source over each source's measured rate.
fn report_roofline(r: &BenchResult, roof: &Roofline, label: &str, note: &str) {
    let ms = |x: f64| x * 1e3;
    if roof.step_bound_s > 0.0 && roof.step_bound_s.is_finite() {
        let gb = |b: usize| b as f64 / 1e9;
        let mut parts = Vec::new();
        if roof.host_weight_bytes + roof.host_kv_bytes > 0 {
            parts.push(format!(
                "host {:.2} GB weights + {:.3} GB KV at {:.1} GB/s DRAM",
                gb(roof.host_weight_bytes),
                gb(roof.host_kv_bytes),
                roof.dram_read_bytes_s / 1e9
            ));
        }
        if roof.gpu_weight_bytes + roof.gpu_kv_bytes > 0 {
            parts.push(format!(
                "GPU {:.2} GB weights + {:.3} GB KV at {:.0} GB/s HBM",
                gb(roof.gpu_weight_bytes),
                gb(roof.gpu_kv_bytes),
                roof.hbm_bytes_s / 1e9
            ));
        }
        if roof.pcie_bytes > 0 {
            parts.push(format!(
                "PCIe {:.2} GB at {:.1} GB/s",
                gb(roof.pcie_bytes),
                roof.pcie_bytes_s / 1e9
            ));
            if roof.host_total_bytes_s > 0.0 && roof.host_weight_bytes + roof.host_kv_bytes > 0 {
                parts.push(format!(
                    "host memory {:.2} GB for CPU and PCIe together at {:.1} GB/s",
                    gb(roof.host_weight_bytes + roof.host_kv_bytes + roof.pcie_bytes),
                    roof.host_total_bytes_s / 1e9
                ));
            }
        }
        if !note.is_empty() {
            parts.push(note.to_string());
        }
        let pct = 100.0 * roof.step_bound_s / r.next_token.mean;
        // Past 100 %, the run drew more than a ceiling the probe measured (its mix of CPU and
        // DMA reads is not the run's): the bound is an estimate, not a law.
        let past = if pct > 100.5 {
            " (past 100 %: the run beat a ceiling the probe measured, so the bound is low)"
        } else {
            ""
        };
        println!(
            "{label} decode step ≥ {:.2} ms ({}) → {pct:.0} % of roofline{past}",
            ms(roof.step_bound_s),
            parts.join("; "),
        );
    }
}

/// The bounds that also hold the CPU's linears to the probe's GEMM rate (see
/// [`Roofline::with_cpu_compute`]): for this step's division of the layers, and for the best
/// division of the same host-held weights between CPU and PCIe.
fn report_compute_bound(r: &BenchResult, roof: &Roofline, basis: &str) {
    if roof.compute_bound_s <= 0.0 || !roof.compute_bound_s.is_finite() || roof.cpu_flop <= 0.0 {
        return;
    }
    let ms = |x: f64| x * 1e3;
    let pct = |b: f64| 100.0 * b / r.next_token.mean;
    let mut line = format!(
        "roofline, CPU compute  decode step ≥ {:.2} ms (CPU linears {:.2} TFLOP at {:.2} TFLOP/s, \
         {basis}) → {:.0} %",
        ms(roof.compute_bound_s),
        roof.cpu_flop / 1e12,
        roof.cpu_gemm_flop_s / 1e12,
        pct(roof.compute_bound_s)
    );
    if roof.best_split_bound_s > 0.0 {
        line += &format!(
            "; any division of the {:.2} GB of host-held weights between CPU and PCIe ≥ {:.2} ms → {:.0} %",
            (roof.host_weight_bytes + roof.pcie_bytes) as f64 / 1e9,
            ms(roof.best_split_bound_s),
            pct(roof.best_split_bound_s)
        );
    }
    println!("{line}");
}

fn main() {
    let cli = Cli::parse();
    let r = match cli.cmd {
        Cmd::Info { json } => {
            let caps = Capabilities::detect();
            if json {
                println!("{}", serde_json::to_string_pretty(&caps).unwrap());
            } else {
                println!("{caps}");
            }
            Ok(())
        }
        Cmd::Probe { profile } => (|| {
            let path = profile.unwrap_or_else(probe::default_path);
            // Checked before the minute of measuring: only an earlier profile is replaced.
            probe::check_replaceable(&path)?;
            let p = probe::run()?;
            probe::print(&p);
            probe::save(&path, &p)?;
            println!("profile saved to {}", path.display());
            Ok(())
        })(),
        Cmd::Bench(a) => bench(a),
        Cmd::Sweep(a) => sweep::run(a),
    };
    if let Err(e) = r {
        eprintln!("tandem: {e:#}");
        std::process::exit(2);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(extra: &[&str]) -> BenchArgs {
        let mut v = vec!["tandem", "bench"];
        if !extra.contains(&"-m") {
            v.extend_from_slice(&["-m", "opt-1.3b"]);
        }
        v.extend_from_slice(extra);
        match Cli::try_parse_from(v).unwrap().cmd {
            Cmd::Bench(a) => a,
            _ => unreachable!(),
        }
    }

    /// OPT-30B, weights pinned on the host, a `gpu_gib` GPU, batch `batch` (input 256, output
    /// 32): the automatic split's overrides and adaptive start, from a fixed profile.
    fn auto(
        batch: usize,
        gpu_gib: usize,
        split_layers: Option<bool>,
    ) -> (Vec<LayerOverride>, Option<SplitStart>) {
        let cfg = ModelConfig::preset("opt-30b").unwrap();
        let mut caps = Capabilities::detect();
        caps.numa_nodes = vec![engine::caps::NodeCaps {
            id: 0,
            mem_total: 512 << 30,
            mem_free: 500 << 30,
            cpus: (0..16).collect(),
        }];
        caps.gpus = vec![engine::caps::GpuCaps {
            ordinal: 0,
            name: "test GPU".into(),
            total_mem: gpu_gib << 30,
            free_mem: gpu_gib << 30,
            compute_capability: (9, 0),
            multiprocessors: 132,
        }];
        caps.gpu_absent = None;
        let profile = probe::Profile {
            dram_read_bytes_s: 120e9,
            cpu_gemv_bytes_s: 110e9,
            cpu_gemm_m64_flop_s: 4.6e12,
            cpu_gemm_bf16_flop_s: 5e12,
            pcie_h2d_pinned_bytes_s: 55e9,
            ..Default::default()
        };
        auto_placement(&cfg, &pinned_spec(batch), &caps, &profile, split_layers).unwrap()
    }

    /// Input 256, output 32, every weight pinned on the host, the GPU's policy for prefill
    /// and decode (the automatic split decides the rest).
    fn pinned_spec(batch: usize) -> RunSpec {
        RunSpec {
            batch_size: batch,
            input_tokens: 256,
            max_new_tokens: 32,
            prefill_policy: Policy::FULL_GPU,
            decode_policy: Policy::FULL_GPU,
            gpu_percentage: 0.0,
            num_minibatch: 1,
            pin_weight: true,
            weight_tier: MemTier::Pinned,
            layer_overrides: vec![],
        }
    }

    #[test]
    fn automatic_split_keeps_large_batches_kv_on_the_gpu_when_it_fits() {
        use engine::placement::Phase;
        // Batch 64: 24 GB of KV; on an 80 GB GPU the CPU layers attend there, and the CPU's
        // share follows its rate without the KV read (17.5 ms of 64-row GEMM a layer against
        // 22.9 ms of PCIe: 27 of 48 layers).
        // With `--split-steps plain`, LIA's split with plain streamed layers.
        let (ov, start) = auto(64, 80, Some(false));
        assert!(start.is_none());
        assert_eq!(ov.len(), 27, "{ov:?}");
        assert!(ov
            .iter()
            .all(|o| o.policy == Policy::LINEARS_ON_CPU && o.phase == Phase::Decode));
        // By default (the CPU's 27 of 48 are past a third) and with `--split-steps
        // adaptive|fixed`: every host layer a split layer; the first step streams 21.
        for asked in [None, Some(true)] {
            let (ov, start) = auto(64, 80, asked);
            assert_eq!(
                start,
                Some(SplitStart {
                    streamed: 21,
                    pcie_bytes_s: 55e9,
                    rebalance: true
                })
            );
            assert_eq!(ov.len(), 48, "{ov:?}");
            assert!(ov
                .iter()
                .all(|o| o.policy == Policy::LINEARS_ON_CPU && o.phase == Phase::Decode));
        }
        // Batch 512 (on a GPU that holds its KV): PCIe carries most host layers, and the
        // default is LIA's plain split; asked for, split layers.
        let (ov, start) = auto(512, 400, None);
        assert!(start.is_none());
        assert!(!ov.is_empty() && 3 * ov.len() < 48, "{ov:?}");
        let (ov, start) = auto(512, 400, Some(true));
        assert!(start.is_some_and(|s| s.rebalance && s.streamed > 32));
        assert_eq!(ov.len(), 48, "{ov:?}");
        // On a 24 GB GPU their KV stays on the host (policy 1), and the CPU takes fewer layers.
        let (ov, start) = auto(64, 24, None);
        assert!(start.is_none());
        assert!(!ov.is_empty() && ov.len() < 27, "{ov:?}");
        assert!(ov.iter().all(|o| o.policy == Policy::FULL_CPU));
        // Batch 1: the adaptive split, every host layer packed for the CPU and attending there.
        let (ov, start) = auto(1, 80, None);
        assert_eq!(ov.len(), 48);
        assert!(ov.iter().all(|o| o.policy == Policy::FULL_CPU));
        let st = start.expect("a split start at batch 1");
        assert!(st.rebalance, "{st:?}");
        assert!(
            st.streamed > 0 && st.streamed < 48 && st.pcie_bytes_s == 55e9,
            "{st:?}"
        );
    }

    #[test]
    fn split_rates_are_the_shares_both_sides_get_at_once() {
        let p = probe::Profile {
            dram_read_bytes_s: 120e9,
            pcie_h2d_pinned_bytes_s: 55e9,
            pcie_h2d_pageable_bytes_s: 10e9,
            host_read_with_h2d_cpu_bytes_s: 99e9,
            host_read_with_h2d_dma_bytes_s: 49e9,
            ..Default::default()
        };
        let (cpu, pcie) = contended_rates(&p, MemTier::Pinned);
        assert!(
            (cpu - 99.0 / 120.0).abs() < 1e-9 && pcie == 49e9,
            "{cpu} {pcie}"
        );
        // Pageable copies are not what the probe ran beside the CPU's read.
        assert_eq!(contended_rates(&p, MemTier::Pageable), (1.0, 10e9));
        // The CPU reading faster beside the copies than alone is not a share above 1.
        let fast = probe::Profile {
            host_read_with_h2d_cpu_bytes_s: 130e9,
            ..p.clone()
        };
        assert_eq!(contended_rates(&fast, MemTier::Pinned), (1.0, 49e9));
        // A profile without the figure: the rates alone.
        let old = probe::Profile {
            host_read_with_h2d_dma_bytes_s: 0.0,
            ..p.clone()
        };
        assert_eq!(contended_rates(&old, MemTier::Pinned), (1.0, 55e9));
        // OPT-30B at batch 64 (64-row GEMM bound: 71.9 GB/s of weights): the CPU's share of
        // the split, 59.3 / (59.3 + 49) with both at once against 71.9 / (71.9 + 55) alone.
        let cfg = ModelConfig::preset("opt-30b").unwrap();
        let spec = pinned_spec(64);
        let cpu_fraction = |q: &probe::Profile| {
            let (share, pcie) = contended_rates(q, MemTier::Pinned);
            let c = share * cpu_decode_rate(&cfg, &spec, q, false);
            c / (c + pcie)
        };
        let with = probe::Profile {
            cpu_gemv_bytes_s: 110e9,
            cpu_gemm_m64_flop_s: 4.6e12,
            ..p.clone()
        };
        let alone = probe::Profile {
            host_read_with_h2d_dma_bytes_s: 0.0,
            ..with.clone()
        };
        assert!(
            (cpu_fraction(&with) - 0.548).abs() < 0.002,
            "{}",
            cpu_fraction(&with)
        );
        assert!(
            (cpu_fraction(&alone) - 0.567).abs() < 0.002,
            "{}",
            cpu_fraction(&alone)
        );
    }

    #[test]
    fn cpu_compute_rate_loses_what_the_probe_lost_beside_the_copies() {
        let p = probe::Profile {
            cpu_gemm_m64_flop_s: 5e12,
            cpu_gemm_m64_with_h2d_flop_s: 4e12,
            cpu_gemm_m512_flop_s: 6e12,
            ..Default::default()
        };
        let near = |a: f64, b: f64| (a - b).abs() < 1e6;
        // Batch 64 beside pinned copies: 0.8 of the 64-row rate.
        let beside = cpu_compute_rate(&p, &pinned_spec(64), true);
        assert!(near(beside.flop_s, 4e12));
        assert!(
            beside.basis.ends_with("for 64 rows, beside the copies"),
            "{}",
            beside.basis
        );
        // No copies in the step, or pageable weights: the rate alone.
        assert!(near(
            cpu_compute_rate(&p, &pinned_spec(64), false).flop_s,
            5e12
        ));
        let pageable = RunSpec {
            weight_tier: MemTier::Pageable,
            pin_weight: false,
            ..pinned_spec(64)
        };
        assert!(near(cpu_compute_rate(&p, &pageable, true).flop_s, 5e12));
        // Two minibatches of 256 at batch 512: the 256-row rate, four fifths of it.
        let two = RunSpec {
            num_minibatch: 2,
            ..pinned_spec(512)
        };
        assert!(near(
            cpu_compute_rate(&p, &two, true).flop_s,
            0.8 * cpu_gemm_rate(&p, 256)
        ));
        // A profile without the figure beside the copies: the rate alone, never more.
        let old = probe::Profile {
            cpu_gemm_m64_with_h2d_flop_s: 0.0,
            ..p.clone()
        };
        // (and its words do not claim the copies)
        let alone = cpu_compute_rate(&old, &pinned_spec(64), true);
        assert!(near(alone.flop_s, 5e12));
        assert!(!alone.basis.contains("beside"), "{}", alone.basis);
        // One row: the 64-row rate, said to be one it cannot pass.
        let one = cpu_compute_rate(&old, &pinned_spec(1), false);
        assert!(near(one.flop_s, 5e12));
        assert!(
            one.basis
                .contains("64-row CPU GEMM rate, which 1 row cannot"),
            "{}",
            one.basis
        );
        let faster = probe::Profile {
            cpu_gemm_m64_with_h2d_flop_s: 6e12,
            ..p
        };
        assert!(near(
            cpu_compute_rate(&faster, &pinned_spec(64), true).flop_s,
            5e12
        ));
    }

    #[test]
    fn cpu_gemm_rate_follows_the_measured_rows() {
        let p = probe::Profile {
            cpu_gemm_m64_flop_s: 4e12,
            cpu_gemm_m512_flop_s: 6e12,
            cpu_gemm_bf16_flop_s: 8e12,
            ..Default::default()
        };
        let near = |a: f64, b: f64| (a - b).abs() < 1e6;
        assert!(near(cpu_gemm_rate(&p, 1), 4e12));
        assert!(near(cpu_gemm_rate(&p, 64), 4e12));
        // 181 rows: about halfway from 64 to 512 in log(rows).
        assert!((cpu_gemm_rate(&p, 181) - 5e12).abs() < 0.01e12);
        assert!(near(cpu_gemm_rate(&p, 512), 6e12));
        assert!(near(cpu_gemm_rate(&p, 1024), 7e12));
        assert!(near(cpu_gemm_rate(&p, 8192), 8e12));
        // A profile from before the 512-row point: 64 rows to the large GEMM (512 rows are
        // three fifths of the way in log(rows)).
        let old = probe::Profile {
            cpu_gemm_m512_flop_s: 0.0,
            ..p.clone()
        };
        assert!(near(cpu_gemm_rate(&old, 512), 6.4e12));
        assert_eq!(cpu_gemm_rate(&probe::Profile::default(), 512), 0.0);
    }

    /// Bad flags are refused with a reason before any weight is made.
    #[test]
    fn bad_bench_flags_are_refused_before_work() {
        let cases: [(&[&str], &str); 8] = [
            (&["--enable-cxl"], "--cxl-node"),
            (&["--weights-tier", "cxl"], "cxl"),
            (&["--prefill-policy", "0,1,0,0,0,0"], "S2"),
            (&["--layer-policy", "40-99:1"], "layers beyond"),
            (&["--max-new-tokens", "0"], "at least 1"),
            (&["--batch-size", "0"], "at least 1"),
            (&["--input-tokens", "5000"], "positions"),
            (
                &["--split-steps", "fixed", "--decoding-policy", "1"],
                "automatic split",
            ),
        ];
        for (extra, want) in cases {
            let e = match measure(&args(extra), false) {
                Err(e) => format!("{e:#}"),
                Ok(_) => panic!("{extra:?} ran"),
            };
            assert!(e.contains(want), "{extra:?}: {e}");
        }
        let e = format!(
            "{:#}",
            measure(&args(&["-m", "no-such-model"]), false)
                .err()
                .unwrap()
        );
        assert!(e.contains("no-such-model") && e.contains("opt-30b"), "{e}");
        // A path that names no folder, and a folder without config.json, say which.
        let missing = std::env::temp_dir().join("tandem-no-such-checkpoint");
        let empty = std::env::temp_dir().join(format!("tandem-empty-{}", std::process::id()));
        std::fs::create_dir_all(&empty).unwrap();
        for (dir, want) in [
            (&missing, "no such folder"),
            (&empty, "without config.json"),
        ] {
            let m = dir.to_str().unwrap();
            let e = format!("{:#}", measure(&args(&["-m", m]), false).err().unwrap());
            assert!(e.contains(m) && e.contains(want), "{e}");
        }
        std::fs::remove_dir(&empty).unwrap();
    }

    #[test]
    fn lia_flag_names_parse() {
        let a = args(&[
            "--input-tokens",
            "256",
            "--max-new-tokens",
            "32",
            "--batch-size",
            "64",
            "--num-iter",
            "2",
            "--num-warmup",
            "1",
            "--token-latency",
            "--prefill-policy",
            "0",
            "--decoding-policy",
            "1",
            "--gpu-percentage",
            "50",
            "--num-minibatch",
            "4",
            "--pin-weight",
        ]);
        assert_eq!(
            (a.batch_size, a.num_minibatch, a.gpu_percentage),
            (64, 4, Some(50.0))
        );
        assert!(a.pin_weight && a.token_latency);
        // A negative percentage reaches the placement, which refuses it by name, rather than
        // clap taking it for an unknown flag.
        assert_eq!(args(&["--gpu-percentage", "-5"]).gpu_percentage, Some(-5.0));
        assert_eq!(
            args(&["--split-steps", "fixed"]).split_steps,
            Some(SplitSteps::Fixed)
        );
        let e = Cli::try_parse_from(["tandem", "bench", "--split-steps", "sometimes"])
            .err()
            .expect("a bad --split-steps is refused")
            .to_string();
        assert!(e.contains("sometimes") && e.contains("adaptive"), "{e}");
    }
}
