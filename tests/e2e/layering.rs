//! The files of each crate import each other one way: no file reaches
//! itself through `crate::` (or `super::`) paths. A cycle makes every file
//! in it depend on all the others, so none can be read, tested or moved
//! alone; docs/architecture.md lists the layers this keeps.
//!
//! A file's imports are the paths it names, anywhere outside its
//! `#[cfg(test)] mod tests` block: a path names the deepest module file it
//! reaches (`crate::db::writer::Writer` names `db/writer.rs`).

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

#[test]
fn modules_import_one_way() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let mut sources = vec![root.join("host/src")];
    let mut crates: Vec<PathBuf> = std::fs::read_dir(root.join("crates"))
        .expect("the crates folder")
        .map(|entry| entry.expect("a crates entry").path().join("src"))
        .filter(|src| src.is_dir())
        .collect();
    crates.sort();
    sources.extend(crates);
    let mut found = Vec::new();
    for src in &sources {
        let imports = imports(src);
        for cycle in cycles(&imports) {
            found.push(format!("{}: {}", src.strip_prefix(&root).unwrap_or(src).display(), cycle.join(" -> ")));
        }
    }
    assert!(found.is_empty(), "files import each other in a circle:\n{}", found.join("\n"));
}

/// Each module of the crate under `src` (by path: `db::writer`; `lib.rs`
/// is the empty path) and the modules it names.
fn imports(src: &Path) -> BTreeMap<String, BTreeSet<String>> {
    let mut files = BTreeMap::new();
    collect(src, src, &mut files);
    let mut imports = BTreeMap::new();
    for (module, path) in &files {
        let text = std::fs::read_to_string(path).expect("a readable source file");
        let text = without_tests(&text);
        let mut named = BTreeSet::new();
        for (anchor, rest) in paths(text) {
            let base = match anchor {
                "crate" => Vec::new(),
                _ => match parent(module) {
                    Some(parent) => parent,
                    None => continue,
                },
            };
            let mut segments = base;
            segments.extend(rest);
            // The deepest module file the path reaches.
            for len in (1..=segments.len()).rev() {
                let target = segments[..len].join("::");
                if files.contains_key(&target) {
                    if target != *module {
                        named.insert(target);
                    }
                    break;
                }
            }
        }
        imports.insert(module.clone(), named);
    }
    imports
}

fn collect(src: &Path, dir: &Path, files: &mut BTreeMap<String, PathBuf>) {
    for entry in std::fs::read_dir(dir).expect("a readable source folder") {
        let path = entry.expect("a folder entry").path();
        if path.is_dir() {
            collect(src, &path, files);
        } else if path.extension().is_some_and(|e| e == "rs") {
            // A binary beside a library is a crate of its own, which reaches
            // the library by its name.
            if dir == src && path.file_name().is_some_and(|n| n == "main.rs") && src.join("lib.rs").exists() {
                continue;
            }
            let relative = path.strip_prefix(src).unwrap().with_extension("");
            let mut parts: Vec<String> = relative.iter().map(|p| p.to_string_lossy().into_owned()).collect();
            if matches!(parts.last().map(String::as_str), Some("mod" | "lib" | "main")) {
                parts.pop();
            }
            files.insert(parts.join("::"), path);
        }
    }
}

/// The module `super` means in `module` (none in the crate's root).
fn parent(module: &str) -> Option<Vec<String>> {
    let mut parts: Vec<String> = module.split("::").filter(|p| !p.is_empty()).map(str::to_owned).collect();
    parts.pop()?;
    Some(parts)
}

/// The text before the file's `#[cfg(test)] mod tests {` block, which
/// closes the file by convention.
fn without_tests(text: &str) -> &str {
    let mut from = 0;
    while let Some(at) = text[from..].find("#[cfg(test)]") {
        let start = from + at;
        let rest = text[start + "#[cfg(test)]".len()..].trim_start();
        if let Some(rest) = rest.strip_prefix("mod tests")
            && rest.trim_start().starts_with('{')
        {
            return &text[..start];
        }
        from = start + 1;
    }
    text
}

/// Every `crate::a::b` and `super::a::b` in `text`: the anchor and the
/// segments after it.
fn paths(text: &str) -> Vec<(&'static str, Vec<String>)> {
    let mut out = Vec::new();
    for anchor in ["crate", "super"] {
        let prefix = format!("{anchor}::");
        let mut from = 0;
        while let Some(at) = text[from..].find(&prefix) {
            let start = from + at;
            from = start + prefix.len();
            let before = text[..start].chars().next_back();
            // `sluice_crate::x` or `foo::super::x` are not this crate's paths.
            if before.is_some_and(|c| c.is_alphanumeric() || c == '_' || c == ':') {
                continue;
            }
            let mut segments = Vec::new();
            let mut rest = &text[from..];
            loop {
                let len = rest.find(|c: char| !(c.is_alphanumeric() || c == '_')).unwrap_or(rest.len());
                if len == 0 {
                    break;
                }
                segments.push(rest[..len].to_owned());
                match rest[len..].strip_prefix("::") {
                    Some(next) => rest = next,
                    None => break,
                }
            }
            if !segments.is_empty() {
                out.push((anchor, segments));
            }
        }
    }
    out
}

/// One circle of imports for each set of modules that reach each other
/// (Tarjan's strongly connected components), as the modules along it.
fn cycles(imports: &BTreeMap<String, BTreeSet<String>>) -> Vec<Vec<String>> {
    struct Walk<'a> {
        imports: &'a BTreeMap<String, BTreeSet<String>>,
        index: BTreeMap<&'a str, usize>,
        low: BTreeMap<&'a str, usize>,
        stack: Vec<&'a str>,
        on_stack: BTreeSet<&'a str>,
        components: Vec<Vec<&'a str>>,
    }
    impl<'a> Walk<'a> {
        fn visit(&mut self, v: &'a str) {
            let n = self.index.len();
            self.index.insert(v, n);
            self.low.insert(v, n);
            self.stack.push(v);
            self.on_stack.insert(v);
            for w in &self.imports[v] {
                let w = w.as_str();
                if !self.index.contains_key(w) {
                    self.visit(w);
                    let low = self.low[v].min(self.low[w]);
                    self.low.insert(v, low);
                } else if self.on_stack.contains(w) {
                    let low = self.low[v].min(self.index[w]);
                    self.low.insert(v, low);
                }
            }
            if self.low[v] == self.index[v] {
                let mut component = Vec::new();
                loop {
                    let w = self.stack.pop().unwrap();
                    self.on_stack.remove(w);
                    component.push(w);
                    if w == v {
                        break;
                    }
                }
                if component.len() > 1 {
                    self.components.push(component);
                }
            }
        }
    }
    let mut walk = Walk {
        imports,
        index: BTreeMap::new(),
        low: BTreeMap::new(),
        stack: Vec::new(),
        on_stack: BTreeSet::new(),
        components: Vec::new(),
    };
    for v in imports.keys() {
        if !walk.index.contains_key(v.as_str()) {
            walk.visit(v);
        }
    }
    walk.components.iter().map(|component| circle(imports, component)).collect()
}

/// A path from the component's first module back to itself, through the
/// component only (breadth first, so the shortest).
fn circle(imports: &BTreeMap<String, BTreeSet<String>>, component: &[&str]) -> Vec<String> {
    let members: BTreeSet<&str> = component.iter().copied().collect();
    let start = *members.iter().next().unwrap();
    let mut came_from: BTreeMap<&str, &str> = BTreeMap::new();
    let mut queue = std::collections::VecDeque::from([start]);
    while let Some(v) = queue.pop_front() {
        for w in &imports[v] {
            let w = w.as_str();
            if !members.contains(w) {
                continue;
            }
            if w == start {
                let mut path = vec![start.to_owned()];
                let mut at = v;
                while at != start {
                    path.push(at.to_owned());
                    at = came_from[at];
                }
                path.push(start.to_owned());
                let last = path.len() - 1;
                path[1..last].reverse();
                return path.into_iter().map(|m| if m.is_empty() { "lib".to_owned() } else { m }).collect();
            }
            if !came_from.contains_key(w) {
                came_from.insert(w, v);
                queue.push_back(w);
            }
        }
    }
    component.iter().map(|m| m.to_string()).collect()
}
