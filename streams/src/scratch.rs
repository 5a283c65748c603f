//! A per-thread scratch buffer for what is serialised only to be hashed, encrypted or copied
//! once: the edge serialises each 4 kB registration three times (its request hash, its
//! sealed personal block, the event), and `serde_json::to_vec` grew a fresh vector for each
//! from 128 bytes by doubling, freeing the smaller ones on the way. In a profile of the edge
//! at 4,500 registrations/s, `malloc`/`free` and glibc's chunk consolidation after those
//! large frees were a fifth of its CPU (docs/write-path.md).

use std::cell::RefCell;

/// Capacity kept between uses; a larger buffer (an unusually large value) is let go.
const KEPT: usize = 64 * 1024;

thread_local! {
    static SCRATCH: RefCell<Vec<u8>> = RefCell::new(Vec::with_capacity(8 * 1024));
}

/// Calls `f` with this thread's scratch buffer, empty. A nested call (`f` calling `with`)
/// gets a buffer of its own.
pub fn with<R>(f: impl FnOnce(&mut Vec<u8>) -> R) -> R {
    SCRATCH.with(|cell| match cell.try_borrow_mut() {
        Ok(mut buffer) => {
            buffer.clear();
            let result = f(&mut buffer);
            if buffer.capacity() > KEPT {
                *buffer = Vec::with_capacity(8 * 1024);
            }
            result
        }
        Err(_) => f(&mut Vec::new()),
    })
}

/// Serialises `value` as JSON into the scratch buffer and calls `f` with the bytes.
pub fn json<T: serde::Serialize + ?Sized, R>(value: &T, f: impl FnOnce(&[u8]) -> R) -> R {
    with(|buffer| {
        serde_json::to_writer(&mut *buffer, value).expect("the value serialises to JSON");
        f(buffer)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_use_starts_empty_and_nesting_gets_its_own_buffer() {
        let first = json(&serde_json::json!({"a": [1, 2]}), <[u8]>::to_vec);
        assert_eq!(first, br#"{"a":[1,2]}"#);
        // Shorter than the first: nothing of it may remain.
        assert_eq!(json(&1, <[u8]>::to_vec), b"1");
        let nested = with(|outer| {
            outer.extend_from_slice(b"outer");
            let inner = json(&"inner", <[u8]>::to_vec);
            (outer.clone(), inner)
        });
        assert_eq!(nested, (b"outer".to_vec(), br#""inner""#.to_vec()));
        // A large value is serialised whole, and the buffer kept afterwards is small again.
        let large = "x".repeat(KEPT * 2);
        assert_eq!(json(&large, |b| b.len()), large.len() + 2);
        SCRATCH.with(|cell| assert!(cell.borrow().capacity() <= KEPT));
    }
}
