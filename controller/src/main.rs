//! `meltemi-controller`: the command line. Subcommands `check`, `bootstrap` and `serve`; the
//! work is done in the library modules, this file only parses flags, prints and sets exit codes.

mod authz;
mod envoyfilter;
mod gateway;
mod hostlb;
mod kubernetes;
mod load;
mod model;
mod policy;
mod proto;
mod ratelimit;
mod render;
mod source;
mod telemetry;
mod template;
mod translate;
mod validate;
mod workloads;
mod xds;

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Instant;

use clap::{Args, Parser, Subcommand, ValueEnum};

use template::{Build, FailurePolicy, Module, ModuleSource};

const EXAMPLES: &str = "\
Examples:
  meltemi-controller check config/ --module thrift=/opt/meltemi/thrift.wasm
  meltemi-controller bootstrap --dir config/ --module thrift=/opt/meltemi/thrift.wasm -o envoy.yaml
  meltemi-controller bootstrap --xds 127.0.0.1:18000 --admin-port 9901 -o envoy.yaml
  meltemi-controller envoyfilter --dir config/ --xds meltemi.istio-system.svc:18000 \\
      --module thrift=https://example.com/thrift.wasm,sha256=<hex> > envoyfilters.yaml
  meltemi-controller serve --dir config/ --listen 127.0.0.1:18000 \\
      --module dubbo=https://example.com/dubbo.wasm,sha256=<hex>
  meltemi-controller serve --kubernetes -n meta --listen 0.0.0.0:18000 --module thrift=...";

/// Meltemi's control plane: Aeraki MetaRouter / ApplicationProtocol and Istio ServiceEntry /
/// DestinationRule in, Envoy configuration and live route updates out.
#[derive(Parser)]
#[command(version, after_help = EXAMPLES)]
struct Cli {
    /// Log format.
    #[arg(long, value_enum, default_value_t = LogFormat::Text, global = true)]
    log_format: LogFormat,
    #[command(subcommand)]
    command: Command,
}

#[derive(Clone, Copy, ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

#[derive(Subcommand)]
enum Command {
    /// Load and validate a directory, print what would be served; exit 1 on errors.
    Check {
        /// Directory of YAML/JSON files.
        dir: PathBuf,
        #[command(flatten)]
        common: Common,
    },
    /// Write an Envoy bootstrap: static (from --dir) or pointing at the controller (--xds).
    Bootstrap {
        /// Directory of YAML/JSON files (static bootstrap).
        #[arg(long, required_unless_present = "xds")]
        dir: Option<PathBuf>,
        /// HOST:PORT of `meltemi-controller serve`: render an ADS bootstrap instead.
        #[arg(long)]
        xds: Option<String>,
        /// Envoy admin port on 127.0.0.1 (0 = no admin listener).
        #[arg(long, default_value_t = 9901)]
        admin_port: u16,
        /// Envoy node id.
        #[arg(long, default_value = "meltemi")]
        node_id: String,
        /// Talk TLS to the xDS server, trusting this CA (PEM file path on the Envoy host).
        #[arg(long, requires = "xds")]
        xds_ca: Option<String>,
        /// TLS server name (SNI) of the xDS server (default: its host).
        #[arg(long, requires = "xds_ca")]
        xds_sni: Option<String>,
        /// Client certificate and key (PEM paths) for mutual TLS with the xDS server.
        #[arg(long, requires_all = ["xds_ca", "xds_client_key"])]
        xds_client_cert: Option<String>,
        /// See --xds-client-cert.
        #[arg(long, requires = "xds_client_cert")]
        xds_client_key: Option<String>,
        /// Output file (default: standard output).
        #[arg(short, long)]
        output: Option<PathBuf>,
        #[command(flatten)]
        common: Common,
    },
    /// Write Istio EnvoyFilters that put the bridge into sidecars and gateways (routes over RDS
    /// from `serve`).
    Envoyfilter {
        /// Directory of YAML/JSON files.
        #[arg(long)]
        dir: PathBuf,
        /// HOST:PORT of `meltemi-controller serve` as the proxies reach it.
        #[arg(long)]
        xds: String,
        /// Namespace of the EnvoyFilters (the Istio root namespace applies them mesh-wide).
        #[arg(long, default_value = "istio-system")]
        filter_namespace: String,
        /// Contexts to patch.
        #[arg(long, value_enum, value_delimiter = ',', default_values_t = [Ctx::Outbound, Ctx::Inbound, Ctx::Gateway])]
        context: Vec<Ctx>,
        /// Port of istiod's `virtualInbound` listener.
        #[arg(long, default_value_t = 15006)]
        inbound_port: u16,
        /// Instead of the EnvoyFilters, print this Envoy bootstrap (YAML/JSON, e.g. a sidecar's
        /// config dump as a bootstrap) with the patches applied as istiod would. Listeners are
        /// told apart by `metadata.filter_metadata.meltemi.context` (SIDECAR_OUTBOUND, …).
        #[arg(long)]
        compose: Option<PathBuf>,
        /// Output file (default: standard output).
        #[arg(short, long)]
        output: Option<PathBuf>,
        #[command(flatten)]
        common: Common,
    },
    /// Serve the directory (or the Kubernetes cluster) over ADS (LDS, RDS, CDS, EDS),
    /// re-validated on every change.
    Serve {
        /// Directory of YAML/JSON files (watched).
        #[arg(
            long,
            required_unless_present = "kubernetes",
            conflicts_with = "kubernetes"
        )]
        dir: Option<PathBuf>,
        /// Read the resources from Kubernetes instead (list + watch through kube-rs; the
        /// client is configured from $KUBECONFIG, ~/.kube/config or the in-cluster service
        /// account). With -n, only that namespace is watched (ApplicationProtocols are
        /// cluster-wide).
        #[arg(long)]
        kubernetes: bool,
        /// Address of the gRPC xDS server.
        #[arg(long, default_value = "127.0.0.1:18000")]
        listen: std::net::SocketAddr,
        /// Serve Istio proxies patched by `envoyfilter` (routes name the `meltemi|…` bridge
        /// clusters in front of istiod's `outbound|…`) instead of plain Envoy.
        #[arg(long)]
        istio: bool,
        /// Serve TLS with this certificate chain (PEM)…
        #[arg(long, requires = "tls_key")]
        tls_cert: Option<PathBuf>,
        /// …and this private key (PEM).
        #[arg(long, requires = "tls_cert")]
        tls_key: Option<PathBuf>,
        /// Require client certificates signed by this CA (PEM): mutual TLS.
        #[arg(long, requires = "tls_cert")]
        tls_client_ca: Option<PathBuf>,
        /// Count global rate limits in this Redis (`redis://HOST:PORT[/DB]`), shared by the
        /// replicas; without it each replica counts in its own memory.
        #[arg(long, value_name = "URL")]
        redis: Option<String>,
        #[command(flatten)]
        common: Common,
    },
}

#[derive(Clone, Copy, ValueEnum)]
enum Ctx {
    Outbound,
    Inbound,
    Gateway,
}

#[derive(Args, Clone)]
struct Common {
    /// Codec module per protocol: PROTOCOL=PATH, or PROTOCOL=URL,sha256=HEX (Envoy fetches it).
    #[arg(long = "module", value_name = "PROTOCOL=SOURCE")]
    modules: Vec<String>,
    /// Filter configuration for a protocol's module (limits, codec), as JSON:
    /// PROTOCOL='{"limits": {"max_frame_bytes": 4194304}, "codec": {...}}'.
    #[arg(long = "filter-config", value_name = "PROTOCOL=JSON")]
    filter_configs: Vec<String>,
    /// Dynamic module per protocol, for the native and mix builds: PROTOCOL=NAME (Envoy loads
    /// $ENVOY_DYNAMIC_MODULES_SEARCH_PATH/libNAME.so), PROTOCOL=/path/libx.so, or
    /// PROTOCOL=URL,sha256=HEX.
    #[arg(long = "native-module", value_name = "PROTOCOL=SOURCE")]
    native_modules: Vec<String>,
    /// Data path: `wasm` (proxy-wasm front and back), `native` (dynamic-module front and
    /// back), `mix` (wasm front, dynamic-module back on the destination clusters).
    #[arg(long, value_enum, default_value_t = BuildArg::Wasm)]
    build: BuildArg,
    /// What Envoy does when a module fails.
    #[arg(long, value_enum, default_value_t = Policy::Closed)]
    failure_policy: Policy,
    /// Address the front listeners bind.
    #[arg(long, default_value = "127.0.0.1")]
    bind: String,
    /// Namespace of resources that name none, as `kubectl apply -n` (default: `default`).
    #[arg(short = 'n', long)]
    namespace: Option<String>,
    /// Front listeners terminate TLS with this PEM certificate chain (on the Envoy host),
    /// so that authorization policies see the client's identity.
    #[arg(long, value_name = "PATH", requires = "front_tls_key")]
    front_tls_cert: Option<String>,
    /// The private key of `--front-tls-cert`.
    #[arg(long, value_name = "PATH", requires = "front_tls_cert")]
    front_tls_key: Option<String>,
    /// Require a client certificate chaining to this CA bundle (mutual TLS; the peer's SPIFFE
    /// URI SAN is the principal `from.source` matches).
    #[arg(long, value_name = "PATH", requires = "front_tls_cert")]
    front_tls_client_ca: Option<String>,
}

#[derive(Clone, Copy, ValueEnum)]
enum BuildArg {
    Wasm,
    Native,
    Mix,
}

#[derive(Clone, Copy, ValueEnum)]
enum Policy {
    #[value(name = "fail-closed")]
    Closed,
    #[value(name = "fail-open")]
    Open,
    #[value(name = "fail-reload")]
    Reload,
}

fn parse_module(spec: &str, policy: FailurePolicy) -> Result<(String, Module), String> {
    let (protocol, source) = spec.split_once('=').ok_or_else(|| {
        format!("--module {spec}: expected PROTOCOL=PATH or PROTOCOL=URL,sha256=HEX")
    })?;
    let source = if source.starts_with("http://") || source.starts_with("https://") {
        let (url, sha) = source.split_once(",sha256=").ok_or_else(|| {
            format!("--module {spec}: a URL needs `,sha256=HEX` (Envoy checks the download)")
        })?;
        if sha.len() != 64 || !sha.chars().all(|c| c.is_ascii_hexdigit()) {
            return Err(format!("--module {spec}: sha256 must be 64 hex digits"));
        }
        if template::url_parts(url).is_none() {
            return Err(format!("--module {spec}: cannot read the URL's host"));
        }
        ModuleSource::Remote {
            url: url.to_owned(),
            sha256: sha.to_ascii_lowercase(),
        }
    } else {
        ModuleSource::Local(source.to_owned())
    };
    Ok((
        protocol.to_owned(),
        Module {
            source,
            native: None,
            failure_policy: policy,
            config: Default::default(),
        },
    ))
}

impl Common {
    fn options(&self) -> Result<translate::Options, String> {
        let policy = match self.failure_policy {
            Policy::Closed => FailurePolicy::Closed,
            Policy::Open => FailurePolicy::Open,
            Policy::Reload => FailurePolicy::Reload,
        };
        let mut modules: std::collections::BTreeMap<String, Module> = self
            .modules
            .iter()
            .map(|m| parse_module(m, policy))
            .collect::<Result<_, _>>()?;
        for spec in &self.native_modules {
            let (protocol, native) = parse_module(spec, policy)?;
            modules
                .entry(protocol)
                .or_insert_with(|| Module {
                    // No wasm: only a native build can run it (translation says so).
                    source: ModuleSource::Local(String::new()),
                    native: None,
                    failure_policy: policy,
                    config: Default::default(),
                })
                .native = Some(native.source);
        }
        for fc in &self.filter_configs {
            let (protocol, json) = fc
                .split_once('=')
                .ok_or_else(|| format!("--filter-config {fc}: expected PROTOCOL=JSON"))?;
            let module = modules.get_mut(protocol).ok_or_else(|| {
                format!("--filter-config {protocol}: no --module {protocol}=… given")
            })?;
            module.config = template::parse_filter_config(json)
                .map_err(|e| format!("--filter-config {protocol}: {e}"))?;
        }
        Ok(translate::Options {
            modules,
            bind: self.bind.clone(),
            build: match self.build {
                BuildArg::Wasm => Build::Wasm,
                BuildArg::Native => Build::Native,
                BuildArg::Mix => Build::Mix,
            },
            namespace: self.namespace.clone(),
            target: translate::Target::Envoy,
            front_tls: match (&self.front_tls_cert, &self.front_tls_key) {
                (Some(cert), Some(key)) => Some(authz::FrontTls {
                    cert: cert.clone(),
                    key: key.clone(),
                    client_ca: self.front_tls_client_ca.clone(),
                }),
                _ => None,
            },
        })
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        // Colours only for a person at a terminal: log files and collectors get plain text.
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()));
    match cli.log_format {
        LogFormat::Json => builder.json().init(),
        LogFormat::Text => builder.init(),
    }
    match run(cli.command) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

fn run(command: Command) -> Result<ExitCode, String> {
    match command {
        Command::Check { dir, common } => check(&dir, &common),
        Command::Bootstrap {
            dir,
            xds,
            admin_port,
            node_id,
            xds_ca,
            xds_sni,
            xds_client_cert,
            xds_client_key,
            output,
            common,
        } => {
            let resources = match (&dir, &xds) {
                (Some(dir), None) => match source::build(dir, &common.options()?) {
                    Ok((_, r)) => r,
                    Err(e) => return Err(e.to_string()),
                },
                _ => translate::Resources::default(),
            };
            let options = render::BootstrapOptions {
                admin_port,
                node_id,
                node_cluster: "meltemi".into(),
                xds,
                tls: xds_ca.map(|ca| render::XdsTls {
                    ca,
                    sni: xds_sni,
                    client: xds_client_cert.zip(xds_client_key),
                }),
            };
            let b = render::bootstrap(&resources, &options)?;
            proto::parse(proto::BOOTSTRAP, &b)
                .map_err(|e| format!("rendered bootstrap does not fit Envoy's schema: {e}"))?;
            let text = serde_json::to_string_pretty(&b).map_err(|e| e.to_string())?;
            match output {
                Some(path) => std::fs::write(&path, text + "\n")
                    .map_err(|e| format!("cannot write {}: {e}", path.display()))?,
                None => println!("{text}"),
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Envoyfilter {
            dir,
            xds,
            filter_namespace,
            context,
            inbound_port,
            compose,
            output,
            common,
        } => envoyfilter_command(
            &dir,
            xds,
            filter_namespace,
            (&context, inbound_port),
            compose.as_deref(),
            output,
            &common,
        ),
        Command::Serve {
            dir,
            kubernetes,
            listen,
            istio,
            tls_cert,
            tls_key,
            tls_client_ca,
            redis,
            common,
        } => {
            let tls = server_tls(tls_cert, tls_key, tls_client_ca)?;
            let counters = match redis.as_deref() {
                Some(url) => ratelimit::service::Counters::redis(url)?,
                None => ratelimit::service::Counters::Memory(Default::default()),
            };
            let mut options = common.options()?;
            if istio {
                options.target = translate::Target::Istio;
            }
            let runtime = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()
                .map_err(|e| e.to_string())?;
            let source = match (dir, kubernetes) {
                (Some(dir), false) => Source::Dir(dir),
                _ => Source::Kubernetes,
            };
            runtime.block_on(serve(source, listen, options, tls, counters))
        }
    }
}

fn envoyfilter_command(
    dir: &std::path::Path,
    xds: String,
    filter_namespace: String,
    (context, inbound_port): (&[Ctx], u16),
    compose: Option<&std::path::Path>,
    output: Option<PathBuf>,
    common: &Common,
) -> Result<ExitCode, String> {
    let mut options = common.options()?;
    options.target = translate::Target::Istio;
    let (loaded, resources) = source::build(dir, &options).map_err(|e| e.to_string())?;
    // Inbound bridges: one per (service port, workload port) of each Meltemi port.
    let mut inbound: Vec<(u64, u64, String, Module)> = Vec::new();
    for se in &loaded.inputs.service_entries {
        for p in &se.spec.ports {
            let Some(protocol) = model::port_protocol(&p.name) else {
                continue;
            };
            if let Some(module) = options.modules.get(protocol) {
                let entry = (
                    u64::from(p.number),
                    u64::from(p.target_port.unwrap_or(p.number)),
                    protocol.to_owned(),
                    module.clone(),
                );
                if !inbound
                    .iter()
                    .any(|(a, b, ..)| (*a, *b) == (entry.0, entry.1))
                {
                    inbound.push(entry);
                }
            }
        }
    }
    let contexts = context
        .iter()
        .map(|c| match c {
            Ctx::Outbound => envoyfilter::Context::SidecarOutbound,
            Ctx::Inbound => envoyfilter::Context::SidecarInbound,
            Ctx::Gateway => envoyfilter::Context::Gateway,
        })
        .collect();
    let istio = envoyfilter::IstioOptions {
        namespace: filter_namespace,
        xds,
        contexts,
        inbound_port,
    };
    let filters = envoyfilter::envoy_filters(&resources, &istio, &inbound)?;
    let mut text = String::new();
    if let Some(path) = compose {
        let raw = std::fs::read_to_string(path)
            .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
        let mut bootstrap: serde_json::Value = serde_saphyr::from_str(&raw)
            .map_err(|e| format!("{}: not YAML/JSON: {e}", path.display()))?;
        envoyfilter::apply(&mut bootstrap, &filters)?;
        proto::parse(proto::BOOTSTRAP, &bootstrap)
            .map_err(|e| format!("composed bootstrap does not fit Envoy's schema: {e}"))?;
        text = serde_json::to_string_pretty(&bootstrap).map_err(|e| e.to_string())? + "\n";
    } else {
        for f in &filters {
            text.push_str("---\n");
            text.push_str(&serde_saphyr::to_string(f).map_err(|e| e.to_string())?);
        }
    }
    match output {
        Some(path) => std::fs::write(&path, text)
            .map_err(|e| format!("cannot write {}: {e}", path.display()))?,
        None => print!("{text}"),
    }
    Ok(ExitCode::SUCCESS)
}

fn check(dir: &std::path::Path, common: &Common) -> Result<ExitCode, String> {
    let mut options = common.options()?;
    let loaded = load::load_dir(dir, options.namespace.as_deref())?;
    // Without --module, check still translates, with placeholder module paths.
    for p in validate::known_protocols(&loaded.inputs) {
        options.modules.entry(p.clone()).or_insert(Module {
            source: ModuleSource::Local(format!("<{p}.wasm>")),
            native: Some(ModuleSource::Local(format!("<{p}>"))),
            failure_policy: FailurePolicy::Closed,
            config: Default::default(),
        });
    }
    for s in &loaded.skipped {
        println!("skipped: {}: {}", s.source, s.what);
    }
    let mut inputs = loaded.inputs.clone();
    workloads::resolve(&mut inputs);
    for se in &inputs.service_entries {
        if se.spec.endpoints.is_empty() && se.spec.workload_selector.is_some() {
            println!(
                "note: {}: {}: its workload selector picks no ready Pod or WorkloadEntry of its namespace, so it has no endpoints",
                se.source,
                se.id("ServiceEntry")
            );
        }
    }
    let (_, r) = match source::build(dir, &options) {
        Ok(x) => x,
        Err(e) => {
            eprintln!("{e}");
            return Ok(ExitCode::FAILURE);
        }
    };
    if let Err(e) = xds::Snapshot::new(&r, Instant::now()) {
        eprintln!("translation does not fit Envoy's schema (a controller bug): {e}");
        return Ok(ExitCode::FAILURE);
    }
    println!("listeners:");
    for name in r.listeners.keys() {
        println!("  {name}");
    }
    println!("routes:");
    for (name, rc) in &r.routes {
        println!("  {name}");
        for vh in rc["virtual_hosts"].as_array().into_iter().flatten() {
            let routes = vh["routes"].as_array().map(Vec::len).unwrap_or(0);
            println!(
                "    {} ({routes} routes)",
                vh["name"].as_str().unwrap_or("")
            );
        }
    }
    println!("clusters:");
    for (name, c) in &r.clusters {
        let n = r
            .endpoints
            .get(name)
            .and_then(|e| e["endpoints"][0]["lb_endpoints"].as_array().map(Vec::len));
        match n {
            Some(n) => println!("  {name} ({n} endpoints)"),
            None if c["type"] == "EDS" => println!("  {name} (no endpoints)"),
            None => println!("  {name}"),
        }
    }
    println!("ok");
    Ok(ExitCode::SUCCESS)
}

fn server_tls(
    cert: Option<PathBuf>,
    key: Option<PathBuf>,
    client_ca: Option<PathBuf>,
) -> Result<Option<tonic::transport::ServerTlsConfig>, String> {
    let read =
        |p: &PathBuf| std::fs::read(p).map_err(|e| format!("cannot read {}: {e}", p.display()));
    let (Some(cert), Some(key)) = (cert, key) else {
        return Ok(None);
    };
    let identity = tonic::transport::Identity::from_pem(read(&cert)?, read(&key)?);
    let mut tls = tonic::transport::ServerTlsConfig::new().identity(identity);
    if let Some(ca) = client_ca {
        tls = tls.client_ca_root(tonic::transport::Certificate::from_pem(read(&ca)?));
    }
    Ok(Some(tls))
}

/// Where `serve` reads resources from.
enum Source {
    Dir(PathBuf),
    Kubernetes,
}

async fn serve(
    source: Source,
    listen: std::net::SocketAddr,
    options: translate::Options,
    tls: Option<tonic::transport::ServerTlsConfig>,
    counters: ratelimit::service::Counters,
) -> Result<ExitCode, String> {
    let started = Instant::now();
    let namespace = options.namespace.clone();
    let mut pipeline = source::Pipeline::new(options);
    let mut kube = None;
    match &source {
        Source::Dir(dir) => {
            pipeline.refresh_dir(dir, None)?;
        }
        Source::Kubernetes => {
            let client = kubernetes::client().await?;
            let mut k = kubernetes::Source::new(client, namespace.as_deref());
            k.initial(&mut pipeline).await?;
            kube = Some(k);
        }
    }
    let (first, _) = pipeline
        .snapshot(started, None)
        .map_err(|e| e.to_string())?;
    tracing::info!(
        source = match &source {
            Source::Dir(dir) => dir.display().to_string(),
            Source::Kubernetes => "kubernetes".to_owned(),
        },
        versions = %first.versions(),
        translate_ms = started.elapsed().as_secs_f64() * 1000.0,
        "configuration loaded"
    );
    let (tx, rx) = tokio::sync::watch::channel(Arc::new(first));
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .map_err(|e| format!("cannot listen on {listen}: {e}"))?;
    tracing::info!(
        counters = counters.kind(),
        domains = pipeline.limits.borrow().domains(),
        "rate limit service ready"
    );
    let rls = ratelimit::service::Rls::new(pipeline.limits.subscribe(), counters);
    tracing::info!(%listen, tls = tls.is_some(), "xds server listening");
    let incoming = tokio_stream::wrappers::TcpListenerStream::new(listener);
    let mut builder = tonic::transport::Server::builder();
    if let Some(tls) = tls {
        builder = builder
            .tls_config(tls)
            .map_err(|e| format!("TLS configuration: {e}"))?;
    }
    let server = builder
        .add_service(xds::Ads::new(rx.clone()).service())
        .add_service(xds::Ads::new(rx).rds_service())
        .add_service(rls.service())
        .serve_with_incoming_shutdown(incoming, async {
            let _ = tokio::signal::ctrl_c().await;
        });
    tokio::select! {
        r = server => r.map_err(|e| e.to_string())?,
        r = async {
            match (source, kube) {
                (Source::Dir(dir), _) => source::watch_dir(dir, pipeline, tx).await,
                (Source::Kubernetes, Some(k)) => k.follow(pipeline, tx).await,
                (Source::Kubernetes, None) => Err("no Kubernetes source".into()),
            }
        } => r?,
    }
    Ok(ExitCode::SUCCESS)
}
