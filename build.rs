//! With the `cuda` feature: assembles `kernels/lora_merge.ptx`, `quant4.ptx` and `kquant.ptx` into sm_80 and sm_90 cubins with
//! `ptxas` when one is found, so the GPU backend can load machine code instead of asking the
//! driver to JIT-compile the PTX on first use (2-3 s on an H100, paid on every run where the
//! driver's cache does not persist, such as a fresh container; BENCHMARKS.md, session 7).
//! Without `ptxas` the build embeds no cubins and the driver JIT-compiles the PTX, as before;
//! the binary works either way.
//!
//! Where `ptxas` is looked for: `$LORAWELD_PTXAS` (a path; `none` turns cubins off), then
//! `$CUDA_HOME/bin`, `$CUDA_PATH/bin`, `/usr/local/cuda/bin` and `$PATH`.

use std::env;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

/// The cubins built: a GPU of the same major and an equal or higher minor runs them (sm_80 also
/// covers sm_86 and sm_89); anything else gets the PTX.
const ARCHS: [u32; 2] = [80, 90];

/// The kernel files assembled, and the constant each one's cubins get in `cubins.rs`.
const KERNELS: [(&str, &str); 3] = [
    ("lora_merge", "CUBINS"),
    ("quant4", "QUANT4_CUBINS"),
    ("kquant", "KQUANT_CUBINS"),
];

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    for (name, _) in KERNELS {
        println!("cargo:rerun-if-changed=kernels/{name}.ptx");
    }
    for v in ["LORAWELD_PTXAS", "CUDA_HOME", "CUDA_PATH", "PATH"] {
        println!("cargo:rerun-if-env-changed={v}");
    }
    let out = PathBuf::from(env::var_os("OUT_DIR").expect("cargo sets OUT_DIR"));
    let dir = PathBuf::from(env::var_os("CARGO_MANIFEST_DIR").expect("cargo sets CARGO_MANIFEST_DIR")).join("kernels");
    let ptxas = if env::var_os("CARGO_FEATURE_CUDA").is_some() {
        let p = find_ptxas();
        if p.is_none() {
            println!(
                "cargo:warning=no ptxas found (set LORAWELD_PTXAS or CUDA_HOME): the GPU kernels are \
                 embedded as PTX only, and the driver JIT-compiles them on first use (about 2 s, cached \
                 per machine)"
            );
        }
        p
    } else {
        None
    };
    let mut rs = String::new();
    for (name, konst) in KERNELS {
        let ptx = dir.join(format!("{name}.ptx"));
        let mut entries = Vec::new();
        if let Some(ptxas) = &ptxas {
            for arch in ARCHS {
                let cubin = out.join(format!("{name}.sm_{arch}.cubin"));
                let status = Command::new(ptxas)
                    .arg(format!("-arch=sm_{arch}"))
                    .arg("-o")
                    .arg(&cubin)
                    .arg(&ptx)
                    .status();
                match status {
                    Ok(s) if s.success() => entries.push((arch, cubin)),
                    Ok(s) => panic!("{} -arch=sm_{arch} kernels/{name}.ptx failed: {s}", ptxas.display()),
                    Err(e) => panic!("cannot run {}: {e}", ptxas.display()),
                }
            }
        }
        rs.push_str(&format!(
            "/// Cubins of kernels/{name}.ptx built by build.rs: (sm, bytes).\n"
        ));
        rs.push_str(&format!("pub const {konst}: &[(u32, &[u8])] = &[\n"));
        for (arch, path) in &entries {
            rs.push_str(&format!(
                "    ({arch}, include_bytes!({:?})),\n",
                path.display().to_string()
            ));
        }
        rs.push_str("];\n");
    }
    fs::write(out.join("cubins.rs"), rs).expect("write cubins.rs");
}

fn find_ptxas() -> Option<PathBuf> {
    if let Some(p) = env::var_os("LORAWELD_PTXAS") {
        if p == "none" {
            return None;
        }
        let p = PathBuf::from(p);
        if !p.is_file() {
            panic!("LORAWELD_PTXAS={} is not a file", p.display());
        }
        return Some(p);
    }
    let homes = ["CUDA_HOME", "CUDA_PATH"]
        .iter()
        .filter_map(env::var_os)
        .map(|h| Path::new(&h).join("bin"))
        .chain([PathBuf::from("/usr/local/cuda/bin")]);
    let path = env::var_os("PATH")
        .map(|p| env::split_paths(&p).collect::<Vec<_>>())
        .unwrap_or_default();
    homes.chain(path).map(|d| d.join("ptxas")).find(|p| p.is_file())
}
