//! The container files, checked without a container runtime (these
//! machines have none; the enrollment step's script is run for real):
//! `docker-compose.yml` parses and comes up whole on
//! paper (every service it depends on exists, the one-shot enrollment
//! service runs before the machines that read its strings, the node is not
//! published, every variable it sets or reads is documented in
//! `.env.example`, state goes to volumes), and the Dockerfile builds with
//! `--locked` from a cached dependency layer, a `.dockerignore` keeping
//! `target/` and `.env` out, a user that is not root owning the state
//! directories, and listening on every interface inside the container.

use std::collections::BTreeSet;
use std::path::Path;

use serde_yaml::Value;

fn read(name: &str) -> String {
    std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join(name))
        .unwrap_or_else(|e| panic!("{name}: {e}"))
}

fn example_vars() -> BTreeSet<String> {
    read(".env.example")
        .lines()
        .map(|l| l.trim_start_matches("# ").trim())
        .filter_map(|l| l.split_once('='))
        .map(|(k, _)| k.trim().to_owned())
        .filter(|k| {
            k.chars()
                .all(|c| c.is_ascii_uppercase() || c.is_ascii_digit() || c == '_')
        })
        .collect()
}

fn compose() -> Value {
    serde_yaml::from_str(&read("docker-compose.yml")).expect("docker-compose.yml parses")
}

fn service<'a>(c: &'a Value, name: &str) -> &'a Value {
    c["services"]
        .get(name)
        .unwrap_or_else(|| panic!("no service {name}"))
}

fn env_keys(s: &Value) -> Vec<String> {
    s["environment"]
        .as_mapping()
        .map(|m| {
            m.keys()
                .filter_map(|k| k.as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default()
}

fn env_value(s: &Value, key: &str) -> Option<String> {
    s["environment"]
        .get(key)
        .and_then(|v| v.as_str())
        .map(str::to_owned)
}

#[test]
fn compose_comes_up_whole_on_paper() {
    let c = compose();
    let services = c["services"].as_mapping().expect("services");
    let names: BTreeSet<String> = services
        .keys()
        .filter_map(|k| k.as_str().map(str::to_owned))
        .collect();
    for needed in ["postgres", "backend", "enroll", "gateway", "node"] {
        assert!(names.contains(needed), "no {needed} service");
    }
    let volumes: BTreeSet<String> = c["volumes"]
        .as_mapping()
        .expect("volumes")
        .keys()
        .filter_map(|k| k.as_str().map(str::to_owned))
        .collect();
    let example = example_vars();
    for (name, s) in services {
        let name = name.as_str().expect("name");
        // Dependencies exist; volumes are declared.
        if let Some(deps) = s["depends_on"].as_mapping() {
            for d in deps.keys() {
                assert!(
                    names.contains(d.as_str().expect("dep")),
                    "{name} depends on {d:?}"
                );
            }
        }
        for v in s["volumes"].as_sequence().into_iter().flatten() {
            let v = v.as_str().expect("volume");
            let src = v.split(':').next().unwrap_or_default();
            assert!(volumes.contains(src), "{name}: volume {src} not declared");
        }
        // Our images read .env; every variable set for them is documented.
        if name != "postgres" {
            assert_eq!(s["env_file"][0].as_str(), Some(".env"), "{name}");
            for k in env_keys(s) {
                assert!(example.contains(&k), "{name} sets {k}, not in .env.example");
            }
        }
    }
    // Variables interpolated from .env are documented too.
    let text = read("docker-compose.yml");
    for part in text.split("${").skip(1) {
        let var: String = part
            .chars()
            .take_while(|c| c.is_ascii_uppercase() || c.is_ascii_digit() || *c == '_')
            .collect();
        assert!(example.contains(&var), "${{{var}}} not in .env.example");
    }
    // The one-shot enrollment runs after the control plane is healthy, and
    // the machines start only once it finished.
    let enroll = service(&c, "enroll");
    assert_eq!(enroll["restart"].as_str(), Some("no"));
    // Every other service comes back after a reboot or a restart of the
    // Docker daemon (a database left down kept the whole service down).
    for (name, s) in services {
        let name = name.as_str().expect("name");
        if name != "enroll" {
            assert_eq!(s["restart"].as_str(), Some("unless-stopped"), "{name}");
        }
    }
    // The strings are their owner's only, and each machine is registered
    // only while its string is missing (a run stopped half way is finished
    // by the next one, not stuck on a name that exists).
    let script = enroll["command"][2]
        .as_str()
        .expect("the enrollment script");
    assert!(script.contains("umask 077"), "{script}");
    for m in ["gateway", "node"] {
        assert!(
            script.contains(&format!("if [ ! -s /enroll/{m}.enroll ]; then")),
            "{m}: {script}"
        );
    }
    assert_eq!(
        enroll["depends_on"]["backend"]["condition"].as_str(),
        Some("service_healthy")
    );
    for m in ["gateway", "node"] {
        let s = service(&c, m);
        assert_eq!(
            s["depends_on"]["enroll"]["condition"].as_str(),
            Some("service_completed_successfully"),
            "{m}"
        );
        let cmd = s["command"].as_sequence().expect("command");
        let line = cmd
            .iter()
            .filter_map(Value::as_str)
            .collect::<Vec<_>>()
            .join(" ");
        assert!(
            line.contains(&format!("httvps-relay {m} --enroll")),
            "{m}: {line}"
        );
        assert!(line.contains(&format!("/enroll/{m}.enroll")), "{m}: {line}");
        // The link between the planes is the compose network.
        let prefix = if m == "gateway" { "GATEWAY" } else { "NODE" };
        assert_eq!(
            env_value(s, &format!("{prefix}_PRIVATE_LINK")).as_deref(),
            Some("true")
        );
        // Credentials on the machine's own volume.
        let creds = env_value(s, &format!("{prefix}_CREDENTIALS")).expect("credentials");
        assert!(creds.starts_with("/var/lib/httvps/"), "{creds}");
        assert!(
            s["volumes"]
                .as_sequence()
                .expect("volumes")
                .iter()
                .any(|v| v.as_str().is_some_and(|v| v.ends_with(":/var/lib/httvps"))),
            "{m} keeps its state on a volume"
        );
    }
    let script = enroll["command"]
        .as_sequence()
        .expect("command")
        .iter()
        .filter_map(Value::as_str)
        .collect::<Vec<_>>()
        .join("\n");
    for step in ["httvps region", "httvps gateway add", "httvps node add"] {
        assert!(script.contains(step), "enroll does not run {step}");
    }
    assert!(script.contains("--port 8388") && script.contains("--host node"));
    // The node is not published; the gateway is; the backend only on the
    // host's loopback.
    assert!(
        service(&c, "node").get("ports").is_none(),
        "the node is published"
    );
    assert!(
        service(&c, "gateway")["ports"][0]
            .as_str()
            .is_some_and(|p| p.ends_with(":8443"))
    );
    let backend_port = service(&c, "backend")["ports"][0].as_str().expect("port");
    assert!(backend_port.starts_with("127.0.0.1:"), "{backend_port}");
    // Inside the containers, servers listen on every interface.
    assert_eq!(
        env_value(service(&c, "backend"), "BACKEND_HOST").as_deref(),
        Some("0.0.0.0")
    );
    assert!(
        env_value(service(&c, "gateway"), "GATEWAY_LISTEN")
            .is_some_and(|l| l.starts_with("0.0.0.0:"))
    );
    // The gateway's written files are on its volume.
    let gw = service(&c, "gateway");
    assert_eq!(
        env_value(gw, "GATEWAY_SELF_SIGNED").as_deref(),
        Some("true")
    );
    for k in ["GATEWAY_TLS_CERT", "GATEWAY_TLS_KEY", "GATEWAY_SPOOL"] {
        assert!(
            env_value(gw, k).is_some_and(|p| p.starts_with("/var/lib/httvps/")),
            "{k} is not on the gateway's volume"
        );
    }
}

#[test]
fn the_dockerfile_builds_locked_from_a_cached_layer_as_a_user() {
    let d = read("Dockerfile");
    let lines: Vec<&str> = d.lines().map(str::trim).collect();
    let at = |needle: &str| {
        lines
            .iter()
            .position(|l| l.contains(needle))
            .unwrap_or_else(|| panic!("Dockerfile has no {needle:?}"))
    };
    // Dependencies are fetched from the manifests before the sources come in.
    let fetch = at("cargo fetch --locked");
    let sources = at("COPY . .");
    assert!(at("COPY Cargo.toml Cargo.lock") < fetch && fetch < sources);
    assert!(at("cargo build --release --locked") > sources);
    // Every workspace member's manifest is in the dependency layer.
    let members = read("Cargo.toml");
    for member in [
        "crates/wire",
        "crates/control",
        "crates/dataplane",
        "crates/netlab",
    ] {
        assert!(members.contains(member));
        assert!(
            d.contains(&format!("COPY {member}/Cargo.toml {member}/")),
            "{member}"
        );
    }
    // Runs as a user that is not root, owning its state directories.
    let user = lines
        .iter()
        .rev()
        .find(|l| l.starts_with("USER "))
        .expect("USER");
    assert!(!user.ends_with("root") && !user.ends_with(" 0"), "{user}");
    assert!(d.contains("chown nobody:nogroup /var/lib/httvps"));
    assert!(d.contains("BACKEND_HOST=0.0.0.0"));
    // The build context leaves out build output, local settings and data.
    let ignore = read(".dockerignore");
    let ignored: BTreeSet<&str> = ignore.lines().map(str::trim).collect();
    for must in ["target/", ".env", "data/"] {
        assert!(ignored.contains(must), ".dockerignore misses {must}");
    }
    assert!(ignored.contains("!.env.example"));
}

/// The Dockerfile's build stage up to `COPY . .`, replayed in an empty
/// directory: its `COPY` lines copy the named files from the repository,
/// its `RUN` lines run in `sh` (cargo offline: the registry cache of this
/// machine stands in for the network). The dependency layer must build
/// from the manifests alone, as `docker build` runs it.
#[test]
fn the_dockerfiles_dependency_layer_runs_from_the_manifests_alone() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    // The cache must hold every locked package, for every target, as the
    // layer's `cargo fetch` asks (a build fetches only its own platform's):
    // fetched here, from the registry, when a fresh machine lacks some.
    let fetched = std::process::Command::new("cargo")
        .args(["fetch", "--locked"])
        .current_dir(root)
        .env_remove("CARGO_TARGET_DIR")
        .output()
        .expect("cargo fetch");
    assert!(
        fetched.status.success(),
        "cargo fetch --locked in the repository\n{}",
        String::from_utf8_lossy(&fetched.stderr)
    );
    let d = read("Dockerfile");
    // Join continuation lines, then take the build stage's steps.
    let joined = d.replace("\\\n", " ");
    let steps: Vec<&str> = joined
        .lines()
        .map(str::trim)
        .skip_while(|l| !l.starts_with("WORKDIR /src"))
        .skip(1)
        .take_while(|l| *l != "COPY . .")
        .filter(|l| l.starts_with("COPY ") || l.starts_with("RUN "))
        .collect();
    assert!(steps.iter().any(|s| s.contains("cargo fetch")), "{steps:?}");
    let dir = std::env::temp_dir().join(format!("httvps-docker-layer-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("dir");
    for step in &steps {
        if let Some(args) = step.strip_prefix("COPY ") {
            let parts: Vec<&str> = args.split_whitespace().collect();
            let (dest, sources) = parts.split_last().expect("COPY has a destination");
            for src in sources {
                let to = if dest.ends_with('/') {
                    dir.join(dest)
                        .join(Path::new(src).file_name().expect("name"))
                } else {
                    dir.join(dest)
                };
                std::fs::create_dir_all(to.parent().expect("parent")).expect("mkdir");
                std::fs::copy(root.join(src), &to).unwrap_or_else(|e| panic!("{src}: {e}"));
            }
        } else if let Some(cmd) = step.strip_prefix("RUN ") {
            let out = std::process::Command::new("sh")
                .args(["-ec", cmd])
                .current_dir(&dir)
                .env("CARGO_NET_OFFLINE", "true")
                .env_remove("CARGO_TARGET_DIR")
                .output()
                .expect("sh");
            assert!(
                out.status.success(),
                "RUN {cmd}\n{}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
    }
    let _ = std::fs::remove_dir_all(&dir);
}

/// The compose file's enrollment step, run for real (its script, with the
/// volume's path replaced, against an SQLite database and this build's
/// `httvps`): a run that stopped right after `gateway add`, before its
/// rename, is finished by the next one, whose strings are their owner's
/// only; a run after that does nothing.
#[test]
fn the_enrollment_step_finishes_a_run_that_stopped_half_way() {
    let c = compose();
    let script = service(&c, "enroll")["command"][2]
        .as_str()
        .expect("the enrollment script");
    let dir = std::env::temp_dir().join(format!("httvps-enroll-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("dir");
    let volume = dir.join("enroll");
    std::fs::create_dir_all(&volume).expect("volume");
    let script = script
        .replace("$$", "$")
        .replace("/enroll/", &format!("{}/", volume.display()));
    let httvps = Path::new(env!("CARGO_BIN_EXE_httvps"));
    let path = format!(
        "{}:{}",
        httvps.parent().expect("bin dir").display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let run = |args: &[&str]| {
        std::process::Command::new(args[0])
            .args(&args[1..])
            .env("PATH", &path)
            .env(
                "BACKEND_DB_DSN",
                format!("sqlite://{}", dir.join("db.sqlite").display()),
            )
            .env("BACKEND_PUBLIC_URL", "http://backend:8000")
            .env(
                "BACKEND_SECRET_KEY",
                "a-test-secret-key-of-at-least-32-bytes-0123456789",
            )
            .env("HTTVPS_REGION", "local")
            .env("HTTVPS_GATEWAY_PUBLIC_URL", "https://localhost")
            .output()
            .expect("run")
    };
    assert!(run(&["httvps", "migrate"]).status.success());
    assert!(
        run(&["httvps", "region", "--code", "local", "--name", "local"])
            .status
            .success()
    );
    // The first run stopped right after printing the gateway's string.
    let out = run(&[
        "httvps",
        "gateway",
        "add",
        "--region",
        "local",
        "--name",
        "gateway",
        "--public-url",
        "https://localhost",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let printed = out.stdout;
    std::fs::write(volume.join("gateway.enroll.new"), &printed).expect("the string");
    let out = run(&["sh", "-ec", &script]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for m in ["gateway", "node"] {
        let file = volume.join(format!("{m}.enroll"));
        let string = std::fs::read_to_string(&file).expect("the string");
        assert!(string.trim().len() > 20, "{m}: {string:?}");
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&file).expect("meta").permissions().mode();
            // The stopped run's file is the test's; the node's is the
            // script's.
            if m == "node" {
                assert_eq!(mode & 0o777, 0o600, "{m}: {mode:o}");
            }
        }
    }
    assert_eq!(
        std::fs::read(volume.join("gateway.enroll")).expect("gateway"),
        printed,
        "the stopped run's string is kept"
    );
    // Once both are there, nothing more.
    let out = run(&["sh", "-ec", &script]);
    assert!(
        out.status.success() && out.stderr.is_empty(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let _ = std::fs::remove_dir_all(&dir);
}
