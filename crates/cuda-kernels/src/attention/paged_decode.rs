//! Paged decode attention: one query token per sequence against its KV blocks
//! (`kernels/attention/paged_decode.cu`, whose header gives the layouts and the work split).

use std::sync::Arc;

use cudarc::driver::{CudaSlice, CudaStream, DevicePtr, DevicePtrMut, LaunchConfig};
use half::bf16;

use super::{gqa_group, LOG2E};
use crate::kv::{KvShape, BLOCK_TOKENS};
use crate::launch::Launch;
use crate::position::HeadRows;
use crate::{check_len, shape_err, DeviceIds, Error, Gpu, Result};

/// The sequences of a decode step: `block_tables` is `[seqs, table_width]` (row b lists the
/// blocks of sequence b in order; entries past its context are never read and may be
/// anything), `context_lens[b]` counts the tokens in cache including the new one (>= 1).
pub struct DecodeSeqs<'a, Ids: ?Sized = DeviceIds> {
    pub block_tables: &'a Ids,
    pub table_width: usize,
    pub context_lens: &'a Ids,
}

/// Which decode kernel runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DecodeKernel {
    /// The measured better one for the group size (see [`DecodeKernel::pick`]).
    Auto,
    /// `paged_decode.cu`: FP32 dot products on CUDA cores, up to 4 q heads per block.
    CudaCores,
    /// `paged_decode_mma.cu`: mma.sync tensor cores, up to 16 q heads per block.
    TensorCores,
}

impl DecodeKernel {
    /// `Auto` resolved for `g` q heads per kv head: with one head per kv head the CUDA-core
    /// kernel streams K/V at the copy bandwidth; with more, its FP32 work bounds it and the
    /// tensor-core kernel takes over.
    pub fn pick(self, g: usize) -> DecodeKernel {
        match self {
            DecodeKernel::Auto if g == 1 => DecodeKernel::CudaCores,
            DecodeKernel::Auto => DecodeKernel::TensorCores,
            k => k,
        }
    }
}

/// Pages per split: long splits amortize each block's fixed costs (q load, softmax, merge).
/// For the CUDA-core kernel, 32 pages x 16 tokens x 4 heads x 4 bytes of scores = 8 KiB of
/// shared memory, plus 8 KiB for the cross-warp reduction.
const MAX_SPLIT_PAGES: usize = 32;
/// Fewer pages per split than this makes the merge cost more than the parallelism gains.
const MIN_SPLIT_PAGES: usize = 4;
/// CUDA-core kernel: splits shrink (halving from MAX_SPLIT_PAGES) until the grid fills the
/// blocks that fit an SM at once: the D = 128 kernel uses 128 registers x 128 threads (4 blocks
/// per SM). The tensor-core kernel (168 registers and 96 KiB of shared memory at D = 128: 2
/// blocks per SM) is planned by [`mma_resident_splits`] by default; RESIDENT_MMA is the
/// occupancy fallback of the waves plan (see [`mma_splits`]) and the fixed plan's figure.
const RESIDENT_CUDA: usize = 4;
const RESIDENT_MMA: usize = 3;
/// Waves of resident blocks the CUDA-core kernel's splits aim for (`TANDEM_DECODE_WAVES`, read
/// once; default 1): more waves cut each block's share and the last wave's idle tail, at the
/// cost of more partial rows for the merge pass. For the tensor-core kernel the variable, when
/// set, fixes the waves [`mma_splits`] plans for instead of its own choice.
fn target_waves() -> usize {
    waves_override().unwrap_or(1)
}
/// `TANDEM_DECODE_WAVES` when set (1..=64), read once.
fn waves_override() -> Option<usize> {
    static W: std::sync::OnceLock<Option<usize>> = std::sync::OnceLock::new();
    *W.get_or_init(|| platform::env::count("TANDEM_DECODE_WAVES", 1..=64))
}
/// How the tensor-core path is planned (`TANDEM_DECODE_PLAN`, read once).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum MmaPlan {
    /// The default: the fewest splits that give nearly every SM a block (see
    /// [`mma_resident_splits`]), each sequence's pages dealt evenly over them, merged by the
    /// reduce launch.
    Resident,
    /// `fixed`: as the CUDA-core kernel is planned (splits of a fixed power-of-two page count,
    /// RESIDENT_MMA blocks per SM), merged by the reduce launch.
    Fixed,
    /// `waves`: by the driver's occupancy into few full waves (see [`mma_splits`]), pages dealt
    /// evenly, merged in the last block of each group unless `TANDEM_DECODE_FUSE=0`.
    Waves,
}
fn mma_plan() -> MmaPlan {
    static V: std::sync::OnceLock<MmaPlan> = std::sync::OnceLock::new();
    *V.get_or_init(|| {
        platform::env::choice(
            "TANDEM_DECODE_PLAN",
            &[
                ("resident", MmaPlan::Resident),
                ("fixed", MmaPlan::Fixed),
                ("waves", MmaPlan::Waves),
            ],
            MmaPlan::Resident,
        )
    })
}
fn mma_fused_merge() -> bool {
    static V: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *V.get_or_init(|| platform::env::switch("TANDEM_DECODE_FUSE", true))
}
/// The fraction of the SMs the resident plan's blocks must cover (see [`mma_resident_splits`]).
const MIN_SM_FILL: f64 = 0.9;

/// How much longer than the even share of an SM the longest block of the resident plan may
/// run before the plan splits the long contexts (see [`mma_resident_splits`]).
const MAX_BLOCK_OVER_SHARE: f64 = 1.5;

/// Splits per (sequence, kv head, head group) of the default tensor-core plan: for the
/// groups (`seqs` sequences of `groups_per_seq`), `sms` SMs, contexts of up to `max_pages`
/// pages, `total_pages` pages over all the sequences. The fewest splits whose blocks cover
/// MIN_SM_FILL of the SMs: on an H100 one 4-warp block per SM already streamed at the copy bandwidth (16 x 4096 tokens, 8 kv
/// heads: 128 blocks on 132 SMs), and every further split cost more than it gained (more blocks
/// per SM contend, partials, the merge). Ragged contexts split further, until the longest
/// block holds at most MAX_BLOCK_OVER_SHARE times an SM's even share of all the pages: one
/// 64k-token sequence among fifteen of 1k would otherwise leave its few blocks streaming long
/// after every other SM is idle. A split keeps at least MIN_SPLIT_PAGES pages.
fn mma_resident_splits(
    seqs: usize,
    groups_per_seq: usize,
    sms: usize,
    max_pages: usize,
    total_pages: usize,
) -> usize {
    let cap = max_pages.div_ceil(MIN_SPLIT_PAGES).max(1);
    let base = (seqs * groups_per_seq).max(1);
    let fill = (MIN_SM_FILL * sms as f64 / base as f64).ceil() as usize;
    let share = (total_pages * groups_per_seq) as f64 / sms.max(1) as f64;
    let balance = (max_pages as f64 / (MAX_BLOCK_OVER_SHARE * share).max(1.0)).ceil() as usize;
    fill.max(balance).clamp(1, cap)
}

/// The fraction of the resident-block slots over all waves a tensor-core plan must fill before
/// the planner stops adding waves (see [`mma_splits`]).
const MIN_WAVE_FILL: f64 = 0.9;
/// Waves the tensor-core planner tries at most.
const MAX_WAVES: usize = 8;

/// Splits per (sequence, kv head, head group) for the tensor-core kernel: `base` such groups,
/// `slots` blocks resident on the whole GPU at once, contexts of up to `max_pages` pages. Each
/// split is one block, so the grid is `base * splits` blocks in waves of `slots`. Blocks of one
/// wave stream at the same rate and end together, and every wave pays a block's fixed costs
/// (first loads' latency, q, the merge), so few full waves beat many: the fewest waves w,
/// counting from one, whose splits, `w * slots / base`, fill at least MIN_WAVE_FILL of the
/// slots of the waves they take (the best fill if none does). A split keeps at least MIN_SPLIT_PAGES pages.
fn mma_splits(base: usize, slots: usize, max_pages: usize, waves: Option<usize>) -> usize {
    let cap = max_pages.div_ceil(MIN_SPLIT_PAGES).max(1);
    let splits = |w: usize| (w * slots / base.max(1)).clamp(1, cap);
    if let Some(w) = waves {
        return splits(w);
    }
    let fill = |n: usize| {
        let blocks = base * n;
        blocks as f64 / (blocks.div_ceil(slots.max(1)) * slots.max(1)) as f64
    };
    let mut best = splits(1);
    for w in 1..=MAX_WAVES {
        let n = splits(w);
        if fill(n) >= MIN_WAVE_FILL {
            return n;
        }
        if fill(n) > fill(best) {
            best = n;
        }
    }
    best
}

/// q heads served per block at most: CUDA-core kernels exist for 1, 2 and 4, the tensor-core
/// kernel serves one 16-row mma tile.
const MAX_GROUP_CUDA: usize = 4;
const MAX_GROUP_MMA: usize = 16;
const THREADS: u32 = 128;
const WARPS: usize = 4;
/// Ring slots per warp of the tensor-core kernel (its NST), each a K and a V page (swizzled, no
/// padding): 3 at D = 128 and 4 at D = 64, as `paged_decode_mma.cu` instantiates them.
fn mma_stages(d: usize) -> usize {
    if d == 64 {
        4
    } else {
        3
    }
}

fn check(
    what: &'static str,
    q: HeadRows,
    q_len: usize,
    cache: KvShape,
    k_len: usize,
    v_len: usize,
    tables: &[i32],
    width: usize,
    lens: &[i32],
    out_len: usize,
) -> Result<usize> {
    cache.check(what, k_len, v_len)?;
    let g = gqa_group(what, q, cache.kv_heads, cache.head_dim)?;
    q.check(what, q_len)?;
    let seqs = q.tokens;
    check_len(what, seqs, lens.len())?;
    check_len(what, seqs * width, tables.len())?;
    check_len(what, seqs * q.heads * q.head_dim, out_len)?;
    for (b, &ctx) in lens.iter().enumerate() {
        if ctx < 1 || ctx as usize > width * BLOCK_TOKENS {
            return Err(Error::IdRange {
                what: "paged decode: context length",
                id: ctx as i64,
                bound: (width * BLOCK_TOKENS + 1) as i64,
            });
        }
        for &blk in &tables[b * width..][..(ctx as usize).div_ceil(BLOCK_TOKENS)] {
            if blk < 0 || blk as usize >= cache.num_blocks {
                return Err(Error::IdRange {
                    what: "paged decode: block table entry",
                    id: blk as i64,
                    bound: cache.num_blocks as i64,
                });
            }
        }
    }
    Ok(g)
}

/// `out[b, h] = softmax(scale · q[b, h] · K_bᵀ) · V_b` over the context of sequence b, for the
/// q rows of `q` (`q.tokens` sequences, `q.heads` heads); `out` is packed `[seqs, q_heads,
/// head_dim]`.
#[allow(clippy::too_many_arguments)]
pub fn paged_decode_bf16(
    gpu: &Gpu,
    stream: &Arc<CudaStream>,
    q: &impl DevicePtr<bf16>,
    q_rows: HeadRows,
    cache: KvShape,
    k_cache: &impl DevicePtr<bf16>,
    v_cache: &impl DevicePtr<bf16>,
    seqs: DecodeSeqs<'_>,
    scale: f32,
    out: &mut impl DevicePtrMut<bf16>,
) -> Result<()> {
    paged_decode_bf16_with(
        gpu,
        stream,
        q,
        q_rows,
        cache,
        k_cache,
        v_cache,
        seqs,
        scale,
        out,
        DecodeKernel::Auto,
    )
}

/// [`paged_decode_bf16`] with the kernel chosen by the caller (benches, profiling).
#[allow(clippy::too_many_arguments)]
pub fn paged_decode_bf16_with(
    gpu: &Gpu,
    stream: &Arc<CudaStream>,
    q: &impl DevicePtr<bf16>,
    q_rows: HeadRows,
    cache: KvShape,
    k_cache: &impl DevicePtr<bf16>,
    v_cache: &impl DevicePtr<bf16>,
    seqs: DecodeSeqs<'_>,
    scale: f32,
    out: &mut impl DevicePtrMut<bf16>,
    kernel: DecodeKernel,
) -> Result<()> {
    paged_decode_bf16_scratch(
        gpu, stream, q, q_rows, cache, k_cache, v_cache, seqs, scale, out, kernel, None,
    )
}

/// [`paged_decode_bf16_with`], and with a preallocated [`DecodeScratch`] where one is given:
/// then nothing is allocated and the grid depends only on the scratch's plan, not on this
/// step's context lengths, so that the launch can be captured once in a CUDA graph and replayed
/// while the contexts grow (up to the plan's `max_pages`; splits past a sequence's context exit
/// at once). The scratch must have been planned for this shape and `kernel`.
#[allow(clippy::too_many_arguments)]
pub fn paged_decode_bf16_scratch(
    gpu: &Gpu,
    stream: &Arc<CudaStream>,
    q: &impl DevicePtr<bf16>,
    q_rows: HeadRows,
    cache: KvShape,
    k_cache: &impl DevicePtr<bf16>,
    v_cache: &impl DevicePtr<bf16>,
    seqs: DecodeSeqs<'_>,
    scale: f32,
    out: &mut impl DevicePtrMut<bf16>,
    kernel: DecodeKernel,
    scratch: Option<&mut DecodeScratch>,
) -> Result<()> {
    let what = "paged_decode_bf16";
    let g = check(
        what,
        q_rows,
        q.len(),
        cache,
        k_cache.len(),
        v_cache.len(),
        seqs.block_tables.host(),
        seqs.table_width,
        seqs.context_lens.host(),
        out.len(),
    )?;
    if !(scale > 0.0 && scale.is_finite()) {
        return Err(shape_err(format!(
            "{what}: softmax scale {scale} must be positive and finite"
        )));
    }
    let b = q_rows.tokens;
    if b == 0 {
        return Ok(());
    }
    if b > 65535 {
        return Err(shape_err(format!(
            "{what}: {b} sequences, at most 65535 per launch"
        )));
    }
    let (pq, _gq) = q.device_ptr(stream);
    if pq % 16 != 0 || q_rows.token_stride % 8 != 0 {
        return Err(shape_err(format!(
            "{what}: q must start 16-byte aligned with a token stride of 8 elements"
        )));
    }
    let max_pages = (seqs.context_lens.max() as usize).div_ceil(BLOCK_TOKENS);
    let (plan, mut owned, scratch) = match scratch {
        Some(sc) => {
            if sc.seqs != b
                || sc.q_heads != q_rows.heads
                || sc.cache != cache
                || sc.kernel != kernel.pick(g)
            {
                return Err(shape_err(format!(
                    "{what}: the scratch was planned for {} sequences x {} q heads, {:?}, kernel \
                     {:?}; this call has {b} x {}, {cache:?}, {kernel:?}",
                    sc.seqs, sc.q_heads, sc.cache, sc.kernel, q_rows.heads
                )));
            }
            if max_pages > sc.max_pages {
                return Err(shape_err(format!(
                    "{what}: a context of {max_pages} pages exceeds the scratch's plan of {}",
                    sc.max_pages
                )));
            }
            (sc.plan, None, Some(sc))
        }
        None => {
            let total_pages = (seqs.context_lens.host().iter())
                .map(|&c| (c.max(0) as usize).div_ceil(BLOCK_TOKENS))
                .sum();
            let plan = SplitPlan::new(gpu, b, cache, g, kernel.pick(g), max_pages, total_pages);
            let parts = plan.parts(b, q_rows.heads);
            // SAFETY: uninitialized scratch; the kernel writes every partial the reduce reads
            // (an empty split writes its (m, l) and the reduce skips its acc).
            let acc = unsafe { stream.alloc::<f32>(parts * cache.head_dim) }?;
            // SAFETY: as above.
            let ml = unsafe { stream.alloc::<f32>(parts * 2) }?;
            // Zeroed: the fused merge's tickets start at 0 (and the kernel leaves them so).
            let cnt = stream.alloc_zeros::<i32>(plan.counters(b, cache.kv_heads))?;
            (plan, Some((acc, ml, cnt)), None)
        }
    };
    let (part_acc, part_ml, counters) = match (owned.as_mut(), scratch) {
        (Some((a, m, c)), _) => (a, m, c),
        (None, Some(sc)) => (&mut sc.part_acc, &mut sc.part_ml, &mut sc.counters),
        (None, None) => unreachable!("one of the two is set above"),
    };
    let SplitPlan {
        groups,
        split_pages,
        num_splits,
        name,
        smem,
        fused,
    } = plan;
    let (d, hq, hkv) = (cache.head_dim, q_rows.heads, cache.kv_heads);
    let f = gpu.function_with_smem(name, smem as u32)?;
    let (pk, _gk) = k_cache.device_ptr(stream);
    let (pv, _gv) = v_cache.device_ptr(stream);
    let (pt, _gt) = seqs.block_tables.dev().device_ptr(stream);
    let (pl, _gl) = seqs.context_lens.dev().device_ptr(stream);
    let (pa, _ga) = part_acc.device_ptr_mut(stream);
    let (pm, _gm) = part_ml.device_ptr_mut(stream);
    let (pc, _gc) = counters.device_ptr_mut(stream);
    // The tensor-core kernel takes the tickets of its fused merge (null: the reduce launch).
    let pc: u64 = if fused { pc } else { 0 };
    let (po, _go) = out.device_ptr_mut(stream);
    let q_stride = q_rows.token_stride as i64;
    let out_stride = (hq * d) as i64;
    let (width, hq_i, hkv_i, groups_i) = (
        seqs.table_width as i32,
        hq as i32,
        hkv as i32,
        groups as i32,
    );
    let scale_log2 = scale * LOG2E;
    let (sp, ns) = (split_pages as i32, num_splits as i32);
    let cfg = LaunchConfig {
        grid_dim: (num_splits as u32, (hkv * groups) as u32, b as u32),
        block_dim: (THREADS, 1, 1),
        shared_mem_bytes: smem as u32,
    };
    let mut lb = Launch::new(gpu, stream, &f);
    lb.arg(&pq)
        .arg(&q_stride)
        .arg(&pk)
        .arg(&pv)
        .arg(&pt)
        .arg(&width)
        .arg(&pl);
    lb.arg(&hq_i)
        .arg(&hkv_i)
        .arg(&groups_i)
        .arg(&scale_log2)
        .arg(&sp)
        .arg(&ns);
    lb.arg(&pa).arg(&pm).arg(&po).arg(&out_stride);
    if name.starts_with("paged_decode_mma") {
        lb.arg(&pc);
    }
    // SAFETY: arguments in the kernel's order and types; q covers every row and out holds
    // seqs*Hq*D (checked); every block id the kernel reads (pages below each context length)
    // is inside the cache and every context fits its table row (checked on the host copies);
    // the partial buffers hold seqs*Hq*num_splits rows when num_splits > 1; with the fused
    // merge the counters hold seqs*Hkv*groups zeros.
    unsafe { lb.launch(cfg) }?;
    if num_splits > 1 && !fused {
        let f = gpu.function("paged_decode_reduce_bf16")?;
        let (d_i, ns) = (d as i32, num_splits as i32);
        let cfg = LaunchConfig {
            grid_dim: (hq as u32, b as u32, 1),
            block_dim: (d as u32, 1, 1),
            shared_mem_bytes: 0,
        };
        let mut lb = Launch::new(gpu, stream, &f);
        lb.arg(&hq_i)
            .arg(&d_i)
            .arg(&ns)
            .arg(&pa)
            .arg(&pm)
            .arg(&po)
            .arg(&out_stride);
        // SAFETY: (Hq, D, num_splits, part_acc, part_ml, out, out_stride); the partials were
        // written by the launch above on this stream, out holds seqs*Hq*D.
        unsafe { lb.launch(cfg) }?;
    }
    Ok(())
}

/// How a decode launch cuts the work: kernel, q heads per block, pages per split.
#[derive(Clone, Copy, Debug)]
struct SplitPlan {
    groups: usize,
    /// Pages per split; 0: each sequence's pages dealt evenly over the splits (tensor cores).
    split_pages: usize,
    num_splits: usize,
    name: &'static str,
    smem: usize,
    /// The last block of each group merges the splits (tensor cores; needs the counters).
    fused: bool,
}

impl SplitPlan {
    /// The plan for `b` sequences of at most `max_pages` pages, `total_pages` in all, `g` q
    /// heads per kv head, with `kernel` already picked.
    fn new(
        gpu: &Gpu,
        b: usize,
        cache: KvShape,
        g: usize,
        kernel: DecodeKernel,
        max_pages: usize,
        total_pages: usize,
    ) -> Self {
        let (d, hkv) = (cache.head_dim, cache.kv_heads);
        let (maxg, resident) = match kernel {
            DecodeKernel::TensorCores => (g.min(MAX_GROUP_MMA), RESIDENT_MMA),
            _ => (g.next_power_of_two().min(MAX_GROUP_CUDA), RESIDENT_CUDA),
        };
        let groups = g.div_ceil(maxg);
        let base = b * hkv * groups;
        let (name, smem): (&'static str, usize) = match (kernel, d, maxg) {
            (DecodeKernel::TensorCores, _, _) => {
                let ring = WARPS * mma_stages(d) * 2 * BLOCK_TOKENS * d * 2;
                let merge = (WARPS * 16 * d + 2 * WARPS * 16) * 4;
                let name = if d == 64 {
                    "paged_decode_mma_bf16_d64"
                } else {
                    "paged_decode_mma_bf16_d128"
                };
                (name, ring.max(merge))
            }
            (_, 64, 1) => ("paged_decode_bf16_d64_g1", 0),
            (_, 64, 2) => ("paged_decode_bf16_d64_g2", 0),
            (_, 64, _) => ("paged_decode_bf16_d64_g4", 0),
            (_, _, 1) => ("paged_decode_bf16_d128_g1", 0),
            (_, _, 2) => ("paged_decode_bf16_d128_g2", 0),
            _ => ("paged_decode_bf16_d128_g4", 0),
        };
        let plan = mma_plan();
        if kernel == DecodeKernel::TensorCores && plan == MmaPlan::Resident {
            let num_splits =
                mma_resident_splits(b, hkv * groups, gpu.sms() as usize, max_pages, total_pages);
            return SplitPlan {
                groups,
                split_pages: 0,
                num_splits,
                name,
                smem,
                fused: false,
            };
        }
        if kernel == DecodeKernel::TensorCores && plan == MmaPlan::Waves {
            // Blocks per SM as the driver computes them for this kernel and shared memory (the
            // D = 64 kernel fits more than RESIDENT_MMA).
            let per_sm = gpu
                .function_with_smem(name, smem as u32)
                .and_then(|f| {
                    Ok(f.occupancy_max_active_blocks_per_multiprocessor(THREADS, smem, None)?)
                })
                .map_or(resident, |n| (n as usize).max(1));
            let slots = per_sm * gpu.sms() as usize;
            let num_splits = mma_splits(base, slots, max_pages, waves_override());
            return SplitPlan {
                groups,
                split_pages: 0,
                num_splits,
                name,
                smem,
                fused: num_splits > 1 && mma_fused_merge(),
            };
        }
        let target = target_waves() * resident * gpu.sms() as usize;
        let mut split_pages = MAX_SPLIT_PAGES;
        while split_pages > MIN_SPLIT_PAGES && base * max_pages.div_ceil(split_pages) < target {
            split_pages /= 2;
        }
        let num_splits = max_pages.div_ceil(split_pages).max(1);
        let smem = if smem > 0 {
            smem
        } else {
            (maxg * split_pages * BLOCK_TOKENS + WARPS * maxg * d) * 4
        };
        SplitPlan {
            groups,
            split_pages,
            num_splits,
            name,
            smem,
            fused: false,
        }
    }

    /// Tickets of the fused merge: one per (sequence, kv head, head group), zeroed once (a
    /// one-element placeholder without it).
    fn counters(&self, b: usize, hkv: usize) -> usize {
        if self.fused {
            b * hkv * self.groups
        } else {
            1
        }
    }

    /// Rows of partial results the plan needs for `b` sequences of `hq` heads (a one-element
    /// placeholder when the context is not split).
    fn parts(&self, b: usize, hq: usize) -> usize {
        if self.num_splits > 1 {
            b * hq * self.num_splits
        } else {
            1
        }
    }
}

/// The partial-result buffers and work split of paged decode, planned once for a batch shape
/// and a largest context (see [`paged_decode_bf16_planned`]).
pub struct DecodeScratch {
    seqs: usize,
    q_heads: usize,
    cache: KvShape,
    kernel: DecodeKernel,
    max_pages: usize,
    plan: SplitPlan,
    part_acc: CudaSlice<f32>,
    part_ml: CudaSlice<f32>,
    counters: CudaSlice<i32>,
}

impl DecodeScratch {
    /// For `seqs` sequences of `q_heads` q heads over `cache`, contexts of up to `max_pages`
    /// pages of [`BLOCK_TOKENS`] tokens, the kernel `kernel` picks.
    pub fn new(
        gpu: &Gpu,
        stream: &Arc<CudaStream>,
        seqs: usize,
        q_heads: usize,
        cache: KvShape,
        max_pages: usize,
        kernel: DecodeKernel,
    ) -> Result<Self> {
        let what = "DecodeScratch";
        let q = HeadRows::packed(seqs.max(1), q_heads, cache.head_dim);
        let g = gqa_group(what, q, cache.kv_heads, cache.head_dim)?;
        if max_pages == 0 {
            return Err(shape_err(format!("{what}: max_pages must be at least 1")));
        }
        let kernel = kernel.pick(g);
        // Planned once for every step it serves, as if every context were the longest.
        let plan = SplitPlan::new(gpu, seqs, cache, g, kernel, max_pages, seqs * max_pages);
        let parts = plan.parts(seqs, q_heads);
        Ok(DecodeScratch {
            seqs,
            q_heads,
            cache,
            kernel,
            max_pages,
            plan,
            // Zeroed, so that nothing uninitialized is ever read even if a plan changes.
            part_acc: stream.alloc_zeros::<f32>(parts * cache.head_dim)?,
            part_ml: stream.alloc_zeros::<f32>(parts * 2)?,
            counters: stream.alloc_zeros::<i32>(plan.counters(seqs, cache.kv_heads))?,
        })
    }

    /// The splits per (sequence, kv head, head group) of the plan, and whether the last block of
    /// each group merges them (otherwise a second launch does, or there is one split).
    pub fn splits(&self) -> (usize, bool) {
        (self.plan.num_splits, self.plan.fused)
    }

    /// [`DecodeScratch::new`] with `num_splits` splits forced and the fused merge on or off
    /// (tests of the paths the planner picks only on some shapes and GPUs).
    #[cfg(test)]
    #[allow(clippy::too_many_arguments)]
    fn forced(
        gpu: &Gpu,
        stream: &Arc<CudaStream>,
        seqs: usize,
        q_heads: usize,
        cache: KvShape,
        max_pages: usize,
        num_splits: usize,
        fused: bool,
    ) -> Result<Self> {
        let mut sc = Self::new(
            gpu,
            stream,
            seqs,
            q_heads,
            cache,
            max_pages,
            DecodeKernel::TensorCores,
        )?;
        sc.plan.split_pages = 0;
        sc.plan.num_splits = num_splits;
        sc.plan.fused = fused && num_splits > 1;
        let parts = sc.plan.parts(seqs, q_heads);
        sc.part_acc = stream.alloc_zeros::<f32>(parts * cache.head_dim)?;
        sc.part_ml = stream.alloc_zeros::<f32>(parts * 2)?;
        sc.counters = stream.alloc_zeros::<i32>(sc.plan.counters(seqs, cache.kv_heads))?;
        Ok(sc)
    }

    /// The largest context, in pages, the plan covers.
    pub fn max_pages(&self) -> usize {
        self.max_pages
    }
}

/// Reference twin of [`paged_decode_bf16`] on host slices, f64 softmax and sums.
#[allow(clippy::too_many_arguments)]
pub fn paged_decode_bf16_ref(
    q: &[bf16],
    q_rows: HeadRows,
    cache: KvShape,
    k_cache: &[bf16],
    v_cache: &[bf16],
    seqs: DecodeSeqs<'_, [i32]>,
    scale: f32,
    out: &mut [bf16],
) -> Result<()> {
    let g = check(
        "paged_decode_bf16_ref",
        q_rows,
        q.len(),
        cache,
        k_cache.len(),
        v_cache.len(),
        seqs.block_tables,
        seqs.table_width,
        seqs.context_lens,
        out.len(),
    )?;
    let d = cache.head_dim;
    for b in 0..q_rows.tokens {
        let ctx = seqs.context_lens[b] as usize;
        let table = &seqs.block_tables[b * seqs.table_width..];
        for h in 0..q_rows.heads {
            let qv = &q[b * q_rows.token_stride + h * d..][..d];
            let kvh = h / g;
            let slot =
                |t: usize| table[t / BLOCK_TOKENS] as usize * BLOCK_TOKENS + t % BLOCK_TOKENS;
            let s: Vec<f64> = (0..ctx)
                .map(|t| {
                    let k = &k_cache[cache.index(slot(t), kvh, 0)..][..d];
                    qv.iter()
                        .zip(k)
                        .map(|(a, b)| a.to_f32() as f64 * b.to_f32() as f64)
                        .sum::<f64>()
                        * scale as f64
                })
                .collect();
            let m = s.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
            let p: Vec<f64> = s.iter().map(|x| (x - m).exp()).collect();
            let l: f64 = p.iter().sum();
            for i in 0..d {
                let acc: f64 = (0..ctx)
                    .map(|t| p[t] * v_cache[cache.index(slot(t), kvh, i)].to_f32() as f64)
                    .sum();
                out[(b * q_rows.heads + h) * d + i] = bf16::from_f64(acc / l);
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testutil::*;
    use rand::seq::SliceRandom;
    use rand::Rng;

    /// Outputs are convex combinations of V in [-1, 1]: one bf16 step of values below 1 is at
    /// most 2^-8, and the f32 scores, exp2 and sums differ from f64 by ~1e-5.
    const DECODE_ATOL: f32 = 1.0 / 256.0 + 1e-4;
    /// The tensor-core kernel rounds the softmax weights to bf16 for the P·V product (2^-9
    /// relative each, as the prefill kernel): together with the output rounding, under 2^-7.
    const DECODE_MMA_ATOL: f32 = 1.0 / 128.0;

    fn case(
        gpu: &Gpu,
        rng: &mut rand::rngs::StdRng,
        seed: u64,
        lens: &[i32],
        hq: usize,
        hkv: usize,
        d: usize,
    ) {
        let s = gpu.stream();
        let b = lens.len();
        let pages = lens
            .iter()
            .map(|&l| (l as usize).div_ceil(BLOCK_TOKENS))
            .max()
            .unwrap();
        let width = pages + 1;
        let num_blocks = lens
            .iter()
            .map(|&l| (l as usize).div_ceil(BLOCK_TOKENS))
            .sum::<usize>()
            + 3;
        let cache = KvShape {
            num_blocks,
            kv_heads: hkv,
            head_dim: d,
        };
        let mut ids: Vec<i32> = (0..num_blocks as i32).collect();
        ids.shuffle(rng);
        let mut tables = vec![0i32; b * width];
        let mut next = 0;
        for (i, &l) in lens.iter().enumerate() {
            for p in 0..(l as usize).div_ceil(BLOCK_TOKENS) {
                tables[i * width + p] = ids[next];
                next += 1;
            }
            // Entries past the context are never read: fill them with junk.
            for p in (l as usize).div_ceil(BLOCK_TOKENS)..width {
                tables[i * width + p] = -7;
            }
        }
        let mut kc = rand_bf16(rng, cache.elems(), -1.0, 1.0);
        let mut vc = rand_bf16(rng, cache.elems(), -1.0, 1.0);
        // Poison the cache slot just past sequence 0's end (inside its last block): it must be
        // masked, not multiplied by a zero weight.
        let l = lens[0] as usize;
        if l % BLOCK_TOKENS != 0 {
            let slot = tables[l / BLOCK_TOKENS] as usize * BLOCK_TOKENS + l % BLOCK_TOKENS;
            kc[cache.index(slot, 0, 0)] = bf16::NAN;
            vc[cache.index(slot, 0, 0)] = bf16::INFINITY;
        }
        let q = rand_bf16(rng, b * hq * d, -1.0, 1.0);
        let rows = HeadRows::packed(b, hq, d);
        let scale = 1.0 / (d as f32).sqrt() * 4.0; // sharper than usual: tests the max tracking
        let (dq, dk, dv) = (
            s.clone_htod(&q).unwrap(),
            s.clone_htod(&kc).unwrap(),
            s.clone_htod(&vc).unwrap(),
        );
        let (dt, dl) = (
            DeviceIds::upload(s, &tables).unwrap(),
            DeviceIds::upload(s, lens).unwrap(),
        );
        let mut want = vec![bf16::ZERO; b * hq * d];
        let seqs = DecodeSeqs {
            block_tables: &tables[..],
            table_width: width,
            context_lens: lens,
        };
        paged_decode_bf16_ref(&q, rows, cache, &kc, &vc, seqs, scale, &mut want).unwrap();
        // One launch, one-shot (no scratch) or through a planned scratch, into a poisoned output.
        let run = |kernel: DecodeKernel, sc: Option<&mut DecodeScratch>| {
            let mut dout = s.clone_htod(&poisoned(b * hq * d)).unwrap();
            let seqs = DecodeSeqs {
                block_tables: &dt,
                table_width: width,
                context_lens: &dl,
            };
            paged_decode_bf16_scratch(
                gpu, s, &dq, rows, cache, &dk, &dv, seqs, scale, &mut dout, kernel, sc,
            )
            .unwrap();
            s.clone_dtoh(&dout).unwrap()
        };
        for kernel in [DecodeKernel::CudaCores, DecodeKernel::TensorCores] {
            let got = run(kernel, None);
            let what = format!("paged decode {kernel:?} lens {lens:?} hq {hq} hkv {hkv} d {d}");
            let tol = if kernel == DecodeKernel::TensorCores {
                DECODE_MMA_ATOL
            } else {
                DECODE_ATOL
            };
            assert_close(&what, seed, &got, &want, tol, 0.0);
            // Planned for contexts well past these (as a CUDA graph's launch is): the splits
            // past each context must not change the result.
            let mut sc = DecodeScratch::new(gpu, s, b, hq, cache, 4 * pages + 3, kernel).unwrap();
            let got = run(kernel, Some(&mut sc));
            let what = format!("{what}, planned for {} pages", sc.max_pages());
            assert_close(&what, seed, &got, &want, tol, 0.0);
        }
        // The tensor-core kernel with the split count forced (the planner picks few splits on
        // a large GPU, many on a small one): one split, splits of a page or two, more splits
        // than pages (empty splits), each with the fused merge and with the reduce launch.
        // Each scratch runs twice: the fused merge must leave its tickets at zero.
        for splits in [1, 2, 3, 7, pages.div_ceil(2).max(1), pages + 5] {
            for fused in [true, false] {
                let mut sc =
                    DecodeScratch::forced(gpu, s, b, hq, cache, 2 * pages, splits, fused).unwrap();
                for rep in 0..2 {
                    let got = run(DecodeKernel::TensorCores, Some(&mut sc));
                    let what = format!(
                        "paged decode TensorCores lens {lens:?} hq {hq} hkv {hkv} d {d}, {:?} \
                         splits (fused, forced {splits} {fused}), launch {rep}",
                        sc.splits()
                    );
                    assert_close(&what, seed, &got, &want, DECODE_MMA_ATOL, 0.0);
                }
            }
        }
    }

    #[test]
    fn gpu_paged_decode_matches_reference() {
        let Some(gpu) = crate::gpu_or_skip() else {
            return;
        };
        let (mut rng, seed) = rng();
        // One token; odd lengths; GQA 1, 3 (not a power of two), 4, 8 and 16 (two head groups).
        case(&gpu, &mut rng, seed, &[1], 1, 1, 64);
        case(&gpu, &mut rng, seed, &[17, 5, 33], 12, 4, 64);
        case(&gpu, &mut rng, seed, &[100, 1, 16, 250], 32, 8, 128);
        case(&gpu, &mut rng, seed, &[300, 77], 16, 2, 128);
        case(&gpu, &mut rng, seed, &[45, 500], 64, 2, 128); // 32 per kv head: two mma row tiles
        case(&gpu, &mut rng, seed, &[129, 31], 32, 2, 64);
        // Long contexts split across blocks (flash-decoding with the merge pass).
        let long: Vec<i32> = (0..3).map(|_| rng.gen_range(3000..9000)).collect();
        case(&gpu, &mut rng, seed, &long, 32, 8, 128);
        case(&gpu, &mut rng, seed, &[20_000], 8, 8, 64);
        // Ragged batches whose lengths are not multiples of 16, long and short together (the
        // tensor-core kernel deals each sequence's pages over the same splits), GQA 4 and 8.
        let ragged: Vec<i32> = (0..6)
            .map(|i| match i {
                0 => rng.gen_range(1..16),
                1 => rng.gen_range(4000..6000) | 1,
                _ => rng.gen_range(17..3000) | 1,
            })
            .collect();
        case(&gpu, &mut rng, seed, &ragged, 32, 8, 128);
        case(&gpu, &mut rng, seed, &ragged, 64, 8, 64);
    }

    #[test]
    fn gpu_planned_decode_refuses_what_its_plan_does_not_cover() {
        let Some(gpu) = crate::gpu_or_skip() else {
            return;
        };
        let s = gpu.stream();
        let cache = KvShape {
            num_blocks: 4,
            kv_heads: 2,
            head_dim: 64,
        };
        let rows = HeadRows::packed(1, 4, 64);
        let kc = s.alloc_zeros::<bf16>(cache.elems()).unwrap();
        let q = s.alloc_zeros::<bf16>(4 * 64).unwrap();
        let mut out = s.alloc_zeros::<bf16>(4 * 64).unwrap();
        let tables = DeviceIds::upload(s, &[0, 1, 2, 3]).unwrap();
        let lens = DeviceIds::upload(s, &[40]).unwrap();
        let seqs = || DecodeSeqs {
            block_tables: &tables,
            table_width: 4,
            context_lens: &lens,
        };
        let run = |sc: &mut DecodeScratch, out: &mut CudaSlice<bf16>| {
            let k = DecodeKernel::Auto;
            paged_decode_bf16_scratch(
                &gpu,
                s,
                &q,
                rows,
                cache,
                &kc,
                &kc,
                seqs(),
                0.1,
                out,
                k,
                Some(sc),
            )
            .map_err(|e| e.to_string())
        };
        let mut short = DecodeScratch::new(&gpu, s, 1, 4, cache, 2, DecodeKernel::Auto).unwrap();
        assert!(run(&mut short, &mut out).unwrap_err().contains("exceeds"));
        let mut two = DecodeScratch::new(&gpu, s, 2, 4, cache, 4, DecodeKernel::Auto).unwrap();
        assert!(run(&mut two, &mut out).unwrap_err().contains("planned for"));
        let mut ok = DecodeScratch::new(&gpu, s, 1, 4, cache, 4, DecodeKernel::Auto).unwrap();
        assert!(run(&mut ok, &mut out).is_ok());
        assert!(DecodeScratch::new(&gpu, s, 1, 3, cache, 4, DecodeKernel::Auto).is_err());
    }

    #[test]
    fn mma_splits_fill_the_waves() {
        // H100/H200: 132 SMs x 3 blocks of the D = 128 kernel, 5 of the D = 64 one.
        let (s128, s64) = (396, 660);
        // 16 x 8 kv heads: three splits, 384 blocks in one wave of 396.
        assert_eq!(mma_splits(128, s128, 256, None), 3);
        assert_eq!(mma_splits(128, s128, 1024, None), 3);
        assert_eq!(mma_splits(128, s64, 256, None), 5);
        // 64 x 8: one split would leave most of a second wave idle; three fill four waves.
        assert_eq!(mma_splits(512, s128, 256, None), 3);
        // The resident plan on 132 SMs: 16 x 8 kv heads and more take one split; fewer groups
        // split until 90 % of the SMs have a block, at least MIN_SPLIT_PAGES pages a split.
        let even =
            |b: usize, gps: usize, pages: usize| mma_resident_splits(b, gps, 132, pages, b * pages);
        assert_eq!(even(16, 8, 256), 1);
        assert_eq!(even(64, 8, 256), 1);
        assert_eq!(even(4, 8, 512), 4);
        assert_eq!(even(1, 8, 2048), 15);
        assert_eq!(even(1, 8, 20), 5);
        assert_eq!(even(1, 1, 1), 1);
        // Ragged: one sequence of 4096 pages among fifteen of 64 splits until its blocks hold at
        // most 1.5 times an SM's share (5056 pages x 8 groups / 132 SMs = 306): 9 splits.
        assert_eq!(mma_resident_splits(16, 8, 132, 4096, 4096 + 15 * 64), 9);
        // Forced waves; at least MIN_SPLIT_PAGES pages a split; at least one split.
        assert_eq!(mma_splits(128, s128, 256, Some(2)), 6);
        assert_eq!(mma_splits(1, s128, 10, None), 3);
        assert_eq!(mma_splits(100_000, s128, 1, None), 1);
    }

    #[test]
    fn bad_inputs_are_errors() {
        let cache = KvShape {
            num_blocks: 2,
            kv_heads: 1,
            head_dim: 64,
        };
        let kc = vec![bf16::ZERO; cache.elems()];
        let q = vec![bf16::ZERO; 64];
        let mut out = vec![bf16::ZERO; 64];
        let rows = HeadRows::packed(1, 1, 64);
        let run = |tables: &[i32], lens: &[i32], out: &mut [bf16]| {
            let seqs = DecodeSeqs {
                block_tables: tables,
                table_width: 2,
                context_lens: lens,
            };
            paged_decode_bf16_ref(&q, rows, cache, &kc, &kc, seqs, 1.0, out)
                .map_err(|e| e.to_string())
        };
        assert!(run(&[0, 1], &[20], &mut out).is_ok());
        assert!(run(&[0, 2], &[20], &mut out)
            .unwrap_err()
            .contains("block table"));
        assert!(run(&[0, 1], &[0], &mut out)
            .unwrap_err()
            .contains("context length"));
        assert!(run(&[0, 1], &[33], &mut out)
            .unwrap_err()
            .contains("context length"));
        assert!(run(&[0, 1], &[3], &mut out[..10]).is_err());
        let rows3 = HeadRows::packed(1, 3, 64);
        let seqs = DecodeSeqs {
            block_tables: &[0, 1][..],
            table_width: 2,
            context_lens: &[3][..],
        };
        let kc2 = vec![
            bf16::ZERO;
            KvShape {
                kv_heads: 2,
                ..cache
            }
            .elems()
        ];
        let e = paged_decode_bf16_ref(
            &[bf16::ZERO; 192],
            rows3,
            KvShape {
                kv_heads: 2,
                ..cache
            },
            &kc2,
            &kc2,
            seqs,
            1.0,
            &mut [bf16::ZERO; 192],
        );
        assert!(e.unwrap_err().to_string().contains("multiple"));
    }
}
