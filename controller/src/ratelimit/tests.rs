//! Translation, validation and pipeline tests of global rate limits (the counting logic and
//! descriptor matching are tested in `limits.rs` and `service.rs`).

use std::time::Instant;

use serde_json::Value;

use super::envoy::{plan, CONTROLLER_CLUSTER};
use super::GlobalRateLimit;
use crate::load::{load_text, Loaded};
use crate::translate::tests::{inputs, options, DEMO};
use crate::translate::{translate, translate_cached, Cache};

/// The demo MetaRouter with `block` as its `globalRateLimit`.
fn demo_with(block: &str) -> String {
    let at = "  routes:\n  - name: by-method";
    assert!(DEMO.contains(at));
    DEMO.replacen(at, &format!("  globalRateLimit:\n{block}{at}"), 1)
}

const LIMITED: &str = "    domain: production
    match: {attributes: {method: {exact: sayHello}}}
    descriptors: [{property: method, descriptorKey: method}, {property: user, descriptorKey: who}]
    requestTimeout: 100ms
    denyOnFail: true
";

const LIMITS: &str = "
---
apiVersion: meltemi.io/v1alpha1
kind: RateLimitConfig
metadata: {name: prod, namespace: meta}
spec:
  domain: production
  descriptors:
  - key: method
    value: sayHello
    rate_limit: {unit: minute, requests_per_unit: 10}
";

fn http_filters(listener: &Value) -> Vec<Value> {
    listener["filter_chains"][0]["filters"][1]["typed_config"]["http_filters"]
        .as_array()
        .cloned()
        .unwrap()
}

#[test]
fn global_rate_limit_becomes_the_filter_and_route_actions() {
    let r = translate(&inputs(&demo_with(LIMITED)), &options()).unwrap();
    let filters = http_filters(&r.listeners["127.0.0.1_9000"]);
    let names: Vec<&str> = filters
        .iter()
        .map(|f| f["name"].as_str().unwrap())
        .collect();
    assert_eq!(
        names,
        [
            "envoy.filters.http.buffer",
            "envoy.filters.http.set_filter_state",
            "meltemi.authz.deny",
            "meltemi.authz.allow",
            "envoy.filters.http.local_ratelimit",
            "envoy.filters.http.fault",
            "meltemi.ratelimit.0",
            "envoy.filters.http.router"
        ]
    );
    let rl = &filters
        .iter()
        .find(|f| f["name"] == "meltemi.ratelimit.0")
        .unwrap()["typed_config"];
    assert_eq!(rl["domain"], "production");
    assert_eq!(rl["stage"], 0);
    assert_eq!(rl["failure_mode_deny"], true);
    assert_eq!(rl["timeout"], "0.1s");
    assert_eq!(
        rl["rate_limit_service"]["grpc_service"]["envoy_grpc"]["cluster_name"],
        CONTROLLER_CLUSTER
    );
    // Each route is split: first a copy that also requires the match and carries the rate
    // limits, then the route as it was.
    let routes = r.routes["meltemi_9000"]["virtual_hosts"][1]["routes"]
        .as_array()
        .cloned()
        .unwrap();
    let names: Vec<&str> = routes.iter().map(|r| r["name"].as_str().unwrap()).collect();
    assert_eq!(
        names,
        [
            "by-method/ratelimit",
            "by-method",
            "split/ratelimit",
            "split"
        ]
    );
    let limited = &routes[2];
    assert_eq!(limited["match"]["headers"][0]["name"], "method");
    assert_eq!(
        limited["match"]["headers"][0]["string_match"]["exact"],
        "sayHello"
    );
    let actions = limited["route"]["rate_limits"].as_array().unwrap();
    assert_eq!(actions.len(), 2, "one descriptor per Aeraki descriptor");
    assert_eq!(actions[0]["stage"], 0);
    assert_eq!(
        actions[0]["actions"][0]["request_headers"],
        serde_json::json!({"header_name": "method", "descriptor_key": "method"})
    );
    assert_eq!(
        actions[1]["actions"][0]["request_headers"]["descriptor_key"],
        "who"
    );
    // The copy keeps everything else of the route.
    assert_eq!(
        limited["route"]["weighted_clusters"],
        routes[3]["route"]["weighted_clusters"]
    );
    assert!(routes[3]["route"].get("rate_limits").is_none());
    assert!(routes[1]["route"].get("rate_limits").is_none());
    // The first route's own matchers stay, the limit's match is added to them.
    assert_eq!(routes[0]["match"]["headers"].as_array().unwrap().len(), 5);
    // Envoy's schema accepts all of it.
    crate::xds::Snapshot::new(&r, Instant::now()).unwrap();
}

#[test]
fn without_match_every_route_is_limited_and_other_services_can_be_named() {
    let block = "    domain: d\n    descriptors: [{property: method, descriptorKey: m}]\n    rateLimitService: outbound|8081||rls.example\n    requestTimeout: 250\n";
    let r = translate(&inputs(&demo_with(block)), &options()).unwrap();
    let routes = r.routes["meltemi_9000"]["virtual_hosts"][1]["routes"]
        .as_array()
        .cloned()
        .unwrap();
    assert_eq!(routes.len(), 2, "no match: nothing to split");
    assert!(routes.iter().all(|r| r["route"]["rate_limits"].is_array()));
    let filters = http_filters(&r.listeners["127.0.0.1_9000"]);
    let rl = &filters
        .iter()
        .find(|f| f["name"] == "meltemi.ratelimit.0")
        .unwrap()["typed_config"];
    assert_eq!(
        rl["rate_limit_service"]["grpc_service"]["envoy_grpc"]["cluster_name"],
        "outbound|8081||rls.example"
    );
    assert_eq!(rl["failure_mode_deny"], false);
    assert_eq!(rl["timeout"], "0.25s", "a YAML number is milliseconds");
    crate::xds::Snapshot::new(&r, Instant::now()).unwrap();
}

#[test]
fn one_filter_per_distinct_setting_on_a_port() {
    let a = GlobalRateLimit {
        domain: "a".into(),
        ..Default::default()
    };
    let b = GlobalRateLimit {
        domain: "b".into(),
        ..Default::default()
    };
    let a2 = GlobalRateLimit {
        rate_limit_service: Some("meltemi-controller".into()),
        ..a.clone()
    };
    let p = plan([
        ("h1", Some(&a)),
        ("h2", Some(&b)),
        ("h3", Some(&a2)),
        ("h4", None),
    ]);
    let filters = p.filters();
    assert_eq!(
        filters.len(),
        2,
        "`meltemi-controller` is the default service"
    );
    assert_eq!(filters[1]["typed_config"]["domain"], "b");
    assert_eq!(filters[1]["typed_config"]["stage"], 1);
    let route = serde_json::json!({"match": {"prefix": "/"}, "route": {"cluster": "c"}});
    let direct = serde_json::json!({"match": {"prefix": "/"}, "direct_response": {"status": 200}});
    let routes = p.routes("h2", vec![route.clone(), direct.clone()]);
    assert_eq!(routes[0]["route"]["rate_limits"], serde_json::json!([]));
    assert_eq!(routes[1], direct);
    assert_eq!(p.routes("h4", vec![route.clone()]), vec![route]);
}

#[test]
fn a_limit_change_retranslates_its_port_and_limits_retranslate_nothing() {
    let mut cache = Cache::default();
    let o = options();
    let base = inputs(&demo_with(LIMITED));
    let first = translate_cached(&base, &o, &mut cache).unwrap().clone();
    assert_eq!(cache.translated, 1);
    // The RateLimitConfig is the service's business: Envoy's resources are the same.
    let with_limits = inputs(&format!("{}{LIMITS}", demo_with(LIMITED)));
    assert_eq!(
        translate_cached(&with_limits, &o, &mut cache).unwrap(),
        &first
    );
    assert_eq!(cache.translated, 0);
    // A changed globalRateLimit re-translates its port.
    let changed = inputs(&demo_with(&LIMITED.replace("production", "staging")));
    let second = translate_cached(&changed, &o, &mut cache).unwrap().clone();
    assert_eq!(cache.translated, 1);
    assert_ne!(first.listeners, second.listeners);
    assert_eq!(second, translate(&changed, &o).unwrap());
}

fn problems(text: &str) -> Vec<String> {
    let mut loaded = Loaded::default();
    load_text("rl.yaml", text, &mut loaded);
    let mut out: Vec<String> = loaded.problems.iter().map(|p| p.to_string()).collect();
    out.extend(
        crate::validate::validate(&loaded.inputs)
            .iter()
            .map(|p| p.to_string()),
    );
    out
}

fn assert_problems(got: &[String], want: &[&str]) {
    for w in want {
        assert!(
            got.iter().any(|p| p.contains(w)),
            "missing {w:?} in:\n{}",
            got.join("\n")
        );
    }
    assert_eq!(got.len(), want.len(), "{}", got.join("\n"));
}

#[test]
fn bad_global_rate_limits_name_file_resource_and_field() {
    let block = "    domain: ''
    match: {attributes: {method: {exact: a, prefix: b}, user: {regex: '('}}}
    descriptors: [{property: '', descriptorKey: m}, {property: 'bad name', descriptorKey: ''}]
    requestTimeout: soon
    rateLimitService: 'two words'
";
    let p = problems(&demo_with(block));
    assert_problems(
        &p,
        &[
            "rl.yaml (document 4): MetaRouter meta/demo: field `spec.globalRateLimit.domain`: missing",
            "field `spec.globalRateLimit.descriptors[0].property`: missing",
            "field `spec.globalRateLimit.descriptors[1].property`: `bad name` cannot be read",
            "field `spec.globalRateLimit.descriptors[1].descriptorKey`: missing",
            "field `spec.globalRateLimit.match.attributes.method`: give one of exact, prefix, regex",
            "field `spec.globalRateLimit.match.attributes.user.regex`: invalid regex",
            "field `spec.globalRateLimit.requestTimeout`: `soon` is not a duration",
            "field `spec.globalRateLimit.rateLimitService`: `two words` is not a cluster name",
        ],
    );
    let p = problems(&demo_with("    domain: d\n    descriptors: []\n"));
    assert_problems(
        &p,
        &["field `spec.globalRateLimit.descriptors`: at least one descriptor is required"],
    );
    // A typo is refused by the loader, naming the field.
    let p = problems(&demo_with(
        "    domain: d\n    descriptors: [{property: method, descriptor_key: m}]\n",
    ));
    assert_problems(
        &p,
        &["MetaRouter meta/demo: field `spec.globalRateLimit.descriptors[0].descriptor_key`: unknown field"],
    );
}

#[test]
fn bad_rate_limit_configs_name_file_resource_and_field() {
    let text = "apiVersion: meltemi.io/v1alpha1
kind: RateLimitConfig
metadata: {name: one, namespace: rl}
spec:
  domain: d
  descriptors:
  - key: method
    value: a
    rate_limit: {unit: fortnight, requests_per_unit: 1}
  - key: method
    value: a
  - key: ''
    descriptors:
    - key: user
      rate_limit: {unit: second}
  - key: free
    rate_limit: {unlimited: true}
---
apiVersion: meltemi.io/v1alpha1
kind: RateLimitConfig
metadata: {name: two, namespace: rl}
spec:
  domain: d
---
apiVersion: meltemi.io/v1alpha1
kind: RateLimitConfig
metadata: {name: three}
spec: {}
---
apiVersion: meltemi.io/v1beta9
kind: RateLimitConfig
metadata: {name: four}
spec: {domain: x}
---
apiVersion: meltemi.io/v1alpha1
kind: RateLimitConfig
metadata: {name: five}
spec: {domain: why, descriptors: [{key: k, rate_limit: {unit: second, requests_per_unit: 1, burst: 2}}]}
";
    let p = problems(text);
    assert_problems(
        &p,
        &[
            "rl.yaml (document 1): RateLimitConfig rl/one: field `spec.descriptors[0].rate_limit.unit`: `fortnight` is not one of",
            "RateLimitConfig rl/one: field `spec.descriptors[1]`: key `method` value `a` is configured twice",
            "RateLimitConfig rl/one: field `spec.descriptors[2].key`: missing",
            "RateLimitConfig rl/one: field `spec.descriptors[2].descriptors[0].rate_limit.requests_per_unit`: missing",
            "rl.yaml (document 2): RateLimitConfig rl/two: field `spec.domain`: domain d is already configured by RateLimitConfig rl/one",
            "RateLimitConfig default/three: field `spec.domain`: missing",
            "RateLimitConfig default/four: field `apiVersion`: meltemi.io/v1beta9 is not supported",
            "RateLimitConfig default/five: field `spec.descriptors[0].rate_limit.burst`: unknown field",
        ],
    );
}

#[test]
fn the_pipeline_publishes_limits_and_keeps_the_last_good_ones() {
    use crate::source::Pipeline;
    let mut p = Pipeline::new(options());
    let limits = |text: &str| -> Value { serde_saphyr::from_str(text).unwrap() };
    let good = limits(
        "apiVersion: meltemi.io/v1alpha1\nkind: RateLimitConfig\nmetadata: {name: a}\nspec:\n  domain: d\n  descriptors: [{key: k, rate_limit: {unit: minute, requests_per_unit: 2}}]\n",
    );
    let rx = p.limits.subscribe();
    assert!(p.set_object("rl/a", Some(good)));
    p.snapshot(Instant::now(), None).unwrap();
    assert_eq!(rx.borrow().domains(), 1);
    let hit = rx
        .borrow()
        .hit("d", &[("k", "v")], 0)
        .map(|h| h.limit.requests_per_unit);
    assert_eq!(hit, Some(2));
    // An invalid rewrite is rejected; the last good limits stay in force.
    let bad = limits(
        "apiVersion: meltemi.io/v1alpha1\nkind: RateLimitConfig\nmetadata: {name: a}\nspec:\n  domain: d\n  descriptors: [{key: k, rate_limit: {unit: eon, requests_per_unit: 5}}]\n",
    );
    assert!(p.set_object("rl/a", Some(bad)));
    assert!(p.snapshot(Instant::now(), None).is_err());
    let hit = rx
        .borrow()
        .hit("d", &[("k", "v")], 0)
        .map(|h| h.limit.requests_per_unit);
    assert_eq!(hit, Some(2));
}
