//! The motan sections of the configuration as typed URLs (4.2): registries, refers (client
//! side), services (server side) and `http-client` clusters. Each entry becomes a URL (keys
//! `protocol`, `host`, `port`, `path`, `group` are fields, every other key a string parameter,
//! `conf-id` = the entry id), inherits from its `basicRefer`/`basicService` template, gets its
//! final filter list, and is checked. Every problem is reported at once, each naming file,
//! section, entry and key.
//!
//! Pool mode (`-c <dir>`, `import-*`) is assembled before this (config/launch.rs);
//! `${idc}`, `MESH_DIRECT_RPC` and `registerMeta` are applied here (launch_env.rs).
//! Not covered: placeholders in the typed `motan-agent` keys (`port`, `mport`,
//! `eport`, `application` are deserialised by `Config::parse` before substitution can run).

mod checks;
mod entries;
mod launch_env;
mod names;
mod problems;

use std::collections::BTreeMap;

use serde_yaml_ng::Value;

use self::checks::{Checks, check_filters, check_registry};
pub use self::entries::MotanEnv;
use self::entries::{
    add_sub_group_refers, agent_params, compose_filters, dynamic_params, expand_service_groups, finish_refer,
    inherit, section_urls, substitute, unknown_registry,
};
pub use self::launch_env::IDC_PLACEHOLDER;
pub use self::names::*;
use self::problems::Problems;
use super::http::{HTTP_SERVICE_SECTION, HttpSections, HttpServiceFormats};
use super::http_client::{HttpClientSpec, HttpProxySpec};
use super::http_locations::HttpLocations;
use super::refer::HashKeySource;
use super::sections::AgentSection;
use super::service::ServiceSpec;
use crate::url::{Url, keys, split_list};

/// The typed motan configuration. Maps are keyed by entry id (`conf-id`).
#[derive(Clone, Debug, Default)]
pub struct MotanConfig {
    pub registries: BTreeMap<String, Url>,
    pub refers: BTreeMap<String, Url>,
    pub services: BTreeMap<String, Url>,
    /// Every service (after group expansion) as the exporter serves it.
    pub exports: BTreeMap<String, ServiceSpec>,
    pub http_clients: BTreeMap<String, Url>,
    /// The `http-client` entries as the HTTP side of the client role serves them.
    pub http_routes: BTreeMap<String, HttpClientSpec>,
    /// `http-locations` and `http-service`, typed.
    pub http: HttpSections,
    /// The hport forward proxy (`motan-agent` keys).
    pub http_proxy: HttpProxySpec,
    /// Things that work but are probably not meant (log them at start).
    pub warnings: Vec<String>,
}

impl MotanConfig {
    /// Build and check; returns the model (best effort) and every error found.
    pub fn build(
        source: &str,
        agent: &AgentSection,
        sections: &BTreeMap<String, Value>,
        env: &MotanEnv,
    ) -> (MotanConfig, Vec<String>) {
        let mut p = Problems {
            src: source,
            errors: Vec::new(),
            warnings: Vec::new(),
        };
        let placeholders = dynamic_params(sections.get(DYNAMIC_PARAM_SECTION), &mut p);
        let section = |name: &str, p: &mut Problems| -> Vec<(String, Url)> {
            let mut v = sections.get(name).cloned().unwrap_or(Value::Null);
            substitute(&mut v, &placeholders, name, p);
            section_urls(name, &v, p)
        };
        let agent_params = agent_params(agent, &placeholders, &mut p);
        let mut registries: BTreeMap<String, Url> = section(REGISTRY_SECTION, &mut p).into_iter().collect();
        let basic_refers: BTreeMap<String, Url> = section(BASIC_REFER_SECTION, &mut p).into_iter().collect();
        let basic_services: BTreeMap<String, Url> =
            section(BASIC_SERVICE_SECTION, &mut p).into_iter().collect();
        let raw_refers = section(REFER_SECTION, &mut p);
        let raw_services = section(SERVICE_SECTION, &mut p);
        let raw_http = section(HTTP_CLIENT_SECTION, &mut p);

        for (id, u) in &registries {
            check_registry(id, u, &mut p);
        }
        // The registry the agent registers itself in.
        for r in split_list(agent_params.get(keys::REGISTRY).map(String::as_str).unwrap_or("")) {
            if !registries.contains_key(r) {
                p.error(
                    "motan-agent",
                    None,
                    Some(keys::REGISTRY),
                    unknown_registry(r, &registries),
                );
            }
        }
        let (locations, location_errors) = HttpLocations::from_section(sections.get(HTTP_LOCATIONS_SECTION));
        let (formats, format_errors) = HttpServiceFormats::from_section(sections.get(HTTP_SERVICE_SECTION));
        for (section, errors) in [
            (HTTP_LOCATIONS_SECTION, location_errors),
            (HTTP_SERVICE_SECTION, format_errors),
        ] {
            // The entry is the domain or conf-id; empty entry or key: the section itself.
            for (entry, e) in errors {
                let key = (!e.key.is_empty()).then_some(e.key.as_str());
                p.error(
                    section,
                    Some(entry.as_str()).filter(|d| !d.is_empty()),
                    key,
                    e.reason,
                );
            }
        }
        let http = HttpSections { locations, formats };
        let (http_proxy, proxy_errors) = HttpProxySpec::from_agent(&agent.other);
        for e in proxy_errors {
            p.error("motan-agent", None, Some(&e.key), e.reason);
        }
        let ctx = Checks {
            registries: &registries,
            http: &http,
        };
        for (sec, list) in [
            (BASIC_REFER_SECTION, &basic_refers),
            (BASIC_SERVICE_SECTION, &basic_services),
        ] {
            for (id, u) in list {
                ctx.check_values(sec, id, u, &mut p);
            }
        }
        for (sec, list) in [
            (REFER_SECTION, &raw_refers),
            (SERVICE_SECTION, &raw_services),
            (HTTP_CLIENT_SECTION, &raw_http),
        ] {
            for (id, u) in list {
                ctx.check_values(sec, id, u, &mut p);
            }
        }

        let application = agent.application.as_str();
        let mut refers = BTreeMap::new();
        for (id, raw) in raw_refers {
            let mut u = inherit(REFER_SECTION, &id, raw, BASIC_REFER_KEY, &basic_refers, &mut p);
            finish_refer(&mut u, application, &agent_params, env);
            launch_env::check_idc(REFER_SECTION, &id, &u, &env.idc, &registries, &mut p);
            ctx.check_refer(REFER_SECTION, &id, &u, &mut p);
            check_filters(REFER_SECTION, &id, &u, &mut p);
            if let Err(e) = HashKeySource::from_url(&u) {
                p.error(REFER_SECTION, Some(&id), Some(&e.key), e.reason);
            }
            refers.insert(id, u);
        }
        add_sub_group_refers(&mut refers, &env.sub_group_suffix);
        // Added to `registries` at the end (the checks above borrow them).
        let mut direct_registries = BTreeMap::new();
        launch_env::apply_direct_rpc(&env.direct_rpc, &mut refers, &mut direct_registries, &mut p);
        let mut http_clients = BTreeMap::new();
        for (id, raw) in raw_http {
            let mut u = inherit(
                HTTP_CLIENT_SECTION,
                &id,
                raw,
                BASIC_REFER_KEY,
                &basic_refers,
                &mut p,
            );
            finish_refer(&mut u, application, &agent_params, env);
            launch_env::check_idc(HTTP_CLIENT_SECTION, &id, &u, &env.idc, &registries, &mut p);
            ctx.check_refer(HTTP_CLIENT_SECTION, &id, &u, &mut p);
            check_filters(HTTP_CLIENT_SECTION, &id, &u, &mut p);
            http_clients.insert(id, u);
        }
        let mut http_routes: BTreeMap<String, HttpClientSpec> = BTreeMap::new();
        for (id, u) in &http_clients {
            if u.param(super::http::keys::DOMAIN).is_none_or(str::is_empty) {
                continue;
            }
            let spec = match HttpClientSpec::new(id, u, &http.locations) {
                Ok(s) => s,
                Err(e) => {
                    p.error(HTTP_CLIENT_SECTION, Some(id), Some(&e.key), e.reason);
                    continue;
                }
            };
            if let Some(other) = http_routes.values().find(|o| o.domain == spec.domain) {
                p.error(
                    HTTP_CLIENT_SECTION,
                    Some(id),
                    Some(super::http::keys::DOMAIN),
                    format!("entry {} already serves domain {:?}", other.conf_id, spec.domain),
                );
                continue;
            }
            if spec.services.is_empty() {
                p.warn(
                    HTTP_CLIENT_SECTION,
                    Some(id),
                    Some(super::http::keys::DOMAIN),
                    format!(
                        "http-locations has no rules for {:?} and there is no preload: every request to it goes as plain HTTP",
                        spec.domain
                    ),
                );
            }
            http_routes.insert(id.clone(), spec);
        }
        let meta_prefix = match sections.get(launch_env::ENV_META_PREFIX_KEY) {
            Some(Value::String(s)) => s.as_str(),
            _ => launch_env::DEFAULT_META_PREFIX,
        };
        let meta = launch_env::env_meta(&env.vars, meta_prefix);
        let mut services = BTreeMap::new();
        for (id, raw) in raw_services {
            // Early motan-go (the Weibo Mesh article's time) named a service's template with
            // `basicRefer` too; it is read as `basicService` when that is absent.
            let key = if raw.param(BASIC_SERVICE_KEY).is_none() && raw.param(BASIC_REFER_KEY).is_some() {
                BASIC_REFER_KEY
            } else {
                BASIC_SERVICE_KEY
            };
            let mut u = inherit(SERVICE_SECTION, &id, raw, key, &basic_services, &mut p);
            compose_filters(&mut u, &agent_params, env);
            if u.param(keys::APPLICATION).is_none() && !application.is_empty() {
                u.params.insert(keys::APPLICATION.into(), application.into());
            }
            ctx.check_service(&id, &u, &mut p);
            check_filters(SERVICE_SECTION, &id, &u, &mut p);
            launch_env::add_register_meta(&mut u, &meta);
            services.insert(id, u);
        }
        expand_service_groups(&mut services, env);
        let mut exports: BTreeMap<String, ServiceSpec> = BTreeMap::new();
        for (id, u) in &services {
            let Some(spec) = ctx.service_spec(id, u, &mut p) else {
                continue;
            };
            if let Some((other, _)) = exports.iter().find(|(_, s)| s.export_key() == spec.export_key()) {
                p.error(
                    SERVICE_SECTION,
                    Some(id),
                    Some(keys::EXPORT),
                    format!(
                        "entry {other} already exports group {:?} path {:?} on port {}",
                        u.group, u.path, spec.export_port
                    ),
                );
                continue;
            }
            exports.insert(id.clone(), spec);
        }
        if let Some(d) = &http_proxy.default_domain
            && !http_routes.values().any(|r| &r.domain == d)
        {
            p.error(
                "motan-agent",
                None,
                Some(super::http_client::keys::DEFAULT_DOMAIN),
                format!("no http-client entry has domain {d:?}"),
            );
        }

        registries.extend(direct_registries);
        let mc = MotanConfig {
            registries,
            refers,
            services,
            exports,
            http_clients,
            http_routes,
            http,
            http_proxy,
            warnings: p.warnings,
        };
        (mc, p.errors)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::refer::HaKind;
    use crate::config::service::parse_protocol_port;

    const CLIENT_EXAMPLE: &str = r#"
motan-agent:
  port: 9981
  mport: 8002
  log_dir: "/var/log/motan"
  application: "order-web"          # becomes M_s for callers that do not send one
  registry: "zk"                    # the agent registers itself here (for agent commands)

motan-registry:
  zk:
    protocol: zookeeper
    host: 10.0.0.11
    port: 2181
    registrySessionTimeout: 30      # seconds in motan-go
  direct-users:
    protocol: direct
    address: "10.0.1.5:9982,10.0.1.6:9982"

motan-basicRefer:
  rpc-basic:
    protocol: motan2
    registry: zk
    serialization: simple
    haStrategy: failover
    retries: 1
    loadbalance: roundrobin
    requestTimeout: 800
    filter: "accessLog,metrics"

motan-refer:
  hello-service:
    path: com.weibo.HelloService
    group: g
    basicRefer: rpc-basic
  user-service:
    path: com.example.UserService
    group: user-rpc
    basicRefer: rpc-basic
    registry: direct-users          # overrides the template
    loadbalance: consistentHashKey
"#;

    const SERVER_EXAMPLE: &str = r#"
motan-agent:
  port: 9981
  eport: 9982
  mport: 8002
  application: "hello-server"

motan-registry:
  zk:
    protocol: zookeeper
    host: 10.0.0.11
    port: 2181

motan-basicService:
  svc-basic:
    registry: zk
    group: g
    serialization: simple
    filter: "accessLog,metrics"

motan-service:
  hello-rpc:                         # local process speaks motan2 on 127.0.0.1:8100
    path: com.weibo.HelloService
    basicService: svc-basic
    export: "motan2:9982"
    provider: motan2
    proxy: "motan2:8100"
  hello-http:                        # local process speaks HTTP on 127.0.0.1:8080
    path: api.hello.com              # clients call M_p=api.hello.com, M_m=/the/http/path
    basicService: svc-basic
    export: "motan2:9982"
    provider: http
    domain: api.hello.com
    proxyAddress: "127.0.0.1:8080"
    enableRewrite: false             # true (default) requires http-locations rules for the domain
    requestTimeout: 2000
"#;

    fn build_with(text: &str, env: &MotanEnv) -> (MotanConfig, Vec<String>) {
        let root: BTreeMap<String, Value> = serde_yaml_ng::from_str(text).unwrap();
        let mut agent = AgentSection::default();
        let mut sections = BTreeMap::new();
        for (k, v) in root {
            if k == "motan-agent" {
                agent = serde_yaml_ng::from_value(v).unwrap();
            } else {
                sections.insert(k, v);
            }
        }
        MotanConfig::build("app.yaml", &agent, &sections, env)
    }

    fn build(text: &str) -> (MotanConfig, Vec<String>) {
        build_with(text, &MotanEnv::default())
    }

    fn errors(text: &str) -> Vec<String> {
        build(text).1
    }

    #[test]
    fn client_example_from_the_spec() {
        let (mc, errs) = build(CLIENT_EXAMPLE);
        assert!(errs.is_empty(), "{errs:#?}");
        assert!(mc.warnings.is_empty(), "{:#?}", mc.warnings);
        assert_eq!(mc.registries.len(), 2);
        let zk = &mc.registries["zk"];
        assert_eq!(
            (zk.protocol.as_str(), zk.host.as_str(), zk.port),
            ("zookeeper", "10.0.0.11", 2181)
        );
        assert_eq!(zk.params["registrySessionTimeout"], "30");
        assert_eq!(zk.params["conf-id"], "zk");
        assert_eq!(
            mc.registries["direct-users"].params["address"],
            "10.0.1.5:9982,10.0.1.6:9982"
        );

        let hello = &mc.refers["hello-service"];
        assert_eq!(hello.identity(), "motan2://:0/com.weibo.HelloService?group=g");
        let expect = [
            ("application", "order-web"),
            ("basicRefer", "rpc-basic"),
            ("conf-id", "hello-service"),
            ("filter", "accessLog,metrics"),
            ("haStrategy", "failover"),
            ("loadbalance", "roundrobin"),
            ("registry", "zk"),
            ("requestTimeout", "800"),
            ("retries", "1"),
            ("serialization", "simple"),
        ];
        let got: Vec<(&str, &str)> = hello
            .params
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        assert_eq!(got, expect);

        let user = &mc.refers["user-service"];
        assert_eq!(
            (user.path.as_str(), user.group.as_str()),
            ("com.example.UserService", "user-rpc")
        );
        assert_eq!(user.params["registry"], "direct-users");
        assert_eq!(user.params["loadbalance"], "consistentHashKey");
        assert_eq!(user.params["retries"], "1", "inherited");
        assert_eq!(user.params["conf-id"], "user-service");
        assert!(mc.services.is_empty());
    }

    #[test]
    fn server_example_from_the_spec() {
        let (mc, errs) = build(SERVER_EXAMPLE);
        assert!(errs.is_empty(), "{errs:#?}");
        assert!(mc.warnings.is_empty(), "{:#?}", mc.warnings);
        assert_eq!(mc.services.len(), 2);
        let rpc = &mc.services["hello-rpc"];
        // No protocol or host yet: the export step sets them (4.11).
        assert_eq!(rpc.identity(), "://:0/com.weibo.HelloService?group=g");
        assert_eq!(rpc.params["export"], "motan2:9982");
        assert_eq!(rpc.params["provider"], "motan2");
        assert_eq!(rpc.params["proxy"], "motan2:8100");
        assert_eq!(rpc.params["registry"], "zk");
        assert_eq!(rpc.params["serialization"], "simple");
        assert_eq!(rpc.params["filter"], "accessLog,metrics");
        assert_eq!(rpc.params["application"], "hello-server");
        assert_eq!(rpc.params["conf-id"], "hello-rpc");
        let http = &mc.services["hello-http"];
        assert_eq!((http.path.as_str(), http.group.as_str()), ("api.hello.com", "g"));
        assert_eq!(http.params["provider"], "http");
        assert_eq!(http.params["proxyAddress"], "127.0.0.1:8080");
        assert_eq!(http.params["enableRewrite"], "false");
        assert_eq!(http.params["requestTimeout"], "2000");
        assert_eq!(http.params["domain"], "api.hello.com");
        assert!(mc.refers.is_empty());
    }

    #[test]
    fn examples_pass_config_parse_too() {
        for text in [CLIENT_EXAMPLE, SERVER_EXAMPLE] {
            let cfg = crate::config::Config::parse(text, "app.yaml").unwrap_or_else(|e| panic!("{e}"));
            let mc = &cfg.mesh;
            assert!(!mc.registries.is_empty());
        }
    }

    #[test]
    fn reports_every_problem_with_file_section_entry_and_key() {
        let text = r#"
motan-registry:
  zk: {protocol: consul, host: 127.0.0.1, port: 8500}
  d: {protocol: direct, address: "127.0.0.1:x"}
motan-basicRefer:
  base: {protocol: motan2, retries: -1}
motan-refer:
  hello-service:
    path: com.weibo.HelloService
    basicRefer: nope
    loadbalance: foo
    haStrategy: broadcast
    registry: zk,missing
    requestTimeout: 10s
    "get(java.lang.String).requestTimeout": abc
    lazyInit: maybe
    clientConnection: 0
    backupRequestDelayRatio: 120
  no-path:
    basicRefer: base
    port: 70000
  weird:
    path: p
    protocol: grpc
    filter: [a, b]
"#;
        let errs = errors(text);
        let all = errs.join("\n");
        let expect = [
            "app.yaml: section motan-refer, entry hello-service, key loadbalance: unknown load balancer \"foo\" (expected random, roundrobin, wrr, consistentHashKey, leastActive)",
            "app.yaml: section motan-refer, entry hello-service, key haStrategy: unknown HA strategy \"broadcast\" (expected failover, failfast, backupRequest)",
            "app.yaml: section motan-refer, entry hello-service, key basicRefer: unknown basicRefer \"nope\" (not in motan-basicRefer: base)",
            "app.yaml: section motan-refer, entry hello-service, key registry: unknown registry \"missing\" (not in motan-registry: d, zk)",
            "app.yaml: section motan-refer, entry hello-service, key requestTimeout: \"10s\" is not an integer",
            "app.yaml: section motan-refer, entry hello-service, key get(java.lang.String).requestTimeout: \"abc\" is not an integer",
            "app.yaml: section motan-refer, entry hello-service, key lazyInit: \"maybe\" is not a boolean (true or false)",
            "app.yaml: section motan-refer, entry hello-service, key clientConnection: 0 is below the minimum 1",
            "app.yaml: section motan-refer, entry hello-service, key backupRequestDelayRatio: \"120\" is not an integer in 1..100",
            "app.yaml: section motan-refer, entry no-path, key path: missing",
            "app.yaml: section motan-refer, entry no-path, key port: \"70000\" is not a port (0..65535)",
            "app.yaml: section motan-refer, entry weird, key filter: expected a single value, found a list or mapping",
            "app.yaml: section motan-refer, entry weird, key protocol: unsupported refer protocol \"grpc\"",
            "app.yaml: section motan-basicRefer, entry base, key retries: -1 is below the minimum 0",
            "app.yaml: section motan-registry, entry zk, key protocol: unsupported registry \"consul\" (expected direct, zookeeper)",
            "app.yaml: section motan-registry, entry d, key address: address entry \"127.0.0.1:x\": port must be a number in 1..65535",
        ];
        for e in expect {
            assert!(errs.iter().any(|x| x.starts_with(e)), "missing {e:?} in:\n{all}");
        }
        assert_eq!(errs.len(), expect.len(), "{all}");
    }

    #[test]
    fn agent_registry_must_exist() {
        let errs = errors("motan-agent:\n  registry: zk\n");
        assert_eq!(
            errs,
            [
                "app.yaml: section motan-agent, key registry: unknown registry \"zk\" (not in motan-registry: none defined)"
            ]
        );
    }

    #[test]
    fn failfast_is_accepted() {
        let (mc, errs) = build(
            "motan-registry:\n  d: {protocol: direct, address: \"127.0.0.1:1\"}\nmotan-refer:\n  r: {path: p, registry: d, haStrategy: failfast}\n",
        );
        assert!(errs.is_empty(), "{errs:?}");
        let r = &mc.refers["r"];
        assert_eq!(HaKind::from_url(r).unwrap(), HaKind::Failfast);
        assert_eq!(r.protocol, "motan2", "default refer protocol");
    }

    #[test]
    fn service_checks() {
        let text = r#"
motan-registry:
  d: {protocol: direct, host: 127.0.0.1, port: 9982}
http-locations:
  api.ok.com:
    - {match: /, upstream: api}
  api.bad.com:
    - {match: "(", type: regexp, upstream: api}
http-service:
  fmt-http: {}
  fmt-bad:
    m: {URL_FORMAT: "http://x/%s/%s"}
motan-service:
  no-proxy: {path: a, registry: d, provider: motan2, export: "9982"}
  bad-export: {path: b, registry: d, export: "motan2:", proxy: "8100"}
  grpc-export: {path: c, registry: d, export: "grpc:9982", proxy: "motan2:8100"}
  cgi: {path: d, registry: d, provider: cgi}
  in-process: {path: e, registry: d}
  http-nothing: {path: f, registry: d, provider: http, enableRewrite: false}
  http-rewrite: {path: g, registry: d, provider: http, proxyAddress: "127.0.0.1:8080", domain: api.x.com}
  http-unix: {path: h, registry: d, provider: http, proxyAddress: "unix:///run/app.sock", domain: api.ok.com}
  http-rules: {path: l, registry: d, provider: http, proxyAddress: "127.0.0.1:8080", domain: api.ok.com}
  http-plain: {path: m, registry: d, provider: http, proxyAddress: "127.0.0.1:8080", domain: api.ok.com, enableRewrite: false}
  http-format: {path: i, registry: d, provider: http, URL_FORMAT: "http://127.0.0.1:8080%s", enableRewrite: "false"}
  http-early: {path: n, registry: d, provider: http, HTTP_URL: "http://127.0.0.1:9900/http_server", HTTP_REQUEST_METHOD: POST}
  http-both: {path: o, registry: d, provider: http, HTTP_URL: "http://127.0.0.1:1/a", URL_FORMAT: "http://127.0.0.1:1/b"}
  http-https: {path: q, registry: d, provider: http, URL_FORMAT: "https://127.0.0.1/%s"}
  fmt-http: {path: j, registry: d, provider: http, enableRewrite: "false"}
  by-proxy: {path: k, registry: d, proxy: "motan:8100"}
  no-path: {registry: d, proxy: "8100"}
"#;
        let (mc, errs) = build(text);
        let all = errs.join("\n");
        let expect = [
            "section motan-service, entry no-proxy, key proxy: provider motan2 needs proxy",
            "section motan-service, entry bad-export, key export: \"motan2:\" is not [protocol:]port (port must be 1..65535)",
            "section motan-service, entry grpc-export, key export: unsupported export protocol \"grpc\" (expected motan2, motan)",
            "section motan-service, entry cgi, key provider: unsupported provider \"cgi\" (expected motan2, motan, http; set provider or proxy)",
            "section motan-service, entry in-process, key provider: unsupported provider \"default\"",
            "section motan-service, entry http-nothing, key proxyAddress: an http provider needs proxyAddress (host:port or unix://path) or URL_FORMAT",
            "section motan-service, entry http-both, key HTTP_URL: \"http://127.0.0.1:1/a\" differs from URL_FORMAT",
            "section motan-service, entry http-https, key URL_FORMAT: \"https://127.0.0.1/%s\": https is not supported",
            "section motan-service, entry fmt-http, key proxyAddress: an http provider needs proxyAddress",
            "section motan-service, entry no-path, key path: missing",
            "section http-locations, entry api.bad.com, key [0].match: regexp \"(\"",
            "section http-service, entry fmt-bad, key m.URL_FORMAT: \"http://x/%s/%s\" has more than one %s",
        ];
        for e in expect {
            assert!(
                errs.iter().any(|x| x.starts_with(&format!("app.yaml: {e}"))),
                "missing {e:?} in:\n{all}"
            );
        }
        assert_eq!(errs.len(), expect.len(), "{all}");
        // Served: unix sockets, rewriting, URL_FORMAT and the early HTTP_URL.
        for id in [
            "http-unix",
            "http-rules",
            "http-plain",
            "http-format",
            "http-early",
            "http-rewrite",
        ] {
            assert!(mc.exports.contains_key(id), "{id} not exported");
        }
        let w = mc.warnings.join("\n");
        assert!(
            w.contains("entry http-rewrite, key enableRewrite: on (the default) but http-locations has no rules for domain \"api.x.com\""),
            "{w}"
        );
    }

    /// The Weibo Mesh article's server-agent entry, unchanged but for a direct registry: the
    /// early keys (HTTP_URL, and basicRefer naming a basicService) are read as motan-go read
    /// them then.
    #[test]
    fn weibo_mesh_article_server_entry() {
        let (mc, errs) = build(
            r#"
motan-registry:
  zk-registry: {protocol: direct, address: "127.0.0.1:1"}
motan-basicService:
  mesh-server-basicService: {group: hello-group, filter: "accessLog,metrics"}
motan-service:
  http-mesh-example-helloworld:
    path: com.weibo.motan.HelloWorldService
    export: "motan2:9990"
    provider: http
    registry: "zk-registry"
    HTTP_URL: http://10.211.55.3:9900/http_server
    basicRefer: mesh-server-basicService
"#,
        );
        assert!(errs.is_empty(), "{errs:#?}");
        let spec = &mc.exports["http-mesh-example-helloworld"];
        assert_eq!(spec.export_port, 9990);
        assert_eq!(spec.url.group, "hello-group", "the template named by basicRefer");
        match &spec.provider {
            crate::config::service::ProviderSpec::Http(h) => match &h.mode {
                crate::config::http::HttpMode::UrlFormat { url: Some(u), .. } => {
                    assert_eq!(u.url("/x"), "http://10.211.55.3:9900/http_server")
                }
                other => panic!("{other:?}"),
            },
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn inheritance_fields_and_params() {
        let (mc, errs) = build(
            r#"
motan-registry:
  d: {protocol: direct, address: "127.0.0.1:1"}
motan-basicRefer:
  b: {protocol: motan, host: 127.0.0.2, port: 1, group: tg, path: tp, registry: d, requestTimeout: 100, x: 1}
motan-refer:
  r1: {basicRefer: b, requestTimeout: 200}
  r2: {basicRefer: b, group: own, path: op, port: 7, protocol: motan2}
"#,
        );
        assert!(errs.is_empty(), "{errs:?}");
        let r1 = &mc.refers["r1"];
        assert_eq!(r1.identity(), "motan://127.0.0.2:1/tp?group=tg");
        assert_eq!(r1.params["requestTimeout"], "200");
        assert_eq!(r1.params["x"], "1");
        assert_eq!(r1.params["conf-id"], "r1");
        let r2 = &mc.refers["r2"];
        assert_eq!(r2.identity(), "motan2://127.0.0.2:7/op?group=own");
        assert_eq!(r2.params["requestTimeout"], "100");
    }

    #[test]
    fn scalars_are_stringified_like_upstream() {
        let (mc, _) =
            build("motan-refer:\n  r: {path: p, a: 1, b: 1.5, c: true, d: ~, e: \"x\", f: -7, g: 1e3}\n");
        let r = &mc.refers["r"];
        let get = |k: &str| r.params[k].as_str();
        assert_eq!(
            (
                get("a"),
                get("b"),
                get("c"),
                get("d"),
                get("e"),
                get("f"),
                get("g")
            ),
            ("1", "1.5", "true", "", "x", "-7", "1000")
        );
    }

    #[test]
    fn dynamic_param_placeholders() {
        let (mc, errs) = build(
            r#"
dynamic-param:
  regGroup: g-yf
  timeout: 300
  perPool: {default: pooled, "regexp:yf-.*": other}
  noDefault: {yf: x}
motan-registry:
  d: {protocol: direct, address: "127.0.0.1:1"}
motan-refer:
  r:
    path: p
    registry: d
    group: ${regGroup}
    requestTimeout: ${timeout}
    a: ${perPool}
    b: "prefix-${regGroup}"
    c: ${unknown}
    d: ${noDefault}
"#,
        );
        assert!(errs.is_empty(), "{errs:?}");
        let r = &mc.refers["r"];
        assert_eq!(r.group, "g-yf");
        assert_eq!(r.params["requestTimeout"], "300");
        assert_eq!(r.params["a"], "pooled");
        assert_eq!(
            r.params["b"], "prefix-${regGroup}",
            "only exact matches are replaced"
        );
        assert_eq!(r.params["c"], "${unknown}");
        let w = mc.warnings.join("\n");
        assert!(
            w.contains("placeholder ${unknown} has no dynamic-param value"),
            "{w}"
        );
        assert!(
            w.contains("key noDefault: per-pool values without a `default` entry"),
            "{w}"
        );
    }

    #[test]
    fn filters_union_with_agent_sets_env_and_backup_request() {
        let text = r#"
motan-agent:
  defaultFilter: "accessLog,metrics"
  globalFilter: "trace"
motan-registry:
  d: {protocol: direct, address: "127.0.0.1:1"}
motan-refer:
  plain: {path: a, registry: d}
  own: {path: b, registry: d, filter: "rateLimit, accessLog", disableDefaultFilter: metrics}
  noglobal: {path: c, registry: d, disableGlobalFilter: trace, disableDefaultFilter: "accessLog,metrics"}
  backup: {path: d, registry: d, haStrategy: backupRequest, disableDefaultFilter: "accessLog,metrics", disableGlobalFilter: trace}
motan-service:
  s: {path: e, registry: d, proxy: "8100", disableGlobalFilter: trace}
"#;
        let env = MotanEnv {
            mesh_filters: "circuitBreaker".into(),
            ..Default::default()
        };
        let (mc, errs) = build_with(text, &env);
        assert!(errs.is_empty(), "{errs:?}");
        let f = |id: &str| mc.refers[id].params.get("filter").cloned().unwrap_or_default();
        assert_eq!(f("plain"), "accessLog,circuitBreaker,metrics,trace");
        assert_eq!(f("own"), "accessLog,circuitBreaker,rateLimit,trace");
        assert_eq!(f("noglobal"), "circuitBreaker");
        assert_eq!(f("backup"), "circuitBreaker,metrics");
        assert_eq!(
            mc.services["s"].params["filter"],
            "accessLog,circuitBreaker,metrics"
        );
        let (mc, _) = build("motan-refer:\n  r: {path: p}\n");
        assert!(!mc.refers["r"].params.contains_key("filter"));
        assert!(
            mc.warnings
                .iter()
                .any(|w| w.contains("entry r, key registry: no registry"))
        );
    }

    #[test]
    fn service_groups_and_group_env() {
        let text = r#"
motan-registry:
  d: {protocol: direct, address: "127.0.0.1:1"}
motan-service:
  s: {path: p, registry: d, group: "g1, g2,g1", proxy: "8100"}
  t: {path: q, registry: d, group: "h-sfx", proxy: "8101"}
motan-refer:
  r: {path: p, registry: d, group: g}
  r2: {path: p, registry: d, group: g-sub}
"#;
        let (mc, errs) = build(text);
        assert!(errs.is_empty(), "{errs:?}");
        assert_eq!(mc.services["s"].group, "g1");
        assert_eq!(mc.services["s-0"].group, "g2");
        assert_eq!(mc.services.len(), 3);
        let env = MotanEnv {
            additional_group: "extra".into(),
            reg_group_suffix: "-sfx".into(),
            sub_group_suffix: "-sub".into(),
            ..Default::default()
        };
        let (mc, _) = build_with(text, &env);
        let mut groups: Vec<(&str, &str)> = mc
            .services
            .iter()
            .map(|(k, v)| (k.as_str(), v.group.as_str()))
            .collect();
        groups.sort();
        assert_eq!(
            groups,
            [
                ("s", "g1-sfx"),
                ("s-0", "g2-sfx"),
                ("s-1", "extra-sfx"),
                ("t", "h-sfx"),
                ("t-0", "extra-sfx")
            ]
        );
        let mut refers: Vec<(&str, &str)> = mc
            .refers
            .iter()
            .map(|(k, v)| (k.as_str(), v.group.as_str()))
            .collect();
        refers.sort();
        assert_eq!(
            refers,
            [("r", "g"), ("r2", "g-sub")],
            "g-sub already exists: no auto refer"
        );
        let (mc, _) = build_with("motan-refer:\n  r: {path: p, group: g}\n", &env);
        assert_eq!(mc.refers["auto_rg-sub"].group, "g-sub");
    }

    #[test]
    fn section_and_entry_shapes() {
        let errs = errors("motan-refer: [a, b]\nmotan-service:\n  s: 3\ndynamic-param: 5\n");
        let all = errs.join("\n");
        assert!(
            all.contains("section motan-refer: must be a mapping of entry id → settings"),
            "{all}"
        );
        assert!(
            all.contains("section motan-service, entry s: must be a mapping of settings"),
            "{all}"
        );
        assert!(all.contains("section dynamic-param: must be a mapping"), "{all}");
        assert!(errors("motan-refer:\n").is_empty());
    }

    #[test]
    fn registry_checks() {
        let errs = errors(
            "motan-registry:\n  a: {host: 127.0.0.1}\n  b: {protocol: zookeeper}\n  c: {protocol: zookeeper, address: \"127.0.0.1:2181,127.0.0.2\"}\n  e: {protocol: direct}\n  f: {protocol: zookeeper, host: 127.0.0.1, port: 2181, registrySessionTimeout: x}\n  g: {protocol: zookeeper, address: \"unix:///x\"}\n",
        );
        let all = errs.join("\n");
        for e in [
            "entry a, key protocol: missing (direct or zookeeper)",
            "entry b, key host: needs host and port, or address",
            "entry c, key address: address entry \"127.0.0.2\" is not host:port or unix://path",
            "entry e, key address: needs host and port",
            "entry f, key registrySessionTimeout: \"x\" is not an integer",
            "entry g, key address: address entry \"unix:///x\" is not host:port",
        ] {
            assert!(all.contains(e), "missing {e:?} in:\n{all}");
        }
        assert_eq!(errs.len(), 6, "{all}");
        // Accepted, with a word on motan-go's unit.
        let (mc, errs) = build(
            "motan-registry:\n  zk: {protocol: zookeeper, address: \"127.0.0.1:2181, 127.0.0.2:2181\", registrySessionTimeout: 10000}\n",
        );
        assert!(errs.is_empty(), "{errs:?}");
        assert_eq!(mc.warnings.len(), 1, "{:?}", mc.warnings);
        assert!(
            mc.warnings[0].contains(
                "key registrySessionTimeout: 10000 is read as seconds (as motan-go does) and clamped: 60 s is used"
            ),
            "{:?}",
            mc.warnings
        );
    }

    #[test]
    fn protocol_port_format() {
        assert_eq!(parse_protocol_port("8100").unwrap(), ("motan2".into(), 8100));
        assert_eq!(parse_protocol_port("motan:8100").unwrap(), ("motan".into(), 8100));
        assert!(parse_protocol_port(":8100").is_err());
        assert!(parse_protocol_port("motan2:0").is_err());
        assert!(parse_protocol_port("motan2").is_err());
    }
}
