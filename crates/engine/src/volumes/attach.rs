//! AttachVolume, DetachVolume, and which volumes are attached (their NBD exports).

use std::sync::Arc;

use crate::engine::{Engine, Rec};
use crate::error::{EngineError, Result};
use crate::model::*;

#[derive(Debug, Clone, Default)]
pub struct DetachVolume {
    pub volume_id: String,
    pub instance_id: Option<String>,
    pub device: Option<String>,
    pub force: bool,
    pub dry_run: bool,
}

/// An attachment as AttachVolume/DetachVolume return it.
#[derive(Debug, Clone)]
pub struct AttachmentInfo {
    pub volume_id: String,
    pub attachment: Attachment,
}

/// EC2 device names: `/dev/sd[a-z]`, `/dev/xvd[a-z]`, optionally with a further letter or partition
/// digit (`/dev/sdf1`, `/dev/xvdba`), and `xvd[a-z]` for Windows.
pub(crate) fn valid_device(d: &str) -> bool {
    let rest = if let Some(r) = d.strip_prefix("/dev/sd") {
        r
    } else if let Some(r) = d.strip_prefix("/dev/xvd") {
        r
    } else if let Some(r) = d.strip_prefix("/dev/nvme") {
        return !r.is_empty() && r.len() < 8;
    } else if let Some(r) = d.strip_prefix("xvd") {
        r
    } else {
        return false;
    };
    let b = rest.as_bytes();
    match b.len() {
        1 => b[0].is_ascii_lowercase(),
        2 => b[0].is_ascii_lowercase() && (b[1].is_ascii_lowercase() || (b'1'..=b'9').contains(&b[1])),
        3 => b[0].is_ascii_lowercase() && (b'1'..=b'9').contains(&b[1]) && b[2].is_ascii_digit(),
        _ => false,
    }
}

impl Engine {
    pub fn attach_volume(
        &self,
        ctx: &Ctx,
        volume_id: &str,
        instance_id: &str,
        device: &str,
        dry_run: bool,
    ) -> Result<AttachmentInfo> {
        let mut st = self.lock();
        let v = self.volume_of(&st, ctx, volume_id)?.clone();
        let inst = self.instance_of(&st, ctx, instance_id)?.clone();
        self.check_volume_here(&v)?;
        if !valid_device(device) {
            return Err(EngineError::invalid_value(format!(
                "Value ({device}) for parameter device is invalid. {device} is not a valid EBS device name."
            )));
        }
        if matches!(inst.state, InstanceState::Terminated | InstanceState::ShuttingDown) {
            return Err(EngineError::client(
                "IncorrectInstanceState",
                format!(
                    "The instance '{instance_id}' is not in a valid state for this operation ({}).",
                    inst.state.as_str()
                ),
            ));
        }
        if v.availability_zone != inst.availability_zone {
            return Err(EngineError::client(
                "InvalidVolume.ZoneMismatch",
                format!("The volume '{volume_id}' is not in the same availability zone as instance '{instance_id}'"),
            ));
        }
        if v.attachments.iter().any(|a| a.instance_id == instance_id) {
            return Err(EngineError::client(
                "VolumeInUse",
                format!("{volume_id} is already attached to instance {instance_id}"),
            ));
        }
        if !v.attachments.is_empty() && !v.multi_attach_enabled {
            return Err(EngineError::client("VolumeInUse", format!("{volume_id} is already attached to an instance")));
        }
        if v.attachments.len() >= 16 {
            return Err(EngineError::client(
                "AttachmentLimitExceeded",
                format!("{volume_id} is already attached to 16 instances, the Multi-Attach maximum"),
            ));
        }
        if v.state != VolumeState::Available && v.state != VolumeState::InUse {
            return Err(EngineError::client(
                "IncorrectState",
                format!("Volume '{volume_id}' is in the '{}' state.", v.state.as_str()),
            ));
        }
        if device == inst.root_device_name
            || st
                .volumes
                .values()
                .any(|o| o.attachments.iter().any(|a| a.instance_id == instance_id && a.device == device))
        {
            return Err(EngineError::invalid_value(format!(
                "Invalid value '{device}' for unixDevice. Attachment point {device} is already in use"
            )));
        }
        if dry_run {
            return Err(EngineError::DryRun);
        }
        let att = Attachment {
            instance_id: instance_id.to_string(),
            device: device.to_string(),
            state: AttachState::Attached,
            attach_time: now_millis(),
            delete_on_termination: false,
        };
        let mut nv = v;
        nv.attachments.push(att.clone());
        nv.state = VolumeState::InUse;
        self.commit(&mut st, vec![Rec::Volume(nv)])?;
        let mut answer = att;
        answer.state = AttachState::Attaching;
        Ok(AttachmentInfo { volume_id: volume_id.to_string(), attachment: answer })
    }

    pub fn detach_volume(&self, ctx: &Ctx, req: DetachVolume) -> Result<AttachmentInfo> {
        let mut st = self.lock();
        let v = self.volume_of(&st, ctx, &req.volume_id)?.clone();
        if let Some(i) = &req.instance_id {
            self.instance_of(&st, ctx, i)?;
        }
        if v.attachments.is_empty() {
            return Err(EngineError::client(
                "IncorrectState",
                format!("Volume '{}' is in the '{}' state.", v.id, v.state.as_str()),
            ));
        }
        let candidates: Vec<&Attachment> = v
            .attachments
            .iter()
            .filter(|a| req.instance_id.as_deref().is_none_or(|i| a.instance_id == i))
            .filter(|a| req.device.as_deref().is_none_or(|d| a.device == d))
            .collect();
        let att = match candidates.as_slice() {
            [one] => (*one).clone(),
            [] => {
                return Err(EngineError::client(
                    "InvalidAttachment.NotFound",
                    format!(
                        "Attachment point {} is not in use for instance {} with volume {}",
                        req.device.as_deref().unwrap_or("(any)"),
                        req.instance_id.as_deref().unwrap_or("(any)"),
                        v.id
                    ),
                ));
            }
            _ => {
                return Err(EngineError::combination(format!(
                    "Volume {} is attached to several instances; specify InstanceId to detach it",
                    v.id
                )));
            }
        };
        if let Some(inst) = st.instances.get(&att.instance_id)
            && inst.root_device_name == att.device
            && !matches!(inst.state, InstanceState::Stopped | InstanceState::Terminated)
        {
            return Err(EngineError::client(
                "IncorrectState",
                format!(
                    "Unable to detach root volume '{}' from instance '{}': stop the instance first",
                    v.id, att.instance_id
                ),
            ));
        }
        if req.dry_run {
            return Err(EngineError::DryRun);
        }
        let mut nv = v;
        nv.attachments.retain(|a| a.instance_id != att.instance_id);
        if nv.attachments.is_empty() {
            nv.state = VolumeState::Available;
        }
        let still_attached = !nv.attachments.is_empty();
        self.commit(&mut st, vec![Rec::Volume(nv)])?;
        drop(st);
        if !still_attached {
            self.close_export(&req.volume_id);
        }
        let mut answer = att;
        answer.state = AttachState::Detaching;
        Ok(AttachmentInfo { volume_id: req.volume_id, attachment: answer })
    }

    /// Is the volume attached (so its NBD export may be served)?
    pub fn volume_attached(&self, volume_id: &str) -> bool {
        self.lock().volumes.get(volume_id).is_some_and(|v| !v.attachments.is_empty())
    }

    /// The live volume behind an attached volume's NBD export, if it is attached.
    pub fn attached_volume(&self, volume_id: &str) -> Option<Arc<blocksnap_volume::Volume>> {
        let size = {
            let st = self.lock();
            let v = st.volumes.get(volume_id).filter(|v| !v.attachments.is_empty())?;
            v.size_gib
        };
        self.live_volume(volume_id, size).ok()
    }

    /// Volume ids whose NBD export may be served (attached), for NBD `LIST`.
    pub fn attached_volume_ids(&self) -> Vec<String> {
        self.lock().volumes.values().filter(|v| !v.attachments.is_empty()).map(|v| v.id.clone()).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn devices() {
        for ok in ["/dev/sdf", "/dev/xvdf", "/dev/sdf1", "/dev/xvdba", "xvdg", "/dev/sda1"] {
            assert!(valid_device(ok), "{ok}");
        }
        for bad in ["sdf", "/dev/", "/dev/sdF", "/dev/sdf123", "/etc/passwd", ""] {
            assert!(!valid_device(bad), "{bad}");
        }
    }
}
