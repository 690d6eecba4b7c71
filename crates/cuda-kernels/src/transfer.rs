//! Host memory the GPU copies at full PCIe speed, and asynchronous copies of lists of KV blocks
//! between host and device.
//!
//! [`PinnedBuf`] is page-locked host memory: either allocated by the driver
//! (`cuMemHostAlloc`, portable, **not** write-combined, because the CPU reads these buffers:
//! CPU attention runs over host KV blocks, and write-combined memory is uncached for CPU
//! reads), or an existing [`platform::HostBuf`] registered in place (`cuMemHostRegister`), so
//! memory the engine placed on a NUMA node or tier becomes pinned without a copy.
//!
//! Copies are queued on a stream and return at once. The buffer remembers the last queued use
//! in an event: reading or writing it from the CPU ([`PinnedBuf::as_slice`],
//! [`PinnedBuf::as_mut_slice`]) waits for that event first, a use on another stream waits for
//! it on the device, and dropping the buffer waits before freeing, so no copy can outlive it.
//!
//! Streams and events are cudarc's: [`crate::Gpu::new_stream`], `ctx().new_event(None)`,
//! `CudaEvent::record`, `CudaStream::wait`.

use std::sync::Arc;

use cudarc::driver::{
    result, sys, CudaContext, CudaEvent, CudaStream, DevicePtr, DevicePtrMut, DeviceRepr,
    PushKernelArg,
};
use platform::HostBuf;

use crate::{shape_err, Error, Gpu, Result};

enum Backing<T: Copy> {
    /// From cuMemHostAlloc; freed with cuMemFreeHost.
    Driver,
    /// A registered HostBuf; unregistered, then dropped.
    Registered(HostBuf<T>),
    /// Nothing to pin (zero length).
    Empty,
}

/// Page-locked host memory of `len` elements of `T` (see the module documentation).
pub struct PinnedBuf<T: Copy> {
    ptr: *mut T,
    len: usize,
    backing: Backing<T>,
    last_use: CudaEvent,
    ctx: Arc<CudaContext>,
}

// SAFETY: PinnedBuf owns its memory exclusively, like a Vec<T>; the CUDA handles are thread-safe.
unsafe impl<T: Copy + Send> Send for PinnedBuf<T> {}
// SAFETY: shared references only give out &[T] after the pending copies finished.
unsafe impl<T: Copy + Sync> Sync for PinnedBuf<T> {}

impl<T: Copy + DeviceRepr> PinnedBuf<T> {
    /// `len` zeroed elements of driver-allocated pinned memory. `T` must be valid as all-zero
    /// bytes (true of the integer and float types used here).
    pub fn alloc(gpu: &Gpu, len: usize) -> Result<Self> {
        let ctx = gpu.ctx().clone();
        let last_use = ctx.new_event(None)?;
        let bytes = len
            .checked_mul(std::mem::size_of::<T>())
            .ok_or_else(|| shape_err("PinnedBuf: size overflows"))?;
        if bytes == 0 {
            return Ok(PinnedBuf {
                ptr: std::ptr::NonNull::dangling().as_ptr(),
                len: 0,
                backing: Backing::Empty,
                last_use,
                ctx,
            });
        }
        ctx.bind_to_thread()?;
        // SAFETY: plain allocation of `bytes`; PORTABLE makes it pinned for every context and
        // leaving out WRITECOMBINED keeps it cached for CPU reads.
        let ptr = unsafe { result::malloc_host(bytes, sys::CU_MEMHOSTALLOC_PORTABLE) }? as *mut T;
        // SAFETY: ptr is valid for `bytes` bytes just allocated; zero is a valid T (see above).
        unsafe { std::ptr::write_bytes(ptr as *mut u8, 0, bytes) };
        Ok(PinnedBuf {
            ptr,
            len,
            backing: Backing::Driver,
            last_use,
            ctx,
        })
    }

    /// Pins `buf` in place (cuMemHostRegister, portable). The buffer comes back unpinned from
    /// [`PinnedBuf::into_host_buf`].
    pub fn register(gpu: &Gpu, mut buf: HostBuf<T>) -> Result<Self> {
        let ctx = gpu.ctx().clone();
        let last_use = ctx.new_event(None)?;
        let (ptr, len, bytes) = (buf.as_mut_ptr(), buf.len(), buf.bytes());
        if bytes == 0 {
            return Ok(PinnedBuf {
                ptr,
                len,
                backing: Backing::Registered(buf),
                last_use,
                ctx,
            });
        }
        ctx.bind_to_thread()?;
        // SAFETY: ptr..ptr+bytes is the live allocation of `buf`, which this PinnedBuf keeps
        // (and does not move: HostBuf's memory is on the heap) until it unregisters it.
        unsafe {
            sys::cuMemHostRegister_v2(ptr as *mut _, bytes, sys::CU_MEMHOSTREGISTER_PORTABLE)
        }
        .result()?;
        Ok(PinnedBuf {
            ptr,
            len,
            backing: Backing::Registered(buf),
            last_use,
            ctx,
        })
    }

    /// Waits for pending copies, unpins, and returns the registered `HostBuf` (`None` for
    /// driver-allocated memory, which is freed).
    pub fn into_host_buf(mut self) -> Result<Option<HostBuf<T>>> {
        self.release()?;
        match std::mem::replace(&mut self.backing, Backing::Empty) {
            Backing::Registered(b) => Ok(Some(b)),
            _ => Ok(None),
        }
    }

    /// Waits for pending copies, then frees or unregisters; the backing is left `Empty` for a
    /// driver allocation (so `Drop` does nothing more) and `Registered` for a HostBuf (which the
    /// caller takes out).
    fn release(&mut self) -> Result<()> {
        self.last_use.synchronize()?;
        self.ctx.bind_to_thread()?;
        match &self.backing {
            Backing::Driver => {
                // SAFETY: ptr came from cuMemHostAlloc and no copy is pending (synchronized above).
                unsafe { result::free_host(self.ptr as *mut _) }?;
                self.backing = Backing::Empty;
            }
            Backing::Registered(b) if b.bytes() > 0 => {
                // SAFETY: ptr was registered in `register` and no copy is pending.
                unsafe { sys::cuMemHostUnregister(self.ptr as *mut _) }.result()?
            }
            _ => {}
        }
        self.len = 0;
        Ok(())
    }
}

impl<T: Copy> PinnedBuf<T> {
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The contents, after every queued copy into or out of the buffer has finished.
    pub fn as_slice(&self) -> Result<&[T]> {
        self.last_use.synchronize()?;
        // SAFETY: ptr is valid for len elements (zeroed or written) and no copy is pending.
        Ok(unsafe { std::slice::from_raw_parts(self.ptr, self.len) })
    }

    /// The contents for writing, after every queued copy has finished.
    pub fn as_mut_slice(&mut self) -> Result<&mut [T]> {
        self.last_use.synchronize()?;
        // SAFETY: as above, and &mut self is exclusive.
        Ok(unsafe { std::slice::from_raw_parts_mut(self.ptr, self.len) })
    }

    /// Orders a new use on `stream` after the last one and returns the raw memory for queuing.
    fn begin_use(&self, stream: &CudaStream) -> Result<()> {
        stream.wait(&self.last_use)?;
        Ok(())
    }

    fn end_use(&self, stream: &CudaStream) -> Result<()> {
        self.last_use.record(stream)?;
        Ok(())
    }
}

impl<T: Copy> Drop for PinnedBuf<T> {
    fn drop(&mut self) {
        let _ = self.last_use.synchronize();
        let _ = self.ctx.bind_to_thread();
        match &self.backing {
            // SAFETY: ptr came from cuMemHostAlloc; no copy is pending (synchronized above).
            Backing::Driver => unsafe {
                let _ = result::free_host(self.ptr as *mut _);
            },
            Backing::Registered(b) if b.bytes() > 0 => {
                // SAFETY: registered in `register`; no copy is pending.
                let _ = unsafe { sys::cuMemHostUnregister(self.ptr as *mut _) };
            }
            _ => {}
        }
    }
}

/// Host memory owned elsewhere, page-locked in place (`cuMemHostRegister`) while this value
/// lives, so that plain `memcpy_htod` calls from it run at full PCIe speed and asynchronously.
/// For memory that another owner keeps using, such as a CPU kernel's prepacked weights that
/// are also streamed to the GPU; [`PinnedBuf::register`] is the owning form.
pub struct HostPin {
    ptr: *mut u8,
    bytes: usize,
    ctx: Arc<CudaContext>,
}

// SAFETY: only the address is kept, to unregister it; the memory belongs to its owner.
unsafe impl Send for HostPin {}
unsafe impl Sync for HostPin {}

impl HostPin {
    /// Registers `bytes` bytes at `ptr` (portable: pinned for every context).
    ///
    /// # Safety
    /// The range must be one live host allocation that stays allocated and in place until this
    /// value is dropped, and no copy from or to it may still be queued when it is dropped (the
    /// drop synchronizes the context before unregistering, which covers copies queued through
    /// this crate's streams).
    pub unsafe fn register(gpu: &Gpu, ptr: *const u8, bytes: usize) -> Result<Self> {
        let ctx = gpu.ctx().clone();
        if bytes > 0 {
            ctx.bind_to_thread()?;
            sys::cuMemHostRegister_v2(ptr as *mut _, bytes, sys::CU_MEMHOSTREGISTER_PORTABLE)
                .result()?;
        }
        Ok(HostPin {
            ptr: ptr as *mut u8,
            bytes,
            ctx,
        })
    }

    /// Registers the memory of `s` (see [`HostPin::register`]).
    ///
    /// # Safety
    /// As [`HostPin::register`], for the allocation `s` lies in.
    pub unsafe fn slice<T>(gpu: &Gpu, s: &[T]) -> Result<Self> {
        Self::register(gpu, s.as_ptr() as *const u8, std::mem::size_of_val(s))
    }

    pub fn bytes(&self) -> usize {
        self.bytes
    }
}

impl Drop for HostPin {
    fn drop(&mut self) {
        if self.bytes == 0 {
            return;
        }
        let _ = self.ctx.bind_to_thread();
        let _ = self.ctx.synchronize();
        // SAFETY: registered in `register`; nothing queued uses it any more (synchronized).
        let _ = unsafe { sys::cuMemHostUnregister(self.ptr as *mut _) };
    }
}

/// Which blocks to copy: `(source block, destination block)` pairs, each block `block_elems`
/// elements at `block * block_elems` of its buffer.
fn runs(
    what: &'static str,
    pairs: &[(usize, usize)],
    block_elems: usize,
    src_len: usize,
    dst_len: usize,
) -> Result<Vec<(usize, usize, usize)>> {
    if block_elems == 0 {
        return Err(shape_err(format!("{what}: block_elems is 0")));
    }
    let (src_blocks, dst_blocks) = (src_len / block_elems, dst_len / block_elems);
    let mut out: Vec<(usize, usize, usize)> = Vec::new();
    for &(s, d) in pairs {
        if s >= src_blocks {
            return Err(Error::IdRange {
                what,
                id: s as i64,
                bound: src_blocks as i64,
            });
        }
        if d >= dst_blocks {
            return Err(Error::IdRange {
                what,
                id: d as i64,
                bound: dst_blocks as i64,
            });
        }
        // Neighbouring blocks on both sides merge into one copy.
        match out.last_mut() {
            Some((s0, d0, n)) if *s0 + *n == s && *d0 + *n == d => *n += 1,
            _ => out.push((s, d, 1)),
        }
    }
    Ok(out)
}

/// Queues host→device copies of blocks on `stream`: for each `(h, d)` in `pairs`, host block
/// `h` of `src` to device block `d` of `dst`. Runs of consecutive blocks become one copy.
pub fn copy_blocks_h2d<T: Copy + DeviceRepr>(
    stream: &CudaStream,
    src: &PinnedBuf<T>,
    dst: &mut impl DevicePtrMut<T>,
    block_elems: usize,
    pairs: &[(usize, usize)],
) -> Result<()> {
    let runs = runs(
        "copy_blocks_h2d: block",
        pairs,
        block_elems,
        src.len(),
        dst.len(),
    )?;
    src.begin_use(stream)?;
    let (pd, _gd) = dst.device_ptr_mut(stream);
    let sz = std::mem::size_of::<T>() as u64;
    for (s, d, n) in runs {
        // SAFETY: the host range is inside `src` (checked), which stays alive until the copy
        // ends (its event is recorded below and waited for before any CPU access or free);
        // the device range is inside `dst` (checked).
        let host =
            unsafe { std::slice::from_raw_parts(src.ptr.add(s * block_elems), n * block_elems) };
        // SAFETY: as above.
        unsafe {
            result::memcpy_htod_async(pd + (d * block_elems) as u64 * sz, host, stream.cu_stream())
        }?;
    }
    src.end_use(stream)
}

/// Queues on `stream` a kernel that reads the first `n` f32 elements of the driver-allocated
/// pinned buffer `src` over PCIe (mapped host memory: the SMs load it) and writes them to `dst`
/// rounded to bf16, as [`crate::elementwise::cast_f32_bf16`] does. No copy engine takes part,
/// so a step's activations reach the GPU while a streamed layer's weights hold the host→device
/// engine (a copy queued there would wait behind every weight copy queued before it).
pub fn pull_f32_bf16(
    gpu: &Gpu,
    stream: &CudaStream,
    src: &PinnedBuf<f32>,
    dst: &mut impl DevicePtrMut<half::bf16>,
    n: usize,
) -> Result<()> {
    pull(gpu, stream, "pull_f32_bf16", "cast_f32_bf16", src, dst, n)
}

/// As [`pull_f32_bf16`], for rows already in bf16 on the host: copied as they are, half the
/// bytes over PCIe (a batch-64 CPU layer's Q/K/V rows of OPT-30B: 2.75 MB, not 5.5).
pub fn pull_bf16(
    gpu: &Gpu,
    stream: &CudaStream,
    src: &PinnedBuf<half::bf16>,
    dst: &mut impl DevicePtrMut<half::bf16>,
    n: usize,
) -> Result<()> {
    pull(gpu, stream, "pull_bf16", "copy_bf16", src, dst, n)
}

/// The body of the pulls: `kernel` is `(int64 n, const T* x, bf16* y)`, run over the device
/// address of `src`'s mapped memory.
fn pull<T: Copy + DeviceRepr>(
    gpu: &Gpu,
    stream: &CudaStream,
    what: &str,
    kernel: &'static str,
    src: &PinnedBuf<T>,
    dst: &mut impl DevicePtrMut<half::bf16>,
    n: usize,
) -> Result<()> {
    if n > src.len() || n > dst.len() {
        return Err(shape_err(format!(
            "{what}: {n} elements from {} to {}",
            src.len(),
            dst.len()
        )));
    }
    if n == 0 {
        return Ok(());
    }
    if !matches!(src.backing, Backing::Driver) {
        return Err(shape_err(format!(
            "{what}: the source must be driver-allocated pinned memory (PinnedBuf::alloc)"
        )));
    }
    src.ctx.bind_to_thread()?;
    let mut mapped: sys::CUdeviceptr = 0;
    // SAFETY: src.ptr is the start of a live cuMemHostAlloc allocation; the call only looks it
    // up (with unified addressing, every such allocation is mapped for the device).
    unsafe { sys::cuMemHostGetDevicePointer_v2(&mut mapped, src.ptr as *mut _, 0) }.result()?;
    let f = gpu.function(kernel)?;
    src.begin_use(stream)?;
    let (py, _gy) = dst.device_ptr_mut(stream);
    let nn = n as i64;
    let mut b = stream.launch_builder(&f);
    b.arg(&nn).arg(&mapped).arg(&py);
    // SAFETY: `kernel` is (int64 n, const T* x, bf16* y) (cast_f32_bf16 with T = f32,
    // copy_bf16 with T = bf16); x is the device address of src's mapped memory, which holds
    // at least n elements (checked) and stays alive until this use ends (its event is recorded
    // below and waited for before any CPU access or free); y holds at least n elements
    // (checked).
    unsafe { b.launch(crate::grid_stride(gpu, n / 8 + 1)) }?;
    src.end_use(stream)
}

/// Queues device→host copies of blocks on `stream`: device block `d` of `src` to host block
/// `h` of `dst` for each `(d, h)` in `pairs`.
pub fn copy_blocks_d2h<T: Copy + DeviceRepr>(
    stream: &CudaStream,
    src: &impl DevicePtr<T>,
    dst: &mut PinnedBuf<T>,
    block_elems: usize,
    pairs: &[(usize, usize)],
) -> Result<()> {
    let runs = runs(
        "copy_blocks_d2h: block",
        pairs,
        block_elems,
        src.len(),
        dst.len(),
    )?;
    dst.begin_use(stream)?;
    let (ps, _gs) = src.device_ptr(stream);
    let sz = std::mem::size_of::<T>() as u64;
    for (s, d, n) in runs {
        // SAFETY: the host range is inside `dst` (checked), exclusively borrowed here and kept
        // alive until the copy ends (event recorded below); the device range is inside `src`.
        let host = unsafe {
            std::slice::from_raw_parts_mut(dst.ptr.add(d * block_elems), n * block_elems)
        };
        // SAFETY: as above.
        unsafe {
            result::memcpy_dtoh_async(host, ps + (s * block_elems) as u64 * sz, stream.cu_stream())
        }?;
    }
    dst.end_use(stream)
}

/// Reference twin of the block copies on host slices: `dst[d] = src[s]` for each pair.
pub fn copy_blocks_ref<T: Copy>(
    src: &[T],
    dst: &mut [T],
    block_elems: usize,
    pairs: &[(usize, usize)],
) -> Result<()> {
    for (s, d, n) in runs(
        "copy_blocks_ref: block",
        pairs,
        block_elems,
        src.len(),
        dst.len(),
    )? {
        dst[d * block_elems..][..n * block_elems]
            .copy_from_slice(&src[s * block_elems..][..n * block_elems]);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testutil::*;
    use half::bf16;
    use platform::MemTier;
    use rand::seq::SliceRandom;

    #[test]
    fn gpu_block_copies_round_trip() {
        let Some(gpu) = crate::gpu_or_skip() else {
            return;
        };
        let (mut rng, seed) = rng();
        let copy = gpu.new_stream().unwrap();
        let block = 8 * 16 * 128; // one llama3-8b block: 8 kv heads x 16 tokens x 128
        let (host_blocks, dev_blocks) = (24usize, 20usize);
        let data = rand_bf16(&mut rng, host_blocks * block, -1.0, 1.0);
        // One driver-allocated, one registered HostBuf: both pinned kinds.
        let mut a = PinnedBuf::<bf16>::alloc(&gpu, host_blocks * block).unwrap();
        a.as_mut_slice().unwrap().copy_from_slice(&data);
        let mut hb = HostBuf::<bf16>::zeroed(host_blocks * block, MemTier::Pageable).unwrap();
        hb.copy_from_slice(&data);
        let b = PinnedBuf::register(&gpu, hb).unwrap();
        for src in [&a, &b] {
            let mut dev = copy.clone_htod(&poisoned(dev_blocks * block)).unwrap();
            let mut ids: Vec<usize> = (0..host_blocks).collect();
            ids.shuffle(&mut rng);
            // Consecutive pairs (merged) and scattered ones.
            let mut pairs: Vec<(usize, usize)> = vec![(0, 0), (1, 1), (2, 2)];
            pairs.extend(ids.iter().copied().filter(|&i| i > 2).zip(3..dev_blocks));
            copy_blocks_h2d(&copy, src, &mut dev, block, &pairs).unwrap();
            let mut want = poisoned(dev_blocks * block);
            copy_blocks_ref(&data, &mut want, block, &pairs).unwrap();
            // Copies are exact; NaN poison stays where no block was copied, so compare bits.
            let got = copy.clone_dtoh(&dev).unwrap();
            assert!(
                got.iter()
                    .zip(&want)
                    .all(|(g, w)| g.to_bits() == w.to_bits()),
                "h2d (seed {seed})"
            );

            let mut back = PinnedBuf::<bf16>::alloc(&gpu, host_blocks * block).unwrap();
            let rev: Vec<(usize, usize)> = pairs.iter().map(|&(h, d)| (d, h)).collect();
            copy_blocks_d2h(&copy, &dev, &mut back, block, &rev).unwrap();
            let mut want_back = vec![bf16::ZERO; host_blocks * block];
            copy_blocks_ref(&got, &mut want_back, block, &rev).unwrap();
            assert_close("d2h", seed, back.as_slice().unwrap(), &want_back, 0.0, 0.0);
        }
        let back = b.into_host_buf().unwrap().unwrap();
        assert_close("registered buffer comes back", seed, &back, &data, 0.0, 0.0);
    }

    #[test]
    fn gpu_pulls_over_mapped_memory_match_the_cast_and_the_rows() {
        let Some(gpu) = crate::gpu_or_skip() else {
            return;
        };
        let (mut rng, seed) = rng();
        let s = gpu.new_stream().unwrap();
        let n = 4099; // not a multiple of the kernel's 8 per step
        let data: Vec<f32> = rand_bf16(&mut rng, n + 2, -3.0, 3.0)
            .iter()
            .zip(rand_bf16(&mut rng, n + 2, -1e-3, 1e-3))
            .map(|(a, b)| a.to_f32() + b.to_f32()) // not exact in bf16
            .collect();
        // The pulled n elements bit for bit as `want`, and the poison past them left alone.
        let check = |what: &str, dev: &cudarc::driver::CudaSlice<bf16>, want: &[bf16]| {
            let got = s.clone_dtoh(dev).unwrap();
            assert!(
                got[..n]
                    .iter()
                    .zip(want)
                    .all(|(g, w)| g.to_bits() == w.to_bits()),
                "{what} (seed {seed})"
            );
            assert!(got[n].is_nan(), "{what}: past n (seed {seed})");
        };
        let mut src = PinnedBuf::<f32>::alloc(&gpu, n + 2).unwrap();
        src.as_mut_slice().unwrap().copy_from_slice(&data);
        let mut dev = s.clone_htod(&poisoned(n + 1)).unwrap();
        pull_f32_bf16(&gpu, &s, &src, &mut dev, n).unwrap();
        let mut want = vec![bf16::ZERO; n];
        crate::elementwise::cast_f32_bf16_ref(&data[..n], &mut want).unwrap();
        check("pull_f32_bf16", &dev, &want);
        assert!(pull_f32_bf16(&gpu, &s, &src, &mut dev, n + 2).is_err());
        let hb = HostBuf::<f32>::zeroed(16, MemTier::Pageable).unwrap();
        let reg = PinnedBuf::register(&gpu, hb).unwrap();
        let e = pull_f32_bf16(&gpu, &s, &reg, &mut dev, 8)
            .unwrap_err()
            .to_string();
        assert!(e.contains("driver-allocated"), "{e}");

        // bf16 rows copied as they are (odd n: the tail past the 16-byte steps), and the
        // same checks.
        let rows = rand_bf16(&mut rng, n + 2, -3.0, 3.0);
        let mut src = PinnedBuf::<bf16>::alloc(&gpu, n + 2).unwrap();
        src.as_mut_slice().unwrap().copy_from_slice(&rows);
        let mut dev = s.clone_htod(&poisoned(n + 1)).unwrap();
        pull_bf16(&gpu, &s, &src, &mut dev, n).unwrap();
        check("pull_bf16", &dev, &rows[..n]);
        let e = pull_bf16(&gpu, &s, &src, &mut dev, n + 2)
            .unwrap_err()
            .to_string();
        assert!(e.contains("pull_bf16"), "{e}");
        let hb = HostBuf::<bf16>::zeroed(16, MemTier::Pageable).unwrap();
        let reg = PinnedBuf::register(&gpu, hb).unwrap();
        let e = pull_bf16(&gpu, &s, &reg, &mut dev, 8)
            .unwrap_err()
            .to_string();
        assert!(e.contains("driver-allocated"), "{e}");
    }

    #[test]
    fn bad_block_ids_are_errors() {
        let src = vec![0u8; 40];
        let mut dst = vec![0u8; 20];
        let e = copy_blocks_ref(&src, &mut dst, 10, &[(4, 0)])
            .unwrap_err()
            .to_string();
        assert!(e.contains("4") && e.contains("0..4"), "{e}");
        assert!(copy_blocks_ref(&src, &mut dst, 10, &[(0, 2)]).is_err());
        assert!(copy_blocks_ref(&src, &mut dst, 0, &[(0, 0)]).is_err());
        assert_eq!(
            runs("r", &[(0, 5), (1, 6), (3, 7)], 1, 10, 10).unwrap(),
            vec![(0, 5, 2), (3, 7, 1)]
        );
    }
}
