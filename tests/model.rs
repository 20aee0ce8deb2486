//! The domain model: validation, URLs, parsing, serde.

use lighthouse_lease::filters::haversine_km;
use lighthouse_lease::{
    ConsumerName, Error, Lease, LeaseStatus, PoolName, Proxy, ProxyEndpoint, ProxyFilters,
    ProxyPool, ProxyProtocol, ProxyStatus, SelectorStrategy,
};
use uuid::Uuid;

fn pool() -> ProxyPool {
    ProxyPool::new("latam-residential").unwrap()
}

#[test]
fn url_percent_encodes_credentials_and_brackets_ipv6() {
    let p = Proxy::builder(pool().id, "[2001:db8::1]", 3128)
        .credentials("us er@x", "p:w/d?#%")
        .build()
        .unwrap();
    assert_eq!(p.host, "2001:db8::1", "brackets are stripped on input");
    assert_eq!(
        p.url(),
        "http://us%20er%40x:p%3Aw%2Fd%3F%23%25@[2001:db8::1]:3128"
    );
    let p = Proxy::builder(pool().id, "proxy-1.example.com", 1080)
        .protocol(ProxyProtocol::Socks5)
        .build()
        .unwrap();
    assert_eq!(p.url(), "socks5://proxy-1.example.com:1080");
    let unicode = Proxy::builder(pool().id, "10.0.0.1", 80)
        .credentials("usuário", "senha")
        .build()
        .unwrap();
    assert_eq!(unicode.url(), "http://usu%C3%A1rio:senha@10.0.0.1:80");
}

#[test]
fn hosts_are_ip_addresses_or_host_names() {
    for good in [
        "1.2.3.4",
        "::1",
        "fe80::1",
        "a.b-c.example",
        "localhost",
        "x1",
    ] {
        assert!(
            Proxy::builder(pool().id, good, 80).build().is_ok(),
            "{good}"
        );
    }
    for bad in [
        "",
        "a..b",
        "-a.com",
        "a-.com",
        "a b",
        "a_b.com",
        "1::2::3",
        "ex ample",
        &"a".repeat(64),
    ] {
        let err = Proxy::builder(pool().id, bad, 80).build().unwrap_err();
        assert!(
            matches!(err, Error::InvalidProxy { field: "host", .. }),
            "{bad}: {err}"
        );
    }
}

#[test]
fn builder_normalizes_country_and_validates_every_field() {
    let p = Proxy::builder(pool().id, "1.1.1.1", 8080)
        .country("ar")
        .build()
        .unwrap();
    assert_eq!(p.country.as_deref(), Some("AR"));
    let err = Proxy::builder(pool().id, "1.1.1.1", 8080)
        .max_concurrency(0)
        .build()
        .unwrap_err();
    assert_eq!(
        err.to_string(),
        "invalid proxy field `max_concurrency`: must be at least 1 (use None for unlimited)"
    );
    let err = Proxy::builder(pool().id, "1.1.1.1", 8080)
        .location(-91.0, 0.0)
        .build()
        .unwrap_err();
    assert!(matches!(
        err,
        Error::InvalidProxy {
            field: "latitude",
            ..
        }
    ));
    assert!(!err.is_retryable());
}

#[test]
fn enums_parse_and_display() {
    for p in [
        ProxyProtocol::Http,
        ProxyProtocol::Https,
        ProxyProtocol::Socks4,
        ProxyProtocol::Socks5,
    ] {
        assert_eq!(p.to_string().parse::<ProxyProtocol>().unwrap(), p);
    }
    for s in [
        ProxyStatus::Active,
        ProxyStatus::Inactive,
        ProxyStatus::Slow,
        ProxyStatus::Banned,
    ] {
        assert_eq!(s.to_string().parse::<ProxyStatus>().unwrap(), s);
    }
    for s in SelectorStrategy::ALL {
        assert_eq!(s.to_string().parse::<SelectorStrategy>().unwrap(), s);
    }
    assert_eq!(
        "round-robin".parse::<SelectorStrategy>().unwrap(),
        SelectorStrategy::RoundRobin
    );
    assert!(matches!(
        "fastest".parse::<SelectorStrategy>(),
        Err(Error::InvalidArgument(_))
    ));
    assert_eq!(SelectorStrategy::default(), SelectorStrategy::LeastUsed);
}

#[test]
fn credentials_never_show_in_debug_output() {
    let p = Proxy::builder(pool().id, "1.1.1.1", 8080)
        .credentials("me", "hunter2")
        .build()
        .unwrap();
    let dbg = format!("{p:?}");
    assert!(!dbg.contains("hunter2"), "{dbg}");
    assert!(dbg.contains("<redacted>"));
}

#[test]
fn lease_round_trips_through_json() {
    let lease = Lease {
        id: Uuid::new_v4(),
        proxy_id: Uuid::new_v4(),
        consumer_id: Uuid::new_v4(),
        consumer_name: ConsumerName::new("worker-1").unwrap(),
        pool_id: Uuid::new_v4(),
        pool_name: PoolName::new("latam-residential").unwrap(),
        status: LeaseStatus::Active,
        acquired_at: chrono::Utc::now(),
        expires_at: chrono::Utc::now(),
        released_at: None,
        proxy: std::sync::Arc::new(ProxyEndpoint {
            host: "1.1.1.1".into(),
            port: 8080,
            protocol: ProxyProtocol::Http,
            credentials: None,
        }),
        fencing_token: 7,
    };
    let json = serde_json::to_string(&lease).unwrap();
    assert!(json.contains("\"status\":\"active\""), "{json}");
    assert_eq!(serde_json::from_str::<Lease>(&json).unwrap(), lease);
}

#[test]
fn filters_round_trip_through_json_and_skip_unset_fields() {
    let f = ProxyFilters::new()
        .country("AR")
        .any_of([ProxyFilters::new().asn(7303)]);
    let json = serde_json::to_string(&f).unwrap();
    assert_eq!(json, r#"{"country":"AR","any_of":[{"asn":7303}]}"#);
    assert_eq!(serde_json::from_str::<ProxyFilters>(&json).unwrap(), f);
    assert!(ProxyFilters::new().is_empty());
}

#[test]
fn haversine_matches_known_distances() {
    assert!(haversine_km(0.0, 0.0, 0.0, 0.0).abs() < 1e-9);
    // A quarter of the equator.
    let q = haversine_km(0.0, 0.0, 0.0, 90.0);
    assert!((q - 10_007.5).abs() < 1.0, "{q}");
    // Antipodes: half the circumference, no NaN.
    let h = haversine_km(10.0, 20.0, -10.0, -160.0);
    assert!((h - 20_015.1).abs() < 1.0, "{h}");
}

#[test]
fn error_messages_are_one_clear_line() {
    let e = ProxyPool::new("a{b}").unwrap_err();
    assert_eq!(
        e.to_string(),
        "invalid pool name \"a{b}\": character '{' is not allowed (use ASCII letters, digits, '-', '_' and '.')"
    );
    let e = ProxyFilters::new()
        .near(0.0, 0.0, -1.0)
        .validate()
        .unwrap_err();
    assert_eq!(
        e.to_string(),
        "invalid filters: radius_km must be a finite number > 0, got -1"
    );
}

#[test]
fn lease_hands_over_as_compact_msgpack() {
    let lease = Lease {
        id: Uuid::new_v4(),
        proxy_id: Uuid::new_v4(),
        consumer_id: Uuid::new_v4(),
        consumer_name: ConsumerName::new("dispatcher").unwrap(),
        pool_id: Uuid::new_v4(),
        pool_name: PoolName::new("latam-residential").unwrap(),
        status: LeaseStatus::Active,
        acquired_at: chrono::Utc::now(),
        expires_at: chrono::Utc::now(),
        released_at: None,
        proxy: std::sync::Arc::new(ProxyEndpoint {
            host: "2001:db8::1".into(),
            port: 1080,
            protocol: ProxyProtocol::Socks5,
            credentials: Some(lighthouse_lease::ProxyCredentials::new("u", "p@ss")),
        }),
        fencing_token: 1_795_683_609_435_123,
    };
    let bytes = lease.to_msgpack().unwrap();
    assert_eq!(Lease::from_msgpack(&bytes).unwrap(), lease);
    let json = serde_json::to_vec(&lease).unwrap();
    assert!(
        bytes.len() * 2 < json.len(),
        "msgpack {} bytes vs json {}",
        bytes.len(),
        json.len()
    );
    let err = Lease::from_msgpack(&bytes[..bytes.len() / 2]).unwrap_err();
    assert!(matches!(err, Error::InvalidArgument(_)), "{err}");
    assert!(Lease::from_msgpack(b"not a lease").is_err());
}
