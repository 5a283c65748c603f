//! A per-thread scratch buffer for what is serialised only to be hashed, encrypted or copied
//! once: the edge serialises each 4 kB registration three times (its request hash, its
//! sealed personal block, the event), and `serde_json::to_vec` would grow a fresh vector for
//! each from 128 bytes by doubling, freeing the smaller ones on the way; `malloc`/`free` and
//! glibc's consolidation of those large freed chunks then show up as a large share of the
//! edge's CPU (the profile: docs/write-path.md).

use std::cell::RefCell;

/// Capacity kept between uses; a larger buffer (an unusually large value) is let go.
const KEPT: usize = 64 * 1024;

thread_local! {
    static SCRATCH: RefCell<Vec<u8>> = RefCell::new(Vec::with_capacity(8 * 1024));
}

/// Calls `f` with this thread's scratch buffer, empty. A nested call (`f` calling `with`), or
/// one while the thread is ending, gets a buffer of its own. What `f` wrote is zeroed after
/// it returns: the buffer lives as long as the thread, and a registration's JSON holds
/// personal data.
pub fn with<R>(f: impl FnOnce(&mut Vec<u8>) -> R) -> R {
    let mut f = Some(f);
    let shared = SCRATCH.try_with(|cell| {
        let mut buffer = cell.try_borrow_mut().ok()?;
        buffer.clear();
        let result = (f.take().expect("called once"))(&mut buffer);
        buffer.fill(0);
        if buffer.capacity() > KEPT {
            *buffer = Vec::with_capacity(8 * 1024);
        }
        Some(result)
    });
    match shared {
        Ok(Some(result)) => result,
        _ => (f.take().expect("not called yet"))(&mut Vec::new()),
    }
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
        // Nothing written stays readable in the buffer after its use: its bytes are zeroed
        // (kept, not truncated, until the next use clears them).
        json(&"personal", |_| ());
        SCRATCH.with(|cell| {
            let written = cell.borrow();
            assert_eq!(written.len(), r#""personal""#.len());
            assert!(written.iter().all(|b| *b == 0), "{written:?}");
        });
    }
}
