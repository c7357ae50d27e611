//! Every example config under config/ parses, validates, and documents every field.

use std::path::Path;

use freshet::Config;

#[test]
fn every_file_in_config_parses_and_validates() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("config");
    let mut seen = 0;
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "toml") {
            Config::load(&path).unwrap_or_else(|err| panic!("{}: {err}", path.display()));
            seen += 1;
        }
    }
    assert!(seen >= 2, "expected example configs in {}", dir.display());
}

#[test]
fn the_reference_config_mentions_every_field() {
    let reference = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("config/freshet.example.toml"),
    )
    .unwrap();
    let defaults = toml::to_string(&Config::default()).unwrap();
    for line in defaults.lines() {
        if let Some((field, _)) = line.split_once(" = ") {
            if field == "sources" {
                assert!(reference.contains("[[sources]]"));
                continue;
            }
            assert!(
                reference.contains(&format!("{field} = "))
                    || reference.contains(&format!("# {field} = ")),
                "config/freshet.example.toml does not document `{field}`"
            );
        }
    }
    for field in [
        "include",
        "exclude",
        "respect_gitignore",
        "include_hidden",
        "model_dir",
        "onnxruntime_library",
        "model_id",
    ] {
        assert!(
            reference.contains(field),
            "config/freshet.example.toml does not document `{field}`"
        );
    }
}
