//! Workflows: declarative multi-step calls (`call`, `sequence`, `parallel`, `fork_join`,
//! `loop`) that this node runs as mesh calls under one shared deadline.
//!
//! `spec.rs` is the file format and its validation; `engine.rs` runs a workflow. Workflows
//! come from the node config (`[workflows] paths = [...]`, files or directories of `*.toml`)
//! and are served by `POST /v1/workflows/{name}/run`; `POST /v1/workflows/run` runs an
//! ad-hoc one (what `agentmesh workflow run FILE` sends).

pub mod engine;
pub mod spec;

pub use engine::{run, RunResult, StepRecord};
pub use spec::{Workflow, WorkflowError};

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// Most workflows one node loads.
pub const WORKFLOWS_MAX: usize = 256;

/// The workflows a node serves, by name.
#[derive(Debug, Clone, Default)]
pub struct WorkflowSet {
    by_name: BTreeMap<String, Arc<Workflow>>,
}

impl WorkflowSet {
    /// The workflow called `name`.
    pub fn get(&self, name: &str) -> Option<Arc<Workflow>> {
        self.by_name.get(name).cloned()
    }

    /// Names and descriptions, sorted.
    pub fn list(&self) -> Vec<(String, Option<String>)> {
        self.by_name
            .values()
            .map(|w| (w.name.clone(), w.description.clone()))
            .collect()
    }

    /// Number of workflows.
    pub fn len(&self) -> usize {
        self.by_name.len()
    }

    /// True if none.
    pub fn is_empty(&self) -> bool {
        self.by_name.is_empty()
    }

    /// Loads every path: a file, or a directory whose `*.toml` files are each a workflow.
    /// The first invalid file fails the whole load (its error names file, step and field).
    pub fn load(paths: &[PathBuf]) -> Result<WorkflowSet, WorkflowError> {
        let mut files = Vec::new();
        for p in paths {
            if p.is_dir() {
                let rd = std::fs::read_dir(p).map_err(|e| io_err(p, e))?;
                let mut found: Vec<PathBuf> = rd
                    .filter_map(|e| e.ok().map(|e| e.path()))
                    .filter(|f| f.extension().is_some_and(|x| x == "toml"))
                    .collect();
                found.sort();
                files.extend(found);
            } else {
                files.push(p.clone());
            }
        }
        let mut set = WorkflowSet::default();
        for f in files {
            let w = load_file(&f)?;
            if set.by_name.len() >= WORKFLOWS_MAX {
                return Err(whole(&f, format!("more than {WORKFLOWS_MAX} workflows")));
            }
            if set.by_name.contains_key(&w.name) {
                return Err(WorkflowError {
                    file: f.display().to_string(),
                    step: "-".into(),
                    field: "name".into(),
                    message: format!("another workflow is already called {:?}", w.name),
                });
            }
            set.by_name.insert(w.name.clone(), Arc::new(w));
        }
        Ok(set)
    }
}

fn whole(p: &Path, message: String) -> WorkflowError {
    WorkflowError {
        file: p.display().to_string(),
        step: "-".into(),
        field: "-".into(),
        message,
    }
}

fn io_err(p: &Path, e: std::io::Error) -> WorkflowError {
    whole(p, e.to_string())
}

/// Reads and validates one workflow file (size checked before reading).
pub fn load_file(p: &Path) -> Result<Workflow, WorkflowError> {
    let meta = std::fs::metadata(p).map_err(|e| io_err(p, e))?;
    if meta.len() > spec::WORKFLOW_BYTES_MAX as u64 {
        return Err(whole(
            p,
            format!("larger than {} bytes", spec::WORKFLOW_BYTES_MAX),
        ));
    }
    let text = std::fs::read_to_string(p).map_err(|e| io_err(p, e))?;
    Workflow::from_toml(&text, &p.display().to_string())
}
