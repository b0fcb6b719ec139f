//! Who may change the daemon through the admin API (issue #15): the routes that mutate and which
//! of them the loopback TCP port can ever be allowed to serve; the `sockmesh.admin` keys that
//! decide the rest are typed and checked in sections.rs. Every other admin route only reads.
/// Where the control socket lives unless `sockmesh.admin.control_socket` says otherwise; the
/// CLI's default too.
pub const DEFAULT_CONTROL_SOCKET: &str = "/run/sockmesh/control.sock";

/// `sun_path` holds 108 bytes with the NUL; the socket is bound under its name plus
/// [`BIND_SUFFIX`] first, then renamed into place.
pub const MAX_SOCKET_PATH: usize = 107 - BIND_SUFFIX.len();

/// The name the control socket is bound under before its mode and owner are set and it is
/// renamed to its real name, so it is never reachable with the wrong permissions.
pub const BIND_SUFFIX: &str = ".new";

/// An admin route that changes the daemon.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mutation {
    Online,
    Offline,
    SwitcherSet,
    RatelimitSet,
    LogConfigSet,
    Reload,
    /// motan-go's `/reload/clusters`: re-read the configuration file (as `/reload`).
    ReloadClusters,
    Shutdown,
    InterceptEnable,
    InterceptDisable,
    RegistryRegister,
    RegistryUnregister,
    RegistrySubscribe,
    MetaUpdate,
    MetaDelete,
}

impl Mutation {
    pub const ALL: [Mutation; 15] = [
        Mutation::Online,
        Mutation::Offline,
        Mutation::SwitcherSet,
        Mutation::RatelimitSet,
        Mutation::LogConfigSet,
        Mutation::Reload,
        Mutation::ReloadClusters,
        Mutation::Shutdown,
        Mutation::InterceptEnable,
        Mutation::InterceptDisable,
        Mutation::RegistryRegister,
        Mutation::RegistryUnregister,
        Mutation::RegistrySubscribe,
        Mutation::MetaUpdate,
        Mutation::MetaDelete,
    ];

    pub fn path(self) -> &'static str {
        match self {
            Mutation::Online => "/200",
            Mutation::Offline => "/503",
            Mutation::SwitcherSet => "/switcher/set",
            Mutation::RatelimitSet => "/ratelimit/set",
            Mutation::LogConfigSet => "/logConfig/set",
            Mutation::Reload => "/reload",
            Mutation::ReloadClusters => "/reload/clusters",
            Mutation::Shutdown => "/shutdown",
            Mutation::InterceptEnable => "/intercept/enable",
            Mutation::InterceptDisable => "/intercept/disable",
            Mutation::RegistryRegister => "/registry/register",
            Mutation::RegistryUnregister => "/registry/unregister",
            Mutation::RegistrySubscribe => "/registry/subscribe",
            Mutation::MetaUpdate => "/meta/update",
            Mutation::MetaDelete => "/meta/delete",
        }
    }

    /// The mutation a request path names, if any.
    pub fn from_path(path: &str) -> Option<Mutation> {
        Mutation::ALL.into_iter().find(|m| m.path() == path)
    }

    /// Served only on the control socket, whatever the configuration says: these change what
    /// the host's processes go through (interception), which configuration runs, or stop the
    /// daemon.
    pub fn socket_only(self) -> bool {
        matches!(
            self,
            Mutation::Reload
                | Mutation::ReloadClusters
                | Mutation::Shutdown
                | Mutation::InterceptEnable
                | Mutation::InterceptDisable
        )
    }

    /// Also accepted as GET. motan-go's StatusHandler (manageHandler.go) switches /200 and /503
    /// on the path alone, whatever the method, so its deploy scripts call them as plain
    /// `curl http://127.0.0.1:8002/200`, i.e. GET. Every other mutation needs POST.
    pub fn allows_get(self) -> bool {
        matches!(self, Mutation::Online | Mutation::Offline)
    }
}

impl TryFrom<String> for Mutation {
    type Error = String;
    fn try_from(s: String) -> Result<Mutation, String> {
        Mutation::from_path(&s).ok_or_else(|| {
            let all: Vec<&str> = Mutation::ALL.iter().map(|m| m.path()).collect();
            format!("{s:?} is not an admin mutation (those are {})", all.join(", "))
        })
    }
}

/// The gid `sockmesh.admin.control_group` names: a number, or a group of this host.
pub fn resolve_group(group: &str) -> Result<u32, String> {
    if let Ok(gid) = group.parse::<u32>() {
        return Ok(gid);
    }
    match crate::sys::group_id(group) {
        Ok(Some(gid)) => Ok(gid),
        Ok(None) => Err(format!("no group {group:?} on this host (give a name or a gid)")),
        Err(e) => Err(format!("looking up group {group:?}: {e}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_round_trip_and_only_status_switches_allow_get() {
        for m in Mutation::ALL {
            assert_eq!(Mutation::from_path(m.path()), Some(m));
        }
        assert_eq!(Mutation::from_path("/status"), None);
        let get: Vec<_> = Mutation::ALL.into_iter().filter(|m| m.allows_get()).collect();
        assert_eq!(get, [Mutation::Online, Mutation::Offline]);
        assert!(
            Mutation::try_from("/nope".to_string())
                .unwrap_err()
                .contains("/200, /503")
        );
        assert_eq!(resolve_group("root"), Ok(0));
        assert_eq!(resolve_group("4242"), Ok(4242));
        assert!(
            resolve_group("no-such-group-sockmesh")
                .unwrap_err()
                .contains("no group")
        );
    }
}
