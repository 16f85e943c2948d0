//! The JSON-lines file sink.
//!
//! Owns: appending committed records (and checkpoints) to one file, one JSON object per
//! line, fsyncing after each batch; finding where the file ends after a crash (a torn last
//! line is cut off) so the chain can copy what is missing.
//!
//! Must never: rewrite or reorder lines already in the file (opened with `O_APPEND`; the
//! only change to existing bytes is cutting a torn, unterminated last line).

use std::fs::{File, OpenOptions};
use std::io::{BufWriter, Read, Seek, SeekFrom, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use tokio::sync::mpsc;

use super::{item_lines, Counters, SinkItem};
use crate::record::AuditRecord;
use crate::AuditError;

fn io_err(path: &Path, e: std::io::Error) -> AuditError {
    AuditError::Sink(format!("audit file sink {}: {e}", path.display()))
}

/// Open the file for appending (created 0600 if missing).
pub(crate) fn open_append(path: &Path) -> Result<File, AuditError> {
    if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::create_dir_all(parent).map_err(|e| io_err(path, e))?;
    }
    OpenOptions::new()
        .create(true)
        .append(true)
        .mode(0o600)
        .open(path)
        .map_err(|e| io_err(path, e))
}

/// Start the sink's thread (blocking file I/O stays off the async runtime).
pub(crate) fn spawn(
    path: &Path,
    rx: mpsc::UnboundedReceiver<SinkItem>,
    counters: Arc<Counters>,
) -> Result<(), AuditError> {
    let file = open_append(path)?;
    let shown = path.display().to_string();
    std::thread::Builder::new()
        .name("audit-file-sink".into())
        .spawn(move || run(file, &shown, rx, &counters))
        .map_err(|e| io_err(path, e))?;
    Ok(())
}

fn run(file: File, path: &str, mut rx: mpsc::UnboundedReceiver<SinkItem>, counters: &Counters) {
    let mut w = BufWriter::with_capacity(1 << 20, file);
    while let Some(first) = rx.blocking_recv() {
        let mut items = vec![first];
        while items.len() < 4096 {
            match rx.try_recv() {
                Ok(item) => items.push(item),
                Err(_) => break,
            }
        }
        let mut n = 0_u64;
        let mut result = Ok(());
        for item in &items {
            n += item.len();
            for line in item_lines(item) {
                if result.is_ok() {
                    result = w
                        .write_all(line.as_bytes())
                        .and_then(|()| w.write_all(b"\n"));
                }
            }
        }
        let result = result
            .and_then(|()| w.flush())
            .and_then(|()| w.get_ref().sync_data());
        match result {
            Ok(()) => {
                counters.delivered.fetch_add(n, Ordering::Relaxed);
            }
            Err(e) => {
                counters.errors.fetch_add(1, Ordering::Relaxed);
                counters.dropped.fetch_add(n, Ordering::Relaxed);
                tracing::error!(path, error = %e, "audit file sink write failed");
            }
        }
        // Dropping the items releases their buffer permits; flushes are answered after
        // everything before them is on disk.
        for item in items {
            if let SinkItem::Flush(done) = item {
                let _ = done.send(());
            }
        }
    }
}

/// Append records to the file and fsync (catching up after a restart).
pub(crate) fn append_records(path: &Path, records: &[AuditRecord]) -> Result<(), AuditError> {
    let file = open_append(path)?;
    let mut w = BufWriter::new(file);
    for r in records {
        w.write_all(r.to_json_line().as_bytes())
            .and_then(|()| w.write_all(b"\n"))
            .map_err(|e| io_err(path, e))?;
    }
    w.flush().map_err(|e| io_err(path, e))?;
    w.get_ref().sync_data().map_err(|e| io_err(path, e))
}

/// The highest record seq the file holds (0 if none or no file). A torn last line (no
/// newline: the process died mid-write) is cut off first.
pub(crate) fn last_seq_in_file(path: &Path) -> Result<u64, AuditError> {
    let mut f = match OpenOptions::new().read(true).write(true).open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(0),
        Err(e) => return Err(io_err(path, e)),
    };
    let len = f.metadata().map_err(|e| io_err(path, e))?.len();
    if len == 0 {
        return Ok(0);
    }
    let mut end = len;
    if read_byte(&mut f, len - 1).map_err(|e| io_err(path, e))? != b'\n' {
        end = rfind_newline(&mut f, len)
            .map_err(|e| io_err(path, e))?
            .map_or(0, |p| p + 1);
        tracing::warn!(
            path = %path.display(),
            cut = len - end,
            "audit file sink: cutting a torn last line"
        );
        f.set_len(end).map_err(|e| io_err(path, e))?;
        f.sync_data().map_err(|e| io_err(path, e))?;
    }
    // Walk back over lines until one names a seq.
    while end > 0 {
        let start = rfind_newline(&mut f, end - 1)
            .map_err(|e| io_err(path, e))?
            .map_or(0, |p| p + 1);
        let mut line = vec![0_u8; usize::try_from(end - 1 - start).unwrap_or(0)];
        f.seek(SeekFrom::Start(start))
            .and_then(|_| f.read_exact(&mut line))
            .map_err(|e| io_err(path, e))?;
        if let Some(seq) = line_seq(&line) {
            return Ok(seq);
        }
        end = start;
    }
    Ok(0)
}

/// The seq a line covers: a record's seq, or a checkpoint's.
fn line_seq(line: &[u8]) -> Option<u64> {
    let v: serde_json::Value = serde_json::from_slice(line).ok()?;
    v.get("seq")
        .or_else(|| v.get("checkpoint").and_then(|c| c.get("seq")))
        .and_then(serde_json::Value::as_u64)
}

fn read_byte(f: &mut File, at: u64) -> std::io::Result<u8> {
    let mut b = [0_u8; 1];
    f.seek(SeekFrom::Start(at))?;
    f.read_exact(&mut b)?;
    Ok(b[0])
}

/// Position of the last `\n` strictly before `before`.
fn rfind_newline(f: &mut File, before: u64) -> std::io::Result<Option<u64>> {
    const CHUNK: u64 = 64 * 1024;
    let mut end = before;
    let mut buf = vec![0_u8; CHUNK as usize];
    while end > 0 {
        let start = end.saturating_sub(CHUNK);
        let n = usize::try_from(end - start).unwrap_or(0);
        f.seek(SeekFrom::Start(start))?;
        f.read_exact(&mut buf[..n])?;
        if let Some(i) = buf[..n].iter().rposition(|&b| b == b'\n') {
            return Ok(Some(start + i as u64));
        }
        end = start;
    }
    Ok(None)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::record::{now_timestamp, GENESIS_HASH};
    use crate::AuditEvent;

    fn rec(seq: u64) -> AuditRecord {
        let e = AuditEvent {
            event: "x".into(),
            details: serde_json::json!({"pad": "y".repeat(100_000)}),
            ..AuditEvent::default()
        };
        AuditRecord::new(seq, now_timestamp(), &e, GENESIS_HASH.into())
    }

    #[test]
    fn last_seq_is_found_and_torn_lines_cut() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("sub/a.jsonl");
        assert_eq!(last_seq_in_file(&path).expect("missing is 0"), 0);
        append_records(&path, &[rec(1), rec(2)]).expect("write");
        assert_eq!(last_seq_in_file(&path).expect("read"), 2);
        // A checkpoint line last.
        let mut f = open_append(&path).expect("open");
        writeln!(f, "{{\"checkpoint\":{{\"seq\":2}}}}").expect("write");
        assert_eq!(last_seq_in_file(&path).expect("read"), 2);
        // A torn line (longer than one read chunk) is cut, the rest kept.
        let good_len = std::fs::metadata(&path).expect("meta").len();
        let torn = rec(3).to_json_line();
        f.write_all(&torn.as_bytes()[..torn.len() - 10])
            .expect("write");
        drop(f);
        assert_eq!(last_seq_in_file(&path).expect("read"), 2);
        assert_eq!(std::fs::metadata(&path).expect("meta").len(), good_len);
        // Everything left parses.
        let text = std::fs::read_to_string(&path).expect("read");
        assert_eq!(text.lines().count(), 3);
    }

    #[test]
    fn a_file_of_one_torn_line_becomes_empty() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("a.jsonl");
        std::fs::write(&path, "{\"seq\":1").expect("write");
        assert_eq!(last_seq_in_file(&path).expect("read"), 0);
        assert_eq!(std::fs::metadata(&path).expect("meta").len(), 0);
    }
}
