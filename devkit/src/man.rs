//! Man pages for the `vitalgate` binary, generated from its clap definition
//! ([`vitalgate::cli::command`]), so they cannot drift from `--help`.
//!
//! One page for the command (`vitalgate.1`) and one per subcommand (`vitalgate-run.1`,
//! `vitalgate-keys-init.1`, ...), as `git` and `cargo` do.

use std::path::{Path, PathBuf};

use anyhow::Context;

/// Writes every page into `dir` (created if missing) and returns their paths.
///
/// # Errors
///
/// The directory or a file cannot be written.
pub fn write_all(dir: &Path) -> anyhow::Result<Vec<PathBuf>> {
    std::fs::create_dir_all(dir).with_context(|| format!("create {}", dir.display()))?;
    let mut cmd = vitalgate::cli::command();
    cmd.build();
    let mut written = Vec::new();
    write_tree(&cmd, "vitalgate", dir, &mut written)?;
    Ok(written)
}

fn write_tree(
    cmd: &clap::Command,
    name: &str,
    dir: &Path,
    written: &mut Vec<PathBuf>,
) -> anyhow::Result<()> {
    let page = cmd.clone().name(name.to_string());
    let mut roff = Vec::new();
    clap_mangen::Man::new(page)
        .render(&mut roff)
        .with_context(|| format!("render {name}"))?;
    let path = dir.join(format!("{name}.1"));
    std::fs::write(&path, roff).with_context(|| format!("write {}", path.display()))?;
    written.push(path);
    for sub in cmd.get_subcommands().filter(|s| s.get_name() != "help") {
        write_tree(sub, &format!("{name}-{}", sub.get_name()), dir, written)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_page_per_subcommand_naming_its_options() {
        let dir = tempfile::tempdir().unwrap();
        let files = write_all(dir.path()).unwrap();
        let names: Vec<String> = files
            .iter()
            .map(|f| f.file_name().unwrap().to_string_lossy().into_owned())
            .collect();
        for n in [
            "vitalgate.1",
            "vitalgate-run.1",
            "vitalgate-keys-init.1",
            "vitalgate-status.1",
        ] {
            assert!(names.iter().any(|x| x == n), "{n} missing from {names:?}");
        }
        let run = std::fs::read_to_string(dir.path().join("vitalgate-run.1")).unwrap();
        assert!(run.starts_with(".ie") || run.contains(".TH"), "{run}");
        assert!(run.contains("config"), "{run}");
    }
}
