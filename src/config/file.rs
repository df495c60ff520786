//! A config file as a TOML table: its `_base_` files under it, `--set` overrides over it.

use std::path::{Path, PathBuf};

use super::ConfigError;

/// The key naming the files a config file is written over (mmsegmentation's spelling): a path
/// or a list of paths, relative to the file that names them, merged in order under it.
pub const BASE_KEY: &str = "_base_";

/// `path` (the empty table when `None`) with its base files under it and `overrides` over it
/// (`section.key=value`, the value in TOML syntax; a bare word is taken as a string).
pub fn read(path: Option<&Path>, overrides: &[String]) -> Result<toml::Table, ConfigError> {
    let mut table = match path {
        Some(path) => read_with_bases(path, &mut Vec::new())?,
        None => toml::Table::new(),
    };
    for arg in overrides {
        apply_override(&mut table, arg)?;
    }
    Ok(table)
}

/// One file over its bases; `chain` holds the files that include this one, to refuse a circle.
fn read_with_bases(path: &Path, chain: &mut Vec<PathBuf>) -> Result<toml::Table, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read { path: path.into(), source })?;
    let mut table = text.parse::<toml::Table>().map_err(|e| ConfigError::Parse { path: path.into(), message: e.to_string() })?;
    let Some(bases) = table.remove(BASE_KEY) else {
        return Ok(table);
    };
    let identity = std::fs::canonicalize(path).unwrap_or_else(|_| path.to_path_buf());
    if chain.contains(&identity) {
        let circle: Vec<String> = chain.iter().chain([&identity]).map(|p| p.display().to_string()).collect();
        return Err(ConfigError::Invalid { key: BASE_KEY.into(), message: format!("the files include each other: {}", circle.join(" -> ")) });
    }
    chain.push(identity);
    let mut merged = toml::Table::new();
    for base in base_paths(&bases, path)? {
        merge_into(&mut merged, read_with_bases(&base, chain)?);
    }
    chain.pop();
    merge_into(&mut merged, table);
    Ok(merged)
}

/// The paths `_base_` names in `file`, resolved against the file's folder.
fn base_paths(value: &toml::Value, file: &Path) -> Result<Vec<PathBuf>, ConfigError> {
    let folder = file.parent().unwrap_or(Path::new(""));
    let names: Option<Vec<&str>> = match value {
        toml::Value::String(name) => Some(vec![name.as_str()]),
        toml::Value::Array(items) => items.iter().map(toml::Value::as_str).collect(),
        _ => None,
    };
    let names = names
        .ok_or_else(|| ConfigError::Invalid { key: BASE_KEY.into(), message: format!("must be a file name or a list of them (in {})", file.display()) })?;
    Ok(names.into_iter().map(|name| folder.join(name)).collect())
}

/// Where the value of `key` came from: the last `--set` of it, else the file.
pub fn origin_of(key: &str, file: Option<&Path>, overrides: &[String]) -> String {
    let set = overrides.iter().rev().find(|arg| arg.split_once('=').is_some_and(|(k, _)| k.trim() == key));
    match (set, file) {
        (Some(arg), _) => format!("--set {arg}"),
        (None, Some(file)) => file.display().to_string(),
        (None, None) => "the defaults".into(),
    }
}

fn apply_override(table: &mut toml::Table, arg: &str) -> Result<(), ConfigError> {
    let bad = || ConfigError::BadOverride { arg: arg.into() };
    let (key, raw) = arg.split_once('=').ok_or_else(bad)?;
    let parts: Vec<&str> = key.trim().split('.').collect();
    if parts.len() < 2 || parts.iter().any(|p| p.is_empty()) {
        return Err(bad());
    }
    let value = parse_override_value(raw.trim());
    let (leaf, sections) = parts.split_last().expect("at least two parts");
    let mut node = table;
    for (depth, section) in sections.iter().enumerate() {
        let entry = node.entry(section.to_string()).or_insert_with(|| toml::Value::Table(Default::default()));
        node = entry.as_table_mut().ok_or_else(|| ConfigError::Invalid { key: parts[..=depth].join("."), message: "is a value, not a section".into() })?;
    }
    node.insert(leaf.to_string(), value);
    Ok(())
}

/// `--set loader.crop=256` is an integer, `--set run.name=demo` a string.
fn parse_override_value(raw: &str) -> toml::Value {
    format!("v = {raw}").parse::<toml::Table>().ok().and_then(|mut t| t.remove("v")).unwrap_or_else(|| toml::Value::String(raw.to_string()))
}

/// Writes `over` onto `base`, section by section (tables merged key by key, values replaced).
pub fn merge_into(base: &mut toml::Table, over: toml::Table) {
    for (key, value) in over {
        match (base.get_mut(&key), value) {
            (Some(toml::Value::Table(inner)), toml::Value::Table(value)) => merge_into(inner, value),
            (_, value) => {
                base.insert(key, value);
            }
        }
    }
}
