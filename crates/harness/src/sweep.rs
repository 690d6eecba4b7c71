//! `tandem sweep`: a grid of bench runs (batch sizes × policies × GPU percentages × weight
//! tiers), resumable: every finished point is one line of `results.jsonl` in the output folder,
//! and a rerun skips the points already there. After the grid: `results.csv` and two SVG plots
//! (throughput against batch size per placement; the time of each point split into prefill and
//! decode), both rebuilt from the JSONL.

use std::collections::HashSet;
use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::Context;
use clap::Args;
use serde::{Deserialize, Serialize};

use crate::BenchArgs;

#[derive(Args, Debug, Clone, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SweepArgs {
    /// A TOML file with any of these settings (`model = "opt-30b"`, `batch_sizes = [1, 64]`,
    /// `policies = ["0", "1", "2", "auto"]`, ...); flags given on the command line win.
    #[arg(long)]
    #[serde(skip)]
    pub config: Option<PathBuf>,
    #[arg(short = 'm', long)]
    pub model: Option<String>,
    /// Comma-separated batch sizes.
    #[arg(long, value_delimiter = ',')]
    pub batch_sizes: Vec<usize>,
    /// Placements, repeatable: 0, 1, 2, a six-flag vector, `PREFILL/DECODE` for different
    /// policies per phase (`0/1`: prefill on the GPU, decode on the CPU, LIA's large-batch
    /// setting), or `auto` (no policy flags: as many layers resident as fit and LIA's CPU/PCIe
    /// split of the rest).
    #[arg(long = "policy")]
    pub policies: Vec<String>,
    /// Comma-separated GPU percentages (default 0); `auto` takes each as its resident share
    /// and splits the rest, or, with none given, picks its own (as many layers as fit).
    #[arg(long, value_delimiter = ',', allow_negative_numbers = true)]
    pub gpu_percentages: Vec<f64>,
    /// Set by `resolve`: no percentages were given.
    #[arg(skip)]
    #[serde(skip)]
    pub auto_picks: bool,
    /// Comma-separated weight tiers: pageable, pinned, numa:N.
    #[arg(long, value_delimiter = ',')]
    pub weights_tiers: Vec<String>,
    #[arg(long)]
    pub input_tokens: Option<usize>,
    #[arg(long)]
    pub max_new_tokens: Option<usize>,
    #[arg(long)]
    pub num_iter: Option<usize>,
    #[arg(long)]
    pub num_warmup: Option<usize>,
    #[arg(long)]
    pub profile: Option<PathBuf>,
    /// Output folder (default results/sweep-<model>).
    #[arg(long)]
    pub out: Option<PathBuf>,
}

impl SweepArgs {
    /// Command-line values over the TOML file's over the defaults.
    fn resolve(mut self) -> anyhow::Result<Self> {
        if let Some(path) = self.config.clone() {
            let text = std::fs::read_to_string(&path)
                .with_context(|| format!("read {}", path.display()))?;
            let f: SweepArgs = toml::from_str(&text)
                .with_context(|| format!("{}: not a sweep configuration", path.display()))?;
            self.model = self.model.or(f.model);
            for (mine, theirs) in [
                (&mut self.policies, f.policies),
                (&mut self.weights_tiers, f.weights_tiers),
            ] {
                if mine.is_empty() {
                    *mine = theirs;
                }
            }
            if self.batch_sizes.is_empty() {
                self.batch_sizes = f.batch_sizes;
            }
            if self.gpu_percentages.is_empty() {
                self.gpu_percentages = f.gpu_percentages;
            }
            self.input_tokens = self.input_tokens.or(f.input_tokens);
            self.max_new_tokens = self.max_new_tokens.or(f.max_new_tokens);
            self.num_iter = self.num_iter.or(f.num_iter);
            self.num_warmup = self.num_warmup.or(f.num_warmup);
            self.profile = self.profile.or(f.profile);
            self.out = self.out.or(f.out);
        }
        if self.batch_sizes.is_empty() {
            self.batch_sizes = vec![1, 8, 32];
        }
        if self.policies.is_empty() {
            self.policies = vec!["auto".into()];
        }
        // No percentages: 0 % for explicit policies, and `auto` picks its own (as many
        // layers resident as fit); given ones apply to `auto` too (that share resident, LIA's
        // CPU/PCIe split of the rest).
        let auto_picks = self.gpu_percentages.is_empty();
        if auto_picks {
            self.gpu_percentages = vec![0.0];
        }
        self.auto_picks = auto_picks;
        if self.weights_tiers.is_empty() {
            self.weights_tiers = vec!["pageable".into()];
        }
        for p in &self.policies {
            if p != "auto" {
                let (pp, dp) = phase_policies(p);
                pp.parse::<engine::placement::Policy>()?;
                dp.parse::<engine::placement::Policy>()?;
            }
        }
        for t in &self.weights_tiers {
            t.parse::<platform::MemTier>()?;
        }
        Ok(self)
    }
}

/// One point of the grid.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct Point {
    pub model: String,
    pub batch_size: usize,
    pub policy: String,
    pub gpu_percentage: Option<f64>,
    pub weights_tier: String,
    pub input_tokens: usize,
    pub max_new_tokens: usize,
}

impl Point {
    fn key(&self) -> String {
        format!(
            "{}|b{}|p{}|g{}|{}|i{}|o{}",
            self.model,
            self.batch_size,
            self.policy,
            self.gpu_percentage.map_or("auto".into(), |g| g.to_string()),
            self.weights_tier,
            self.input_tokens,
            self.max_new_tokens
        )
    }
    fn series(&self) -> String {
        let g = self
            .gpu_percentage
            .map_or("auto".into(), |g| format!("{g}%"));
        format!("policy {} / GPU {g} / {}", self.policy, self.weights_tier)
    }
}

/// One line of results.jsonl.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Row {
    pub key: String,
    pub point: Point,
    pub error: Option<String>,
    pub throughput_tok_s: f64,
    pub first_token_s: f64,
    pub next_token_mean_s: f64,
    pub next_token_p90_s: f64,
    pub next_token_p99_s: f64,
    pub decode_s: f64,
    pub roofline_fraction: f64,
    /// The same with the CPU's linears also held to the probe's GEMM rate (0 where the profile
    /// has no rate, or in rows from before this column).
    #[serde(default)]
    pub compute_roofline_fraction: f64,
    pub layers_resident: usize,
    pub layers_streamed: usize,
    pub layers_cpu: usize,
}

fn grid(a: &SweepArgs, model: &str) -> Vec<Point> {
    let mut v = Vec::new();
    for tier in &a.weights_tiers {
        for policy in &a.policies {
            let pcts: Vec<Option<f64>> = if policy == "auto" && a.auto_picks {
                vec![None]
            } else {
                a.gpu_percentages.iter().map(|&g| Some(g)).collect()
            };
            for g in pcts {
                for &b in &a.batch_sizes {
                    v.push(Point {
                        model: model.to_string(),
                        batch_size: b,
                        policy: policy.clone(),
                        gpu_percentage: g,
                        weights_tier: tier.clone(),
                        input_tokens: a.input_tokens.unwrap_or(32),
                        max_new_tokens: a.max_new_tokens.unwrap_or(32),
                    });
                }
            }
        }
    }
    v
}

/// `PREFILL/DECODE`, or one policy for both phases.
fn phase_policies(p: &str) -> (&str, &str) {
    p.split_once('/').unwrap_or((p, p))
}

fn bench_args(p: &Point, a: &SweepArgs) -> BenchArgs {
    let explicit = (p.policy != "auto").then(|| phase_policies(&p.policy));
    BenchArgs {
        model: Some(p.model.clone()),
        input_tokens: p.input_tokens,
        max_new_tokens: p.max_new_tokens,
        batch_size: p.batch_size,
        num_iter: a.num_iter.unwrap_or(2),
        num_warmup: a.num_warmup.unwrap_or(1),
        token_latency: false,
        prefill_policy: explicit.map(|e| e.0.to_string()),
        decoding_policy: explicit.map(|e| e.1.to_string()),
        gpu_percentage: p.gpu_percentage,
        num_minibatch: 1,
        split_steps: None,
        pin_weight: false,
        weights_tier: p.weights_tier.clone(),
        enable_cxl: false,
        cxl_node: None,
        layer_policy: vec![],
        seed: 0,
        json: None,
        profile: a.profile.clone(),
    }
}

fn read_rows(path: &Path) -> Vec<Row> {
    std::fs::read_to_string(path)
        .map(|t| {
            t.lines()
                .filter_map(|l| serde_json::from_str(l).ok())
                .collect()
        })
        .unwrap_or_default()
}

/// Files a sweep writes in its output folder besides `results.jsonl` (rewritten from it at the
/// end of every run).
const DERIVED: [&str; 3] = ["results.csv", "throughput.svg", "breakdown.svg"];

/// Checks that `out` holds nothing of the user's that a sweep would append to or write over:
/// a `results.jsonl` whose every line is a sweep's row (an earlier run to resume), the files
/// derived from it only beside it, and a `profile.json` that is a profile. Anything else is
/// refused, naming the file, before any point runs.
fn check_out(out: &Path) -> anyhow::Result<()> {
    let refuse = |f: &Path, why: &str| {
        anyhow::anyhow!(
            "{} {why}; a sweep would write over it, so nothing was run (pick another --out)",
            f.display()
        )
    };
    let jsonl = out.join("results.jsonl");
    match std::fs::read_to_string(&jsonl) {
        Ok(t) => {
            if let Some((i, _)) = t
                .lines()
                .enumerate()
                .find(|(_, l)| !l.trim().is_empty() && serde_json::from_str::<Row>(l).is_err())
            {
                return Err(refuse(
                    &jsonl,
                    &format!("has a line ({}) that is not a sweep's result", i + 1),
                ));
            }
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            if let Some(f) = DERIVED.iter().map(|f| out.join(f)).find(|f| f.exists()) {
                return Err(refuse(
                    &f,
                    "exists without a sweep's results.jsonl beside it",
                ));
            }
        }
        Err(e) => return Err(anyhow::anyhow!("{}: {e}", jsonl.display())),
    }
    let prof = out.join("profile.json");
    if crate::probe::read(&prof).is_err() {
        return Err(refuse(&prof, "is not a tandem profile"));
    }
    Ok(())
}

pub fn run(a: SweepArgs) -> anyhow::Result<()> {
    let a = a.resolve()?;
    let caps = engine::caps::Capabilities::detect();
    let model = a
        .model
        .clone()
        .unwrap_or_else(|| crate::default_model(&caps).to_string());
    let out = a
        .out
        .clone()
        .unwrap_or_else(|| PathBuf::from("results").join(format!("sweep-{model}")));
    std::fs::create_dir_all(&out).with_context(|| format!("create {}", out.display()))?;
    check_out(&out)?;
    let jsonl = out.join("results.jsonl");
    // One profile for every point: the named one, or measured once into the output folder.
    let mut a = a;
    if a.profile.is_none() {
        let p = out.join("profile.json");
        if !p.exists() {
            let prof = crate::load_profile(None, !caps.gpus.is_empty())?;
            crate::probe::save(&p, &prof)?;
        }
        a.profile = Some(p);
    }
    let done: HashSet<String> = read_rows(&jsonl).into_iter().map(|r| r.key).collect();
    let points: Vec<Point> = grid(&a, &model)
        .into_iter()
        .filter(|p| !done.contains(&p.key()))
        .collect();
    println!(
        "sweep of {model}: {} points to run, {} already in {}",
        points.len(),
        done.len(),
        jsonl.display()
    );
    let pb = indicatif::ProgressBar::new(points.len() as u64);
    pb.set_style(
        indicatif::ProgressStyle::with_template("{msg:40} [{bar:30}] {pos}/{len} {elapsed}")
            .unwrap()
            .progress_chars("=> "),
    );
    for p in points {
        pb.set_message(format!(
            "b{} policy {} {}",
            p.batch_size, p.policy, p.weights_tier
        ));
        let row = match crate::measure(&bench_args(&p, &a), false) {
            Ok(m) => {
                let r = &m.result;
                let counts = m.plan.layer_counts();
                // A bound as a fraction of the measured step (0 without a step).
                let of_step = |bound: f64| {
                    if r.next_token.mean > 0.0 {
                        bound / r.next_token.mean
                    } else {
                        0.0
                    }
                };
                Row {
                    key: p.key(),
                    error: None,
                    throughput_tok_s: r.throughput_tok_s,
                    first_token_s: r.first_token.mean,
                    next_token_mean_s: r.next_token.mean,
                    next_token_p90_s: r.next_token.p90,
                    next_token_p99_s: r.next_token.p99,
                    decode_s: r.end_to_end.mean - r.first_token.mean,
                    roofline_fraction: of_step(m.roof.step_bound_s),
                    compute_roofline_fraction: of_step(m.roof.compute_bound_s),
                    layers_resident: counts.resident,
                    layers_streamed: counts.streamed,
                    layers_cpu: counts.cpu,
                    point: p,
                }
            }
            Err(e) => Row {
                key: p.key(),
                point: p,
                error: Some(format!("{e:#}")),
                throughput_tok_s: 0.0,
                first_token_s: 0.0,
                next_token_mean_s: 0.0,
                next_token_p90_s: 0.0,
                next_token_p99_s: 0.0,
                decode_s: 0.0,
                roofline_fraction: 0.0,
                compute_roofline_fraction: 0.0,
                layers_resident: 0,
                layers_streamed: 0,
                layers_cpu: 0,
            },
        };
        // Appended and flushed point by point: an interrupted sweep resumes after the last one.
        let mut f = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&jsonl)?;
        writeln!(f, "{}", serde_json::to_string(&row)?)?;
        pb.inc(1);
    }
    pb.finish();
    crate::QUIET.store(false, std::sync::atomic::Ordering::Relaxed);
    let rows = read_rows(&jsonl);
    write_csv(&out.join("results.csv"), &rows)?;
    plot_throughput(&out.join("throughput.svg"), &model, &rows)?;
    plot_breakdown(&out.join("breakdown.svg"), &model, &rows)?;
    for r in rows.iter().filter(|r| r.error.is_some()) {
        println!("not run: {}: {}", r.key, r.error.as_deref().unwrap_or(""));
    }
    println!(
        "wrote {}, results.csv, throughput.svg, breakdown.svg in {}",
        jsonl.display(),
        out.display()
    );
    Ok(())
}

fn write_csv(path: &Path, rows: &[Row]) -> anyhow::Result<()> {
    let mut s = String::from(
        "model,batch_size,policy,gpu_percentage,weights_tier,input_tokens,max_new_tokens,throughput_tok_s,first_token_s,next_token_mean_s,next_token_p90_s,next_token_p99_s,decode_s,roofline_fraction,compute_roofline_fraction,layers_resident,layers_streamed,layers_cpu,error\n",
    );
    for r in rows {
        let p = &r.point;
        s += &format!(
            "{},{},\"{}\",{},{},{},{},{:.4},{:.6},{:.6},{:.6},{:.6},{:.6},{:.4},{:.4},{},{},{},\"{}\"\n",
            p.model,
            p.batch_size,
            p.policy,
            p.gpu_percentage.map_or("auto".into(), |g| g.to_string()),
            p.weights_tier,
            p.input_tokens,
            p.max_new_tokens,
            r.throughput_tok_s,
            r.first_token_s,
            r.next_token_mean_s,
            r.next_token_p90_s,
            r.next_token_p99_s,
            r.decode_s,
            r.roofline_fraction,
            r.compute_roofline_fraction,
            r.layers_resident,
            r.layers_streamed,
            r.layers_cpu,
            r.error.as_deref().unwrap_or("").replace('"', "'")
        );
    }
    std::fs::write(path, s)?;
    Ok(())
}

fn plot_throughput(path: &Path, model: &str, rows: &[Row]) -> anyhow::Result<()> {
    use plotters::prelude::*;
    let ok: Vec<&Row> = rows.iter().filter(|r| r.error.is_none()).collect();
    let mut series: Vec<String> = ok.iter().map(|r| r.point.series()).collect();
    series.sort();
    series.dedup();
    let max_b = ok.iter().map(|r| r.point.batch_size).max().unwrap_or(1) as f64;
    let max_t = ok
        .iter()
        .map(|r| r.throughput_tok_s)
        .fold(0.0, f64::max)
        .max(1e-9);
    let root = SVGBackend::new(path, (900, 560)).into_drawing_area();
    root.fill(&WHITE)?;
    let mut chart = ChartBuilder::on(&root)
        .caption(
            format!("{model}: throughput against batch size"),
            ("sans-serif", 22),
        )
        .margin(16)
        .x_label_area_size(40)
        .y_label_area_size(60)
        .build_cartesian_2d((0.5f64..max_b * 2.0).log_scale(), 0.0..max_t * 1.1)?;
    chart
        .configure_mesh()
        .x_desc("batch size")
        .y_desc("tokens/s")
        .draw()?;
    for (i, s) in series.iter().enumerate() {
        let color = Palette99::pick(i).to_rgba();
        let mut pts: Vec<(f64, f64)> = ok
            .iter()
            .filter(|r| &r.point.series() == s)
            .map(|r| (r.point.batch_size as f64, r.throughput_tok_s))
            .collect();
        pts.sort_by(|a, b| a.0.total_cmp(&b.0));
        chart
            .draw_series(LineSeries::new(pts.clone(), color.stroke_width(2)))?
            .label(s.clone())
            .legend(move |(x, y)| {
                PathElement::new(vec![(x, y), (x + 18, y)], color.stroke_width(2))
            });
        chart.draw_series(pts.into_iter().map(|p| Circle::new(p, 4, color.filled())))?;
    }
    chart
        .configure_series_labels()
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .draw()?;
    root.present()?;
    Ok(())
}

fn plot_breakdown(path: &Path, model: &str, rows: &[Row]) -> anyhow::Result<()> {
    use plotters::prelude::*;
    let ok: Vec<&Row> = rows.iter().filter(|r| r.error.is_none()).collect();
    let max_t = ok
        .iter()
        .map(|r| r.first_token_s + r.decode_s)
        .fold(0.0, f64::max)
        .max(1e-9);
    let n = ok.len().max(1);
    let root = SVGBackend::new(path, (900, 140 + 28 * n as u32)).into_drawing_area();
    root.fill(&WHITE)?;
    let mut chart = ChartBuilder::on(&root)
        .caption(
            format!("{model}: time per run, prefill and decode"),
            ("sans-serif", 22),
        )
        .margin(16)
        .x_label_area_size(40)
        .y_label_area_size(300)
        .build_cartesian_2d(0.0..max_t * 1.05, 0.0..n as f64)?;
    let labels: Vec<String> = ok
        .iter()
        .map(|r| format!("b{} {}", r.point.batch_size, r.point.series()))
        .collect();
    chart
        .configure_mesh()
        .x_desc("seconds (prefill, then decode)")
        .y_labels(n)
        .y_label_formatter(&|y| labels.get(*y as usize).cloned().unwrap_or_default())
        .disable_y_mesh()
        .draw()?;
    for (i, r) in ok.iter().enumerate() {
        let y = i as f64;
        chart.draw_series(std::iter::once(Rectangle::new(
            [(0.0, y + 0.15), (r.first_token_s, y + 0.85)],
            BLUE.filled(),
        )))?;
        chart.draw_series(std::iter::once(Rectangle::new(
            [
                (r.first_token_s, y + 0.15),
                (r.first_token_s + r.decode_s, y + 0.85),
            ],
            RED.mix(0.7).filled(),
        )))?;
    }
    root.present()?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grid_applies_percentages_to_auto_when_given_and_keys_are_distinct() {
        let a = SweepArgs {
            batch_sizes: vec![1, 8],
            policies: vec!["auto".into(), "1".into()],
            gpu_percentages: vec![0.0, 50.0],
            weights_tiers: vec!["pageable".into()],
            ..Default::default()
        }
        .resolve()
        .unwrap();
        let g = grid(&a, "opt-1.3b");
        assert_eq!(g.len(), 4 + 4);
        let keys: HashSet<String> = g.iter().map(Point::key).collect();
        assert_eq!(keys.len(), g.len());
        // Without percentages, `auto` picks its own: one point per batch.
        let a = SweepArgs {
            batch_sizes: vec![1, 8],
            policies: vec!["auto".into(), "1".into()],
            weights_tiers: vec!["pageable".into()],
            ..Default::default()
        }
        .resolve()
        .unwrap();
        let g = grid(&a, "opt-1.3b");
        assert_eq!(g.len(), 2 + 2);
        assert!(g
            .iter()
            .any(|p| p.policy == "auto" && p.gpu_percentage.is_none()));
    }

    /// An output folder with a sweep's earlier results (or nothing) is taken; one holding
    /// other files a sweep would append to or write over is refused, and they are left as they
    /// were.
    #[test]
    fn output_folder_with_foreign_files_is_refused() {
        let base = std::env::temp_dir().join(format!("tandem-sweep-out-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&base);
        let fresh = base.join("fresh");
        std::fs::create_dir_all(&fresh).unwrap();
        check_out(&fresh).unwrap();

        // An earlier sweep's rows and derived files: resumed.
        let earlier = base.join("earlier");
        std::fs::create_dir_all(&earlier).unwrap();
        let row = Row {
            key: "k".into(),
            point: grid(&SweepArgs::default().resolve().unwrap(), "opt-1.3b").remove(0),
            error: None,
            throughput_tok_s: 1.0,
            first_token_s: 0.1,
            next_token_mean_s: 0.1,
            next_token_p90_s: 0.1,
            next_token_p99_s: 0.1,
            decode_s: 0.1,
            roofline_fraction: 0.5,
            compute_roofline_fraction: 0.6,
            layers_resident: 0,
            layers_streamed: 0,
            layers_cpu: 24,
        };
        let line = serde_json::to_string(&row).unwrap();
        // A row written before the compute roofline's column still reads, with 0 there.
        let mut v: serde_json::Value = serde_json::from_str(&line).unwrap();
        v.as_object_mut()
            .unwrap()
            .remove("compute_roofline_fraction");
        let old_line = v.to_string();
        assert_eq!(
            serde_json::from_str::<Row>(&old_line)
                .unwrap()
                .compute_roofline_fraction,
            0.0
        );
        std::fs::write(
            earlier.join("results.jsonl"),
            format!("{line}\n\n{old_line}\n"),
        )
        .unwrap();
        std::fs::write(earlier.join("results.csv"), "x").unwrap();
        check_out(&earlier).unwrap();

        // The user's own files under the names a sweep writes.
        let cases: [(&str, &str, &str); 3] = [
            ("results.jsonl", "{\"mine\": 1}\n", "line (1)"),
            (
                "throughput.svg",
                "<svg/>",
                "without a sweep's results.jsonl",
            ),
            ("profile.json", "{\"mine\": 1}", "not a tandem profile"),
        ];
        for (i, (name, text, why)) in cases.iter().enumerate() {
            let d = base.join(format!("user{i}"));
            std::fs::create_dir_all(&d).unwrap();
            std::fs::write(d.join(name), text).unwrap();
            let e = check_out(&d).unwrap_err().to_string();
            assert!(e.contains(name) && e.contains(why), "{name}: {e}");
            let e = run(SweepArgs {
                model: Some("opt-1.3b".into()),
                out: Some(d.clone()),
                ..Default::default()
            })
            .unwrap_err()
            .to_string();
            assert!(e.contains(name), "{name}: {e}");
            assert_eq!(std::fs::read_to_string(d.join(name)).unwrap(), *text);
            assert_eq!(
                std::fs::read_dir(&d).unwrap().count(),
                1,
                "{name}: nothing added"
            );
        }
        std::fs::remove_dir_all(&base).unwrap();
    }

    #[test]
    fn bad_grid_values_are_refused() {
        let a = SweepArgs {
            policies: vec!["0,1,0,0,0,0".into()],
            ..Default::default()
        };
        assert!(a.resolve().is_err());
        let a = SweepArgs {
            weights_tiers: vec!["cxl".into()],
            ..Default::default()
        };
        assert!(a.resolve().is_err());
    }

    #[test]
    fn toml_config_fills_what_flags_leave_out() {
        let dir = std::env::temp_dir().join(format!("tandem-sweep-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let f = dir.join("s.toml");
        std::fs::write(
            &f,
            "model = \"opt-1.3b\"\nbatch_sizes = [1, 64]\npolicies = [\"1\"]\n",
        )
        .unwrap();
        let a = SweepArgs {
            config: Some(f.clone()),
            batch_sizes: vec![4],
            ..Default::default()
        }
        .resolve()
        .unwrap();
        assert_eq!(a.model.as_deref(), Some("opt-1.3b"));
        assert_eq!(a.batch_sizes, vec![4]);
        assert_eq!(a.policies, vec!["1".to_string()]);
        std::fs::write(&f, "modle = \"x\"\n").unwrap();
        let e = SweepArgs {
            config: Some(f),
            ..Default::default()
        }
        .resolve()
        .unwrap_err();
        assert!(format!("{e:#}").contains("modle"), "{e:#}");
        std::fs::remove_dir_all(dir).ok();
    }
}
