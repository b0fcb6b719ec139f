//! Named on/off switches (motan-go core/switcher.go, spec 4.10/4.14) and the `degrade` filter
//! built on them.
//!
//! Switches are registered by configuration (the `switcher` section), by filters (a rateLimit
//! filter registers `<conf-id>_rateLimit`, on), or by an operator turning on a degrade switch.
//! Registering an existing name keeps its value (upstream ignores re-registration).
//!
//! `degrade` answers a request without calling the rest of the chain while its switch is on:
//! - per method: switch `<conf-id>.<method>.degrade`;
//! - per service: the switch named by the URL's `degrade.switcher` parameter.
//!
//! The answer is the URL's `degrade.<method>.value` (else `degrade.value`) as a simple-encoded
//! string, or, when neither is set, the exception a degraded cluster gives (errcode 500,
//! "cluster not available, maybe caused by degrade"). Turning the switch off restores calls.
use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, RwLock};

use bytes::Bytes;

use super::{CallInfo, Filter, FilterFuture, FilterShared, Next, reject, simple_response};
use crate::cluster::degraded_error;
use crate::protocol::motan2::{Exception, Frame, Value};
use crate::url::Url;

pub const DEGRADE_NAME: &str = "degrade";
/// Outside the rate limiter (3 as well; ties go by name): a degraded call takes no token.
pub const DEGRADE_INDEX: i32 = 3;
/// Suffix of the per-method degrade switches; they may be turned on before they exist.
pub const DEGRADE_SUFFIX: &str = ".degrade";

/// One named switch.
#[derive(Debug)]
pub struct Switch {
    name: String,
    value: AtomicBool,
}

impl Switch {
    pub fn name(&self) -> &str {
        &self.name
    }
    pub fn is_on(&self) -> bool {
        self.value.load(Ordering::Relaxed)
    }
}

/// The agent's switches.
#[derive(Debug, Default)]
pub struct Switchers {
    map: RwLock<HashMap<String, Arc<Switch>>>,
    /// How many `*.degrade` switches are on: while 0, `degrade` filters skip the lookup (and
    /// the name building it needs) entirely.
    degrade_on: AtomicUsize,
}

impl Switchers {
    /// Register `name` with `value` unless it exists; either way return the switch. An empty
    /// name is refused (upstream logs and ignores it).
    pub fn register(&self, name: &str, value: bool) -> Option<Arc<Switch>> {
        if name.is_empty() {
            tracing::warn!("switcher with an empty name not registered");
            return None;
        }
        if let Some(s) = self.switch(name) {
            return Some(s);
        }
        let mut map = self.map.write().expect("switchers lock");
        let s = map.entry(name.to_string()).or_insert_with(|| {
            tracing::info!("switcher {name} registered, value {value}");
            if value && name.ends_with(DEGRADE_SUFFIX) {
                self.degrade_on.fetch_add(1, Ordering::Relaxed);
            }
            Arc::new(Switch {
                name: name.to_string(),
                value: AtomicBool::new(value),
            })
        });
        Some(s.clone())
    }

    /// The registered switch of that name.
    pub fn switch(&self, name: &str) -> Option<Arc<Switch>> {
        self.map.read().expect("switchers lock").get(name).cloned()
    }

    /// Its value, None when not registered.
    pub fn get(&self, name: &str) -> Option<bool> {
        self.map
            .read()
            .expect("switchers lock")
            .get(name)
            .map(|s| s.is_on())
    }

    /// Registered and on.
    pub fn is_on(&self, name: &str) -> bool {
        self.get(name).unwrap_or(false)
    }

    /// Set a registered switch; false when there is none of that name. Degrade switches
    /// (`*.degrade`) are registered on first use, since their names follow the methods called.
    pub fn set(&self, name: &str, value: bool) -> bool {
        let s = match self.switch(name) {
            Some(s) => s,
            None if name.ends_with(DEGRADE_SUFFIX) && name.len() > DEGRADE_SUFFIX.len() => {
                match self.register(name, false) {
                    Some(s) => s,
                    None => return false,
                }
            }
            None => return false,
        };
        let old = s.value.swap(value, Ordering::Relaxed);
        if old != value {
            if name.ends_with(DEGRADE_SUFFIX) {
                if value {
                    self.degrade_on.fetch_add(1, Ordering::Relaxed);
                } else {
                    self.degrade_on.fetch_sub(1, Ordering::Relaxed);
                }
            }
            tracing::info!("switcher {name} set to {value}");
        }
        true
    }

    /// Every switch and its value, by name.
    pub fn all(&self) -> BTreeMap<String, bool> {
        self.map
            .read()
            .expect("switchers lock")
            .iter()
            .map(|(k, s)| (k.clone(), s.is_on()))
            .collect()
    }

    fn any_degrade_on(&self) -> bool {
        self.degrade_on.load(Ordering::Relaxed) > 0
    }
}

/// The per-method degrade switch name, `<conf-id>.<method>.degrade`.
pub fn degrade_switch_name(conf_id: &str, method: &str) -> String {
    format!("{conf_id}.{method}{DEGRADE_SUFFIX}")
}

struct Degrade {
    shared: Arc<FilterShared>,
    /// The URL's `degrade.switcher`: degrades every method while on.
    service_switch: Option<Arc<Switch>>,
    /// `degrade.<method>.value`, simple-encoded.
    method_values: HashMap<String, Bytes>,
    /// `degrade.value`, simple-encoded.
    service_value: Option<Bytes>,
}

pub fn build_degrade(url: &Url, shared: &Arc<FilterShared>) -> Arc<dyn Filter> {
    let encode = |v: &str| Value::from(v).to_bytes();
    let mut method_values = HashMap::new();
    let mut service_value = None;
    for (k, v) in &url.params {
        if k == "degrade.value" {
            service_value = Some(encode(v));
        } else if let Some(method) = k
            .strip_prefix("degrade.")
            .and_then(|m| m.strip_suffix(".value"))
            .filter(|m| !m.is_empty())
        {
            method_values.insert(method.to_string(), encode(v));
        }
    }
    let service_switch = url
        .param("degrade.switcher")
        .and_then(|name| shared.switchers.register(name, false));
    Arc::new(Degrade {
        shared: shared.clone(),
        service_switch,
        method_values,
        service_value,
    })
}

impl Degrade {
    fn degraded(&self, info: &CallInfo) -> bool {
        if self.service_switch.as_ref().is_some_and(|s| s.is_on()) {
            return true;
        }
        let switchers = &self.shared.switchers;
        switchers.any_degrade_on() && switchers.is_on(&degrade_switch_name(info.conf_id(), &info.method))
    }

    fn answer(&self, req: &Frame, info: &CallInfo) -> Frame {
        match self
            .method_values
            .get(&*info.method)
            .or(self.service_value.as_ref())
        {
            Some(body) => simple_response(req, body.clone()),
            None => {
                let e = degraded_error();
                reject(req, &Exception::service(i64::from(e.code), e.message))
            }
        }
    }
}

impl Filter for Degrade {
    fn name(&self) -> &'static str {
        DEGRADE_NAME
    }
    fn index(&self) -> i32 {
        DEGRADE_INDEX
    }
    fn call<'a>(&'a self, req: Frame, info: &'a CallInfo, next: Next<'a>) -> FilterFuture<'a> {
        if self.degraded(info) {
            let resp = self.answer(&req, info);
            return Box::pin(std::future::ready(resp));
        }
        next.run(req, info)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::filter::test_support::*;
    use crate::filter::{FilterChain, exception_of};

    #[test]
    fn register_keeps_the_first_value_and_set_needs_a_registered_name() {
        let s = Switchers::default();
        assert!(s.register("", true).is_none());
        assert!(s.register("feature.x", true).unwrap().is_on());
        assert!(
            s.register("feature.x", false).unwrap().is_on(),
            "re-register keeps the value"
        );
        assert_eq!(s.get("feature.x"), Some(true));
        assert_eq!(s.get("nope"), None);
        assert!(!s.is_on("nope"));
        assert!(!s.set("nope", true), "unregistered");
        assert!(s.get("nope").is_none());
        assert!(s.set("feature.x", false));
        assert_eq!(s.get("feature.x"), Some(false));
        // Degrade switches come into being when set.
        assert!(!s.any_degrade_on());
        assert!(s.set("hello.hi.degrade", true));
        assert!(s.any_degrade_on());
        assert!(s.set("hello.hi.degrade", true), "same value again");
        assert_eq!(s.degrade_on.load(Ordering::Relaxed), 1);
        assert!(!s.set(".degrade", true), "no name before the suffix");
        assert!(s.set("hello.hi.degrade", false));
        assert!(!s.any_degrade_on());
        assert_eq!(
            s.all(),
            BTreeMap::from([
                ("feature.x".to_string(), false),
                ("hello.hi.degrade".to_string(), false)
            ])
        );
    }

    #[tokio::test]
    async fn method_switch_degrades_with_the_configured_value_and_off_restores() {
        let shared = FilterShared::new();
        let url = refer(&[("filter", "degrade"), ("degrade.hello.value", "fallback")]);
        let chain = FilterChain::build(&url, &shared).unwrap();
        let up = Upstream::new(Answer::Ok(b"real"));
        let hello = info(url.clone(), "hello");
        let other = info(url, "other");

        let resp = call(&chain, &hello, &up, request(1, "hello")).await;
        assert_eq!((&resp.body[..], up.calls()), (&b"real"[..], 1));

        assert!(shared.switchers.set("hello.hello.degrade", true));
        let resp = call(&chain, &hello, &up, request(2, "hello")).await;
        assert_eq!(up.calls(), 1, "not called while degraded");
        assert_eq!(resp.header.request_id, 2);
        assert_eq!(resp.body, Value::from("fallback").to_bytes());
        assert!(exception_of(&resp).is_none());
        // Another method of the same service is untouched.
        let resp = call(&chain, &other, &up, request(3, "other")).await;
        assert_eq!((&resp.body[..], up.calls()), (&b"real"[..], 2));

        assert!(shared.switchers.set("hello.hello.degrade", false));
        let resp = call(&chain, &hello, &up, request(4, "hello")).await;
        assert_eq!((&resp.body[..], up.calls()), (&b"real"[..], 3));
    }

    #[tokio::test]
    async fn service_switch_degrades_every_method_with_an_exception_when_no_value() {
        let shared = FilterShared::new();
        let url = refer(&[("filter", "degrade"), ("degrade.switcher", "hello_off")]);
        let chain = FilterChain::build(&url, &shared).unwrap();
        assert_eq!(
            shared.switchers.get("hello_off"),
            Some(false),
            "registered at build"
        );
        let up = Upstream::new(Answer::Ok(b"real"));
        let i = info(url, "any");
        assert!(shared.switchers.set("hello_off", true));
        let resp = call(&chain, &i, &up, request(8, "any")).await;
        let e = exception_of(&resp).unwrap();
        assert_eq!(
            (e.errcode, e.errmsg.as_str(), e.errtype as i64),
            (500, "cluster not available, maybe caused by degrade", 1)
        );
        assert_eq!((resp.header.request_id, up.calls()), (8, 0));
        assert!(shared.switchers.set("hello_off", false));
        let resp = call(&chain, &i, &up, request(9, "any")).await;
        assert_eq!((&resp.body[..], up.calls()), (&b"real"[..], 1));
    }

    #[tokio::test]
    async fn service_value_answers_methods_without_their_own() {
        let shared = FilterShared::new();
        let url = refer(&[
            ("filter", "degrade"),
            ("degrade.value", "svc"),
            ("degrade.a.value", "just-a"),
        ]);
        let chain = FilterChain::build(&url, &shared).unwrap();
        let up = Upstream::new(Answer::Ok(b"real"));
        shared.switchers.set("hello.a.degrade", true);
        shared.switchers.set("hello.b.degrade", true);
        let a = call(&chain, &info(url.clone(), "a"), &up, request(1, "a")).await;
        let b = call(&chain, &info(url, "b"), &up, request(2, "b")).await;
        assert_eq!(a.body, Value::from("just-a").to_bytes());
        assert_eq!(b.body, Value::from("svc").to_bytes());
        assert_eq!(up.calls(), 0);
    }
}
