//! The keys a config may hold: the check of every key against the typed config, and the hint
//! an unknown key gets.

use super::ConfigError;

/// Keys of earlier versions and the keys that took their place (docs/commands.md, `config show`):
/// a file that still uses one fails with the new name rather than a guess.
/// (`seg.infer.crf` was the switch and is now the settings' section: a value there that is not a
/// section is the old switch.)
const RENAMED: &[(&str, &str)] = &[
    ("seg.infer.crf", "seg.infer.dense_crf"),
    ("seg.infer.crf_params", "seg.infer.crf"),
    ("seg.loss.crf_weight", "seg.loss.crf.weight"),
    ("seg.loss.crf_sigma_rgb", "seg.loss.crf.appearance_srgb"),
    ("seg.loss.crf_sigma_xy", "seg.loss.crf.appearance_sxy"),
    ("seg.loss.crf_scale", "seg.loss.crf.scale"),
    ("seg.loss.dense_crf", "seg.loss.regularizer = \"dense_crf\""),
];

/// Checks that every key of `table` is one of `defaults` (the typed config's keys, sections
/// included), naming a renamed key's new name or the nearest known key otherwise.
pub fn check(table: &toml::Table, defaults: &toml::Table) -> Result<(), ConfigError> {
    let mut known = Vec::new();
    collect_keys(defaults, "", &mut known);
    check_keys(table, "", &known)
}

fn collect_keys(table: &toml::Table, prefix: &str, out: &mut Vec<(String, bool)>) {
    for (key, value) in table {
        let path = join_key(prefix, key);
        if let toml::Value::Table(inner) = value {
            out.push((path.clone(), true));
            collect_keys(inner, &path, out);
        } else {
            out.push((path, false));
        }
    }
}

fn join_key(prefix: &str, key: &str) -> String {
    if prefix.is_empty() {
        key.to_string()
    } else {
        format!("{prefix}.{key}")
    }
}

fn check_keys(table: &toml::Table, prefix: &str, known: &[(String, bool)]) -> Result<(), ConfigError> {
    for (key, value) in table {
        let path = join_key(prefix, key);
        let known_as = known.iter().find(|(k, _)| *k == path).map(|(_, is_section)| *is_section);
        if let Some((_, new)) = RENAMED.iter().find(|(old, _)| *old == path) {
            if known_as.is_none() || (known_as == Some(true) && !value.is_table()) {
                return Err(ConfigError::Renamed { key: path, new: new.to_string() });
            }
        }
        let Some(is_section) = known_as else {
            return Err(ConfigError::UnknownKey { hint: nearest_hint(&path, known), key: path });
        };
        if let (true, toml::Value::Table(inner)) = (is_section, value) {
            check_keys(inner, &path, known)?;
        }
    }
    Ok(())
}

/// Names other tools (PyTorch scripts, mmsegmentation, IRNet, torchtitan) give to a setting,
/// and the leaf of ours that means it: a hint by meaning, where spelling would mislead
/// (`learning_rate` is closer in letters to `on_nonfinite` than to `lr`).
const ALIASES: &[(&str, &str)] = &[
    ("learning_rate", "lr"),
    ("base_lr", "lr"),
    ("lr0", "lr"),
    ("lr_0", "lr"),
    ("max_epochs", "epochs"),
    ("num_epochs", "epochs"),
    ("epoch", "epochs"),
    ("max_iters", "steps"),
    ("iterations", "steps"),
    ("iters", "steps"),
    ("max_steps", "steps"),
    ("batch", "batch_size"),
    ("samples_per_gpu", "batch_size"),
    ("bs", "batch_size"),
    ("num_workers", "threads"),
    ("workers", "threads"),
    ("workers_per_gpu", "threads"),
    ("crop_size", "crop"),
    ("wd", "weight_decay"),
    ("decay", "weight_decay"),
    ("power", "poly_power"),
    ("gradient_accumulation_steps", "accumulate"),
    ("accum_steps", "accumulate"),
    ("grad_accum", "accumulate"),
    ("random_seed", "seed"),
    ("output_dir", "dir"),
    ("work_dir", "dir"),
    ("save_interval", "checkpoint_every"),
    ("checkpoint_interval", "checkpoint_every"),
    ("log_interval", "log_every"),
    ("cam_scales", "scales"),
    ("threshold", "tau"),
    ("cam_eval_thres", "tau"),
];

/// "; did you mean `loader.batch_size`?" for the closest known key: a key of the same name in
/// another section, or the key a known alias means (in the same section, else at the same
/// depth, else anywhere); otherwise the nearest by spelling (same depth preferred).
fn nearest_hint(key: &str, known: &[(String, bool)]) -> String {
    let leaf = key.rsplit('.').next().unwrap_or(key);
    let leaf_of = |k: &str| k.rsplit('.').next().unwrap_or(k).to_string();
    let meant = ALIASES.iter().find(|(alias, _)| alias.eq_ignore_ascii_case(leaf)).map_or(leaf, |&(_, ours)| ours);
    let candidates: Vec<&String> = known.iter().filter(|(k, is_section)| !is_section && leaf_of(k) == meant).map(|(k, _)| k).collect();
    let section = key.rsplit_once('.').map_or("", |(s, _)| s);
    let depth = |k: &str| k.matches('.').count();
    let same_section = candidates.iter().find(|k| k.rsplit_once('.').is_some_and(|(s, _)| s == section));
    let same_depth = candidates.iter().find(|k| depth(k) == depth(key));
    if let Some(k) = same_section.or(same_depth).or(candidates.first()) {
        return format!("; did you mean `{k}`?");
    }
    let score = |candidate: &str| {
        let whole = strsim::normalized_levenshtein(key, candidate);
        let leaf_score = strsim::normalized_levenshtein(leaf, candidate.rsplit('.').next().unwrap_or(candidate));
        whole.max(0.9 * leaf_score)
    };
    known
        .iter()
        .map(|(k, _)| (score(k), k))
        .filter(|(s, _)| *s > 0.4)
        .max_by(|a, b| a.0.total_cmp(&b.0))
        .map(|(_, k)| format!("; did you mean `{k}`?"))
        .unwrap_or_else(|| {
            let sections: Vec<&str> = known.iter().filter(|(k, s)| *s && !k.contains('.')).map(|(k, _)| k.as_str()).collect();
            format!("; known sections: {}", sections.join(", "))
        })
}
