//! The sidecar written next to every plan (`frame.plan.json`): which TensorRT and GPU built it and the
//! I/O it must have. Checked before TensorRT sees the plan, so an engine from another TensorRT version
//! or GPU, or an engine whose tensors do not match what the pipeline expects, gets a clear error instead
//! of TensorRT's.

use crate::error::{Error, Result};
use crate::tensor::TensorSpec;
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

/// TensorRT version as `major*10000 + minor*100 + patch` (TensorRT 10+'s `NV_TENSORRT_VERSION` and
/// `getInferLibVersion()`) → `"major.minor.patch"`.
pub fn version_string(v: i32) -> String {
    format!("{}.{}.{}", v / 10000, (v / 100) % 100, v % 100)
}

/// An exact TensorRT version: `major.minor.patch.build`, what a plan records and needs at load time
/// (TensorRT deserializes a plan only with the very library that built it, unless the plan was built
/// version-compatible, which ours are not).
///
/// Written in sidecars as the string `"10.3.0.30"`. Sidecars from before the build number was recorded
/// hold the integer `major*10000 + minor*100 + patch`; they read back with `build: None`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct TrtVersion {
    /// Major version.
    pub major: u32,
    /// Minor version.
    pub minor: u32,
    /// Patch version.
    pub patch: u32,
    /// Build number (`NV_TENSORRT_BUILD`, `getInferLibBuildVersion()`), when known.
    pub build: Option<u32>,
}

impl TrtVersion {
    /// A version with its build number.
    pub fn new(major: u32, minor: u32, patch: u32, build: u32) -> Self {
        TrtVersion {
            major,
            minor,
            patch,
            build: Some(build),
        }
    }

    /// From the four numbers TensorRT reports (`getInferLib{Major,Minor,Patch,Build}Version()`); a
    /// negative build (unknown) gives `build: None`, other negative parts count as 0.
    pub fn from_parts(parts: [i32; 4]) -> Self {
        let u = |v: i32| v.max(0) as u32;
        TrtVersion {
            major: u(parts[0]),
            minor: u(parts[1]),
            patch: u(parts[2]),
            build: (parts[3] >= 0).then(|| parts[3] as u32),
        }
    }

    /// Whether a plan built by `self` can be deserialized by the library `running`: major, minor, patch
    /// and build all equal. A build number missing on either side (an old sidecar) is not compared.
    pub fn loads_plans_of(&self, running: &TrtVersion) -> bool {
        (self.major, self.minor, self.patch) == (running.major, running.minor, running.patch)
            && match (self.build, running.build) {
                (Some(a), Some(b)) => a == b,
                _ => true,
            }
    }
}

impl From<i32> for TrtVersion {
    /// From `major*10000 + minor*100 + patch` (no build number).
    fn from(v: i32) -> Self {
        let v = v.max(0) as u32;
        TrtVersion {
            major: v / 10000,
            minor: (v / 100) % 100,
            patch: v % 100,
            build: None,
        }
    }
}

impl std::fmt::Display for TrtVersion {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}.{}.{}", self.major, self.minor, self.patch)?;
        if let Some(b) = self.build {
            write!(f, ".{b}")?;
        }
        Ok(())
    }
}

impl std::str::FromStr for TrtVersion {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        let bad = || {
            Error::Config(format!(
                "TensorRT version {s:?} is not major.minor.patch[.build]"
            ))
        };
        let parts: Vec<u32> = s
            .split('.')
            .map(|p| p.parse::<u32>().map_err(|_| bad()))
            .collect::<Result<_>>()?;
        match parts[..] {
            [major, minor, patch] => Ok(TrtVersion {
                major,
                minor,
                patch,
                build: None,
            }),
            [major, minor, patch, build] => Ok(TrtVersion::new(major, minor, patch, build)),
            _ => Err(bad()),
        }
    }
}

impl Serialize for TrtVersion {
    fn serialize<S: serde::Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for TrtVersion {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Repr {
            Text(String),
            Legacy(i32),
        }
        match Repr::deserialize(d)? {
            Repr::Text(t) => t.parse().map_err(serde::de::Error::custom),
            Repr::Legacy(v) => Ok(TrtVersion::from(v)),
        }
    }
}

/// What built a plan, and its I/O.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PlanInfo {
    /// Engine name (`frame`, ...).
    pub engine: String,
    /// Profile that built it.
    pub profile: String,
    /// Exact TensorRT library version that built it (`"10.3.0.30"`).
    pub tensorrt: TrtVersion,
    /// GPU name.
    pub device: String,
    /// GPU compute capability (major, minor); plans are specific to it.
    pub compute_capability: (i32, i32),
    /// Inputs the engine must have.
    pub inputs: Vec<TensorSpec>,
    /// Outputs the engine must have.
    pub outputs: Vec<TensorSpec>,
    /// CRC-32 of the ONNX file the plan was built from (eight hex digits), compared with the
    /// engine directory's manifest at load; absent in sidecars written before it was recorded.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub onnx_crc32: Option<String>,
}

impl PlanInfo {
    /// Sidecar path of a plan (`frame.plan` → `frame.plan.json`).
    pub fn path_for(plan: &Path) -> PathBuf {
        let mut s = plan.as_os_str().to_owned();
        s.push(".json");
        PathBuf::from(s)
    }

    /// Reads the sidecar of `plan`, if there is one.
    pub fn load_for(plan: &Path) -> Result<Option<Self>> {
        let p = Self::path_for(plan);
        if !p.exists() {
            return Ok(None);
        }
        let text = std::fs::read_to_string(&p).map_err(|e| Error::io(&p, e))?;
        serde_json::from_str(&text)
            .map(Some)
            .map_err(|e| Error::Config(format!("{}: {e}", p.display())))
    }

    /// Writes the sidecar of `plan`.
    pub fn save_for(&self, plan: &Path) -> Result<()> {
        let p = Self::path_for(plan);
        let text = serde_json::to_string_pretty(self)
            .map_err(|e| Error::Other(format!("plan info: {e}")))?;
        std::fs::write(&p, text + "\n").map_err(|e| Error::io(&p, e))
    }

    /// Fails unless the running TensorRT (exactly the same version: major, minor, patch and build) and
    /// GPU (same compute capability) can load this plan. TensorRT plans are not portable across either.
    pub fn check_compatible(
        &self,
        tensorrt: impl Into<TrtVersion>,
        compute_capability: (i32, i32),
    ) -> Result<()> {
        let running: TrtVersion = tensorrt.into();
        if !self.tensorrt.loads_plans_of(&running) || self.compute_capability != compute_capability
        {
            return Err(Error::Backend(format!(
                "engine {} was built with TensorRT {} for {} (sm_{}{}); this machine has TensorRT {} on \
                 sm_{}{}. Plans are specific to the exact TensorRT version (build number included) and \
                 GPU: rebuild with `referdino build --profile engines/profiles/<board>.toml` on this board",
                self.engine,
                self.tensorrt,
                self.device,
                self.compute_capability.0,
                self.compute_capability.1,
                running,
                compute_capability.0,
                compute_capability.1
            )));
        }
        if self.tensorrt.build.is_none() || running.build.is_none() {
            log::warn!(
                "engine {}: built with TensorRT {}, running {}: the build numbers cannot be compared \
                 (sidecar written before referdino recorded them); TensorRT itself checks at load",
                self.engine,
                self.tensorrt,
                running
            );
        }
        Ok(())
    }
}

/// Compares the I/O an engine has with the I/O expected of it, naming every missing, unexpected or
/// mismatched tensor.
pub fn check_specs(
    engine: &str,
    expected_in: &[TensorSpec],
    expected_out: &[TensorSpec],
    actual_in: &[TensorSpec],
    actual_out: &[TensorSpec],
) -> Result<()> {
    let mut problems = Vec::new();
    for (kind, exp, act) in [
        ("input", expected_in, actual_in),
        ("output", expected_out, actual_out),
    ] {
        for e in exp {
            match act.iter().find(|a| a.name == e.name) {
                None => problems.push(format!("missing {kind} {}", e.name)),
                Some(a) if a.dtype != e.dtype || a.shape != e.shape => problems.push(format!(
                    "{kind} {} is {:?} {:?}, expected {:?} {:?}",
                    e.name, a.dtype, a.shape, e.dtype, e.shape
                )),
                _ => {}
            }
        }
        for a in act {
            if !exp.iter().any(|e| e.name == a.name) {
                problems.push(format!("unexpected {kind} {}", a.name));
            }
        }
    }
    if problems.is_empty() {
        Ok(())
    } else {
        Err(Error::Backend(format!(
            "engine {engine} does not match its expected bindings: {} (was it built from another \
             export or profile?)",
            problems.join("; ")
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn info(tensorrt: TrtVersion) -> PlanInfo {
        PlanInfo {
            engine: "frame".into(),
            profile: "p".into(),
            tensorrt,
            device: "Orin".into(),
            compute_capability: (8, 7),
            inputs: vec![],
            outputs: vec![],
            onnx_crc32: None,
        }
    }

    #[test]
    fn version_text_and_legacy_integer() {
        let v: TrtVersion = "10.3.0.30".parse().unwrap();
        assert_eq!(v, TrtVersion::new(10, 3, 0, 30));
        assert_eq!(v.to_string(), "10.3.0.30");
        assert_eq!("11.4.0".parse::<TrtVersion>().unwrap().build, None);
        for bad in ["", "10", "10.3", "10.3.x.1", "1.2.3.4.5", "-1.2.3"] {
            assert!(bad.parse::<TrtVersion>().is_err(), "{bad:?}");
        }
        assert_eq!(TrtVersion::from(100300).to_string(), "10.3.0");
        assert_eq!(TrtVersion::from(110400).to_string(), "11.4.0");
        assert_eq!(
            TrtVersion::from_parts([10, 3, 0, 30]),
            TrtVersion::new(10, 3, 0, 30)
        );
        assert_eq!(TrtVersion::from_parts([10, 3, 0, -1]).build, None);
        // Sidecars: the exact string now, the old integer still reads.
        let j = serde_json::to_string(&info(v)).unwrap();
        assert!(j.contains(r#""tensorrt":"10.3.0.30""#), "{j}");
        assert_eq!(serde_json::from_str::<PlanInfo>(&j).unwrap().tensorrt, v);
        let old = j.replace(r#""10.3.0.30""#, "100300");
        let back: PlanInfo = serde_json::from_str(&old).unwrap();
        assert_eq!(back.tensorrt, TrtVersion::from(100300));
        // ... and so does one with the DLA field profiles no longer have.
        let dla = j.replace(r#""inputs""#, r#""dla_core":null,"inputs""#);
        assert!(serde_json::from_str::<PlanInfo>(&dla).is_ok());
    }

    #[test]
    fn plans_need_the_exact_version() {
        let built = info(TrtVersion::new(10, 3, 0, 30));
        built
            .check_compatible(TrtVersion::new(10, 3, 0, 30), (8, 7))
            .unwrap();
        for other in [
            TrtVersion::new(10, 3, 0, 31), // same 10.3.0, other build
            TrtVersion::new(10, 3, 1, 30), // other patch
            TrtVersion::new(10, 4, 0, 30),
            TrtVersion::new(11, 3, 0, 30),
        ] {
            let e = built
                .check_compatible(other, (8, 7))
                .unwrap_err()
                .to_string();
            assert!(
                e.contains("10.3.0.30") && e.contains(&other.to_string()),
                "{e}"
            );
            assert!(e.contains("build number included"), "{e}");
        }
        assert!(built
            .check_compatible(TrtVersion::new(10, 3, 0, 30), (8, 9))
            .is_err());
        // A legacy sidecar without a build number: major.minor.patch still must match.
        let legacy = info(TrtVersion::from(100300));
        legacy
            .check_compatible(TrtVersion::new(10, 3, 0, 30), (8, 7))
            .unwrap();
        assert!(legacy.check_compatible(100305, (8, 7)).is_err());
    }
}
