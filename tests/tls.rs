#![cfg(all(feature = "tls", feature = "cli"))]
//! `rediss://`: the CLI (and so the library) talks to a TLS-only redis-server
//! spawned with a certificate from a throwaway CA made by the `openssl` command;
//! it works when the CA is trusted (`SSL_CERT_FILE`) and refuses the server when
//! it is not.

mod support;

use std::path::Path;
use std::process::{Command, Output};

use support::server::RedisServer;

fn openssl(dir: &Path, args: &[&str]) {
    let out = Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .output()
        .expect("openssl on PATH");
    assert!(
        out.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn cli(port: u16, ca: Option<&Path>, args: &[&str]) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_lighthouse"));
    cmd.args([
        "--redis-url",
        &format!("rediss://127.0.0.1:{port}"),
        "--namespace",
        "tls",
    ])
    .args(args);
    cmd.env_remove("SSL_CERT_FILE").env_remove("SSL_CERT_DIR");
    if let Some(ca) = ca {
        cmd.env("SSL_CERT_FILE", ca);
    }
    cmd.output().expect("run lighthouse")
}

#[test]
fn rediss_urls_connect_over_tls_and_verify_the_server() {
    let dir = std::env::temp_dir().join(format!("lh-tls-{}", uuid::Uuid::new_v4().simple()));
    std::fs::create_dir_all(&dir).unwrap();
    openssl(
        &dir,
        &[
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-keyout",
            "ca.key",
            "-out",
            "ca.crt",
            "-days",
            "2",
            "-subj",
            "/CN=lighthouse-test-ca",
        ],
    );
    openssl(
        &dir,
        &[
            "req",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-keyout",
            "server.key",
            "-out",
            "server.csr",
            "-subj",
            "/CN=127.0.0.1",
        ],
    );
    std::fs::write(
        dir.join("ext.cnf"),
        "subjectAltName=IP:127.0.0.1,DNS:localhost\n",
    )
    .unwrap();
    openssl(
        &dir,
        &[
            "x509",
            "-req",
            "-in",
            "server.csr",
            "-CA",
            "ca.crt",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-out",
            "server.crt",
            "-days",
            "2",
            "-extfile",
            "ext.cnf",
        ],
    );
    let port = RedisServer::free_port();
    let path = |f: &str| dir.join(f).to_str().unwrap().to_string();
    let _server = RedisServer::spawn_with_tls(
        port,
        &[
            "--tls-port",
            &port.to_string(),
            "--port",
            "0",
            "--tls-cert-file",
            &path("server.crt"),
            "--tls-key-file",
            &path("server.key"),
            "--tls-ca-cert-file",
            &path("ca.crt"),
            "--tls-auth-clients",
            "no",
            "--appendonly",
            "no",
        ],
    )
    .expect("redis-server with TLS");
    let ca = dir.join("ca.crt");
    let ok = |out: Output| {
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    };
    ok(cli(port, Some(&ca), &["pool", "create", "p1"]));
    ok(cli(
        port,
        Some(&ca),
        &[
            "proxy", "add", "--pool", "p1", "--host", "10.0.0.1", "--port", "80",
        ],
    ));
    let lease = ok(cli(port, Some(&ca), &["acquire", "--pool", "p1"]));
    assert!(lease.contains("proxy http://10.0.0.1:80"), "{lease}");
    // An untrusted server certificate is refused.
    let refused = cli(port, None, &["pool", "list"]);
    assert_eq!(refused.status.code(), Some(1));
    let err = String::from_utf8_lossy(&refused.stderr);
    assert!(err.contains("certificate"), "{err}");
    let _ = std::fs::remove_dir_all(&dir);
}
