//! nginx (written against Debian's nginx-light 1.22): `nginx.conf` and
//! `nginx -p DIR -c FILE -e DIR/error.log` in the foreground (`daemon off`,
//! `master_process on`: the started process is the master, its workers are
//! its children).
//!
//! HTTP: `worker_processes N`, access log off, an `upstream` block with a
//! keep-alive pool (`keepalive 256`, requests per connection and idle timeout
//! raised), `proxy_http_version 1.1` and an empty `Connection` header so the
//! pool is used, the client's `Host` passed on as the other peers do. HTTP/2
//! clients: `listen ADDR http2` without TLS, which is h2c with prior knowledge.
//! Bodies are streamed both ways instead of spooled to temp files
//! (`proxy_request_buffering off`, `proxy_max_temp_file_size 0`) and not
//! size-limited (`client_max_body_size 0`), like the other peers. Every path
//! nginx writes (pid, error log, temp directories) is inside the scenario's
//! directory. nginx cannot proxy to an HTTP/2 upstream (`proxy_pass` speaks
//! HTTP/1.x; `grpc_pass` is for gRPC only).
//!
//! TLS (the TLS scenarios): `listen ADDR ssl` with the shared certificate
//! and key, `ssl_protocols TLSv1.3`; nginx offers ALPN `http/1.1` on a
//! listener without `http2`; session tickets as nginx has them by default.
//!
//! TCP and MQTT (relayed as TCP): the `stream` module, a dynamic module on Debian (package
//! `libnginx-mod-stream`), loaded with `load_module`.

use std::path::{Path, PathBuf};
use std::time::Duration;

use super::{
    check_sides, open_files_limit, run_briefly, Launch, Peer, Topology, Wire, H2_MAX_CONCURRENT_STREAMS,
    IDLE_TIMEOUT_SECS, MAX_REQUESTS_PER_CONNECTION, UPSTREAM_IDLE_POOL,
};

/// Where Debian installs the stream module.
pub const DEBIAN_STREAM_MODULE: &str = "/usr/lib/nginx/modules/ngx_stream_module.so";

/// The config file's name inside the scenario's directory.
pub const CONFIG_FILE: &str = "nginx.conf";

/// How this nginx gets the `stream` module (TCP proxying).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Stream {
    /// Compiled in (`--with-stream`).
    Builtin,
    /// A dynamic module (`--with-stream=dynamic`) at this path, which may or
    /// may not be installed.
    Module(PathBuf),
    /// Not built at all.
    Absent,
}

/// What `nginx -V` says about the build.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Build {
    pub stream: Stream,
    /// `--with-http_v2_module`.
    pub http2: bool,
    /// `--with-http_ssl_module`.
    pub ssl: bool,
}

impl Build {
    /// Debian's nginx-light (the assumption when `nginx -V` cannot be run).
    pub fn debian() -> Self {
        Build { stream: Stream::Module(DEBIAN_STREAM_MODULE.into()), http2: true, ssl: true }
    }

    /// Reads the configure arguments printed by `nginx -V`.
    pub fn from_configure_arguments(text: &str) -> Self {
        let args: Vec<&str> = text
            .lines()
            .find_map(|line| line.strip_prefix("configure arguments:"))
            .map(|args| args.split_whitespace().collect())
            .unwrap_or_default();
        let modules = args
            .iter()
            .find_map(|arg| arg.strip_prefix("--modules-path="))
            .map(PathBuf::from)
            .or_else(|| args.iter().find_map(|arg| arg.strip_prefix("--prefix=")).map(|p| Path::new(p).join("modules")))
            .unwrap_or_else(|| PathBuf::from("/usr/local/nginx/modules"));
        let stream = if args.contains(&"--with-stream") {
            Stream::Builtin
        } else if args.contains(&"--with-stream=dynamic") {
            Stream::Module(modules.join("ngx_stream_module.so"))
        } else {
            Stream::Absent
        };
        Build { stream, http2: args.contains(&"--with-http_v2_module"), ssl: args.contains(&"--with-http_ssl_module") }
    }
}

pub struct Nginx {
    program: PathBuf,
    build: Build,
}

impl Nginx {
    /// Asks `program -V` how it was built.
    pub fn new(program: PathBuf) -> Self {
        let build = run_briefly(&program, &["-V"], Duration::from_secs(5))
            .ok()
            .filter(|text| text.contains("configure arguments:"))
            .map(|text| Build::from_configure_arguments(&text))
            .unwrap_or_else(Build::debian);
        Self { program, build }
    }

    /// For a build known without running the binary.
    pub fn with_build(program: PathBuf, build: Build) -> Self {
        Self { program, build }
    }
}

/// Client connections one worker may hold: each proxied request takes two
/// (client and upstream), so 10000 covers ~2000 clients on one worker with
/// room, and a scenario holding more `clients` gets twice as many and some;
/// capped by the open-files limit nginx inherits. Not more than needed:
/// nginx allocates and touches its connection array up front, which would
/// show in its memory figures.
fn worker_connections(clients: usize) -> u64 {
    let (soft, _) = open_files_limit();
    let wanted = 10_000u64.max(2 * clients as u64 + 1_000);
    soft.saturating_sub(64).clamp(1024, wanted)
}

/// nginx's config for `topology` (which [`Nginx::supports`]), writing only in `dir`.
pub fn config(topology: &Topology, dir: &Path, stream_module: Option<&Path>, run_as_root: bool) -> String {
    let dir = dir.display();
    let mut conf = String::new();
    conf.push_str("# nginx benchmark config, generated by edgeplane's bench crate\n");
    if let Some(module) = stream_module {
        conf.push_str(&format!("load_module {};\n", module.display()));
    }
    conf.push_str(&format!(
        "worker_processes {threads};\ndaemon off;\nmaster_process on;\npid {dir}/nginx.pid;\nerror_log {dir}/error.log warn;\n",
        threads = topology.threads
    ));
    if run_as_root {
        // Workers otherwise run as `nobody`, which cannot reach the
        // scenario's (private) directory.
        conf.push_str("user root;\n");
    }
    conf.push_str(&format!("events {{\n    worker_connections {};\n}}\n", worker_connections(topology.clients)));
    if topology.downstream.is_stream() {
        conf.push_str(&format!(
            "stream {{
    upstream upstream {{
        server {upstream};
    }}
    server {{
        listen {listen};
        proxy_pass upstream;
        proxy_timeout 3600s;
    }}
}}
",
            upstream = topology.upstream_addr,
            listen = topology.listen,
        ));
        return conf;
    }
    let (http2_listen, http2_streams) = if topology.downstream == Wire::Http2 {
        (" http2", format!("    http2_max_concurrent_streams {H2_MAX_CONCURRENT_STREAMS};\n"))
    } else {
        ("", String::new())
    };
    let (ssl_listen, ssl) = match &topology.tls {
        // The one certificate every peer serves; TLS 1.3 only; ALPN: nginx
        // offers http/1.1 (and h2 only on `http2` listeners). Session tickets
        // and the (absent) session cache as nginx has them by default.
        Some(files) => (
            " ssl",
            format!(
                "        ssl_certificate {};\n        ssl_certificate_key {};\n        ssl_protocols TLSv1.3;\n",
                files.cert.display(),
                files.key.display()
            ),
        ),
        None => ("", String::new()),
    };
    conf.push_str(&format!(
        "http {{
    access_log off;
    client_body_temp_path {dir}/client_body_temp;
    proxy_temp_path {dir}/proxy_temp;
    fastcgi_temp_path {dir}/fastcgi_temp;
    uwsgi_temp_path {dir}/uwsgi_temp;
    scgi_temp_path {dir}/scgi_temp;
    keepalive_requests {MAX_REQUESTS_PER_CONNECTION};
    keepalive_timeout {IDLE_TIMEOUT_SECS}s;
    client_max_body_size 0;
{http2_streams}    upstream upstream {{
        server {upstream};
        keepalive {UPSTREAM_IDLE_POOL};
        keepalive_requests {MAX_REQUESTS_PER_CONNECTION};
        keepalive_timeout {IDLE_TIMEOUT_SECS}s;
    }}
    server {{
        listen {listen}{http2_listen}{ssl_listen};
{ssl}        location / {{
            proxy_pass http://upstream;
            proxy_http_version 1.1;
            proxy_set_header Connection \"\";
            proxy_set_header Host $http_host;
            proxy_request_buffering off;
            proxy_max_temp_file_size 0;
        }}
    }}
}}
",
        upstream = topology.upstream_addr,
        listen = topology.listen,
    ));
    conf
}

fn running_as_root() -> bool {
    nix::unistd::geteuid().is_root()
}

impl Peer for Nginx {
    fn name(&self) -> &'static str {
        "nginx"
    }

    fn program(&self) -> &Path {
        &self.program
    }

    fn supports(&self, topology: &Topology) -> Result<(), String> {
        check_sides(topology)?;
        if topology.upstream == Wire::Http2 {
            return Err("nginx cannot proxy HTTP to an HTTP/2 upstream (proxy_pass speaks HTTP/1.x only)".into());
        }
        if topology.tls.is_some() && !self.build.ssl {
            return Err(format!("{} was built without --with-http_ssl_module", self.program.display()));
        }
        if topology.downstream == Wire::Http2 && !self.build.http2 {
            return Err(format!("{} was built without --with-http_v2_module", self.program.display()));
        }
        if topology.downstream.is_stream() {
            match &self.build.stream {
                Stream::Builtin => {}
                Stream::Module(path) if path.is_file() => {}
                Stream::Module(path) => {
                    return Err(format!(
                        "nginx's stream module is missing ({}): apt-get install -y libnginx-mod-stream",
                        path.display()
                    ))
                }
                Stream::Absent => {
                    return Err(format!(
                        "{} was built without the stream module (--with-stream)",
                        self.program.display()
                    ))
                }
            }
        }
        Ok(())
    }

    fn launch(&self, topology: &Topology, dir: &Path) -> Launch {
        let module = match (&self.build.stream, topology.downstream) {
            (Stream::Module(path), wire) if wire.is_stream() => Some(path.as_path()),
            _ => None,
        };
        let path = dir.join(CONFIG_FILE);
        let args = vec![
            "-p".into(),
            format!("{}/", dir.display()),
            "-c".into(),
            path.display().to_string(),
            "-e".into(),
            dir.join("error.log").display().to_string(),
        ];
        let files = vec![(path, config(topology, dir, module, running_as_root()))];
        Launch { program: self.program.clone(), args, files }
    }
}

#[cfg(test)]
mod tests {
    use super::super::test_support::*;
    use super::*;

    const DEBIAN_V: &str = "nginx version: nginx/1.22.1\nbuilt with OpenSSL 3.0.20\nTLS SNI support enabled\n\
        configure arguments: --with-cc-opt='-g -O2' --prefix=/usr/share/nginx --conf-path=/etc/nginx/nginx.conf \
        --modules-path=/usr/lib/nginx/modules --with-http_v2_module --with-threads --with-stream=dynamic \
        --with-stream_ssl_module\n";

    #[test]
    fn build_is_read_from_configure_arguments() {
        assert_eq!(
            Build::from_configure_arguments(DEBIAN_V),
            Build { stream: Stream::Module(DEBIAN_STREAM_MODULE.into()), http2: true, ssl: false }
        );
        let builtin = "configure arguments: --prefix=/opt/nginx --with-stream --with-http_ssl_module";
        assert_eq!(
            Build::from_configure_arguments(builtin),
            Build { stream: Stream::Builtin, http2: false, ssl: true }
        );
        let dynamic = "configure arguments: --prefix=/opt/nginx --with-stream=dynamic";
        assert_eq!(
            Build::from_configure_arguments(dynamic).stream,
            Stream::Module("/opt/nginx/modules/ngx_stream_module.so".into())
        );
        assert_eq!(Build::from_configure_arguments("configure arguments: --prefix=/x").stream, Stream::Absent);
    }

    #[test]
    fn supports_says_what_is_missing() {
        let peer = |stream| Nginx::with_build("nginx".into(), Build { stream, http2: true, ssl: true });
        let builtin = peer(Stream::Builtin);
        assert_eq!(builtin.supports(&topology(Wire::Http1, Wire::Http1, 1)), Ok(()));
        assert_eq!(builtin.supports(&topology(Wire::Http2, Wire::Http1, 1)), Ok(()));
        assert_eq!(builtin.supports(&topology(Wire::Tcp, Wire::Tcp, 1)), Ok(()));
        let reason = builtin.supports(&topology(Wire::Http1, Wire::Http2, 1)).unwrap_err();
        assert!(reason.contains("cannot proxy HTTP to an HTTP/2 upstream"), "{reason}");
        let missing = peer(Stream::Module("/nonexistent/ngx_stream_module.so".into()));
        let reason = missing.supports(&topology(Wire::Tcp, Wire::Tcp, 1)).unwrap_err();
        assert_eq!(
            reason,
            "nginx's stream module is missing (/nonexistent/ngx_stream_module.so): apt-get install -y libnginx-mod-stream"
        );
        assert!(peer(Stream::Absent).supports(&topology(Wire::Tcp, Wire::Tcp, 1)).is_err());
        let no_h2 = Nginx::with_build("nginx".into(), Build { stream: Stream::Builtin, http2: false, ssl: false });
        assert!(no_h2.supports(&topology(Wire::Http2, Wire::Http1, 1)).unwrap_err().contains("http_v2"));
        assert!(no_h2.supports(&tls_topology(&fake_tls_files())).unwrap_err().contains("http_ssl"));
        assert_eq!(builtin.supports(&tls_topology(&fake_tls_files())), Ok(()));
    }

    #[test]
    fn http_config_is_fair_and_self_contained() {
        let dir = Path::new("/tmp/bench-dir");
        let conf = config(&topology(Wire::Http1, Wire::Http1, 4), dir, None, false);
        for line in [
            "worker_processes 4;",
            "daemon off;",
            "master_process on;",
            "pid /tmp/bench-dir/nginx.pid;",
            "error_log /tmp/bench-dir/error.log warn;",
            "access_log off;",
            "proxy_temp_path /tmp/bench-dir/proxy_temp;",
            "client_body_temp_path /tmp/bench-dir/client_body_temp;",
            "keepalive_requests 1000000;",
            "server 127.0.0.1:19090;",
            "keepalive 1024;",
            "keepalive_timeout 60s;",
            "listen 127.0.0.1:18080;",
            "proxy_pass http://upstream;",
            "proxy_http_version 1.1;",
            "proxy_set_header Connection \"\";",
        ] {
            assert!(conf.lines().any(|l| l.trim() == line), "missing {line:?} in\n{conf}");
        }
        assert!(!conf.contains("load_module"));
        assert!(!conf.contains("user root"));
        assert!(!conf.contains("http2"));
        let h2 = config(&topology(Wire::Http2, Wire::Http1, 1), dir, None, true);
        assert!(h2.contains("listen 127.0.0.1:18080 http2;"), "{h2}");
        assert!(h2.contains("http2_max_concurrent_streams 128;"));
        assert!(h2.contains("user root;"));
        assert!(!conf.contains("ssl"));
    }

    #[test]
    fn tls_config_serves_the_shared_certificate() {
        let files = fake_tls_files();
        let conf = config(&tls_topology(&files), Path::new("/tmp/bench-dir"), None, false);
        for line in [
            "listen 127.0.0.1:18080 ssl;",
            "ssl_certificate /tmp/bench-tls/cert.pem;",
            "ssl_certificate_key /tmp/bench-tls/key.pem;",
            "ssl_protocols TLSv1.3;",
            "proxy_pass http://upstream;",
            "keepalive 1024;",
        ] {
            assert!(conf.lines().any(|l| l.trim() == line), "missing {line:?} in\n{conf}");
        }
        assert!(!conf.contains("http2"));
    }

    #[test]
    fn tcp_config_loads_the_stream_module() {
        let dir = Path::new("/tmp/bench-dir");
        let module = Path::new(DEBIAN_STREAM_MODULE);
        let conf = config(&topology(Wire::Tcp, Wire::Tcp, 2), dir, Some(module), false);
        assert!(conf.starts_with("# nginx"));
        assert!(conf.contains(&format!("load_module {DEBIAN_STREAM_MODULE};\n")));
        assert!(conf.contains("stream {"));
        assert!(!conf.contains("http {"));
        assert!(conf.contains("listen 127.0.0.1:18080;"));
        assert!(conf.contains("proxy_pass upstream;"));
        let builtin = Nginx::with_build("nginx".into(), Build { stream: Stream::Builtin, http2: true, ssl: true });
        let launch = builtin.launch(&topology(Wire::Tcp, Wire::Tcp, 2), dir);
        assert!(!launch.files[0].1.contains("load_module"));
    }

    #[test]
    fn launch_keeps_everything_in_the_directory() {
        let dir = tempfile::tempdir().unwrap();
        let peer = Nginx::with_build("/usr/sbin/nginx".into(), Build::debian());
        let launch = peer.launch(&topology(Wire::Http1, Wire::Http1, 2), dir.path());
        let conf = dir.path().join(CONFIG_FILE);
        let prefix = format!("{}/", dir.path().display());
        let error_log = dir.path().join("error.log");
        assert_eq!(launch.args, ["-p", &prefix, "-c", conf.to_str().unwrap(), "-e", error_log.to_str().unwrap()]);
        assert_eq!(launch.files.len(), 1);
        assert_eq!(launch.files[0].0, conf);
    }

    /// `nginx -t` on every config this peer writes (TLS: with real certificates).
    #[test]
    fn nginx_accepts_the_generated_configs() {
        let Some(program) = installed("nginx", "apt-get install -y nginx-light") else { return };
        let peer = Nginx::new(program.clone());
        let (_tls_dir, material) = tls_material();
        let mut topologies = all_topologies();
        topologies.push(tls_topology(&material.server));
        for topology in topologies {
            if let Err(reason) = peer.supports(&topology) {
                if (topology.downstream.is_stream() || topology.tls.is_some()) && peers_required() {
                    panic!("BENCH_REQUIRE_PEERS=1: {reason}");
                }
                eprintln!("not checked with nginx -t: {} → {}: {reason}", topology.downstream, topology.upstream);
                continue;
            }
            let dir = tempfile::tempdir().unwrap();
            let launch = peer.launch(&topology, dir.path());
            write_files(&launch);
            let mut args: Vec<&str> = vec!["-t", "-q"];
            args.extend(launch.args.iter().map(String::as_str));
            let output = std::process::Command::new(&program).args(&args).output().unwrap();
            assert!(
                output.status.success(),
                "nginx -t failed for {} → {}:\n{}\n{}",
                topology.downstream,
                topology.upstream,
                String::from_utf8_lossy(&output.stderr),
                launch.files[0].1
            );
        }
    }
}
