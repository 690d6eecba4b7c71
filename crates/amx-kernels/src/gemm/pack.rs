//! The prepacked bf16 weight: an HF linear weight `W[N, K]` (row-major, `out_features ×
//! in_features`) rearranged once, at load, into AMX B tiles.
//!
//! Layout: `tiles[nb][kb]`, one 1 KiB tile per (16-column block `nb`, 32-deep K block `kb`),
//! the K blocks of one column block contiguous so that a kernel walking K streams memory:
//!
//! ```text
//! tile (nb, kb) = [16 k-pairs][16 columns][2]   bf16, 16 rows × 64 bytes
//! element (k, n) of W lives in tile (nb = n / 16, kb = k / 32)
//!                 at row (k % 32) / 2, column n % 16, slot k % 2
//! ```
//!
//! That is the VNNI form `tdpbf16ps` wants for its B operand (row `p` holds, for each column,
//! the pair `W[n][2p], W[n][2p+1]`). One tile row is one zmm, so the AVX-512 twins read the same
//! bytes: a 32-bit lane of row `p` is the pair `vdpbf16ps` multiplies with a broadcast pair of
//! A. N is padded to a multiple of 16 and K to a multiple of 32 with zeros.
//!
//! A fused gate/up weight (LLaMA: `gate_proj` rows first, then `up_proj`, `N = 2·I`) is packed
//! with the gate's and the up's column blocks interleaved (`nb = 2j` gate block `j`, `2j + 1` up
//! block `j`), so that one pair of B tiles yields both halves of 16 output columns and the
//! SiLU·mul epilogue needs nothing from another thread.

use half::bf16;
use platform::{HostBuf, MemTier};
use rayon::prelude::*;

use crate::{check_len, Error, Result};

/// Columns of one packed block (one AMX B tile, one zmm of f32).
pub const BLOCK_N: usize = 16;
/// K depth of one packed tile (16 pairs of bf16).
pub const BLOCK_K: usize = 32;
/// bf16 elements in one packed tile.
pub const TILE_ELEMS: usize = BLOCK_N * BLOCK_K;

/// One 1 KiB B tile, cache-line aligned.
#[repr(C, align(64))]
#[derive(Clone, Copy)]
pub struct Tile(pub [bf16; TILE_ELEMS]);

/// How the packed column blocks map to the weight's rows.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WeightKind {
    /// Block `nb` holds rows `16·nb ..` of `W`.
    Plain,
    /// Fused gate/up of width `2·inter`: block `2j` holds gate rows `16·j ..`, block `2j + 1`
    /// the up rows `inter + 16·j ..`.
    GateUp { inter: usize },
}

/// A bf16 weight `W[N, K]`, prepacked for every CPU tier (see the module header for the layout).
pub struct PackedWeight {
    pub(crate) n: usize,
    pub(crate) k: usize,
    pub(crate) kind: WeightKind,
    /// K tiles per column block: `ceil(K / 32)`.
    pub(crate) kb: usize,
    /// Packed 16-column blocks.
    pub(crate) nblocks: usize,
    /// On the host memory tier the weight was packed for (`pageable` or `numa:N`, e.g. a CXL
    /// node), so that the CPU reads it from where the placement put it.
    pub(crate) tiles: HostBuf<Tile>,
}

impl WeightKind {
    /// The kind and the packed block count of a weight of `n` rows.
    pub(crate) fn layout(gate_up: bool, n: usize) -> Result<(WeightKind, usize)> {
        if !gate_up {
            return Ok((WeightKind::Plain, n.div_ceil(BLOCK_N)));
        }
        if n % 2 != 0 {
            return Err(Error::Shape(format!(
                "gate/up weight: N = {n} must be even (gate rows, then as many up rows)"
            )));
        }
        Ok((
            WeightKind::GateUp { inter: n / 2 },
            2 * (n / 2).div_ceil(BLOCK_N),
        ))
    }

    /// The weight row that packed block `nb`, column `c` holds, if any (`n` rows in all).
    pub(crate) fn row_of(self, n: usize, nb: usize, c: usize) -> Option<usize> {
        match self {
            WeightKind::Plain => Some(nb * BLOCK_N + c).filter(|&r| r < n),
            WeightKind::GateUp { inter } => {
                let col = (nb / 2) * BLOCK_N + c;
                (col < inter).then_some(col + (nb % 2) * inter)
            }
        }
    }

    /// Packed block and column of weight row `row`.
    pub(crate) fn block_of(self, row: usize) -> (usize, usize) {
        match self {
            WeightKind::Plain => (row / BLOCK_N, row % BLOCK_N),
            WeightKind::GateUp { inter } => {
                let (half, r) = if row < inter {
                    (0, row)
                } else {
                    (1, row - inter)
                };
                (2 * (r / BLOCK_N) + half, r % BLOCK_N)
            }
        }
    }
}

impl PackedWeight {
    /// Packs `w`, row-major `[n, k]` (an HF linear weight), for `C = A · Wᵀ`.
    pub fn from_bf16(w: &[bf16], n: usize, k: usize) -> Result<Self> {
        Self::pack(w, n, k, false, MemTier::Pageable)
    }

    /// Packs a fused gate/up weight `[2·inter, k]` (gate rows first, then up) for the SiLU·mul
    /// epilogue: the product then has `inter` output columns, `silu(gate) · up`.
    pub fn from_bf16_gate_up(w: &[bf16], n: usize, k: usize) -> Result<Self> {
        Self::pack(w, n, k, true, MemTier::Pageable)
    }

    /// [`from_bf16`](Self::from_bf16) or, with `gate_up`,
    /// [`from_bf16_gate_up`](Self::from_bf16_gate_up), into memory of a host tier.
    pub fn from_bf16_on(
        w: &[bf16],
        n: usize,
        k: usize,
        gate_up: bool,
        tier: MemTier,
    ) -> Result<Self> {
        Self::pack(w, n, k, gate_up, tier)
    }

    fn pack(w: &[bf16], n: usize, k: usize, gate_up: bool, tier: MemTier) -> Result<Self> {
        check_shape(w, n, k)?;
        let (kind, nblocks) = WeightKind::layout(gate_up, n)?;
        let kb = k.div_ceil(BLOCK_K);
        // Zeroed: the padding of partial tiles must read as zero.
        let mut tiles = HostBuf::<Tile>::zeroed(nblocks * kb, tier)?;
        // Packed on the shared pool so that the pages are first touched by the threads that
        // will read them.
        platform::install(|| {
            tiles
                .par_chunks_mut(kb)
                .enumerate()
                .for_each(|(nb, col_tiles)| {
                    for c in 0..BLOCK_N {
                        let Some(row) = kind.row_of(n, nb, c) else {
                            continue;
                        };
                        for (kk, &v) in w[row * k..(row + 1) * k].iter().enumerate() {
                            col_tiles[kk / BLOCK_K].0[tile_offset(kk % BLOCK_K, c)] = v;
                        }
                    }
                })
        });
        Ok(PackedWeight {
            n,
            k,
            kind,
            kb,
            nblocks,
            tiles,
        })
    }

    /// The host memory tier of the packed tiles.
    pub fn tier(&self) -> MemTier {
        self.tiles.tier()
    }

    /// Rows of the original weight (output features before any SiLU·mul).
    pub fn n(&self) -> usize {
        self.n
    }

    /// Input features.
    pub fn k(&self) -> usize {
        self.k
    }

    pub fn kind(&self) -> WeightKind {
        self.kind
    }

    /// Bytes of packed storage (padding included): what a kernel streams per pass.
    pub fn packed_bytes(&self) -> usize {
        self.tiles.len() * std::mem::size_of::<Tile>()
    }

    /// The packed tiles as one flat bf16 slice, `nblocks · ceil(K / 32) · 512` elements in the
    /// layout of the module header (what a copy to another device moves).
    pub fn packed_bf16(&self) -> &[bf16] {
        const _: () = assert!(std::mem::size_of::<Tile>() == TILE_ELEMS * 2);
        // SAFETY: Tile is repr(C) around [bf16; TILE_ELEMS] with no padding (size asserted
        // above), so the tiles are tiles.len() * TILE_ELEMS contiguous, initialized bf16.
        unsafe {
            std::slice::from_raw_parts(
                self.tiles.as_ptr() as *const bf16,
                self.tiles.len() * TILE_ELEMS,
            )
        }
    }

    /// `W[row][col]` read back from the packed tiles (for references and tests).
    pub fn get(&self, row: usize, col: usize) -> bf16 {
        let (nb, c) = self.kind.block_of(row);
        self.tiles[nb * self.kb + col / BLOCK_K].0[tile_offset(col % BLOCK_K, c)]
    }

    /// Start of column block `nb`'s K tiles.
    pub(crate) fn block_ptr(&self, nb: usize) -> *const bf16 {
        debug_assert!(nb < self.nblocks);
        self.tiles[nb * self.kb..].as_ptr() as *const bf16
    }

    pub(crate) fn shape(&self) -> super::WeightShape {
        super::WeightShape {
            n: self.n,
            k: self.k,
            kind: self.kind,
            nblocks: self.nblocks,
        }
    }
}

/// Index inside one tile of element `kk` (0..32) of column `c` (0..16).
#[inline(always)]
pub(crate) fn tile_offset(kk: usize, c: usize) -> usize {
    (kk / 2) * (2 * BLOCK_N) + c * 2 + (kk % 2)
}

pub(crate) fn check_shape(w: &[bf16], n: usize, k: usize) -> Result<()> {
    if n == 0 || k == 0 {
        return Err(Error::Shape(format!(
            "weight shape [{n}, {k}]: both dimensions must be positive"
        )));
    }
    let elems = n
        .checked_mul(k)
        .ok_or_else(|| Error::Shape(format!("weight shape [{n}, {k}] overflows")))?;
    check_len("weight W[n, k]", elems, w.len())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn packing_on_a_node_matches_and_a_missing_node_is_an_error() {
        let (n, k) = (40, 95);
        let w = ramp(n * k);
        let a = PackedWeight::from_bf16(&w, n, k).unwrap();
        for gate_up in [false, true] {
            let b = PackedWeight::from_bf16_on(&w, n, k, gate_up, MemTier::Numa(0)).unwrap();
            assert_eq!(b.tiles.tier(), MemTier::Numa(0));
            for r in 0..n {
                for c in 0..k {
                    assert_eq!(b.get(r, c), w[r * k + c]);
                }
            }
            if !gate_up {
                assert!(a.tiles.iter().zip(b.tiles.iter()).all(|(x, y)| x.0 == y.0));
            }
        }
        let e = PackedWeight::from_bf16_on(&w, n, k, false, MemTier::Numa(99))
            .err()
            .unwrap();
        assert!(e.to_string().contains("numa:99"), "{e}");
    }

    fn ramp(n: usize) -> Vec<bf16> {
        (0..n)
            .map(|i| bf16::from_f32((i % 251) as f32 - 125.0))
            .collect()
    }

    #[test]
    fn packing_round_trips_odd_shapes() {
        for &(n, k) in &[(1, 1), (17, 33), (40, 95), (16, 32)] {
            let w = ramp(n * k);
            let p = PackedWeight::from_bf16(&w, n, k).unwrap();
            for r in 0..n {
                for c in 0..k {
                    assert_eq!(p.get(r, c), w[r * k + c], "[{n},{k}] at ({r},{c})");
                }
            }
            // Padding is zero: the kernels multiply it with real A values.
            let nonzero = p
                .tiles
                .iter()
                .flat_map(|t| t.0.iter())
                .filter(|v| v.to_f32() != 0.0)
                .count();
            let real = w.iter().filter(|v| v.to_f32() != 0.0).count();
            assert_eq!(nonzero, real, "[{n},{k}] padding must be zero");
            let flat = p.packed_bf16();
            assert_eq!(flat.len() * 2, p.packed_bytes());
            assert!(flat
                .chunks(TILE_ELEMS)
                .zip(p.tiles.iter())
                .all(|(f, t)| f == t.0));
        }
    }

    #[test]
    fn gate_up_round_trips() {
        let (n, k) = (2 * 21, 70);
        let w = ramp(n * k);
        let p = PackedWeight::from_bf16_gate_up(&w, n, k).unwrap();
        assert_eq!(p.nblocks, 4);
        for r in 0..n {
            for c in 0..k {
                assert_eq!(p.get(r, c), w[r * k + c], "({r},{c})");
            }
        }
    }

    #[test]
    fn bad_weights_are_errors() {
        let w = ramp(10);
        assert!(matches!(
            PackedWeight::from_bf16(&w, 3, 4),
            Err(Error::Len {
                expected: 12,
                got: 10,
                ..
            })
        ));
        assert!(matches!(
            PackedWeight::from_bf16(&w, 0, 4),
            Err(Error::Shape(_))
        ));
        assert!(matches!(
            PackedWeight::from_bf16_gate_up(&w, 5, 2),
            Err(Error::Shape(_))
        ));
    }
}
