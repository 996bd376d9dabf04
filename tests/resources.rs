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

/// A bare relative OUT (`merged`, the quick start's form) and `sub/rel` are checked too: the
/// free space is that of the nearest existing ancestor, here the current directory.
#[test]
fn preflight_checks_relative_outputs() {
    let w = Workdir::new();
    let Some(small) = small_tmpfs(&w, "2M") else { return };
    let mut results = Vec::new();
    for out in ["merged", "sub/rel"] {
        let plan = LoraweldCommand::save([fixtures().join("lora").as_os_str(), out.as_ref(), "--dry-run".as_ref()])
            .current_dir(&small)
            .fails_with(3);
        let err = LoraweldCommand::save([fixtures().join("lora").as_os_str(), out.as_ref()])
            .current_dir(&small)
            .fails_with(3);
        results.push((out, plan, err));
    }
    let listing: Vec<_> = std::fs::read_dir(&small).unwrap().collect();
    unmount(&small);
    for (out, plan, err) in results {
        assert_one_line_error(&plan, &format!("{out}: not enough free disk space: need 6429"));
        assert_one_line_error(&err, &format!("{out}: not enough free disk space: need 6429"));
        assert!(err.contains("bytes, 2097152 bytes free"), "{err}");
    }
    assert!(listing.is_empty(), "nothing may be written: {listing:?}");
}

/// Without root (no tmpfs): the dry run of a relative OUT still knows the free space.
#[test]
fn dry_run_knows_the_free_space_of_a_relative_output() {
    let w = Workdir::new();
    for out in ["merged", "sub/rel"] {
        let plan = LoraweldCommand::save([fixtures().join("lora").as_os_str(), out.as_ref(), "--dry-run".as_ref()])
            .current_dir(w.path())
            .ok();
        let line = plan
            .lines()
            .find(|l| l.starts_with("free disk at"))
            .unwrap_or_default()
            .to_string();
        assert!(line.starts_with(&format!("free disk at {out}: ")), "{plan}");
        assert!(!line.contains("unknown"), "{plan}");
    }
}
