//! Per-worker pools of I/O buffers.
//!
//! An idle keep-alive connection holds no buffer: it waits for readiness,
//! and takes buffers from its worker's pool only while it has a request to
//! serve. Memory then follows the requests in flight, not the connections
//! open (a proxy at the edge may hold thousands of idle ones), and a busy
//! worker still allocates nothing per request.

use std::cell::RefCell;

use bytes::BytesMut;

/// Buffers kept per worker and kind; more are freed.
const MAX_POOLED: usize = 256;
/// Larger buffers (grown by a big message) are freed rather than kept.
const MAX_CAPACITY: usize = 64 * 1024;

thread_local! {
    static BYTES: RefCell<Vec<BytesMut>> = const { RefCell::new(Vec::new()) };
    static VECS: RefCell<Vec<Vec<u8>>> = const { RefCell::new(Vec::new()) };
}

/// An empty buffer, from the pool when it has one.
pub fn bytes() -> BytesMut {
    BYTES.with_borrow_mut(Vec::pop).unwrap_or_default()
}

pub fn recycle_bytes(mut buffer: BytesMut) {
    if buffer.capacity() == 0 || buffer.capacity() > MAX_CAPACITY {
        return;
    }
    buffer.clear();
    // The thread-local may be gone while the worker shuts down.
    let _ = BYTES.try_with(|pool| {
        let mut pool = pool.borrow_mut();
        if pool.len() < MAX_POOLED {
            pool.push(buffer);
        }
    });
}

pub fn vec() -> Vec<u8> {
    VECS.with_borrow_mut(Vec::pop).unwrap_or_default()
}

pub fn recycle_vec(mut buffer: Vec<u8>) {
    if buffer.capacity() == 0 || buffer.capacity() > MAX_CAPACITY {
        return;
    }
    buffer.clear();
    let _ = VECS.try_with(|pool| {
        let mut pool = pool.borrow_mut();
        if pool.len() < MAX_POOLED {
            pool.push(buffer);
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buffers_come_back_empty_and_keep_their_memory() {
        let mut buffer = bytes();
        buffer.extend_from_slice(&[1u8; 1000]);
        let capacity = buffer.capacity();
        recycle_bytes(buffer);
        let again = bytes();
        assert!(again.is_empty());
        assert_eq!(again.capacity(), capacity);

        let mut big = vec();
        big.resize(MAX_CAPACITY * 2, 0);
        recycle_vec(big);
        assert_eq!(vec().capacity(), 0, "oversized buffers are not kept");
    }
}
