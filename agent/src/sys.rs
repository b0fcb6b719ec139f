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

#[cfg(test)]
mod tests {
    use super::*;

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
