//! ModifyVolume and DescribeVolumesModifications.
//!
//! The new size, type and performance are in effect at once (the file grew before the commit), and
//! the modification then moves through AWS's states over the engine's time ([`crate::clock`]),
//! computed when read, no job: `modifying` for [`MODIFYING_MS`], then `optimizing` for one second
//! per GiB of the target size (10 s to 6 h), then `completed`; `progress` grows with the elapsed
//! share. A volume whose modification is still modifying or optimizing refuses another
//! (`IncorrectModificationState`), as EC2 does.

use crate::describe::{self, ListQuery, Page};
use crate::engine::{Engine, Rec, State};
use crate::error::{EngineError, Result};
use crate::filter::Filterable;
use crate::model::*;

use super::{GIB, check_type, format_time};

/// How long a modification is `modifying`.
pub const MODIFYING_MS: i64 = 5_000;
/// `optimizing` lasts this long per GiB of the target size, within the bounds below.
const OPTIMIZING_MS_PER_GIB: i64 = 1_000;
const OPTIMIZING_MIN_MS: i64 = 10_000;
const OPTIMIZING_MAX_MS: i64 = 6 * 3600 * 1000;

#[derive(Debug, Clone, Default)]
pub struct ModifyVolume {
    pub volume_id: String,
    pub size: Option<i64>,
    pub volume_type: Option<String>,
    pub iops: Option<i64>,
    pub throughput: Option<i64>,
    pub multi_attach_enabled: Option<bool>,
    pub dry_run: bool,
}

#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct VolumeModification {
    pub volume_id: String,
    pub state: String,
    pub target_size: u32,
    pub target_iops: Option<u32>,
    pub target_volume_type: String,
    pub target_throughput: Option<u32>,
    pub target_multi_attach_enabled: bool,
    pub original_size: u32,
    pub original_iops: Option<u32>,
    pub original_volume_type: String,
    pub original_throughput: Option<u32>,
    pub original_multi_attach_enabled: bool,
    pub progress: u32,
    pub start_time: Millis,
    pub end_time: Option<Millis>,
    /// How long it is `modifying` and then `optimizing` (ms). `None`: a record written complete
    /// (catalogs from before the phases).
    #[serde(default)]
    pub phases_ms: Option<(i64, i64)>,
}

impl VolumeModification {
    /// The modification as it stands at `now`.
    pub fn at(&self, now: Millis) -> VolumeModification {
        let mut m = self.clone();
        let Some((modifying, optimizing)) = self.phases_ms else { return m };
        let elapsed = (now - self.start_time).max(0);
        let total = (modifying + optimizing).max(1);
        if elapsed >= total {
            m.state = "completed".into();
            m.progress = 100;
            m.end_time = Some(self.start_time + total);
        } else {
            m.state = if elapsed < modifying { "modifying" } else { "optimizing" }.into();
            m.progress = ((elapsed * 100 / total) as u32).min(99);
            m.end_time = None;
        }
        m
    }

    pub fn in_progress(&self, now: Millis) -> bool {
        self.at(now).state != "completed"
    }
}

impl Filterable for VolumeModification {
    fn field(&self, name: &str) -> Option<Vec<String>> {
        let opt = |v: Option<u32>| v.map(|x| x.to_string()).into_iter().collect::<Vec<_>>();
        Some(match name {
            "modification-state" => vec![self.state.clone()],
            "original-iops" => opt(self.original_iops),
            "original-size" => vec![self.original_size.to_string()],
            "original-volume-type" => vec![self.original_volume_type.clone()],
            "original-multi-attach-enabled" => vec![self.original_multi_attach_enabled.to_string()],
            "start-time" => vec![format_time(self.start_time)],
            "target-iops" => opt(self.target_iops),
            "target-size" => vec![self.target_size.to_string()],
            "target-volume-type" => vec![self.target_volume_type.clone()],
            "target-multi-attach-enabled" => vec![self.target_multi_attach_enabled.to_string()],
            "target-throughput" => opt(self.target_throughput),
            "volume-id" => vec![self.volume_id.clone()],
            _ => return None,
        })
    }
    fn tags(&self) -> &Tags {
        static NONE: std::sync::OnceLock<Tags> = std::sync::OnceLock::new();
        NONE.get_or_init(Tags::new)
    }
}

impl Engine {
    pub fn modify_volume(&self, ctx: &Ctx, req: ModifyVolume) -> Result<VolumeModification> {
        // Validated under the engine lock (twice when the bytes grow: once more after the volume is
        // claimed); the file grows without the lock, so a slow disk stalls only this call.
        let plan = |st: &State| -> Result<(Volume, VolumeModification, u32)> {
            let v = self.volume_of(st, ctx, &req.volume_id)?.clone();
            self.check_volume_here(&v)?;
            if let Some(m) = v.last_modification.as_ref().map(|m| m.at(now_millis()))
                && m.state != "completed"
            {
                return Err(EngineError::client(
                    "IncorrectModificationState",
                    format!(
                        "Volume {} is already being modified (state {}, {}% done); wait until the modification has completed.",
                        v.id, m.state, m.progress
                    ),
                ));
            }
            if req.size.is_none()
                && req.volume_type.is_none()
                && req.iops.is_none()
                && req.throughput.is_none()
                && req.multi_attach_enabled.is_none()
            {
                return Err(EngineError::missing(
                    "At least one of the parameters size, volumeType, iops, throughput or multiAttachEnabled must be specified.",
                ));
            }
            let size = req.size.unwrap_or(v.size_gib as i64);
            if size < v.size_gib as i64 {
                return Err(EngineError::invalid_value(format!(
                    "New size cannot be smaller than existing size: the volume {} is {}GiB and cannot shrink to {size}GiB.",
                    v.id, v.size_gib
                )));
            }
            let vtype = req.volume_type.clone().unwrap_or_else(|| v.volume_type.clone());
            let same_type = vtype == v.volume_type;
            let iops_in = req.iops.or(if same_type && vtype != "gp2" { v.iops.map(i64::from) } else { None });
            let tp_in = req.throughput.or(if same_type { v.throughput.map(i64::from) } else { None });
            let multi = req.multi_attach_enabled.unwrap_or(v.multi_attach_enabled);
            let (iops, throughput) = check_type(&vtype, size, iops_in, tp_in, multi)?;
            if req.dry_run {
                return Err(EngineError::DryRun);
            }
            let now = now_millis();
            let modification = VolumeModification {
                volume_id: v.id.clone(),
                state: "modifying".into(),
                target_size: size as u32,
                target_iops: iops,
                target_volume_type: vtype.clone(),
                target_throughput: throughput,
                target_multi_attach_enabled: multi,
                original_size: v.size_gib,
                original_iops: v.iops,
                original_volume_type: v.volume_type.clone(),
                original_throughput: v.throughput,
                original_multi_attach_enabled: v.multi_attach_enabled,
                progress: 0,
                start_time: now,
                end_time: None,
                phases_ms: Some((
                    MODIFYING_MS,
                    (size * OPTIMIZING_MS_PER_GIB).clamp(OPTIMIZING_MIN_MS, OPTIMIZING_MAX_MS),
                )),
            };
            let original = v.size_gib;
            let mut nv = v;
            nv.size_gib = size as u32;
            nv.volume_type = vtype;
            nv.iops = iops;
            nv.throughput = throughput;
            nv.multi_attach_enabled = multi;
            // The change is in effect at once; its record moves through the states over time.
            nv.last_modification = Some(modification.clone());
            Ok((nv, modification, original))
        };
        let (mut nv, mut modification, mut original) = plan(&self.lock())?;
        let mut _claim = None;
        if nv.size_gib != original
            && let Some(s) = &self.storage
        {
            let deadline = std::time::Instant::now() + blocksnap_volume::DRAIN_TIMEOUT;
            _claim = Some(self.jobs.claims.claim(std::slice::from_ref(&nv.id), deadline).ok_or_else(|| {
                EngineError::client(
                    "IncorrectModificationState",
                    format!("Volume {} is being snapshotted or modified; retry in a few seconds.", nv.id),
                )
            })?);
            (nv, modification, original) = plan(&self.lock())?;
            if nv.size_gib != original {
                match s.volumes.resize(&nv.id, nv.size_gib as u64 * GIB) {
                    // Not allocated yet: it will be created at the new size.
                    Ok(()) | Err(blocksnap_volume::Error::NotFound(_)) => {}
                    Err(e) => return Err(EngineError::Internal(format!("growing volume {}: {e}", nv.id))),
                }
            }
        }
        let mut st = self.lock();
        if st.volumes.get(&nv.id).is_none_or(|v| v.size_gib != original) {
            return Err(EngineError::client(
                "IncorrectModificationState",
                format!("Volume {} was modified by another request meanwhile; retry.", nv.id),
            ));
        }
        self.commit(&mut st, vec![Rec::Volume(nv)])?;
        Ok(modification)
    }

    /// DescribeVolumesModifications: the latest modification of each of the caller's volumes.
    pub fn describe_volume_modifications(&self, ctx: &Ctx, q: &ListQuery) -> Result<Page<VolumeModification>> {
        let st = self.lock();
        for id in &q.ids {
            self.volume_of(&st, ctx, id)?;
        }
        let now = now_millis();
        let mods: Vec<VolumeModification> = st
            .volumes
            .values()
            .filter(|v| v.account == ctx.account && v.region == ctx.region)
            .filter_map(|v| v.last_modification.as_ref().map(|m| m.at(now)))
            .collect();
        describe::run(
            q,
            &[
                "modification-state",
                "original-iops",
                "original-size",
                "original-volume-type",
                "original-multi-attach-enabled",
                "start-time",
                "target-iops",
                "target-size",
                "target-volume-type",
                "target-multi-attach-enabled",
                "target-throughput",
                "volume-id",
            ],
            describe::VOLUME_MODIFICATIONS,
            mods.iter(),
            |m| &m.volume_id,
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn modification(phases: Option<(i64, i64)>) -> VolumeModification {
        VolumeModification {
            volume_id: "vol-0123456789abcdef0".into(),
            state: "modifying".into(),
            target_size: 20,
            target_iops: None,
            target_volume_type: "gp3".into(),
            target_throughput: None,
            target_multi_attach_enabled: false,
            original_size: 2,
            original_iops: None,
            original_volume_type: "gp3".into(),
            original_throughput: None,
            original_multi_attach_enabled: false,
            progress: 0,
            start_time: 1_000,
            end_time: None,
            phases_ms: phases,
        }
    }

    #[test]
    fn states_and_progress_follow_the_clock() {
        let m = modification(Some((5_000, 20_000)));
        assert_eq!((m.at(1_000).state.as_str(), m.at(1_000).progress), ("modifying", 0));
        let o = m.at(1_000 + 15_000);
        assert_eq!((o.state.as_str(), o.progress, o.end_time), ("optimizing", 60, None));
        let c = m.at(1_000 + 25_000);
        assert_eq!((c.state.as_str(), c.progress, c.end_time), ("completed", 100, Some(26_000)));
        assert!(m.in_progress(25_999) && !m.in_progress(26_000));
    }

    #[test]
    fn records_without_phases_read_as_written() {
        let mut m = modification(None);
        m.state = "completed".into();
        assert_eq!(m.at(i64::MAX).state, "completed");
        assert!(!m.in_progress(0));
    }
}
