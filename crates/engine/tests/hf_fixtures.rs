//! Whole-model checks against HF transformers: the fixtures in tests/data were written by
//! ci/fixtures/make_fixtures.py (random-weight OPT and LLaMA-GQA checkpoints and their logits).

use std::path::PathBuf;

use engine::placement::Policy;
use engine::weights::Weights;
use platform::MemTier;

/// The reference forward computes in f64/f32 from the same bf16 weights as HF's float32 run;
/// the two differ only in summation order and f32 rounding of intermediates (seen: 1e-6 of the
/// largest logit), so 1e-4 of it leaves room for other orders and still catches any real slip.
const REF_TOL: f32 = 1e-4;

pub fn data_dir(name: &str) -> PathBuf {
    match std::env::var_os("TANDEM_DATA") {
        Some(d) => PathBuf::from(d).join("engine").join(name),
        None => PathBuf::from(env!("CARGO_MANIFEST_DIR"))
            .join("tests/data")
            .join(name),
    }
}

/// (token ids, logits [len × vocab]) of each prompt of a fixture.
pub fn fixture_logits(name: &str) -> Vec<(Vec<u32>, Vec<f32>)> {
    let path = data_dir(name).join("logits.safetensors");
    let bytes = std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    (0..)
        .map_while(|i| {
            let ids = st.tensor(&format!("ids{i}")).ok()?;
            let logits = st.tensor(&format!("logits{i}")).ok()?;
            let ids: Vec<u32> = ids
                .data()
                .chunks_exact(4)
                .map(|b| i32::from_le_bytes([b[0], b[1], b[2], b[3]]) as u32)
                .collect();
            let logits: Vec<f32> = logits
                .data()
                .chunks_exact(4)
                .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
                .collect();
            Some((ids, logits))
        })
        .collect()
}

fn check_reference(name: &str) {
    let w = Weights::load(&data_dir(name), MemTier::Pageable, &|_| {}).unwrap();
    let prompts = fixture_logits(name);
    assert!(
        prompts.len() >= 3,
        "{name}: fixture has {} prompts",
        prompts.len()
    );
    for (ids, want) in prompts {
        let got = engine::reference::forward(&w, &ids);
        assert_eq!(got.len(), want.len());
        let scale = want.iter().fold(0f32, |m, x| m.max(x.abs()));
        let err = got
            .iter()
            .zip(&want)
            .fold(0f32, |m, (g, w)| m.max((g - w).abs()));
        assert!(
            err <= REF_TOL * scale.max(1.0),
            "{name} len {}: max abs err {err} (scale {scale})",
            ids.len()
        );
    }
}

#[test]
fn reference_matches_hf_opt() {
    check_reference("tiny-opt");
}

#[test]
fn reference_matches_hf_llama_gqa() {
    check_reference("tiny-llama-gqa");
}

#[test]
fn missing_checkpoint_is_a_clear_error() {
    let e = Weights::load(&data_dir("no-such-model"), MemTier::Pageable, &|_| {})
        .err()
        .unwrap()
        .to_string();
    assert!(
        e.contains("no-such-model") && e.contains("config.json"),
        "{e}"
    );
}

/// The CPU engine rounds activations, Q and the KV cache to bf16 (8 bits of mantissa) before
/// each GEMM and attention, as the HF bf16 model would; against the float32 logits that costs
/// about 1 % of the largest logit on these 2-layer models. 4 % still fails any wrong
/// position, head, mask or KV block (those give errors of the order of the logits).
const ENGINE_TOL: f32 = 0.04;

fn max_err(got: &[f32], want: &[f32]) -> (f32, f32) {
    let scale = want.iter().fold(0f32, |m, x| m.max(x.abs())).max(1.0);
    (
        got.iter()
            .zip(want)
            .fold(0f32, |m, (g, w)| m.max((g - w).abs())),
        scale,
    )
}

/// What the fixture check drives: prefill a batch, then decode one token per sequence; both
/// return logits `[B, vocab]`.
trait Engine {
    fn prefill(&mut self, prompts: &[Vec<u32>]) -> Vec<f32>;
    fn decode(&mut self, tokens: &[u32]) -> Vec<f32>;
}

impl Engine for engine::exec::cpu::CpuSession<'_> {
    fn prefill(&mut self, prompts: &[Vec<u32>]) -> Vec<f32> {
        engine::exec::cpu::CpuSession::prefill(self, prompts).unwrap()
    }
    fn decode(&mut self, tokens: &[u32]) -> Vec<f32> {
        engine::exec::cpu::CpuSession::decode(self, tokens).unwrap()
    }
}

/// A GPU session whose prefills run in this many minibatches.
struct Minibatched<'m>(engine::exec::gpu::GpuSession<'m>, usize);

impl Engine for Minibatched<'_> {
    fn prefill(&mut self, prompts: &[Vec<u32>]) -> Vec<f32> {
        self.0
            .prefill_minibatches(prompts, self.1, true)
            .unwrap()
            .1
            .unwrap()
    }
    fn decode(&mut self, tokens: &[u32]) -> Vec<f32> {
        self.0.decode(tokens, true).unwrap().1.unwrap()
    }
}

/// Prefill the first half of every fixture prompt as one batch, then decode the rest token by
/// token (teacher-forced with the fixture's ids), checking each step's logits against HF's.
fn check_session(name: &str, what: &str, vocab: usize, s: &mut dyn Engine) {
    let prompts = fixture_logits(name);
    let cut: Vec<usize> = prompts
        .iter()
        .map(|(ids, _)| ids.len().div_ceil(2))
        .collect();
    let heads: Vec<Vec<u32>> = prompts
        .iter()
        .zip(&cut)
        .map(|((ids, _), &c)| ids[..c].to_vec())
        .collect();
    let logits = s.prefill(&heads);
    let mut worst = 0f32;
    for (i, ((_, want), &c)) in prompts.iter().zip(&cut).enumerate() {
        let (e, scale) = max_err(
            &logits[i * vocab..(i + 1) * vocab],
            &want[(c - 1) * vocab..c * vocab],
        );
        assert!(
            e <= ENGINE_TOL * scale,
            "{name} {what}: prefill of prompt {i} ({c} tokens): max abs err {e} (scale {scale})"
        );
        worst = worst.max(e / scale);
    }
    // Sequences whose fixture ids run out go on with their own greedy tokens, unchecked, so
    // that the batch stays ragged to the end.
    let steps = prompts
        .iter()
        .zip(&cut)
        .map(|((ids, _), &c)| ids.len() - c)
        .max()
        .unwrap();
    let mut prev = logits;
    for step in 0..steps {
        let greedy = engine::exec::cpu::argmax_rows(&prev, vocab);
        let toks: Vec<u32> = prompts
            .iter()
            .zip(&cut)
            .enumerate()
            .map(|(i, ((ids, _), &c))| ids.get(c + step).copied().unwrap_or(greedy[i]))
            .collect();
        let logits = s.decode(&toks);
        for (i, ((ids, want), &c)) in prompts.iter().zip(&cut).enumerate() {
            let pos = c + step;
            if pos >= ids.len() {
                continue;
            }
            let (e, scale) = max_err(
                &logits[i * vocab..(i + 1) * vocab],
                &want[pos * vocab..(pos + 1) * vocab],
            );
            assert!(e <= ENGINE_TOL * scale, "{name} {what}: decode step {step}, prompt {i}, position {pos}: max abs err {e} (scale {scale})");
            worst = worst.max(e / scale);
        }
        prev = logits;
    }
    eprintln!("{name} {what}: worst relative logit error {worst:.4} over prefill and {steps} decode steps");
}

/// The CPU engine with weights, packed weights and KV on `tier`.
fn check_cpu_session(name: &str, tier: MemTier) {
    let w = Weights::load(&data_dir(name), tier, &|_| {}).unwrap();
    let vocab = w.config.vocab;
    let model = engine::exec::cpu::CpuModel::new(w).unwrap();
    assert!(model.layers.iter().flatten().all(|l| l.qkv.tier() == tier));
    let mut s = engine::exec::cpu::CpuSession::new(&model, 64, tier).unwrap();
    check_session(name, &format!("cpu, {tier}"), vocab, &mut s);
}

/// GPU and mixed placements of the 2-layer fixtures: full GPU with 100 %, 50 % (pinned) and
/// 0 % (pageable) resident; attention on the CPU (policy 2) in both phases or in one (the
/// prompt's KV moves between the pools after prefill); a CPU layer before a streamed GPU layer;
/// a resident GPU layer before a CPU layer (the head then runs on the CPU); split layers
/// (prefill on the GPU from the CPU's packed weights, unpacked there; decode on the CPU) alone,
/// after a resident layer, before a streamed one, and with prefill attention on the CPU; CPU
/// linears with GPU attention (policy (1,0,0,1,1,1)).
fn check_gpu_sessions(name: &str) {
    let Some(gpu) = cuda_kernels::gpu_or_skip() else {
        return;
    };
    let _one = gpu_lock();
    let cases: [(&str, &str, f64, bool, &[&str], usize); 20] = [
        ("0", "1", 0.0, true, &[], 1),
        ("2", "1", 0.0, false, &[], 1),
        ("0", "0", 50.0, false, &["decode@1:1"], 1),
        ("0", "0", 0.0, true, &["decode@0:1"], 1),
        ("0", "0", 100.0, false, &[], 1),
        ("0", "0", 50.0, true, &[], 1),
        ("0", "0", 0.0, false, &[], 1),
        ("2", "2", 100.0, false, &[], 1),
        ("0", "2", 100.0, false, &[], 1),
        ("2", "0", 50.0, true, &[], 1),
        ("0", "2", 0.0, false, &["0:1"], 1),
        ("0", "0", 0.0, true, &["0:1"], 1),
        ("0", "0", 50.0, false, &["1:1"], 1),
        // Two minibatches run layer by layer: CPU attention of one overlapping GPU work of
        // the other; streamed and split layers loaded once for both.
        ("2", "2", 100.0, false, &[], 2),
        ("0", "1", 0.0, true, &[], 2),
        ("0", "2", 0.0, false, &["0:1"], 2),
        // CPU linears with attention on the GPU (KV there only): in both phases; as split
        // layers (prefill streamed), with two minibatches; after a CPU prefill (the prompt's
        // KV moves up); after a resident layer.
        ("100111", "100111", 0.0, true, &[], 1),
        ("0", "100111", 0.0, true, &[], 2),
        ("1", "100111", 0.0, false, &[], 1),
        ("0", "0", 50.0, false, &["decode@1:100111"], 1),
    ];
    for (prefill, decode, pct, pin, overrides, minibatches) in cases {
        let w = Weights::load(&data_dir(name), MemTier::Pageable, &|_| {}).unwrap();
        let vocab = w.config.vocab;
        let (pp, dp): (Policy, Policy) = (prefill.parse().unwrap(), decode.parse().unwrap());
        let ov: Vec<engine::placement::LayerOverride> =
            overrides.iter().map(|o| o.parse().unwrap()).collect();
        let p = engine::placement::layer_placements(w.config.layers, pp, dp, pct, &ov).unwrap();
        let mut model = engine::exec::gpu::GpuModel::new(gpu.clone(), w, &p, pin).unwrap();
        let s = engine::exec::gpu::GpuSession::new(&mut model, 64, MemTier::Pageable).unwrap();
        let what = format!(
            "prefill {prefill}, decode {decode}, {pct}% resident, pinned {pin}, overrides {overrides:?}, {minibatches} minibatches"
        );
        check_session(name, &what, vocab, &mut Minibatched(s, minibatches));
    }
}

#[test]
fn gpu_engine_matches_hf_opt() {
    check_gpu_sessions("tiny-opt");
}

#[test]
fn gpu_engine_matches_hf_llama_gqa() {
    check_gpu_sessions("tiny-llama-gqa");
}

#[test]
fn cpu_engine_matches_hf_opt() {
    check_cpu_session("tiny-opt", MemTier::Pageable);
}

#[test]
fn cpu_engine_on_a_numa_node_matches_hf() {
    check_cpu_session("tiny-llama-gqa", MemTier::Numa(0));
}

#[test]
fn cpu_engine_matches_hf_llama_gqa() {
    check_cpu_session("tiny-llama-gqa", MemTier::Pageable);
}

/// The same checkpoint split into two shards with an index, one tensor stored as f32: it
/// loads to the same weights as the single file.
#[test]
fn sharded_checkpoint_loads_the_same_weights() {
    use safetensors::tensor::TensorView;
    use safetensors::Dtype;
    let src = data_dir("tiny-llama-gqa");
    let (dir, bytes) = scratch_copy("tiny-llama-gqa", "shards");
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let mut names: Vec<String> = st.names().into_iter().cloned().collect();
    names.sort();
    let widened: Vec<u8> = {
        let t = st.tensor("model.norm.weight").unwrap();
        t.data()
            .chunks_exact(2)
            .flat_map(|b| {
                half::bf16::from_le_bytes([b[0], b[1]])
                    .to_f32()
                    .to_le_bytes()
            })
            .collect()
    };
    let mut map = serde_json::Map::new();
    for (i, part) in names.chunks(names.len().div_ceil(2)).enumerate() {
        let file = format!("model-{:05}-of-00002.safetensors", i + 1);
        let mut views = Vec::new();
        for n in part {
            let t = st.tensor(n).unwrap();
            let v = if n == "model.norm.weight" {
                TensorView::new(Dtype::F32, t.shape().to_vec(), &widened).unwrap()
            } else {
                t
            };
            views.push((n.clone(), v));
            map.insert(n.clone(), serde_json::Value::String(file.clone()));
        }
        safetensors::serialize_to_file(views, &None, &dir.join(&file)).unwrap();
    }
    let index = serde_json::json!({ "metadata": {}, "weight_map": map });
    std::fs::write(dir.join("model.safetensors.index.json"), index.to_string()).unwrap();

    let a = Weights::load(&src, MemTier::Pageable, &|_| {}).unwrap();
    let b = Weights::load(&dir, MemTier::Pageable, &|_| {}).unwrap();
    std::fs::remove_dir_all(&dir).ok();
    let ids = [3u32, 14, 15, 92, 65, 35];
    assert_eq!(
        engine::reference::forward(&a, &ids),
        engine::reference::forward(&b, &ids)
    );
    assert_eq!(&a.final_norm_w.data[..], &b.final_norm_w.data[..]);
    for (x, y) in a.layers.iter().zip(&b.layers) {
        assert_eq!(&x.qkv_w.data[..], &y.qkv_w.data[..]);
        assert_eq!(&x.up_w.data[..], &y.up_w.data[..]);
    }
}

/// A scratch copy of fixture `name`'s folder (`tag` tells tests apart), with its config and
/// its checkpoint's bytes read back for the test to change.
fn scratch_copy(name: &str, tag: &str) -> (PathBuf, Vec<u8>) {
    let src = data_dir(name);
    let dir = std::env::temp_dir().join(format!("tandem-{tag}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::copy(src.join("config.json"), dir.join("config.json")).unwrap();
    (dir, std::fs::read(src.join("model.safetensors")).unwrap())
}

/// The error of loading `dir`, which is removed.
fn load_error(dir: &std::path::Path) -> String {
    let e = Weights::load(dir, MemTier::Pageable, &|_| {})
        .err()
        .expect("loading the changed checkpoint fails")
        .to_string();
    std::fs::remove_dir_all(dir).ok();
    e
}

/// A config that does not match its weights is an error naming the tensor and both shapes.
#[test]
fn config_and_weights_that_disagree_are_a_clear_error() {
    let (dir, bytes) = scratch_copy("tiny-opt", "badcfg");
    std::fs::write(dir.join("model.safetensors"), bytes).unwrap();
    let mut cfg: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("config.json")).unwrap()).unwrap();
    cfg["ffn_dim"] = 768.into();
    std::fs::write(dir.join("config.json"), cfg.to_string()).unwrap();
    let e = load_error(&dir);
    assert!(
        e.contains("fc1.weight") && e.contains("[768, 128]") && e.contains("[512, 128]"),
        "{e}"
    );
}

/// A truncated checkpoint is an error naming the file and saying what is wrong with it.
#[test]
fn truncated_checkpoint_is_a_clear_error() {
    let (dir, bytes) = scratch_copy("tiny-opt", "truncated");
    let file = dir.join("model.safetensors");
    std::fs::write(&file, &bytes[..1000]).unwrap();
    let e = load_error(&dir);
    assert!(
        e.contains(&file.display().to_string()) && e.contains("not a readable safetensors"),
        "{e}"
    );
}

/// The GPU tests of this file, one at a time: a CUDA graph capture in one test must not be
/// invalidated by another test synchronizing the same device.
fn gpu_lock() -> std::sync::MutexGuard<'static, ()> {
    static GPU: std::sync::Mutex<()> = std::sync::Mutex::new(());
    GPU.lock().unwrap_or_else(|e| e.into_inner())
}

/// A GPU session whose split layers change sides every decode step: step i streams i mod
/// (n + 1) of the n split layers to the GPU (attention where their decode policy puts it) and
/// computes the rest on the CPU.
struct CyclingSplit<'m>(engine::exec::gpu::GpuSession<'m>, usize);

impl Engine for CyclingSplit<'_> {
    fn prefill(&mut self, prompts: &[Vec<u32>]) -> Vec<f32> {
        self.0.prefill(prompts, true).unwrap().1.unwrap()
    }
    fn decode(&mut self, tokens: &[u32]) -> Vec<f32> {
        let (c, g) = self.0.model.split_counts();
        self.0.model.set_adaptive_split(self.1 % (c + g + 1), 55e9);
        self.1 += 1;
        self.0.decode(tokens, true).unwrap().1.unwrap()
    }
}

/// Every host layer split (prefill on the GPU from the packed weights, decode on the CPU), and
/// decode steps moving them between the CPU and the GPU as the adaptive split does: with the
/// attention on the CPU over host KV (policy 1, batch 1's split), and with it on the GPU over
/// the GPU's KV while the CPU runs the linears ((1,0,0,1,1,1), large batches' split).
fn check_adaptive_split(name: &str) {
    let Some(gpu) = cuda_kernels::gpu_or_skip() else {
        return;
    };
    let _one = gpu_lock();
    for (pin, decode) in [
        (false, "1"),
        (true, "1"),
        (false, "100111"),
        (true, "100111"),
    ] {
        let w = Weights::load(&data_dir(name), MemTier::Pageable, &|_| {}).unwrap();
        let vocab = w.config.vocab;
        let p = engine::placement::layer_placements(
            w.config.layers,
            Policy::FULL_GPU,
            Policy::FULL_GPU,
            0.0,
            &[format!("decode@0-1:{decode}").parse().unwrap()],
        )
        .unwrap();
        let mut model = engine::exec::gpu::GpuModel::new(gpu.clone(), w, &p, pin).unwrap();
        model.set_adaptive_split(0, 55e9);
        assert_eq!(model.split_counts(), (2, 0));
        let mut s = engine::exec::gpu::GpuSession::new(&mut model, 64, MemTier::Pageable).unwrap();
        // The prefill's step buffers made ahead, as the bench does (its exact token count, so
        // that the prefill runs on them).
        let tokens: usize = fixture_logits(name)
            .iter()
            .map(|(ids, _)| ids.len().div_ceil(2))
            .sum();
        s.reserve(tokens, 1).unwrap();
        let what = format!("adaptive split, decode policy {decode}, pinned {pin}");
        check_session(name, &what, vocab, &mut CyclingSplit(s, 1));
    }
}

#[test]
fn gpu_adaptive_split_matches_hf_opt() {
    check_adaptive_split("tiny-opt");
}

#[test]
fn gpu_adaptive_split_matches_hf_llama_gqa() {
    check_adaptive_split("tiny-llama-gqa");
}

/// Same-run agreement of graph and stream decode: the graph's paged attention is planned for a
/// padded table, so sums may be ordered differently; 1e-2 of the largest logit is far below
/// the error of a wrong position, block or sequence.
const GRAPH_TOL: f32 = 1e-2;

/// Decode steps replayed from a captured CUDA graph against the same steps launched one kernel
/// at a time: greedy decoding of two prompts past the graph's first table width (a new capture
/// at 5 pages), then a third prompt joining (a new capture for batch 3).
fn check_graph_decode(name: &str) {
    let Some(gpu) = cuda_kernels::gpu_or_skip() else {
        return;
    };
    let w = Weights::load(&data_dir(name), MemTier::Pageable, &|_| {}).unwrap();
    let (vocab, maxp) = (w.config.vocab, w.config.max_positions);
    let p = engine::placement::layer_placements(
        w.config.layers,
        Policy::FULL_GPU,
        Policy::FULL_GPU,
        100.0,
        &[],
    )
    .unwrap();
    let mut model = engine::exec::gpu::GpuModel::new(gpu, w, &p, false).unwrap();
    let prompts: Vec<Vec<u32>> = fixture_logits(name)
        .into_iter()
        .map(|(ids, _)| ids)
        .collect();
    let (first, third) = (&prompts[..2], &prompts[2..3]);
    let longest = first.iter().map(Vec::len).max().unwrap();
    let steps1 = 70.min(maxp - longest - 20);
    let _one = gpu_lock();
    let run = |model: &mut engine::exec::gpu::GpuModel, graphs: bool| -> Vec<Vec<f32>> {
        let mut s = engine::exec::gpu::GpuSession::new(model, 64, MemTier::Pageable).unwrap();
        s.graphs = graphs;
        let mut out = Vec::new();
        let what = |step: usize, e: engine::Error| {
            panic!("{name}, graphs {graphs}: decode step {step}: {e}")
        };
        let (mut toks, _) = s.prefill(first, false).unwrap();
        for i in 0..steps1 {
            let (t, lg) = s.decode(&toks, true).unwrap_or_else(|e| what(i, e));
            out.push(lg.unwrap());
            toks = t;
        }
        let (t3, _) = s.prefill(third, false).unwrap();
        toks.extend(t3);
        for i in steps1..steps1 + 8 {
            let (t, lg) = s.decode(&toks, true).unwrap_or_else(|e| what(i, e));
            out.push(lg.unwrap());
            toks = t;
        }
        // Every step from a graph (the GPU tests of this process run one at a time, so nothing
        // invalidates a capture).
        assert_eq!(s.graph_replays(), if graphs { out.len() } else { 0 });
        out
    };
    let graph = run(&mut model, true);
    let stream = run(&mut model, false);
    let mut worst = 0f32;
    for (i, (g, s)) in graph.iter().zip(&stream).enumerate() {
        assert_eq!(g.len() % vocab, 0);
        let (e, scale) = max_err(g, s);
        assert!(
            e <= GRAPH_TOL * scale,
            "{name}: decode step {i}: graph vs stream max abs err {e} (scale {scale})"
        );
        worst = worst.max(e / scale);
    }
    eprintln!(
        "{name}: CUDA graph decode over {} steps, worst relative logit difference {worst:.2e}",
        graph.len()
    );
}

#[test]
fn gpu_decode_graph_matches_stream_launches_opt() {
    check_graph_decode("tiny-opt");
}

#[test]
fn gpu_decode_graph_matches_stream_launches_llama_gqa() {
    check_graph_decode("tiny-llama-gqa");
}
