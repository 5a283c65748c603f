//! Where accepted deliveries go: one `.eml` file per notification id for mail, one NDJSON
//! line per notification id for webhooks. Each transport's store is one lock held across
//! the duplicate check and the write, so two deliveries of one id never both store.

use std::collections::HashSet;
use std::io;
use std::path::{Path, PathBuf};

use anyhow::Context as _;
use tokio::io::AsyncWriteExt as _;

use crate::wire::is_valid_id;

/// The ids a transport has stored, loaded from its files when the receivers start.
#[derive(Debug, Default)]
pub(crate) struct Stored {
    ids: HashSet<String>,
}

impl Stored {
    pub(crate) fn contains(&self, id: &str) -> bool {
        self.ids.contains(id)
    }

    pub(crate) fn merge(&mut self, other: Stored) {
        self.ids.extend(other.ids);
    }
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

/// Appends `line` (one JSON object and its newline) to `file` unless `id` is already
/// stored: `Ok(true)` when appended, `Ok(false)` for a duplicate.
pub(crate) async fn store_webhook(
    stored: &mut Stored,
    file: &Path,
    id: &str,
    line: &[u8],
) -> io::Result<bool> {
    debug_assert!(line.ends_with(b"\n"));
    if stored.contains(id) {
        return Ok(false);
    }
    let mut out = tokio::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(file)
        .await?;
    out.write_all(line).await?;
    out.flush().await?;
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
        Err(error) if error.kind() == io::ErrorKind::NotFound => return Ok(stored),
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
    if !text.is_empty() && !text.ends_with(b"\n") {
        let mut out = tokio::fs::OpenOptions::new()
            .append(true)
            .open(file)
            .await?;
        out.write_all(b"\n").await?;
    }
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
        assert!(
            store_webhook(&mut stored, &file, "w-1", line)
                .await
                .unwrap()
        );
        assert!(
            !store_webhook(&mut stored, &file, "w-1", line)
                .await
                .unwrap()
        );
        // A crash in the middle of the next append.
        let mut out = std::fs::OpenOptions::new()
            .append(true)
            .open(&file)
            .unwrap();
        std::io::Write::write_all(&mut out, b"{\"notification_id\":\"w-").unwrap();
        let mut reloaded = load_webhook(&file).await.unwrap();
        assert!(reloaded.contains("w-1"));
        let line = b"{\"notification_id\":\"w-2\"}\n";
        assert!(
            store_webhook(&mut reloaded, &file, "w-2", line)
                .await
                .unwrap()
        );
        let text = std::fs::read_to_string(&file).unwrap();
        assert_eq!(
            text.lines().last(),
            Some("{\"notification_id\":\"w-2\"}"),
            "{text}"
        );
    }
}
