//! Where the daemon's log lines go: stderr through a shared buffer. A line is appended under a
//! lock (no system call); the buffer is written out when it fills, every `FLUSH_EVERY`, at once
//! for warnings and errors, and when the guard drops at exit. High-rate lines (the accessLog
//! filter writes one per request and role) thus cost a copy, not a write(2) or a thread wakeup
//! each, which on a 2-core host showed up as request latency.
use std::io::Write;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tracing::{Level, Metadata};
use tracing_subscriber::fmt::MakeWriter;

const CAPACITY: usize = 64 * 1024;
const FLUSH_EVERY: Duration = Duration::from_millis(100);

#[derive(Clone)]
pub struct LogWriter {
    buf: Arc<Mutex<Vec<u8>>>,
}

/// Flushes what is buffered when dropped (keep it until the process ends).
pub struct FlushGuard(LogWriter);

impl Drop for FlushGuard {
    fn drop(&mut self) {
        self.0.flush_now();
    }
}

impl LogWriter {
    /// The writer and its guard; a background thread flushes every `FLUSH_EVERY`.
    pub fn stderr() -> (LogWriter, FlushGuard) {
        let w = LogWriter {
            buf: Arc::new(Mutex::new(Vec::with_capacity(CAPACITY))),
        };
        let bg = w.clone();
        std::thread::Builder::new()
            .name("sockmesh-log".into())
            .spawn(move || {
                loop {
                    std::thread::sleep(FLUSH_EVERY);
                    bg.flush_now();
                }
            })
            .expect("spawning the log flusher");
        (w.clone(), FlushGuard(w))
    }

    /// Append already formatted lines (written out with the next batch, or now when full).
    pub fn append(&self, data: &[u8]) {
        let _ = EventWriter {
            w: self,
            urgent: false,
        }
        .write_all(data);
    }

    fn flush_now(&self) {
        let mut b = self.buf.lock().unwrap_or_else(|e| e.into_inner());
        if !b.is_empty() {
            let _ = std::io::stderr().write_all(&b);
            b.clear();
        }
    }
}

/// One event's writer: appends; flushes right away when asked (warnings, errors) or full.
pub struct EventWriter<'a> {
    w: &'a LogWriter,
    urgent: bool,
}

impl Write for EventWriter<'_> {
    fn write(&mut self, data: &[u8]) -> std::io::Result<usize> {
        let mut b = self.w.buf.lock().unwrap_or_else(|e| e.into_inner());
        b.extend_from_slice(data);
        if self.urgent || b.len() >= CAPACITY {
            std::io::stderr().write_all(&b)?;
            b.clear();
        }
        Ok(data.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl<'a> MakeWriter<'a> for LogWriter {
    type Writer = EventWriter<'a>;

    fn make_writer(&'a self) -> EventWriter<'a> {
        EventWriter {
            w: self,
            urgent: true,
        }
    }

    fn make_writer_for(&'a self, meta: &Metadata<'_>) -> EventWriter<'a> {
        EventWriter {
            w: self,
            urgent: *meta.level() <= Level::WARN,
        }
    }
}
