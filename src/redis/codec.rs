//! Conversions between the crate's types and what Redis stores: proxies as
//! JSON with short keys, lease records as words, pool meta fields, and the
//! filter JSON the acquire script decodes.

use std::collections::HashMap;
use std::fmt::Write as _;

use chrono::{DateTime, SecondsFormat, Utc};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::error::Result;
use crate::filters::ProxyFilters;
use crate::lease::{Lease, LeaseStatus};
use crate::pool::{PoolIndexes, ProxyPool};
use crate::proxy::{Proxy, ProxyCredentials, ProxyEndpoint, ProxyProtocol, ProxyStatus};

pub(crate) use super::error::corrupt;

/// A proxy as `P proxies` stores it: short keys, defaults (`http`, `active`,
/// unlimited) and unset fields left out. `lua/_lib_proxy.lua` checks the same
/// shape.
#[derive(Debug, Serialize, Deserialize)]
struct ProxyJson {
    id: Uuid,
    host: String,
    port: u16,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    proto: Option<ProxyProtocol>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    user: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pass: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    status: Option<ProxyStatus>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    max: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    source: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    country: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    city: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    isp: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    asn: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    lat: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    lon: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    checked: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    latency: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    fails: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    cool: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    rest: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    failure: Option<String>,
}

/// The JSON the proxy scripts take for a proxy: its settable fields (what the
/// storage keeps by itself, such as failures and latency, is left out).
pub(crate) fn proxy_json(p: &Proxy) -> String {
    let j = ProxyJson {
        id: p.id,
        host: p.host.clone(),
        port: p.port,
        proto: (p.protocol != ProxyProtocol::Http).then_some(p.protocol),
        user: p.credentials.as_ref().map(|c| c.username.clone()),
        pass: p.credentials.as_ref().map(|c| c.password.clone()),
        status: (p.status != ProxyStatus::Active).then_some(p.status),
        max: p.max_concurrency,
        source: p.source.clone(),
        country: p.country.clone(),
        city: p.city.clone(),
        isp: p.isp.clone(),
        asn: p.asn,
        lat: p.latitude,
        lon: p.longitude,
        checked: p.checked_at.map(format_time),
        latency: None,
        fails: None,
        cool: None,
        rest: None,
        failure: None,
    };
    // A struct of plain fields always serializes.
    serde_json::to_string(&j).unwrap_or_default()
}

fn parse_json(json: &str) -> Result<ProxyJson> {
    serde_json::from_str(json).map_err(|e| corrupt(format!("proxy JSON {json:?}: {e}")))
}

/// A proxy from its stored JSON, with its live lease count.
pub(crate) fn proxy_from_json(json: &str, pool_id: Uuid, leases: u64) -> Result<Proxy> {
    let j = parse_json(json)?;
    let checked_at = match &j.checked {
        None => None,
        Some(s) => Some(
            DateTime::parse_from_rfc3339(s)
                .map_err(|_| corrupt("proxy checked_at"))?
                .to_utc(),
        ),
    };
    Ok(Proxy {
        id: j.id,
        pool_id,
        host: j.host,
        port: j.port,
        protocol: j.proto.unwrap_or(ProxyProtocol::Http),
        credentials: j
            .user
            .map(|u| ProxyCredentials::new(u, j.pass.unwrap_or_default())),
        status: j.status.unwrap_or(ProxyStatus::Active),
        max_concurrency: j.max,
        current_leases: u32::try_from(leases).unwrap_or(u32::MAX),
        source: j.source,
        country: j.country,
        city: j.city,
        isp: j.isp,
        asn: j.asn,
        latitude: j.lat,
        longitude: j.lon,
        checked_at,
        consecutive_failures: j.fails.unwrap_or(0),
        cooldown_until: j.cool.map(ms_to_time).transpose()?,
        rest_until: j.rest.map(ms_to_time).transpose()?,
        last_failure: j.failure,
        latency_ms: j.latency,
    })
}

/// The proxy id and connection details in a stored JSON.
pub(crate) fn endpoint_from_json(json: &str) -> Result<(Uuid, ProxyEndpoint)> {
    let j = parse_json(json)?;
    Ok((
        j.id,
        ProxyEndpoint {
            host: j.host,
            port: j.port,
            protocol: j.proto.unwrap_or(ProxyProtocol::Http),
            credentials: j
                .user
                .map(|u| ProxyCredentials::new(u, j.pass.unwrap_or_default())),
        },
    ))
}

/// RFC 3339 in UTC, with as many fraction digits as needed to read it back.
pub(crate) fn format_time(at: DateTime<Utc>) -> String {
    at.to_rfc3339_opts(SecondsFormat::AutoSi, true)
}

pub(crate) fn ms_to_time(ms: i64) -> Result<DateTime<Utc>> {
    DateTime::from_timestamp_millis(ms)
        .ok_or_else(|| corrupt(format!("time {ms} ms is out of range")))
}

/// A lease record as `lua/_lib.lua` writes it.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct Record {
    pub(crate) released: Option<i64>,
    pub(crate) seq: u64,
    pub(crate) acquired_ms: i64,
    pub(crate) duration_ms: i64,
    pub(crate) consumer: String,
}

/// Reads `active <seq> <acquired-ms> <duration-ms> <consumer>` or
/// `released <seq> <acquired-ms> <duration-ms> <released-ms> <consumer>`, each
/// maybe followed by a tab and the lease's request key suffix.
pub(crate) fn parse_record(v: &str) -> Result<Record> {
    let bad = || corrupt(format!("lease record {v:?}"));
    let (state, rest) = v.split_once(' ').ok_or_else(bad)?;
    let words = if state == "released" { 4 } else { 3 };
    let mut parts = rest.splitn(words + 1, ' ');
    let mut num = || -> Result<i64> { parts.next().and_then(|w| w.parse().ok()).ok_or_else(bad) };
    let seq = u64::try_from(num()?).map_err(|_| bad())?;
    let acquired_ms = num()?;
    let duration_ms = num()?;
    let released = match state {
        "active" => None,
        "released" => Some(num()?),
        _ => return Err(bad()),
    };
    // A lease acquired with a request id has a tab and its request key's
    // suffix after the consumer (consumer names hold no control character).
    let consumer = parts
        .next()
        .map(|c| c.split_once('\t').map_or(c, |(name, _)| name))
        .filter(|c| !c.is_empty())
        .ok_or_else(bad)?;
    Ok(Record {
        released,
        seq,
        acquired_ms,
        duration_ms,
        consumer: consumer.to_string(),
    })
}

/// A lease from its record, its proxy's JSON and Redis's time.
pub(crate) fn lease_from_record(
    token: u64,
    record: &str,
    proxy_json: &str,
    pool: &ProxyPool,
    consumer_id: Uuid,
    now_ms: i64,
) -> Result<Lease> {
    let r = parse_record(record)?;
    let (proxy_id, endpoint) = endpoint_from_json(proxy_json)?;
    let expires_ms = r.acquired_ms + r.duration_ms;
    let status = match r.released {
        Some(_) => LeaseStatus::Released,
        None if expires_ms <= now_ms => LeaseStatus::Expired,
        None => LeaseStatus::Active,
    };
    Ok(Lease {
        id: super::keys::lease_id(token, pool.id)
            .ok_or_else(|| corrupt(format!("lease token {token}")))?,
        proxy_id,
        consumer_id,
        consumer_name: crate::names::ConsumerName::try_from(r.consumer)
            .map_err(|e| corrupt(format!("lease record: {e}")))?,
        pool_id: pool.id,
        pool_name: pool.name.clone(),
        status,
        acquired_at: ms_to_time(r.acquired_ms)?,
        expires_at: ms_to_time(expires_ms)?,
        released_at: r.released.map(ms_to_time).transpose()?,
        proxy: endpoint.into(),
        fencing_token: token,
    })
}

/// A pool from its meta hash, or `None` when it does not exist or is being removed.
pub(crate) fn pool_from_hash(h: &HashMap<String, String>) -> Result<Option<ProxyPool>> {
    if h.is_empty() || h.contains_key("removing") {
        return Ok(None);
    }
    let id = h
        .get("id")
        .and_then(|v| Uuid::parse_str(v).ok())
        .ok_or_else(|| corrupt("pool meta has no valid id"))?;
    let name = h
        .get("name")
        .ok_or_else(|| corrupt("pool meta has no name"))?;
    let name = crate::names::PoolName::new(name).map_err(|e| corrupt(format!("pool meta: {e}")))?;
    let indexes = match (h.get("attrs"), h.get("orders")) {
        (Some(a), Some(o)) => PoolIndexes::from_texts(a, o)?,
        _ => PoolIndexes::default(),
    };
    let rate_limit = match h.get("rate") {
        None => None,
        Some(text) => {
            let mut words = text.split(' ');
            let leases = words.next().and_then(|w| w.parse().ok());
            let per = words.next().and_then(|w| w.parse().ok());
            match (leases, per) {
                (Some(leases), Some(per_ms)) => Some(crate::pool::RateLimit {
                    leases,
                    per: std::time::Duration::from_millis(per_ms),
                }),
                _ => return Err(corrupt(format!("pool meta rate {text:?}"))),
            }
        }
    };
    let success_scoring = match h.get("succ") {
        None => crate::success::SuccessScoring::default(),
        Some(text) => crate::success::SuccessScoring::from_text(text)
            .map_err(|_| corrupt(format!("pool meta succ {text:?}")))?,
    };
    Ok(Some(ProxyPool {
        id,
        name,
        description: h.get("description").cloned(),
        indexes,
        rate_limit,
        success_scoring,
    }))
}

/// A proxy's success score from its evidence in `P succ` (`<successes>
/// <reports> <ms of the last report>`, see `lua/report.lua`).
pub(crate) fn success_score(
    proxy_id: Uuid,
    evidence: &str,
) -> Result<crate::success::SuccessScore> {
    let mut it = evidence.split(' ');
    let (Some(s), Some(n), Some(at), None) = (it.next(), it.next(), it.next(), it.next()) else {
        return Err(corrupt(format!("success evidence {evidence:?}")));
    };
    let bad = || corrupt(format!("success evidence {evidence:?}"));
    let successes: f64 = s.parse().map_err(|_| bad())?;
    let reports: f64 = n.parse().map_err(|_| bad())?;
    let at: i64 = at.parse().map_err(|_| bad())?;
    Ok(crate::success::SuccessScore {
        proxy_id,
        score: crate::success::score_of(successes, reports),
        successes,
        reports,
        updated_at: ms_to_time(at)?,
    })
}

pub(crate) fn parse_uuid(s: &str) -> Result<Uuid> {
    Uuid::parse_str(s).map_err(|_| corrupt(format!("{s:?} is not a uuid")))
}

/// The filter as JSON with `ProxyFilters`' field names (unset fields and empty
/// lists left out), for the acquire script's `cjson.decode`. Numbers are written
/// in Rust's shortest round-trip form, which Lua reads back to the same double.
pub(crate) fn filter_json(f: &ProxyFilters) -> String {
    let mut out = String::new();
    write_filter(f, &mut out);
    out
}

fn write_filter(f: &ProxyFilters, out: &mut String) {
    out.push('{');
    let mut first = true;
    let mut key = |out: &mut String, k: &str| {
        if !first {
            out.push(',');
        }
        first = false;
        out.push('"');
        out.push_str(k);
        out.push_str("\":");
    };
    for (k, v) in [
        ("country", &f.country),
        ("source", &f.source),
        ("city", &f.city),
        ("isp", &f.isp),
    ] {
        if let Some(v) = v {
            key(out, k);
            write_str(v, out);
        }
    }
    if let Some(a) = f.asn {
        key(out, "asn");
        let _ = write!(out, "{a}");
    }
    for (k, v) in [
        ("latitude", f.latitude),
        ("longitude", f.longitude),
        ("radius_km", f.radius_km),
    ] {
        if let Some(v) = v.filter(|v| v.is_finite()) {
            key(out, k);
            let _ = write!(out, "{v}");
        }
    }
    for (k, list) in [
        ("any_of", &f.any_of),
        ("all_of", &f.all_of),
        ("none_of", &f.none_of),
    ] {
        if !list.is_empty() {
            key(out, k);
            out.push('[');
            for (i, sub) in list.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                write_filter(sub, out);
            }
            out.push(']');
        }
    }
    out.push('}');
}

fn write_str(s: &str, out: &mut String) {
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if (c as u32) < 0x20 || c == '\u{7f}' => {
                let _ = write!(out, "\\u{:04x}", c as u32);
            }
            c => out.push(c),
        }
    }
    out.push('"');
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn proxy_json_round_trip() {
        let p = Proxy::builder(Uuid::new_v4(), "10.0.0.1", 8080)
            .max_concurrency(4)
            .country("cl")
            .credentials("u", "p\"w")
            .location(-33.45, -70.66)
            .build()
            .unwrap();
        let j = proxy_json(&p);
        assert!(
            j.starts_with(&format!(
                "{{\"id\":\"{}\",\"host\":\"10.0.0.1\",\"port\":8080,",
                p.id
            )),
            "{j}"
        );
        assert!(!j.contains("proto") && !j.contains("status"), "{j}");
        let back = proxy_from_json(&j, p.pool_id, 2).unwrap();
        assert_eq!(back.current_leases, 2);
        assert_eq!(
            Proxy {
                current_leases: 0,
                ..back
            },
            p
        );
    }

    #[test]
    fn records_read_back() {
        let r = parse_record("active 17 1733500000000 300000 worker 1").unwrap();
        assert_eq!(r.seq, 17);
        assert_eq!(r.consumer, "worker 1");
        assert_eq!(r.released, None);
        let r = parse_record("released 3 10 20 25 w").unwrap();
        assert_eq!((r.released, r.duration_ms), (Some(25), 20));
        assert!(parse_record("active 17 x 1 w").is_err());
        let r = parse_record("active 17 10 20 worker 1\tjob%2D7").unwrap();
        assert_eq!(
            r.consumer, "worker 1",
            "the request key suffix is not the consumer"
        );
        assert!(parse_record("gone 1 2 3 w").is_err());
    }

    #[test]
    fn filter_json_shape() {
        let f = ProxyFilters::new()
            .country("ar")
            .asn(7303)
            .near(-34.52, -58.45, 50.0)
            .any_of([ProxyFilters::new().city("C\"ó\\r\n")]);
        assert_eq!(
            filter_json(&f),
            r#"{"country":"ar","asn":7303,"latitude":-34.52,"longitude":-58.45,"radius_km":50,"any_of":[{"city":"C\"ó\\r\u000a"}]}"#
        );
        assert_eq!(filter_json(&ProxyFilters::new()), "{}");
    }
}
