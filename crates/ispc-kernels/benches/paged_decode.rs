//! Paged decode attention on the shared CPU pool, over batch × context, beside a plain parallel
//! read of the same number of bytes on the same pool (the DRAM ceiling this kernel is held to).
//!
//! Shapes are LLaMA-3-8B's attention (32 query heads, 8 KV heads, head_dim 128): one token of
//! one layer's K and V is 4 KiB. Cases of 1 GiB and more measure DRAM on the GPU host (its L3 is
//! 300 MB); the smaller ones measure the caches. Thread scaling: run with `TANDEM_THREADS=n`.
//! `Throughput` is bytes of KV read per call.
//!
//! Beside the ceiling, two diagnostics: `b1_ctx256` (1 MiB, inside one core's 2 MiB L2) run
//! with `TANDEM_THREADS=1` is the kernel's compute rate on one core with no DRAM in the way; and
//! `cpu_read_kvorder_bf16` reads the KV in the kernel's order (tasks of one KV head's run of
//! blocks, each block's 4 KiB K page then its V page, XORed as `cpu_read_bf16` does), so that
//! where the kernel falls short of the plain read, it says how much of the gap the scattered
//! pages alone explain.

use criterion::{criterion_group, criterion_main, Criterion, SamplingMode, Throughput};
use half::bf16;
use ispc_kernels::{paged_decode_bf16, DecodeBatch, DecodeShape, BLOCK_SIZE};
use rayon::prelude::*;
use std::time::Duration;

const SHAPE: DecodeShape = DecodeShape {
    num_q_heads: 32,
    num_kv_heads: 8,
    head_dim: 128,
    scale: 0.088_388_35,
};

/// (name, context lengths).
fn cases() -> Vec<(String, Vec<usize>)> {
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
fn fill(buf: &mut [bf16], salt: u64) {
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

struct Data {
    k: platform::HostBuf<bf16>,
    v: platform::HostBuf<bf16>,
    q: Vec<bf16>,
    new_k: Vec<bf16>,
    new_v: Vec<bf16>,
    tables: Vec<i32>,
    max_blocks: usize,
    lens: Vec<i32>,
}

impl Data {
    fn new(lens: &[usize]) -> Data {
        let (qh, kvh, d) = (SHAPE.num_q_heads, SHAPE.num_kv_heads, SHAPE.head_dim);
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
/// 64-byte loads into four independent accumulators (AVX-512 where present), so that nothing
/// but the loads limits it.
fn read_all(bufs: [&[bf16]; 2]) -> u64 {
    platform::pool().install(|| {
        bufs.iter()
            .map(|b| {
                // SAFETY: HostBuf is 4 KiB aligned and any bit pattern is a valid u64.
                let (_, words, _) = unsafe { b.align_to::<u64>() };
                words
                    .par_chunks(1 << 15)
                    .map(xor_words)
                    .reduce(|| 0, |a, b| a ^ b)
            })
            .fold(0, |a, b| a ^ b)
    })
}

fn xor_words(w: &[u64]) -> u64 {
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx512f") {
        // SAFETY: the feature was just detected.
        return unsafe { xor_words_avx512(w) };
    }
    w.chunks(4)
        .fold([0u64; 4], |mut a, c| {
            for (x, y) in a.iter_mut().zip(c) {
                *x ^= y;
            }
            a
        })
        .iter()
        .fold(0, |a, b| a ^ b)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
fn xor_words_avx512(w: &[u64]) -> u64 {
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

/// Blocks per task of the kernel-order read (the kernel's segments are of this order).
const ORDER_TASK_BLOCKS: usize = 64;

/// Reads the used blocks of every sequence in block-table order, one KV head's K and V pages
/// per block per task (tasks over sequences, heads and runs of blocks), as XORs of u64 words.
fn read_in_order(d: &Data) -> u64 {
    let (kvh, hd) = (SHAPE.num_kv_heads, SHAPE.head_dim);
    let block = kvh * BLOCK_SIZE * hd;
    let page = BLOCK_SIZE * hd;
    let mut tasks = Vec::new();
    for (i, &len) in d.lens.iter().enumerate() {
        let nb = (len as usize).div_ceil(BLOCK_SIZE);
        for h in 0..kvh {
            for b0 in (0..nb).step_by(ORDER_TASK_BLOCKS) {
                tasks.push((i, h, b0, nb.min(b0 + ORDER_TASK_BLOCKS)));
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
            .map(|&(i, h, b0, b1)| {
                let mut x = 0;
                for pos in b0..b1 {
                    let id = d.tables[i * d.max_blocks + pos] as usize;
                    let o = id * block + h * page;
                    x ^= words(&k[o..o + page]) ^ words(&v[o..o + page]);
                }
                x
            })
            .reduce(|| 0, |a, b| a ^ b)
    })
}

/// Short runs: ten flat samples, so a 1 GiB case on one thread still ends in seconds.
fn settings(g: &mut criterion::BenchmarkGroup<criterion::measurement::WallTime>) {
    g.sample_size(10)
        .sampling_mode(SamplingMode::Flat)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(2));
}

fn bench(c: &mut Criterion) {
    let threads = platform::pool_threads();
    for (name, lens) in cases() {
        let mut d = Data::new(&lens);
        let batch = DecodeBatch {
            q: &d.q,
            new_k: &d.new_k,
            new_v: &d.new_v,
            block_tables: &d.tables,
            max_blocks: d.max_blocks,
            context_lens: &d.lens,
        };
        let bytes = batch.kv_bytes(&SHAPE) as u64;
        let id = format!("{name}_t{threads}");
        let mut out = vec![bf16::ZERO; d.q.len()];
        let mut g = c.benchmark_group("cpu_paged_decode_bf16");
        settings(&mut g);
        g.throughput(Throughput::Bytes(bytes));
        g.bench_function(&id, |b| {
            b.iter(|| paged_decode_bf16(&SHAPE, &batch, &mut d.k, &mut d.v, &mut out).unwrap())
        });
        g.finish();

        // The same cache bytes (exactly the KV read above, plus the unused tail of last blocks).
        let (k, v) = (&d.k[..], &d.v[..]);
        let mut g = c.benchmark_group("cpu_read_bf16");
        settings(&mut g);
        g.throughput(Throughput::Bytes(((k.len() + v.len()) * 2) as u64));
        g.bench_function(&id, |b| b.iter(|| std::hint::black_box(read_all([k, v]))));
        g.finish();

        let mut g = c.benchmark_group("cpu_read_kvorder_bf16");
        settings(&mut g);
        g.throughput(Throughput::Bytes(bytes));
        g.bench_function(&id, |b| b.iter(|| std::hint::black_box(read_in_order(&d))));
        g.finish();
    }
}

criterion_group!(benches, bench);
criterion_main!(benches);
