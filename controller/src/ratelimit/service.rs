//! Envoy's rate limit service (`envoy.service.ratelimit.v3.RateLimitService/ShouldRateLimit`)
//! served by `meltemi-controller serve` on its xDS address, with fixed-window counters:
//!
//! - in Redis (`--redis redis://HOST:PORT`): one key per domain + descriptor + window, counted
//!   with `INCRBY` and given its `EXPIRE` in one `MULTI`/`EXEC` round trip, so that every
//!   replica sharing the Redis counts the same calls once (atomically, even from several
//!   Envoys at once);
//! - in memory otherwise (one replica's own counts).
//!
//! When Redis cannot be reached or does not answer in time, the call fails with `UNAVAILABLE`
//! and Envoy's filter decides, as Aeraki's `denyOnFail` says: calls pass (default) or get the
//! protocol's over-limit error. Redis is only ever touched here, on the rate limit calls'
//! own tasks: xDS serving never waits for it.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use envoy_types::pb::envoy::service::ratelimit::v3::rate_limit_response::{
    rate_limit::Unit, Code, DescriptorStatus, RateLimit,
};
use envoy_types::pb::envoy::service::ratelimit::v3::rate_limit_service_server::{
    RateLimitService, RateLimitServiceServer,
};
use envoy_types::pb::envoy::service::ratelimit::v3::{RateLimitRequest, RateLimitResponse};
use envoy_types::pb::google::protobuf::Duration as PbDuration;
use tokio::sync::watch;

use super::limits::{over_limit, until_reset, Limits};

/// How long one Redis round trip (or connection attempt) may take before the call fails;
/// below the timeouts users give Envoy's filter, so that Envoy sees an error, not a timeout.
const REDIS_TIMEOUT: Duration = Duration::from_millis(500);

/// Where the counters live.
pub enum Counters {
    /// This process's memory.
    Memory(Memory),
    /// A Redis shared by the replicas.
    Redis(Redis),
}

impl Counters {
    /// Counters in Redis at `url` (`redis://127.0.0.1:6379`); the connection is made on the
    /// first call, so the controller starts (and serves xDS) while Redis is down.
    pub fn redis(url: &str) -> Result<Counters, String> {
        let client = redis::Client::open(url).map_err(|e| format!("--redis {url}: {e}"))?;
        Ok(Counters::Redis(Redis {
            client,
            conn: tokio::sync::Mutex::new(None),
        }))
    }

    /// Adds `hits` to each key (a key lives `ttl` seconds) and returns their new values.
    pub async fn add(
        &self,
        keys: &[(String, u64)],
        hits: &[u64],
        now: u64,
    ) -> Result<Vec<u64>, String> {
        match self {
            Counters::Memory(m) => Ok(m.add(keys, hits, now)),
            Counters::Redis(r) => r.add(keys, hits).await,
        }
    }

    /// `memory` or `redis`, for logs.
    pub fn kind(&self) -> &'static str {
        match self {
            Counters::Memory(_) => "memory",
            Counters::Redis(_) => "redis",
        }
    }
}

/// In-memory fixed-window counters.
#[derive(Debug, Default)]
pub struct Memory {
    /// Key → (expiry, Unix seconds; count).
    counts: Mutex<HashMap<String, (u64, u64)>>,
}

impl Memory {
    fn add(&self, keys: &[(String, u64)], hits: &[u64], now: u64) -> Vec<u64> {
        let mut counts = match self.counts.lock() {
            Ok(c) => c,
            Err(poisoned) => poisoned.into_inner(),
        };
        // Windows that ended are forgotten, so the map holds the live windows only.
        if counts.len() > 1024 {
            counts.retain(|_, (expiry, _)| *expiry > now);
        }
        keys.iter()
            .zip(hits)
            .map(|((key, ttl), hits)| {
                let entry = counts.entry(key.clone()).or_insert((now + ttl, 0));
                if entry.0 <= now {
                    *entry = (now + ttl, 0);
                }
                entry.1 = entry.1.saturating_add(*hits);
                entry.1
            })
            .collect()
    }
}

/// Counters in Redis.
pub struct Redis {
    client: redis::Client,
    /// Made on first use; it reconnects by itself after a failure.
    conn: tokio::sync::Mutex<Option<redis::aio::ConnectionManager>>,
}

impl Redis {
    async fn connection(&self) -> Result<redis::aio::ConnectionManager, String> {
        let mut conn = self.conn.lock().await;
        if let Some(c) = conn.as_ref() {
            return Ok(c.clone());
        }
        let config = redis::aio::ConnectionManagerConfig::new()
            .set_connection_timeout(REDIS_TIMEOUT)
            .set_response_timeout(REDIS_TIMEOUT)
            .set_number_of_retries(1);
        let c = tokio::time::timeout(
            REDIS_TIMEOUT * 2,
            redis::aio::ConnectionManager::new_with_config(self.client.clone(), config),
        )
        .await
        .map_err(|_| "timed out connecting to redis".to_owned())?
        .map_err(|e| format!("cannot connect to redis: {e}"))?;
        *conn = Some(c.clone());
        Ok(c)
    }

    async fn add(&self, keys: &[(String, u64)], hits: &[u64]) -> Result<Vec<u64>, String> {
        if keys.is_empty() {
            return Ok(Vec::new());
        }
        let mut conn = self.connection().await?;
        let mut pipe = redis::pipe();
        pipe.atomic();
        for ((key, ttl), hits) in keys.iter().zip(hits) {
            pipe.cmd("INCRBY").arg(key).arg(*hits);
            pipe.cmd("EXPIRE").arg(key).arg(*ttl).ignore();
        }
        tokio::time::timeout(REDIS_TIMEOUT, pipe.query_async::<Vec<u64>>(&mut conn))
            .await
            .map_err(|_| "redis did not answer in time".to_owned())?
            .map_err(|e| format!("redis: {e}"))
    }
}

/// The gRPC service.
pub struct Rls {
    limits: watch::Receiver<Arc<Limits>>,
    counters: Counters,
}

impl Rls {
    /// A service answering from the limits `limits` holds (updated with every valid
    /// configuration) and counting in `counters`.
    pub fn new(limits: watch::Receiver<Arc<Limits>>, counters: Counters) -> Rls {
        Rls { limits, counters }
    }

    /// The tonic service.
    pub fn service(self) -> RateLimitServiceServer<Rls> {
        RateLimitServiceServer::new(self)
    }

    /// Answers one request at Unix time `now`.
    pub async fn decide(
        &self,
        req: &RateLimitRequest,
        now: u64,
    ) -> Result<RateLimitResponse, String> {
        let limits = Arc::clone(&self.limits.borrow());
        let default_hits = u64::from(req.hits_addend.max(1));
        let mut hits_of = Vec::with_capacity(req.descriptors.len());
        let mut keys = Vec::new();
        let mut hits = Vec::new();
        for d in &req.descriptors {
            let entries: Vec<(&str, &str)> = d
                .entries
                .iter()
                .map(|e| (e.key.as_str(), e.value.as_str()))
                .collect();
            let hit = limits.hit(&req.domain, &entries, now);
            if let Some(h) = &hit {
                keys.push((h.key.clone(), h.limit.window_secs));
                hits.push(d.hits_addend.map(|h| h.value).unwrap_or(default_hits));
            }
            hits_of.push(hit);
        }
        let counts = self.counters.add(&keys, &hits, now).await?;
        let mut counts = counts.into_iter();
        let mut overall = Code::Ok;
        let statuses = hits_of
            .iter()
            .map(|hit| {
                let Some(h) = hit else {
                    return DescriptorStatus {
                        code: Code::Ok as i32,
                        ..Default::default()
                    };
                };
                let count = counts.next().unwrap_or(0);
                let over = over_limit(h.limit, count);
                if over {
                    tracing::debug!(domain = %req.domain, key = %h.key, count, shadow = h.limit.shadow, "over limit");
                }
                let code = if over && !h.limit.shadow {
                    overall = Code::OverLimit;
                    Code::OverLimit
                } else {
                    Code::Ok
                };
                DescriptorStatus {
                    code: code as i32,
                    current_limit: (!h.limit.unlimited).then(|| RateLimit {
                        name: h.limit.name.clone(),
                        requests_per_unit: h.limit.requests_per_unit,
                        unit: Unit::try_from(h.limit.unit).unwrap_or(Unit::Unknown) as i32,
                    }),
                    limit_remaining: u32::try_from(
                        u64::from(h.limit.requests_per_unit).saturating_sub(count),
                    )
                    .unwrap_or(0),
                    duration_until_reset: Some(PbDuration {
                        seconds: i64::try_from(until_reset(h.limit, now)).unwrap_or(0),
                        nanos: 0,
                    }),
                    quota: None,
                }
            })
            .collect();
        Ok(RateLimitResponse {
            overall_code: overall as i32,
            statuses,
            ..Default::default()
        })
    }
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

#[tonic::async_trait]
impl RateLimitService for Rls {
    async fn should_rate_limit(
        &self,
        request: tonic::Request<RateLimitRequest>,
    ) -> Result<tonic::Response<RateLimitResponse>, tonic::Status> {
        match self.decide(request.get_ref(), unix_now()).await {
            Ok(r) => Ok(tonic::Response::new(r)),
            Err(e) => {
                // Envoy's failure mode decides what the call sees (denyOnFail).
                tracing::warn!(counters = self.counters.kind(), error = %e, "rate limit check failed");
                Err(tonic::Status::unavailable(e))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::load::{load_text, Loaded};
    use envoy_types::pb::envoy::extensions::common::ratelimit::v3::{
        rate_limit_descriptor::Entry, RateLimitDescriptor,
    };

    fn rls(counters: Counters) -> Rls {
        let mut loaded = Loaded::default();
        load_text(
            "l.yaml",
            "apiVersion: meltemi.io/v1alpha1\nkind: RateLimitConfig\nmetadata: {name: p}\nspec:\n  domain: d\n  descriptors:\n  - {key: method, value: echo, rate_limit: {unit: hour, requests_per_unit: 3}}\n  - {key: method, value: quiet, shadow_mode: true, rate_limit: {unit: hour, requests_per_unit: 1}}\n",
            &mut loaded,
        );
        assert!(loaded.problems.is_empty(), "{:?}", loaded.problems);
        let (_tx, rx) = watch::channel(Arc::new(Limits::new(&loaded.inputs.rate_limit_configs)));
        Rls::new(rx, counters)
    }

    fn request(methods: &[&str]) -> RateLimitRequest {
        RateLimitRequest {
            domain: "d".into(),
            descriptors: methods
                .iter()
                .map(|m| RateLimitDescriptor {
                    entries: vec![Entry {
                        key: "method".into(),
                        value: (*m).into(),
                    }],
                    ..Default::default()
                })
                .collect(),
            hits_addend: 0,
        }
    }

    #[tokio::test]
    async fn memory_counts_a_fixed_window() {
        let rls = rls(Counters::Memory(Memory::default()));
        let now = 7200 + 10;
        let mut codes = Vec::new();
        for _ in 0..5 {
            let r = rls.decide(&request(&["echo", "other"]), now).await.unwrap();
            codes.push(r.overall_code);
            assert_eq!(r.statuses.len(), 2);
            assert_eq!(r.statuses[1].code, Code::Ok as i32, "no limit for `other`");
            assert!(r.statuses[1].current_limit.is_none());
        }
        let (ok, over) = (Code::Ok as i32, Code::OverLimit as i32);
        assert_eq!(codes, [ok, ok, ok, over, over]);
        let r = rls.decide(&request(&["echo"]), now).await.unwrap();
        assert_eq!(r.statuses[0].limit_remaining, 0);
        assert_eq!(r.statuses[0].duration_until_reset.unwrap().seconds, 3590);
        assert_eq!(
            r.statuses[0].current_limit.as_ref().unwrap().unit,
            Unit::Hour as i32
        );
        // The next window starts from zero.
        let r = rls.decide(&request(&["echo"]), 3 * 3600).await.unwrap();
        assert_eq!(r.overall_code, ok);
        assert_eq!(r.statuses[0].limit_remaining, 2);
    }

    #[tokio::test]
    async fn shadow_mode_counts_but_never_refuses_and_hits_addend_counts() {
        let rls = rls(Counters::Memory(Memory::default()));
        for _ in 0..3 {
            let r = rls.decide(&request(&["quiet"]), 100).await.unwrap();
            assert_eq!(r.overall_code, Code::Ok as i32);
        }
        let mut req = request(&["echo"]);
        req.hits_addend = 3;
        assert_eq!(
            rls.decide(&req, 100).await.unwrap().overall_code,
            Code::Ok as i32
        );
        assert_eq!(
            rls.decide(&request(&["echo"]), 100)
                .await
                .unwrap()
                .overall_code,
            Code::OverLimit as i32
        );
    }

    #[tokio::test]
    async fn redis_down_is_an_error_not_a_decision() {
        // Nothing listens on port 1 of the loopback: connecting is refused at once.
        let rls = rls(Counters::redis("redis://127.0.0.1:1").unwrap());
        let e = rls.decide(&request(&["echo"]), 100).await.unwrap_err();
        assert!(e.contains("redis"), "{e}");
        // A request that hits no limit needs no counter, so it is answered.
        let r = rls.decide(&request(&["other"]), 100).await.unwrap();
        assert_eq!(r.overall_code, Code::Ok as i32);
    }
}
