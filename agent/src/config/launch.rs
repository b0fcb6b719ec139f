//! How `sockmesh run` was started, as motan-go's init scripts start motan-go: the command-line
//! flags (`-c`, `-pool`, `-application`, `-idc`, `-localIP`, `-port`, `-mport`, `-eport`,
//! `-hport`, `-recover`, `-pidfile`), pool mode (a configuration directory assembled from
//! `basic.yaml`, `applications/`, `services/`, `pools/` and the `http/` files, with
//! `import-refer` and `import-http-location`), and the `motan-agent` keys of the agent's own
//! process (`pidfile`, `runtime_dir`, `initClusterTimeout`).
//!
//! Flags are written into the `motan-agent` section before the configuration is typed, so a
//! flag has exactly the effect of its key (motan-go: a flag wins over the key), and `config
//! validate` checks the same result.
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_yaml_ng::{Mapping, Value};

use super::sections::{ConfigErrors, SettingError};

/// The command-line flags of motan-go's agent (all optional; `None` = not given).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct LaunchOptions {
    /// `-c`: a configuration file, or a directory for pool mode.
    pub config: Option<PathBuf>,
    /// `-pool`: e.g. `app-idc-level`; its first part names the application unless
    /// `-application` does.
    pub pool: Option<String>,
    /// `-application`: the application file of pool mode; also the agent's `application`
    /// when the configuration sets none.
    pub application: Option<String>,
    /// `-idc`: what `${idc}` in refer groups is tried as first (resolved at cluster start).
    pub idc: Option<String>,
    /// `-localIP`: `motan-agent.localIP`.
    pub local_ip: Option<String>,
    pub port: Option<u16>,
    pub mport: Option<u16>,
    pub eport: Option<u16>,
    pub hport: Option<u16>,
    /// `-recover`: start with the 200/503 status saved in `runtime_dir` instead of 503.
    pub recover: bool,
    /// `-pidfile`: `motan-agent.pidfile`.
    pub pidfile: Option<PathBuf>,
}

/// motan-go's flag names that take a value, and `recover` (a boolean), as Go's `flag` package
/// spells them: one dash (two are accepted too).
pub const VALUE_FLAGS: [&str; 10] = [
    "c",
    "pool",
    "application",
    "idc",
    "localIP",
    "port",
    "mport",
    "eport",
    "hport",
    "pidfile",
];
pub const BOOL_FLAGS: [&str; 1] = ["recover"];

/// Rewrite motan-go's single-dash flags (`-pool x`, `-mport=8002`, `-recover`) to the long
/// options clap knows (`--pool x`, `--mport=8002`, `--recover`). Only these names are touched:
/// short options (`-c FILE` is the same either way) and everything after `--` stay as they are.
pub fn normalize_args<I: IntoIterator<Item = std::ffi::OsString>>(args: I) -> Vec<std::ffi::OsString> {
    let mut out = Vec::new();
    let mut rest = false;
    for a in args {
        if rest {
            out.push(a);
            continue;
        }
        let Some(s) = a.to_str() else {
            out.push(a);
            continue;
        };
        if s == "--" {
            rest = true;
            out.push(a);
            continue;
        }
        let single = s.strip_prefix('-').filter(|r| !r.starts_with('-'));
        let name = single.map(|r| r.split_once('=').map_or(r, |(n, _)| n));
        match (single, name) {
            // `-c` is clap's short option already.
            (Some(r), Some(n)) if n != "c" && (VALUE_FLAGS.contains(&n) || BOOL_FLAGS.contains(&n)) => {
                out.push(format!("--{r}").into())
            }
            _ => out.push(a),
        }
    }
    out
}

// ---- pool mode -------------------------------------------------------------------------------

/// The motan-go directory layout of pool mode (core/globalContext.go).
const BASIC: &str = "basic.yaml";
const SERVICES: &str = "services/";
const APPLICATIONS: &str = "applications/";
const POOLS: &str = "pools/";
const HTTP_SERVICE: &str = "http/service/";
const HTTP_LOCATION: &str = "http/location/";
const HTTP_POOLS: &str = "http/pools/";
pub const IMPORT_REFER: &str = "import-refer";
pub const IMPORT_HTTP_LOCATION: &str = "import-http-location";

/// The configuration assembled from a pool directory, in motan-go's order (later files win:
/// pool > application > imported services > http pool > http service > basic). Missing files
/// are skipped, as upstream does; a file that is not valid YAML is an error naming it.
pub struct PoolConfig {
    pub root: Mapping,
    /// The files read, in merge order (for the start-up log).
    pub files: Vec<PathBuf>,
}

pub fn load_pool(
    dir: &Path,
    application: Option<&str>,
    pool: Option<&str>,
) -> Result<PoolConfig, ConfigErrors> {
    let pool = pool.unwrap_or("");
    let parts: Vec<&str> = if pool.is_empty() {
        Vec::new()
    } else {
        pool.split('-').collect()
    };
    let app = application
        .filter(|a| !a.is_empty())
        .or(parts.first().copied())
        .unwrap_or("");
    if app.is_empty() {
        return Err(ConfigErrors(vec![format!(
            "{}: a configuration directory needs -pool or -application (pool mode)",
            dir.display()
        )]));
    }
    let mut b = PoolBuilder {
        dir,
        root: Mapping::new(),
        files: Vec::new(),
        errors: Vec::new(),
        locations_done: Vec::new(),
    };
    b.merge_file(BASIC, None);
    b.merge_file(&format!("{HTTP_SERVICE}{app}.yaml"), Some(IMPORT_HTTP_LOCATION));
    if !pool.is_empty() {
        b.merge_file(&format!("{HTTP_POOLS}{pool}.yaml"), Some(IMPORT_HTTP_LOCATION));
    }
    b.merge_file(&format!("{APPLICATIONS}{app}.yaml"), Some(IMPORT_REFER));
    // Step loading: pools/a.yaml, pools/a-b.yaml, pools/a-b-c.yaml.
    for n in 1..=parts.len() {
        b.merge_file(&format!("{POOLS}{}.yaml", parts[..n].join("-")), None);
    }
    if !b.errors.is_empty() {
        return Err(ConfigErrors(b.errors));
    }
    if b.root.is_empty() {
        return Err(ConfigErrors(vec![format!(
            "{}: pool {pool:?} (application {app:?}): none of its files exists or has content",
            dir.display()
        )]));
    }
    Ok(PoolConfig {
        root: b.root,
        files: b.files,
    })
}

struct PoolBuilder<'a> {
    dir: &'a Path,
    root: Mapping,
    files: Vec<PathBuf>,
    errors: Vec<String>,
    /// http/location files already imported (each once, as upstream).
    locations_done: Vec<String>,
}

impl PoolBuilder<'_> {
    fn read(&mut self, rel: &str) -> Option<Mapping> {
        let path = self.dir.join(rel);
        let text = std::fs::read_to_string(&path).ok()?;
        match serde_yaml_ng::from_str::<Value>(&text) {
            Ok(Value::Mapping(m)) => {
                self.files.push(path);
                Some(m)
            }
            Ok(Value::Null) => None,
            Ok(_) => {
                self.errors.push(format!(
                    "{}: the top level must be a mapping of sections",
                    path.display()
                ));
                None
            }
            Err(e) => {
                self.errors
                    .push(format!("{}: not valid YAML: {e}", path.display()));
                None
            }
        }
    }

    /// Merge `rel`; before it, the files its `import` section names (`import-refer`: from
    /// services/, each with its own `import-http-location`; `import-http-location`: from
    /// http/location/).
    fn merge_file(&mut self, rel: &str, import: Option<&str>) {
        let Some(m) = self.read(rel) else { return };
        if let Some(section) = import {
            self.imports(&m, section, rel);
        }
        merge(&mut self.root, m);
    }

    fn imports(&mut self, m: &Mapping, section: &str, from: &str) {
        let Some(list) = m.get(section) else { return };
        let Value::Sequence(names) = list else {
            self.errors.push(format!(
                "{}: section {section}: must be a list of names",
                self.dir.join(from).display()
            ));
            return;
        };
        for n in names {
            let Some(name) = n.as_str() else {
                self.errors.push(format!(
                    "{}: section {section}: {n:?} is not a name",
                    self.dir.join(from).display()
                ));
                continue;
            };
            if section == IMPORT_HTTP_LOCATION {
                if self.locations_done.iter().any(|d| d == name) {
                    continue;
                }
                self.locations_done.push(name.to_string());
                self.merge_file(&format!("{HTTP_LOCATION}{name}.yaml"), None);
            } else {
                self.merge_file(&format!("{SERVICES}{name}.yaml"), Some(IMPORT_HTTP_LOCATION));
            }
        }
    }
}

/// motan-go's `mergeMap`: mappings merge key by key, lists append, any other value replaces;
/// a null never replaces anything.
pub fn merge(target: &mut Mapping, origin: Mapping) {
    for (k, v) in origin {
        if v.is_null() {
            continue;
        }
        match target.get_mut(&k) {
            Some(t) if !t.is_null() => match (t, v) {
                (Value::Mapping(tm), Value::Mapping(om)) => merge(tm, om),
                (Value::Sequence(ts), Value::Sequence(os)) => ts.extend(os),
                (t, v) => *t = v,
            },
            _ => {
                target.insert(k, v);
            }
        }
    }
}

/// `dynamic-param` values given per pool (`{<pool>: v, "regexp:<re>": v, default: v}`) become
/// the value for this pool (exact name, then the first matching regexp, then `default`), as
/// motan-go resolves them; without a match the key is left for the configuration check to
/// report.
pub fn resolve_pool_params(root: &mut Mapping, pool: &str) -> Vec<String> {
    let mut errors = Vec::new();
    let Some(Value::Mapping(dp)) = root.get_mut(super::motan::DYNAMIC_PARAM_SECTION) else {
        return errors;
    };
    for (k, v) in dp.iter_mut() {
        let Value::Mapping(per_pool) = v else { continue };
        let mut chosen = per_pool.get(pool).filter(|_| !pool.is_empty()).cloned();
        if chosen.is_none() && !pool.is_empty() {
            for (pk, pv) in per_pool.iter() {
                let Some(re) = pk.as_str().and_then(|s| s.strip_prefix("regexp:")) else {
                    continue;
                };
                match regex::Regex::new(re) {
                    Ok(r) if r.is_match(pool) => {
                        chosen = Some(pv.clone());
                        break;
                    }
                    Ok(_) => {}
                    Err(e) => errors.push(format!(
                        "section dynamic-param, key {}: regexp:{re}: {e}",
                        k.as_str().unwrap_or("?")
                    )),
                }
            }
        }
        if let Some(c) = chosen.or_else(|| per_pool.get("default").cloned()) {
            *v = c;
        }
    }
    errors
}

/// Write the flags into `motan-agent` (flags win over keys). `-application` only fills in a
/// missing `application`: in motan-go the configuration's value names the agent.
pub fn apply_flags(root: &mut Mapping, o: &LaunchOptions) {
    let agent = root
        .entry(Value::String("motan-agent".into()))
        .or_insert_with(|| Value::Mapping(Mapping::new()));
    if !agent.is_mapping() {
        // A wrong section type is reported by the typed parse; leave it to that.
        return;
    }
    let Value::Mapping(a) = agent else { unreachable!() };
    let mut set = |k: &str, v: Value| {
        a.insert(Value::String(k.into()), v);
    };
    for (k, p) in [
        ("port", o.port),
        ("mport", o.mport),
        ("eport", o.eport),
        ("hport", o.hport),
    ] {
        if let Some(p) = p {
            set(k, Value::Number(p.into()));
        }
    }
    if let Some(ip) = &o.local_ip {
        set("localIP", Value::String(ip.clone()));
    }
    if let Some(p) = &o.pidfile {
        set(keys::PIDFILE, Value::String(p.display().to_string()));
    }
    if let Some(app) = o.application.as_ref().filter(|a| !a.is_empty()) {
        let k = Value::String("application".into());
        if a.get(&k).is_none_or(|v| v.is_null() || v.as_str() == Some("")) {
            a.insert(k, Value::String(app.clone()));
        }
    }
}

/// The environment variable motan-go reads `mport` from when the flag is absent (before the
/// configuration key).
pub const MPORT_ENV: &str = "mport";

// ---- the agent process's own keys ------------------------------------------------------------

pub mod keys {
    pub const PIDFILE: &str = "pidfile";
    pub const RUNTIME_DIR: &str = "runtime_dir";
    pub const INIT_CLUSTER_TIMEOUT: &str = "initClusterTimeout";
    /// motan-go: the agent port on a Unix socket instead of TCP.
    pub const UNIX_SOCK: &str = "unixSock";
    /// motan-go: the management port on a Unix socket instead of TCP.
    pub const MANAGEMENT_UNIX_SOCK: &str = "managementUnixSock";
}

/// motan-go's default `runtime_dir` (relative to the working directory, as upstream).
pub const DEFAULT_RUNTIME_DIR: &str = "./agent_runtime";
/// The file in `runtime_dir` holding the last 200/503 status (motan-go's name).
pub const STATUS_FILE: &str = "status";
/// How long start-up and reload wait for clusters to connect when `initClusterTimeout` is not
/// set (motan-go waits 10 s; loopback and LAN connects take milliseconds, so a shorter cap
/// keeps a reload with an unreachable endpoint from stalling).
pub const DEFAULT_INIT_CLUSTER_TIMEOUT: Duration = Duration::from_secs(3);

/// What the agent process does besides the mesh: where it writes its PID and status, whether
/// it restores the status, how long it waits for clusters at start.
#[derive(Clone, Debug, PartialEq)]
pub struct ProcessSettings {
    pub pidfile: Option<PathBuf>,
    pub runtime_dir: PathBuf,
    pub recover: bool,
    /// Save the status on /200 and /503: when `runtime_dir` is set or `-recover` is given (so
    /// that agents started without either, such as test agents, write nothing into their
    /// working directory).
    pub save_status: bool,
    pub init_cluster_timeout: Duration,
    /// `-idc` (also used for `${idc}` in refer groups).
    pub idc: Option<String>,
    /// `unixSock`: the agent port listens on this Unix socket instead of TCP (as motan-go).
    pub unix_sock: Option<PathBuf>,
    /// `managementUnixSock`: the admin API listens on this Unix socket instead of mport.
    pub management_unix_sock: Option<PathBuf>,
}

impl Default for ProcessSettings {
    fn default() -> Self {
        ProcessSettings {
            pidfile: None,
            runtime_dir: PathBuf::from(DEFAULT_RUNTIME_DIR),
            recover: false,
            save_status: false,
            init_cluster_timeout: DEFAULT_INIT_CLUSTER_TIMEOUT,
            idc: None,
            unix_sock: None,
            management_unix_sock: None,
        }
    }
}

impl ProcessSettings {
    /// From the `motan-agent` keys (flags already written into them) and the flags that have
    /// no key; every bad value is an error naming its key.
    pub fn from_agent(
        other: &BTreeMap<String, Value>,
        o: &LaunchOptions,
    ) -> (ProcessSettings, Vec<SettingError>) {
        let mut s = ProcessSettings {
            recover: o.recover,
            idc: o.idc.clone().filter(|i| !i.is_empty()),
            ..Default::default()
        };
        let mut errors = Vec::new();
        let path = |k: &str, errors: &mut Vec<SettingError>| match other.get(k) {
            None | Some(Value::Null) => None,
            Some(Value::String(p)) if !p.is_empty() => Some(PathBuf::from(p)),
            Some(Value::String(_)) => None,
            Some(v) => {
                errors.push(SettingError::new(k, format!("{v:?} is not a path")));
                None
            }
        };
        s.pidfile = path(keys::PIDFILE, &mut errors);
        if let Some(d) = path(keys::RUNTIME_DIR, &mut errors) {
            s.runtime_dir = d;
            s.save_status = true;
        }
        s.save_status |= s.recover;
        match other.get(keys::INIT_CLUSTER_TIMEOUT) {
            None | Some(Value::Null) => {}
            Some(v) => match v
                .as_u64()
                .or_else(|| v.as_str().and_then(|t| t.trim().parse().ok()))
            {
                Some(ms) if (1..=600_000).contains(&ms) => s.init_cluster_timeout = Duration::from_millis(ms),
                _ => errors.push(SettingError::new(
                    keys::INIT_CLUSTER_TIMEOUT,
                    format!("{v:?} is not a number of milliseconds in 1..=600000"),
                )),
            },
        }
        s.unix_sock = socket_path(keys::UNIX_SOCK, path(keys::UNIX_SOCK, &mut errors), &mut errors);
        s.management_unix_sock = socket_path(
            keys::MANAGEMENT_UNIX_SOCK,
            path(keys::MANAGEMENT_UNIX_SOCK, &mut errors),
            &mut errors,
        );
        if let Some(p) = &s.unix_sock
            && s.management_unix_sock.as_ref() == Some(p)
        {
            errors.push(SettingError::new(
                keys::MANAGEMENT_UNIX_SOCK,
                format!("{} is also unixSock; give each its own path", p.display()),
            ));
        }
        (s, errors)
    }

    /// The status file in `runtime_dir`.
    pub fn status_file(&self) -> PathBuf {
        self.runtime_dir.join(STATUS_FILE)
    }
}

/// A Unix socket path must be absolute (the daemon's working directory is no place for a
/// socket apps find) and fit `sun_path`. Its directory is checked when it is bound.
fn socket_path(key: &str, p: Option<PathBuf>, errors: &mut Vec<SettingError>) -> Option<PathBuf> {
    let p = p?;
    // sun_path is 108 bytes with the terminating NUL.
    let why = if !p.is_absolute() {
        "is not an absolute path"
    } else if p.as_os_str().len() > 107 {
        "is longer than a Unix socket path may be (107 bytes)"
    } else if p.file_name().is_none() || p.as_os_str().as_encoded_bytes().ends_with(b"/") {
        "names no file"
    } else {
        return Some(p);
    };
    errors.push(SettingError::new(key, format!("{} {why}", p.display())));
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn norm(a: &[&str]) -> Vec<String> {
        normalize_args(a.iter().map(std::ffi::OsString::from))
            .into_iter()
            .map(|s| s.into_string().unwrap())
            .collect()
    }

    #[test]
    fn single_dash_motan_go_flags_become_long_options() {
        assert_eq!(
            norm(&[
                "sockmesh",
                "run",
                "-c",
                "a.yaml",
                "-pool",
                "p-yf",
                "-mport=8102",
                "-recover",
                "-localIP",
                "10.0.0.1",
                "-v",
                "--log-level",
                "debug",
                "--",
                "-pool"
            ]),
            [
                "sockmesh",
                "run",
                "-c",
                "a.yaml",
                "--pool",
                "p-yf",
                "--mport=8102",
                "--recover",
                "--localIP",
                "10.0.0.1",
                "-v",
                "--log-level",
                "debug",
                "--",
                "-pool"
            ]
        );
        assert_eq!(norm(&["x", "-c=d/"]), ["x", "-c=d/"]);
        assert_eq!(norm(&["x", "-portx", "-"]), ["x", "-portx", "-"]);
    }

    #[test]
    fn merge_follows_motan_go() {
        let mut a: Mapping = serde_yaml_ng::from_str("s: {a: 1, b: [1]}\nx: 1\nn: 2\n").unwrap();
        let b: Mapping = serde_yaml_ng::from_str("s: {a: 2, b: [2], c: 3}\nx: ~\nn: {k: v}\n").unwrap();
        merge(&mut a, b);
        let want: Mapping = serde_yaml_ng::from_str("s: {a: 2, b: [1, 2], c: 3}\nx: 1\nn: {k: v}\n").unwrap();
        assert_eq!(a, want);
    }

    #[test]
    fn per_pool_dynamic_params() {
        let mut m: Mapping = serde_yaml_ng::from_str(
            "dynamic-param:\n  a: {app-yf: 1, default: 9}\n  b: {\"regexp:^app-t.*\": 2, default: 9}\n  c: {default: 9}\n  d: 4\n  e: {other: 1}\n",
        )
        .unwrap();
        assert!(resolve_pool_params(&mut m, "app-tc").is_empty());
        let want: Mapping =
            serde_yaml_ng::from_str("dynamic-param:\n  a: 9\n  b: 2\n  c: 9\n  d: 4\n  e: {other: 1}\n")
                .unwrap();
        assert_eq!(m, want);
    }

    #[test]
    fn flags_win_over_keys_and_application_fills_in() {
        let mut m: Mapping = serde_yaml_ng::from_str("motan-agent: {port: 1, application: mine}\n").unwrap();
        let o = LaunchOptions {
            port: Some(7),
            hport: Some(8),
            local_ip: Some("10.1.1.1".into()),
            application: Some("flag".into()),
            pidfile: Some("/run/x.pid".into()),
            ..Default::default()
        };
        apply_flags(&mut m, &o);
        let want: Mapping = serde_yaml_ng::from_str(
            "motan-agent: {port: 7, application: mine, hport: 8, localIP: 10.1.1.1, pidfile: /run/x.pid}\n",
        )
        .unwrap();
        assert_eq!(m, want);
        let mut empty = Mapping::new();
        apply_flags(&mut empty, &o);
        assert_eq!(empty["motan-agent"]["application"].as_str(), Some("flag"));
    }

    #[test]
    fn process_keys_are_typed_and_named() {
        let other: BTreeMap<String, Value> =
            serde_yaml_ng::from_str("pidfile: /run/a.pid\nruntime_dir: /var/x\ninitClusterTimeout: 500\n")
                .unwrap();
        let (s, e) = ProcessSettings::from_agent(&other, &LaunchOptions::default());
        assert!(e.is_empty());
        assert_eq!(s.pidfile.as_deref(), Some(Path::new("/run/a.pid")));
        assert_eq!(s.status_file(), Path::new("/var/x/status"));
        assert_eq!(s.init_cluster_timeout, Duration::from_millis(500));
        assert!(s.save_status);
        let (s, _) = ProcessSettings::from_agent(&BTreeMap::new(), &LaunchOptions::default());
        assert!(!s.save_status && s.status_file() == Path::new("./agent_runtime/status"));
        let recover = LaunchOptions {
            recover: true,
            ..Default::default()
        };
        assert!(
            ProcessSettings::from_agent(&BTreeMap::new(), &recover)
                .0
                .save_status
        );
        let other: BTreeMap<String, Value> = serde_yaml_ng::from_str(
            "pidfile: [1]\ninitClusterTimeout: soon\nunixSock: run/a.sock\nmanagementUnixSock: /run/\n",
        )
        .unwrap();
        let (_, e) = ProcessSettings::from_agent(&other, &LaunchOptions::default());
        let keys: Vec<&str> = e.iter().map(|e| e.key.as_str()).collect();
        assert_eq!(
            keys,
            ["pidfile", "initClusterTimeout", "unixSock", "managementUnixSock"]
        );
        let other: BTreeMap<String, Value> =
            serde_yaml_ng::from_str("unixSock: /run/a.sock\nmanagementUnixSock: /run/m.sock\n").unwrap();
        let (s, e) = ProcessSettings::from_agent(&other, &LaunchOptions::default());
        assert!(e.is_empty(), "{e:?}");
        assert_eq!(s.unix_sock.as_deref(), Some(Path::new("/run/a.sock")));
        assert_eq!(s.management_unix_sock.as_deref(), Some(Path::new("/run/m.sock")));
    }
}
