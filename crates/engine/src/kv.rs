//! KV cache bookkeeping: blocks of 16 tokens, a free list of block ids per pool, and each
//! sequence's block table. Storage is separate (host buffers here, device buffers on the GPU)
//! because the layout is identical on both sides (DESIGN.md): per layer
//! `K[num_blocks][num_kv_heads][16][head_dim]` and the same for V, bf16, so moving a sequence
//! between tiers is a copy of whole blocks named by its table.
//!
//! Allocation and freeing are O(1) (a LIFO free list); a sequence grows block by block.

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

/// KV blocks of every layer in host memory, on one tier.
pub struct HostKv {
    pub k: Vec<HostBuf<bf16>>,
    pub v: Vec<HostBuf<bf16>>,
    pub num_blocks: usize,
    pub kv_heads: usize,
    pub head_dim: usize,
}

impl HostKv {
    pub fn new(
        layers: usize,
        num_blocks: usize,
        kv_heads: usize,
        head_dim: usize,
        tier: MemTier,
    ) -> Result<Self> {
        let n = num_blocks * kv_heads * BLOCK_TOKENS * head_dim;
        let mk = || {
            (0..layers)
                .map(|_| HostBuf::zeroed(n, tier))
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

    /// Writes the K and V rows (`[kv_heads × head_dim]` each) of token `pos` of a sequence.
    pub fn write_token(&mut self, layer: usize, seq: &SeqKv, pos: usize, k: &[bf16], v: &[bf16]) {
        let (hk, d) = (self.kv_heads, self.head_dim);
        let block = seq.blocks[pos / BLOCK_TOKENS] as usize;
        let slot = pos % BLOCK_TOKENS;
        for h in 0..hk {
            let at = ((block * hk + h) * BLOCK_TOKENS + slot) * d;
            self.k[layer][at..at + d].copy_from_slice(&k[h * d..(h + 1) * d]);
            self.v[layer][at..at + d].copy_from_slice(&v[h * d..(h + 1) * d]);
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
