//! The deployment material (deploy/, docs/deploy.md) agrees with Sluice and
//! with itself: the Kubernetes manifests probe the endpoints Sluice serves,
//! leave the memory limiter room below the container's limit, give a host
//! the time to drain and finish its longest request, select the pods they
//! mean, and mount a configuration file `sluice serve` accepts, with the
//! spool on only where its volume outlives the pod; the HAProxy and nginx
//! configurations check readiness and keep connections as Sluice expects.

use sluice::config_file::Config;
use std::path::{Path, PathBuf};
use yaml_rust2::{Yaml, YamlLoader};

/// The port every host listens on (`listen` in the manifests' configuration).
const PORT: i64 = 8080;

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// One YAML document under deploy/kubernetes, and the file it is in.
struct Manifest {
    file: String,
    doc: Yaml,
}

impl Manifest {
    fn kind(&self) -> &str {
        self.doc["kind"].as_str().unwrap_or("")
    }

    fn name(&self) -> &str {
        self.doc["metadata"]["name"].as_str().unwrap_or("")
    }

    fn what(&self) -> String {
        format!("{} {} ({})", self.kind(), self.name(), self.file)
    }

    /// The pod spec of a Deployment or StatefulSet.
    fn pod(&self) -> &Yaml {
        &self.doc["spec"]["template"]["spec"]
    }

    /// The container that runs `sluice serve`.
    fn container(&self) -> &Yaml {
        let containers = self.pod()["containers"].as_vec().unwrap_or_else(|| panic!("{}: no containers", self.what()));
        containers
            .iter()
            .find(|c| c["args"][0].as_str() == Some("serve"))
            .unwrap_or_else(|| panic!("{}: no container whose args are [serve, …]", self.what()))
    }
}

fn manifests() -> Vec<Manifest> {
    let root = root();
    let mut files = Vec::new();
    yaml_files(&root.join("deploy/kubernetes"), &mut files);
    files.sort();
    assert!(!files.is_empty(), "no YAML files under deploy/kubernetes");
    let mut manifests = Vec::new();
    for path in files {
        let file = path.strip_prefix(&root).unwrap_or(&path).display().to_string();
        let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("read {file}: {e}"));
        let docs = YamlLoader::load_from_str(&text).unwrap_or_else(|e| panic!("{file} is not YAML: {e}"));
        for doc in docs {
            // A `---` with nothing after it is an empty document; kubectl skips it.
            if !matches!(doc, Yaml::BadValue | Yaml::Null) {
                manifests.push(Manifest { file: file.clone(), doc });
            }
        }
    }
    manifests
}

fn yaml_files(dir: &Path, files: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap_or_else(|e| panic!("read {}: {e}", dir.display())) {
        let path = entry.expect("a folder entry").path();
        if path.is_dir() {
            yaml_files(&path, files);
        } else if path.extension().is_some_and(|e| e == "yaml" || e == "yml") {
            files.push(path);
        }
    }
}

/// The Deployment and the StatefulSet (the same fleet, without and with a
/// volume per host).
fn workloads(manifests: &[Manifest]) -> Vec<&Manifest> {
    let workloads: Vec<&Manifest> =
        manifests.iter().filter(|m| matches!(m.kind(), "Deployment" | "StatefulSet")).collect();
    for kind in ["Deployment", "StatefulSet"] {
        assert!(workloads.iter().any(|m| m.kind() == kind), "deploy/kubernetes has no {kind}");
    }
    workloads
}

fn the<'a>(manifests: &'a [Manifest], kind: &str, name: &str) -> &'a Manifest {
    manifests
        .iter()
        .find(|m| m.kind() == kind && m.name() == name)
        .unwrap_or_else(|| panic!("deploy/kubernetes has no {kind} {name}"))
}

/// The number a probe's or a Service's port means: a number, or the name of
/// one of the container's ports.
fn port_number(port: &Yaml, container: &Yaml) -> Option<i64> {
    match port {
        Yaml::Integer(n) => Some(*n),
        Yaml::String(name) => {
            container["ports"].as_vec()?.iter().find(|p| p["name"].as_str() == Some(name.as_str()))?["containerPort"]
                .as_i64()
        }
        _ => None,
    }
}

/// The configuration a workload's `serve --config FILE` reads: which
/// ConfigMap key is mounted as FILE, and its text.
fn mounted_config<'a>(workload: &Manifest, manifests: &'a [Manifest]) -> (String, &'a str) {
    let what = workload.what();
    let container = workload.container();
    let args: Vec<&str> = container["args"].as_vec().into_iter().flatten().filter_map(Yaml::as_str).collect();
    let at = args.iter().position(|a| *a == "--config").unwrap_or_else(|| panic!("{what}: serve has no --config"));
    let file = Path::new(args.get(at + 1).unwrap_or_else(|| panic!("{what}: --config names no file")));
    let dir = file.parent().and_then(Path::to_str).unwrap_or("");
    let name = file.file_name().and_then(|n| n.to_str()).unwrap_or("");
    let mount = container["volumeMounts"]
        .as_vec()
        .and_then(|mounts| mounts.iter().find(|m| m["mountPath"].as_str() == Some(dir)))
        .unwrap_or_else(|| panic!("{what}: nothing is mounted at {dir}, where --config {} is", file.display()));
    let volume = volume(workload, mount["name"].as_str().unwrap_or(""))
        .unwrap_or_else(|| panic!("{what}: the volume mounted at {dir} is not in the pod's volumes"));
    let map = volume["configMap"]["name"].as_str().unwrap_or_else(|| panic!("{what}: {dir} is not a ConfigMap"));
    let key = match volume["configMap"]["items"].as_vec() {
        Some(items) => items
            .iter()
            .find(|item| item["path"].as_str() == Some(name))
            .and_then(|item| item["key"].as_str())
            .unwrap_or_else(|| panic!("{what}: ConfigMap {map} mounts no key as {name}")),
        None => name,
    };
    let text = the(manifests, "ConfigMap", map).doc["data"][key]
        .as_str()
        .unwrap_or_else(|| panic!("ConfigMap {map} has no key {key}, which {what} mounts"));
    (format!("ConfigMap {map} key {key}"), text)
}

fn volume<'a>(workload: &'a Manifest, name: &str) -> Option<&'a Yaml> {
    workload.pod()["volumes"].as_vec()?.iter().find(|v| v["name"].as_str() == Some(name))
}

/// The configuration as TOML, and as `sluice serve` reads it (every
/// `${VAR}` set to a placeholder long enough for an admin token).
fn parse_config(label: &str, text: &str) -> (toml::Table, Config) {
    let table: toml::Table = text.parse().unwrap_or_else(|e| panic!("{label} is not TOML: {e}"));
    let config = Config::parse(text, &|name| Some(format!("{name}-placeholder-0123456789")))
        .unwrap_or_else(|e| panic!("sluice serve refuses {label}: {e:#}"));
    (table, config)
}

fn drain_ms(label: &str, table: &toml::Table) -> u64 {
    table
        .get("http")
        .and_then(|http| http.get("drain_ms"))
        .and_then(toml::Value::as_integer)
        .and_then(|ms| u64::try_from(ms).ok())
        .unwrap_or_else(|| panic!("{label} sets no [http] drain_ms"))
}

/// Bytes in a Kubernetes quantity: `1Gi`, `768Mi`, `1G`, `1073741824`.
fn quantity_bytes(quantity: &Yaml) -> u64 {
    if let Some(n) = quantity.as_i64() {
        return n as u64;
    }
    let text = quantity.as_str().unwrap_or_else(|| panic!("{quantity:?} is not a quantity"));
    let units: [(&str, u64); 8] = [
        ("Ki", 1 << 10),
        ("Mi", 1 << 20),
        ("Gi", 1 << 30),
        ("Ti", 1 << 40),
        ("k", 1_000),
        ("M", 1_000_000),
        ("G", 1_000_000_000),
        ("T", 1_000_000_000_000),
    ];
    let (number, factor) =
        units.iter().find_map(|(suffix, factor)| Some((text.strip_suffix(suffix)?, *factor))).unwrap_or((text, 1));
    number.parse::<u64>().unwrap_or_else(|_| panic!("{text:?} is not a quantity this test reads")) * factor
}

/// Whether every label of `selector` is among `labels`.
fn selects(selector: &Yaml, labels: &Yaml) -> bool {
    let Some(selector) = selector.as_hash().filter(|s| !s.is_empty()) else { return false };
    selector.iter().all(|(key, value)| labels[key.as_str().unwrap_or("")].as_str() == value.as_str())
}

#[test]
fn every_manifest_names_its_kind() {
    let manifests = manifests();
    for m in &manifests {
        assert!(m.doc["apiVersion"].as_str().is_some_and(|v| !v.is_empty()), "{}: no apiVersion", m.file);
        assert!(!m.kind().is_empty(), "{}: no kind", m.file);
        assert!(!m.name().is_empty(), "{}: a {} without metadata.name", m.file, m.kind());
    }
    for kind in ["ConfigMap", "Secret", "Deployment", "StatefulSet", "Service", "PodDisruptionBudget"] {
        assert!(manifests.iter().any(|m| m.kind() == kind), "deploy/kubernetes has no {kind}");
    }
}

#[test]
fn hosts_are_probed_where_sluice_answers() {
    let manifests = manifests();
    for workload in workloads(&manifests) {
        let what = workload.what();
        let container = workload.container();
        let ports: Vec<i64> =
            container["ports"].as_vec().into_iter().flatten().filter_map(|p| p["containerPort"].as_i64()).collect();
        assert!(ports.contains(&PORT), "{what}: the container does not declare port {PORT}: {ports:?}");
        for (probe, path) in [("readinessProbe", "/readyz"), ("livenessProbe", "/healthz")] {
            let get = &container[probe]["httpGet"];
            assert_eq!(get["path"].as_str(), Some(path), "{what}: {probe} asks the wrong path");
            assert_eq!(port_number(&get["port"], container), Some(PORT), "{what}: {probe} asks the wrong port");
        }
        let (label, text) = mounted_config(workload, &manifests);
        let (_, config) = parse_config(&label, text);
        assert_eq!(config.listen.port() as i64, PORT, "{label} listens on {}, not on port {PORT}", config.listen);
        assert!(config.listen.ip().is_unspecified(), "{label} listens on {}: unreachable from outside", config.listen);

        // Sluice needs no root and writes only to its data_dir.
        let (pod_security, security) = (&workload.pod()["securityContext"], &container["securityContext"]);
        let non_root = security["runAsNonRoot"].as_bool().or(pod_security["runAsNonRoot"].as_bool());
        assert_eq!(non_root, Some(true), "{what}: runAsNonRoot is not set");
        assert_eq!(security["readOnlyRootFilesystem"].as_bool(), Some(true), "{what}: the root filesystem is writable");
        assert_eq!(security["allowPrivilegeEscalation"].as_bool(), Some(false), "{what}: privilege escalation allowed");
    }
}

#[test]
fn the_memory_limit_leaves_the_limiter_room() {
    let manifests = manifests();
    for workload in workloads(&manifests) {
        let what = workload.what();
        let resources = &workload.container()["resources"];
        let limit = quantity_bytes(&resources["limits"]["memory"]);
        let request = quantity_bytes(&resources["requests"]["memory"]);
        assert!(request <= limit, "{what}: memory request {request} over the limit {limit}");
        let (label, text) = mounted_config(workload, &manifests);
        let (_, config) = parse_config(&label, text);
        let max = config.limits.max_memory_bytes as u64;
        assert!(max > 0, "{label}: no [limits] max_memory_bytes, so nothing answers 503 before the kernel kills");
        // 503 with Retry-After near max_memory_bytes, well before the kernel's limit.
        assert!(
            limit * 10 >= max * 12,
            "{what}: memory limit {limit} is not 20 % over {label}'s max_memory_bytes {max}"
        );
    }
}

#[test]
fn a_host_has_time_to_drain_and_finish_its_requests() {
    let manifests = manifests();
    for workload in workloads(&manifests) {
        let what = workload.what();
        let (label, text) = mounted_config(workload, &manifests);
        let (table, config) = parse_config(&label, text);
        let drain = drain_ms(&label, &table);
        let grace = workload.pod()["terminationGracePeriodSeconds"]
            .as_i64()
            .unwrap_or_else(|| panic!("{what}: no terminationGracePeriodSeconds (the default 30 s is too short)"));
        // Draining, then the longest request: its body, then its write.
        let longest = config.http.body_read_timeout_ms + config.limits.request_timeout_ms;
        assert!(
            grace as u64 * 1000 > drain + longest,
            "{what}: terminationGracePeriodSeconds {grace} s is not over drain_ms {drain} + the longest request \
             {longest} ms"
        );
        // The readiness probe sees a draining host before it stops accepting.
        let readiness = &workload.container()["readinessProbe"];
        let period = readiness["periodSeconds"].as_i64().unwrap_or(10) as u64;
        let failures = readiness["failureThreshold"].as_i64().unwrap_or(3) as u64;
        assert!(
            period * failures * 1000 <= drain,
            "{what}: readiness needs {period} s x {failures} to see a host drain, longer than drain_ms {drain}"
        );
    }
}

#[test]
fn services_and_the_budget_select_the_hosts() {
    let manifests = manifests();
    let workloads = workloads(&manifests);
    for workload in &workloads {
        let labels = &workload.doc["spec"]["template"]["metadata"]["labels"];
        assert!(
            selects(&workload.doc["spec"]["selector"]["matchLabels"], labels),
            "{}: its selector does not match its pods' labels",
            workload.what()
        );
    }
    let services: Vec<&Manifest> = manifests.iter().filter(|m| m.kind() == "Service").collect();
    assert!(!services.is_empty(), "deploy/kubernetes has no Service");
    for service in services {
        for workload in &workloads {
            let labels = &workload.doc["spec"]["template"]["metadata"]["labels"];
            assert!(
                selects(&service.doc["spec"]["selector"], labels),
                "{}: its selector does not match the pods of {}",
                service.what(),
                workload.what()
            );
            let ports = service.doc["spec"]["ports"].as_vec().unwrap_or_else(|| panic!("{}: no ports", service.what()));
            for port in ports {
                assert_eq!(
                    port_number(&port["targetPort"], workload.container()),
                    Some(PORT),
                    "{}: targetPort {:?} is not the hosts' port {PORT} in {}",
                    service.what(),
                    port["targetPort"],
                    workload.what()
                );
            }
        }
    }
    let budget = manifests
        .iter()
        .find(|m| m.kind() == "PodDisruptionBudget")
        .expect("deploy/kubernetes has no PodDisruptionBudget");
    assert_eq!(budget.doc["spec"]["maxUnavailable"].as_i64(), Some(1), "{}: maxUnavailable", budget.what());
    for workload in &workloads {
        let labels = &workload.doc["spec"]["template"]["metadata"]["labels"];
        assert!(
            selects(&budget.doc["spec"]["selector"]["matchLabels"], labels),
            "{}: its selector does not match the pods of {}",
            budget.what(),
            workload.what()
        );
    }
}

#[test]
fn the_configuration_is_one_sluice_accepts() {
    let manifests = manifests();
    let maps: Vec<&Manifest> = manifests.iter().filter(|m| m.kind() == "ConfigMap").collect();
    let mut files = Vec::new();
    for map in maps {
        for (key, value) in map.doc["data"].as_hash().into_iter().flatten() {
            let (Some(key), Some(text)) = (key.as_str(), value.as_str()) else { continue };
            if key.ends_with(".toml") {
                let label = format!("ConfigMap {} key {key}", map.name());
                let (table, config) = parse_config(&label, text);
                assert!(drain_ms(&label, &table) > 0, "{label}: drain_ms 0 does not drain");
                assert!(config.admin_token.is_some(), "{label}: no admin_token, so no admin API");
                assert!(config.metrics.require_admin_token, "{label}: /metrics and /status.json open to all");
                files.push((label, table));
            }
        }
    }
    assert!(!files.is_empty(), "no ConfigMap holds a .toml file");
    // The hosts are identical: the files differ at most in [spool].
    let without_spool = |table: &toml::Table| {
        let mut table = table.clone();
        table.remove("spool");
        table
    };
    let (first, first_table) = &files[0];
    for (label, table) in &files[1..] {
        assert_eq!(without_spool(table), without_spool(first_table), "{label} and {first} differ outside [spool]");
    }
}

#[test]
fn the_spool_lives_only_on_a_volume_that_outlives_the_pod() {
    let manifests = manifests();
    for workload in workloads(&manifests) {
        let what = workload.what();
        let (label, text) = mounted_config(workload, &manifests);
        let (_, config) = parse_config(&label, text);
        let data_dir = config.data_dir.to_str().expect("a UTF-8 data_dir");
        // The root filesystem is read-only: data_dir must be a volume.
        let mount = workload.container()["volumeMounts"]
            .as_vec()
            .and_then(|mounts| mounts.iter().find(|m| m["mountPath"].as_str() == Some(data_dir)))
            .unwrap_or_else(|| panic!("{what}: nothing is mounted at data_dir {data_dir}"));
        let name = mount["name"].as_str().unwrap_or("");
        let claimed = workload.doc["spec"]["volumeClaimTemplates"]
            .as_vec()
            .is_some_and(|claims| claims.iter().any(|c| c["metadata"]["name"].as_str() == Some(name)));
        if workload.kind() == "StatefulSet" {
            assert!(claimed, "{what}: data_dir {data_dir} is not on a volumeClaimTemplate");
        }
        if !claimed {
            let volume = volume(workload, name).unwrap_or_else(|| panic!("{what}: no volume {name}"));
            assert!(
                volume["persistentVolumeClaim"].is_badvalue(),
                "{what}: pods of a {} share the claim at {data_dir}",
                workload.kind()
            );
            assert!(
                !config.spool.enabled,
                "{what}: the spool is on ({label}) but data_dir {data_dir} is lost with the pod, \
                 and with it every request answered 202"
            );
        }
    }
}

/// Milliseconds in an HAProxy or nginx time (`1s`, `500ms`); a bare number
/// counts `bare` milliseconds (1 in HAProxy, 1000 in nginx).
fn time_ms(time: &str, bare: u64) -> u64 {
    let units: [(&str, u64); 4] = [("ms", 1), ("s", 1000), ("m", 60_000), ("h", 3_600_000)];
    let (number, factor) =
        units.iter().find_map(|(suffix, factor)| Some((time.strip_suffix(suffix)?, *factor))).unwrap_or((time, bare));
    number.parse::<u64>().unwrap_or_else(|_| panic!("{time:?} is not a time this test reads")) * factor
}

/// The value after `word` among `tokens`.
fn after<'a>(tokens: &[&'a str], word: &str) -> Option<&'a str> {
    tokens.iter().position(|t| *t == word).and_then(|at| tokens.get(at + 1).copied())
}

#[test]
fn haproxy_checks_readiness_on_every_server() {
    let manifests = manifests();
    let (label, text) = mounted_config(the(&manifests, "Deployment", "sluice"), &manifests);
    let (table, _) = parse_config(&label, text);
    let drain = drain_ms(&label, &table);

    let path = root().join("deploy/haproxy/haproxy.cfg");
    let text = std::fs::read_to_string(&path).expect("deploy/haproxy/haproxy.cfg");
    // Sections: a line at the margin opens one.
    let mut sections: Vec<Vec<&str>> = Vec::new();
    for line in text.lines() {
        let line = line.split('#').next().unwrap_or("");
        if line.trim().is_empty() {
            continue;
        }
        if !line.starts_with(char::is_whitespace) || sections.is_empty() {
            sections.push(Vec::new());
        }
        sections.last_mut().unwrap().push(line.trim());
    }
    let ready: Vec<&Vec<&str>> = sections.iter().filter(|s| s.contains(&"option httpchk GET /readyz")).collect();
    assert!(!ready.is_empty(), "haproxy.cfg: no backend has option httpchk GET /readyz");
    let mut servers = 0;
    for section in &sections {
        let defaults: Vec<&str> = section
            .iter()
            .find(|l| l.starts_with("default-server "))
            .map(|l| l.split_whitespace().collect())
            .unwrap_or_default();
        for line in section.iter().filter(|l| l.starts_with("server ")) {
            servers += 1;
            let tokens: Vec<&str> = line.split_whitespace().collect();
            assert!(tokens.contains(&"check") || defaults.contains(&"check"), "haproxy.cfg: `{line}` is never checked");
            if ready.contains(&section) {
                let expects = section.contains(&"http-check expect status 200");
                assert!(expects, "haproxy.cfg: `{}` takes any answer to its check", section[0]);
                // Out of the backend before the host stops accepting.
                let inter = after(&tokens, "inter").or(after(&defaults, "inter")).map_or(2000, |t| time_ms(t, 1));
                let fall: u64 = after(&tokens, "fall").or(after(&defaults, "fall")).map_or(3, |f| f.parse().unwrap());
                assert!(
                    inter * fall <= drain,
                    "haproxy.cfg: `{line}` is out after inter {inter} ms x fall {fall}, longer than drain_ms {drain}"
                );
            }
        }
    }
    assert!(servers > 0, "haproxy.cfg has no server");
}

#[test]
fn nginx_keeps_connections_as_sluice_does() {
    let path = root().join("deploy/nginx/sluice.conf");
    let text = std::fs::read_to_string(&path).expect("deploy/nginx/sluice.conf");
    let lines: Vec<&str> =
        text.lines().map(|l| l.split('#').next().unwrap_or("").trim()).filter(|l| !l.is_empty()).collect();
    for needed in ["proxy_http_version 1.1;", "proxy_set_header Connection \"\";"] {
        assert!(lines.contains(&needed), "sluice.conf: no `{needed}`, so no keep-alive to the hosts");
    }
    assert!(lines.iter().any(|l| l.starts_with("keepalive ")), "sluice.conf: the upstream keeps no connections");
    // nginx must close an idle connection before the host does, or it may
    // send a request on one the host is closing.
    let idle_ms = Config::default().http.idle_timeout_ms;
    let keepalive = lines
        .iter()
        .find_map(|l| l.strip_prefix("keepalive_timeout "))
        .map(|t| t.trim_end_matches(';').trim())
        .expect("sluice.conf: no keepalive_timeout (nginx's default 60 s outlives Sluice's idle timeout)");
    let keepalive_ms = time_ms(keepalive, 1000);
    assert!(
        keepalive_ms < idle_ms,
        "sluice.conf: keepalive_timeout {keepalive} is not shorter than Sluice's idle_timeout_ms {idle_ms}"
    );
    let next =
        lines.iter().find(|l| l.starts_with("proxy_next_upstream ")).expect("sluice.conf: no proxy_next_upstream");
    assert!(next.contains("http_503"), "sluice.conf: a 503 (Retry-After) is not passed to another host: `{next}`");
}
