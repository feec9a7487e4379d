//! One shareable file for a trained model (`rlu2net export`): the run's
//! `config.toml`, `plan.json` and checkpoint weights, the writing version, and a
//! SHA-256 over all of it. `--model` takes this file or a run folder.
//!
//! Layout: the 8-byte magic `RLU2NET\0`, a little-endian u32 format version, a u64
//! header length, the JSON header, the weights (`model.bpk` bytes), then the 32-byte
//! SHA-256 of everything before it.

use std::path::Path;

use anyhow::Context;

use crate::run::{Checkpoint, RunDir};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

const MAGIC: &[u8; 8] = b"RLU2NET\0";
/// Bumped whenever the layout or the meaning of a field changes.
pub const FORMAT_VERSION: u32 = 1;

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct Header {
    /// The rlu2net version that wrote the file.
    pub rlu2net_version: String,
    /// Which checkpoint of the run.
    pub checkpoint: Checkpoint,
    pub config_toml: String,
    pub plan_json: String,
}

/// Everything a predictor needs, from a run folder or a model file.
pub struct ModelParts {
    pub config_toml: String,
    pub plan_json: String,
    pub weights: Vec<u8>,
    /// Where it came from, for messages.
    pub source: String,
    /// Where the plan came from, for messages: the run's `plan.json` or the model file.
    pub plan_source: String,
}

fn read_text(p: &Path, run: &Path) -> anyhow::Result<String> {
    std::fs::read_to_string(p).with_context(|| {
        format!(
            "{}: cannot read; is {} a run folder (from `rlu2net train`) or a model file (from `rlu2net export`)?",
            p.display(),
            run.display()
        )
    })
}

/// The parts of a run folder.
pub fn read_run(run: &Path) -> anyhow::Result<(ModelParts, Checkpoint)> {
    let dir = RunDir::at(run);
    let config_toml = read_text(&dir.config_path(), run)?;
    let plan_json = read_text(&dir.plan_path(), run)?;
    let (which, dir) = dir.predict_checkpoint()?;
    let wp = dir.join("model.bpk");
    let weights = std::fs::read(&wp).with_context(|| format!("{}: cannot read", wp.display()))?;
    Ok((
        ModelParts {
            config_toml,
            plan_json,
            weights,
            source: wp.display().to_string(),
            plan_source: run.join("plan.json").display().to_string(),
        },
        which,
    ))
}

/// Write `run`'s model as one file (atomically).
pub fn export(run: &Path, out: &Path) -> anyhow::Result<Header> {
    let (parts, which) = read_run(run)?;
    // the configuration must load: no file that cannot be used later
    crate::config::TrainConfig::from_toml(&parts.config_toml, None).with_context(|| {
        format!(
            "{}: invalid configuration",
            run.join("config.toml").display()
        )
    })?;
    let header = Header {
        rlu2net_version: env!("CARGO_PKG_VERSION").to_string(),
        checkpoint: which,
        config_toml: parts.config_toml,
        plan_json: parts.plan_json,
    };
    let h = serde_json::to_vec(&header)?;
    let mut bytes = Vec::with_capacity(8 + 4 + 8 + h.len() + parts.weights.len() + 32);
    bytes.extend_from_slice(MAGIC);
    bytes.extend_from_slice(&FORMAT_VERSION.to_le_bytes());
    bytes.extend_from_slice(&(h.len() as u64).to_le_bytes());
    bytes.extend_from_slice(&h);
    bytes.extend_from_slice(&parts.weights);
    let digest = Sha256::digest(&bytes);
    bytes.extend_from_slice(&digest);
    crate::io::write_atomically(out, &bytes)
        .map_err(|e| anyhow::anyhow!("{}: cannot write: {e}", out.display()))?;
    Ok(header)
}

/// Read a model file, checking its magic, version and checksum.
pub fn read_model_file(path: &Path) -> anyhow::Result<ModelParts> {
    let name = path.display();
    let mut f = crate::io::nifti::open_regular(path)?;
    let mut bytes = Vec::new();
    std::io::Read::read_to_end(&mut f, &mut bytes)
        .with_context(|| format!("{name}: cannot read"))?;
    anyhow::ensure!(
        bytes.len() >= 20 + 32 && &bytes[..8] == MAGIC,
        "{name}: not an rlu2net model file (export one with `rlu2net export RUN --out FILE`), nor a run folder"
    );
    let version = u32::from_le_bytes(bytes[8..12].try_into().expect("4 bytes"));
    anyhow::ensure!(
        version == FORMAT_VERSION,
        "{name}: model file format {version}, this rlu2net ({}) reads format {FORMAT_VERSION}; export the run again with this version, or use the rlu2net that wrote it",
        env!("CARGO_PKG_VERSION")
    );
    let (body, digest) = bytes.split_at(bytes.len() - 32);
    anyhow::ensure!(
        Sha256::digest(body).as_slice() == digest,
        "{name}: checksum mismatch: the file is damaged or truncated; copy it again"
    );
    let hlen = u64::from_le_bytes(body[12..20].try_into().expect("8 bytes"));
    let header_end = 20usize
        .checked_add(usize::try_from(hlen).unwrap_or(usize::MAX))
        .filter(|&e| e <= body.len())
        .with_context(|| format!("{name}: damaged header"))?;
    let header: Header = serde_json::from_slice(&body[20..header_end])
        .with_context(|| format!("{name}: damaged header"))?;
    // the weights are the rest of the body: moved to the front in place, no second buffer
    bytes.truncate(bytes.len() - 32);
    bytes.drain(..header_end);
    let weights = bytes;
    Ok(ModelParts {
        config_toml: header.config_toml,
        plan_json: header.plan_json,
        weights,
        source: format!("{name} (written by rlu2net {})", header.rlu2net_version),
        plan_source: format!("{name} (its plan)"),
    })
}

/// A run folder or a model file.
pub fn read_model(path: &Path) -> anyhow::Result<ModelParts> {
    if path.is_dir() {
        Ok(read_run(path)?.0)
    } else {
        read_model_file(path)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fake_run(dir: &Path) -> std::path::PathBuf {
        let run = dir.join("run");
        std::fs::create_dir_all(run.join("checkpoints/last")).unwrap();
        let cfg = crate::config::TrainConfig::preset(crate::model::Preset::Tiny);
        std::fs::write(run.join("config.toml"), cfg.to_toml()).unwrap();
        std::fs::write(run.join("plan.json"), "{\"ct_stats\": 1}").unwrap();
        std::fs::write(
            run.join("checkpoints/last/model.bpk"),
            b"weights \x00\x01\x02",
        )
        .unwrap();
        std::fs::write(run.join("checkpoints/last/state.json"), "{}").unwrap();
        run
    }

    #[test]
    fn export_round_trips_and_damage_is_detected() {
        let d = tempfile::tempdir().unwrap();
        let run = fake_run(d.path());
        let f = d.path().join("m.rlu2net");
        let h = export(&run, &f).unwrap();
        assert_eq!(h.checkpoint, Checkpoint::Last);
        let back = read_model(&f).unwrap();
        let direct = read_model(&run).unwrap();
        assert_eq!(back.weights, direct.weights);
        assert_eq!(back.config_toml, direct.config_toml);
        assert_eq!(back.plan_json, direct.plan_json);

        let bytes = std::fs::read(&f).unwrap();
        // one flipped bit anywhere: the checksum
        let mut bad = bytes.clone();
        bad[bytes.len() / 2] ^= 4;
        std::fs::write(&f, &bad).unwrap();
        let e = read_model(&f).err().unwrap().to_string();
        assert!(e.contains("checksum") && e.contains("m.rlu2net"), "{e}");
        // truncated
        std::fs::write(&f, &bytes[..bytes.len() - 10]).unwrap();
        assert!(
            read_model(&f)
                .err()
                .unwrap()
                .to_string()
                .contains("checksum")
        );
        // another format version (checksum made valid again)
        let mut v2 = bytes[..bytes.len() - 32].to_vec();
        v2[8..12].copy_from_slice(&2u32.to_le_bytes());
        let dg = Sha256::digest(&v2);
        v2.extend_from_slice(&dg);
        std::fs::write(&f, &v2).unwrap();
        let e = read_model(&f).err().unwrap().to_string();
        assert!(
            e.contains("format 2") && e.contains("export the run again"),
            "{e}"
        );
        // not a model file at all
        std::fs::write(&f, b"hello").unwrap();
        assert!(
            read_model(&f)
                .err()
                .unwrap()
                .to_string()
                .contains("not an rlu2net model file")
        );
    }
}
