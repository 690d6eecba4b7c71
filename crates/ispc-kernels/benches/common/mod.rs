//! What the paged decode benches share: the shape, the cases, the data, and the two reads the
//! kernel is held to (the plain parallel read of the same bytes, and the read in the kernel's
//! page order).

#![allow(dead_code)]

use half::bf16;
use ispc_kernels::{paged_decode_bf16, DecodeBatch, DecodeShape, BLOCK_SIZE};
use rayon::prelude::*;

/// LLaMA-3-8B's attention: 8 KV heads of 128, 4 query heads each. `DECODE_G` (1, 2, 4, 8 or
/// 16) sets the query heads per KV head instead, to see how the kernel's compute, which grows
/// with it while the bytes read stay the same, weighs against the read.
pub fn shape() -> DecodeShape {
    static G: std::sync::OnceLock<usize> = std::sync::OnceLock::new();
    let g = *G.get_or_init(|| match std::env::var("DECODE_G") {
        Err(_) => 4,
        Ok(v) => match v.trim().parse::<usize>() {
            Ok(g @ (1 | 2 | 4 | 8 | 16)) => g,
            _ => {
                eprintln!("DECODE_G={v:?} is not 1, 2, 4, 8 or 16; using 4");
                4
            }
        },
    });
    DecodeShape {
        num_q_heads: 8 * g,
        num_kv_heads: 8,
        head_dim: 128,
        scale: 0.088_388_35,
    }
}

/// (name, context lengths).
pub fn cases() -> Vec<(String, Vec<usize>)> {
    let mut v: Vec<(String, Vec<usize>)> = [
        (1, 256),
        (1, 4096),
        (16, 1024),
        (256, 1024),
        (64, 4096),
        (16, 16384),
        (2, 131072),
    ]
    .into_iter()
    .map(|(b, ctx)| {
        let name = if ctx >= 1024 {
            format!("b{b}_ctx{}k", ctx / 1024)
        } else {
            format!("b{b}_ctx{ctx}")
        };
        (name, vec![ctx; b])
    })
    .collect();
    // Ragged: 512 sequences of 1 to 1023 tokens (0.5 GiB on average), a fixed spread.
    v.push((
        "b512_ragged1k".into(),
        (0..512).map(|i| 1 + (i * 389) % 1023).collect(),
    ));
    v
}

/// Values in (-1, 1) from a hash of the index, filled in parallel (a 1 GiB cache from a
/// sequential generator would take longer than its benchmark).
pub fn fill(buf: &mut [bf16], salt: u64) {
    platform::pool().install(|| {
        buf.par_chunks_mut(1 << 16)
            .enumerate()
            .for_each(|(c, chunk)| {
                let mut x = (c as u64 + 1).wrapping_mul(0x9e37_79b9_7f4a_7c15) ^ salt;
                for e in chunk {
                    x ^= x << 13;
                    x ^= x >> 7;
                    x ^= x << 17;
                    *e = bf16::from_f32((x >> 40) as f32 / (1u64 << 23) as f32 - 1.0);
                }
            })
    });
}

pub struct Data {
    pub k: platform::HostBuf<bf16>,
    pub v: platform::HostBuf<bf16>,
    pub q: Vec<bf16>,
    pub new_k: Vec<bf16>,
    pub new_v: Vec<bf16>,
    pub tables: Vec<i32>,
    pub max_blocks: usize,
    pub lens: Vec<i32>,
}

impl Data {
    /// Bytes of K and V one call reads (as `DecodeBatch::kv_bytes`).
    pub fn kv_bytes(&self) -> usize {
        let tokens: usize = self.lens.iter().map(|&l| l as usize).sum();
        let s = shape();
        2 * tokens * s.num_kv_heads * s.head_dim * std::mem::size_of::<bf16>()
    }

    /// One kernel call over the whole batch (appending each sequence's new token again).
    pub fn decode(&mut self, out: &mut [bf16]) {
        let Data {
            k,
            v,
            q,
            new_k,
            new_v,
            tables,
            max_blocks,
            lens,
        } = self;
        let b = DecodeBatch {
            q,
            new_k,
            new_v,
            block_tables: tables,
            max_blocks: *max_blocks,
            context_lens: lens,
        };
        paged_decode_bf16(&shape(), &b, k, v, out).unwrap();
    }

    pub fn new(lens: &[usize]) -> Data {
        let s = shape();
        let (qh, kvh, d) = (s.num_q_heads, s.num_kv_heads, s.head_dim);
        let nbs: Vec<usize> = lens.iter().map(|l| l.div_ceil(BLOCK_SIZE)).collect();
        let max_blocks = *nbs.iter().max().unwrap();
        let num_blocks: usize = nbs.iter().sum();
        let elems = num_blocks * kvh * BLOCK_SIZE * d;
        let mut k = platform::HostBuf::zeroed(elems, platform::MemTier::Pageable).unwrap();
        let mut v = platform::HostBuf::zeroed(elems, platform::MemTier::Pageable).unwrap();
        fill(&mut k, 1);
        fill(&mut v, 2);
        // Blocks of a sequence are scattered: interleave the sequences' blocks in the cache.
        let mut tables = vec![0i32; lens.len() * max_blocks];
        let mut next = 0;
        for pos in 0..max_blocks {
            for (i, &nb) in nbs.iter().enumerate() {
                if pos < nb {
                    tables[i * max_blocks + pos] = next;
                    next += 1;
                }
            }
        }
        let b = lens.len();
        let mut q = vec![bf16::ZERO; b * qh * d];
        let mut new_k = vec![bf16::ZERO; b * kvh * d];
        let mut new_v = new_k.clone();
        fill(&mut q, 3);
        fill(&mut new_k, 4);
        fill(&mut new_v, 5);
        Data {
            k,
            v,
            q,
            new_k,
            new_v,
            tables,
            max_blocks,
            lens: lens.iter().map(|&l| l as i32).collect(),
        }
    }
}

/// The plain parallel read of the same bytes on the same pool: each task XORs 256 KiB with
/// 64-byte loads into four independent accumulators (AVX-512 where present; elsewhere
/// `platform::membw::read_words`, which vectorizes on any tier), so that nothing but the loads
/// limits it.
pub fn read_all(bufs: [&[bf16]; 2]) -> u64 {
    read_chunks(bufs, xor_words)
}

/// `f` over both buffers as words, 256 KiB a task on the pool; the results XORed.
fn read_chunks(bufs: [&[bf16]; 2], f: impl Fn(&[u64]) -> u64 + Sync) -> u64 {
    platform::pool().install(|| {
        bufs.iter()
            .map(|b| {
                // SAFETY: HostBuf is 4 KiB aligned and any bit pattern is a valid u64.
                let (_, words, _) = unsafe { b.align_to::<u64>() };
                words.par_chunks(1 << 15).map(&f).reduce(|| 0, |a, b| a ^ b)
            })
            .fold(0, |a, b| a ^ b)
    })
}

pub fn xor_words(w: &[u64]) -> u64 {
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx512f") {
        // SAFETY: the feature was just detected.
        return unsafe { xor_words_avx512(w) };
    }
    // Elsewhere the platform's reader, whose adds vectorize on any tier (a scalar XOR fold read
    // a fifth of what the memory gives on AVX2 hosts).
    platform::membw::read_words(w)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
pub fn xor_words_avx512(w: &[u64]) -> u64 {
    use std::arch::x86_64::*;
    let mut acc = [_mm512_setzero_si512(); 4];
    let blocks = w.len() / 32;
    for i in 0..blocks {
        for (j, a) in acc.iter_mut().enumerate() {
            // SAFETY: 8 words at 32·i + 8·j lie inside w (i < len / 32).
            *a = _mm512_xor_si512(*a, unsafe {
                _mm512_loadu_si512(w.as_ptr().add(32 * i + 8 * j) as *const _)
            });
        }
    }
    let v = _mm512_xor_si512(
        _mm512_xor_si512(acc[0], acc[1]),
        _mm512_xor_si512(acc[2], acc[3]),
    );
    let tail = w[blocks * 32..].iter().fold(0, |a, b| a ^ b);
    let mut lanes = [0u64; 8];
    // SAFETY: lanes holds 64 bytes.
    unsafe { _mm512_storeu_si512(lanes.as_mut_ptr() as *mut _, v) };
    lanes.iter().fold(tail, |a, b| a ^ b)
}

/// The plain read of [`read_all`] with `fmas` independent 512-bit FMAs (products of zeros, a
/// multiple of 4) after each 64-byte line: a reader with a kernel's compute per byte, so that
/// what the kernel loses against the plain read can be set beside what compute alone costs a
/// reader. AVX-512F only (`None` elsewhere).
pub fn read_with_fmas(bufs: [&[bf16]; 2], fmas: usize) -> Option<u64> {
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx512f") {
        // SAFETY: AVX-512F was just detected.
        return Some(read_chunks(bufs, |w| unsafe { xor_lines_fma(w, fmas / 4) }));
    }
    let _ = (bufs, fmas);
    None
}

/// XOR of the whole 64-byte lines of `w`, with `groups` × 4 FMAs after each line.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn xor_lines_fma(w: &[u64], groups: usize) -> u64 {
    let lines = w.len() / 8;
    if lines == 0 {
        return 0;
    }
    let mut lanes = [0u64; 8];
    std::arch::asm!(
        "vpxord zmm16, zmm16, zmm16",
        "vpxord zmm17, zmm17, zmm17",
        "vpxord zmm20, zmm20, zmm20",
        "2:",
        "vpxorq zmm20, zmm20, zmmword ptr [{p}]",
        "mov {c}, {g}",
        "test {c}, {c}",
        "jz 4f",
        "vpxord zmm0, zmm0, zmm0", "vpxord zmm1, zmm1, zmm1",
        "vpxord zmm2, zmm2, zmm2", "vpxord zmm3, zmm3, zmm3",
        "3:",
        "vfmadd231ps zmm0, zmm16, zmm17", "vfmadd231ps zmm1, zmm16, zmm17",
        "vfmadd231ps zmm2, zmm16, zmm17", "vfmadd231ps zmm3, zmm16, zmm17",
        "dec {c}",
        "jnz 3b",
        "4:",
        "add {p}, 64",
        "cmp {p}, {end}",
        "jb 2b",
        "vmovdqu64 zmmword ptr [{out}], zmm20",
        p = inout(reg) w.as_ptr() => _,
        end = in(reg) w.as_ptr().add(lines * 8),
        g = in(reg) groups,
        c = out(reg) _,
        out = in(reg) lanes.as_mut_ptr(),
        out("zmm0") _, out("zmm1") _, out("zmm2") _, out("zmm3") _,
        out("zmm16") _, out("zmm17") _, out("zmm20") _,
        options(nostack),
    );
    lanes.iter().fold(0, |a, b| a ^ b)
}

/// What the other half of the pool does while [`read_half`]'s readers read.
#[derive(Clone, Copy, Debug)]
pub enum Beside {
    /// Nothing (the pool's threads linger, then sleep).
    Idle,
    /// 512-bit FMAs at the vector units' full rate.
    Fmas,
    /// AMX tile products on resident tiles.
    Tiles,
}

/// The plain read of both buffers by the first half of the pool's threads (each a contiguous
/// share), while the other half runs `beside` until every reader is done: whether a core's
/// compute lowers what the other cores read (a shared power budget) or not. `None` where the
/// pool has fewer than 2 threads or `beside` cannot run here.
pub fn read_half(bufs: [&[bf16]; 2], beside: Beside) -> Option<u64> {
    use amx_kernels::gemm::ceiling::{overlap_here, Overlap};
    use std::sync::atomic::{AtomicUsize, Ordering};
    let n = platform::pool_threads();
    let readers = n / 2;
    let mix = match beside {
        Beside::Idle => None,
        Beside::Fmas => Some(Overlap {
            fmas: 128,
            products: 0,
            chain: 0,
        }),
        Beside::Tiles => Some(Overlap {
            fmas: 0,
            products: 4,
            chain: 0,
        }),
    };
    if readers == 0 || mix.is_some_and(|m| overlap_here(m, 0).is_err()) {
        return None;
    }
    // SAFETY: HostBuf is 4 KiB aligned and any bit pattern is a valid u64.
    let words: Vec<&[u64]> = bufs
        .iter()
        .map(|b| unsafe { b.align_to::<u64>().1 })
        .collect();
    let done = AtomicUsize::new(0);
    let xs = platform::pool().broadcast(|ctx| {
        let i = ctx.index();
        if i < readers {
            let mut x = 0;
            for w in &words {
                let share = w.len().div_ceil(readers);
                let lo = (i * share).min(w.len());
                x ^= xor_words(&w[lo..(lo + share).min(w.len())]);
            }
            done.fetch_add(1, Ordering::Release);
            x
        } else {
            if let Some(m) = mix {
                while done.load(Ordering::Acquire) < readers {
                    let _ = overlap_here(m, 256);
                }
            }
            0
        }
    });
    Some(xs.iter().fold(0, |a, b| a ^ b))
}

/// Blocks per task of the kernel-order read (the kernel's segments are of this order).
pub const ORDER_TASK_BLOCKS: usize = 64;

/// KV heads per kernel call, as the kernel takes them (`TANDEM_CPU_DECODE_HEADS`, default all
/// of this shape's 8).
pub fn heads_per_call() -> usize {
    let kvh = shape().num_kv_heads;
    std::env::var("TANDEM_CPU_DECODE_HEADS")
        .ok()
        .and_then(|v| v.trim().parse().ok())
        .filter(|&n: &usize| n > 0)
        .unwrap_or(kvh)
        .min(kvh)
}

/// Reads the used blocks of every sequence in block-table order, as the kernel does: tasks of
/// (sequence, group of `heads_per_call` KV heads, run of blocks), reading per block the group's
/// K rows (one run of pages) then its V rows, as XORs of u64 words.
pub fn read_in_order(d: &Data) -> u64 {
    let s = shape();
    let (kvh, hd) = (s.num_kv_heads, s.head_dim);
    let nh = heads_per_call();
    let block = kvh * BLOCK_SIZE * hd;
    let page = BLOCK_SIZE * hd;
    let mut tasks = Vec::new();
    for (i, &len) in d.lens.iter().enumerate() {
        let nb = (len as usize).div_ceil(BLOCK_SIZE);
        for h in (0..kvh).step_by(nh) {
            for b0 in (0..nb).step_by(ORDER_TASK_BLOCKS) {
                tasks.push((i, h, nh.min(kvh - h), b0, nb.min(b0 + ORDER_TASK_BLOCKS)));
            }
        }
    }
    let (k, v) = (&d.k[..], &d.v[..]);
    let words = |x: &[bf16]| {
        // SAFETY: pages start at multiples of 4 KiB in a 4 KiB aligned HostBuf, and any bit
        // pattern is a valid u64.
        let (_, w, _) = unsafe { x.align_to::<u64>() };
        xor_words(w)
    };
    platform::pool().install(|| {
        tasks
            .par_iter()
            .map(|&(i, h, n, b0, b1)| {
                let mut x = 0;
                for pos in b0..b1 {
                    let id = d.tables[i * d.max_blocks + pos] as usize;
                    let o = id * block + h * page;
                    x ^= words(&k[o..o + n * page]) ^ words(&v[o..o + n * page]);
                }
                x
            })
            .reduce(|| 0, |a, b| a ^ b)
    })
}
