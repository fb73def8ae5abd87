//! ModifyVolume and DescribeVolumesModifications.

use crate::describe::{self, ListQuery, Page};
use crate::engine::{Engine, Rec, State};
use crate::error::{EngineError, Result};
use crate::filter::Filterable;
use crate::model::*;

use super::{GIB, check_type, format_time};

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
            };
            let original = v.size_gib;
            let mut nv = v;
            nv.size_gib = size as u32;
            nv.volume_type = vtype;
            nv.iops = iops;
            nv.throughput = throughput;
            nv.multi_attach_enabled = multi;
            // The change is in effect at once: the record DescribeVolumesModifications shows is done.
            let mut done = modification.clone();
            done.state = "completed".into();
            done.progress = 100;
            done.end_time = Some(now);
            nv.last_modification = Some(done);
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
        let mods: Vec<VolumeModification> = st
            .volumes
            .values()
            .filter(|v| v.account == ctx.account && v.region == ctx.region)
            .filter_map(|v| v.last_modification.clone())
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
