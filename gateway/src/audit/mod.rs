//! The durable audit sink: one JSON object per line, appended to a file.
//!
//! Records arrive from plugins' `audit.emit` host call (and from the gateway itself) through a
//! channel to one writer thread, so file I/O and `fsync` never run on a request worker. The
//! writer rotates the file by size (`audit.log` → `audit.log.1` → …) and syncs either after
//! every batch (`fsync = "always"`) or on an interval. [`AuditSink::close`] drains the channel
//! and syncs: the gateway calls it on shutdown after requests in flight have completed, so
//! every answered request keeps its record.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::mpsc::{channel, Receiver, Sender};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

pub use crate::config::audit::{AuditConfig, FsyncMode};

enum Message {
    Record(String),
    Flush(Sender<()>),
}

/// Where audit records go. Cheap to clone; all clones feed one writer.
#[derive(Clone)]
pub struct AuditSink {
    inner: Arc<Inner>,
}

struct Inner {
    tx: Mutex<Option<Sender<Message>>>,
    writer: Mutex<Option<JoinHandle<()>>>,
    collected: Option<Arc<Mutex<Vec<String>>>>,
}

impl std::fmt::Debug for AuditSink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("AuditSink")
    }
}

impl AuditSink {
    /// Opens (creating if needed) the audit file and starts the writer thread.
    pub fn open(config: &AuditConfig) -> std::io::Result<AuditSink> {
        let path = PathBuf::from(&config.path);
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir)?;
        }
        let file = open_append(&path)?;
        let (tx, rx) = channel();
        let writer = Writer {
            size: file.metadata()?.len(),
            file,
            path,
            config: config.clone(),
            dirty: false,
            last_sync: Instant::now(),
        };
        let handle = std::thread::Builder::new()
            .name("gw-audit".into())
            .spawn(move || writer.run(rx))?;
        Ok(AuditSink {
            inner: Arc::new(Inner {
                tx: Mutex::new(Some(tx)),
                writer: Mutex::new(Some(handle)),
                collected: None,
            }),
        })
    }

    /// A sink that writes records to the log (target `gateway::audit`) when no file is configured.
    pub fn log_only() -> AuditSink {
        AuditSink {
            inner: Arc::new(Inner {
                tx: Mutex::new(None),
                writer: Mutex::new(None),
                collected: None,
            }),
        }
    }

    /// A sink that keeps records in memory (for `gateway plugin test` and tests).
    pub fn collecting() -> (AuditSink, Arc<Mutex<Vec<String>>>) {
        let records = Arc::new(Mutex::new(Vec::new()));
        let sink = AuditSink {
            inner: Arc::new(Inner {
                tx: Mutex::new(None),
                writer: Mutex::new(None),
                collected: Some(Arc::clone(&records)),
            }),
        };
        (sink, records)
    }

    /// Appends one record (a JSON object) as a line.
    pub fn emit(&self, record: &serde_json::Value) {
        let line = record.to_string();
        self.emit_line(line);
    }

    /// Appends one line of JSON text (already validated as an object by the caller).
    pub fn emit_line(&self, line: String) {
        if let Some(records) = &self.inner.collected {
            if let Ok(mut r) = records.lock() {
                r.push(line);
            }
            return;
        }
        let tx = self.inner.tx.lock().ok().and_then(|t| t.clone());
        match tx {
            Some(tx) => {
                if let Err(e) = tx.send(Message::Record(line)) {
                    if let Message::Record(line) = e.0 {
                        tracing::error!(target: "gateway::audit", record = %line, "audit sink closed; record logged instead");
                    }
                }
            }
            None => tracing::info!(target: "gateway::audit", record = %line, "audit"),
        }
    }

    /// Waits until every record emitted so far is written and synced.
    pub fn flush(&self) {
        let tx = self.inner.tx.lock().ok().and_then(|t| t.clone());
        if let Some(tx) = tx {
            let (ack, done) = channel();
            if tx.send(Message::Flush(ack)).is_ok() {
                let _ = done.recv_timeout(Duration::from_secs(30));
            }
        }
    }

    /// Writes and syncs everything, then stops the writer. Later records go to the log.
    pub fn close(&self) {
        self.flush();
        if let Ok(mut tx) = self.inner.tx.lock() {
            tx.take();
        }
        if let Some(handle) = self.inner.writer.lock().ok().and_then(|mut w| w.take()) {
            let _ = handle.join();
        }
    }
}

fn open_append(path: &Path) -> std::io::Result<File> {
    OpenOptions::new().create(true).append(true).open(path)
}

struct Writer {
    file: File,
    path: PathBuf,
    config: AuditConfig,
    size: u64,
    dirty: bool,
    last_sync: Instant,
}

impl Writer {
    fn run(mut self, rx: Receiver<Message>) {
        let tick = match self.config.fsync {
            FsyncMode::Always => Duration::from_secs(3600),
            FsyncMode::Interval => self.config.fsync_interval.0.max(Duration::from_millis(10)),
        };
        loop {
            let first = match rx.recv_timeout(tick) {
                Ok(m) => Some(m),
                Err(std::sync::mpsc::RecvTimeoutError::Timeout) => None,
                Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => break,
            };
            // Drain whatever else is queued: one write burst and one sync per batch.
            let mut acks = Vec::new();
            for message in first.into_iter().chain(rx.try_iter()) {
                match message {
                    Message::Record(line) => self.write(&line),
                    Message::Flush(ack) => acks.push(ack),
                }
            }
            let due = match self.config.fsync {
                FsyncMode::Always => true,
                FsyncMode::Interval => self.last_sync.elapsed() >= tick,
            };
            if self.dirty && (due || !acks.is_empty()) {
                self.sync();
            }
            for ack in acks {
                let _ = ack.send(());
            }
        }
        if self.dirty {
            self.sync();
        }
    }

    fn write(&mut self, line: &str) {
        let len = line.len() as u64 + 1;
        if self.size > 0 && self.size + len > self.config.max_file_size.0 {
            if let Err(e) = self.rotate() {
                tracing::error!(error = %e, path = %self.path.display(), "cannot rotate the audit file; appending to it");
            }
        }
        let mut buf = Vec::with_capacity(line.len() + 1);
        buf.extend_from_slice(line.as_bytes());
        buf.push(b'\n');
        match self.file.write_all(&buf) {
            Ok(()) => {
                self.size += len;
                self.dirty = true;
            }
            Err(e) => {
                tracing::error!(error = %e, record = %line, "cannot write the audit file; record logged instead")
            }
        }
    }

    fn sync(&mut self) {
        if let Err(e) = self.file.sync_data() {
            tracing::error!(error = %e, "cannot sync the audit file");
        }
        self.dirty = false;
        self.last_sync = Instant::now();
    }

    fn rotate(&mut self) -> std::io::Result<()> {
        self.sync();
        let rotated = |n: u32| PathBuf::from(format!("{}.{n}", self.path.display()));
        let keep = self.config.max_files.max(1);
        let _ = std::fs::remove_file(rotated(keep));
        for n in (1..keep).rev() {
            let from = rotated(n);
            if from.exists() {
                std::fs::rename(&from, rotated(n + 1))?;
            }
        }
        std::fs::rename(&self.path, rotated(1))?;
        self.file = open_append(&self.path)?;
        self.size = 0;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{ByteSize, HumanDuration};

    fn config(dir: &Path, max: u64) -> AuditConfig {
        AuditConfig {
            path: dir.join("audit.log").display().to_string(),
            fsync: FsyncMode::Always,
            fsync_interval: HumanDuration(Duration::from_secs(1)),
            max_file_size: ByteSize(max),
            max_files: 2,
        }
    }

    fn tempdir() -> PathBuf {
        let d = std::env::temp_dir().join(format!("gw-audit-{}", uuid::Uuid::new_v4()));
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    #[test]
    fn every_record_is_on_disk_after_close() {
        let d = tempdir();
        let sink = AuditSink::open(&config(&d, 1 << 20)).unwrap();
        for i in 0..500 {
            sink.emit(&serde_json::json!({ "n": i }));
        }
        sink.close();
        let text = std::fs::read_to_string(d.join("audit.log")).unwrap();
        let lines: Vec<_> = text.lines().collect();
        assert_eq!(lines.len(), 500);
        assert_eq!(lines[499], r#"{"n":499}"#);
    }

    #[test]
    fn rotates_by_size_keeping_max_files() {
        let d = tempdir();
        let sink = AuditSink::open(&config(&d, 100)).unwrap();
        for i in 0..40 {
            sink.emit(&serde_json::json!({ "record": i }));
        }
        sink.close();
        let count = |p: &str| {
            std::fs::read_to_string(d.join(p))
                .map(|t| t.lines().count())
                .unwrap_or(0)
        };
        assert!(count("audit.log") > 0);
        assert!(count("audit.log.1") > 0);
        assert!(count("audit.log.2") > 0);
        assert!(!d.join("audit.log.3").exists());
        let last = std::fs::read_to_string(d.join("audit.log")).unwrap();
        assert!(last.trim_end().ends_with(r#"{"record":39}"#));
    }
}
