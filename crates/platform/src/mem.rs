//! Memory tiers and aligned host buffers.
//!
//! `HostBuf<T>` is the host allocation every CPU kernel reads: 4 KiB aligned (so AMX tile
//! loads and AVX-512 loads never split a cache line at the start of a row block; 2 MiB aligned
//! and backed by transparent huge pages from 2 MiB up), zeroed, and placed on a chosen tier. `pinned` is page-locked memory; page-locking needs the CUDA driver,
//! so the platform crate makes pageable or node-bound buffers and `cuda-kernels` registers them.

use std::fmt;
use std::marker::PhantomData;
use std::ptr::NonNull;
use std::str::FromStr;

use crate::numa::{numa_available, numa_nodes, sys};
use crate::{Error, Result};

/// Where weights or KV blocks live.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum MemTier {
    /// GPU HBM.
    Gpu,
    /// Page-locked host DDR (CUDA-registered), for full-speed PCIe copies.
    Pinned,
    /// Ordinary host DDR.
    Pageable,
    /// DDR or CXL memory of one NUMA node, bound through libnuma.
    Numa(u32),
}

impl fmt::Display for MemTier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            MemTier::Gpu => f.write_str("gpu"),
            MemTier::Pinned => f.write_str("pinned"),
            MemTier::Pageable => f.write_str("pageable"),
            MemTier::Numa(n) => write!(f, "numa:{n}"),
        }
    }
}

impl FromStr for MemTier {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        let t = s.trim().to_ascii_lowercase();
        match t.as_str() {
            "gpu" | "hbm" => Ok(MemTier::Gpu),
            "pinned" => Ok(MemTier::Pinned),
            "pageable" | "ddr" => Ok(MemTier::Pageable),
            _ => t
                .strip_prefix("numa:")
                .and_then(|n| n.parse().ok())
                .map(MemTier::Numa)
                .ok_or_else(|| Error::BadTier(s.to_string())),
        }
    }
}

impl MemTier {
    /// Checks that a host tier exists here (a NUMA node with memory). GPU and pinned tiers are
    /// checked by whoever owns the CUDA driver.
    pub fn check_host(self) -> Result<()> {
        if let MemTier::Numa(node) = self {
            let nodes = numa_nodes();
            if !nodes.iter().any(|n| n.id == node) {
                let have = nodes
                    .iter()
                    .map(|n| {
                        let kind = if n.is_memory_only() {
                            ", memory only"
                        } else {
                            ""
                        };
                        format!(
                            "numa:{} ({:.1} GiB{kind})",
                            n.id,
                            n.mem_total as f64 / (1u64 << 30) as f64
                        )
                    })
                    .collect::<Vec<_>>()
                    .join(", ");
                return Err(Error::NoSuchNode { node, have });
            }
        }
        Ok(())
    }
}

const ALIGN: usize = 4096;
/// Buffers of at least this size are mapped directly, 2 MiB aligned, and asked to be backed by
/// transparent huge pages: a kernel streaming gigabytes of weights or KV then walks one TLB
/// entry per 2 MiB instead of per 4 KiB.
const HUGE: usize = 2 << 20;

enum Backing {
    Std(std::alloc::Layout),
    /// An anonymous mapping: its start and length (the buffer lies inside, 2 MiB aligned).
    Map(*mut libc::c_void, usize),
    Numa(usize),
    Empty,
}

/// Asks for transparent huge pages over `ptr .. ptr + bytes` (a hint: ignored where the kernel
/// has them off, and harmless where it has them always on).
fn advise_huge(ptr: *mut u8, bytes: usize) {
    // SAFETY: madvise only reads the range's mapping; the range is a live mapping of ours.
    unsafe {
        libc::madvise(ptr as *mut libc::c_void, bytes, libc::MADV_HUGEPAGE);
    }
}

/// A fresh anonymous mapping of at least `bytes`, with a 2 MiB aligned start inside it.
fn map_huge(bytes: usize) -> Option<(*mut libc::c_void, usize, *mut u8)> {
    let len = bytes.checked_add(HUGE)?;
    // SAFETY: a new private anonymous mapping; no existing memory is touched.
    let base = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            len,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
            -1,
            0,
        )
    };
    if base == libc::MAP_FAILED {
        return None;
    }
    let start = (base as usize).next_multiple_of(HUGE) as *mut u8;
    advise_huge(start, bytes);
    Some((base, len, start))
}

/// A zeroed, 4 KiB aligned host buffer of `len` elements on a host tier.
pub struct HostBuf<T: Copy> {
    ptr: NonNull<T>,
    len: usize,
    tier: MemTier,
    backing: Backing,
    _own: PhantomData<T>,
}

// SAFETY: HostBuf owns its allocation exclusively, like a Vec<T>.
unsafe impl<T: Copy + Send> Send for HostBuf<T> {}
// SAFETY: shared references only give out &[T].
unsafe impl<T: Copy + Sync> Sync for HostBuf<T> {}

impl<T: Copy> HostBuf<T> {
    /// Allocates `len` zeroed elements on `tier` (`pageable` or `numa:N`; `pinned` and `gpu`
    /// belong to `cuda-kernels`). Pages are touched here, by the calling thread, except for a
    /// node-bound buffer, whose pages the kernel places on that node whoever touches them.
    ///
    /// All-zero bytes must be a valid `T` (true for the integer and float types used here).
    pub fn zeroed(len: usize, tier: MemTier) -> Result<Self> {
        let bytes = len
            .checked_mul(std::mem::size_of::<T>())
            .ok_or(Error::Alloc {
                bytes: usize::MAX,
                tier,
            })?;
        if bytes == 0 {
            return Ok(Self {
                ptr: NonNull::dangling(),
                len,
                tier,
                backing: Backing::Empty,
                _own: PhantomData,
            });
        }
        assert!(std::mem::align_of::<T>() <= ALIGN);
        match tier {
            MemTier::Pageable if bytes >= HUGE => {
                // Anonymous pages read as zero; they are placed on first touch.
                let (base, len_mapped, start) =
                    map_huge(bytes).ok_or(Error::Alloc { bytes, tier })?;
                Ok(Self {
                    ptr: NonNull::new(start as *mut T).ok_or(Error::Alloc { bytes, tier })?,
                    len,
                    tier,
                    backing: Backing::Map(base, len_mapped),
                    _own: PhantomData,
                })
            }
            MemTier::Pageable => {
                let layout = std::alloc::Layout::from_size_align(bytes, ALIGN)
                    .map_err(|_| Error::Alloc { bytes, tier })?;
                // SAFETY: layout has non-zero size.
                let p = unsafe { std::alloc::alloc_zeroed(layout) } as *mut T;
                let ptr = NonNull::new(p).ok_or(Error::Alloc { bytes, tier })?;
                Ok(Self {
                    ptr,
                    len,
                    tier,
                    backing: Backing::Std(layout),
                    _own: PhantomData,
                })
            }
            MemTier::Numa(node) => {
                tier.check_host()?;
                if !numa_available() {
                    // No NUMA support: node 0 is the whole machine.
                    return Self::zeroed(len, MemTier::Pageable).map(|mut b| {
                        b.tier = tier;
                        b
                    });
                }
                // SAFETY: numa_alloc_onnode returns page-aligned memory bound to the node, or null.
                let p = unsafe { sys::numa_alloc_onnode(bytes, node as i32) } as *mut T;
                let ptr = NonNull::new(p).ok_or(Error::Alloc { bytes, tier })?;
                advise_huge(ptr.as_ptr() as *mut u8, bytes);
                // SAFETY: fresh mapping of `bytes` bytes; anonymous pages read as zero already, but
                // writing them here makes the placement happen now instead of on the hot path.
                unsafe { std::ptr::write_bytes(ptr.as_ptr() as *mut u8, 0, bytes) };
                Ok(Self {
                    ptr,
                    len,
                    tier,
                    backing: Backing::Numa(bytes),
                    _own: PhantomData,
                })
            }
            MemTier::Gpu | MemTier::Pinned => Err(Error::NeedsCuda(tier)),
        }
    }

    /// A buffer holding a copy of `src`.
    pub fn from_slice(src: &[T], tier: MemTier) -> Result<Self> {
        let mut b = Self::zeroed(src.len(), tier)?;
        b.copy_from_slice(src);
        Ok(b)
    }

    pub fn tier(&self) -> MemTier {
        self.tier
    }

    /// Size in bytes.
    pub fn bytes(&self) -> usize {
        self.len * std::mem::size_of::<T>()
    }

    pub fn as_ptr(&self) -> *const T {
        self.ptr.as_ptr()
    }

    pub fn as_mut_ptr(&mut self) -> *mut T {
        self.ptr.as_ptr()
    }
}

impl<T: Copy> std::ops::Deref for HostBuf<T> {
    type Target = [T];
    fn deref(&self) -> &[T] {
        // SAFETY: ptr is valid for len initialized (zeroed or written) elements.
        unsafe { std::slice::from_raw_parts(self.ptr.as_ptr(), self.len) }
    }
}

impl<T: Copy> std::ops::DerefMut for HostBuf<T> {
    fn deref_mut(&mut self) -> &mut [T] {
        // SAFETY: as above, and &mut self gives exclusive access.
        unsafe { std::slice::from_raw_parts_mut(self.ptr.as_ptr(), self.len) }
    }
}

impl<T: Copy> Drop for HostBuf<T> {
    fn drop(&mut self) {
        match self.backing {
            // SAFETY: allocated with exactly this layout in `zeroed`.
            Backing::Std(layout) => unsafe {
                std::alloc::dealloc(self.ptr.as_ptr() as *mut u8, layout)
            },
            // SAFETY: mapped in `map_huge` with exactly this start and length.
            Backing::Map(base, len) => unsafe {
                libc::munmap(base, len);
            },
            // SAFETY: allocated by numa_alloc_onnode with this size.
            Backing::Numa(bytes) => unsafe {
                sys::numa_free(self.ptr.as_ptr() as *mut libc::c_void, bytes)
            },
            Backing::Empty => {}
        }
    }
}

impl<T: Copy + fmt::Debug> fmt::Debug for HostBuf<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "HostBuf<{}>[{}] on {}",
            std::any::type_name::<T>(),
            self.len,
            self.tier
        )
    }
}

/// Minor page faults of this process so far (`getrusage`): a first touch of fresh memory, or
/// a page the kernel took back. Profiles difference it around a phase to tell faulting from
/// slow work.
pub fn minor_faults() -> u64 {
    // SAFETY: getrusage writes one rusage into the zeroed struct we pass.
    unsafe {
        let mut u: libc::rusage = std::mem::zeroed();
        if libc::getrusage(libc::RUSAGE_SELF, &mut u) == 0 {
            u.ru_minflt as u64
        } else {
            0
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tiers_parse_and_print() {
        for s in ["gpu", "pinned", "pageable", "numa:0", "numa:3"] {
            assert_eq!(s.parse::<MemTier>().unwrap().to_string(), s);
        }
        let e = "cxl".parse::<MemTier>().unwrap_err().to_string();
        assert!(e.contains("cxl") && e.contains("numa:N"), "{e}");
    }

    #[test]
    fn missing_node_names_what_exists() {
        let e = MemTier::Numa(999).check_host().unwrap_err().to_string();
        assert!(e.contains("numa:999") && e.contains("numa:0"), "{e}");
        assert!(HostBuf::<u8>::zeroed(16, MemTier::Numa(999)).is_err());
    }

    #[test]
    fn buffers_are_aligned_zeroed_and_writable() {
        for tier in [MemTier::Pageable, MemTier::Numa(0)] {
            let mut b = HostBuf::<f32>::zeroed(10_000, tier).unwrap();
            assert_eq!(b.as_ptr() as usize % ALIGN, 0);
            assert!(b.iter().all(|&x| x == 0.0));
            b[9_999] = 1.5;
            assert_eq!(b[9_999], 1.5);
            assert_eq!(b.tier(), tier);
        }
        // Large buffers are mapped 2 MiB aligned (huge-page candidates).
        let n = (3 << 20) / 4 + 7;
        let mut b = HostBuf::<f32>::zeroed(n, MemTier::Pageable).unwrap();
        assert_eq!(b.as_ptr() as usize % HUGE, 0);
        assert!(b.iter().all(|&x| x == 0.0));
        b[0] = 2.0;
        b[n - 1] = 3.0;
        assert_eq!((b[0], b[n - 1]), (2.0, 3.0));
        drop(b);
        assert!(HostBuf::<f32>::zeroed(4, MemTier::Pinned).is_err());
        assert_eq!(
            HostBuf::<f32>::zeroed(0, MemTier::Pageable).unwrap().len(),
            0
        );
    }
}
