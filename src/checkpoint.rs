//! Checkpoints of a run folder: model, optimiser, agents and loop state, written atomically
//! (a folder written beside the old one, then renamed over it).

use std::path::Path;

use anyhow::Context;
use burn::module::Module;
use burn::optim::ModuleOptimizer;
use burn::store::ModuleRecord;
use burn::tensor::Bytes;
use serde::{Deserialize, Serialize};

use crate::loss::Agwd;
use crate::model::RlU2Net;
use crate::rl::PpoAgent;

/// The loop's own state, saved with every checkpoint.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct LoopState {
    /// Steps completed.
    pub step: u64,
    pub agwd_dice: Agwd,
    pub agwd_ce: Agwd,
    pub best_val_dice: Option<f64>,
    pub best_epoch: Option<u64>,
    /// The number of steps of the schedule, fitted to a time budget once the first
    /// steps are timed (None: the configuration's epochs × steps per epoch).
    #[serde(default)]
    pub total_steps: Option<u64>,
}

/// Checkpoint files: model, optimiser, agents, loop state.
pub fn save_checkpoint(
    dir: &Path,
    model: &RlU2Net,
    optim: &ModuleOptimizer,
    agents: &[PpoAgent],
    state: &LoopState,
) -> anyhow::Result<()> {
    let parent = dir.parent().context("checkpoint folder has a parent")?;
    std::fs::create_dir_all(parent)?;
    let name = dir
        .file_name()
        .context("checkpoint folder name")?
        .to_string_lossy()
        .to_string();
    let tmp = parent.join(format!(".{name}.partial"));
    let old = parent.join(format!(".{name}.old"));
    let _ = std::fs::remove_dir_all(&tmp);
    let written = write_files(&tmp, model, optim, agents, state);
    if let Err(e) = written {
        // a full disk or a read-only folder: leave nothing behind, keep the old checkpoint
        let _ = std::fs::remove_dir_all(&tmp);
        return Err(e.context(format!(
            "{}: cannot write the checkpoint (the previous one is kept)",
            dir.display()
        )));
    }
    let _ = std::fs::remove_dir_all(&old);
    if dir.exists() {
        std::fs::rename(dir, &old)?;
    }
    // a crash here leaves only `.old`: `resolve` reads it. The files in `tmp` are on
    // disk already (write_synced); the folder and its parent are flushed around the rename
    crate::io::rename_durably(&tmp, dir)?;
    let _ = std::fs::remove_dir_all(&old);
    Ok(())
}

fn write_files(
    tmp: &Path,
    model: &RlU2Net,
    optim: &ModuleOptimizer,
    agents: &[PpoAgent],
    state: &LoopState,
) -> anyhow::Result<()> {
    std::fs::create_dir_all(tmp)?;
    let model_bytes = model
        .clone()
        .into_record()
        .into_bytes()
        .map_err(|e| anyhow::anyhow!("cannot encode the model: {e:?}"))?;
    let write = crate::io::write_synced;
    write(&tmp.join("model.bpk"), &model_bytes[..])?;
    let optim_bytes = optim
        .into_bytes()
        .map_err(|e| anyhow::anyhow!("cannot encode the optimiser: {e:?}"))?;
    write(&tmp.join("optimizer.bpk"), &optim_bytes[..])?;
    let agents_json: Vec<serde_json::Value> = agents
        .iter()
        .map(serde_json::to_value)
        .collect::<Result<_, _>>()?;
    write(
        &tmp.join("agents.json"),
        serde_json::to_string(&agents_json)?.as_bytes(),
    )?;
    // state.json last: a folder with it is complete
    write(
        &tmp.join("state.json"),
        serde_json::to_string_pretty(state)?.as_bytes(),
    )?;
    Ok(())
}

/// The checkpoint folder to read: `dir`, or the `.old` copy a crash between the two
/// renames of [`save_checkpoint`] left behind.
pub fn resolve(dir: &Path) -> std::path::PathBuf {
    if dir.join("state.json").exists() {
        return dir.to_path_buf();
    }
    match (dir.parent(), dir.file_name()) {
        (Some(parent), Some(name)) => {
            let old = parent.join(format!(".{}.old", name.to_string_lossy()));
            if old.join("state.json").exists() {
                old
            } else {
                dir.to_path_buf()
            }
        }
        _ => dir.to_path_buf(),
    }
}

/// Load a model's weights from a checkpoint folder.
pub fn load_model(dir: &Path, model: RlU2Net) -> anyhow::Result<RlU2Net> {
    let path = resolve(dir).join("model.bpk");
    let bytes = std::fs::read(&path).map_err(|e| {
        anyhow::anyhow!(
            "{}: cannot read ({e}); is this a run folder written by `rlu2net train`?",
            path.display()
        )
    })?;
    load_model_bytes(bytes, &path.display().to_string(), model)
}

/// Load a model's weights from `model.bpk` bytes; `name` says where they came from.
pub fn load_model_bytes(bytes: Vec<u8>, name: &str, model: RlU2Net) -> anyhow::Result<RlU2Net> {
    let record = ModuleRecord::from_bytes(Bytes::from_bytes_vec(bytes)).map_err(|_| {
        anyhow::anyhow!(
            "{name}: not a readable model checkpoint (truncated or damaged); use another checkpoint (checkpoints/best or checkpoints/last) or train again"
        )
    })?;
    model.try_load_record(record).map_err(|e| {
        let first = format!("{e:?}");
        let first = first.lines().next().unwrap_or("").chars().take(160).collect::<String>();
        anyhow::anyhow!(
            "{name}: the weights do not fit the run's config.toml (another preset or model settings?): {first}; keep each checkpoints/ folder with the config.toml it was trained with"
        )
    })
}

pub fn load_checkpoint(
    dir: &Path,
    model: RlU2Net,
    optim: ModuleOptimizer,
) -> anyhow::Result<(RlU2Net, ModuleOptimizer, Vec<PpoAgent>, LoopState)> {
    let model = load_model(dir, model)?;
    let dir = resolve(dir);
    let read = |name: &str| {
        let p = dir.join(name);
        std::fs::read(&p).map_err(|e| anyhow::anyhow!("{}: cannot read ({e})", p.display()))
    };
    let damaged = |name: &str| {
        format!(
            "{}: damaged; resume from another checkpoint or train again",
            dir.join(name).display()
        )
    };
    let optim = optim
        .from_bytes(Bytes::from_bytes_vec(read("optimizer.bpk")?))
        .map_err(|_| anyhow::anyhow!(damaged("optimizer.bpk")))?;
    let agents: Vec<PpoAgent> =
        serde_json::from_slice(&read("agents.json")?).with_context(|| damaged("agents.json"))?;
    let state: LoopState =
        serde_json::from_slice(&read("state.json")?).with_context(|| damaged("state.json"))?;
    Ok((model, optim, agents, state))
}
