//! Whole-model checks against HF transformers: the fixtures in tests/data were written by
//! ci/fixtures/make_fixtures.py (random-weight OPT and LLaMA-GQA checkpoints and their logits).

use std::path::PathBuf;

use engine::weights::Weights;
use platform::MemTier;

/// The reference forward computes in f64/f32 from the same bf16 weights as HF's float32 run;
/// the two differ only in summation order and f32 rounding of intermediates (seen: 1e-6 of the
/// largest logit), so 1e-4 of it leaves room for other orders and still catches any real slip.
const REF_TOL: f32 = 1e-4;

pub fn data_dir(name: &str) -> PathBuf {
    match std::env::var_os("TANDEM_DATA") {
        Some(d) => PathBuf::from(d).join("engine").join(name),
        None => PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/data").join(name),
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
            let ids: Vec<u32> = ids.data().chunks_exact(4).map(|b| i32::from_le_bytes([b[0], b[1], b[2], b[3]]) as u32).collect();
            let logits: Vec<f32> = logits.data().chunks_exact(4).map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])).collect();
            Some((ids, logits))
        })
        .collect()
}

fn check_reference(name: &str) {
    let w = Weights::load(&data_dir(name), MemTier::Pageable, &|_| {}).unwrap();
    let prompts = fixture_logits(name);
    assert!(prompts.len() >= 3, "{name}: fixture has {} prompts", prompts.len());
    for (ids, want) in prompts {
        let got = engine::reference::forward(&w, &ids);
        assert_eq!(got.len(), want.len());
        let scale = want.iter().fold(0f32, |m, x| m.max(x.abs()));
        let err = got.iter().zip(&want).fold(0f32, |m, (g, w)| m.max((g - w).abs()));
        assert!(err <= REF_TOL * scale.max(1.0), "{name} len {}: max abs err {err} (scale {scale})", ids.len());
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
    let e = Weights::load(&data_dir("no-such-model"), MemTier::Pageable, &|_| {}).err().unwrap().to_string();
    assert!(e.contains("no-such-model") && e.contains("config.json"), "{e}");
}
