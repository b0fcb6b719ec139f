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
use std::collections::HashMap;
use std::sync::Arc;

use bytes::Bytes;

use super::call::{CallInfo, Filter, FilterFuture, Next, reject, simple_response};
use crate::protocol::motan2::call::degraded_error;
use crate::protocol::motan2::{Exception, Frame, Value};
use crate::switcher::{DEGRADE_SUFFIX, Switch, Switchers};
use crate::url::Url;

pub const DEGRADE_NAME: &str = "degrade";
/// Outside the rate limiter (3 as well; ties go by name): a degraded call takes no token.
pub const DEGRADE_INDEX: i32 = 3;

/// The per-method degrade switch name, `<conf-id>.<method>.degrade`.
pub fn degrade_switch_name(conf_id: &str, method: &str) -> String {
    format!("{conf_id}.{method}{DEGRADE_SUFFIX}")
}

struct Degrade {
    switchers: Arc<Switchers>,
    /// The URL's `degrade.switcher`: degrades every method while on.
    service_switch: Option<Arc<Switch>>,
    /// `degrade.<method>.value`, simple-encoded.
    method_values: HashMap<String, Bytes>,
    /// `degrade.value`, simple-encoded.
    service_value: Option<Bytes>,
}

pub fn build_degrade(url: &Url, switchers: &Arc<Switchers>) -> Arc<dyn Filter> {
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
        .and_then(|name| switchers.register(name, false));
    Arc::new(Degrade {
        switchers: switchers.clone(),
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
        let switchers = &self.switchers;
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
    use crate::filter::FilterShared;
    use crate::filter::test_support::*;
    use crate::filter::{FilterChain, exception_of};

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
