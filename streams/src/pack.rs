//! Packed records: many small records of one writer in one JetStream message.
//!
//! Some records are written one per delivery, by many handlers at once, and need no
//! condition and no order among themselves: a notification processor's record of each
//! message it sent. Published one by one, each costs a durable write of its own (with
//! `sync_interval: always`, about 140 µs of nats-server CPU and an fsync that the stream's
//! other writers queue behind); in an atomic batch each batch pays for a staging store of
//! its own on a single node (docs/write-path.md). A [`Packer`] is group commit of another
//! kind: whatever has queued while the previous write was in flight goes out as *one*
//! message per subject, a JSON array of envelopes, stored with one fsync.
//!
//! What a pack gives up, and why its records can afford it:
//! - **Per-record deduplication.** A pack carries no `Nats-Msg-Id`, so a write retried after
//!   a lost acknowledgement may store its records twice. Only records whose readers key them
//!   by an id of their own (a notification id) go in packs.
//! - **Per-record sequence.** The records of a pack share its stream sequence; their order
//!   inside it is the order they queued. Readers get them in that order
//!   ([`crate::consume`], [`crate::replay`]); a reader's checkpoint is the message's
//!   sequence, and a pack is always read and applied whole.
//!
//! A message holding one record is written as the plain envelope, as every other writer
//! writes it; readers of a subject that may carry packs decode every message through
//! [`crate::events::Envelope::decode_all_from`], which reads both.

use std::collections::HashMap;
use std::time::Duration;

use async_nats::HeaderMap;
use async_nats::jetstream;
use bytes::Bytes;
use tokio::sync::{mpsc, oneshot};

use crate::appender::AppendError;
use crate::events::Envelope;

/// Header on a pack (a message of two records or more): how many records it holds, so tools
/// can count without decoding.
pub const PACK_HEADER: &str = "Reg-Pack";

/// Whether a message's payload is a pack (a JSON array) rather than one envelope.
pub fn is_pack(payload: &[u8]) -> bool {
    payload
        .iter()
        .find(|b| !b.is_ascii_whitespace())
        .is_some_and(|b| *b == b'[')
}

/// Tuning of a [`Packer`].
#[derive(Debug, Clone)]
pub struct PackerOptions {
    /// Most records per message.
    pub max_records: usize,
    /// Most payload bytes per message (below the server's `max_payload`).
    pub max_bytes: usize,
    /// Callers that may wait at once; beyond it [`Packer::append`] waits for room.
    pub queue: usize,
    /// How long one write may take before its callers are told JetStream is unavailable.
    pub timeout: Duration,
}

impl Default for PackerOptions {
    /// Up to 512 records or 256 KiB per message: a notification record is about 400 bytes,
    /// and a message of a few hundred KiB is still one write of the disk's best size.
    fn default() -> Self {
        PackerOptions {
            max_records: 512,
            max_bytes: 256 * 1024,
            queue: 16_384,
            timeout: Duration::from_secs(5),
        }
    }
}

struct Pending {
    subject: String,
    record: Vec<u8>,
    event_type: &'static str,
    done: oneshot::Sender<Result<u64, AppendError>>,
}

/// Group commit into packs. Clone freely; all clones feed one background task, which stops
/// when the last clone is dropped. One write is in flight at a time (one message per subject
/// queued), so under load packs fill while the previous one is stored, and when idle a record
/// goes out at once, alone.
#[derive(Clone)]
pub struct Packer {
    tx: mpsc::Sender<Pending>,
}

impl Packer {
    /// Starts the background task writing through `client`.
    pub fn start(client: async_nats::Client, options: PackerOptions) -> Self {
        let (tx, rx) = mpsc::channel(options.queue.max(1));
        tokio::spawn(run(client, options, rx));
        Packer { tx }
    }

    /// Appends `envelope` to `subject` and waits until JetStream durably stored the message
    /// holding it; returns that message's sequence. On [`AppendError::Unavailable`] the
    /// record may or may not be stored (a retry may store it twice; see the module).
    pub async fn append(&self, subject: String, envelope: &Envelope) -> Result<u64, AppendError> {
        let (done, wait) = oneshot::channel();
        let pending = Pending {
            subject,
            record: envelope.encode(),
            event_type: envelope.event.event_type(),
            done,
        };
        self.tx
            .send(pending)
            .await
            .map_err(|_| AppendError::Unavailable("the packer stopped".into()))?;
        wait.await
            .map_err(|_| AppendError::Unavailable("the packer stopped".into()))?
    }
}

async fn run(client: async_nats::Client, options: PackerOptions, mut rx: mpsc::Receiver<Pending>) {
    let js = jetstream::ContextBuilder::new()
        .timeout(options.timeout)
        .build(client);
    let max_records = options.max_records.max(1);
    // A record taken from the queue that did not fit in the last pack of its subject.
    let mut carried: Vec<Pending> = Vec::new();
    loop {
        let mut queued = std::mem::take(&mut carried);
        if queued.is_empty() && rx.recv_many(&mut queued, max_records).await == 0 {
            return;
        }
        while queued.len() < max_records {
            match rx.try_recv() {
                Ok(p) => queued.push(p),
                Err(_) => break,
            }
        }
        let (packs, rest) = packs_of(queued, max_records, options.max_bytes);
        carried = rest;
        futures::future::join_all(packs.into_iter().map(|pack| write(&js, pack))).await;
    }
}

/// Splits what queued into one pack per subject, in order of arrival; what does not fit in
/// its subject's pack waits for the next write.
fn packs_of(
    queued: Vec<Pending>,
    max_records: usize,
    max_bytes: usize,
) -> (Vec<Vec<Pending>>, Vec<Pending>) {
    let mut packs: Vec<Vec<Pending>> = Vec::new();
    let mut sizes: Vec<usize> = Vec::new();
    let mut by_subject: HashMap<String, usize> = HashMap::new();
    let mut rest = Vec::new();
    for p in queued {
        let size = p.record.len() + 1;
        match by_subject.get(&p.subject) {
            Some(&i) if packs[i].len() >= max_records || sizes[i] + size > max_bytes => {
                rest.push(p)
            }
            Some(&i) => {
                sizes[i] += size;
                packs[i].push(p);
            }
            None => {
                by_subject.insert(p.subject.clone(), packs.len());
                sizes.push(size + 1);
                packs.push(vec![p]);
            }
        }
    }
    (packs, rest)
}

/// The message holding `records`: the plain envelope for one, a JSON array for more.
fn payload(records: &[Vec<u8>]) -> Bytes {
    if let [one] = records {
        return Bytes::copy_from_slice(one);
    }
    let mut out = Vec::with_capacity(records.iter().map(|r| r.len() + 1).sum::<usize>() + 1);
    out.push(b'[');
    for (i, record) in records.iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        out.extend_from_slice(record);
    }
    out.push(b']');
    out.into()
}

async fn write(js: &jetstream::Context, pack: Vec<Pending>) {
    let subject = pack[0].subject.clone();
    let mut headers = HeaderMap::new();
    let first_type = pack[0].event_type;
    if pack.iter().all(|p| p.event_type == first_type) {
        headers.insert(crate::subjects::EVENT_TYPE_HEADER, first_type);
    }
    if pack.len() > 1 {
        headers.insert(PACK_HEADER, pack.len().to_string().as_str());
    }
    let (records, waiting): (Vec<_>, Vec<_>) = pack.into_iter().map(|p| (p.record, p.done)).unzip();
    let stored = async {
        js.publish_with_headers(subject, headers, payload(&records))
            .await?
            .await
    }
    .await
    .map(|ack| ack.sequence)
    .map_err(crate::appender::classify);
    for done in waiting {
        let _ = done.send(stored.clone());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pending(subject: &str, len: usize) -> Pending {
        Pending {
            subject: subject.into(),
            record: vec![b'x'; len],
            event_type: "NotificationSent",
            done: oneshot::channel().0,
        }
    }

    #[test]
    fn one_pack_per_subject_in_order_of_arrival() {
        let queued = vec![pending("a", 10), pending("b", 10), pending("a", 10)];
        let (packs, rest) = packs_of(queued, 10, 1000);
        assert_eq!(packs.len(), 2);
        assert_eq!(packs[0].len(), 2);
        assert_eq!(packs[0][0].subject, "a");
        assert_eq!(packs[1][0].subject, "b");
        assert!(rest.is_empty());
    }

    #[test]
    fn what_does_not_fit_waits_for_the_next_write() {
        let (packs, rest) = packs_of((0..5).map(|_| pending("a", 10)).collect(), 3, 1000);
        assert_eq!((packs[0].len(), rest.len()), (3, 2));
        let (packs, rest) = packs_of((0..5).map(|_| pending("a", 100)).collect(), 10, 250);
        assert_eq!((packs[0].len(), rest.len()), (2, 3));
        // A record larger than the limit still goes, alone: a pack never stalls on it.
        let (packs, rest) = packs_of(vec![pending("a", 500)], 10, 250);
        assert_eq!((packs[0].len(), rest.len()), (1, 0));
    }

    #[test]
    fn a_single_record_is_written_plain_and_more_as_an_array() {
        assert_eq!(&payload(&[b"{\"a\":1}".to_vec()])[..], b"{\"a\":1}");
        let two = payload(&[b"{\"a\":1}".to_vec(), b"{\"b\":2}".to_vec()]);
        assert_eq!(&two[..], b"[{\"a\":1},{\"b\":2}]");
        assert!(is_pack(&two) && !is_pack(b" {\"a\":1}"));
    }
}
