//! The code's shape, checked: the crates depend on each other only as the
//! README's code map says (the data plane never on the control plane), no
//! two modules import each other (directly or round a longer loop), and no
//! source file grows past the size a reader can hold in mind.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

const ROOT: &str = env!("CARGO_MANIFEST_DIR");

/// Longest source file allowed, in lines.
const MAX_LINES: usize = 500;

/// The workspace's packages and, for each, every package it depends on
/// (transitively, normal dependencies only), from `cargo metadata`.
fn dependency_closure() -> BTreeMap<String, BTreeSet<String>> {
    // Resolving for this machine only: the other platforms' crates need
    // not be downloaded.
    let rustc = std::env::var("RUSTC").unwrap_or_else(|_| "rustc".to_owned());
    let version = std::process::Command::new(rustc)
        .arg("-vV")
        .output()
        .expect("running rustc -vV");
    let host = String::from_utf8_lossy(&version.stdout)
        .lines()
        .find_map(|l| l.strip_prefix("host: ").map(str::to_owned))
        .expect("rustc names its host");
    let out = std::process::Command::new(env!("CARGO"))
        .args([
            "metadata",
            "--format-version",
            "1",
            "--filter-platform",
            &host,
        ])
        .current_dir(ROOT)
        .output()
        .expect("running cargo metadata");
    assert!(
        out.status.success(),
        "cargo metadata failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let meta: serde_json::Value = serde_json::from_slice(&out.stdout).expect("metadata JSON");
    let name_of: BTreeMap<String, String> = meta["packages"]
        .as_array()
        .expect("packages")
        .iter()
        .map(|p| {
            (
                p["id"].as_str().expect("id").to_owned(),
                p["name"].as_str().expect("name").to_owned(),
            )
        })
        .collect();
    // Normal (non-dev, non-build) edges of the resolved graph.
    let mut direct: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for node in meta["resolve"]["nodes"].as_array().expect("resolve") {
        let from = name_of[node["id"].as_str().expect("id")].clone();
        let entry = direct.entry(from).or_default();
        for dep in node["deps"].as_array().expect("deps") {
            let normal = dep["dep_kinds"]
                .as_array()
                .expect("dep_kinds")
                .iter()
                .any(|k| k["kind"].is_null());
            if normal {
                entry.insert(name_of[dep["pkg"].as_str().expect("pkg")].clone());
            }
        }
    }
    let members: Vec<String> = meta["workspace_members"]
        .as_array()
        .expect("members")
        .iter()
        .map(|id| name_of[id.as_str().expect("member id")].clone())
        .collect();
    members
        .into_iter()
        .map(|m| {
            let mut seen = BTreeSet::new();
            let mut stack = vec![m.clone()];
            while let Some(p) = stack.pop() {
                for d in direct.get(&p).into_iter().flatten() {
                    if seen.insert(d.clone()) {
                        stack.push(d.clone());
                    }
                }
            }
            (m, seen)
        })
        .collect()
}

#[test]
fn crates_depend_on_each_other_only_as_the_code_map_says() {
    let deps = dependency_closure();
    let ours = [
        "httvps",
        "httvps-wire",
        "httvps-control",
        "httvps-dataplane",
    ];
    for name in ours {
        assert!(deps.contains_key(name), "{name} is not a workspace member");
    }
    let internal = |p: &str| -> BTreeSet<&str> {
        deps[p]
            .iter()
            .map(String::as_str)
            .filter(|d| ours.contains(d))
            .collect()
    };
    assert_eq!(
        internal("httvps-dataplane"),
        BTreeSet::from(["httvps-wire"]),
        "the data plane may depend on the wire crate only, never on the control plane"
    );
    assert_eq!(
        internal("httvps-control"),
        BTreeSet::from(["httvps-wire"]),
        "the control plane may depend on the wire crate only"
    );
    assert!(
        internal("httvps-wire").is_empty(),
        "the wire crate depends on no other crate of ours"
    );
    for heavy in ["diesel", "axum", "hyper", "tokio", "async-graphql"] {
        assert!(
            !deps["httvps-wire"].contains(heavy),
            "the wire crate must not pull in {heavy}"
        );
    }
    assert!(
        !deps["httvps-dataplane"].contains("diesel"),
        "the data plane must not pull in storage"
    );
}

/// Every `.rs` file under `dir`, recursively.
fn rust_files(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_owned()];
    while let Some(d) = stack.pop() {
        for entry in std::fs::read_dir(&d).expect("read_dir").flatten() {
            let p = entry.path();
            if p.is_dir() {
                stack.push(p);
            } else if p.extension().is_some_and(|e| e == "rs") {
                out.push(p);
            }
        }
    }
    out.sort();
    out
}

/// The source roots of our crates' libraries.
fn crate_sources() -> Vec<PathBuf> {
    let mut roots = vec![Path::new(ROOT).join("src")];
    for entry in std::fs::read_dir(Path::new(ROOT).join("crates")).expect("crates/") {
        let src = entry.expect("entry").path().join("src");
        if src.is_dir() {
            roots.push(src);
        }
    }
    roots
}

#[test]
fn no_source_file_is_longer_than_a_reader_can_hold() {
    let mut long = Vec::new();
    for root in crate_sources() {
        for file in rust_files(&root) {
            let lines = std::fs::read_to_string(&file)
                .expect("read")
                .lines()
                .count();
            if lines > MAX_LINES {
                long.push(format!("{} ({lines} lines)", file.display()));
            }
        }
    }
    assert!(
        long.is_empty(),
        "files over {MAX_LINES} lines: split them along their seams: {long:#?}"
    );
}

/// The module path of a file under a crate's `src` (`graphql/ws.rs` →
/// `["graphql", "ws"]`; `lib.rs`, `main.rs` and `bin/*` are the root).
fn module_of(src: &Path, file: &Path) -> Vec<String> {
    let rel = file.strip_prefix(src).expect("under src");
    let mut parts: Vec<String> = rel
        .iter()
        .map(|c| c.to_string_lossy().trim_end_matches(".rs").to_owned())
        .collect();
    if parts.first().is_some_and(|p| p == "bin") {
        return Vec::new();
    }
    if parts
        .last()
        .is_some_and(|p| p == "mod" || p == "lib" || p == "main")
    {
        parts.pop();
    }
    parts
}

/// Paths named in a file as `crate::a::b` or `super::a` (outside comments),
/// made absolute.
fn references(module: &[String], text: &str) -> Vec<Vec<String>> {
    let mut out = Vec::new();
    for line in text.lines() {
        let code = line.split("//").next().unwrap_or("");
        let bytes = code.as_bytes();
        let mut i = 0;
        while i < code.len() {
            let rest = &code[i..];
            let prefix_ok =
                i == 0 || !(bytes[i - 1].is_ascii_alphanumeric() || bytes[i - 1] == b'_');
            let (base, skip): (Vec<String>, usize) = if prefix_ok && rest.starts_with("crate::") {
                (Vec::new(), 7)
            } else if prefix_ok && rest.starts_with("super::") {
                // In `a/b.rs` and in `a/b/mod.rs` (module a::b), super is `a`.
                let mut parent = module.to_vec();
                parent.pop();
                (parent, 7)
            } else {
                i += rest.chars().next().map_or(1, char::len_utf8);
                continue;
            };
            let tail = &rest[skip..];
            let mut path = base;
            let mut segments = Vec::new();
            for seg in tail.split("::") {
                let ident: String = seg
                    .chars()
                    .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                    .collect();
                if ident.is_empty() {
                    // `{a, b}` groups: take each name.
                    if let Some(group) = seg.strip_prefix('{') {
                        let names: Vec<String> = group
                            .split([',', '}'])
                            .map(|n| {
                                n.trim()
                                    .split("::")
                                    .next()
                                    .unwrap_or("")
                                    .chars()
                                    .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                                    .collect()
                            })
                            .filter(|n: &String| !n.is_empty() && n != "self")
                            .collect();
                        for n in names {
                            let mut p = path.clone();
                            p.extend(segments.iter().cloned());
                            p.push(n);
                            out.push(p);
                        }
                    }
                    break;
                }
                let done = ident.len() != seg.len();
                segments.push(ident);
                if done {
                    break;
                }
            }
            path.extend(segments);
            out.push(path);
            i += skip;
        }
    }
    out
}

/// Cycles among the children of each module: `a` → `b` when code in the
/// subtree of child `a` names something in the subtree of sibling `b`.
fn module_cycles(src: &Path) -> Vec<String> {
    let files = rust_files(src);
    let modules: BTreeSet<Vec<String>> = files.iter().map(|f| module_of(src, f)).collect();
    // Resolve a path to the deepest module that exists.
    let resolve = |path: &[String]| -> Vec<String> {
        let mut best = Vec::new();
        for n in 1..=path.len() {
            if modules.contains(&path[..n]) {
                best = path[..n].to_vec();
            }
        }
        best
    };
    let mut edges: BTreeSet<(Vec<String>, Vec<String>)> = BTreeSet::new();
    for f in &files {
        let module = module_of(src, f);
        let text = std::fs::read_to_string(f).expect("read");
        for r in references(&module, &text) {
            let target = resolve(&r);
            if target != module {
                edges.insert((module.clone(), target));
            }
        }
    }
    let mut cycles = Vec::new();
    for parent in &modules {
        let children: BTreeSet<Vec<String>> = modules
            .iter()
            .filter(|m| m.len() == parent.len() + 1 && m.starts_with(parent))
            .cloned()
            .collect();
        let child_of = |m: &Vec<String>| -> Option<Vec<String>> {
            (m.len() > parent.len() && m.starts_with(parent)).then(|| m[..=parent.len()].to_vec())
        };
        let mut graph: BTreeMap<Vec<String>, BTreeSet<Vec<String>>> = BTreeMap::new();
        for (from, to) in &edges {
            if let (Some(a), Some(b)) = (child_of(from), child_of(to))
                && a != b
                && children.contains(&a)
                && children.contains(&b)
            {
                graph.entry(a).or_default().insert(b);
            }
        }
        // A cycle exists when some child reaches itself.
        for start in graph.keys() {
            let mut seen = BTreeSet::new();
            let mut stack: Vec<Vec<String>> = graph[start].iter().cloned().collect();
            while let Some(n) = stack.pop() {
                if &n == start {
                    cycles.push(format!(
                        "{} (under {})",
                        start.join("::"),
                        parent.join("::")
                    ));
                    break;
                }
                if seen.insert(n.clone()) {
                    stack.extend(graph.get(&n).into_iter().flatten().cloned());
                }
            }
        }
    }
    cycles
}

#[test]
fn no_two_modules_import_each_other() {
    let mut all = Vec::new();
    for src in crate_sources() {
        for c in module_cycles(&src) {
            all.push(format!("{}: {c}", src.display()));
        }
    }
    assert!(
        all.is_empty(),
        "modules on an import cycle (each reaches itself through sibling modules): {all:#?}"
    );
}

#[test]
fn the_cycle_finder_finds_cycles() {
    let dir = std::env::temp_dir().join(format!("httvps-structure-{}", std::process::id()));
    let src = dir.join("src");
    std::fs::create_dir_all(src.join("b")).expect("mkdir");
    std::fs::write(src.join("lib.rs"), "pub mod a;\npub mod b;\npub mod c;\n").expect("write");
    std::fs::write(src.join("a.rs"), "use crate::b::thing;\n").expect("write");
    std::fs::write(src.join("b/mod.rs"), "pub mod inner;\n").expect("write");
    std::fs::write(src.join("b/inner.rs"), "use crate::c::{x, y};\n").expect("write");
    std::fs::write(src.join("c.rs"), "// crate::a is only mentioned\n").expect("write");
    assert!(module_cycles(&src).is_empty(), "a -> b -> c is no cycle");
    std::fs::write(src.join("c.rs"), "fn f() { super::a::go() }\n").expect("write");
    let found = module_cycles(&src);
    let _ = std::fs::remove_dir_all(&dir);
    assert!(
        found.iter().any(|c| c.starts_with("a ")),
        "a -> b -> c -> a is a cycle: {found:?}"
    );
}
