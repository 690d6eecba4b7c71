//! Model weights in host memory: loaded from HF safetensors (one file or sharded with
//! `model.safetensors.index.json`), or dummy weights generated in memory for timing runs.
//!
//! Layout: HF's, a linear's weight row-major `[out_features, in_features]`, bf16. Two fusions
//! are made at load so that each sublayer is one GEMM: Q, K and V rows stacked into one
//! `[q_dim + 2·kv_dim, hidden]` weight, and LLaMA's gate and up rows stacked into one
//! `[2·ffn, hidden]` weight (gate first). Every tensor lives on the host tier the caller names.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use half::{bf16, f16};
use platform::{HostBuf, MemTier};
use rayon::prelude::*;

use crate::config::{Family, ModelConfig, OPT_POSITION_OFFSET};
use crate::{Error, Result};

/// A bf16 tensor in host memory.
pub struct Tensor {
    pub data: HostBuf<bf16>,
    pub shape: Vec<usize>,
}

impl Tensor {
    /// A tensor of no elements (what remains where a weight was moved into a packed copy).
    pub fn empty() -> Self {
        Tensor {
            data: HostBuf::zeroed(0, MemTier::Pageable).expect("empty buffer"),
            shape: vec![0],
        }
    }
    pub fn rows(&self) -> usize {
        self.shape[0]
    }
    pub fn cols(&self) -> usize {
        self.shape.iter().skip(1).product()
    }
    pub fn bytes(&self) -> usize {
        self.data.bytes()
    }
}

/// One decoder layer. `up` is OPT's FC1 or LLaMA's fused gate/up; `down` is FC2 or down.
/// Biases and norm biases exist for OPT only.
pub struct LayerWeights {
    pub attn_norm_w: Tensor,
    pub attn_norm_b: Option<Tensor>,
    pub qkv_w: Tensor,
    pub qkv_b: Option<Tensor>,
    pub o_w: Tensor,
    pub o_b: Option<Tensor>,
    pub mlp_norm_w: Tensor,
    pub mlp_norm_b: Option<Tensor>,
    pub up_w: Tensor,
    pub up_b: Option<Tensor>,
    pub down_w: Tensor,
    pub down_b: Option<Tensor>,
}

impl LayerWeights {
    pub fn tensors(&self) -> impl Iterator<Item = &Tensor> {
        [
            &self.attn_norm_w,
            &self.qkv_w,
            &self.o_w,
            &self.mlp_norm_w,
            &self.up_w,
            &self.down_w,
        ]
        .into_iter()
        .chain(
            [
                &self.attn_norm_b,
                &self.qkv_b,
                &self.o_b,
                &self.mlp_norm_b,
                &self.up_b,
                &self.down_b,
            ]
            .into_iter()
            .flatten(),
        )
    }
    pub fn bytes(&self) -> usize {
        self.tensors().map(Tensor::bytes).sum()
    }
}

pub struct Weights {
    pub config: ModelConfig,
    pub embed: Tensor,
    /// OPT's learned positions, `[max_positions + 2, hidden]`.
    pub positions: Option<Tensor>,
    pub layers: Vec<LayerWeights>,
    pub final_norm_w: Tensor,
    pub final_norm_b: Option<Tensor>,
    /// `None` when tied to `embed`.
    pub lm_head: Option<Tensor>,
}

impl Weights {
    pub fn lm_head(&self) -> &Tensor {
        self.lm_head.as_ref().unwrap_or(&self.embed)
    }
    pub fn bytes(&self) -> usize {
        self.embed.bytes()
            + self.positions.as_ref().map_or(0, Tensor::bytes)
            + self.layers.iter().map(LayerWeights::bytes).sum::<usize>()
            + self.final_norm_w.bytes()
            + self.lm_head.as_ref().map_or(0, Tensor::bytes)
    }
}

// ---------------------------------------------------------------------------------------------
// Dummy weights.

/// Fills `out` with uniform values in `[-scale, scale]` from a counter-based hash, so that the
/// fill is parallel and reproducible for a given seed.
fn fill_random(out: &mut [bf16], seed: u64, scale: f32) {
    const CHUNK: usize = 1 << 16;
    out.par_chunks_mut(CHUNK)
        .enumerate()
        .for_each(|(ci, chunk)| {
            let mut s =
                seed ^ (ci as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ 0xD1B5_4A32_D192_ED03;
            for x in chunk {
                // xorshift64*
                s ^= s >> 12;
                s ^= s << 25;
                s ^= s >> 27;
                let r = s.wrapping_mul(0x2545_F491_4F6C_DD1D);
                let u = (r >> 40) as f32 / (1u64 << 24) as f32; // [0, 1)
                *x = bf16::from_f32((2.0 * u - 1.0) * scale);
            }
        });
}

fn dummy(shape: &[usize], tier: MemTier, seed: u64, scale: f32) -> Result<Tensor> {
    let n: usize = shape.iter().product();
    let mut data = HostBuf::<bf16>::zeroed(n, tier)?;
    fill_random(&mut data, seed, scale);
    Ok(Tensor {
        data,
        shape: shape.to_vec(),
    })
}

fn constant(shape: &[usize], tier: MemTier, v: f32) -> Result<Tensor> {
    let n: usize = shape.iter().product();
    let mut data = HostBuf::<bf16>::zeroed(n, tier)?;
    data.fill(bf16::from_f32(v));
    Ok(Tensor {
        data,
        shape: shape.to_vec(),
    })
}

impl Weights {
    /// Random weights of the right shapes, as LIA does for timing runs: uniform with the scale
    /// of a 0.02-std init, norms at one, biases small. Generated in parallel on the CPU pool;
    /// `progress` is told after each layer.
    pub fn dummy(
        config: &ModelConfig,
        tier: MemTier,
        seed: u64,
        progress: &(dyn Fn(usize) + Sync),
    ) -> Result<Self> {
        let c = config;
        let h = c.hidden;
        let w = 0.035; // uniform(-a, a) with a = 0.02·√3
        let opt = c.family == Family::Opt;
        let bias = |n: usize, s: u64| -> Result<Option<Tensor>> {
            opt.then(|| dummy(&[n], tier, s, 0.01)).transpose()
        };
        let norm_b = |s: u64| -> Result<Option<Tensor>> {
            opt.then(|| dummy(&[h], tier, s, 0.01)).transpose()
        };
        let up_rows = c.up_rows();
        platform::install(|| {
            let embed = dummy(&[c.vocab, h], tier, seed, w)?;
            let positions = opt
                .then(|| {
                    dummy(
                        &[c.max_positions + OPT_POSITION_OFFSET, h],
                        tier,
                        seed + 1,
                        w,
                    )
                })
                .transpose()?;
            let mut layers = Vec::with_capacity(c.layers);
            for l in 0..c.layers {
                let s = seed + 100 + 20 * l as u64;
                layers.push(LayerWeights {
                    attn_norm_w: constant(&[h], tier, 1.0)?,
                    attn_norm_b: norm_b(s)?,
                    qkv_w: dummy(&[c.qkv_dim(), h], tier, s + 1, w)?,
                    qkv_b: bias(c.qkv_dim(), s + 2)?,
                    o_w: dummy(&[h, c.q_dim()], tier, s + 3, w)?,
                    o_b: bias(h, s + 4)?,
                    mlp_norm_w: constant(&[h], tier, 1.0)?,
                    mlp_norm_b: norm_b(s + 5)?,
                    up_w: dummy(&[up_rows, h], tier, s + 6, w)?,
                    up_b: bias(up_rows, s + 7)?,
                    down_w: dummy(&[h, c.ffn], tier, s + 8, w)?,
                    down_b: bias(h, s + 9)?,
                });
                progress(l + 1);
            }
            Ok(Weights {
                config: c.clone(),
                embed,
                positions,
                layers,
                final_norm_w: constant(&[h], tier, 1.0)?,
                final_norm_b: norm_b(seed + 2)?,
                lm_head: (!c.tie_word_embeddings)
                    .then(|| dummy(&[c.vocab, h], tier, seed + 3, w))
                    .transpose()?,
            })
        })
    }
}

// ---------------------------------------------------------------------------------------------
// Safetensors.

/// The memory-mapped safetensors files of a checkpoint and where each tensor is.
struct Checkpoint {
    maps: Vec<(PathBuf, memmap2::Mmap)>,
    index: HashMap<String, usize>,
}

impl Checkpoint {
    fn open(dir: &Path) -> Result<Self> {
        let index_path = dir.join("model.safetensors.index.json");
        let files: Vec<PathBuf> = if index_path.exists() {
            let text =
                std::fs::read_to_string(&index_path).map_err(|e| Error::io(&index_path, e))?;
            let v: serde_json::Value = serde_json::from_str(&text)
                .map_err(|e| Error::Weights(format!("{}: not JSON: {e}", index_path.display())))?;
            let map = v["weight_map"].as_object().ok_or_else(|| {
                Error::Weights(format!("{}: no weight_map", index_path.display()))
            })?;
            let mut f: Vec<String> = map
                .values()
                .filter_map(|x| x.as_str().map(String::from))
                .collect();
            f.sort();
            f.dedup();
            f.into_iter().map(|n| dir.join(n)).collect()
        } else {
            let single = dir.join("model.safetensors");
            if !single.exists() {
                return Err(Error::Weights(format!(
                    "{}: neither model.safetensors nor model.safetensors.index.json",
                    dir.display()
                )));
            }
            vec![single]
        };
        let mut maps = Vec::new();
        let mut index = HashMap::new();
        for (i, path) in files.into_iter().enumerate() {
            let file = std::fs::File::open(&path).map_err(|e| Error::io(&path, e))?;
            // SAFETY: the file is mapped read-only; a checkpoint changed underneath us while
            // loading is outside what we promise to handle, as with any reader.
            let map = unsafe { memmap2::Mmap::map(&file) }.map_err(|e| Error::io(&path, e))?;
            let (_, meta) = safetensors::SafeTensors::read_metadata(&map).map_err(|e| {
                Error::Weights(format!(
                    "{}: not a readable safetensors file ({e}): truncated, or another format",
                    path.display()
                ))
            })?;
            for name in meta.tensors().keys() {
                index.insert(name.clone(), i);
            }
            maps.push((path, map));
        }
        Ok(Checkpoint { maps, index })
    }

    fn has(&self, name: &str) -> bool {
        self.index.contains_key(name)
    }

    /// Reads `name` as bf16 with the expected shape.
    fn read(&self, name: &str, shape: &[usize], tier: MemTier) -> Result<Tensor> {
        let &i = self
            .index
            .get(name)
            .ok_or_else(|| Error::Weights(format!("tensor `{name}` not in the checkpoint")))?;
        let (path, map) = &self.maps[i];
        let st = safetensors::SafeTensors::deserialize(map)
            .map_err(|e| Error::Weights(format!("{}: {e}", path.display())))?;
        let view = st
            .tensor(name)
            .map_err(|e| Error::Weights(format!("{}: {name}: {e}", path.display())))?;
        if view.shape() != shape {
            return Err(Error::Weights(format!(
                "{}: `{name}` has shape {:?}, the config implies {:?}",
                path.display(),
                view.shape(),
                shape
            )));
        }
        let n: usize = shape.iter().product();
        let mut data = HostBuf::<bf16>::zeroed(n, tier)?;
        let bytes = view.data();
        use safetensors::Dtype;
        match view.dtype() {
            Dtype::BF16 => data
                .par_iter_mut()
                .zip(bytes.par_chunks_exact(2))
                .for_each(|(o, b)| *o = bf16::from_le_bytes([b[0], b[1]])),
            Dtype::F16 => data
                .par_iter_mut()
                .zip(bytes.par_chunks_exact(2))
                .for_each(|(o, b)| *o = bf16::from_f32(f16::from_le_bytes([b[0], b[1]]).to_f32())),
            Dtype::F32 => data
                .par_iter_mut()
                .zip(bytes.par_chunks_exact(4))
                .for_each(|(o, b)| {
                    *o = bf16::from_f32(f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
                }),
            d => {
                return Err(Error::Weights(format!(
                    "{}: `{name}` has dtype {d:?}; bf16, f16 or f32 expected",
                    path.display()
                )))
            }
        }
        Ok(Tensor {
            data,
            shape: shape.to_vec(),
        })
    }

    /// The untied LM head (`None` when the config ties it to the embeddings).
    fn read_head(&self, c: &ModelConfig, tier: MemTier) -> Result<Option<Tensor>> {
        if c.tie_word_embeddings {
            return Ok(None);
        }
        if !self.has("lm_head.weight") {
            return Err(Error::Weights(
                "tie_word_embeddings is false but the checkpoint has no lm_head.weight".into(),
            ));
        }
        Ok(Some(self.read(
            "lm_head.weight",
            &[c.vocab, c.hidden],
            tier,
        )?))
    }

    /// Reads tensors and stacks their rows into one (QKV, gate/up fusion).
    fn read_stacked(&self, names: &[(String, Vec<usize>)], tier: MemTier) -> Result<Tensor> {
        let parts: Vec<Tensor> = names
            .iter()
            .map(|(n, s)| self.read(n, s, tier))
            .collect::<Result<_>>()?;
        let cols = parts[0].cols();
        let rows: usize = parts.iter().map(Tensor::rows).sum();
        let mut data = HostBuf::<bf16>::zeroed(rows * cols, tier)?;
        let mut at = 0;
        for p in &parts {
            data[at..at + p.data.len()].copy_from_slice(&p.data);
            at += p.data.len();
        }
        let mut shape = parts[0].shape.clone();
        shape[0] = rows;
        Ok(Tensor { data, shape })
    }
}

impl Weights {
    /// Loads an HF checkpoint folder (`config.json` + safetensors) onto a host tier.
    pub fn load(dir: &Path, tier: MemTier, progress: &(dyn Fn(usize) + Sync)) -> Result<Self> {
        let config = ModelConfig::from_file(&dir.join("config.json"))?;
        let ck = Checkpoint::open(dir)?;
        let c = &config;
        let h = c.hidden;
        platform::install(|| match c.family {
            Family::Opt => {
                let p = ["model.decoder.", "decoder."]
                    .into_iter()
                    .find(|p| ck.has(&format!("{p}embed_tokens.weight")))
                    .ok_or_else(|| {
                        Error::Weights("no OPT embed_tokens.weight in the checkpoint".into())
                    })?;
                let t = |n: &str, s: &[usize]| ck.read(&format!("{p}{n}"), s, tier);
                let mut layers = Vec::new();
                for l in 0..c.layers {
                    let q = |n: &str| format!("{p}layers.{l}.{n}");
                    let qkv = |suffix: &str, cols: &[usize]| {
                        let parts = ["q_proj", "k_proj", "v_proj"].map(|x| {
                            (
                                q(&format!("self_attn.{x}.{suffix}")),
                                [&[h][..], cols].concat(),
                            )
                        });
                        ck.read_stacked(&parts, tier)
                    };
                    let lt = |n: &str, s: &[usize]| ck.read(&q(n), s, tier);
                    layers.push(LayerWeights {
                        attn_norm_w: lt("self_attn_layer_norm.weight", &[h])?,
                        attn_norm_b: Some(lt("self_attn_layer_norm.bias", &[h])?),
                        qkv_w: qkv("weight", &[h])?,
                        qkv_b: Some(qkv("bias", &[])?),
                        o_w: lt("self_attn.out_proj.weight", &[h, h])?,
                        o_b: Some(lt("self_attn.out_proj.bias", &[h])?),
                        mlp_norm_w: lt("final_layer_norm.weight", &[h])?,
                        mlp_norm_b: Some(lt("final_layer_norm.bias", &[h])?),
                        up_w: lt("fc1.weight", &[c.ffn, h])?,
                        up_b: Some(lt("fc1.bias", &[c.ffn])?),
                        down_w: lt("fc2.weight", &[h, c.ffn])?,
                        down_b: Some(lt("fc2.bias", &[h])?),
                    });
                    progress(l + 1);
                }
                let lm_head = ck.read_head(c, tier)?;
                Ok(Weights {
                    config: c.clone(),
                    embed: t("embed_tokens.weight", &[c.vocab, h])?,
                    positions: Some(t(
                        "embed_positions.weight",
                        &[c.max_positions + OPT_POSITION_OFFSET, h],
                    )?),
                    layers,
                    final_norm_w: t("final_layer_norm.weight", &[h])?,
                    final_norm_b: Some(t("final_layer_norm.bias", &[h])?),
                    lm_head,
                })
            }
            Family::Llama => {
                let mut layers = Vec::new();
                for l in 0..c.layers {
                    let q = |n: &str| format!("model.layers.{l}.{n}");
                    let lt = |n: &str, s: &[usize]| ck.read(&q(n), s, tier);
                    let qkv = [
                        ("q_proj", c.q_dim()),
                        ("k_proj", c.kv_dim()),
                        ("v_proj", c.kv_dim()),
                    ]
                    .map(|(x, rows)| (q(&format!("self_attn.{x}.weight")), vec![rows, h]));
                    let gate_up = ["gate_proj", "up_proj"]
                        .map(|x| (q(&format!("mlp.{x}.weight")), vec![c.ffn, h]));
                    layers.push(LayerWeights {
                        attn_norm_w: lt("input_layernorm.weight", &[h])?,
                        attn_norm_b: None,
                        qkv_w: ck.read_stacked(&qkv, tier)?,
                        qkv_b: None,
                        o_w: lt("self_attn.o_proj.weight", &[h, c.q_dim()])?,
                        o_b: None,
                        mlp_norm_w: lt("post_attention_layernorm.weight", &[h])?,
                        mlp_norm_b: None,
                        up_w: ck.read_stacked(&gate_up, tier)?,
                        up_b: None,
                        down_w: lt("mlp.down_proj.weight", &[h, c.ffn])?,
                        down_b: None,
                    });
                    progress(l + 1);
                }
                let lm_head = ck.read_head(c, tier)?;
                Ok(Weights {
                    config: c.clone(),
                    embed: ck.read("model.embed_tokens.weight", &[c.vocab, h], tier)?,
                    positions: None,
                    layers,
                    final_norm_w: ck.read("model.norm.weight", &[h], tier)?,
                    final_norm_b: None,
                    lm_head,
                })
            }
        })
    }
}
