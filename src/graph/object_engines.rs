//! The per-object engines with a symbolic batch axis, for TensorRT optimization profiles.
//!
//! On the CPU backend an engine set is built for one object batch (`--cross-batch`), static. A
//! TensorRT plan instead serves a range of batches through one optimization profile (min / opt /
//! max), so `cross`, the batched `temporal` and the batched `head` are exported with their object
//! axis named [`OBJECTS_DIM`]: each is built at the batches of [`BUILD_BATCHES`] and merged by
//! [`crate::onnx::batch_axis::symbolic_batch`], which checks that the batch only enters shapes.
//! `image` runs once per frame whatever the number of objects and stays static.

use super::engines::{
    build_cross, build_head_batched, build_image, build_temporal_batched, names, Geometry,
    NetParams,
};
use crate::error::{Error, Result};
use crate::onnx::batch_axis::{symbolic_batch, Build};
use crate::onnx::builder::{Graph, GraphOptions};
use crate::onnx::Weights;
use std::collections::BTreeMap;
use std::path::Path;
use tract_onnx::pb;

/// Name of the symbolic object axis in the exported bindings.
pub const OBJECTS_DIM: &str = "objects";

/// Batches each per-object engine is built at before the merge. Three points let the merge check
/// that every batch-dependent size is affine in the batch; they are distinct from 1 so that nothing
/// a graph might special-case at batch 1 is taken for the general form.
pub const BUILD_BATCHES: [usize; 3] = [2, 3, 5];

/// One exported engine of the object set.
pub struct ObjectEngine {
    /// File stem (`image`, `cross`, `temporal`, `head`).
    pub name: &'static str,
    /// The model; every binding but `image`'s carries the [`OBJECTS_DIM`] axis first, except the
    /// cross engine's image inputs (`image_tokens`, `stride4`: batch 1, broadcast inside).
    pub model: pb::ModelProto,
}

fn merged(
    build: impl Fn(usize) -> Result<Graph>,
    finish: &dyn Fn(pb::ModelProto) -> Result<pb::ModelProto>,
) -> Result<pb::ModelProto> {
    let mut out = Vec::with_capacity(3);
    for batch in BUILD_BATCHES {
        out.push(Build {
            batch,
            model: finish(build(batch)?.into_model())?,
        });
    }
    let [a, b, c]: [Build; 3] = out
        .try_into()
        .map_err(|_| Error::Other("three builds expected".into()))?;
    symbolic_batch([a, b, c], OBJECTS_DIM)
}

/// `image` (static) and `cross`, `temporal`, `head` over a symbolic number of objects.
pub fn build_object_engines(
    w: &dyn Weights,
    p: &NetParams,
    geo: &Geometry,
    opts: &GraphOptions,
) -> Result<Vec<ObjectEngine>> {
    build_object_engines_with(w, p, geo, opts, &Ok)
}

/// [`build_object_engines`] with `finish` (a precision pass, say) applied to every build before the
/// merge, so that the merge also checks the pass treats every batch alike.
pub fn build_object_engines_with(
    w: &dyn Weights,
    p: &NetParams,
    geo: &Geometry,
    opts: &GraphOptions,
    finish: &dyn Fn(pb::ModelProto) -> Result<pb::ModelProto>,
) -> Result<Vec<ObjectEngine>> {
    Ok(vec![
        ObjectEngine {
            name: names::IMAGE_PART,
            model: finish(build_image(w, p, geo, opts)?.into_model())?,
        },
        ObjectEngine {
            name: names::CROSS,
            model: merged(|b| build_cross(w, p, geo, b, opts), finish)?,
        },
        ObjectEngine {
            name: names::TEMPORAL,
            model: merged(
                |b| build_temporal_batched(w, &p.temporal, p.queries_out, geo, b, opts),
                finish,
            )?,
        },
        ObjectEngine {
            name: names::HEAD,
            model: merged(|b| build_head_batched(w, &p.head, geo, b, opts), finish)?,
        },
    ])
}

/// What `objects/objects.json` records next to the object engines.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct ObjectManifest {
    /// Manifest format version.
    pub format: u32,
    /// Name of the symbolic object axis in the bindings.
    pub axis: String,
    /// Static sizes.
    pub geometry: Geometry,
    /// Engine file names, in run order (`image.onnx`, `cross.onnx`, `temporal.onnx`, `head.onnx`).
    pub files: Vec<String>,
    /// Which of them carry the object axis.
    pub batched: Vec<String>,
    /// File name → size in bytes and CRC-32 (eight hex digits); empty in manifests written before
    /// they were recorded.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub checksums: BTreeMap<String, FileSum>,
    /// CRC-32 of the `text.onnx` exported with this set (the object engines read its features, so
    /// they belong to that export's weights); absent in older manifests.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub text_crc32: Option<String>,
}

/// Size and CRC-32 of one exported file.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct FileSum {
    /// File size in bytes.
    pub bytes: u64,
    /// CRC-32, eight hex digits.
    pub crc32: String,
}

/// File name of the object set's manifest inside its directory.
pub const OBJECTS_MANIFEST: &str = "objects.json";

impl ObjectManifest {
    /// Reads `dir/objects.json`.
    pub fn read(dir: &Path) -> Result<Self> {
        let p = dir.join(OBJECTS_MANIFEST);
        let text = std::fs::read_to_string(&p).map_err(|e| Error::io(&p, e))?;
        serde_json::from_str(&text).map_err(|e| Error::Config(format!("{}: {e}", p.display())))
    }
}

/// Writes the object engines and `objects.json` into `dir`, recording the text engine of `with` (the
/// whole-frame export they go with) so a set copied beside another export's text engine is refused
/// at load.
pub fn write_object_engines(
    engines: &[ObjectEngine],
    geo: &Geometry,
    with: &crate::graph::export::Manifest,
    dir: &Path,
) -> Result<ObjectManifest> {
    use prost::Message;
    std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
    let mut files = Vec::with_capacity(engines.len());
    let mut batched = Vec::new();
    let mut checksums = BTreeMap::new();
    for e in engines {
        let file = format!("{}.onnx", e.name);
        let path = dir.join(&file);
        let bytes = e.model.encode_to_vec();
        std::fs::write(&path, &bytes).map_err(|err| Error::io(&path, err))?;
        checksums.insert(
            file.clone(),
            FileSum {
                bytes: bytes.len() as u64,
                crc32: crate::engines::checksum::crc32_of(&bytes),
            },
        );
        if e.name != names::IMAGE_PART {
            batched.push(file.clone());
        }
        files.push(file);
    }
    let m = ObjectManifest {
        format: 1,
        axis: OBJECTS_DIM.into(),
        geometry: *geo,
        files,
        batched,
        checksums,
        text_crc32: with
            .engines
            .iter()
            .find(|e| e.name == names::TEXT)
            .and_then(|e| e.crc32.clone()),
    };
    let p = dir.join(OBJECTS_MANIFEST);
    let json = serde_json::to_string_pretty(&m).map_err(|e| Error::Other(e.to_string()))?;
    std::fs::write(&p, json).map_err(|e| Error::io(&p, e))?;
    Ok(m)
}
