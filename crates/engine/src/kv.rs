//! KV cache bookkeeping: blocks of 16 tokens, a free list of block ids per pool, and each
//! sequence's block table. Storage is separate (host buffers here, device buffers on the GPU)
//! because the layout is identical on both sides (DESIGN.md): per layer
//! `K[num_blocks][num_kv_heads][16][head_dim]` and the same for V, bf16, so moving a sequence
//! between tiers is a copy of whole blocks named by its table.
//!
//! Allocation and freeing are O(1) (a LIFO free list); a sequence grows block by block. A block
//! id names the same block in every layer, so a sequence has one table for all layers and for
//! both tiers. This is tandem's one KV cache type: the kernel crates take its pools and tables
//! as slices.

use half::bf16;
use platform::{HostBuf, MemTier};

use crate::{Error, Result};

pub const BLOCK_TOKENS: usize = 16;

/// Free list of block ids `0..total`.
#[derive(Debug)]
pub struct BlockAllocator {
    free: Vec<i32>,
    total: usize,
}

impl BlockAllocator {
    pub fn new(total: usize) -> Self {
        BlockAllocator {
            free: (0..total as i32).rev().collect(),
            total,
        }
    }
    pub fn available(&self) -> usize {
        self.free.len()
    }
    pub fn total(&self) -> usize {
        self.total
    }
    pub fn alloc(&mut self) -> Option<i32> {
        self.free.pop()
    }
    pub fn free(&mut self, id: i32) {
        debug_assert!((id as usize) < self.total && !self.free.contains(&id));
        self.free.push(id);
    }
}

/// One sequence's KV: its block table and how many tokens it holds.
#[derive(Clone, Debug, Default)]
pub struct SeqKv {
    pub blocks: Vec<i32>,
    pub len: usize,
}

impl SeqKv {
    /// Grows the table so that it can hold `tokens` tokens.
    pub fn reserve(&mut self, alloc: &mut BlockAllocator, tokens: usize) -> Result<()> {
        while self.blocks.len() * BLOCK_TOKENS < tokens {
            let id = alloc.alloc().ok_or_else(|| {
                Error::Placement(format!(
                    "KV cache full: all {} blocks of {BLOCK_TOKENS} tokens are in use; lower the batch or the lengths",
                    alloc.total()
                ))
            })?;
            self.blocks.push(id);
        }
        Ok(())
    }
    /// Returns every block to the pool.
    pub fn release(&mut self, alloc: &mut BlockAllocator) {
        for b in self.blocks.drain(..) {
            alloc.free(b);
        }
        self.len = 0;
    }
}

/// The sequences of a session and their blocks.
#[derive(Debug)]
pub struct Sequences {
    pub alloc: BlockAllocator,
    pub seqs: Vec<SeqKv>,
    max_positions: usize,
}

/// What one step (a prefill of new sequences, or a decode of all) needs to know about its
/// tokens, derived once from the block tables.
#[derive(Clone, Debug, Default)]
pub struct StepIds {
    pub tokens: Vec<u32>,
    /// Position of each token in its sequence.
    pub positions: Vec<usize>,
    /// Tokens per sequence in this step (the prompt lengths; all 1 for a decode).
    pub lens: Vec<usize>,
    /// Index of each token's sequence in the session.
    pub seq_of: Vec<usize>,
    /// Cache slot (`block · 16 + offset`) of each token.
    pub slots: Vec<i32>,
    /// `[sequences, width]` block tables of the sequences in this step.
    pub tables: Vec<i32>,
    pub width: usize,
    /// Tokens in cache per sequence after this step.
    pub ctx: Vec<i32>,
    /// Row of each sequence's last token in this step.
    pub last_rows: Vec<usize>,
}

impl Sequences {
    pub fn new(num_blocks: usize, max_positions: usize) -> Self {
        Sequences {
            alloc: BlockAllocator::new(num_blocks),
            seqs: Vec::new(),
            max_positions,
        }
    }

    fn ids(&self, first: usize, tokens: Vec<u32>, lens: Vec<usize>, start: &[usize]) -> StepIds {
        let n = lens.len();
        let seqs = &self.seqs[first..first + n];
        let width = seqs
            .iter()
            .map(|s| s.blocks.len())
            .max()
            .unwrap_or(1)
            .max(1);
        let mut tables = vec![0i32; n * width];
        for (i, s) in seqs.iter().enumerate() {
            tables[i * width..i * width + s.blocks.len()].copy_from_slice(&s.blocks);
        }
        let mut ids = StepIds {
            tokens,
            tables,
            width,
            ..Default::default()
        };
        for (i, (&l, s)) in lens.iter().zip(seqs).enumerate() {
            for p in start[i]..start[i] + l {
                ids.positions.push(p);
                ids.seq_of.push(first + i);
                ids.slots.push(
                    (s.blocks[p / BLOCK_TOKENS] as usize * BLOCK_TOKENS + p % BLOCK_TOKENS) as i32,
                );
            }
            ids.last_rows.push(ids.positions.len() - 1);
            ids.ctx.push(s.len as i32);
        }
        ids.lens = lens;
        ids
    }

    /// Adds the prompts as new sequences and reserves their blocks.
    pub fn prefill(&mut self, prompts: &[Vec<u32>]) -> Result<StepIds> {
        if prompts.is_empty() || prompts.iter().any(|p| p.is_empty()) {
            return Err(Error::Input(
                "an empty prompt or batch: every prompt needs at least one token".into(),
            ));
        }
        let lens: Vec<usize> = prompts.iter().map(Vec::len).collect();
        if let Some(&l) = lens.iter().find(|&&l| l > self.max_positions) {
            return Err(Error::Input(format!(
                "a prompt of {l} tokens exceeds the model's {} positions",
                self.max_positions
            )));
        }
        let first = self.seqs.len();
        for &l in &lens {
            let mut s = SeqKv::default();
            let r = s.reserve(&mut self.alloc, l);
            s.len = l;
            self.seqs.push(s);
            if let Err(e) = r {
                // All or nothing: the prompts of a failed prefill give their blocks back.
                for mut s in self.seqs.drain(first..) {
                    s.release(&mut self.alloc);
                }
                return Err(e);
            }
        }
        Ok(self.ids(first, prompts.concat(), lens, &vec![0; prompts.len()]))
    }

    /// One new token for every sequence, in order.
    pub fn decode(&mut self, tokens: &[u32]) -> Result<StepIds> {
        let b = tokens.len();
        if b != self.seqs.len() || b == 0 {
            return Err(Error::Input(format!(
                "{b} tokens for {} sequences",
                self.seqs.len()
            )));
        }
        let start: Vec<usize> = self.seqs.iter().map(|s| s.len).collect();
        if let Some(&p) = start.iter().find(|&&p| p >= self.max_positions) {
            return Err(Error::Input(format!(
                "position {p} is past the model's {} positions",
                self.max_positions
            )));
        }
        // Checked before any sequence grows, so that a full cache leaves the session as it was.
        let need = self
            .seqs
            .iter()
            .filter(|s| s.len + 1 > s.blocks.len() * BLOCK_TOKENS)
            .count();
        if need > self.alloc.available() {
            return Err(Error::Placement(format!(
                "KV cache full: this decode step needs {need} new blocks, {} of {} are free; lower the batch or the lengths",
                self.alloc.available(),
                self.alloc.total()
            )));
        }
        for s in &mut self.seqs {
            s.reserve(&mut self.alloc, s.len + 1)?;
            s.len += 1;
        }
        Ok(self.ids(0, tokens.to_vec(), vec![1; b], &start))
    }
}

/// KV blocks of every layer in host memory, on one tier.
pub struct HostKv {
    pub k: Vec<HostBuf<bf16>>,
    pub v: Vec<HostBuf<bf16>>,
    pub num_blocks: usize,
    pub kv_heads: usize,
    pub head_dim: usize,
}

impl HostKv {
    /// Blocks for the layers where `used[l]` (others get none), on a host tier.
    pub fn new(
        used: &[bool],
        num_blocks: usize,
        kv_heads: usize,
        head_dim: usize,
        tier: MemTier,
    ) -> Result<Self> {
        let n = num_blocks * kv_heads * BLOCK_TOKENS * head_dim;
        let mk = || {
            used.iter()
                .map(|&u| HostBuf::zeroed(if u { n } else { 0 }, tier))
                .collect::<platform::Result<Vec<_>>>()
        };
        Ok(HostKv {
            k: mk()?,
            v: mk()?,
            num_blocks,
            kv_heads,
            head_dim,
        })
    }

    /// Writes the K and V rows (`[tokens, kv_heads × head_dim]`) of a step's tokens into their
    /// slots (`block · 16 + offset`).
    pub fn write(&mut self, layer: usize, slots: &[i32], k: &[bf16], v: &[bf16]) {
        let (hk, d) = (self.kv_heads, self.head_dim);
        for (t, &slot) in slots.iter().enumerate() {
            let (block, off) = (slot as usize / BLOCK_TOKENS, slot as usize % BLOCK_TOKENS);
            for h in 0..hk {
                let at = ((block * hk + h) * BLOCK_TOKENS + off) * d;
                let src = (t * hk + h) * d;
                self.k[layer][at..at + d].copy_from_slice(&k[src..src + d]);
                self.v[layer][at..at + d].copy_from_slice(&v[src..src + d]);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sequences_grow_by_blocks_and_give_them_back() {
        let mut a = BlockAllocator::new(4);
        let mut s = SeqKv::default();
        s.reserve(&mut a, 17).unwrap();
        assert_eq!(s.blocks.len(), 2);
        s.reserve(&mut a, 32).unwrap();
        assert_eq!(s.blocks.len(), 2);
        let mut t = SeqKv::default();
        t.reserve(&mut a, 32).unwrap();
        let e = t.reserve(&mut a, 33).unwrap_err().to_string();
        assert!(e.contains("KV cache full"), "{e}");
        s.release(&mut a);
        assert_eq!(a.available(), 2);
        t.reserve(&mut a, 48).unwrap();
        let mut all: Vec<i32> = t.blocks.clone();
        all.sort();
        all.dedup();
        assert_eq!(all.len(), 3, "no block handed out twice");
    }
}

#[cfg(test)]
mod step_tests {
    use super::*;

    #[test]
    fn step_ids_follow_the_block_tables() {
        let mut s = Sequences::new(16, 100);
        let p = s.prefill(&[vec![1; 17], vec![2; 3]]).unwrap();
        assert_eq!(p.lens, vec![17, 3]);
        assert_eq!(p.last_rows, vec![16, 19]);
        assert_eq!(p.ctx, vec![17, 3]);
        assert_eq!(p.width, 2);
        let b0 = &s.seqs[0].blocks;
        assert_eq!(p.slots[16], b0[1] * 16); // token 16 opens the second block
        assert_eq!(p.positions[17], 0); // second prompt starts over
        let d = s.decode(&[5, 6]).unwrap();
        assert_eq!(d.positions, vec![17, 3]);
        assert_eq!(d.ctx, vec![18, 4]);
        assert_eq!(d.slots[1], s.seqs[1].blocks[0] * 16 + 3);
        assert_eq!(&d.tables[..2], &s.seqs[0].blocks[..]);
        // Bad steps are refused with a reason, and a failed prefill gives its blocks back.
        assert!(s.decode(&[1]).is_err());
        assert!(s.prefill(&[vec![]]).is_err());
        assert!(s
            .prefill(&[vec![0; 101]])
            .unwrap_err()
            .to_string()
            .contains("100 positions"));
        let mut small = Sequences::new(3, 1000);
        let e = small.prefill(&[vec![0; 40], vec![0; 40]]).unwrap_err();
        assert!(e.to_string().contains("KV cache full"), "{e}");
        assert_eq!(
            small.alloc.available(),
            3,
            "a failed prefill gives every block back"
        );
        assert!(small.seqs.is_empty());
        small.prefill(&[vec![0; 16], vec![0; 16]]).unwrap();
        let e = small.decode(&[1, 2]).unwrap_err();
        assert!(e.to_string().contains("needs 2 new blocks"), "{e}");
        assert_eq!((small.seqs[0].len, small.seqs[1].len), (16, 16));
    }

    #[test]
    fn host_kv_writes_tokens_to_their_slots() {
        let mut kv = HostKv::new(&[false, true], 4, 2, 64, MemTier::Pageable).unwrap();
        assert_eq!(kv.k[0].len(), 0);
        let k: Vec<bf16> = (0..2 * 2 * 64).map(|i| bf16::from_f32(i as f32)).collect();
        let v: Vec<bf16> = k.iter().map(|x| -*x).collect();
        kv.write(1, &[35, 2], &k, &v); // block 2 slot 3, block 0 slot 2
        let at = |b: usize, h: usize, slot: usize| ((b * 2 + h) * 16 + slot) * 64;
        assert_eq!(kv.k[1][at(2, 1, 3)], k[64]);
        assert_eq!(kv.v[1][at(0, 0, 2)], v[128]);
    }
}
