//! Resources: the disk preflight refuses before any heavy work, with exit code 3.

use crate::util::{assert_one_line_error, fixtures, LoraweldCommand, Workdir};

/// Mounts a small tmpfs (needs root; prints why when it cannot and checks nothing else).
fn small_tmpfs(w: &Workdir, size: &str) -> Option<std::path::PathBuf> {
    let dir = w.join("small");
    std::fs::create_dir_all(&dir).unwrap();
    let ok = std::process::Command::new("mount")
        .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
        .arg(&dir)
        .status()
        .map(|s| s.success())
        .unwrap_or(false);
    if !ok {
        eprintln!("SKIPPED: cannot mount a tmpfs here (needs root); the disk preflight test did not run");
        return None;
    }
    Some(dir)
}

fn unmount(dir: &std::path::Path) {
    let _ = std::process::Command::new("umount").arg(dir).status();
}

#[test]
fn preflight_refuses_a_small_disk_with_both_numbers() {
    let w = Workdir::new();
    let Some(small) = small_tmpfs(&w, "2M") else { return };
    let out = small.join("merged");
    let err = LoraweldCommand::save([fixtures().join("lora"), out.clone()]).fails_with(3);
    let listing: Vec<_> = std::fs::read_dir(&small).unwrap().collect();
    unmount(&small);
    assert_one_line_error(&err, "not enough free disk space: need 6429");
    assert!(err.contains("bytes, 2097152 bytes free"), "{err}");
    assert!(listing.is_empty(), "nothing may be written: {listing:?}");
}

#[test]
fn preflight_checks_the_temporary_location_too() {
    let w = Workdir::new();
    let Some(small) = small_tmpfs(&w, "2M") else { return };
    let out = w.join("merged");
    let err = LoraweldCommand::save([
        fixtures().join("lora"),
        out.clone(),
        "--temporary-location".into(),
        small.clone(),
    ])
    .fails_with(3);
    unmount(&small);
    assert_one_line_error(&err, "small: not enough free disk space");
    assert!(!out.exists());
}
