//! The architecture document names every stage file and every subcommand (docs/architecture.md):
//! a stage or command added without a line there fails here.

use clap::CommandFactory;
use wsss_dist::cli::Cli;

fn architecture() -> String {
    std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/docs/architecture.md")).expect("docs/architecture.md")
}

/// Every leaf subcommand as a user types it ("train irn", "pseudo-label").
fn subcommands(command: &clap::Command, prefix: &str, out: &mut Vec<String>) {
    for sub in command.get_subcommands().filter(|s| s.get_name() != "help") {
        let name = format!("{prefix}{}", sub.get_name());
        if sub.has_subcommands() {
            subcommands(sub, &format!("{name} "), out);
        } else {
            out.push(name);
        }
    }
}

#[test]
fn the_architecture_document_names_every_stage_file_and_subcommand() {
    let doc = architecture();
    let stages = std::fs::read_dir(concat!(env!("CARGO_MANIFEST_DIR"), "/src/stages")).unwrap();
    let mut missing: Vec<String> = stages
        .map(|entry| format!("stages/{}", entry.unwrap().file_name().to_string_lossy()))
        .filter(|file| file.ends_with(".rs") && !doc.contains(file.as_str()))
        .collect();
    let mut commands = Vec::new();
    subcommands(&Cli::command(), "", &mut commands);
    assert!(commands.len() >= 15 && commands.contains(&"train irn".to_string()), "{commands:?}");
    missing.extend(commands.into_iter().filter(|c| !doc.contains(&format!("`{c}")) && !doc.contains(&format!("wsss-dist {c}"))));
    assert!(missing.is_empty(), "docs/architecture.md does not name: {missing:?}");
}
