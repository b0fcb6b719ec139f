//! `accessLog` (motan-go filter/accessLog.go, spec 4.7): one structured line per request,
//! target `sockmesh::access`, with the fields upstream's access log has: role, conf id,
//! service, method, method descriptor, peer address, request id, response code (the
//! exception's errcode, else the response's `upstreamCode`, else 200), success, request and
//! response body sizes, process time reported by upstream (`M_pt`, ms), total latency (µs), and
//! the exception JSON. `/logConfig/set?access=false` silences every accessLog filter at once.
//!
//! Like motan-go's asynchronous access logger, the request path only queues a record; a
//! background thread (`sockmesh-access`) formats the lines every [`WRITE_EVERY`], so formatting
//! (a few microseconds per line) is not added to the response's latency. A line's timestamp is
//! thus when it was written, at most about [`WRITE_EVERY`] after the response; `latency_us` is
//! exact. If the writer falls [`MAX_QUEUED`] records behind, further records are dropped and
//! counted (`sockmesh_access_log_dropped`, and a warning per batch) instead of growing memory.
//! [`AccessLogWriter::flush`] writes what is queued at once (shutdown does). The daemon has the
//! thread format the lines itself, in its subscriber's text or JSON format ([`write_directly`]),
//! which costs about a fifth of formatting them as tracing events.
//!
//! With `motan-agent.log_dir` set, the lines go instead to motan-go's own access-log file,
//! `<log_dir>/<program>-access.log`, in its format ([`Record::format_motan`]: zap's console
//! encoder, `<ISO 8601 time>\t` then the `|`-separated fields of log/log.go `doAccessLog`, or
//! with `log_structured` its JSON fields), rotated as motan-go rotates it (`crate::log_file`).
//! Like motan-go's access logger they are then written whenever the filter is on
//! (`/logConfig/set?access=`), whatever the daemon's log level.
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock, Weak};
use std::time::Duration;

use prometheus_client::metrics::counter::Counter;
use tracing::Dispatch;

use super::call::{CallInfo, Filter, Observer, Observing, Role, Sent};
use crate::config::observe::AccessLogSpec;
use crate::log_file::{RotatingFile, Rotation, iso8601_local};
use crate::log_writer::LogWriter;
use crate::protocol::motan2::{Frame, keys as meta_keys};
use crate::url::{Url, keys};

pub const NAME: &str = "accessLog";
pub const INDEX: i32 = 1;
/// Meta key of an HTTP upstream's status (set by HTTP providers).
pub const UPSTREAM_CODE: &str = "upstreamCode";
/// Tracing target of the lines.
pub const TARGET: &str = "sockmesh::access";
/// How often the background thread writes the queued lines.
pub const WRITE_EVERY: Duration = Duration::from_millis(20);
/// Records the queue holds before new ones are dropped (about 200 bytes each).
pub const MAX_QUEUED: usize = 64 * 1024;

struct AccessLog {
    writer: Arc<AccessLogWriter>,
}

pub fn build(_url: &Url, writer: &Arc<AccessLogWriter>) -> Arc<dyn Filter> {
    Arc::new(Observing(AccessLog {
        writer: writer.clone(),
    }))
}

/// The response code upstream's access log shows: errcode, else `upstreamCode`, else 200.
pub fn response_code(resp: &Frame) -> i64 {
    if let Some(e) = super::call::exception_of(resp) {
        return e.errcode;
    }
    resp.meta
        .get(UPSTREAM_CODE)
        .and_then(|c| c.parse().ok())
        .unwrap_or(200)
}

/// The text of a record, copied into one buffer: a record must not keep the request's or
/// response's frame buffers alive while it waits.
struct Texts {
    text: String,
    /// Where each part ends in `text`.
    ends: [usize; 6],
}

impl Texts {
    fn new(parts: [&str; 6]) -> Texts {
        let mut text = String::with_capacity(parts.iter().map(|p| p.len()).sum());
        let ends = parts.map(|p| {
            text.push_str(p);
            text.len()
        });
        Texts { text, ends }
    }

    fn get(&self, i: usize) -> &str {
        let start = if i == 0 { 0 } else { self.ends[i - 1] };
        &self.text[start..self.ends[i]]
    }
}

/// One finished call, waiting to be written.
struct Record {
    role: Role,
    /// The refer's or service's URL (for `conf-id`).
    url: Arc<Url>,
    /// Service, method, method descriptor, peer, exception JSON (empty on success), the
    /// response's `upstreamCode` (empty when absent).
    texts: Texts,
    sent: Sent,
    code: i64,
    success: bool,
    res_size: usize,
    biz_time_ms: u64,
    latency_us: u64,
}

impl Record {
    fn new(info: &CallInfo, sent: Sent, resp: &Frame, elapsed: Duration) -> Record {
        let success = !resp.is_exception();
        let exception = if success {
            ""
        } else {
            resp.meta.get(meta_keys::EXCEPTION).unwrap_or("")
        };
        Record {
            role: info.role,
            url: info.url.clone(),
            texts: Texts::new([
                &info.service,
                &info.method,
                &info.method_desc,
                &info.peer,
                exception,
                resp.meta.get(UPSTREAM_CODE).unwrap_or(""),
            ]),
            sent,
            code: response_code(resp),
            success,
            res_size: resp.body.len(),
            biz_time_ms: resp
                .as_response()
                .and_then(|r| r.process_time())
                .map_or(0, |d| d.as_millis() as u64),
            latency_us: elapsed.as_micros() as u64,
        }
    }

    fn part(&self, i: usize) -> &str {
        self.texts.get(i)
    }

    /// Append the line as the daemon's fmt subscriber would write it (text without ANSI, or
    /// JSON), `ts` being the formatted timestamp. Field order, quoting (`Debug` for the string
    /// fields, `Display` for the `%` ones) and JSON types are tracing-subscriber's; a test
    /// compares both ways.
    fn format(&self, ts: &str, json: bool, out: &mut String) {
        use std::fmt::Write as _;
        let conf_id = self.url.get_str(keys::CONF_ID, "");
        let (role, service, method, desc, peer, exception) = (
            self.role.as_str(),
            self.part(0),
            self.part(1),
            self.part(2),
            self.part(3),
            self.part(4),
        );
        let (id, code, ok, req, res, biz, lat) = (
            self.sent.request_id,
            self.code,
            self.success,
            self.sent.body_len,
            self.res_size,
            self.biz_time_ms,
            self.latency_us,
        );
        if json {
            let j = |s: &str| serde_json::Value::from(s);
            let _ = writeln!(
                out,
                "{{\"timestamp\":{},\"level\":\"INFO\",\"fields\":{{\"message\":\"access\",\"role\":{},\"conf_id\":{},\"service\":{},\"method\":{},\"desc\":{},\"peer\":{},\"request_id\":{id},\"code\":{code},\"success\":{ok},\"req_size\":{req},\"res_size\":{res},\"biz_time_ms\":{biz},\"latency_us\":{lat},\"exception\":{}}}}}",
                j(ts),
                j(role),
                j(conf_id),
                j(service),
                j(method),
                j(desc),
                j(peer),
                j(exception),
            );
        } else {
            let _ = writeln!(
                out,
                "{ts}  INFO access role={role:?} conf_id={conf_id} service={service} method={method} desc={desc} peer={peer} request_id={id} code={code} success={ok} req_size={req} res_size={res} biz_time_ms={biz} latency_us={lat} exception={exception:?}"
            );
        }
    }

    /// Append the line as motan-go's access logger writes it: zap's console encoder with an
    /// ISO 8601 `time` and the message; the message is the `|`-joined fields of log/log.go
    /// (filterName, role, requestID, service, method, desc, remoteAddress, reqSize, resSize,
    /// bizTime, totalTime (ms), success, responseCode, exception, upstreamCode), or, with
    /// `structured`, an empty message and the same fields as a JSON object.
    fn format_motan(&self, ts: &str, structured: bool, out: &mut String) {
        use std::fmt::Write as _;
        let (service, method, desc, peer, exception, upstream) = (
            self.part(0),
            self.part(1),
            self.part(2),
            self.part(3),
            self.part(4),
            self.part(5),
        );
        // motan-go: the exception's errcode, else 200 (upstreamCode is its own field).
        let code = if self.success { 200 } else { self.code };
        let (role, id, req, res, biz) = (
            self.role.as_str(),
            self.sent.request_id,
            self.sent.body_len,
            self.res_size,
            self.biz_time_ms,
        );
        let total = self.latency_us / 1000;
        let ok = self.success;
        if structured {
            let j = |s: &str| serde_json::Value::from(s);
            let _ = writeln!(
                out,
                "{ts}\t\t{{\"filterName\":\"{NAME}\",\"role\":{},\"requestID\":{id},\"service\":{},\"method\":{},\"desc\":{},\"remoteAddress\":{},\"reqSize\":{req},\"resSize\":{res},\"bizTime\":{biz},\"totalTime\":{total},\"success\":{ok},\"responseCode\":\"{code}\",\"exception\":{},\"upstreamCode\":{}}}",
                j(role),
                j(service),
                j(method),
                j(desc),
                j(peer),
                j(exception),
                j(upstream),
            );
        } else {
            let _ = writeln!(
                out,
                "{ts}\t{NAME}|{role}|{id}|{service}|{method}|{desc}|{peer}|{req}|{res}|{biz}|{total}|{ok}|{code}|{exception}|{upstream}"
            );
        }
    }

    fn write(&self) {
        tracing::info!(
            target: TARGET,
            role = self.role.as_str(),
            conf_id = %self.url.get_str(keys::CONF_ID, ""),
            service = %self.part(0),
            method = %self.part(1),
            desc = %self.part(2),
            peer = %self.part(3),
            request_id = self.sent.request_id,
            code = self.code,
            success = self.success,
            req_size = self.sent.body_len,
            res_size = self.res_size,
            biz_time_ms = self.biz_time_ms,
            latency_us = self.latency_us,
            exception = self.part(4),
            "access"
        );
    }
}

/// The queue between the accessLog filters and the thread that writes their lines; one per
/// agent (in [`FilterShared`]), kept across reloads.
pub struct AccessLogWriter {
    enabled: AtomicBool,
    queue: Mutex<Vec<Record>>,
    /// Held while a batch is written (the queue's lock is not: calls keep queueing meanwhile).
    writing: Mutex<()>,
    max_queued: AtomicUsize,
    /// motan-go's access-log file, when `log_dir` is set (else the daemon's log).
    file: Mutex<Option<AccessFile>>,
    dropped: Counter,
    /// The subscriber the lines go to: the one in effect where the writer was made (a test's
    /// capturing subscriber, else the global one).
    dispatch: Dispatch,
    started: OnceLock<()>,
}

impl AccessLogWriter {
    /// A writer whose lines go to the subscriber in effect here; the thread starts with the
    /// first line. `dropped` counts the records dropped while the queue was full.
    pub fn new(dropped: Counter) -> Arc<AccessLogWriter> {
        Arc::new(AccessLogWriter::unstarted(dropped, MAX_QUEUED))
    }

    fn unstarted(dropped: Counter, max_queued: usize) -> AccessLogWriter {
        AccessLogWriter {
            enabled: AtomicBool::new(true),
            queue: Mutex::new(Vec::new()),
            writing: Mutex::new(()),
            max_queued: AtomicUsize::new(max_queued),
            file: Mutex::new(None),
            dropped,
            dispatch: tracing::dispatcher::get_default(|d| d.clone()),
            started: OnceLock::new(),
        }
    }

    /// Whether `accessLog` filters write their lines (`/logConfig/set?access=`; on by default).
    pub fn enabled(&self) -> bool {
        self.enabled.load(Ordering::Relaxed)
    }

    pub fn set_enabled(&self, on: bool) {
        self.enabled.store(on, Ordering::Relaxed);
    }

    /// Records dropped so far because the queue was full.
    pub fn dropped(&self) -> u64 {
        self.dropped.get()
    }

    /// Records queued at most before new ones are dropped (`motan-agent.log_buffer_size`).
    pub fn set_max_queued(&self, n: usize) {
        self.max_queued.store(n.max(1), Ordering::Relaxed);
    }

    /// Write the lines to motan-go's access-log file under `spec.dir` from now on; returns
    /// its path. The file is opened (and its directory made) here; on an error nothing changes.
    pub fn write_to_file(self: &Arc<Self>, spec: &AccessLogSpec) -> std::io::Result<PathBuf> {
        let program = std::env::args_os()
            .next()
            .map(PathBuf::from)
            .and_then(|p| p.file_name().map(|n| n.to_string_lossy().into_owned()))
            .unwrap_or_else(|| "sockmesh".into());
        let rotation = match (spec.rotate_interval, spec.rotate_per_hour) {
            (Some(d), _) => Rotation::Every(d),
            (None, true) => Rotation::Hourly,
            (None, false) => Rotation::SizeOnly,
        };
        let path = spec.dir.join(format!("{program}-access.log"));
        let file = RotatingFile::open(path.clone(), rotation)?;
        *self.file.lock().unwrap_or_else(|e| e.into_inner()) = Some(AccessFile {
            file,
            structured: spec.structured,
            failing: false,
        });
        // Time-based rotation runs on the writer thread even before the first line.
        self.started.get_or_init(|| self.start());
        Ok(path)
    }

    fn push(self: &Arc<Self>, r: Record) {
        self.started.get_or_init(|| self.start());
        let mut q = self.queue.lock().unwrap_or_else(|e| e.into_inner());
        if q.len() >= self.max_queued.load(Ordering::Relaxed) {
            drop(q);
            self.dropped.inc();
            return;
        }
        q.push(r);
    }

    /// The writing thread; it holds the writer weakly and ends once the writer is gone.
    fn start(self: &Arc<Self>) {
        let weak: Weak<AccessLogWriter> = Arc::downgrade(self);
        let spawned = std::thread::Builder::new()
            .name("sockmesh-access".into())
            .spawn(move || {
                let mut reported = 0;
                loop {
                    std::thread::sleep(WRITE_EVERY);
                    let Some(w) = weak.upgrade() else { return };
                    w.flush();
                    let dropped = w.dropped.get();
                    if dropped > reported {
                        tracing::dispatcher::with_default(&w.dispatch, || {
                            tracing::warn!(
                                "access log: {} line(s) dropped because the writer fell {} behind (sockmesh_access_log_dropped_total)",
                                dropped - reported,
                                w.max_queued.load(Ordering::Relaxed)
                            )
                        });
                        reported = dropped;
                    }
                }
            });
        if let Err(e) = spawned {
            // Lines still get written by flush() (at shutdown); the queue bound keeps memory.
            tracing::error!("access log: cannot start the writer thread: {e}");
        }
    }

    /// Write every queued line now, in the order the calls finished. Returns once they are
    /// written, also those a concurrent flush (the thread's) had taken: at shutdown nothing
    /// taken is still being written when the process exits.
    pub fn flush(&self) {
        let _writing = self.writing.lock().unwrap_or_else(|e| e.into_inner());
        let batch = std::mem::take(&mut *self.queue.lock().unwrap_or_else(|e| e.into_inner()));
        if let Some(f) = self.file.lock().unwrap_or_else(|e| e.into_inner()).as_mut() {
            f.write(&batch, &self.dispatch);
            return;
        }
        if batch.is_empty() {
            return;
        }
        match DIRECT.get() {
            Some(d) => {
                let on = tracing::dispatcher::with_default(
                    &self.dispatch,
                    || tracing::enabled!(target: TARGET, tracing::Level::INFO),
                );
                if !on {
                    return;
                }
                let ts = timestamp();
                let mut text = String::with_capacity(batch.len() * 320);
                for r in &batch {
                    r.format(&ts, d.json, &mut text);
                }
                d.out.append(text.as_bytes());
            }
            None => {
                tracing::dispatcher::with_default(&self.dispatch, || batch.iter().for_each(Record::write))
            }
        }
    }
}

/// motan-go's access-log file and its format.
struct AccessFile {
    file: RotatingFile,
    structured: bool,
    /// The last write failed (warned once until one succeeds again).
    failing: bool,
}

impl AccessFile {
    /// Rotate when due, then append the batch's lines (one write for the batch). A failed
    /// write (disk full...) loses that batch and is logged once, not per batch.
    fn write(&mut self, batch: &[Record], dispatch: &Dispatch) {
        let now = std::time::SystemTime::now();
        let result = if batch.is_empty() {
            self.file.rotate_if_due(now)
        } else {
            let ts = iso8601_local(now);
            let mut text = String::with_capacity(batch.len() * 256);
            for r in batch {
                r.format_motan(&ts, self.structured, &mut text);
            }
            self.file.write(text.as_bytes(), now)
        };
        match result {
            Ok(()) => self.failing = false,
            Err(e) if !self.failing => {
                self.failing = true;
                let path = self.file.path().display().to_string();
                tracing::dispatcher::with_default(dispatch, || {
                    tracing::error!("access log: writing {path}: {e} ({} line(s) lost)", batch.len())
                });
            }
            Err(_) => {}
        }
    }
}

/// Where the daemon's log goes, when access lines are written to it directly.
struct Direct {
    out: LogWriter,
    json: bool,
}

static DIRECT: OnceLock<Direct> = OnceLock::new();

/// Write access lines straight into the daemon's log writer, formatted here the way its fmt
/// subscriber (no ANSI colours, `json` or text) formats them, instead of as tracing events: the
/// same lines for about a fifth of the CPU. The level filter still decides whether they are
/// written (target [`TARGET`], level INFO). Without this (tests, colour terminals) lines are
/// tracing events.
pub fn write_directly(out: LogWriter, json: bool) {
    let _ = DIRECT.set(Direct { out, json });
}

/// Now, as tracing-subscriber's default timer writes it (RFC 3339, UTC, microseconds).
fn timestamp() -> String {
    use tracing_subscriber::fmt::time::FormatTime;
    let mut ts = String::with_capacity(32);
    let _ = tracing_subscriber::fmt::time::SystemTime
        .format_time(&mut tracing_subscriber::fmt::format::Writer::new(&mut ts));
    ts
}

impl Observer for AccessLog {
    fn name(&self) -> &'static str {
        NAME
    }
    fn index(&self) -> i32 {
        INDEX
    }
    /// Queues the line; the writer thread formats it.
    fn observe(&self, info: &CallInfo, sent: Sent, resp: &Frame, elapsed: Duration) {
        if self.writer.enabled() {
            self.writer.push(Record::new(info, sent, resp, elapsed));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::filter::FilterChain;
    use crate::filter::FilterShared;
    use crate::filter::test_support::*;
    use crate::protocol::motan2::ErrorType;
    use std::time::Instant;

    #[tokio::test]
    async fn one_line_per_request_with_the_call_fields() {
        let (lines, _guard) = capture_logs();
        let shared = FilterShared::new();
        let url = refer(&[("filter", "accessLog")]);
        let chain = FilterChain::build(&url, &shared).unwrap();
        let up = Upstream::new(Answer::Ok(b"twelve bytes"));
        let i = info(url, "hello");
        let mut req = request(42, "hello");
        req.meta.insert("M_rid", "-9");
        call(&chain, &i, &up, req).await;
        up.set(Answer::Fail(ErrorType::Business, 503));
        call(&chain, &i, &up, request(43, "hello")).await;

        // Written by the background thread, to the subscriber in effect where it was made.
        let deadline = Instant::now() + Duration::from_secs(5);
        while lines.access_lines().len() < 2 && Instant::now() < deadline {
            tokio::time::sleep(WRITE_EVERY).await;
        }
        let logged = lines.access_lines();
        assert_eq!(logged.len(), 2, "{logged:?}");
        let f = &logged[0]["fields"];
        assert_eq!(f["message"], "access");
        assert_eq!(f["role"], "client-agent");
        assert_eq!(f["conf_id"], "hello");
        assert_eq!(f["service"], "com.example.Hello");
        assert_eq!(f["method"], "hello");
        assert_eq!(f["peer"], "127.0.0.1:9982");
        assert_eq!(f["request_id"], -9, "M_rid is the logical id");
        assert_eq!(f["code"], 200);
        assert_eq!(f["success"], true);
        assert_eq!(f["req_size"], 7);
        assert_eq!(f["res_size"], 12);
        assert_eq!(f["biz_time_ms"], 1);
        assert!(f["latency_us"].as_u64().is_some());
        assert_eq!(f["exception"], "");
        let f = &logged[1]["fields"];
        assert_eq!(
            (&f["request_id"], &f["code"], &f["success"]),
            (&43.into(), &503.into(), &false.into())
        );
        assert_eq!(
            f["exception"],
            r#"{"errcode":503,"errmsg":"upstream failed","errtype":2}"#
        );
        assert_eq!(logged[1]["target"], TARGET);
    }

    #[tokio::test]
    async fn toggled_off_writes_nothing_and_on_again_resumes() {
        let (lines, _guard) = capture_logs();
        let shared = FilterShared::new();
        let url = refer(&[("filter", "accessLog")]);
        let chain = FilterChain::build(&url, &shared).unwrap();
        let up = Upstream::new(Answer::Ok(b"ok"));
        let i = info(url, "hello");
        shared.access_log.set_enabled(false);
        call(&chain, &i, &up, request(1, "hello")).await;
        shared.access_log.flush();
        assert_eq!((lines.access_lines().len(), up.calls()), (0, 1));
        shared.access_log.set_enabled(true);
        call(&chain, &i, &up, request(2, "hello")).await;
        shared.access_log.flush();
        assert_eq!(lines.access_lines().len(), 1);
    }

    #[test]
    fn direct_lines_are_the_lines_tracing_writes() {
        let mut i = info(refer(&[("filter", "accessLog")]), "hel\"lo");
        i.method_desc = "java.lang.String,int".into();
        let r = Record {
            role: i.role,
            url: i.url.clone(),
            texts: Texts::new([
                &i.service,
                &i.method,
                &i.method_desc,
                &i.peer,
                r#"{"errcode":503,"errmsg":"a \"quoted\" é\n","errtype":2}"#,
                "",
            ]),
            sent: Sent {
                request_id: -42,
                body_len: 7,
            },
            code: 503,
            success: false,
            res_size: 0,
            biz_time_ms: 3,
            latency_us: 1234,
        };
        for json in [false, true] {
            let c = Captured::default();
            let base = tracing_subscriber::fmt()
                .with_target(false)
                .with_ansi(false)
                .with_writer(c.clone());
            let sub: Dispatch = if json {
                base.json().finish().into()
            } else {
                base.finish().into()
            };
            tracing::dispatcher::with_default(&sub, || r.write());
            let by_tracing = c.text();
            let mut direct = String::new();
            r.format(&timestamp(), json, &mut direct);
            if json {
                let mut a: serde_json::Value = serde_json::from_str(&by_tracing).unwrap();
                let mut b: serde_json::Value = serde_json::from_str(&direct).unwrap();
                let (ta, tb) = (a["timestamp"].take(), b["timestamp"].take());
                assert_eq!(a, b, "tracing: {by_tracing}direct:  {direct}");
                assert_eq!(ta.as_str().unwrap().len(), tb.as_str().unwrap().len());
            } else {
                let (ta, rest_a) = by_tracing.split_once(' ').unwrap();
                let (tb, rest_b) = direct.split_once(' ').unwrap();
                assert_eq!(rest_a, rest_b, "tracing: {by_tracing}direct:  {direct}");
                assert_eq!((ta.len(), tb.ends_with('Z')), (tb.len(), true));
            }
        }
    }

    #[test]
    fn motan_go_line_format() {
        let i = info(refer(&[("filter", "accessLog")]), "hello");
        let mut r = Record {
            role: i.role,
            url: i.url.clone(),
            texts: Texts::new([&i.service, &i.method, "", &i.peer, "", "404"]),
            sent: Sent {
                request_id: 77,
                body_len: 7,
            },
            code: 404,
            success: true,
            res_size: 12,
            biz_time_ms: 3,
            latency_us: 4999,
        };
        let mut out = String::new();
        r.format_motan("2026-12-01T04:00:00.000Z", false, &mut out);
        assert_eq!(
            out,
            "2026-12-01T04:00:00.000Z\taccessLog|client-agent|77|com.example.Hello|hello||127.0.0.1:9982|7|12|3|4|true|200||404\n"
        );
        r.success = false;
        r.code = 503;
        r.texts = Texts::new([&i.service, &i.method, "", &i.peer, r#"{"errcode":503}"#, ""]);
        out.clear();
        r.format_motan("T", true, &mut out);
        let (head, json) = out.trim_end().split_once("\t\t").unwrap();
        assert_eq!(head, "T");
        let v: serde_json::Value = serde_json::from_str(json).unwrap();
        assert_eq!(v["filterName"], "accessLog");
        assert_eq!(v["requestID"], 77);
        assert_eq!(v["responseCode"], "503");
        assert_eq!(v["success"], false);
        assert_eq!(v["exception"], r#"{"errcode":503}"#);
        assert_eq!(v["totalTime"], 4);
        assert_eq!(v.as_object().unwrap().len(), 15);
    }

    #[test]
    fn dropped_lines_are_a_metric() {
        let shared = FilterShared::new();
        shared.access_log.dropped.inc();
        let text = shared.registry.encode();
        assert!(
            text.lines().any(|l| l == "sockmesh_access_log_dropped_total 1"),
            "{text}"
        );
    }

    #[tokio::test]
    async fn a_full_queue_drops_and_counts_instead_of_growing() {
        let (lines, _guard) = capture_logs();
        let dropped = Counter::default();
        let writer = AccessLogWriter::unstarted(dropped.clone(), 2);
        writer.started.set(()).unwrap(); // no thread: only flush() writes
        let shared = Arc::new(FilterShared {
            access_log: Arc::new(writer),
            ..FilterShared::default()
        });
        let url = refer(&[("filter", "accessLog")]);
        let chain = FilterChain::build(&url, &shared).unwrap();
        let up = Upstream::new(Answer::Ok(b"ok"));
        let i = info(url, "hello");
        for id in 1..=5 {
            call(&chain, &i, &up, request(id, "hello")).await;
        }
        assert_eq!(
            (up.calls(), dropped.get()),
            (5, 3),
            "every call answered, 3 lines dropped"
        );
        shared.access_log.flush();
        let ids: Vec<_> = lines
            .access_lines()
            .iter()
            .map(|l| l["fields"]["request_id"].as_i64().unwrap())
            .collect();
        assert_eq!(ids, [1, 2], "the first lines kept, in order");
        // Room again after the flush.
        call(&chain, &i, &up, request(6, "hello")).await;
        shared.access_log.flush();
        assert_eq!(lines.access_lines().len(), 3);
    }

    #[test]
    fn code_prefers_errcode_then_upstream_code() {
        let req = request(1, "m");
        let mut ok = Frame::response_to(&req, bytes::Bytes::new());
        assert_eq!(response_code(&ok), 200);
        ok.meta.insert(UPSTREAM_CODE, "404");
        assert_eq!(response_code(&ok), 404);
        ok.meta.insert(UPSTREAM_CODE, "x");
        assert_eq!(response_code(&ok), 200);
        let e = crate::filter::reject(&req, &crate::protocol::motan2::Exception::service(1001, "none"));
        assert_eq!(response_code(&e), 1001);
    }
}
