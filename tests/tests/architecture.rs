//! The rooms of profiler/src import each other without cycles (ARCHITECTURE.md's floors), and
//! every file ARCHITECTURE.md names exists.

use std::{
    collections::{BTreeMap, BTreeSet},
    path::{Path, PathBuf},
};

fn src() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../profiler/src")
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for e in std::fs::read_dir(dir).unwrap().flatten() {
        let p = e.path();
        if p.is_dir() {
            rust_files(&p, out);
        } else if p.extension().is_some_and(|x| x == "rs") {
            out.push(p);
        }
    }
}

/// The top-level room a file belongs to: `trace/run.rs` -> `trace`, `fit.rs` -> `fit`.
fn room(file: &Path) -> String {
    let rel = file.strip_prefix(src()).unwrap();
    let first = rel
        .components()
        .next()
        .unwrap()
        .as_os_str()
        .to_string_lossy();
    first.trim_end_matches(".rs").to_string()
}

/// Rooms a file names through `crate::<room>`, outside its tests and comments.
fn imports(text: &str, rooms: &BTreeSet<String>) -> BTreeSet<String> {
    let code = text.split("#[cfg(test)]").next().unwrap_or(text);
    let mut out = BTreeSet::new();
    for line in code.lines() {
        let line = line.split("//").next().unwrap_or("");
        let mut rest = line;
        while let Some(i) = rest.find("crate::") {
            rest = &rest[i + "crate::".len()..];
            let name: String = rest
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                .collect();
            if rooms.contains(&name) {
                out.insert(name);
            }
        }
    }
    out
}

#[test]
fn rooms_import_each_other_without_cycles() {
    let mut files = vec![];
    rust_files(&src(), &mut files);
    let rooms: BTreeSet<String> = files
        .iter()
        .map(|f| room(f))
        .filter(|r| r != "lib" && r != "main")
        .collect();
    let mut edges: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for f in &files {
        let r = room(f);
        if r == "lib" || r == "main" {
            continue;
        }
        let text = std::fs::read_to_string(f).unwrap();
        for to in imports(&text, &rooms) {
            if to != r {
                edges.entry(r.clone()).or_default().insert(to);
            }
        }
    }
    assert!(edges.len() > 10, "the scan found too little: {edges:?}");
    // Depth-first search for a back edge; report the cycle it closes.
    fn visit(
        n: &str,
        edges: &BTreeMap<String, BTreeSet<String>>,
        state: &mut BTreeMap<String, u8>,
        path: &mut Vec<String>,
    ) -> Option<Vec<String>> {
        state.insert(n.to_string(), 1);
        path.push(n.to_string());
        for m in edges.get(n).into_iter().flatten() {
            match state.get(m.as_str()).copied().unwrap_or(0) {
                1 => {
                    let at = path.iter().position(|p| p == m).unwrap();
                    let mut c = path[at..].to_vec();
                    c.push(m.clone());
                    return Some(c);
                }
                0 => {
                    if let Some(c) = visit(m, edges, state, path) {
                        return Some(c);
                    }
                }
                _ => {}
            }
        }
        path.pop();
        state.insert(n.to_string(), 2);
        None
    }
    let mut state = BTreeMap::new();
    for r in &rooms {
        if state.get(r.as_str()).copied().unwrap_or(0) == 0
            && let Some(c) = visit(r, &edges, &mut state, &mut vec![])
        {
            panic!("import cycle between rooms: {}", c.join(" -> "));
        }
    }
}

#[test]
fn every_file_architecture_md_names_exists() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let text = std::fs::read_to_string(root.join("ARCHITECTURE.md")).unwrap();
    let mut checked = 0;
    for quoted in text.split('`').skip(1).step_by(2) {
        let q = quoted.trim_end_matches('/');
        let looks_like_path = (q.ends_with(".rs") || quoted.ends_with('/'))
            && !q.contains(' ')
            && !q.contains('<')
            && !q.contains("::");
        if !looks_like_path {
            continue;
        }
        let found = [
            root.join(q),
            root.join("profiler/src").join(q),
            root.join("profiler-ebpf/src").join(q),
            root.join("profiler-common/src").join(q),
        ]
        .iter()
        .any(|p| p.exists())
            // A file named inside its room's row ("`qemu`, `vm`" are shown bare).
            || walk_has(&root.join("profiler/src"), q);
        assert!(
            found,
            "ARCHITECTURE.md names `{quoted}`, which does not exist"
        );
        checked += 1;
    }
    assert!(checked > 20, "{checked} paths checked");
}

fn walk_has(dir: &Path, name: &str) -> bool {
    std::fs::read_dir(dir).unwrap().flatten().any(|e| {
        let p = e.path();
        p.ends_with(name) || (p.is_dir() && walk_has(&p, name))
    })
}
