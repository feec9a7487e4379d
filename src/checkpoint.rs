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
    std::fs::create_dir_all(&tmp)?;
    let model_bytes = model
        .clone()
        .into_record()
        .into_bytes()
        .map_err(|e| anyhow::anyhow!("cannot encode the model: {e:?}"))?;
    std::fs::write(tmp.join("model.bpk"), &model_bytes[..])?;
    let optim_bytes = optim
        .into_bytes()
        .map_err(|e| anyhow::anyhow!("cannot encode the optimiser: {e:?}"))?;
    std::fs::write(tmp.join("optimizer.bpk"), &optim_bytes[..])?;
    let agents_json: Vec<serde_json::Value> = agents
        .iter()
        .map(serde_json::to_value)
        .collect::<Result<_, _>>()?;
    std::fs::write(
        tmp.join("agents.json"),
        serde_json::to_string(&agents_json)?,
    )?;
    std::fs::write(tmp.join("state.json"), serde_json::to_string_pretty(state)?)?;
    let _ = std::fs::remove_dir_all(&old);
    if dir.exists() {
        std::fs::rename(dir, &old)?;
    }
    std::fs::rename(&tmp, dir)?;
    let _ = std::fs::remove_dir_all(&old);
    Ok(())
}

/// Load a model's weights from a checkpoint folder.
pub fn load_model(dir: &Path, model: RlU2Net) -> anyhow::Result<RlU2Net> {
    let path = dir.join("model.bpk");
    let bytes = std::fs::read(&path).with_context(|| format!("{}: cannot read", path.display()))?;
    let record = ModuleRecord::from_bytes(Bytes::from_bytes_vec(bytes))
        .map_err(|e| anyhow::anyhow!("{}: not a model checkpoint: {e:?}", path.display()))?;
    model.try_load_record(record).map_err(|e| {
        anyhow::anyhow!(
            "{}: does not fit this model configuration: {e:?}",
            path.display()
        )
    })
}

pub fn load_checkpoint(
    dir: &Path,
    model: RlU2Net,
    optim: ModuleOptimizer,
) -> anyhow::Result<(RlU2Net, ModuleOptimizer, Vec<PpoAgent>, LoopState)> {
    let model = load_model(dir, model)?;
    let ob = std::fs::read(dir.join("optimizer.bpk"))?;
    let optim = optim
        .from_bytes(Bytes::from_bytes_vec(ob))
        .map_err(|e| anyhow::anyhow!("{}: optimiser state: {e:?}", dir.display()))?;
    let agents: Vec<PpoAgent> =
        serde_json::from_str(&std::fs::read_to_string(dir.join("agents.json"))?)?;
    let state: LoopState = serde_json::from_str(&std::fs::read_to_string(dir.join("state.json"))?)?;
    Ok((model, optim, agents, state))
}
