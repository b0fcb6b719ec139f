//! The few raw system calls aya 0.14 does not wrap: bpf_link for getsockopt and sk_msg
//! (aya has no `FdLink` conversion for them), pinning and reopening links, swapping the program
//! behind a link, and the socket options the agent needs.
use std::ffi::CString;
use std::io;
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV6};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::path::Path;

const BPF_OBJ_PIN: libc::c_long = 6;
const BPF_OBJ_GET: libc::c_long = 7;
const BPF_OBJ_GET_INFO_BY_FD: libc::c_long = 15;
const BPF_LINK_CREATE: libc::c_long = 28;
const BPF_LINK_UPDATE: libc::c_long = 29;

/// `enum bpf_attach_type` values from the kernel uapi (include/uapi/linux/bpf.h).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u32)]
pub enum AttachType {
    SockOps = 3,
    SkMsgVerdict = 7,
    Inet4Connect = 10,
    Inet6Connect = 11,
    CgroupGetsockopt = 21,
    Inet4Getpeername = 29,
    Inet6Getpeername = 30,
    InetSockRelease = 34,
}

/// `union bpf_attr`, large enough for every command used here (the kernel zero-checks the tail).
#[repr(C, align(8))]
struct BpfAttr([u8; 128]);

impl BpfAttr {
    fn new() -> Self {
        BpfAttr([0; 128])
    }
    fn put_u32(&mut self, off: usize, v: u32) {
        self.0[off..off + 4].copy_from_slice(&v.to_ne_bytes());
    }
    fn put_u64(&mut self, off: usize, v: u64) {
        self.0[off..off + 8].copy_from_slice(&v.to_ne_bytes());
    }
}

fn bpf(cmd: libc::c_long, attr: &mut BpfAttr) -> io::Result<libc::c_long> {
    // SAFETY: attr is a properly sized, zero-initialised bpf_attr for `cmd`.
    let r = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            cmd,
            attr as *mut BpfAttr,
            std::mem::size_of::<BpfAttr>(),
        )
    };
    if r < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(r)
    }
}

fn owned(fd: libc::c_long) -> OwnedFd {
    // SAFETY: the kernel just returned this new descriptor to us.
    unsafe { OwnedFd::from_raw_fd(fd as RawFd) }
}

/// `BPF_LINK_CREATE`: attach `prog` to `target` (a cgroup directory fd or a sockmap fd).
pub fn link_create(prog: BorrowedFd<'_>, target: BorrowedFd<'_>, at: AttachType) -> io::Result<OwnedFd> {
    let mut a = BpfAttr::new();
    a.put_u32(0, prog.as_raw_fd() as u32);
    a.put_u32(4, target.as_raw_fd() as u32);
    a.put_u32(8, at as u32);
    bpf(BPF_LINK_CREATE, &mut a).map(owned)
}

/// `BPF_LINK_UPDATE`: swap the program behind an existing link, without a detach gap.
pub fn link_update(link: BorrowedFd<'_>, new_prog: BorrowedFd<'_>) -> io::Result<()> {
    let mut a = BpfAttr::new();
    a.put_u32(0, link.as_raw_fd() as u32);
    a.put_u32(4, new_prog.as_raw_fd() as u32);
    bpf(BPF_LINK_UPDATE, &mut a).map(|_| ())
}

fn cpath(path: &Path) -> io::Result<CString> {
    use std::os::unix::ffi::OsStrExt;
    CString::new(path.as_os_str().as_bytes()).map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))
}

/// `BPF_OBJ_PIN`: pin any BPF object (link, map, program) at `path` on a bpffs.
pub fn obj_pin(fd: BorrowedFd<'_>, path: &Path) -> io::Result<()> {
    let p = cpath(path)?;
    let mut a = BpfAttr::new();
    a.put_u64(0, p.as_ptr() as u64);
    a.put_u32(8, fd.as_raw_fd() as u32);
    bpf(BPF_OBJ_PIN, &mut a).map(|_| ())
}

/// `BPF_OBJ_GET`: reopen a pinned object.
pub fn obj_get(path: &Path) -> io::Result<OwnedFd> {
    let p = cpath(path)?;
    let mut a = BpfAttr::new();
    a.put_u64(0, p.as_ptr() as u64);
    bpf(BPF_OBJ_GET, &mut a).map(owned)
}

/// The first fields of `struct bpf_map_info`: what decides whether a pinned map fits a program.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MapShape {
    pub map_type: u32,
    pub id: u32,
    pub key_size: u32,
    pub value_size: u32,
    pub max_entries: u32,
    pub map_flags: u32,
}

/// The ids behind a bpf_link (`struct bpf_link_info`): its program and, for a cgroup link, the
/// cgroup (0 once the cgroup is gone and the kernel detached the link).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LinkIds {
    pub link_type: u32,
    pub id: u32,
    pub prog_id: u32,
    pub cgroup_id: u64,
}

/// `BPF_LINK_TYPE_CGROUP`.
pub const LINK_TYPE_CGROUP: u32 = 3;

/// `BPF_OBJ_GET_INFO_BY_FD` into a zeroed buffer; the kernel fills as much as it knows.
fn obj_info(fd: BorrowedFd<'_>) -> io::Result<[u8; 128]> {
    let mut info = [0u8; 128];
    let mut a = BpfAttr::new();
    a.put_u32(0, fd.as_raw_fd() as u32);
    a.put_u32(4, info.len() as u32);
    a.put_u64(8, info.as_mut_ptr() as u64);
    bpf(BPF_OBJ_GET_INFO_BY_FD, &mut a)?;
    Ok(info)
}

fn u32_at(b: &[u8], off: usize) -> u32 {
    u32::from_ne_bytes(b[off..off + 4].try_into().unwrap())
}

/// Type, sizes and flags of a map (a map fd, e.g. from `obj_get` on a map pin).
pub fn map_shape(fd: BorrowedFd<'_>) -> io::Result<MapShape> {
    let b = obj_info(fd)?;
    Ok(MapShape {
        map_type: u32_at(&b, 0),
        id: u32_at(&b, 4),
        key_size: u32_at(&b, 8),
        value_size: u32_at(&b, 12),
        max_entries: u32_at(&b, 16),
        map_flags: u32_at(&b, 20),
    })
}

/// Program and target of a link (a link fd, e.g. from `obj_get` on a link pin).
pub fn link_ids(fd: BorrowedFd<'_>) -> io::Result<LinkIds> {
    let b = obj_info(fd)?;
    let link_type = u32_at(&b, 0);
    Ok(LinkIds {
        link_type,
        id: u32_at(&b, 4),
        prog_id: u32_at(&b, 8),
        // The union after the three u32s is 8-aligned: `cgroup.cgroup_id` sits at 16.
        cgroup_id: if link_type == LINK_TYPE_CGROUP {
            u64::from_ne_bytes(b[16..24].try_into().unwrap())
        } else {
            0
        },
    })
}

const BPF_FS_MAGIC: i64 = 0xcafe_4a11;

/// Whether `path` is on a bpffs.
pub fn is_bpffs(path: &Path) -> bool {
    let Ok(p) = cpath(path) else { return false };
    // SAFETY: statfs writes into the zeroed struct we own.
    unsafe {
        let mut st: libc::statfs = std::mem::zeroed();
        libc::statfs(p.as_ptr(), &mut st) == 0 && st.f_type as i64 == BPF_FS_MAGIC
    }
}

/// Mount bpffs at `path` unless one is already there. Returns true when it mounted one. Ours is
/// mounted with mode 0700: only root may create directories and pins in it (a default bpffs
/// root is 1777).
pub fn ensure_bpffs(path: &Path) -> io::Result<bool> {
    if is_bpffs(path) {
        return Ok(false);
    }
    std::fs::create_dir_all(path)?;
    let target = cpath(path)?;
    let src = CString::new("bpf").unwrap();
    let data = CString::new("mode=0700").unwrap();
    // SAFETY: plain mount(2) with valid C strings.
    let r = unsafe {
        libc::mount(
            src.as_ptr(),
            target.as_ptr(),
            src.as_ptr(),
            0,
            data.as_ptr().cast(),
        )
    };
    if r != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(true)
}

fn getsockopt_raw(fd: BorrowedFd<'_>, level: i32, name: i32, buf: &mut [u8]) -> io::Result<usize> {
    let mut len = buf.len() as libc::socklen_t;
    // SAFETY: buf is valid for len bytes.
    let r = unsafe { libc::getsockopt(fd.as_raw_fd(), level, name, buf.as_mut_ptr().cast(), &mut len) };
    if r != 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(len as usize)
    }
}

/// The original destination of an intercepted connection: `getsockopt(SOL_IP, SO_ORIGINAL_DST)`
/// on an IPv4 socket, `getsockopt(SOL_IPV6, IP6T_SO_ORIGINAL_DST)` on an IPv6 one. Answered by
/// conntrack (iptables REDIRECT) or by our cgroup/getsockopt program (eBPF interception, to the
/// agent's marked sockets only) alike.
pub fn original_dst(fd: impl AsFd) -> io::Result<SocketAddr> {
    let fd = fd.as_fd();
    let mut domain = [0u8; 4];
    getsockopt_raw(fd, libc::SOL_SOCKET, libc::SO_DOMAIN, &mut domain)?;
    // sockaddr_in6 is 28 bytes; sockaddr_in 16.
    let mut buf = [0u8; 28];
    let (level, name) = if i32::from_ne_bytes(domain) == libc::AF_INET6 {
        (sockmesh_common::SOL_IPV6, sockmesh_common::IP6T_SO_ORIGINAL_DST)
    } else {
        (libc::SOL_IP, sockmesh_common::SO_ORIGINAL_DST)
    };
    let n = getsockopt_raw(fd, level, name, &mut buf)?;
    parse_sockaddr(&buf[..n.min(buf.len())])
}

/// A `sockaddr_in` or `sockaddr_in6` as the kernel writes it.
fn parse_sockaddr(b: &[u8]) -> io::Result<SocketAddr> {
    let bad = |what: &str| {
        io::Error::new(
            io::ErrorKind::InvalidData,
            format!("original destination: {what}"),
        )
    };
    if b.len() < 8 {
        return Err(bad("answer too short"));
    }
    let port = u16::from_be_bytes([b[2], b[3]]);
    match i32::from(u16::from_ne_bytes([b[0], b[1]])) {
        libc::AF_INET => Ok(SocketAddr::new(
            Ipv4Addr::new(b[4], b[5], b[6], b[7]).into(),
            port,
        )),
        libc::AF_INET6 if b.len() >= 24 => {
            let ip: [u8; 16] = b[8..24].try_into().expect("16 bytes");
            let scope = if b.len() >= 28 {
                u32::from_ne_bytes(b[24..28].try_into().expect("4 bytes"))
            } else {
                0
            };
            Ok(SocketAddrV6::new(Ipv6Addr::from(ip), port, 0, scope).into())
        }
        _ => Err(bad("neither an IPv4 nor an IPv6 address")),
    }
}

/// `SO_NETNS_COOKIE` (Linux 5.14+): the same cookie the BPF programs key sockets by.
pub fn netns_cookie(fd: impl AsFd) -> io::Result<u64> {
    const SO_NETNS_COOKIE: i32 = 71;
    let mut buf = [0u8; 8];
    getsockopt_raw(fd.as_fd(), libc::SOL_SOCKET, SO_NETNS_COOKIE, &mut buf)?;
    Ok(u64::from_ne_bytes(buf))
}

/// `CLOCK_MONOTONIC` in nanoseconds: the clock `bpf_ktime_get_ns` reads, so the kernel
/// programs can compare the agent's heartbeat with their own "now".
pub fn monotonic_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid timespec for the call to fill; CLOCK_MONOTONIC always exists.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

/// `CLOCK_MONOTONIC` in milliseconds: a timestamp that fits an `AtomicU64` (when a pool was
/// last used, when a shard last ran).
pub fn monotonic_ms() -> u64 {
    monotonic_ns() / 1_000_000
}

/// Raise the soft RLIMIT_NOFILE to the hard limit (systemd's unit does it with LimitNOFILE; a
/// hand-started agent gets 1024 otherwise). Returns (old soft, new soft).
pub fn raise_nofile_limit() -> io::Result<(u64, u64)> {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit write/read only the struct we pass.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) } != 0 {
        return Err(io::Error::last_os_error());
    }
    let old = lim.rlim_cur;
    if lim.rlim_cur < lim.rlim_max {
        lim.rlim_cur = lim.rlim_max;
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &lim) } != 0 {
            return Err(io::Error::last_os_error());
        }
    }
    Ok((old, lim.rlim_cur))
}

/// Bound what glibc's allocator keeps (call before the runtime starts its threads). glibc gives
/// every thread an arena of its own, up to 8 per core, and an arena keeps the pages it freed;
/// its mmap threshold also grows to the largest block freed so far (the kernel BTF aya parses at
/// load is megabytes), after which big buffers come from, and stay in, the arenas. Measured on a
/// 2-core host: with interception on, the idle agent held 24 MiB of anonymous memory this way
/// (ARCHITECTURE.md, "Memory"). At most `arenas` arenas (one per runtime
/// worker keeps them from contending) and a fixed 64 KiB threshold. Settings given through
/// `MALLOC_ARENA_MAX` or `GLIBC_TUNABLES` win.
#[cfg(target_env = "gnu")]
pub fn tune_malloc(arenas: usize) {
    let set = |k: &str| std::env::var_os(k).is_some();
    if set("MALLOC_ARENA_MAX") || set("GLIBC_TUNABLES") {
        return;
    }
    let arenas = arenas.clamp(1, 64) as libc::c_int;
    // SAFETY: mallopt only changes allocator parameters; both values are in range.
    unsafe {
        libc::mallopt(libc::M_ARENA_MAX, arenas);
        // 64 KiB: the 64 KiB+ frames of a pipelining peer and inflated bodies are mmapped and
        // given back on free (tests/hostile.rs: +47..+57 MiB peak over idle under every attack,
        // against +57..+72 MiB with glibc's sliding threshold).
        libc::mallopt(libc::M_MMAP_THRESHOLD, 64 * 1024);
    }
}

#[cfg(not(target_env = "gnu"))]
pub fn tune_malloc(_arenas: usize) {}

/// Hand the allocator's free pages back to the kernel (every arena), after work whose memory
/// is gone for good: loading and self-testing the BPF programs.
#[cfg(target_env = "gnu")]
pub fn release_free_memory() {
    // SAFETY: malloc_trim has no preconditions.
    unsafe {
        libc::malloc_trim(0);
    }
}

#[cfg(not(target_env = "gnu"))]
pub fn release_free_memory() {}

/// `SO_PEERGROUPS` (Linux 4.13+): the supplementary groups of a Unix socket's peer as they were
/// at connect(), taken with its SO_PEERCRED credentials. Unlike /proc/<pid>/status this cannot
/// race with the peer exiting and its PID being reused.
pub fn peer_groups(fd: impl AsFd) -> io::Result<Vec<u32>> {
    const SO_PEERGROUPS: i32 = 59;
    // Most processes have a handful of groups; on ERANGE ask again with room for NGROUPS_MAX.
    for capacity in [64usize, 65536] {
        let mut buf = vec![0u8; capacity * 4];
        match getsockopt_raw(fd.as_fd(), libc::SOL_SOCKET, SO_PEERGROUPS, &mut buf) {
            Ok(len) => {
                return Ok(buf[..len]
                    .chunks_exact(4)
                    .map(|g| u32::from_ne_bytes([g[0], g[1], g[2], g[3]]))
                    .collect());
            }
            Err(e) if e.raw_os_error() == Some(libc::ERANGE) => continue,
            Err(e) => return Err(e),
        }
    }
    Err(io::Error::from_raw_os_error(libc::ERANGE))
}

/// The gid of group `name` in the host's group database (getgrnam_r, so NSS sources count).
pub fn group_id(name: &str) -> io::Result<Option<u32>> {
    let c =
        CString::new(name).map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "NUL in group name"))?;
    let mut buf = vec![0 as libc::c_char; 4096];
    loop {
        // SAFETY: getgrnam_r writes the entry into grp and its strings into buf (len given);
        // result points at grp or is null.
        let (r, found, gid) = unsafe {
            let mut grp: libc::group = std::mem::zeroed();
            let mut result: *mut libc::group = std::ptr::null_mut();
            let r = libc::getgrnam_r(c.as_ptr(), &mut grp, buf.as_mut_ptr(), buf.len(), &mut result);
            (r, !result.is_null(), grp.gr_gid)
        };
        match r {
            0 => return Ok(found.then_some(gid)),
            libc::ERANGE if buf.len() < 1 << 20 => buf.resize(buf.len() * 2, 0),
            e => return Err(io::Error::from_raw_os_error(e)),
        }
    }
}

/// The daemon's runtime directory: the pin directories' lock files (`intercept::pins`) and, by
/// default, the control socket (`admin::control_socket`). Made by [`run_dir`].
pub const RUN_DIR: &str = "/run/sockmesh";

/// The effective uid of this process.
pub fn euid() -> u32 {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() }
}

/// Make sure `dir` is a directory only we can change: a directory (a symbolic link is not
/// followed) of our euid that neither group nor others may write to, so no one else can
/// rename or replace what we keep in it. With `create`, a missing one is made with its parents,
/// mode 0700, or 0750 and given to `group` when one is named (whose members may then reach into
/// it, never write).
pub fn private_dir(dir: &Path, create: bool, group: Option<u32>) -> io::Result<()> {
    use std::os::unix::fs::{DirBuilderExt, MetadataExt, PermissionsExt};
    let refuse = |why: String| io::Error::other(format!("refusing {}: {why}", dir.display()));
    let meta = match std::fs::symlink_metadata(dir) {
        Err(e) if e.kind() == io::ErrorKind::NotFound && create => {
            let mode = if group.is_some() { 0o750 } else { 0o700 };
            std::fs::DirBuilder::new()
                .recursive(true)
                .mode(mode)
                .create(dir)?;
            if let Some(g) = group {
                std::os::unix::fs::chown(dir, None, Some(g))?;
            }
            // The umask may have taken bits the group needs.
            std::fs::set_permissions(dir, std::fs::Permissions::from_mode(mode))?;
            std::fs::symlink_metadata(dir)?
        }
        other => other?,
    };
    if !meta.is_dir() {
        return Err(refuse("not a directory (a symbolic link is not followed)".into()));
    }
    if meta.uid() != euid() || meta.mode() & 0o022 != 0 {
        return Err(refuse(format!(
            "it must belong to uid {} and not be writable by group or others (it has uid {}, mode {:o}); remove it or fix its owner and mode",
            euid(),
            meta.uid(),
            meta.mode() & 0o7777
        )));
    }
    Ok(())
}

/// [`RUN_DIR`], checked with [`private_dir`] and made when missing: 0700, or 0750 of group
/// `group` (`sockmesh.admin.control_group`, whose members reach the control socket in it). It is
/// sockmesh's own, so an existing one is given to `group` too; without a group it stays as it is
/// (lock files and the socket have modes of their own).
pub fn run_dir(group: Option<u32>) -> io::Result<&'static Path> {
    let dir = Path::new(RUN_DIR);
    own_dir(dir, group)?;
    Ok(dir)
}

/// [`run_dir`] for any directory.
fn own_dir(dir: &Path, group: Option<u32>) -> io::Result<()> {
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    private_dir(dir, true, group)?;
    if let Some(g) = group {
        let meta = std::fs::symlink_metadata(dir)?;
        if meta.gid() != g || meta.mode() & 0o7777 != 0o750 {
            std::os::unix::fs::chown(dir, None, Some(g))?;
            std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o750))?;
        }
    }
    Ok(())
}

/// This process's CPU time so far (user + system, seconds) and resident memory (bytes), from
/// /proc/self/stat and /proc/self/statm.
pub fn self_usage() -> io::Result<(f64, u64)> {
    let bad = || io::Error::new(io::ErrorKind::InvalidData, "unexpected /proc/self/stat format");
    let stat = std::fs::read_to_string("/proc/self/stat")?;
    // Fields after the command name (which may hold spaces) start at field 3, `state`.
    let rest = stat.rsplit_once(')').ok_or_else(bad)?.1;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| fields.get(i).and_then(|f| f.parse::<u64>().ok()).ok_or_else(bad);
    // utime and stime are fields 14 and 15, i.e. 11 and 12 after `state`.
    let cpu_ticks = ticks(11)? + ticks(12)?;
    // SAFETY: sysconf has no preconditions.
    let (hz, page) = unsafe {
        (
            libc::sysconf(libc::_SC_CLK_TCK),
            libc::sysconf(libc::_SC_PAGESIZE),
        )
    };
    let statm = std::fs::read_to_string("/proc/self/statm")?;
    let pages: u64 = statm
        .split_whitespace()
        .nth(1)
        .and_then(|f| f.parse().ok())
        .ok_or_else(bad)?;
    Ok((cpu_ticks as f64 / hz.max(1) as f64, pages * page.max(1) as u64))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn private_directories_and_the_run_directory_shared_with_a_group() {
        use std::os::unix::fs::{MetadataExt, PermissionsExt};
        let base = std::env::temp_dir().join(format!("sockmesh-sys-dir-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&base);
        let mode = |p: &Path| std::fs::metadata(p).unwrap().mode() & 0o7777;
        let dir = base.join("run");
        assert!(private_dir(&dir, false, None).is_err(), "missing and not created");
        // Made private first (the lock), then given to the control group (the control socket).
        own_dir(&dir, None).unwrap();
        assert_eq!(mode(&dir), 0o700);
        // SAFETY: getegid has no preconditions and cannot fail.
        let gid = unsafe { libc::getegid() };
        own_dir(&dir, Some(gid)).unwrap();
        assert_eq!((mode(&dir), std::fs::metadata(&dir).unwrap().gid()), (0o750, gid));
        own_dir(&dir, None).unwrap();
        assert_eq!(mode(&dir), 0o750, "left as it is without a group");
        // Writable by others, or not a directory: refused, and not repaired.
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o777)).unwrap();
        let err = own_dir(&dir, Some(gid)).unwrap_err().to_string();
        assert!(
            err.contains("not be writable by group or others") && err.contains("mode 777"),
            "{err}"
        );
        assert_eq!(mode(&dir), 0o777);
        let link = base.join("link");
        std::os::unix::fs::symlink(&dir, &link).unwrap();
        let err = private_dir(&link, true, None).unwrap_err().to_string();
        assert!(err.contains("not a directory"), "{err}");
        std::fs::remove_dir_all(&base).unwrap();
    }

    #[test]
    fn parses_both_sockaddr_families() {
        let mut v4 = [0u8; 16];
        v4[..2].copy_from_slice(&(libc::AF_INET as u16).to_ne_bytes());
        v4[2..4].copy_from_slice(&8100u16.to_be_bytes());
        v4[4..8].copy_from_slice(&[10, 1, 2, 3]);
        assert_eq!(parse_sockaddr(&v4).unwrap().to_string(), "10.1.2.3:8100");
        let mut v6 = [0u8; 28];
        v6[..2].copy_from_slice(&(libc::AF_INET6 as u16).to_ne_bytes());
        v6[2..4].copy_from_slice(&443u16.to_be_bytes());
        let ip: Ipv6Addr = "fd00:213:5::2".parse().unwrap();
        v6[8..24].copy_from_slice(&ip.octets());
        assert_eq!(parse_sockaddr(&v6).unwrap().to_string(), "[fd00:213:5::2]:443");
        assert!(parse_sockaddr(&v6[..20]).is_err());
        assert!(parse_sockaddr(&[0u8; 16]).is_err());
    }
}
