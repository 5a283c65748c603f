//! Snapshots of a region's reservation state, so a replica takes a region over in bounded
//! time however long its decision log has grown.
//!
//! A snapshot is the [`State`] folded from the region's decisions up to one decision (its
//! stream sequence, [`Header::decision_seq`]) together with the operators' capacities and
//! closed waiting lists up to the state's checkpoint: exactly what a full fold of the log up
//! to that decision gives. A replica that takes the region over loads it, checks it against
//! the log (the decision at `decision_seq` must be on the region's decision subject and its
//! payload must hash to [`Header::decision_digest`]), then folds only the decisions after it
//! and the settings after its checkpoint. A snapshot that is missing, of a newer format,
//! corrupt or not matching the log is ignored (and logged): the replica folds the whole log.
//! A snapshot is therefore only ever a shortcut; the log stays the truth.
//!
//! Who writes one does not matter: the decider writes it right after a successful fenced
//! write, when its state is exactly the fold of the log up to that write. Even a stale
//! replica (one about to be fenced) only ever snapshots a prefix of the log that it wrote or
//! read, which is still a valid starting point for the fold.
//!
//! The encoding is compact and versioned ([`FORMAT_VERSION`]): a magic, a header, the slot
//! keys once, the registrations referring to slots by index, then each slot's books referring
//! to registrations by index. Integers are LEB128 varints. The object store adds a SHA-256 of
//! the whole object, checked on every read.

use std::collections::{BTreeMap, HashMap};

use chrono::{Datelike as _, NaiveDate};
use sha2::{Digest, Sha256};
use streams::model::{Location, Region, RegistrationId, SlotKey};

use super::decide::{Known, Slot, Standing, State};

/// The format this code writes; it reads this one and refuses newer ones.
pub const FORMAT_VERSION: u32 = 1;

/// The first bytes of every snapshot.
const MAGIC: &[u8; 8] = b"REGSNAP\n";

/// What a snapshot says about itself: which point of the log it stands for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Header {
    /// The format of what follows.
    pub version: u32,
    /// The region.
    pub region: Region,
    /// Stream sequence (in the decisions stream) of the last decision folded in.
    pub decision_seq: u64,
    /// SHA-256 of that decision's stored payload: ties the snapshot to this very log.
    pub decision_digest: [u8; 32],
    /// The state's checkpoint: the highest intake sequence its decisions answered.
    pub checkpoint: u64,
}

/// Why a snapshot could not be read.
#[derive(Debug, thiserror::Error)]
pub enum SnapshotError {
    /// Not a snapshot at all.
    #[error("not a snapshot (bad magic)")]
    Magic,
    /// Written by a newer version of this code: its meaning is unknown here.
    #[error("snapshot format {0} is newer than this code's {FORMAT_VERSION}")]
    NewerFormat(u32),
    /// Cut short, or a field out of range.
    #[error("corrupt snapshot: {0}")]
    Corrupt(String),
}

fn corrupt(what: impl Into<String>) -> SnapshotError {
    SnapshotError::Corrupt(what.into())
}

/// SHA-256 of a stored decision's payload, as recorded in [`Header::decision_digest`].
pub fn digest(payload: &[u8]) -> [u8; 32] {
    Sha256::digest(payload).into()
}

/// Encodes `state` under `header` (whose `checkpoint` must be the state's).
pub fn encode(header: &Header, state: &State) -> Vec<u8> {
    let mut out = encode_header(header);
    out.extend_from_slice(&encode_body(state));
    out
}

/// The header's bytes; a snapshot is these followed by [`encode_body`]'s.
pub fn encode_header(header: &Header) -> Vec<u8> {
    let mut out = Vec::with_capacity(96);
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(&header.version.to_le_bytes());
    put_str(&mut out, header.region.as_str());
    put_u64(&mut out, header.decision_seq);
    out.extend_from_slice(&header.decision_digest);
    put_u64(&mut out, header.checkpoint);
    out
}

/// The state's bytes: slot keys, registrations, books.
pub fn encode_body(state: &State) -> Vec<u8> {
    let mut body = Vec::with_capacity(64 + state.registrations.len() * 96);
    encode_state(&mut body, state);
    body
}

fn encode_state(out: &mut Vec<u8>, state: &State) {
    // Slot keys: those with books first (their books follow in this order), then any slot
    // only a registration names (a rejection for a slot nobody ever set up).
    let mut slot_keys: Vec<&SlotKey> = state.slots.keys().collect();
    let mut slot_index: HashMap<&SlotKey, u64> = slot_keys
        .iter()
        .enumerate()
        .map(|(i, k)| (*k, i as u64))
        .collect();
    for known in state.registrations.values() {
        if !slot_index.contains_key(&known.slot) {
            slot_index.insert(&known.slot, slot_keys.len() as u64);
            slot_keys.push(&known.slot);
        }
    }
    put_u64(out, slot_keys.len() as u64);
    put_u64(out, state.slots.len() as u64);
    for key in &slot_keys {
        put_str(out, key.region.as_str());
        put_str(out, key.location.as_str());
        put_u64(out, zigzag(i64::from(key.date.num_days_from_ce())));
    }

    put_u64(out, state.registrations.len() as u64);
    let mut reg_index: HashMap<&RegistrationId, u64> =
        HashMap::with_capacity(state.registrations.len());
    for (i, (id, known)) in state.registrations.iter().enumerate() {
        reg_index.insert(id, i as u64);
        put_str(out, id.as_str());
        put_u64(out, slot_index[&known.slot]);
        put_u64(out, known.submission_seq);
        put_str(out, &known.citizen_key);
        let (tag, seq) = match known.standing {
            Standing::Waiting { seq } => (0, Some(seq)),
            Standing::Reserved { seq } => (1, Some(seq)),
            Standing::Review { seq } => (2, Some(seq)),
            Standing::Confirmed { seq } => (3, Some(seq)),
            Standing::Rejected => (4, None),
            Standing::Cancelled => (5, None),
        };
        out.push(tag);
        if let Some(seq) = seq {
            put_u64(out, seq);
        }
    }

    for key in &slot_keys[..state.slots.len()] {
        let slot = &state.slots[*key];
        match slot.capacity {
            Some(capacity) => {
                out.push(1);
                put_u64(out, u64::from(capacity));
            }
            None => out.push(0),
        }
        out.push(u8::from(slot.closed));
        for line in [&slot.holders, &slot.waiting] {
            put_u64(out, line.len() as u64);
            for (seq, id) in line {
                put_u64(out, *seq);
                // A registration in a slot's books is always known; if it somehow were
                // not, the snapshot would be refused on reading, never wrong.
                put_u64(out, reg_index.get(id).copied().unwrap_or(u64::MAX));
            }
        }
    }
}

/// Reads the header only (cheap: to decide whether the snapshot is worth decoding).
pub fn decode_header(bytes: &[u8]) -> Result<Header, SnapshotError> {
    let mut r = Reader { bytes, at: 0 };
    read_header(&mut r)
}

/// Decodes a snapshot: its header and the state (whose policy is the default: the replica
/// sets its own).
pub fn decode(bytes: &[u8]) -> Result<(Header, State), SnapshotError> {
    let mut r = Reader { bytes, at: 0 };
    let header = read_header(&mut r)?;
    let mut state = State {
        checkpoint: header.checkpoint,
        ..State::default()
    };

    let key_count = r.len()?;
    let with_books = r.len()?;
    if with_books > key_count {
        return Err(corrupt("more slots with books than slot keys"));
    }
    let mut slot_keys = Vec::with_capacity(key_count);
    for _ in 0..key_count {
        let region = Region::parse(r.str()?).map_err(|e| corrupt(e.to_string()))?;
        let location = Location::parse(r.str()?).map_err(|e| corrupt(e.to_string()))?;
        let days = i32::try_from(unzigzag(r.u64()?)).map_err(|_| corrupt("date"))?;
        let date = NaiveDate::from_num_days_from_ce_opt(days).ok_or_else(|| corrupt("date"))?;
        slot_keys.push(SlotKey {
            region,
            location,
            date,
        });
    }

    let registration_count = r.len()?;
    let mut ids = Vec::with_capacity(registration_count);
    state.registrations.reserve(registration_count);
    for _ in 0..registration_count {
        let id = RegistrationId::parse(r.str()?).map_err(|e| corrupt(e.to_string()))?;
        let slot = slot_keys
            .get(usize::try_from(r.u64()?).map_err(|_| corrupt("slot index"))?)
            .ok_or_else(|| corrupt("slot index"))?
            .clone();
        let submission_seq = r.u64()?;
        let citizen_key = r.str()?.to_owned();
        let standing = match r.byte()? {
            0 => Standing::Waiting { seq: r.u64()? },
            1 => Standing::Reserved { seq: r.u64()? },
            2 => Standing::Review { seq: r.u64()? },
            3 => Standing::Confirmed { seq: r.u64()? },
            4 => Standing::Rejected,
            5 => Standing::Cancelled,
            tag => return Err(corrupt(format!("standing {tag}"))),
        };
        let known = Known {
            slot,
            submission_seq,
            citizen_key,
            standing,
        };
        if state.registrations.insert(id.clone(), known).is_some() {
            return Err(corrupt("a registration twice"));
        }
        ids.push(id);
    }

    state.slots.reserve(with_books);
    for key in slot_keys.into_iter().take(with_books) {
        let capacity = match r.byte()? {
            0 => None,
            1 => Some(u32::try_from(r.u64()?).map_err(|_| corrupt("capacity"))?),
            _ => return Err(corrupt("capacity flag")),
        };
        let closed = match r.byte()? {
            0 => false,
            1 => true,
            _ => return Err(corrupt("closed flag")),
        };
        let mut lines = [BTreeMap::new(), BTreeMap::new()];
        for line in &mut lines {
            for _ in 0..r.len()? {
                let seq = r.u64()?;
                let index = usize::try_from(r.u64()?).map_err(|_| corrupt("index"))?;
                let id = ids
                    .get(index)
                    .ok_or_else(|| corrupt("registration index"))?;
                line.insert(seq, id.clone());
            }
        }
        let [holders, waiting] = lines;
        let slot = Slot {
            capacity,
            holders,
            waiting,
            closed,
        };
        if state.slots.insert(key, slot).is_some() {
            return Err(corrupt("a slot twice"));
        }
    }
    if r.at != bytes.len() {
        return Err(corrupt("trailing bytes"));
    }
    Ok((header, state))
}

fn read_header(r: &mut Reader<'_>) -> Result<Header, SnapshotError> {
    if r.take(MAGIC.len()).ok() != Some(MAGIC.as_slice()) {
        return Err(SnapshotError::Magic);
    }
    let version = u32::from_le_bytes(r.take(4)?.try_into().expect("four bytes"));
    if version > FORMAT_VERSION {
        return Err(SnapshotError::NewerFormat(version));
    }
    if version != FORMAT_VERSION {
        return Err(corrupt(format!("unknown format {version}")));
    }
    let region = Region::parse(r.str()?).map_err(|e| corrupt(e.to_string()))?;
    let decision_seq = r.u64()?;
    let decision_digest = r.take(32)?.try_into().expect("32 bytes");
    let checkpoint = r.u64()?;
    Ok(Header {
        version,
        region,
        decision_seq,
        decision_digest,
        checkpoint,
    })
}

fn put_u64(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

fn put_str(out: &mut Vec<u8>, s: &str) {
    put_u64(out, s.len() as u64);
    out.extend_from_slice(s.as_bytes());
}

fn zigzag(v: i64) -> u64 {
    ((v << 1) ^ (v >> 63)) as u64
}

fn unzigzag(v: u64) -> i64 {
    ((v >> 1) as i64) ^ -((v & 1) as i64)
}

/// A strict reader: every read is bounds-checked, lengths are checked against what is left.
struct Reader<'a> {
    bytes: &'a [u8],
    at: usize,
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], SnapshotError> {
        let end = self
            .at
            .checked_add(n)
            .filter(|end| *end <= self.bytes.len())
            .ok_or_else(|| corrupt("cut short"))?;
        let out = &self.bytes[self.at..end];
        self.at = end;
        Ok(out)
    }

    fn byte(&mut self) -> Result<u8, SnapshotError> {
        Ok(self.take(1)?[0])
    }

    fn u64(&mut self) -> Result<u64, SnapshotError> {
        let mut v = 0u64;
        for shift in (0..64).step_by(7) {
            let b = self.byte()?;
            v |= u64::from(b & 0x7f) << shift;
            if b & 0x80 == 0 {
                return Ok(v);
            }
        }
        Err(corrupt("varint too long"))
    }

    /// A count of things still to read: never more than the bytes left (each takes at
    /// least one), so a corrupt count cannot make a huge allocation.
    fn len(&mut self) -> Result<usize, SnapshotError> {
        let n = self.u64()?;
        usize::try_from(n)
            .ok()
            .filter(|n| *n <= self.bytes.len() - self.at)
            .ok_or_else(|| corrupt("count beyond the bytes left"))
    }

    fn str(&mut self) -> Result<&'a str, SnapshotError> {
        let n = self.len()?;
        std::str::from_utf8(self.take(n)?).map_err(|_| corrupt("not UTF-8"))
    }
}
