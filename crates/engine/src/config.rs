//! Model configuration: from an HF `config.json`, or a named preset for dummy-weight timing runs.
//!
//! Two families, as DESIGN.md says. OPT: LayerNorm before each block, learned positions with an
//! offset of 2, ReLU, biases everywhere, MHA. LLaMA: RMSNorm, RoPE (with LLaMA-3 frequency
//! scaling when the config asks for it), SwiGLU, GQA, no biases.

use std::path::Path;

use serde::Serialize;
use serde_json::Value;

use crate::{Error, Result};

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub enum Family {
    Opt,
    Llama,
}

/// LLaMA-3 RoPE frequency scaling (`rope_scaling.rope_type = "llama3"`).
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Llama3RopeScaling {
    pub factor: f64,
    pub low_freq_factor: f64,
    pub high_freq_factor: f64,
    pub original_max_position_embeddings: f64,
}

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct ModelConfig {
    pub name: String,
    pub family: Family,
    pub hidden: usize,
    pub layers: usize,
    pub heads: usize,
    pub kv_heads: usize,
    pub head_dim: usize,
    /// FC1 width (OPT) or gate/up width (LLaMA).
    pub ffn: usize,
    pub vocab: usize,
    pub max_positions: usize,
    pub norm_eps: f64,
    pub rope_theta: f64,
    pub rope_scaling: Option<Llama3RopeScaling>,
    pub tie_word_embeddings: bool,
}

/// OPT's learned position table starts at index 2 (HF `OPTLearnedPositionalEmbedding`).
pub const OPT_POSITION_OFFSET: usize = 2;

/// Presets for timing runs with dummy weights (shapes of the published checkpoints).
pub const PRESETS: &[&str] = &[
    "opt-1.3b",
    "opt-6.7b",
    "opt-13b",
    "opt-30b",
    "opt-66b",
    "opt-175b",
    "llama2-7b",
    "llama3-8b",
    "llama3-70b",
];

impl ModelConfig {
    fn opt(name: &str, hidden: usize, layers: usize, heads: usize) -> Self {
        ModelConfig {
            name: name.into(),
            family: Family::Opt,
            hidden,
            layers,
            heads,
            kv_heads: heads,
            head_dim: hidden / heads,
            ffn: 4 * hidden,
            vocab: 50272,
            max_positions: 2048,
            norm_eps: 1e-5,
            rope_theta: 0.0,
            rope_scaling: None,
            tie_word_embeddings: true,
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn llama(
        name: &str,
        hidden: usize,
        layers: usize,
        heads: usize,
        kv_heads: usize,
        ffn: usize,
        vocab: usize,
        theta: f64,
    ) -> Self {
        ModelConfig {
            name: name.into(),
            family: Family::Llama,
            hidden,
            layers,
            heads,
            kv_heads,
            head_dim: hidden / heads,
            ffn,
            vocab,
            max_positions: if vocab > 100_000 { 8192 } else { 4096 },
            norm_eps: 1e-5,
            rope_theta: theta,
            rope_scaling: None,
            tie_word_embeddings: false,
        }
    }

    /// A named preset (see [`PRESETS`]).
    pub fn preset(name: &str) -> Result<Self> {
        let l3 = |mut c: ModelConfig| {
            c.rope_scaling = Some(Llama3RopeScaling {
                factor: 8.0,
                low_freq_factor: 1.0,
                high_freq_factor: 4.0,
                original_max_position_embeddings: 8192.0,
            });
            c.max_positions = 131072;
            c
        };
        let c = match name.to_ascii_lowercase().as_str() {
            "opt-1.3b" => Self::opt(name, 2048, 24, 32),
            "opt-6.7b" => Self::opt(name, 4096, 32, 32),
            "opt-13b" => Self::opt(name, 5120, 40, 40),
            "opt-30b" => Self::opt(name, 7168, 48, 56),
            "opt-66b" => Self::opt(name, 9216, 64, 72),
            "opt-175b" => Self::opt(name, 12288, 96, 96),
            "llama2-7b" => Self::llama(name, 4096, 32, 32, 32, 11008, 32000, 10000.0),
            "llama3-8b" => l3(Self::llama(name, 4096, 32, 32, 8, 14336, 128256, 500000.0)),
            "llama3-70b" => l3(Self::llama(name, 8192, 80, 64, 8, 28672, 128256, 500000.0)),
            _ => {
                return Err(Error::Config(format!(
                    "unknown model preset `{name}`; presets: {}",
                    PRESETS.join(", ")
                )))
            }
        };
        c.validate()?;
        Ok(c)
    }

    /// Reads an HF `config.json` (OPT or LLaMA families).
    pub fn from_file(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
        let v: Value = serde_json::from_str(&text)
            .map_err(|e| Error::Config(format!("{}: not JSON: {e}", path.display())))?;
        let name = path
            .parent()
            .and_then(|p| p.file_name())
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_default();
        Self::from_json(&name, &v).map_err(|e| Error::Config(format!("{}: {e}", path.display())))
    }

    pub fn from_json(name: &str, v: &Value) -> Result<Self> {
        let model_type = v["model_type"].as_str().unwrap_or("");
        let uint = |k: &str| -> Result<usize> {
            v[k].as_u64()
                .map(|x| x as usize)
                .ok_or_else(|| Error::Config(format!("`{k}` missing or not an integer")))
        };
        let opt_uint = |k: &str| v[k].as_u64().map(|x| x as usize);
        let float = |k: &str, d: f64| v[k].as_f64().unwrap_or(d);
        let c = match model_type {
            "opt" => {
                if v["do_layer_norm_before"].as_bool() == Some(false) {
                    return Err(Error::Config(
                        "OPT with do_layer_norm_before=false (opt-350m) is not supported".into(),
                    ));
                }
                let hidden = uint("hidden_size")?;
                if opt_uint("word_embed_proj_dim").is_some_and(|d| d != hidden) {
                    return Err(Error::Config(
                        "OPT with word_embed_proj_dim != hidden_size (opt-350m) is not supported"
                            .into(),
                    ));
                }
                if let Some(act) = v["activation_function"].as_str() {
                    if act != "relu" {
                        return Err(Error::Config(format!(
                            "OPT activation `{act}` is not supported (relu only)"
                        )));
                    }
                }
                let heads = uint("num_attention_heads")?;
                ModelConfig {
                    name: name.into(),
                    family: Family::Opt,
                    hidden,
                    layers: uint("num_hidden_layers")?,
                    heads,
                    kv_heads: heads,
                    head_dim: hidden / heads.max(1),
                    ffn: uint("ffn_dim")?,
                    vocab: uint("vocab_size")?,
                    max_positions: uint("max_position_embeddings")?,
                    norm_eps: 1e-5,
                    rope_theta: 0.0,
                    rope_scaling: None,
                    tie_word_embeddings: v["tie_word_embeddings"].as_bool().unwrap_or(true),
                }
            }
            "llama" | "mistral" => {
                if let Some(act) = v["hidden_act"].as_str() {
                    if act != "silu" {
                        return Err(Error::Config(format!(
                            "LLaMA activation `{act}` is not supported (silu only)"
                        )));
                    }
                }
                let hidden = uint("hidden_size")?;
                let heads = uint("num_attention_heads")?;
                // transformers 5 moved rope_theta and the scaling into `rope_parameters`.
                let rope = if v["rope_parameters"].is_object() {
                    &v["rope_parameters"]
                } else {
                    &v["rope_scaling"]
                };
                let rope_theta = v["rope_theta"]
                    .as_f64()
                    .or(v["rope_parameters"]["rope_theta"].as_f64())
                    .unwrap_or(10000.0);
                let rope_scaling = match rope {
                    Value::Null => None,
                    s if s["rope_type"].as_str().or(s["type"].as_str()) == Some("llama3") => {
                        Some(Llama3RopeScaling {
                            factor: s["factor"].as_f64().unwrap_or(8.0),
                            low_freq_factor: s["low_freq_factor"].as_f64().unwrap_or(1.0),
                            high_freq_factor: s["high_freq_factor"].as_f64().unwrap_or(4.0),
                            original_max_position_embeddings: s["original_max_position_embeddings"]
                                .as_f64()
                                .unwrap_or(8192.0),
                        })
                    }
                    s if s["rope_type"].as_str() == Some("default") => None,
                    s => {
                        return Err(Error::Config(format!(
                            "rope_scaling {s} is not supported (llama3 or none)"
                        )))
                    }
                };
                ModelConfig {
                    name: name.into(),
                    family: Family::Llama,
                    hidden,
                    layers: uint("num_hidden_layers")?,
                    heads,
                    kv_heads: opt_uint("num_key_value_heads").unwrap_or(heads),
                    head_dim: opt_uint("head_dim").unwrap_or(hidden / heads.max(1)),
                    ffn: uint("intermediate_size")?,
                    vocab: uint("vocab_size")?,
                    max_positions: uint("max_position_embeddings")?,
                    norm_eps: float("rms_norm_eps", 1e-6),
                    rope_theta,
                    rope_scaling,
                    tie_word_embeddings: v["tie_word_embeddings"].as_bool().unwrap_or(false),
                }
            }
            other => {
                return Err(Error::Config(format!(
                    "model_type `{other}` is not supported (opt, llama)"
                )))
            }
        };
        c.validate()?;
        Ok(c)
    }

    /// Shape rules the kernels rely on.
    pub fn validate(&self) -> Result<()> {
        let bad = |m: String| Err(Error::Config(format!("{}: {m}", self.name)));
        if self.hidden == 0
            || self.layers == 0
            || self.heads == 0
            || self.vocab == 0
            || self.ffn == 0
        {
            return bad("hidden, layers, heads, vocab and ffn must be positive".into());
        }
        if self.kv_heads == 0 || !self.heads.is_multiple_of(self.kv_heads) {
            return bad(format!(
                "{} heads is not a multiple of {} KV heads",
                self.heads, self.kv_heads
            ));
        }
        if self.family == Family::Opt && self.q_dim() != self.hidden {
            return bad(format!(
                "hidden {} is not {} heads × head_dim {}",
                self.hidden, self.heads, self.head_dim
            ));
        }
        if !self.head_dim.is_multiple_of(2) {
            return bad(format!("head_dim {} must be even", self.head_dim));
        }
        Ok(())
    }

    pub fn q_dim(&self) -> usize {
        self.heads * self.head_dim
    }

    pub fn kv_dim(&self) -> usize {
        self.kv_heads * self.head_dim
    }

    /// Output width of the fused QKV projection.
    pub fn qkv_dim(&self) -> usize {
        self.q_dim() + 2 * self.kv_dim()
    }

    /// Rows of the S5 weight: OPT's FC1, or LLaMA's fused gate/up (twice the FFN width).
    pub fn up_rows(&self) -> usize {
        match self.family {
            Family::Opt => self.ffn,
            Family::Llama => 2 * self.ffn,
        }
    }

    pub fn has_bias(&self) -> bool {
        self.family == Family::Opt
    }

    /// Parameters of one decoder layer.
    pub fn layer_params(&self) -> usize {
        let h = self.hidden;
        let attn = h * self.qkv_dim() + self.q_dim() * h;
        let mlp = match self.family {
            Family::Opt => 2 * h * self.ffn,
            Family::Llama => 3 * h * self.ffn,
        };
        let bias = if self.has_bias() {
            self.qkv_dim() + h + self.ffn + h + 4 * h
        } else {
            2 * h
        };
        attn + mlp + bias
    }

    /// Parameters of the whole model (embeddings and head counted once when tied).
    pub fn total_params(&self) -> usize {
        let emb = self.vocab * self.hidden;
        let pos = if self.family == Family::Opt {
            (self.max_positions + OPT_POSITION_OFFSET) * self.hidden
        } else {
            0
        };
        let head = if self.tie_word_embeddings { 0 } else { emb };
        emb + pos + head + self.layers * self.layer_params() + 2 * self.hidden
    }

    /// Bytes of KV cache per token (all layers, bf16).
    pub fn kv_bytes_per_token(&self) -> usize {
        2 * self.layers * self.kv_dim() * 2
    }

    /// RoPE inverse frequencies (`head_dim / 2` of them), LLaMA-3 scaling applied.
    pub fn rope_inv_freq(&self) -> Vec<f64> {
        let d = self.head_dim as f64;
        (0..self.head_dim / 2)
            .map(|i| {
                let f = 1.0 / self.rope_theta.powf(2.0 * i as f64 / d);
                match &self.rope_scaling {
                    None => f,
                    Some(s) => {
                        let low_wavelen = s.original_max_position_embeddings / s.low_freq_factor;
                        let high_wavelen = s.original_max_position_embeddings / s.high_freq_factor;
                        let wavelen = 2.0 * std::f64::consts::PI / f;
                        if wavelen < high_wavelen {
                            f
                        } else if wavelen > low_wavelen {
                            f / s.factor
                        } else {
                            let smooth = (s.original_max_position_embeddings / wavelen
                                - s.low_freq_factor)
                                / (s.high_freq_factor - s.low_freq_factor);
                            (1.0 - smooth) * f / s.factor + smooth * f
                        }
                    }
                }
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn presets_have_published_sizes() {
        // Parameter counts of the published checkpoints, within 3 %.
        for (name, billions) in [
            ("opt-30b", 30.0),
            ("opt-175b", 175.0),
            ("llama2-7b", 6.74),
            ("llama3-8b", 8.03),
            ("llama3-70b", 70.6),
        ] {
            let c = ModelConfig::preset(name).unwrap();
            let b = c.total_params() as f64 / 1e9;
            assert!(
                (b / billions - 1.0).abs() < 0.03,
                "{name}: {b:.2}B parameters"
            );
        }
        let e = ModelConfig::preset("gpt-5").unwrap_err().to_string();
        assert!(e.contains("gpt-5") && e.contains("opt-30b"), "{e}");
    }

    #[test]
    fn parses_hf_configs_and_rejects_what_it_cannot_run() {
        let llama: Value = serde_json::from_str(
            r#"{"model_type":"llama","hidden_size":4096,"intermediate_size":14336,"num_hidden_layers":32,
                "num_attention_heads":32,"num_key_value_heads":8,"rms_norm_eps":1e-5,"rope_theta":500000.0,
                "vocab_size":128256,"max_position_embeddings":131072,"hidden_act":"silu",
                "rope_scaling":{"factor":8.0,"low_freq_factor":1.0,"high_freq_factor":4.0,
                "original_max_position_embeddings":8192,"rope_type":"llama3"}}"#,
        )
        .unwrap();
        let c = ModelConfig::from_json("l3", &llama).unwrap();
        assert_eq!((c.kv_heads, c.head_dim, c.qkv_dim()), (8, 128, 6144));
        assert!(c.rope_scaling.is_some());
        let f = c.rope_inv_freq();
        assert_eq!(f.len(), 64);
        assert_eq!(f[0], 1.0); // highest frequency untouched
        assert!((f[63] - 1.0 / 500000f64.powf(126.0 / 128.0) / 8.0).abs() < 1e-18); // lowest scaled by 8

        let opt: Value = serde_json::from_str(
            r#"{"model_type":"opt","hidden_size":512,"ffn_dim":2048,"num_hidden_layers":2,"num_attention_heads":8,
                "vocab_size":1000,"max_position_embeddings":128,"do_layer_norm_before":true,"word_embed_proj_dim":512,
                "activation_function":"relu"}"#,
        )
        .unwrap();
        let c = ModelConfig::from_json("o", &opt).unwrap();
        assert_eq!((c.head_dim, c.family), (64, Family::Opt));

        let mut bad = opt.clone();
        bad["num_attention_heads"] = 7.into();
        assert!(ModelConfig::from_json("o", &bad).is_err());
        let gpt: Value = serde_json::from_str(r#"{"model_type":"gpt2"}"#).unwrap();
        assert!(ModelConfig::from_json("g", &gpt)
            .unwrap_err()
            .to_string()
            .contains("gpt2"));
    }
}
