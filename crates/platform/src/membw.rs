//! Host memory bandwidth, measured the way the kernels use memory: every thread of the shared
//! pinned pool streams its own contiguous part of one buffer. This is the DRAM ceiling that
//! CPU kernels (GEMV over weights, paged attention over KV) are judged against.

use rayon::prelude::*;

/// Reads every byte of `buf` once on the shared pool; returns a value that depends on all of
/// them (so the reads cannot be optimized away).
pub fn parallel_read(buf: &[u64]) -> u64 {
    let chunk = buf
        .len()
        .div_ceil(crate::pool_threads().max(1) * 4)
        .max(1 << 12);
    crate::pool().install(|| {
        buf.par_chunks(chunk)
            .map(read_words)
            .reduce(|| 0, |a, b| a ^ b)
    })
}

/// Reads every word of `c` once on the calling thread; returns a value that depends on all of
/// them. Eight independent accumulators: enough loads in flight to saturate a core's share of
/// DRAM bandwidth, and the loop vectorizes on any x86-64 tier.
pub fn read_words(c: &[u64]) -> u64 {
    let mut acc = [0u64; 8];
    let mut it = c.chunks_exact(8);
    for v in &mut it {
        for i in 0..8 {
            acc[i] = acc[i].wrapping_add(v[i]);
        }
    }
    it.remainder()
        .iter()
        .fold(acc.iter().fold(0u64, |a, &b| a ^ b), |a, &b| a ^ b)
}

/// Copies `src` into `dst` on the shared pool (read + write traffic).
pub fn parallel_copy(dst: &mut [u64], src: &[u64]) {
    assert_eq!(dst.len(), src.len());
    let chunk = src
        .len()
        .div_ceil(crate::pool_threads().max(1) * 4)
        .max(1 << 12);
    crate::pool().install(|| {
        dst.par_chunks_mut(chunk)
            .zip(src.par_chunks(chunk))
            .for_each(|(d, s)| d.copy_from_slice(s));
    });
}

/// Best-of-`reps` read bandwidth in bytes/s over a buffer of `bytes` (use several times the
/// last-level cache, or this measures the cache).
pub fn read_bandwidth(bytes: usize, reps: usize) -> f64 {
    // A huge-page buffer, as the engine's weights and KV are (`HostBuf`), else a plain one.
    let mut buf = match crate::mem::HostBuf::<u64>::zeroed(bytes / 8, crate::mem::MemTier::Pageable)
    {
        Ok(b) => b,
        Err(_) => return read_bandwidth_vec(bytes, reps),
    };
    fill_and_read(&mut buf, reps)
}

fn read_bandwidth_vec(bytes: usize, reps: usize) -> f64 {
    fill_and_read(&mut vec![0u64; bytes / 8], reps)
}

fn fill_and_read(buf: &mut [u64], reps: usize) -> f64 {
    crate::pool().install(|| {
        buf.par_iter_mut()
            .enumerate()
            .for_each(|(i, x)| *x = i as u64)
    });
    let mut best = f64::MAX;
    let mut sink = 0u64;
    for _ in 0..reps.max(1) {
        let t = std::time::Instant::now();
        sink ^= parallel_read(std::hint::black_box(&*buf));
        best = best.min(t.elapsed().as_secs_f64());
    }
    std::hint::black_box(sink);
    (buf.len() * 8) as f64 / best
}

#[cfg(test)]
mod tests {
    #[test]
    fn read_touches_every_word() {
        let v: Vec<u64> = (0..100_003u64).collect();
        // With one word changed the result changes: every word takes part.
        let mut w = v.clone();
        w[77_777] ^= 1 << 40;
        assert_ne!(super::parallel_read(&v), super::parallel_read(&w));
        let mut d = vec![0u64; v.len()];
        super::parallel_copy(&mut d, &v);
        assert_eq!(d, v);
    }
}
