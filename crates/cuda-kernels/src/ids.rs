//! Index lists on the device with their host copy: token ids, positions, KV slots, block
//! tables, sequence lengths and offsets.
//!
//! Kernels cannot return errors, so every id a kernel uses to address memory is checked on the
//! host against its bound before the launch. `DeviceIds` keeps the host copy (and its range) of
//! what it uploaded, and owns the device buffer privately, so the two cannot drift apart.

use std::sync::Arc;

use cudarc::driver::{CudaSlice, CudaStream};

use crate::{Error, Result};

/// An `i32` list uploaded to the device, with the host copy the launchers check ids against.
pub struct DeviceIds {
    dev: CudaSlice<i32>,
    host: Vec<i32>,
    min: i32,
    max: i32,
}

impl DeviceIds {
    /// Copies `ids` to the device on `stream` (ordered before later work on that stream).
    pub fn upload(stream: &Arc<CudaStream>, ids: &[i32]) -> Result<Self> {
        // A zero-length device allocation is not portable; keep one unused element.
        let dev = if ids.is_empty() {
            stream.alloc_zeros::<i32>(1)?
        } else {
            stream.clone_htod(ids)?
        };
        let min = ids.iter().copied().min().unwrap_or(0);
        let max = ids.iter().copied().max().unwrap_or(0);
        Ok(DeviceIds {
            dev,
            host: ids.to_vec(),
            min,
            max,
        })
    }

    /// Replaces the ids with `ids` of the same length, copied into the same device allocation
    /// (work captured in a CUDA graph keeps reading them there).
    pub fn update(&mut self, stream: &Arc<CudaStream>, ids: &[i32]) -> Result<()> {
        if ids.len() != self.host.len() {
            return Err(crate::shape_err(format!(
                "DeviceIds::update: {} ids for a buffer of {}",
                ids.len(),
                self.host.len()
            )));
        }
        if ids.is_empty() {
            return Ok(());
        }
        stream.memcpy_htod(ids, &mut self.dev)?;
        self.host.copy_from_slice(ids);
        self.min = ids.iter().copied().min().unwrap_or(0);
        self.max = ids.iter().copied().max().unwrap_or(0);
        Ok(())
    }

    pub fn len(&self) -> usize {
        self.host.len()
    }

    pub fn is_empty(&self) -> bool {
        self.host.is_empty()
    }

    /// The ids as uploaded.
    pub fn host(&self) -> &[i32] {
        &self.host
    }

    /// The device copy (as many valid elements as [`DeviceIds::len`]).
    pub fn dev(&self) -> &CudaSlice<i32> {
        &self.dev
    }

    pub fn min(&self) -> i32 {
        self.min
    }

    pub fn max(&self) -> i32 {
        self.max
    }

    /// Checks every id against `lo..hi`, naming the first offender.
    pub(crate) fn check_range(&self, what: &'static str, lo: i64, hi: i64) -> Result<()> {
        if self.is_empty() || ((self.min as i64) >= lo && (self.max as i64) < hi) {
            return Ok(());
        }
        let id = if (self.min as i64) < lo {
            self.min
        } else {
            self.max
        };
        Err(Error::IdRange {
            what,
            id: id as i64,
            bound: hi,
        })
    }
}
