//! `mock`: answer a method from configuration instead of calling it. URL parameter
//! `mock.<method>` = a string, answered as a simple-encoded string (serialization simple) for
//! every request to that method; other methods pass through. Innermost filter, so access log,
//! metrics and limits still see mocked calls.
use std::collections::HashMap;
use std::sync::Arc;

use bytes::Bytes;

use super::call::{CallInfo, Filter, FilterFuture, Next, simple_response};
use crate::protocol::motan2::{Frame, Value};
use crate::url::Url;

pub const NAME: &str = "mock";
pub const INDEX: i32 = 30;

struct Mock {
    /// Method → encoded answer.
    answers: HashMap<String, Bytes>,
}

pub fn build(url: &Url) -> Arc<dyn Filter> {
    let answers = url
        .params
        .iter()
        .filter_map(|(k, v)| {
            let method = k.strip_prefix("mock.").filter(|m| !m.is_empty())?;
            Some((method.to_string(), Value::from(v.as_str()).to_bytes()))
        })
        .collect::<HashMap<_, _>>();
    if answers.is_empty() {
        tracing::warn!("mock filter on {} has no mock.<method> parameter", url.path);
    }
    Arc::new(Mock { answers })
}

impl Filter for Mock {
    fn name(&self) -> &'static str {
        NAME
    }
    fn index(&self) -> i32 {
        INDEX
    }
    fn call<'a>(&'a self, req: Frame, info: &'a CallInfo, next: Next<'a>) -> FilterFuture<'a> {
        match self.answers.get(&*info.method) {
            Some(body) => Box::pin(std::future::ready(simple_response(&req, body.clone()))),
            None => next.run(req, info),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::filter::FilterChain;
    use crate::filter::FilterShared;
    use crate::filter::test_support::*;

    #[tokio::test]
    async fn mocked_method_answers_without_calling_next() {
        let shared = FilterShared::new();
        let url = refer(&[("filter", "mock"), ("mock.hello", "hi from mock")]);
        let chain = FilterChain::build(&url, &shared).unwrap();
        let up = Upstream::new(Answer::Ok(b"real"));
        let resp = call(&chain, &info(url.clone(), "hello"), &up, request(4, "hello")).await;
        assert_eq!(up.calls(), 0);
        assert_eq!(resp.header.request_id, 4);
        let (v, _) = Value::decode(&resp.body).unwrap();
        assert_eq!(v.as_str(), Some("hi from mock"));
        let resp = call(&chain, &info(url, "bye"), &up, request(5, "bye")).await;
        assert_eq!((up.calls(), &resp.body[..]), (1, &b"real"[..]));
    }
}
