//! A log file that rotates, as motan-go's `RotateWriter` (log/rotate.go, after lumberjack):
//! the current file keeps its name (`<dir>/<name>.log`); at a rotation it is renamed to
//! `<name>-<YYYYMMDD-HH>.log` and a new one is opened. With `rotate_per_hour` the rotation is at
//! every local wall-clock hour and the backup carries the hour it covers (motan-go names it by
//! the rotation time minus an hour); otherwise, and always, at 1 GiB. One owner writes (the
//! access-log thread), so a rotation happens between two writes and loses nothing. A backup
//! name already taken gets `.1`, `.2`... before `.log` rather than being overwritten.
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// motan-go's `defaultMaxSize`.
pub const MAX_SIZE: u64 = 1024 * 1024 * 1024;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rotation {
    /// At every local hour (motan-go's `rotate_per_hour: true`, its default).
    Hourly,
    /// Every this long (sockmesh's test/ops aid); backups named to the millisecond.
    Every(Duration),
    /// Only at [`MAX_SIZE`] (`rotate_per_hour: false`).
    SizeOnly,
}

#[derive(Debug)]
pub struct RotatingFile {
    path: PathBuf,
    rotation: Rotation,
    file: File,
    size: u64,
    /// When the next time-based rotation is due.
    next: Option<SystemTime>,
    rotations: u64,
}

impl RotatingFile {
    /// Open (append to) `path`, creating its directory.
    pub fn open(path: PathBuf, rotation: Rotation) -> std::io::Result<RotatingFile> {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir)?;
        }
        let file = OpenOptions::new().create(true).append(true).open(&path)?;
        let size = file.metadata()?.len();
        let mut f = RotatingFile {
            path,
            rotation,
            file,
            size,
            next: None,
            rotations: 0,
        };
        f.next = f.next_after(SystemTime::now());
        Ok(f)
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Rotations done so far.
    pub fn rotations(&self) -> u64 {
        self.rotations
    }

    fn next_after(&self, now: SystemTime) -> Option<SystemTime> {
        match self.rotation {
            Rotation::Hourly => {
                let secs = unix_secs(now);
                let local = secs + local_offset(now);
                let next_local = (local.div_euclid(3600) + 1) * 3600;
                Some(UNIX_EPOCH + Duration::from_secs((next_local - local_offset(now)).max(0) as u64))
            }
            Rotation::Every(d) => Some(now + d),
            Rotation::SizeOnly => None,
        }
    }

    /// Rotate when the time has come (called also when there is nothing to write, so files
    /// turn over on time as motan-go's do).
    pub fn rotate_if_due(&mut self, now: SystemTime) -> std::io::Result<()> {
        if self.next.is_some_and(|n| now >= n) {
            self.rotate(now)?;
        }
        Ok(())
    }

    /// Append `data` (rotating first when due or when it would pass [`MAX_SIZE`]).
    pub fn write(&mut self, data: &[u8], now: SystemTime) -> std::io::Result<()> {
        self.rotate_if_due(now)?;
        if self.size > 0 && self.size + data.len() as u64 > MAX_SIZE {
            self.rotate(now)?;
        }
        self.file.write_all(data)?;
        self.size += data.len() as u64;
        Ok(())
    }

    fn rotate(&mut self, now: SystemTime) -> std::io::Result<()> {
        let stamp = match self.rotation {
            Rotation::Hourly => local_stamp(now - Duration::from_secs(3600), false),
            Rotation::Every(_) => local_stamp(now, true),
            Rotation::SizeOnly => local_stamp(now, false),
        };
        let backup = free_backup_name(&self.path, &stamp);
        std::fs::rename(&self.path, &backup)?;
        self.file = OpenOptions::new()
            .create(true)
            .write(true)
            .truncate(true)
            .open(&self.path)?;
        self.size = 0;
        self.rotations += 1;
        self.next = self.next_after(now);
        Ok(())
    }
}

/// `<dir>/<stem>-<stamp><ext>`, or with `.1`, `.2`... before the extension when taken.
fn free_backup_name(path: &Path, stamp: &str) -> PathBuf {
    let dir = path.parent().unwrap_or(Path::new("."));
    let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("log");
    let (stem, ext) = match name.rfind('.') {
        Some(i) if i > 0 => (&name[..i], &name[i..]),
        _ => (name, ""),
    };
    let mut candidate = dir.join(format!("{stem}-{stamp}{ext}"));
    let mut n = 1;
    while candidate.exists() {
        candidate = dir.join(format!("{stem}-{stamp}.{n}{ext}"));
        n += 1;
    }
    candidate
}

fn unix_secs(t: SystemTime) -> i64 {
    t.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs() as i64)
}

/// Local broken-down time and its UTC offset (seconds east).
fn local_tm(t: SystemTime) -> (libc::tm, i64) {
    // glibc's localtime_r reads the zone (TZ, /etc/localtime) once by itself.
    let secs = unix_secs(t) as libc::time_t;
    // SAFETY: an all-zero tm is a valid value to be overwritten; localtime_r is the
    // thread-safe variant and only writes through the pointer given.
    let mut tm: libc::tm = unsafe { std::mem::zeroed() };
    let ok = unsafe { !libc::localtime_r(&secs, &mut tm).is_null() };
    if !ok {
        // SAFETY: as above, gmtime_r only writes through the pointer given.
        unsafe { libc::gmtime_r(&secs, &mut tm) };
        return (tm, 0);
    }
    let off = tm.tm_gmtoff;
    (tm, off)
}

fn local_offset(t: SystemTime) -> i64 {
    local_tm(t).1
}

/// motan-go's backup time format `20060102-15` (with `withMillis`: `20060102-150405.000`).
fn local_stamp(t: SystemTime, with_millis: bool) -> String {
    let (tm, _) = local_tm(t);
    let day = format!(
        "{:04}{:02}{:02}-{:02}",
        tm.tm_year + 1900,
        tm.tm_mon + 1,
        tm.tm_mday,
        tm.tm_hour
    );
    if with_millis {
        let ms = t.duration_since(UNIX_EPOCH).map_or(0, |d| d.subsec_millis());
        format!("{day}{:02}{:02}.{ms:03}", tm.tm_min, tm.tm_sec)
    } else {
        day
    }
}

/// zap's ISO8601 time encoder (`2006-01-02T15:04:05.000Z0700`) in local time, as motan-go's
/// access and metrics logs start their lines: `Z` for UTC, else e.g. `+0800`.
pub fn iso8601_local(t: SystemTime) -> String {
    let (tm, off) = local_tm(t);
    let ms = t.duration_since(UNIX_EPOCH).map_or(0, |d| d.subsec_millis());
    let zone = if off == 0 {
        "Z".to_string()
    } else {
        let sign = if off < 0 { '-' } else { '+' };
        let a = off.abs();
        format!("{sign}{:02}{:02}", a / 3600, (a % 3600) / 60)
    };
    format!(
        "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}.{ms:03}{zone}",
        tm.tm_year + 1900,
        tm.tm_mon + 1,
        tm.tm_mday,
        tm.tm_hour,
        tm.tm_min,
        tm.tm_sec
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    struct TempDir(PathBuf);
    impl Drop for TempDir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
    fn temp_dir(tag: &str) -> TempDir {
        let d = std::env::temp_dir().join(format!("sockmesh-logfile-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        TempDir(d)
    }

    #[test]
    fn rotates_on_time_and_keeps_every_line() {
        let dir = temp_dir("every");
        let path = dir.0.join("sub/x-access.log");
        let mut f = RotatingFile::open(path.clone(), Rotation::Every(Duration::from_secs(60))).unwrap();
        let t0 = SystemTime::now();
        f.write(b"a\n", t0).unwrap();
        f.write(b"b\n", t0 + Duration::from_secs(61)).unwrap();
        f.write(b"c\n", t0 + Duration::from_secs(62)).unwrap();
        // Two rotations within the same millisecond stamp would collide: the second gets `.1`.
        f.rotate(t0 + Duration::from_secs(62)).unwrap();
        f.rotate(t0 + Duration::from_secs(62)).unwrap();
        assert_eq!(f.rotations(), 3);
        let mut all = String::new();
        let mut names = Vec::new();
        for e in std::fs::read_dir(path.parent().unwrap()).unwrap() {
            let p = e.unwrap().path();
            names.push(p.file_name().unwrap().to_str().unwrap().to_string());
            all.push_str(&std::fs::read_to_string(&p).unwrap());
        }
        assert_eq!(names.len(), 4, "{names:?}");
        assert!(names.iter().any(|n| n.ends_with(".1.log")), "{names:?}");
        let mut lines: Vec<&str> = all.lines().collect();
        lines.sort();
        assert_eq!(lines, ["a", "b", "c"]);
    }

    #[test]
    fn hourly_boundary_and_names() {
        let dir = temp_dir("hourly");
        let f = RotatingFile::open(dir.0.join("a.log"), Rotation::Hourly).unwrap();
        let now = SystemTime::now();
        let next = f.next.unwrap();
        let wait = next.duration_since(now).unwrap();
        assert!(wait <= Duration::from_secs(3600));
        assert_eq!((unix_secs(next) + local_offset(next)) % 3600, 0);
        assert_eq!(
            free_backup_name(Path::new("/l/agent-access.log"), "20260101-03"),
            PathBuf::from("/l/agent-access-20260101-03.log")
        );
        let t = iso8601_local(now);
        assert_eq!(t.len(), if local_offset(now) == 0 { 24 } else { 28 }, "{t}");
        assert_eq!(&t[10..11], "T");
    }
}
