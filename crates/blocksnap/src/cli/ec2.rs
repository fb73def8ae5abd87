//! A small EC2 Query client: a form POST (`Action=…&Version=2016-11-15&…`) signed with SigV4 for
//! the service `ec2`, its XML answer read with roxmltree. Only the calls the operator CLI makes.

use crate::api_client::{ClientError, Conn, is_credentials_code};

const VERSION: &str = "2016-11-15";

/// One EC2 call: the answer's XML text, or the service's error (`Code: Message`).
pub async fn call(conn: &Conn, action: &str, params: &[(&str, String)]) -> Result<String, ClientError> {
    let mut form = form_urlencoded::Serializer::new(String::new());
    form.append_pair("Action", action);
    form.append_pair("Version", VERSION);
    for (k, v) in params {
        form.append_pair(k, v);
    }
    let body = form.finish().into_bytes();
    let headers = [("content-type", "application/x-www-form-urlencoded; charset=utf-8".to_string())];
    let a = conn.send("ec2", http::Method::POST, "/", &headers, body, false).await?;
    let text = String::from_utf8_lossy(&a.body).into_owned();
    if a.status.is_success() {
        return Ok(text);
    }
    let (code, message) = match roxmltree::Document::parse(&text) {
        Ok(doc) => (field(&doc, "Code").unwrap_or_default(), field(&doc, "Message").unwrap_or_default()),
        Err(_) => (String::new(), String::new()),
    };
    if code.is_empty() {
        return Err(ClientError::Refused(format!(
            "{} answered {action} with HTTP {} and no EC2 error: is it a blocksnap endpoint?",
            conn.endpoint, a.status
        )));
    }
    let text = format!("{action} refused: {code}: {message}");
    Err(if is_credentials_code(&code) { ClientError::Credentials(text) } else { ClientError::Refused(text) })
}

/// The text of the first element named `name`, anywhere in the document.
pub fn field(doc: &roxmltree::Document, name: &str) -> Option<String> {
    doc.descendants().find(|n| n.has_tag_name(name)).and_then(|n| n.text()).map(|t| t.trim().to_string())
}

/// The text of `node`'s first child element named `name`.
pub fn child(node: roxmltree::Node, name: &str) -> Option<String> {
    node.children().find(|n| n.has_tag_name(name)).and_then(|n| n.text()).map(|t| t.trim().to_string())
}

fn parse(text: &str) -> Result<roxmltree::Document<'_>, ClientError> {
    roxmltree::Document::parse(text).map_err(|e| ClientError::Refused(format!("the EC2 answer is not XML: {e}")))
}

fn required(doc: &roxmltree::Document, name: &str, action: &str) -> Result<String, ClientError> {
    field(doc, name).ok_or_else(|| ClientError::Refused(format!("the {action} answer has no {name}")))
}

/// What the CLI reads of a snapshot.
#[derive(Debug, Clone)]
pub struct SnapshotInfo {
    pub id: String,
    pub volume_id: String,
    pub state: String,
    /// 0..=100.
    pub progress: u8,
    pub volume_size_gib: u64,
    pub state_message: Option<String>,
}

/// What the CLI reads of a volume.
#[derive(Debug, Clone)]
pub struct VolumeInfo {
    pub state: String,
    pub availability_zone: String,
}

pub async fn create_snapshot(conn: &Conn, volume_id: &str, description: Option<&str>) -> Result<String, ClientError> {
    let mut p = vec![("VolumeId", volume_id.to_string())];
    if let Some(d) = description {
        p.push(("Description", d.to_string()));
    }
    let text = call(conn, "CreateSnapshot", &p).await?;
    required(&parse(&text)?, "snapshotId", "CreateSnapshot")
}

pub async fn copy_snapshot(
    dest: &Conn,
    source_region: &str,
    snapshot_id: &str,
    description: Option<&str>,
) -> Result<String, ClientError> {
    let mut p = vec![("SourceRegion", source_region.to_string()), ("SourceSnapshotId", snapshot_id.to_string())];
    if let Some(d) = description {
        p.push(("Description", d.to_string()));
    }
    let text = call(dest, "CopySnapshot", &p).await?;
    required(&parse(&text)?, "snapshotId", "CopySnapshot")
}

pub async fn describe_snapshot(conn: &Conn, snapshot_id: &str) -> Result<SnapshotInfo, ClientError> {
    let text = call(conn, "DescribeSnapshots", &[("SnapshotId.1", snapshot_id.to_string())]).await?;
    let doc = parse(&text)?;
    let item = doc
        .descendants()
        .find(|n| n.has_tag_name("item") && n.children().any(|c| c.has_tag_name("snapshotId")))
        .ok_or_else(|| ClientError::Refused(format!("DescribeSnapshots did not list {snapshot_id}")))?;
    Ok(SnapshotInfo {
        id: child(item, "snapshotId").unwrap_or_default(),
        volume_id: child(item, "volumeId").unwrap_or_default(),
        state: child(item, "status").unwrap_or_default(),
        progress: child(item, "progress")
            .and_then(|p| p.trim_end_matches('%').parse::<u8>().ok())
            .unwrap_or(0)
            .min(100),
        volume_size_gib: child(item, "volumeSize").and_then(|s| s.parse().ok()).unwrap_or(0),
        state_message: child(item, "statusMessage").filter(|m| !m.is_empty()),
    })
}

pub async fn delete_snapshot(conn: &Conn, snapshot_id: &str) -> Result<(), ClientError> {
    call(conn, "DeleteSnapshot", &[("SnapshotId", snapshot_id.to_string())]).await.map(|_| ())
}

pub async fn create_volume(
    conn: &Conn,
    snapshot_id: &str,
    availability_zone: &str,
    size_gib: u64,
) -> Result<String, ClientError> {
    let p = [
        ("SnapshotId", snapshot_id.to_string()),
        ("AvailabilityZone", availability_zone.to_string()),
        ("Size", size_gib.to_string()),
    ];
    let text = call(conn, "CreateVolume", &p).await?;
    required(&parse(&text)?, "volumeId", "CreateVolume")
}

pub async fn describe_volume(conn: &Conn, volume_id: &str) -> Result<VolumeInfo, ClientError> {
    let text = call(conn, "DescribeVolumes", &[("VolumeId.1", volume_id.to_string())]).await?;
    let doc = parse(&text)?;
    let item = doc
        .descendants()
        .find(|n| n.has_tag_name("item") && n.children().any(|c| c.has_tag_name("volumeId")))
        .ok_or_else(|| ClientError::Refused(format!("DescribeVolumes did not list {volume_id}")))?;
    Ok(VolumeInfo {
        state: child(item, "status").unwrap_or_default(),
        availability_zone: child(item, "availabilityZone").unwrap_or_default(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_fields_and_items() {
        let text = r#"<?xml version="1.0" encoding="UTF-8"?>
<DescribeSnapshotsResponse xmlns="http://ec2.amazonaws.com/doc/2016-11-15/">
  <requestId>r</requestId>
  <snapshotSet><item><snapshotId>snap-1</snapshotId><volumeId>vol-1</volumeId><status>pending</status>
  <progress>42%</progress><volumeSize>8</volumeSize><tagSet><item><key>k</key></item></tagSet></item></snapshotSet>
</DescribeSnapshotsResponse>"#;
        let doc = roxmltree::Document::parse(text).unwrap();
        assert_eq!(field(&doc, "snapshotId").as_deref(), Some("snap-1"));
        assert_eq!(field(&doc, "progress").as_deref(), Some("42%"));
        assert_eq!(field(&doc, "nothing"), None);
    }
}
