//! The CPU KV cache: per layer, one K pool and one V pool of blocks in DESIGN.md's paged layout
//! `[num_blocks][num_kv_heads][16][head_dim]` bf16, on a host memory tier, and the per-sequence
//! block tables (`i32` ids) that index them. This is the one CPU KV type of tandem: the engine
//! owns which sequences live here and when they move; this type owns the blocks.
//!
//! A block id names the same block in every layer (as in vLLM): a sequence owns one table for
//! all layers, and growing it by a token allocates at most one block id, whose K/V exist in every
//! layer's pool. Allocation and freeing cost O(1) per block (a LIFO free list) plus a hash-map
//! lookup per sequence; building a step's batch tables costs O(total blocks of the batch).
//!
//! Tiers: `pageable` and `numa:N` are allocated here through `platform::HostBuf`. `pinned` is
//! page-locked memory, which needs the CUDA driver: the pools are allocated like `pageable` and
//! the engine registers each region of [`CpuKvCache::host_regions`] with `cuMemHostRegister`
//! (and unregisters it before dropping the cache). `gpu` is not a CPU tier and is refused.

use std::collections::HashMap;

use half::bf16;
use platform::{HostBuf, MemTier};

use crate::paged_decode::{paged_decode_bf16, DecodeBatch, DecodeShape, BLOCK_SIZE, MAX_HEAD_DIM};
use crate::{Error, Result};

/// A sequence's id, chosen by the engine.
pub type SeqId = u64;

/// Sizes and placement of a [`CpuKvCache`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct KvCacheConfig {
    pub num_layers: usize,
    /// Blocks of 16 tokens per layer pool.
    pub num_blocks: usize,
    pub num_kv_heads: usize,
    pub head_dim: usize,
    pub tier: MemTier,
}

/// One host memory region of the cache, for CUDA registration of the `pinned` tier.
#[derive(Clone, Copy, Debug)]
pub struct HostRegion {
    pub ptr: *mut u8,
    pub bytes: usize,
}

struct Sequence {
    table: Vec<i32>,
    len: usize,
}

/// The tables of one decode step's batch, built once and used for every layer.
#[derive(Clone, Debug, Default)]
pub struct BatchTables {
    /// `[batch][max_blocks]`, unused entries -1.
    pub block_tables: Vec<i32>,
    pub max_blocks: usize,
    /// Tokens per sequence, the new one included.
    pub context_lens: Vec<i32>,
}

/// Per-layer K/V block pools on a host tier, with per-sequence block allocation.
pub struct CpuKvCache {
    cfg: KvCacheConfig,
    layers: Vec<[HostBuf<bf16>; 2]>,
    free: Vec<i32>,
    seqs: HashMap<SeqId, Sequence>,
}

impl CpuKvCache {
    /// Allocates every layer's pools (zeroed) on `cfg.tier`.
    pub fn new(cfg: KvCacheConfig) -> Result<Self> {
        if cfg.num_layers == 0 || cfg.num_blocks == 0 || cfg.num_kv_heads == 0 {
            return Err(Error::Invalid(format!(
                "CpuKvCache: empty configuration {cfg:?}"
            )));
        }
        if cfg.head_dim == 0 || cfg.head_dim % 32 != 0 || cfg.head_dim > MAX_HEAD_DIM {
            return Err(Error::Invalid(format!(
                "CpuKvCache: head_dim {} is not supported (a multiple of 32 up to {MAX_HEAD_DIM})",
                cfg.head_dim
            )));
        }
        if cfg.num_blocks > i32::MAX as usize {
            return Err(Error::Invalid(format!(
                "CpuKvCache: {} blocks do not fit i32 block ids",
                cfg.num_blocks
            )));
        }
        let alloc_tier =
            match cfg.tier {
                MemTier::Gpu => return Err(Error::Invalid(
                    "CpuKvCache: tier gpu is not host memory (the GPU KV cache is the engine's)"
                        .into(),
                )),
                // Page-locking is the engine's (CUDA) job; see host_regions.
                MemTier::Pinned => MemTier::Pageable,
                t => t,
            };
        let elems = cfg
            .num_blocks
            .checked_mul(cfg.num_kv_heads * BLOCK_SIZE * cfg.head_dim)
            .ok_or_else(|| Error::Invalid(format!("CpuKvCache: {cfg:?} overflows")))?;
        let alloc = || {
            HostBuf::zeroed(elems, alloc_tier)
                .map_err(|e| Error::Invalid(format!("CpuKvCache: {e}")))
        };
        let layers = (0..cfg.num_layers)
            .map(|_| Ok([alloc()?, alloc()?]))
            .collect::<Result<Vec<_>>>()?;
        Ok(Self {
            cfg,
            layers,
            free: (0..cfg.num_blocks as i32).rev().collect(),
            seqs: HashMap::new(),
        })
    }

    pub fn config(&self) -> &KvCacheConfig {
        &self.cfg
    }

    pub fn num_free_blocks(&self) -> usize {
        self.free.len()
    }

    /// Bytes of one token's K and V in one layer.
    pub fn token_bytes(&self) -> usize {
        2 * self.cfg.num_kv_heads * self.cfg.head_dim * std::mem::size_of::<bf16>()
    }

    /// Starts an empty sequence.
    pub fn add_sequence(&mut self, id: SeqId) -> Result<()> {
        if self.seqs.contains_key(&id) {
            return Err(Error::Invalid(format!(
                "CpuKvCache: sequence {id} already exists"
            )));
        }
        self.seqs.insert(
            id,
            Sequence {
                table: Vec::new(),
                len: 0,
            },
        );
        Ok(())
    }

    /// Adds `tokens` token slots to a sequence, allocating blocks as needed; returns its new
    /// length. All or nothing: without enough free blocks nothing changes.
    pub fn grow(&mut self, id: SeqId, tokens: usize) -> Result<usize> {
        let free = self.free.len();
        let s = self.seqs.get_mut(&id).ok_or_else(|| unknown(id))?;
        let len = s.len + tokens;
        let need = len.div_ceil(BLOCK_SIZE) - s.table.len();
        if need > free {
            return Err(Error::Invalid(format!(
                "CpuKvCache: sequence {id} needs {need} more blocks for {len} tokens, {free} are free"
            )));
        }
        for _ in 0..need {
            s.table.push(self.free.pop().expect("counted above"));
        }
        s.len = len;
        Ok(len)
    }

    /// Ends a sequence and returns its blocks to the pool; returns how many.
    pub fn free_sequence(&mut self, id: SeqId) -> Result<usize> {
        let s = self.seqs.remove(&id).ok_or_else(|| unknown(id))?;
        let n = s.table.len();
        self.free.extend(s.table.into_iter().rev());
        Ok(n)
    }

    pub fn seq_len(&self, id: SeqId) -> Option<usize> {
        self.seqs.get(&id).map(|s| s.len)
    }

    pub fn block_table(&self, id: SeqId) -> Option<&[i32]> {
        self.seqs.get(&id).map(|s| &s.table[..])
    }

    /// The flat tables of a batch, in the order of `ids`.
    pub fn batch_tables(&self, ids: &[SeqId]) -> Result<BatchTables> {
        let seqs = ids
            .iter()
            .map(|&id| self.seqs.get(&id).ok_or_else(|| unknown(id)))
            .collect::<Result<Vec<_>>>()?;
        let max_blocks = seqs.iter().map(|s| s.table.len()).max().unwrap_or(0).max(1);
        let mut block_tables = vec![-1; ids.len() * max_blocks];
        for (row, s) in block_tables.chunks_mut(max_blocks).zip(&seqs) {
            row[..s.table.len()].copy_from_slice(&s.table);
        }
        Ok(BatchTables {
            block_tables,
            max_blocks,
            context_lens: seqs.iter().map(|s| s.len as i32).collect(),
        })
    }

    fn layer_index(&self, layer: usize) -> Result<usize> {
        if layer < self.layers.len() {
            Ok(layer)
        } else {
            Err(Error::Invalid(format!(
                "CpuKvCache: layer {layer} does not exist (0..{})",
                self.layers.len()
            )))
        }
    }

    /// A layer's K and V pools, `[num_blocks][num_kv_heads][16][head_dim]` each.
    pub fn layer(&self, layer: usize) -> Result<(&[bf16], &[bf16])> {
        let [k, v] = &self.layers[self.layer_index(layer)?];
        Ok((k, v))
    }

    pub fn layer_mut(&mut self, layer: usize) -> Result<(&mut [bf16], &mut [bf16])> {
        let l = self.layer_index(layer)?;
        let [k, v] = &mut self.layers[l];
        Ok((k, v))
    }

    /// Writes tokens `first ..` of a sequence in one layer (a prefill's K/V, or a sequence
    /// arriving from the GPU); `k` and `v` are `[tokens][num_kv_heads][head_dim]`. The slots
    /// must already belong to the sequence ([`CpuKvCache::grow`]).
    pub fn write_tokens(
        &mut self,
        layer: usize,
        id: SeqId,
        first: usize,
        k: &[bf16],
        v: &[bf16],
    ) -> Result<()> {
        let (kvh, d) = (self.cfg.num_kv_heads, self.cfg.head_dim);
        let row = kvh * d;
        if k.len() != v.len() || k.len() % row != 0 {
            return Err(Error::Invalid(format!(
                "CpuKvCache::write_tokens: k ({}) and v ({}) must both be [tokens][{kvh}][{d}]",
                k.len(),
                v.len()
            )));
        }
        let n = k.len() / row;
        let l = self.layer_index(layer)?;
        let s = self.seqs.get(&id).ok_or_else(|| unknown(id))?;
        if first + n > s.len {
            return Err(Error::Invalid(format!(
                "CpuKvCache::write_tokens: tokens {first}..{} of sequence {id}, which holds {}",
                first + n,
                s.len
            )));
        }
        let [kc, vc] = &mut self.layers[l];
        for t in 0..n {
            let pos = first + t;
            let block = s.table[pos / BLOCK_SIZE] as usize;
            for h in 0..kvh {
                let dst = ((block * kvh + h) * BLOCK_SIZE + pos % BLOCK_SIZE) * d;
                let src = (t * kvh + h) * d;
                kc[dst..dst + d].copy_from_slice(&k[src..src + d]);
                vc[dst..dst + d].copy_from_slice(&v[src..src + d]);
            }
        }
        Ok(())
    }

    /// Decode attention of one layer for a step's batch: appends each sequence's new K/V at its
    /// last slot (grown beforehand) and writes `out`. Shapes as in [`paged_decode_bf16`].
    #[allow(clippy::too_many_arguments)]
    pub fn decode(
        &mut self,
        layer: usize,
        shape: &DecodeShape,
        tables: &BatchTables,
        q: &[bf16],
        new_k: &[bf16],
        new_v: &[bf16],
        out: &mut [bf16],
    ) -> Result<()> {
        if shape.num_kv_heads != self.cfg.num_kv_heads || shape.head_dim != self.cfg.head_dim {
            return Err(Error::Invalid(format!(
                "CpuKvCache::decode: shape {shape:?} does not match the cache's {} KV heads × head_dim {}",
                self.cfg.num_kv_heads, self.cfg.head_dim
            )));
        }
        let batch = DecodeBatch {
            q,
            new_k,
            new_v,
            block_tables: &tables.block_tables,
            max_blocks: tables.max_blocks,
            context_lens: &tables.context_lens,
        };
        let (k, v) = self.layer_mut(layer)?;
        paged_decode_bf16(shape, &batch, k, v, out)
    }

    /// Every pool's memory, K and V of each layer: what the engine registers with CUDA when the
    /// tier is `pinned`. The regions live as long as the cache.
    pub fn host_regions(&mut self) -> Vec<HostRegion> {
        self.layers
            .iter_mut()
            .flat_map(|l| l.iter_mut())
            .map(|b| HostRegion {
                ptr: b.as_mut_ptr() as *mut u8,
                bytes: b.bytes(),
            })
            .collect()
    }
}

fn unknown(id: SeqId) -> Error {
    Error::Invalid(format!("CpuKvCache: no sequence {id}"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::paged_decode_bf16_ref;
    use rand::{Rng, SeedableRng};

    /// As in paged_decode's tests: one bf16 ulp of rounding either side, plus f32 sums.
    const TOL_REL: f32 = 1.0 / 128.0;
    const TOL_ABS: f32 = 2e-4;

    fn cfg(num_blocks: usize) -> KvCacheConfig {
        KvCacheConfig {
            num_layers: 2,
            num_blocks,
            num_kv_heads: 2,
            head_dim: 64,
            tier: MemTier::Pageable,
        }
    }

    #[test]
    fn blocks_are_allocated_and_freed_per_sequence() {
        let mut c = CpuKvCache::new(cfg(10)).unwrap();
        c.add_sequence(7).unwrap();
        c.add_sequence(9).unwrap();
        assert!(c.add_sequence(7).is_err());
        assert_eq!(c.grow(7, 17).unwrap(), 17);
        assert_eq!(c.block_table(7).unwrap().len(), 2);
        assert_eq!(c.grow(7, 15).unwrap(), 32);
        assert_eq!(c.block_table(7).unwrap().len(), 2);
        assert_eq!(c.grow(9, 1).unwrap(), 1);
        assert_eq!(c.num_free_blocks(), 7);
        // 8 more blocks for sequence 9 do not fit: nothing changes.
        let e = c.grow(9, 16 * 8).unwrap_err().to_string();
        assert!(e.contains("sequence 9") && e.contains("7 are free"), "{e}");
        assert_eq!((c.seq_len(9), c.num_free_blocks()), (Some(1), 7));
        let mut all: Vec<i32> = c
            .block_table(7)
            .unwrap()
            .iter()
            .chain(c.block_table(9).unwrap())
            .copied()
            .collect();
        all.sort();
        all.dedup();
        assert_eq!(all.len(), 3, "blocks are owned once");
        assert_eq!(c.free_sequence(7).unwrap(), 2);
        assert_eq!(c.num_free_blocks(), 9);
        assert!(
            c.free_sequence(7).is_err() && c.grow(7, 1).is_err() && c.batch_tables(&[7]).is_err()
        );
        let t = c.batch_tables(&[9]).unwrap();
        assert_eq!((t.max_blocks, &t.context_lens[..]), (1, &[1][..]));
    }

    #[test]
    fn bad_configurations_and_tiers_are_errors() {
        assert!(CpuKvCache::new(KvCacheConfig {
            tier: MemTier::Gpu,
            ..cfg(4)
        })
        .is_err());
        let e = CpuKvCache::new(KvCacheConfig {
            tier: MemTier::Numa(999),
            ..cfg(4)
        })
        .err()
        .unwrap()
        .to_string();
        assert!(e.contains("numa:999"), "{e}");
        assert!(CpuKvCache::new(KvCacheConfig {
            head_dim: 100,
            ..cfg(4)
        })
        .is_err());
        assert!(CpuKvCache::new(KvCacheConfig {
            num_blocks: 0,
            ..cfg(4)
        })
        .is_err());
        let mut c = CpuKvCache::new(KvCacheConfig {
            tier: MemTier::Pinned,
            ..cfg(4)
        })
        .unwrap();
        let r = c.host_regions();
        assert_eq!(r.len(), 4);
        assert!(r
            .iter()
            .all(|r| r.bytes == 4 * 2 * 16 * 64 * 2 && r.ptr as usize % 4096 == 0));
        assert!(c.layer(2).is_err());
    }

    /// Prefill written through the cache, then decode steps through it, against the twin.
    #[test]
    fn decode_steps_through_the_cache_match_reference() {
        let seed: u64 = rand::random();
        let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
        let mut c = CpuKvCache::new(cfg(64)).unwrap();
        let shape = DecodeShape {
            num_q_heads: 8,
            num_kv_heads: 2,
            head_dim: 64,
            scale: 0.125,
        };
        let ids = [3u64, 11, 5];
        let rnd = |rng: &mut rand::rngs::StdRng, n: usize| -> Vec<bf16> {
            (0..n)
                .map(|_| bf16::from_f32(rng.gen_range(-1.0..1.0)))
                .collect()
        };
        for (i, &id) in ids.iter().enumerate() {
            let n = [1, 40, 16][i];
            c.add_sequence(id).unwrap();
            c.grow(id, n).unwrap();
            for layer in 0..2 {
                let (k, v) = (rnd(&mut rng, n * 128), rnd(&mut rng, n * 128));
                c.write_tokens(layer, id, 0, &k, &v).unwrap();
            }
        }
        assert!(c
            .write_tokens(0, 3, 1, &rnd(&mut rng, 128), &rnd(&mut rng, 128))
            .is_err());
        for step in 0..20 {
            for &id in &ids {
                c.grow(id, 1).unwrap();
            }
            let t = c.batch_tables(&ids).unwrap();
            for layer in 0..2 {
                let (q, nk, nv) = (
                    rnd(&mut rng, 3 * 8 * 64),
                    rnd(&mut rng, 3 * 2 * 64),
                    rnd(&mut rng, 3 * 2 * 64),
                );
                let (k0, v0) = c
                    .layer(layer)
                    .map(|(k, v)| (k.to_vec(), v.to_vec()))
                    .unwrap();
                let mut out = vec![bf16::NAN; q.len()];
                c.decode(layer, &shape, &t, &q, &nk, &nv, &mut out).unwrap();
                let (mut k1, mut v1, mut want) = (k0, v0, vec![bf16::NAN; q.len()]);
                let b = DecodeBatch {
                    q: &q,
                    new_k: &nk,
                    new_v: &nv,
                    block_tables: &t.block_tables,
                    max_blocks: t.max_blocks,
                    context_lens: &t.context_lens,
                };
                paged_decode_bf16_ref(&shape, &b, &mut k1, &mut v1, &mut want).unwrap();
                let (k, v) = c.layer(layer).unwrap();
                assert!(
                    k == &k1[..] && v == &v1[..],
                    "seed {seed} step {step} layer {layer}: caches differ"
                );
                for (i, (g, w)) in out.iter().zip(&want).enumerate() {
                    let (g, w) = (g.to_f32(), w.to_f32());
                    assert!(
                        (g - w).abs() <= TOL_REL * w.abs() + TOL_ABS,
                        "seed {seed} step {step} layer {layer} [{i}]: {g} vs {w}"
                    );
                }
            }
        }
        let wrong = DecodeShape {
            head_dim: 128,
            ..shape
        };
        let t = c.batch_tables(&ids).unwrap();
        assert!(c.decode(0, &wrong, &t, &[], &[], &[], &mut []).is_err());
    }
}
