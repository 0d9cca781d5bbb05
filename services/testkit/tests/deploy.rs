//! What can be proved about the deployment files without a Docker engine or a cluster:
//! every setting the services read is set (or knowingly left unset) in docker-compose.yml and
//! in the rendered Helm chart, every variable those pass is one the services read, the ports
//! agree, the chart lints, and the Grafana dashboard queries only metrics the services export.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;

use clap::Args;
use serde::Deserialize;
use serde_yaml::Value;

/// Variables read by something other than our flags: the OpenTelemetry exporter (standard
/// OTEL_* names), the log filter, and `dpctl health` in the image's health check.
const EXTRAS: &[&str] = &[
    "RUST_LOG",
    "HEALTH_URL",
    "OTEL_EXPORTER_OTLP_ENDPOINT",
    "OTEL_SERVICE_NAME",
    "OTEL_TRACES_SAMPLER",
    "OTEL_TRACES_SAMPLER_ARG",
];

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn settings(args: clap::Command) -> BTreeSet<String> {
    args.get_arguments()
        .filter_map(|a| a.get_env())
        .map(|e| e.to_string_lossy().into_owned())
        .collect()
}

fn frontend_settings() -> BTreeSet<String> {
    settings(ping_frontend::FrontendArgs::augment_args(
        clap::Command::new("f"),
    ))
}

fn watcher_settings() -> BTreeSet<String> {
    settings(mailbox_watcher::WatcherArgs::augment_args(
        clap::Command::new("w"),
    ))
}

fn yaml(path: &str) -> Value {
    let text = std::fs::read_to_string(root().join(path)).unwrap_or_else(|e| panic!("{path}: {e}"));
    let mut value: Value = serde_yaml::from_str(&text).unwrap_or_else(|e| panic!("{path}: {e}"));
    value
        .apply_merge()
        .unwrap_or_else(|e| panic!("{path}: merge keys: {e}"));
    value
}

fn keys(map: &Value) -> BTreeSet<String> {
    map.as_mapping()
        .map(|m| {
            m.keys()
                .filter_map(|k| k.as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default()
}

fn port(addr: &str) -> u16 {
    addr.rsplit(':')
        .next()
        .and_then(|p| p.parse().ok())
        .unwrap_or_else(|| panic!("no port in {addr}"))
}

/// `env` covers `wanted` (with `unset`), and names nothing the service does not read.
fn check_env(
    what: &str,
    env: &BTreeSet<String>,
    unset: &BTreeSet<String>,
    wanted: &BTreeSet<String>,
) {
    let missing: Vec<_> = wanted
        .iter()
        .filter(|s| !env.contains(*s) && !unset.contains(*s))
        .collect();
    assert!(missing.is_empty(), "{what} does not set {missing:?}");
    check_known(what, &env.union(unset).cloned().collect(), wanted);
}

/// `env` names nothing the service does not read.
fn check_known(what: &str, env: &BTreeSet<String>, wanted: &BTreeSet<String>) {
    let unknown: Vec<_> = env
        .iter()
        .filter(|e| !wanted.contains(*e) && !EXTRAS.contains(&e.as_str()))
        .collect();
    assert!(
        unknown.is_empty(),
        "{what} sets {unknown:?}, which the service does not read"
    );
}

#[test]
fn compose_sets_what_the_services_read_with_matching_ports() {
    let compose = yaml("docker-compose.yml");
    let services = &compose["services"];
    let unset = &compose["x-unset-settings"];
    for name in ["frontend-1", "frontend-2", "migrate"] {
        let env = keys(&services[name]["environment"]);
        check_env(
            name,
            &env,
            &keys(&unset["ping-frontend"]),
            &frontend_settings(),
        );
    }
    let watcher_env = keys(&services["watcher"]["environment"]);
    check_env(
        "watcher",
        &watcher_env,
        &keys(&unset["mailbox-watcher"]),
        &watcher_settings(),
    );

    let env = |service: &str, key: &str| {
        services[service]["environment"][key]
            .as_str()
            .unwrap_or_else(|| panic!("{service} {key}"))
            .to_owned()
    };
    let (http, admin) = (
        port(&env("frontend-1", "LISTEN_ADDR")),
        port(&env("frontend-1", "ADMIN_ADDR")),
    );
    assert_eq!(
        port(env("frontend-1", "HEALTH_URL").trim_end_matches("/healthz")),
        admin
    );
    let haproxy =
        std::fs::read_to_string(root().join("deploy/haproxy/haproxy.cfg")).expect("haproxy.cfg");
    for pod in ["frontend-1", "frontend-2"] {
        assert!(
            haproxy.contains(&format!(
                "server {pod} {pod}:{http} check port {admin} inter 2s send-proxy-v2"
            )),
            "haproxy sends devices to {pod}:{http} with the PROXY protocol and checks {admin}"
        );
    }
    let prometheus = std::fs::read_to_string(root().join("deploy/prometheus/prometheus.yml"))
        .expect("prometheus.yml");
    let watcher_admin = port(&env("watcher", "ADMIN_ADDR"));
    assert_eq!(
        port(env("watcher", "HEALTH_URL").trim_end_matches("/healthz")),
        watcher_admin
    );
    for target in [
        format!("frontend-1:{admin}"),
        format!("frontend-2:{admin}"),
        format!("watcher:{watcher_admin}"),
    ] {
        assert!(prometheus.contains(&target), "Prometheus scrapes {target}");
    }
    let ingest = port(&env("watcher", "LISTEN_ADDR"));
    let published = services["watcher"]["ports"][0]
        .as_str()
        .expect("watcher port");
    assert_eq!(published, format!("{ingest}:{ingest}"));
    // The migration and the demo account run the image's binaries with what they read.
    assert_eq!(
        services["migrate"]["command"][0].as_str(),
        Some("ping-frontend")
    );
    let demo = &services["demo-account"];
    assert_eq!(demo["command"][4].as_str(), Some("--password-env"));
    let variable = demo["command"][5]
        .as_str()
        .expect("--password-env VARIABLE");
    assert_eq!(
        keys(&demo["environment"]),
        BTreeSet::from(["DATABASE_URL".to_owned(), variable.to_owned()])
    );
}

fn helm() -> PathBuf {
    let local = root().join(".tools/bin/helm");
    let helm = std::env::var_os("HELM").map(PathBuf::from).unwrap_or(local);
    assert!(
        helm.exists(),
        "{} is missing: scripts/setup.sh installs Helm (or set HELM)",
        helm.display()
    );
    helm
}

/// `helm template` with `--set`s, for Kubernetes 1.30, as it ended.
fn helm_template(sets: &[&str]) -> std::process::Output {
    let mut command = Command::new(helm());
    command.args([
        "template",
        "dp",
        "helm/directpush",
        "--kube-version",
        "1.30.0",
    ]);
    for set in sets {
        command.args(["--set", set]);
    }
    command.current_dir(root()).output().expect("helm runs")
}

/// The rendered YAML of a value set that must render.
fn template(sets: &[&str]) -> Vec<u8> {
    let output = helm_template(sets);
    assert!(
        output.status.success(),
        "helm template {sets:?}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    output.stdout
}

fn render(sets: &[&str]) -> Vec<Value> {
    let text = String::from_utf8_lossy(&template(sets)).into_owned();
    serde_yaml::Deserializer::from_str(&text)
        .filter_map(|doc| Value::deserialize(doc).ok())
        .filter(|v| !v.is_null())
        .collect()
}

fn container<'a>(docs: &'a [Value], deployment: &str) -> &'a Value {
    let found = docs
        .iter()
        .find(|d| d["kind"] == "Deployment" && d["metadata"]["name"] == deployment)
        .unwrap_or_else(|| panic!("no Deployment {deployment}"));
    &found["spec"]["template"]["spec"]["containers"][0]
}

fn env_names(container: &Value) -> BTreeSet<String> {
    container["env"]
        .as_sequence()
        .map(|s| {
            s.iter()
                .filter_map(|e| e["name"].as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default()
}

fn env_value(container: &Value, name: &str) -> String {
    container["env"]
        .as_sequence()
        .and_then(|s| s.iter().find(|e| e["name"] == name))
        .and_then(|e| e["value"].as_str())
        .unwrap_or_else(|| panic!("{name} has a value"))
        .to_owned()
}

fn container_port(container: &Value, name: &str) -> u16 {
    container["ports"]
        .as_sequence()
        .and_then(|s| s.iter().find(|p| p["name"] == name))
        .and_then(|p| p["containerPort"].as_u64())
        .unwrap_or_else(|| panic!("no port {name}")) as u16
}

#[test]
fn the_chart_lints_and_renders_what_the_services_read_with_matching_ports() {
    let lint = Command::new(helm())
        .args([
            "lint",
            "--strict",
            "helm/directpush",
            "--set",
            "watcher.ingestToken=0123456789abcdef",
        ])
        .current_dir(root())
        .output()
        .expect("helm runs");
    assert!(
        lint.status.success(),
        "helm lint: {}",
        String::from_utf8_lossy(&lint.stdout)
    );
    // Without an ingest token the chart refuses to render, naming the value.
    let refused = helm_template(&[]);
    assert!(String::from_utf8_lossy(&refused.stderr).contains("watcher.ingestToken"));

    let token = "watcher.ingestToken=0123456789abcdef";
    for (sets, names) in [
        (vec![token, "redis.mode=sentinel"], "redis.mode"),
        (
            vec![token, "frontend.tls.ticketKeysSecret=tickets"],
            "frontend.tls.ticketKeysSecret needs frontend.tls.secretName",
        ),
        (
            vec![
                token,
                "redis.mode=cluster",
                "bundled.redis.enabled=true",
                "bundled.redis.password=pw",
            ],
            "your own Redis Cluster",
        ),
    ] {
        let refused = helm_template(&sets);
        assert!(
            String::from_utf8_lossy(&refused.stderr).contains(names),
            "{sets:?}: {}",
            String::from_utf8_lossy(&refused.stderr)
        );
    }
    let renders = [
        render(&[token]),
        render(&[
            token,
            "frontend.auth.jwtSecret=s3cret",
            "frontend.tls.secretName=tls",
            "frontend.tls.ticketKeysSecret=tickets",
            "otel.endpoint=http://c:4318",
            "wakeSecret=w4ke",
        ]),
        render(&[
            token,
            "frontend.auth.jwksConfigMap=keys",
            "frontend.upstreamCaConfigMap=upstream-ca",
            "frontend.config.UPSTREAM_URL=https://mail.example.com/Microsoft-Server-ActiveSync",
            "watcher.config.WATCHER_ROLES=ingest\\,dispatch\\,imap",
            "watcher.imapMasterPassword=m4ster",
            "watcher.imapCaConfigMap=imap-ca",
            "ingress.enabled=true",
            "metrics.serviceMonitor.enabled=true",
            "redis.mode=cluster",
            "redis.waitReplicas=1",
        ]),
    ];
    let (mut frontend_env, mut watcher_env) = (BTreeSet::new(), BTreeSet::new());
    for docs in &renders {
        let frontend = container(docs, "dp-directpush-frontend");
        let watcher = container(docs, "dp-directpush-watcher");
        let (f, w) = (env_names(frontend), env_names(watcher));
        check_known("chart frontend", &f, &frontend_settings());
        check_known("chart watcher", &w, &watcher_settings());
        assert_eq!(
            port(&env_value(frontend, "LISTEN_ADDR")),
            container_port(frontend, "http")
        );
        assert_eq!(
            port(&env_value(frontend, "ADMIN_ADDR")),
            container_port(frontend, "admin")
        );
        assert_eq!(
            port(&env_value(frontend, "WAKE_LISTEN_ADDR")),
            container_port(frontend, "wake")
        );
        assert_eq!(
            port(&env_value(watcher, "LISTEN_ADDR")),
            container_port(watcher, "ingest")
        );
        assert_eq!(
            port(&env_value(watcher, "ADMIN_ADDR")),
            container_port(watcher, "admin")
        );
        for c in [frontend, watcher] {
            assert_eq!(c["readinessProbe"]["httpGet"]["path"], "/readyz");
            assert_eq!(c["livenessProbe"]["httpGet"]["path"], "/healthz");
            assert_eq!(c["readinessProbe"]["httpGet"]["port"], "admin");
        }
        frontend_env.extend(f);
        watcher_env.extend(w);
    }
    check_env(
        "chart frontend (all value sets)",
        &frontend_env,
        &BTreeSet::new(),
        &frontend_settings(),
    );
    check_env(
        "chart watcher (all value sets)",
        &watcher_env,
        &BTreeSet::new(),
        &watcher_settings(),
    );

    // The drain fits in the grace period: preStop + DRAIN_DELAY_SECS + DRAIN_SECS.
    let values = yaml("helm/directpush/values.yaml");
    let secs = |v: &Value| {
        v.as_str()
            .and_then(|s| s.parse::<u64>().ok())
            .or(v.as_u64())
            .expect("seconds")
    };
    let config = &values["frontend"]["config"];
    let drain = secs(&values["frontend"]["preStopSeconds"])
        + secs(&config["DRAIN_DELAY_SECS"])
        + secs(&config["DRAIN_SECS"]);
    assert!(secs(&values["frontend"]["terminationGracePeriodSeconds"]) > drain);
    let kinds: BTreeSet<String> = renders[2]
        .iter()
        .filter_map(|d| d["kind"].as_str().map(str::to_owned))
        .collect();
    for kind in [
        "Ingress",
        "ServiceMonitor",
        "HorizontalPodAutoscaler",
        "PodDisruptionBudget",
        "Job",
        "Secret",
        "ConfigMap",
    ] {
        assert!(kinds.contains(kind), "the chart renders a {kind}");
    }
}

/// Issue 13: no Kubernetes API server runs here, so the chart's objects are checked against
/// Kubernetes' own OpenAPI schemas (kubernetes-validate, strict: unknown fields refused) for
/// the oldest version the chart supports and the newest the tool ships, in several value sets.
/// The ServiceMonitor is a CRD with no schema there: the tool warns and skips it.
#[test]
fn the_chart_renders_objects_kubernetes_accepts() {
    let token = "watcher.ingestToken=0123456789abcdef";
    let sets: [&[&str]; 5] = [
        &[token],
        &[
            token,
            "bundled.nats.enabled=true",
            "bundled.nats.password=n4ts",
            "bundled.redis.enabled=true",
            "bundled.redis.password=r3dis",
            "bundled.postgres.enabled=true",
        ],
        &[
            token,
            "ingress.enabled=true",
            "ingress.host=push.example.com",
            "ingress.tlsSecretName=push-tls",
            "metrics.serviceMonitor.enabled=true",
        ],
        &[
            token,
            "frontend.tls.secretName=frontend-tls",
            "otel.endpoint=http://c:4317",
        ],
        &[
            "watcher.existingIngestSecret=ingest",
            "database.existingSecret=db",
            "nats.existingSecret=nats",
            "redis.existingSecret=redis",
            "frontend.auth.existingJwtSecret=jwt",
            "frontend.config.AUTH_MODE=jwt",
            "frontend.config.JWT_ISSUER=https://id.example.com",
            "frontend.config.JWT_AUDIENCE=directpush",
        ],
    ];
    let dir = std::env::temp_dir().join(format!("dp-chart-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("a scratch directory");
    for (i, set) in sets.iter().enumerate() {
        let file = dir.join(format!("set-{i}.yaml"));
        std::fs::write(&file, template(set)).expect("rendered chart written");
        for version in [Some("1.30.0"), None] {
            let mut validate = Command::new("kubernetes-validate");
            validate.args(["--strict", "--quiet"]);
            if let Some(v) = version {
                validate.args(["-k", v]);
            }
            let result = validate.arg(&file).output().expect(
                "kubernetes-validate runs (scripts/setup.sh installs it: pip install kubernetes-validate)",
            );
            let said = String::from_utf8_lossy(&result.stdout).into_owned()
                + &String::from_utf8_lossy(&result.stderr);
            assert!(
                result.status.success() && !said.contains("ERROR"),
                "kubernetes-validate {version:?} on {set:?}: {said}"
            );
        }
    }
    let _ = std::fs::remove_dir_all(dir);
}

/// Issue 12, item 9: compose runs NATS and Redis behind passwords, the same ones the services'
/// URLs carry.
#[test]
fn compose_runs_the_stores_behind_the_passwords_the_services_use() {
    let compose = yaml("docker-compose.yml");
    let stores = &compose["x-stores"];
    let (nats_pw, redis_pw) = (
        "${NATS_PASSWORD:-directpush-dev-nats}",
        "${REDIS_PASSWORD:-directpush-dev-redis}",
    );
    assert_eq!(
        stores["NATS_URL"],
        format!("nats://directpush:{nats_pw}@nats:4222").as_str()
    );
    assert_eq!(
        stores["REDIS_URL"],
        format!("redis://:{redis_pw}@redis:6379").as_str()
    );
    let command = |service: &str| -> Vec<String> {
        compose["services"][service]["command"]
            .as_sequence()
            .expect("a command list")
            .iter()
            .filter_map(|v| v.as_str().map(str::to_owned))
            .collect()
    };
    let follows = |args: &[String], flag: &str, value: &str| {
        args.windows(2).any(|w| w[0] == flag && w[1] == value)
    };
    assert!(follows(&command("nats"), "--pass", nats_pw));
    assert!(follows(&command("nats"), "--user", "directpush"));
    assert!(follows(&command("redis"), "--requirepass", redis_pw));
}

/// Issue 12, item 9: the bundled stores run behind passwords the services read from their
/// URLs in the chart's Secret, and NetworkPolicies let only this release's pods reach them.
#[test]
fn the_bundled_stores_take_passwords_and_only_the_release_reaches_them() {
    let token = "watcher.ingestToken=0123456789abcdef";
    let refused = helm_template(&[token, "bundled.redis.enabled=true"]);
    assert!(String::from_utf8_lossy(&refused.stderr).contains("bundled.redis.password is required"));

    let docs = render(&[
        token,
        "bundled.nats.enabled=true",
        "bundled.nats.password=n4ts-pw",
        "bundled.redis.enabled=true",
        "bundled.redis.password=r3dis-pw",
        "bundled.postgres.enabled=true",
    ]);
    let secret = docs
        .iter()
        .find(|d| d["kind"] == "Secret")
        .expect("the chart's Secret");
    assert_eq!(
        secret["stringData"]["NATS_URL"],
        "nats://directpush:n4ts-pw@nats:4222"
    );
    assert_eq!(
        secret["stringData"]["REDIS_URL"],
        "redis://:r3dis-pw@redis:6379"
    );
    for deployment in ["dp-directpush-frontend", "dp-directpush-watcher"] {
        let env = &container(&docs, deployment)["env"];
        for name in ["NATS_URL", "REDIS_URL"] {
            let var = env
                .as_sequence()
                .and_then(|s| s.iter().find(|e| e["name"] == name))
                .unwrap_or_else(|| panic!("{deployment} reads {name}"));
            assert_eq!(
                var["valueFrom"]["secretKeyRef"]["key"], name,
                "{deployment}"
            );
            assert!(
                var["value"].is_null(),
                "{deployment}: {name} not in plain text"
            );
        }
    }
    let args = |name: &str| -> String {
        let set = docs
            .iter()
            .find(|d| d["kind"] == "StatefulSet" && d["metadata"]["name"] == name)
            .unwrap_or_else(|| panic!("a bundled {name}"));
        let c = &set["spec"]["template"]["spec"]["containers"][0];
        serde_yaml::to_string(&c["args"]).expect("args")
    };
    assert!(args("redis").contains("--requirepass"));
    assert!(args("nats").contains("--pass"));
    let (wake, stores): (Vec<&Value>, Vec<&Value>) = docs
        .iter()
        .filter(|d| d["kind"] == "NetworkPolicy")
        .partition(|d| d["metadata"]["name"] == "dp-directpush-frontend-wake");
    assert_eq!(stores.len(), 3, "one per bundled store");
    for policy in stores {
        let from = &policy["spec"]["ingress"][0]["from"][0]["podSelector"]["matchLabels"];
        assert_eq!(from["app.kubernetes.io/instance"], "dp");
        assert_eq!(from["app.kubernetes.io/name"], "directpush");
    }
    // The frontends' wake port takes the release's watchers only; their other ports stay open.
    assert_eq!(wake.len(), 1, "a policy for the frontends' wake port");
    let rules = &wake[0]["spec"]["ingress"];
    assert!(
        rules[0]["from"].is_null(),
        "the device and admin ports from anywhere"
    );
    let from = &rules[1]["from"][0]["podSelector"]["matchLabels"];
    assert_eq!(from["app.kubernetes.io/component"], "watcher");
    assert_eq!(from["app.kubernetes.io/instance"], "dp");
    assert_eq!(rules[1]["ports"][0]["port"], 8082);
}

#[test]
fn the_image_builds_every_binary() {
    let dockerfile = std::fs::read_to_string(root().join("Dockerfile")).expect("Dockerfile");
    let output = Command::new(env!("CARGO"))
        .args([
            "metadata",
            "--no-deps",
            "--format-version",
            "1",
            "--offline",
        ])
        .current_dir(root())
        .output()
        .expect("cargo metadata");
    let metadata: serde_json::Value =
        serde_json::from_slice(&output.stdout).expect("metadata JSON");
    // The test harness's own tools (clustered-stores) are not shipped.
    let bins: Vec<String> = metadata["packages"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|p| p["name"] != "dp-testkit")
        .flat_map(|p| p["targets"].as_array().cloned().unwrap_or_default())
        .filter(|t| {
            t["kind"]
                .as_array()
                .is_some_and(|k| k.iter().any(|k| k == "bin"))
        })
        .filter_map(|t| t["name"].as_str().map(str::to_owned))
        .collect();
    assert!(bins.len() >= 4, "{bins:?}");
    for bin in bins {
        assert!(
            dockerfile.contains(&format!("-p {bin}")),
            "the Dockerfile builds {bin}"
        );
        assert!(
            dockerfile.contains(&format!(" {bin}")),
            "the Dockerfile copies {bin}"
        );
    }
    assert!(dockerfile.contains("USER 65532"), "runs as non-root");
    assert!(dockerfile.contains("HEALTHCHECK"), "has a health check");
    assert!(dockerfile.contains("--locked"), "builds from Cargo.lock");
}
