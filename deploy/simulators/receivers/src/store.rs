//! Where accepted deliveries go: for mail, one `.eml` file per notification id (the
//! default) or one message appended to a single mbox file ([`MailStore::Mbox`]); for
//! webhooks, one NDJSON line per notification id. Each transport's store is one lock held
//! across the duplicate check and the write, so two deliveries of one id never both store.
//!
//! Why an mbox: a file per message costs a new inode per message, and on a file system
//! without a journal that is 0.3 to 1 ms of CPU each (ext4 skips recently deleted inodes one
//! by one while it looks for a free one), which made the stand-in cost more than the
//! system it stands beside. Appending to one open file costs a write.

use std::collections::HashSet;
use std::io;
use std::path::{Path, PathBuf};

use anyhow::Context as _;

use crate::wire::is_valid_id;

/// How the SMTP sink keeps messages.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum MailStore {
    /// One `<mail dir>/<notification id>.eml` per message, written aside and renamed.
    #[default]
    Files,
    /// Every message appended to `<mail dir>/messages.mbox` (mboxrd: a `From ` line before
    /// each, lines of the message that start with `From ` or `>From ` quoted with one more
    /// `>`), for a sink that costs a write per message rather than a file.
    Mbox,
}

/// The ids a transport has stored, loaded from its files when the receivers start, and the
/// file it appends to, kept open (the mbox when mail is kept in one, the webhook's
/// deliveries): opening it per message cost more than the write.
#[derive(Debug, Default)]
pub(crate) struct Stored {
    ids: HashSet<String>,
    file: Option<std::fs::File>,
}

impl Stored {
    pub(crate) fn contains(&self, id: &str) -> bool {
        self.ids.contains(id)
    }

    pub(crate) fn merge(&mut self, other: Stored) {
        self.ids.extend(other.ids);
        if other.file.is_some() {
            self.file = other.file;
        }
    }
}

/// The mbox file under `mail_dir`.
pub(crate) fn mbox_file(mail_dir: &Path) -> PathBuf {
    mail_dir.join("messages.mbox")
}

/// Appends `raw` to the open mbox unless `id` is already stored: `Ok(true)` when appended,
/// `Ok(false)` for a duplicate. One `write` of the whole quoted message to a file opened for
/// appending, on the calling thread: a page-cache write of a few kilobytes, cheaper than a
/// hop to the blocking pool.
pub(crate) fn store_mbox(stored: &mut Stored, id: &str, raw: &[u8]) -> io::Result<bool> {
    use std::io::Write as _;
    if stored.contains(id) {
        return Ok(false);
    }
    let file = stored
        .file
        .as_mut()
        .ok_or_else(|| io::Error::other("the mbox is not open"))?;
    file.write_all(&mboxrd(raw))?;
    stored.ids.insert(id.to_owned());
    Ok(true)
}

/// One message as mboxrd stores it: the `From ` separator line, the message with its line
/// ends as LF and every line matching `>*From ` quoted with one more `>`, and an empty line.
fn mboxrd(raw: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(raw.len() + 64);
    out.extend_from_slice(b"From receivers@localhost Thu Jan  1 00:00:00 1970\n");
    let text = raw.strip_suffix(b"\n").unwrap_or(raw);
    for line in text.split(|b| *b == b'\n') {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        let unquoted = line.iter().position(|b| *b != b'>').unwrap_or(line.len());
        if line[unquoted..].starts_with(b"From ") {
            out.push(b'>');
        }
        out.extend_from_slice(line);
        out.push(b'\n');
    }
    out.push(b'\n');
    out
}

/// Opens (creating) the mbox under `mail_dir` for appending and finds the notification ids in
/// it. A last message cut short by a crash (the file does not end with a message's closing
/// empty line) is cut off, so the next message starts clean and the cut one counts as never
/// stored.
pub(crate) async fn load_mbox(mail_dir: &Path) -> anyhow::Result<Stored> {
    let mail_dir = mail_dir.to_owned();
    tokio::task::spawn_blocking(move || load_mbox_blocking(&mail_dir))
        .await
        .context("loading the mbox")?
}

fn load_mbox_blocking(mail_dir: &Path) -> anyhow::Result<Stored> {
    std::fs::create_dir_all(mail_dir)
        .with_context(|| format!("creating {}", mail_dir.display()))?;
    let path = mbox_file(mail_dir);
    let text = match std::fs::read(&path) {
        Ok(text) => text,
        Err(error) if error.kind() == io::ErrorKind::NotFound => Vec::new(),
        Err(error) => return Err(error).with_context(|| format!("reading {}", path.display())),
    };
    let (ids, complete) = mbox_ids(&text);
    let file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&path)
        .with_context(|| format!("opening {}", path.display()))?;
    if complete < text.len() {
        tracing::warn!(file = %path.display(), cut = text.len() - complete, "cutting off a message the last run did not finish");
        file.set_len(complete as u64)
            .with_context(|| format!("truncating {}", path.display()))?;
    }
    Ok(Stored {
        ids,
        file: Some(file),
    })
}

/// The notification ids of the complete messages in an mbox's text, and where the complete
/// messages end (a message is complete when the next `From ` line, or the end of the text,
/// follows its closing empty line).
fn mbox_ids(text: &[u8]) -> (HashSet<String>, usize) {
    let header = format!(
        "{}:",
        crate::wire::NOTIFICATION_ID_HEADER.to_ascii_lowercase()
    );
    let mut ids = HashSet::new();
    let mut complete = 0;
    let mut current: Option<String> = None;
    let mut in_headers = false;
    let mut offset = 0;
    let mut previous_empty = true;
    for line in text.split_inclusive(|b| *b == b'\n') {
        let body = line.strip_suffix(b"\n").unwrap_or(line);
        if line.starts_with(b"From ") && previous_empty {
            if let Some(id) = current.take() {
                ids.insert(id);
            }
            complete = offset;
            current = Some(String::new());
            in_headers = true;
        } else if in_headers && body.is_empty() {
            in_headers = false;
        } else if in_headers
            && let Ok(text) = std::str::from_utf8(body)
            && text.to_ascii_lowercase().starts_with(&header)
            && let Some(id) = current.as_mut()
        {
            *id = text[header.len()..].trim().to_owned();
        }
        previous_empty = body.is_empty();
        offset += line.len();
    }
    if text.ends_with(b"\n\n") || text.is_empty() {
        if let Some(id) = current.take() {
            ids.insert(id);
        }
        complete = text.len();
    }
    ids.retain(|id| !id.is_empty());
    (ids, complete)
}

/// Writes `raw` as `<mail_dir>/<id>.eml` unless `id` is already stored: `Ok(true)` when
/// written, `Ok(false)` for a duplicate. The file appears whole (written aside, then
/// renamed). `id` must be valid ([`is_valid_id`]): it is a file name.
pub(crate) async fn store_mail(
    stored: &mut Stored,
    mail_dir: &Path,
    id: &str,
    raw: &[u8],
) -> io::Result<bool> {
    debug_assert!(is_valid_id(id));
    if stored.contains(id) {
        return Ok(false);
    }
    let path = mail_dir.join(format!("{id}.eml"));
    let partial = mail_dir.join(format!("{id}.eml.partial"));
    tokio::fs::write(&partial, raw).await?;
    tokio::fs::rename(&partial, &path).await?;
    stored.ids.insert(id.to_owned());
    Ok(true)
}

/// Appends `line` (one JSON object and its newline) to the open deliveries file unless `id`
/// is already stored: `Ok(true)` when appended, `Ok(false)` for a duplicate.
pub(crate) fn store_webhook(stored: &mut Stored, id: &str, line: &[u8]) -> io::Result<bool> {
    use std::io::Write as _;
    debug_assert!(line.ends_with(b"\n"));
    if stored.contains(id) {
        return Ok(false);
    }
    let file = stored
        .file
        .as_mut()
        .ok_or_else(|| io::Error::other("the webhook file is not open"))?;
    file.write_all(line)?;
    stored.ids.insert(id.to_owned());
    Ok(true)
}

/// Creates the mail directory and finds the notification ids already stored in it (files
/// `<id>.eml`; leftovers of an interrupted write are ignored).
pub(crate) async fn load_mail(mail_dir: &Path) -> anyhow::Result<Stored> {
    tokio::fs::create_dir_all(mail_dir)
        .await
        .with_context(|| format!("creating {}", mail_dir.display()))?;
    let mut stored = Stored::default();
    let mut entries = tokio::fs::read_dir(mail_dir)
        .await
        .with_context(|| format!("reading {}", mail_dir.display()))?;
    while let Some(entry) = entries.next_entry().await? {
        let name = entry.file_name();
        if let Some(id) = name.to_str().and_then(|name| name.strip_suffix(".eml"))
            && is_valid_id(id)
        {
            stored.ids.insert(id.to_owned());
        }
    }
    Ok(stored)
}

/// Creates the webhook directory and finds the notification ids already in `file`. A last
/// line cut short (a write interrupted by a crash) is ended with a newline, so the next
/// delivery starts a line of its own; lines that do not parse are skipped with a warning.
pub(crate) async fn load_webhook(file: &Path) -> anyhow::Result<Stored> {
    let dir = file.parent().unwrap_or(Path::new("."));
    tokio::fs::create_dir_all(dir)
        .await
        .with_context(|| format!("creating {}", dir.display()))?;
    let mut stored = Stored::default();
    let text = match tokio::fs::read(file).await {
        Ok(text) => text,
        Err(error) if error.kind() == io::ErrorKind::NotFound => Vec::new(),
        Err(error) => return Err(error).with_context(|| format!("reading {}", file.display())),
    };
    for (number, line) in text.split(|byte| *byte == b'\n').enumerate() {
        if line.is_empty() {
            continue;
        }
        let id = serde_json::from_slice::<serde_json::Value>(line)
            .ok()
            .and_then(|value| value.get("notification_id")?.as_str().map(str::to_owned));
        match id {
            Some(id) => {
                stored.ids.insert(id);
            }
            None => tracing::warn!(
                file = %file.display(),
                line = number + 1,
                "skipping a line that is not a webhook delivery"
            ),
        }
    }
    let mut out = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(file)
        .with_context(|| format!("opening {}", file.display()))?;
    if !text.is_empty() && !text.ends_with(b"\n") {
        std::io::Write::write_all(&mut out, b"\n")?;
    }
    stored.file = Some(out);
    Ok(stored)
}

/// `<dir>/mail`.
pub(crate) fn mail_dir(dir: &Path) -> PathBuf {
    dir.join("mail")
}

/// `<dir>/webhook/deliveries.ndjson`.
pub(crate) fn webhook_file(dir: &Path) -> PathBuf {
    dir.join("webhook").join("deliveries.ndjson")
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Given messages appended to an mbox, one of them with a line that starts like an mbox
    /// separator, and a last one cut short by a crash, when the sink starts again, then the
    /// complete messages count as stored, the cut one does not and is cut off the file, and
    /// the quoting kept every message's own lines apart from the separators.
    #[tokio::test]
    async fn an_mbox_survives_a_restart_and_a_torn_message() {
        let dir = tempfile::tempdir().unwrap();
        let mail = mail_dir(dir.path());
        let message = |id: &str, body: &str| {
            format!("X-Notification-Id: {id}\r\nSubject: s\r\n\r\n{body}\r\n").into_bytes()
        };
        let mut stored = load_mbox(&mail).await.unwrap();
        assert!(store_mbox(&mut stored, "m-1", &message("m-1", "hello")).unwrap());
        assert!(!store_mbox(&mut stored, "m-1", &message("m-1", "again")).unwrap());
        let tricky = message("m-2", "first\r\n\r\nFrom here on\r\n>From there");
        assert!(store_mbox(&mut stored, "m-2", &tricky).unwrap());
        drop(stored);
        let whole = std::fs::read(mbox_file(&mail)).unwrap();
        let text = String::from_utf8(whole.clone()).unwrap();
        assert!(text.contains("\n>From here on\n>>From there\n"), "{text}");
        assert_eq!(text.matches("\nFrom ").count() + 1, 2, "{text}");

        // A crash in the middle of the next message.
        let mut out = std::fs::OpenOptions::new()
            .append(true)
            .open(mbox_file(&mail))
            .unwrap();
        std::io::Write::write_all(&mut out, b"From x\nX-Notification-Id: m-3\n\nhal").unwrap();
        let mut reloaded = load_mbox(&mail).await.unwrap();
        assert!(reloaded.contains("m-1") && reloaded.contains("m-2"));
        assert!(!reloaded.contains("m-3"));
        assert_eq!(std::fs::read(mbox_file(&mail)).unwrap(), whole);
        assert!(store_mbox(&mut reloaded, "m-3", &message("m-3", "whole")).unwrap());
        drop(reloaded);
        let reloaded = load_mbox(&mail).await.unwrap();
        assert!(reloaded.contains("m-3"));
    }

    #[tokio::test]
    async fn stores_survive_a_restart_and_a_torn_line() {
        let dir = tempfile::tempdir().unwrap();
        let mail = mail_dir(dir.path());
        let file = webhook_file(dir.path());

        let mut stored = load_mail(&mail).await.unwrap();
        assert!(store_mail(&mut stored, &mail, "n-1", b"raw").await.unwrap());
        assert!(
            !store_mail(&mut stored, &mail, "n-1", b"other")
                .await
                .unwrap()
        );
        assert_eq!(std::fs::read(mail.join("n-1.eml")).unwrap(), b"raw");
        std::fs::write(mail.join("n-2.eml.partial"), b"cut").unwrap();
        let reloaded = load_mail(&mail).await.unwrap();
        assert!(reloaded.contains("n-1"));
        assert!(!reloaded.contains("n-2"));

        let mut stored = load_webhook(&file).await.unwrap();
        let line = b"{\"notification_id\":\"w-1\"}\n";
        assert!(store_webhook(&mut stored, "w-1", line).unwrap());
        assert!(!store_webhook(&mut stored, "w-1", line).unwrap());
        // A crash in the middle of the next append.
        let mut out = std::fs::OpenOptions::new()
            .append(true)
            .open(&file)
            .unwrap();
        std::io::Write::write_all(&mut out, b"{\"notification_id\":\"w-").unwrap();
        let mut reloaded = load_webhook(&file).await.unwrap();
        assert!(reloaded.contains("w-1"));
        let line = b"{\"notification_id\":\"w-2\"}\n";
        assert!(store_webhook(&mut reloaded, "w-2", line).unwrap());
        let text = std::fs::read_to_string(&file).unwrap();
        assert_eq!(
            text.lines().last(),
            Some("{\"notification_id\":\"w-2\"}"),
            "{text}"
        );
    }
}
