//! The few raw system calls aya 0.14 does not wrap: bpf_link for getsockopt and sk_msg
//! (aya has no `FdLink` conversion for them), pinning and reopening links, swapping the program
//! behind a link, and the socket options the agent needs.
use std::ffi::CString;
use std::io;
use std::net::{Ipv4Addr, SocketAddrV4};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::path::Path;

const BPF_OBJ_PIN: libc::c_long = 6;
const BPF_OBJ_GET: libc::c_long = 7;
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

/// Mount bpffs at `path` unless one is already there. Returns true when it mounted one.
pub fn ensure_bpffs(path: &Path) -> io::Result<bool> {
    if is_bpffs(path) {
        return Ok(false);
    }
    std::fs::create_dir_all(path)?;
    let target = cpath(path)?;
    let src = CString::new("bpf").unwrap();
    // SAFETY: plain mount(2) with valid C strings.
    let r = unsafe { libc::mount(src.as_ptr(), target.as_ptr(), src.as_ptr(), 0, std::ptr::null()) };
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

/// `getsockopt(SOL_IP, SO_ORIGINAL_DST)`: answered by conntrack (iptables REDIRECT) or by our
/// cgroup/getsockopt program (eBPF interception) alike.
pub fn original_dst(fd: impl AsFd) -> io::Result<SocketAddrV4> {
    let mut buf = [0u8; 16];
    let n = getsockopt_raw(
        fd.as_fd(),
        libc::SOL_IP,
        sockmesh_common::SO_ORIGINAL_DST,
        &mut buf,
    )?;
    if n < 8 || u16::from_ne_bytes([buf[0], buf[1]]) != libc::AF_INET as u16 {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            "SO_ORIGINAL_DST: not an IPv4 address",
        ));
    }
    let port = u16::from_be_bytes([buf[2], buf[3]]);
    let ip = Ipv4Addr::new(buf[4], buf[5], buf[6], buf[7]);
    Ok(SocketAddrV4::new(ip, port))
}

/// `SO_NETNS_COOKIE` (Linux 5.14+): the same cookie the BPF programs key sockets by.
pub fn netns_cookie(fd: impl AsFd) -> io::Result<u64> {
    const SO_NETNS_COOKIE: i32 = 71;
    let mut buf = [0u8; 8];
    getsockopt_raw(fd.as_fd(), libc::SOL_SOCKET, SO_NETNS_COOKIE, &mut buf)?;
    Ok(u64::from_ne_bytes(buf))
}

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
