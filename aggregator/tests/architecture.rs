//! The layers of ARCHITECTURE.md, held against the code: every `crate::` import in
//! `aggregator/src` points to the importing module's own layer or a lower one, modules of one
//! layer do not import each other in a cycle, and every top-level module is in the table.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// Top-level module -> layer, from the table under "## Layers" in ARCHITECTURE.md.
fn layers() -> BTreeMap<String, u32> {
    let doc = std::fs::read_to_string(root().join("ARCHITECTURE.md")).expect("ARCHITECTURE.md");
    let mut layers = BTreeMap::new();
    for line in doc.lines().filter(|l| l.starts_with("| ")) {
        let cells: Vec<&str> = line.split('|').map(str::trim).collect();
        let Ok(layer) = cells[1].parse::<u32>() else {
            continue;
        };
        for module in cells[3].split(',') {
            let module = module.trim().trim_matches('`');
            assert!(
                layers.insert(module.to_owned(), layer).is_none(),
                "{module} is in two layers"
            );
        }
    }
    assert!(!layers.is_empty(), "no layer table in ARCHITECTURE.md");
    layers
}

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("workspace root")
        .to_path_buf()
}

fn src() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("src")
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).expect("read src") {
        let path = entry.expect("dir entry").path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// The top-level module a file belongs to (`None` for the crate roots).
fn module_of(file: &Path) -> Option<String> {
    let rel = file.strip_prefix(src()).ok()?;
    let first = rel.components().next()?.as_os_str().to_str()?;
    let name = first.trim_end_matches(".rs");
    (!matches!(name, "lib" | "main")).then(|| name.to_owned())
}

/// The top-level modules a file names through `crate::` in code (comments left out).
fn imports(file: &Path) -> BTreeSet<String> {
    let text = std::fs::read_to_string(file).expect("read source");
    let mut out = BTreeSet::new();
    for line in text.lines() {
        let code = line.split("//").next().unwrap_or("");
        let mut rest = code;
        while let Some(at) = rest.find("crate::") {
            rest = &rest[at + "crate::".len()..];
            if let Some(group) = rest.strip_prefix('{') {
                let end = group.find('}').unwrap_or(group.len());
                for name in group[..end].split(',') {
                    let name = name.trim().split("::").next().unwrap_or("").trim();
                    if !name.is_empty() {
                        out.insert(name.to_owned());
                    }
                }
            } else {
                let name: String = rest
                    .chars()
                    .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                    .collect();
                if !name.is_empty() {
                    out.insert(name);
                }
            }
        }
    }
    out
}

/// Every module -> the modules it imports (itself left out).
fn graph() -> BTreeMap<String, BTreeSet<String>> {
    let mut files = Vec::new();
    rust_files(&src(), &mut files);
    let mut graph: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for file in files {
        let Some(module) = module_of(&file) else {
            continue;
        };
        let deps = graph.entry(module.clone()).or_default();
        deps.extend(imports(&file).into_iter().filter(|d| *d != module));
    }
    graph
}

#[test]
fn every_module_is_in_the_layer_table() {
    let layers = layers();
    let missing: Vec<_> = graph()
        .into_keys()
        .filter(|m| !layers.contains_key(m))
        .collect();
    assert!(
        missing.is_empty(),
        "add to ARCHITECTURE.md's layers: {missing:?}"
    );
}

#[test]
fn no_module_imports_from_a_layer_above_it() {
    let layers = layers();
    let mut upward = Vec::new();
    for (module, deps) in graph() {
        let Some(&own) = layers.get(&module) else {
            continue;
        };
        for dep in deps {
            match layers.get(&dep) {
                Some(&layer) if layer > own => {
                    upward.push(format!("{module} (layer {own}) uses {dep} (layer {layer})"))
                }
                Some(_) => {}
                None => upward.push(format!("{module} uses {dep}, which is in no layer")),
            }
        }
    }
    assert!(
        upward.is_empty(),
        "imports against the layers:\n{}",
        upward.join("\n")
    );
}

#[test]
fn modules_of_one_layer_do_not_import_each_other_in_a_cycle() {
    let layers = layers();
    let graph = graph();
    // Depth-first search over the same-layer edges.
    fn visit(
        m: &str,
        graph: &BTreeMap<String, BTreeSet<String>>,
        layers: &BTreeMap<String, u32>,
        path: &mut Vec<String>,
        done: &mut BTreeSet<String>,
    ) -> Option<Vec<String>> {
        if let Some(at) = path.iter().position(|p| p == m) {
            return Some(path[at..].to_vec());
        }
        if !done.insert(m.to_owned()) {
            return None;
        }
        path.push(m.to_owned());
        for dep in graph.get(m).into_iter().flatten() {
            if layers.get(dep) == layers.get(m) {
                if let Some(cycle) = visit(dep, graph, layers, path, done) {
                    return Some(cycle);
                }
            }
        }
        path.pop();
        None
    }
    let mut done = BTreeSet::new();
    for module in graph.keys() {
        let cycle = visit(module, &graph, &layers, &mut Vec::new(), &mut done);
        assert!(cycle.is_none(), "a cycle within a layer: {cycle:?}");
    }
}

#[test]
fn the_check_sees_grouped_and_plain_imports() {
    let dir = std::env::temp_dir().join(format!("architecture-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("x.rs");
    std::fs::write(
        &file,
        "use crate::{api, broker::connect};\nlet x = crate::store::Store::x(); // crate::wal\n",
    )
    .unwrap();
    let got: Vec<String> = imports(&file).into_iter().collect();
    std::fs::remove_dir_all(&dir).unwrap();
    assert_eq!(got, ["api", "broker", "store"]);
}
