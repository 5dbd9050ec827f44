//! The layering rule, enforced: imports run one way (see the crate docs).
//!
//! Each top-level module has a layer; a module may use only modules of a
//! lower layer. Siblings (same layer: `kafka` and `postgres`, `row` and
//! `config`) never use each other. The test reads every `crate::<module>` path outside test code.
//!
//! The test fails on any edge against the rule and on any import cycle.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

/// Layer of each top-level module: lowest first. See the crate docs for
/// what each layer holds.
const LAYERS: &[(&str, u8)] = &[
    // Plain data and pure logic.
    ("mapping", 0),
    ("format", 0),
    ("row", 1),
    ("config", 1),
    ("model", 2),
    // Depends only on plain data.
    ("telemetry", 3),
    // The sans-IO state machine and its ports.
    ("pipeline", 4),
    // The two sides, which never import each other.
    ("kafka", 5),
    ("postgres", 5),
    ("registry", 5),
    // Wires it all.
    ("app", 6),
];

/// Top-level module → the top-level modules its non-test code uses.
fn edges(src: &Path) -> BTreeMap<String, BTreeSet<String>> {
    let mut edges: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    let mut stack = vec![src.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).expect("read src") {
            let path = entry.expect("dir entry").path();
            if path.is_dir() {
                stack.push(path);
                continue;
            }
            if path.extension().is_none_or(|e| e != "rs") {
                continue;
            }
            let rel = path.strip_prefix(src).expect("under src");
            let top = rel
                .components()
                .next()
                .and_then(|c| c.as_os_str().to_str())
                .map(|s| s.trim_end_matches(".rs").to_owned())
                .expect("a name");
            if matches!(top.as_str(), "lib" | "main" | "layering") {
                continue;
            }
            let text = std::fs::read_to_string(&path).expect("read source");
            let code = non_test_code(&text);
            for (at, _) in code.match_indices("crate::") {
                let used: String = code[at + 7..]
                    .chars()
                    .take_while(|c| c.is_ascii_lowercase() || *c == '_')
                    .collect();
                let mut used = vec![used];
                if used[0].is_empty() && code[at + 7..].starts_with('{') {
                    // `crate::{a::X, b}`: each top-level name in the group.
                    let group = &code[at + 8..code[at..].find('}').map_or(code.len(), |e| at + e)];
                    used = group
                        .split(',')
                        .map(|item| item.trim().split("::").next().unwrap_or("").to_owned())
                        .collect();
                }
                for used in used {
                    let is_module = !used.is_empty() && used.chars().all(|c| c.is_ascii_lowercase() || c == '_');
                    if is_module && used != top {
                        edges.entry(top.clone()).or_default().insert(used);
                    }
                }
            }
        }
    }
    edges
}

/// A file's code outside tests and comments: a `#[cfg(test)] mod x;` line
/// is left out, and the file is cut at any other `#[cfg(test)]` item (test
/// modules and helpers come last). Comments (docs linking to a higher
/// layer) are not imports.
fn non_test_code(text: &str) -> String {
    let mut out = Vec::new();
    let mut lines = text.lines().peekable();
    while let Some(line) = lines.next() {
        if line.trim() == "#[cfg(test)]" {
            let next = lines.peek().map(|l| l.trim()).unwrap_or("");
            if next.starts_with("mod ") && next.ends_with(';') || next.starts_with("pub mod ") && next.ends_with(';') {
                lines.next();
                continue;
            }
            break;
        }
        if !line.trim_start().starts_with("//") {
            out.push(line);
        }
    }
    out.join("\n")
}

/// Strongly connected groups of more than one module (import cycles).
fn cycles(edges: &BTreeMap<String, BTreeSet<String>>) -> Vec<BTreeSet<String>> {
    let reaches = |from: &str, to: &str| {
        let mut seen = BTreeSet::new();
        let mut stack = vec![from.to_owned()];
        while let Some(m) = stack.pop() {
            for next in edges.get(&m).into_iter().flatten() {
                if next == to {
                    return true;
                }
                if seen.insert(next.clone()) {
                    stack.push(next.clone());
                }
            }
        }
        false
    };
    let mut groups: Vec<BTreeSet<String>> = Vec::new();
    for m in edges.keys() {
        if groups.iter().any(|g| g.contains(m)) {
            continue;
        }
        let group: BTreeSet<String> = edges
            .keys()
            .filter(|o| *o == m || (reaches(m, o) && reaches(o, m)))
            .cloned()
            .collect();
        if group.len() > 1 {
            groups.push(group);
        }
    }
    groups
}

#[test]
fn imports_run_one_way() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let edges = edges(&src);
    let layer = |m: &str| LAYERS.iter().find(|(n, _)| *n == m).map(|(_, l)| *l);
    let mut violations = BTreeSet::new();
    for (from, used) in &edges {
        let from_layer = layer(from).unwrap_or_else(|| panic!("module `{from}` has no layer in LAYERS"));
        for to in used {
            let to_layer = layer(to).unwrap_or_else(|| panic!("module `{to}` has no layer in LAYERS"));
            if to_layer >= from_layer {
                violations.insert((from.as_str(), to.as_str()));
            }
        }
    }
    let cycles = cycles(&edges);
    assert!(
        violations.is_empty() && cycles.is_empty(),
        "imports against the layering rule: {violations:?}; import cycles: {cycles:?}"
    );
}

#[test]
fn the_row_encoder_and_the_core_stand_alone() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let edges = edges(&src);
    assert_eq!(
        edges.get("row").cloned().unwrap_or_default(),
        BTreeSet::from(["mapping".to_owned()]),
        "row uses only mapping"
    );
    assert!(
        edges.get("mapping").is_none_or(|e| e.is_empty()),
        "mapping uses nothing"
    );
    // The sans-IO core and the decisions around it: no Kafka client,
    // database driver or runtime, so the simulation drives them as they are.
    for file in [
        "pipeline/core.rs",
        "pipeline/buffer.rs",
        "pipeline/backpressure.rs",
        "pipeline/breaker.rs",
        "pipeline/flush_policy.rs",
        "pipeline/sim.rs",
    ] {
        let text = std::fs::read_to_string(src.join(file)).expect("a decision file");
        let code = non_test_code(&text);
        for io in ["rdkafka", "sqlx", "tokio"] {
            let used = code
                .lines()
                .any(|l| l.contains(&format!("{io}::")) || l.contains(&format!("use {io}")));
            assert!(!used, "{file} uses {io}");
        }
    }
}
