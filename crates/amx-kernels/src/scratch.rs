//! Per-thread buffers that kernels reuse from call to call (grown, never shrunk), so that the
//! hot path does not allocate once they have reached their size.
//!
//! A buffer is borrowed for the length of one use. If the same thread re-enters while it is
//! borrowed (a kernel called from a pool job that the thread picked up while waiting inside
//! another kernel call), the second use gets a private buffer instead of a panic.

use std::cell::RefCell;
use std::thread::LocalKey;

/// Elements of `T` to skip from `p` so that a slice starts on a 64-byte line (`T`'s size divides
/// 64 and `p` is aligned to it). Callers over-allocate by `64 / size_of::<T>()` elements.
pub fn line_offset<T>(p: *const T) -> usize {
    (64 - p as usize % 64) % 64 / std::mem::size_of::<T>()
}

/// Runs `f` with this thread's buffer `key`, at least `len` long (contents unspecified).
pub fn with_buf<T: Default, R>(
    key: &'static LocalKey<RefCell<Vec<T>>>,
    len: usize,
    f: impl FnOnce(&mut Vec<T>) -> R,
) -> R {
    let grown = |v: &mut Vec<T>| {
        if v.len() < len {
            v.resize_with(len, T::default);
        }
    };
    key.with(|cell| match cell.try_borrow_mut() {
        Ok(mut v) => {
            grown(&mut v);
            f(&mut v)
        }
        Err(_) => {
            let mut v = Vec::new();
            grown(&mut v);
            f(&mut v)
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    thread_local! {
        static BUF: RefCell<Vec<u32>> = const { RefCell::new(Vec::new()) };
    }

    #[test]
    fn reentry_gets_a_private_buffer() {
        with_buf(&BUF, 4, |outer| {
            outer[..4].copy_from_slice(&[1, 2, 3, 4]);
            with_buf(&BUF, 8, |inner| {
                assert_eq!(inner.len(), 8);
                inner.fill(9);
            });
            assert_eq!(
                &outer[..4],
                &[1, 2, 3, 4],
                "the inner use must not touch the outer buffer"
            );
        });
    }
}
