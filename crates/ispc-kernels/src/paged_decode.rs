//! Paged decode attention on the CPU, bf16 KV with f32 accumulation: NEO's CPU half.
//!
//! For a batch of sequences, each with one new query token, this appends the token's K and V to
//! its block (fused: the same parallel pass that reads the cache writes the slot first) and
//! computes `softmax(q·Kᵀ·scale)·V` over the whole context. The ISPC kernel
//! (`kernels/paged_decode.ispc`) does one segment of one sequence for one KV head; this module
//! validates, plans the segments, runs them on the shared pinned pool and merges.
//!
//! Layouts (row-major, DESIGN.md):
//! - `k_cache`, `v_cache`: `[num_blocks][num_kv_heads][16][head_dim]`;
//! - `q`, `out`: `[batch][num_q_heads][head_dim]`; query head `h` reads KV head
//!   `h / (num_q_heads / num_kv_heads)` (consecutive query heads share a KV head, as HF's
//!   `repeat_kv` does);
//! - `new_k`, `new_v`: `[batch][num_kv_heads][head_dim]`;
//! - `block_tables`: `[batch][max_blocks]` `i32` block ids; `context_lens`: `[batch]` tokens
//!   per sequence *including* the new one, which goes to token index `context_len - 1`.
//!
//! Work split: the unit is one (sequence, KV head, run of blocks). Every (sequence, KV head) is
//! cut into segments of `S` blocks, with `S` chosen from the total number of (head, block) pairs
//! so that each pool thread gets several segments; a short sequence is one segment that writes
//! its output directly, a long one (a 100k-token context) is spread over all threads and its
//! partial results `(Σ p·V, max, Σ p)` are merged by log-sum-exp. All query heads of a KV head
//! are one segment's work, so K and V are read from DRAM once per KV head.
//!
//! Threads: rayon over `platform::pool()`, each task calling the single-threaded ISPC segment
//! function, rather than ISPC `launch` tasks. One pinned pool then serves every CPU kernel of the
//! process (AMX GEMMs, these attentions) without a second set of threads competing for the same
//! cores, and the planning, merging and error handling stay in Rust; ISPC tasks would have
//! needed an ISPCLaunch/ISPCSync runtime bridged onto the same pool anyway.
//!
//! Code paths, from `platform::cpu_tier()` (lowered by `TANDEM_CPU_TIER`): avx512 and above run
//! ISPC's dispatched build (avx512skx-x16 where the CPU has it); with `TANDEM_CPU_DECODE_DOT=1`
//! and AVX512-BF16, the `_dot` build (each block in `kernels/bf16dot.c`: `vdpbf16ps` QKᵀ,
//! vector softmax, register-blocked PV), slower on the GPU host's cores; `avx2` forces the
//! avx2-i32x8 build, `scalar` runs the reference twin.
//!
//! `TANDEM_CPU_DECODE_PREFETCH` (read once; `BLOCKS` or `BLOCKS:LINES`, default 1:64, 0 blocks
//! turns it off) sets how many blocks ahead the kernel prefetches K and V into L2, and how many
//! 64-byte lines from the start of each 4 KiB page.
//!
//! `TANDEM_CPU_DECODE_HEADS` (read once; default all the KV heads the kernel's staging holds)
//! sets how many KV heads one segment call walks together, block by block, so that a block's K
//! (and V) rows of those heads are read as one contiguous run.
//!
//! Where the CPU has AMX and a KV head has 8 or more query heads (LLaMA-3-70B), the AMX tier runs
//! instead (`paged_decode/amx.rs`: QKᵀ on tiles, softmax and PV on AVX-512), 10–30% faster
//! than the ISPC build there on the GPU host and slower at fewer heads;
//! `TANDEM_CPU_DECODE_AMX=1` or `0` forces it on or off at every group size, and
//! `TANDEM_CPU_DECODE_AMX_LEAD` (0 to 7, default 1) sets how many (block, KV head) items its
//! tile products run ahead of the vector work, `TANDEM_CPU_DECODE_AMX_BURST` (1 to 4,
//! default 3) how many items' products it issues together, and `TANDEM_CPU_DECODE_AMX_WARM` (0
//! to 16, default 0: off) issues a keep-alive tile product every that many vector PV passes, so
//! that the next item's products do not find the tile unit idle (asleep after 0.3–0.5 µs, which
//! costs the next burst some 250–290 ns). `TANDEM_CPU_DECODE_AMX_PV=1` runs
//! PV on tiles too (up to 8 query heads per KV head; each block's weights rounded to bf16 for
//! the products, which moves the output by at most 2⁻⁸ of Σp·|v| / Σp), leaving the vector
//! units the softmax and one rescale-and-add per block. On the GPU host
//! (`anchors/ispc_hybrid.sh`, paired rounds over 1 GiB of KV) it lifted the AMX tier by 5–8
//! points of the read at 1–4 query heads, still under the ISPC build there (67–68% against
//! 70–71% at 4), and was within the AMX tier's spread at 8, so it stays opt-in.

use half::bf16;
use rayon::prelude::*;

use crate::{sys, Error, Result};

mod amx;

/// Tokens per KV block.
pub const BLOCK_SIZE: usize = 16;
/// Largest head dimension the kernel takes (its f32 staging arrays are sized for it).
pub const MAX_HEAD_DIM: usize = 256;
/// Query heads one kernel pass handles; a larger group is split into passes (which re-read K/V).
const MAX_GROUP_PASS: usize = 16;
/// Query heads of all the KV heads of one kernel call, and their f32 elements (the kernel's
/// staging arrays: `MAX_HG` and `MAX_HGD` in kernels/paged_decode.ispc).
const MAX_CALL_HEADS: usize = 32;
const MAX_CALL_ELEMS: usize = 16 * MAX_HEAD_DIM;
/// Fewest blocks in a segment of a cut sequence: each segment converts its queries and writes
/// a partial result that the merge reads back, about a block's worth of work; at 8 blocks a
/// 4k-token sequence on 16 threads ran 20% slower than at 32 on the GPU host.
const MIN_SEGMENT_BLOCKS: usize = 32;
/// Segments per pool thread that the split aims for: many more segments than threads, so that
/// work stealing evens out threads slowed by anything else.
const SEGMENTS_PER_THREAD: usize = 16;
/// Blocks ahead that K and V are prefetched to L2 unless `TANDEM_CPU_DECODE_PREFETCH` says: on
/// the GPU host's 16 threads over 1 GiB of KV, one block ahead beat 2, 4 and 8 (whole pages;
/// 117–123 GiB/s against 97 at 2 and 81 at 4), and whole pages beat 2, 4 and 16 lines.
const PREFETCH_BLOCKS: i32 = 1;
/// 64-byte lines prefetched from the start of each K and V page (a block's rows of one KV head)
/// unless `TANDEM_CPU_DECODE_PREFETCH` says; 64 is a whole 4 KiB page.
const PREFETCH_LINES: i32 = 64;

/// The prefetch plan `(blocks ahead, lines per page)`: `TANDEM_CPU_DECODE_PREFETCH` as
/// `BLOCKS` or `BLOCKS:LINES` (0..=64 each; 0 blocks turns prefetching off), read once.
fn prefetch_plan() -> (i32, i32) {
    static PF: std::sync::OnceLock<(i32, i32)> = std::sync::OnceLock::new();
    *PF.get_or_init(|| {
        let default = (PREFETCH_BLOCKS, PREFETCH_LINES);
        let Ok(v) = std::env::var("TANDEM_CPU_DECODE_PREFETCH") else {
            return default;
        };
        let num = |x: &str| {
            x.trim()
                .parse::<i32>()
                .ok()
                .filter(|n| (0..=64).contains(n))
        };
        let parsed = match v.split_once(':') {
            None => num(&v).map(|b| (b, PREFETCH_LINES)),
            Some((b, l)) => num(b).zip(num(l)),
        };
        parsed.unwrap_or_else(|| {
            eprintln!(
                "tandem: TANDEM_CPU_DECODE_PREFETCH={v:?} is not BLOCKS or BLOCKS:LINES with each \
                 in 0..=64; using {}:{}",
                default.0, default.1
            );
            default
        })
    })
}

/// KV heads one kernel call walks together, block by block, and whether the environment chose
/// it (`TANDEM_CPU_DECODE_HEADS`, read once; default all that the kernel's staging holds: 8 for
/// LLaMA-3-8B's 8 × 4 heads of 128). A block's rows of consecutive KV heads are contiguous, so a
/// call over all of them reads each block's K and V as two runs of nh × 4 KiB instead of one
/// 4 KiB page per head at scattered addresses.
fn heads_per_call(num_kv_heads: usize, group: usize, head_dim: usize) -> (usize, bool) {
    static H: std::sync::OnceLock<Option<usize>> = std::sync::OnceLock::new();
    let asked = *H.get_or_init(|| {
        let v = std::env::var("TANDEM_CPU_DECODE_HEADS").ok()?;
        match v.trim().parse::<usize>() {
            Ok(n) if n > 0 => Some(n),
            _ => {
                eprintln!("tandem: TANDEM_CPU_DECODE_HEADS={v:?} is not a positive count; using all KV heads");
                None
            }
        }
    });
    if group > MAX_GROUP_PASS {
        return (1, asked.is_some());
    }
    let fit = (MAX_CALL_HEADS / group).min(MAX_CALL_ELEMS / (group * head_dim));
    let nh = asked
        .unwrap_or(num_kv_heads)
        .min(fit)
        .min(num_kv_heads)
        .max(1);
    (nh, asked.is_some())
}

/// KV heads per call and blocks per segment for a batch. Unless the environment fixed the heads,
/// they are halved while the batch would give the pool fewer than [`SEGMENTS_PER_THREAD`] tasks
/// a thread: a short batch (OPT-30B decoding one 272-token sequence: 17 blocks, 56 KV heads)
/// gets its parallelism from the heads, and two calls of 32 and 24 heads would leave 14 of 16
/// threads idle.
fn split(lens: &[usize], shape: &DecodeShape, group: usize, threads: usize) -> (usize, usize) {
    let kvh = shape.num_kv_heads;
    let (mut nh, fixed) = heads_per_call(kvh, group, shape.head_dim);
    loop {
        let seg = segment_blocks(lens, kvh.div_ceil(nh), threads);
        let tasks = lens
            .iter()
            .map(|l| l.div_ceil(BLOCK_SIZE).div_ceil(seg))
            .sum::<usize>()
            * kvh.div_ceil(nh);
        if fixed || nh == 1 || tasks >= threads.max(1) * SEGMENTS_PER_THREAD {
            return (nh, seg);
        }
        nh = nh.div_ceil(2);
    }
}

/// Head counts, head size and softmax scale of one attention layer.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct DecodeShape {
    pub num_q_heads: usize,
    pub num_kv_heads: usize,
    /// A multiple of 32 (one avx512 vector of bf16 pairs), at most [`MAX_HEAD_DIM`]; 64 and 128
    /// are the model sizes.
    pub head_dim: usize,
    /// Multiplies q·k before the softmax, usually `1/sqrt(head_dim)`.
    pub scale: f32,
}

/// One decode step's inputs for a batch of sequences (layouts in the module header).
#[derive(Clone, Copy, Debug)]
pub struct DecodeBatch<'a> {
    pub q: &'a [bf16],
    pub new_k: &'a [bf16],
    pub new_v: &'a [bf16],
    pub block_tables: &'a [i32],
    /// Row length of `block_tables`.
    pub max_blocks: usize,
    pub context_lens: &'a [i32],
}

impl DecodeBatch<'_> {
    pub fn batch(&self) -> usize {
        self.context_lens.len()
    }

    /// Bytes of K and V the attention reads for this batch (the bench's throughput unit).
    pub fn kv_bytes(&self, shape: &DecodeShape) -> usize {
        let tokens: usize = self.context_lens.iter().map(|&l| l.max(0) as usize).sum();
        2 * tokens * shape.num_kv_heads * shape.head_dim * std::mem::size_of::<bf16>()
    }
}

/// What validation found: sizes every path needs.
struct Checked {
    batch: usize,
    group: usize,
    lens: Vec<usize>,
}

fn check_len(what: &'static str, expected: usize, got: usize) -> Result<()> {
    if expected == got {
        Ok(())
    } else {
        Err(Error::Len {
            what,
            expected,
            got,
        })
    }
}

/// Validates shapes, lengths and block tables. Besides bounds, the block that receives the new
/// token must be read by no other sequence and appear once in its own table: otherwise the
/// append would race with another segment's read.
fn check(
    shape: &DecodeShape,
    b: &DecodeBatch,
    k_cache: &[bf16],
    v_cache: &[bf16],
    out: &[bf16],
) -> Result<Checked> {
    let DecodeShape {
        num_q_heads: qh,
        num_kv_heads: kvh,
        head_dim: d,
        scale,
    } = *shape;
    if kvh == 0 || qh == 0 || qh % kvh != 0 {
        return Err(Error::Invalid(format!(
            "paged_decode: num_q_heads ({qh}) must be a positive multiple of num_kv_heads ({kvh})"
        )));
    }
    if d == 0 || d % 32 != 0 || d > MAX_HEAD_DIM {
        return Err(Error::Invalid(format!(
            "paged_decode: head_dim {d} is not supported (a multiple of 32 up to {MAX_HEAD_DIM})"
        )));
    }
    if !scale.is_finite() {
        return Err(Error::Invalid(format!(
            "paged_decode: scale {scale} is not finite"
        )));
    }
    let block_elems = kvh * BLOCK_SIZE * d;
    if k_cache.is_empty() || k_cache.len() % block_elems != 0 {
        return Err(Error::Invalid(format!(
            "paged_decode: k_cache holds {} elements, not a positive multiple of one block's {block_elems} \
             (num_kv_heads {kvh} × 16 × head_dim {d})",
            k_cache.len()
        )));
    }
    check_len("paged_decode: v_cache", k_cache.len(), v_cache.len())?;
    let num_blocks = k_cache.len() / block_elems;
    let batch = b.batch();
    check_len(
        "paged_decode: q ([batch][num_q_heads][head_dim])",
        batch * qh * d,
        b.q.len(),
    )?;
    check_len(
        "paged_decode: out ([batch][num_q_heads][head_dim])",
        batch * qh * d,
        out.len(),
    )?;
    check_len(
        "paged_decode: new_k ([batch][num_kv_heads][head_dim])",
        batch * kvh * d,
        b.new_k.len(),
    )?;
    check_len(
        "paged_decode: new_v ([batch][num_kv_heads][head_dim])",
        batch * kvh * d,
        b.new_v.len(),
    )?;
    check_len(
        "paged_decode: block_tables ([batch][max_blocks])",
        batch * b.max_blocks,
        b.block_tables.len(),
    )?;

    let mut lens = Vec::with_capacity(batch);
    for (i, &l) in b.context_lens.iter().enumerate() {
        if l < 1 || l as usize > b.max_blocks * BLOCK_SIZE {
            return Err(Error::Invalid(format!(
                "paged_decode: sequence {i} has context length {l}; it must be in 1..={} (max_blocks {} × 16)",
                b.max_blocks * BLOCK_SIZE,
                b.max_blocks
            )));
        }
        lens.push(l as usize);
    }
    let table = |i: usize| &b.block_tables[i * b.max_blocks..(i + 1) * b.max_blocks];
    // (block receiving the append, its sequence), sorted by block.
    let mut targets: Vec<(i32, usize)> = (0..batch)
        .map(|i| (table(i)[(lens[i] - 1) / BLOCK_SIZE], i))
        .collect();
    targets.sort_unstable();
    for w in targets.windows(2) {
        if w[0].0 == w[1].0 {
            return Err(Error::Invalid(format!(
                "paged_decode: sequences {} and {} both append their new token into block {}",
                w[0].1, w[1].1, w[0].0
            )));
        }
    }
    for (i, &len) in lens.iter().enumerate() {
        let used = len.div_ceil(BLOCK_SIZE);
        for (pos, &id) in table(i)[..used].iter().enumerate() {
            if id < 0 || id as usize >= num_blocks {
                return Err(Error::Invalid(format!(
                    "paged_decode: sequence {i} block table entry {pos} is block {id}, outside the cache's 0..{num_blocks}"
                )));
            }
            if let Ok(k) = targets.binary_search_by_key(&id, |t| t.0) {
                let j = targets[k].1;
                if !(j == i && pos == used - 1) {
                    return Err(Error::Invalid(format!(
                        "paged_decode: block {id} receives sequence {j}'s new token but is also read by \
                         sequence {i} (table entry {pos})"
                    )));
                }
            }
        }
    }
    Ok(Checked {
        batch,
        group: qh / kvh,
        lens,
    })
}

/// One unit of parallel work: blocks `b0 ..` of one sequence for KV heads `kv .. kv + nh`.
#[derive(Clone, Copy, Debug)]
struct Segment {
    seq: usize,
    kv: usize,
    nh: usize,
    /// Index among the (sequence, head)'s segments, and their count.
    seg: usize,
    nseg: usize,
    b0: usize,
    ntok: usize,
    /// First partial-result slot of this (sequence, first head) when nseg > 1; head `kv + i`'s
    /// slots follow `i · nseg` slots later (slots run [sequence][KV head][segment]).
    part: usize,
}

/// Blocks per segment for a batch: enough segments for every thread to take several, none
/// shorter than [`MIN_SEGMENT_BLOCKS`].
fn segment_blocks(lens: &[usize], head_groups: usize, threads: usize) -> usize {
    let total: usize = lens.iter().map(|l| l.div_ceil(BLOCK_SIZE)).sum::<usize>() * head_groups;
    total
        .div_ceil(threads.max(1) * SEGMENTS_PER_THREAD)
        .max(MIN_SEGMENT_BLOCKS)
}

/// The segments of a batch (`nh` KV heads per segment), and the number of partial-result
/// slots they need.
fn plan(
    lens: &[usize],
    num_kv_heads: usize,
    nh: usize,
    seg_blocks: usize,
) -> (Vec<Segment>, usize) {
    let mut segs = Vec::new();
    let mut parts = 0;
    for (seq, &len) in lens.iter().enumerate() {
        let nb = len.div_ceil(BLOCK_SIZE);
        let nseg = nb.div_ceil(seg_blocks);
        for kv in (0..num_kv_heads).step_by(nh) {
            for seg in 0..nseg {
                let b0 = seg * seg_blocks;
                let ntok = (len - b0 * BLOCK_SIZE).min(seg_blocks * BLOCK_SIZE);
                segs.push(Segment {
                    seq,
                    kv,
                    nh: nh.min(num_kv_heads - kv),
                    seg,
                    nseg,
                    b0,
                    ntok,
                    part: parts + kv * nseg,
                });
            }
        }
        if nseg > 1 {
            parts += num_kv_heads * nseg;
        }
    }
    (segs, parts)
}

/// A raw pointer that may cross to pool threads; each use says why the accesses are disjoint.
#[derive(Clone, Copy)]
struct Shared<T>(*mut T);
// SAFETY: only used for buffers whose concurrent accesses are to disjoint elements (see uses).
unsafe impl<T> Send for Shared<T> {}
// SAFETY: as above.
unsafe impl<T> Sync for Shared<T> {}

impl<T> Shared<T> {
    /// Through a method, so that closures capture the `Shared` and not its bare pointer field.
    fn ptr(self) -> *mut T {
        self.0
    }
}

/// `TANDEM_CPU_DECODE_DOT=1` (read once) asks for the `_dot` build where the CPU has
/// AVX512-BF16. It is not the default: `vdpbf16ps` retires one zmm every two cycles on the GPU
/// host's cores (two f32 FMAs a cycle), and that build ran at 75-85 GiB/s against the f32
/// build's 99-106 GiB/s there (16 threads, 1 GiB of KV, the same run).
fn dot_requested() -> bool {
    static DOT: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *DOT.get_or_init(|| platform::env::switch("TANDEM_CPU_DECODE_DOT", false))
}

/// `TANDEM_CPU_DECODE_AMX` (read once): `1` runs QKᵀ on the tile unit where the CPU has AMX
/// (see [`amx`]) at every group size, `0` never; unset, the AMX tier runs where the CPU has AMX
/// and a KV head has at least [`AMX_MIN_GROUP`] query heads.
fn amx_requested(group: usize) -> bool {
    static AMX: std::sync::OnceLock<Option<bool>> = std::sync::OnceLock::new();
    let asked = *AMX.get_or_init(|| {
        std::env::var_os("TANDEM_CPU_DECODE_AMX")
            .map(|_| platform::env::switch("TANDEM_CPU_DECODE_AMX", false))
    });
    asked.unwrap_or(group >= AMX_MIN_GROUP)
}
/// `TANDEM_CPU_DECODE_AMX_PV=1` (read once): the AMX tier runs PV on tiles too
/// ([`amx::segment_pv`]; the weights rounded to bf16 for the products), up to 8 query heads per
/// KV head. Off by default.
fn amx_pv_requested() -> bool {
    static PV: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *PV.get_or_init(|| platform::env::switch("TANDEM_CPU_DECODE_AMX_PV", false))
}

/// Query heads per KV head from which the AMX tier is the default where the CPU has AMX: on the
/// GPU host (docs/BENCHMARKS.md, paired rounds over 1 GiB of KV) it reached 60–70% of the read
/// at 8 heads against the ISPC build's 49–58%, but 63–74% at 4 against 70–77%, and less at 1
/// and 2, where QKᵀ is a small part of the ISPC build's work.
const AMX_MIN_GROUP: usize = 8;

/// Which code runs: AMX tiles for QKᵀ (where the CPU has AMX, at 8 or more query heads per KV
/// head or on request; see [`amx_requested`]), the avx512
/// build whose blocks run in `kernels/bf16dot.c` (AVX512-BF16, on request), ISPC with its own
/// dispatch (avx512 here), ISPC's avx2 build forced, or the scalar twin where the CPU has none
/// of them. Chosen from `platform::cpu_tier()`, which `TANDEM_CPU_TIER` lowers. `AmxEmu` runs
/// the AMX tier's code on the tile emulator (tests).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Path {
    Amx,
    #[cfg(test)]
    AmxEmu,
    /// The AMX tier with PV on tiles ([`amx::segment_pv`]), on the hardware and on the emulator.
    #[cfg(test)]
    AmxPv,
    #[cfg(test)]
    AmxPvEmu,
    /// The AMX tier with its products in bursts of four items ([`amx::Schedule`]), four items
    /// ahead on the hardware, three on the emulator, and a keep-alive product at every vector PV
    /// pass.
    #[cfg(test)]
    AmxBurst,
    #[cfg(test)]
    AmxBurstEmu,
    IspcDot,
    Ispc,
    IspcAvx2,
    Scalar,
}

/// How a path runs one segment.
#[derive(Clone, Copy)]
enum SegmentKernel {
    Ispc(SegmentFn),
    Rust(unsafe fn(&amx::SegArgs)),
}

impl SegmentKernel {
    /// # Safety
    /// As [`amx::segment`]'s contract, which the ISPC functions share.
    unsafe fn run(self, a: &amx::SegArgs) {
        match self {
            SegmentKernel::Rust(f) => f(a),
            SegmentKernel::Ispc(f) => f(
                a.q,
                a.k_cache,
                a.v_cache,
                a.blocks,
                a.ntok as i32,
                a.block_stride as i64,
                a.head_off as i64,
                a.d as i32,
                a.g as i32,
                a.nh as i32,
                a.scale,
                a.new_k,
                a.new_v,
                a.append_at,
                a.out,
                a.part_o,
                a.part_ml,
                a.part_stride as i64,
                a.pf_ahead as i32,
                a.pf_lines as i32,
            ),
        }
    }
}

type SegmentFn = unsafe extern "C" fn(
    *const u16,
    *mut u16,
    *mut u16,
    *const i32,
    i32,
    i64,
    i64,
    i32,
    i32,
    i32,
    f32,
    *const u16,
    *const u16,
    i32,
    *mut u16,
    *mut f32,
    *mut f32,
    i64,
    i32,
    i32,
);
type MergeFn = unsafe extern "C" fn(*const f32, *const f32, i32, i32, i32, *mut u16);

impl Path {
    fn current(group: usize) -> Path {
        match platform::cpu_tier() {
            platform::CpuTier::Amx if amx_requested(group) => Path::Amx,
            t if t >= platform::CpuTier::Avx512Bf16 && dot_requested() => Path::IspcDot,
            t if t >= platform::CpuTier::Avx512 => Path::Ispc,
            platform::CpuTier::Avx2 => Path::IspcAvx2,
            _ => Path::Scalar,
        }
    }

    /// The segment kernel and the merge of its partial results. The AMX tier writes partial
    /// results in the avx512 build's chunk order (`[16 even][16 odd]`), so it shares that
    /// build's merge (ISPC's dispatch picks avx512 on every CPU with AMX or AVX-512).
    fn kernels(self) -> Option<(SegmentKernel, MergeFn)> {
        use amx_kernels::tile_ops::Hw;
        let ispc = |f| Some(SegmentKernel::Ispc(f));
        let (seg, merge): (Option<SegmentKernel>, MergeFn) = match self {
            Path::Amx => (
                Some(SegmentKernel::Rust(if amx_pv_requested() {
                    amx::segment_pv::<Hw>
                } else {
                    amx::segment::<Hw>
                })),
                sys::ispc_paged_decode_merge_bf16,
            ),
            #[cfg(test)]
            Path::AmxEmu => (
                Some(SegmentKernel::Rust(
                    amx::segment::<amx_kernels::tile_ops::Emu>,
                )),
                sys::ispc_paged_decode_merge_bf16,
            ),
            #[cfg(test)]
            Path::AmxPv => (
                Some(SegmentKernel::Rust(amx::segment_pv::<Hw>)),
                sys::ispc_paged_decode_merge_bf16,
            ),
            #[cfg(test)]
            Path::AmxPvEmu => (
                Some(SegmentKernel::Rust(
                    amx::segment_pv::<amx_kernels::tile_ops::Emu>,
                )),
                sys::ispc_paged_decode_merge_bf16,
            ),
            #[cfg(test)]
            Path::AmxBurst => (
                Some(SegmentKernel::Rust(amx::segment_sched::<Hw, 4, 4, 1>)),
                sys::ispc_paged_decode_merge_bf16,
            ),
            #[cfg(test)]
            Path::AmxBurstEmu => (
                Some(SegmentKernel::Rust(
                    amx::segment_sched::<amx_kernels::tile_ops::Emu, 3, 4, 1>,
                )),
                sys::ispc_paged_decode_merge_bf16,
            ),
            Path::IspcDot => (
                ispc(sys::ispc_paged_decode_segment_bf16_dot as SegmentFn),
                sys::ispc_paged_decode_merge_bf16_dot,
            ),
            Path::Ispc => (
                ispc(sys::ispc_paged_decode_segment_bf16 as SegmentFn),
                sys::ispc_paged_decode_merge_bf16,
            ),
            Path::IspcAvx2 => (
                ispc(sys::ispc_paged_decode_segment_bf16_avx2 as SegmentFn),
                sys::ispc_paged_decode_merge_bf16_avx2,
            ),
            Path::Scalar => return None,
        };
        seg.map(|s| (s, merge))
    }
}

/// Paged decode attention with fused KV append, in ISPC on the shared pool. Appends each
/// sequence's new K/V at token `context_len - 1`, then writes `out`.
pub fn paged_decode_bf16(
    shape: &DecodeShape,
    batch: &DecodeBatch,
    k_cache: &mut [bf16],
    v_cache: &mut [bf16],
    out: &mut [bf16],
) -> Result<()> {
    let c = check(shape, batch, k_cache, v_cache, out)?;
    let (nh, s) = split(&c.lens, shape, c.group, platform::pool_threads());
    run_checked(
        shape,
        batch,
        &c,
        s,
        nh,
        Path::current(c.group),
        k_cache,
        v_cache,
        out,
    );
    Ok(())
}

/// [`paged_decode_bf16`] with a forced segment length and code path, for tests.
#[cfg(test)]
#[allow(clippy::too_many_arguments)]
fn paged_decode_bf16_with(
    shape: &DecodeShape,
    batch: &DecodeBatch,
    k_cache: &mut [bf16],
    v_cache: &mut [bf16],
    out: &mut [bf16],
    seg_blocks: Option<usize>,
    heads: Option<usize>,
    path: Path,
) -> Result<()> {
    let c = check(shape, batch, k_cache, v_cache, out)?;
    let (fit, _) = heads_per_call(shape.num_kv_heads, c.group, shape.head_dim);
    let nh = heads.map_or(fit, |h| h.clamp(1, fit.max(1)));
    let s = seg_blocks.unwrap_or_else(|| {
        segment_blocks(
            &c.lens,
            shape.num_kv_heads.div_ceil(nh),
            platform::pool_threads(),
        )
    });
    run_checked(shape, batch, &c, s.max(1), nh, path, k_cache, v_cache, out);
    Ok(())
}

#[allow(clippy::too_many_arguments)]
fn run_checked(
    shape: &DecodeShape,
    b: &DecodeBatch,
    c: &Checked,
    seg_blocks: usize,
    nh: usize,
    path: Path,
    k_cache: &mut [bf16],
    v_cache: &mut [bf16],
    out: &mut [bf16],
) {
    let Some((segment_fn, merge_fn)) = path.kernels() else {
        return reference_checked(shape, b, c, k_cache, v_cache, out);
    };
    let (qh, kvh, d, g) = (
        shape.num_q_heads,
        shape.num_kv_heads,
        shape.head_dim,
        c.group,
    );
    let (segs, parts) = plan(&c.lens, kvh, nh, seg_blocks);
    let mut part_o = vec![0f32; parts * g * d];
    let mut part_ml = vec![0f32; parts * g * 2];
    let kc = Shared(k_cache.as_mut_ptr() as *mut u16);
    let vc = Shared(v_cache.as_mut_ptr() as *mut u16);
    let o = Shared(out.as_mut_ptr() as *mut u16);
    let po = Shared(part_o.as_mut_ptr());
    let pml = Shared(part_ml.as_mut_ptr());
    let block_stride = kvh * BLOCK_SIZE * d;
    let (pf_blocks, pf_lines) = prefetch_plan();
    let run_segment = |s: &Segment| {
        let table = &b.block_tables[s.seq * b.max_blocks + s.b0..(s.seq + 1) * b.max_blocks];
        let last = s.seg + 1 == s.nseg;
        for h0 in (0..g).step_by(MAX_GROUP_PASS) {
            let gp = (g - h0).min(MAX_GROUP_PASS);
            let head = s.seq * qh + s.kv * g + h0;
            let append_at = if last && h0 == 0 {
                (s.ntok - 1) as i32
            } else {
                -1
            };
            let nk = (s.seq * kvh + s.kv) * d;
            // With gp < g (passes of a large group) there is one KV head per call (nh = 1).
            let (out_p, po_p, pml_p) = if s.nseg == 1 {
                (
                    o.ptr().wrapping_add(head * d),
                    std::ptr::null_mut(),
                    std::ptr::null_mut(),
                )
            } else {
                let slot = s.part + s.seg;
                (
                    std::ptr::null_mut(),
                    po.ptr().wrapping_add((slot * g + h0) * d),
                    pml.ptr().wrapping_add((slot * g + h0) * 2),
                )
            };
            // SAFETY: `check` proved every block id of the sequence's used blocks in range, the
            // shapes of q/new_k/new_v/out, head_dim ≤ MAX_HEAD_DIM and gp ≤ MAX_GROUP_PASS (the
            // kernel's array sizes). Writes are disjoint between segments: a segment writes only
            // its own (sequence, head range) of `out` or its own partial slot, and the append
            // goes to these KV heads' rows of the sequence's last block, which `check` proved no
            // other sequence reads and which lies in this (the last) segment only, written
            // before this segment reads it.
            unsafe {
                segment_fn.run(&amx::SegArgs {
                    q: b.q.as_ptr().add(head * d) as *const u16,
                    k_cache: kc.ptr(),
                    v_cache: vc.ptr(),
                    blocks: table.as_ptr(),
                    ntok: s.ntok,
                    block_stride,
                    head_off: s.kv * BLOCK_SIZE * d,
                    d,
                    g: gp,
                    nh: s.nh,
                    scale: shape.scale,
                    new_k: b.new_k.as_ptr().add(nk) as *const u16,
                    new_v: b.new_v.as_ptr().add(nk) as *const u16,
                    append_at,
                    out: out_p,
                    part_o: po_p,
                    part_ml: pml_p,
                    part_stride: s.nseg * g,
                    pf_ahead: pf_blocks as usize,
                    pf_lines: pf_lines as usize,
                });
            }
        }
    };
    // One merge per (sequence, KV head) that was cut: (sequence, KV head, first slot, nseg).
    let merges: Vec<(usize, usize, usize, usize)> = segs
        .iter()
        .filter(|s| s.nseg > 1 && s.seg == 0)
        .flat_map(|s| (0..s.nh).map(move |i| (s.seq, s.kv + i, s.part + i * s.nseg, s.nseg)))
        .collect();
    platform::install(|| {
        segs.par_iter().for_each(run_segment);
        merges.par_iter().for_each(|&(seq, kv, part, nseg)| {
            // SAFETY: slots part .. part + nseg were all written by the segments above, and
            // this (sequence, KV head)'s g output rows are written by this merge only.
            unsafe {
                merge_fn(
                    po.ptr().add(part * g * d),
                    pml.ptr().add(part * g * 2),
                    nseg as i32,
                    g as i32,
                    d as i32,
                    o.ptr().add((seq * qh + kv * g) * d),
                );
            }
        });
    });
}

/// Reference twin of [`paged_decode_bf16`]: scalar, one sequence and head at a time, f64
/// accumulation, the same validation and the same append.
pub fn paged_decode_bf16_ref(
    shape: &DecodeShape,
    b: &DecodeBatch,
    k_cache: &mut [bf16],
    v_cache: &mut [bf16],
    out: &mut [bf16],
) -> Result<()> {
    let c = check(shape, b, k_cache, v_cache, out)?;
    reference_checked(shape, b, &c, k_cache, v_cache, out);
    Ok(())
}

fn reference_checked(
    shape: &DecodeShape,
    b: &DecodeBatch,
    c: &Checked,
    k_cache: &mut [bf16],
    v_cache: &mut [bf16],
    out: &mut [bf16],
) {
    let (qh, kvh, d, g) = (
        shape.num_q_heads,
        shape.num_kv_heads,
        shape.head_dim,
        c.group,
    );
    let row = |i: usize, t: usize, kv: usize| {
        let id = b.block_tables[i * b.max_blocks + t / BLOCK_SIZE] as usize;
        ((id * kvh + kv) * BLOCK_SIZE + t % BLOCK_SIZE) * d
    };
    for i in 0..c.batch {
        let len = c.lens[i];
        for kv in 0..kvh {
            let r = row(i, len - 1, kv);
            let n = (i * kvh + kv) * d;
            k_cache[r..r + d].copy_from_slice(&b.new_k[n..n + d]);
            v_cache[r..r + d].copy_from_slice(&b.new_v[n..n + d]);
        }
        for h in 0..qh {
            let kv = h / g;
            let q = &b.q[(i * qh + h) * d..][..d];
            let scores: Vec<f64> = (0..len)
                .map(|t| {
                    let k = &k_cache[row(i, t, kv)..][..d];
                    q.iter()
                        .zip(k)
                        .map(|(a, b)| a.to_f64() * b.to_f64())
                        .sum::<f64>()
                        * shape.scale as f64
                })
                .collect();
            let m = scores.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
            let p: Vec<f64> = scores.iter().map(|s| (s - m).exp()).collect();
            let l: f64 = p.iter().sum();
            let mut acc = vec![0f64; d];
            for (t, pt) in p.iter().enumerate() {
                for (a, v) in acc.iter_mut().zip(&v_cache[row(i, t, kv)..][..d]) {
                    *a += pt * v.to_f64();
                }
            }
            for (o, a) in out[(i * qh + h) * d..][..d].iter_mut().zip(&acc) {
                *o = bf16::from_f64(a / l);
            }
        }
    }
}

#[cfg(test)]
mod tests;
