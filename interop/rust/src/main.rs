//! The blocksnap scenario through the AWS SDK for Rust (its own EC2 Query and JSON serialisers, SigV4
//! signer, paginators and waiters).
//!
//!   BLOCKSNAP_ENDPOINT=http://127.0.0.1:4566 AWS_ACCESS_KEY_ID=… AWS_SECRET_ACCESS_KEY=… \
//!     cargo run --manifest-path interop/rust/Cargo.toml
//!
//! Prints one line per step; exits 1 at the first failed step.

use std::future::Future;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result, bail, ensure};
use aws_config::{BehaviorVersion, Region, SdkConfig};
use aws_sdk_ec2::client::Waiters;
use aws_sdk_ec2::error::ProvideErrorMetadata;
use aws_sdk_ec2::types::{
    Filter, InstanceSpecification, Placement, ResourceType, Tag, TagSpecification, VolumeType,
};
use aws_sdk_lightsail::types::{DiskSnapshotState, DiskState, OperationStatus};

const WAIT: Duration = Duration::from_secs(120);

async fn config(endpoint: &str, region: &str) -> SdkConfig {
    aws_config::defaults(BehaviorVersion::latest())
        .endpoint_url(endpoint)
        .region(Region::new(region.to_string()))
        .load()
        .await
}

async fn step<T, F: Future<Output = Result<T>>>(name: &str, f: F) -> Result<T> {
    match f.await {
        Ok(v) => {
            println!("ok   {name}");
            Ok(v)
        }
        Err(e) => {
            println!("FAIL {name}: {e:#}");
            Err(e)
        }
    }
}

/// Call `f` until `done` holds (every 300 ms, at most two minutes).
async fn poll<T, F, Fut>(what: &str, mut f: F, done: impl Fn(&T) -> bool) -> Result<T>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T>>,
{
    let deadline = Instant::now() + WAIT;
    loop {
        let v = f().await?;
        if done(&v) {
            return Ok(v);
        }
        if Instant::now() > deadline {
            bail!("{what} not reached within {WAIT:?}");
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
}

fn tagged(kind: ResourceType, run: &str) -> TagSpecification {
    TagSpecification::builder().resource_type(kind).tags(Tag::builder().key("interop").value(run).build()).build()
}

#[tokio::main]
async fn main() {
    if let Err(e) = scenario().await {
        eprintln!("scenario failed: {e:#}");
        std::process::exit(1);
    }
}

async fn scenario() -> Result<()> {
    let endpoint = std::env::var("BLOCKSNAP_ENDPOINT").context("set BLOCKSNAP_ENDPOINT")?;
    let region = std::env::var("AWS_REGION").unwrap_or_else(|_| "us-east-1".into());
    let copy_region = "eu-west-1";
    let ls_region = "us-west-2";
    let run = format!("rs-{}", SystemTime::now().duration_since(UNIX_EPOCH)?.as_millis());
    let ec2 = aws_sdk_ec2::Client::new(&config(&endpoint, &region).await);
    let ec2_copy = aws_sdk_ec2::Client::new(&config(&endpoint, copy_region).await);
    let kms_copy = aws_sdk_kms::Client::new(&config(&endpoint, copy_region).await);
    let ls = aws_sdk_lightsail::Client::new(&config(&endpoint, ls_region).await);
    let az = format!("{region}a");

    let instance_id = step("DescribeImages + RunInstances + wait_until_instance_running", async {
        let images = ec2.describe_images().send().await?;
        let image = images.images().first().and_then(|i| i.image_id()).context("no image")?;
        let r = ec2
            .run_instances()
            .image_id(image)
            .min_count(1)
            .max_count(1)
            .placement(Placement::builder().availability_zone(&az).build())
            .tag_specifications(tagged(ResourceType::Instance, &run))
            .send()
            .await?;
        let id = r.instances().first().and_then(|i| i.instance_id()).context("no instance")?.to_string();
        ec2.wait_until_instance_running().instance_ids(&id).wait(WAIT).await?;
        Ok(id)
    })
    .await?;

    let volume_id = step("CreateVolume + wait_until_volume_available", async {
        let v = ec2
            .create_volume()
            .availability_zone(&az)
            .size(1)
            .volume_type(VolumeType::Gp3)
            .tag_specifications(tagged(ResourceType::Volume, &run))
            .send()
            .await?;
        ensure!(v.size() == Some(1) && v.availability_zone() == Some(az.as_str()), "unexpected volume {v:?}");
        let id = v.volume_id().context("no volume id")?.to_string();
        ec2.wait_until_volume_available().volume_ids(&id).wait(WAIT).await?;
        Ok(id)
    })
    .await?;

    step("AttachVolume + wait_until_volume_in_use", async {
        let a = ec2.attach_volume().volume_id(&volume_id).instance_id(&instance_id).device("/dev/sdf").send().await?;
        ensure!(a.device() == Some("/dev/sdf"));
        ec2.wait_until_volume_in_use().volume_ids(&volume_id).wait(WAIT).await?;
        let d = ec2.describe_volumes().volume_ids(&volume_id).send().await?;
        let att = d.volumes().first().and_then(|v| v.attachments().first()).context("no attachment")?;
        ensure!(att.instance_id() == Some(instance_id.as_str()));
        Ok(())
    })
    .await?;

    let snapshot_id = step("CreateSnapshot + wait_until_snapshot_completed", async {
        let s = ec2
            .create_snapshot()
            .volume_id(&volume_id)
            .description("interop rust")
            .tag_specifications(tagged(ResourceType::Snapshot, &run))
            .send()
            .await?;
        let id = s.snapshot_id().context("no snapshot id")?.to_string();
        ec2.wait_until_snapshot_completed().snapshot_ids(&id).wait(WAIT).await?;
        Ok(id)
    })
    .await?;

    step("CreateSnapshots (instance)", async {
        let r = ec2
            .create_snapshots()
            .instance_specification(InstanceSpecification::builder().instance_id(&instance_id).build())
            .tag_specifications(tagged(ResourceType::Snapshot, &run))
            .send()
            .await?;
        ensure!(r.snapshots().len() >= 2, "expected the root and the attached volume: {r:?}");
        ensure!(r.snapshots().iter().any(|s| s.volume_id() == Some(volume_id.as_str())));
        let ids: Vec<String> = r.snapshots().iter().filter_map(|s| s.snapshot_id().map(str::to_string)).collect();
        ec2.wait_until_snapshot_completed().set_snapshot_ids(Some(ids)).wait(WAIT).await?;
        Ok(())
    })
    .await?;

    step("CopySnapshot to another region, encrypted with a KMS key there", async {
        let key = kms_copy.create_key().description("interop rust copy").send().await?;
        let arn = key.key_metadata().and_then(|k| k.arn()).context("no key arn")?.to_string();
        let c = ec2_copy
            .copy_snapshot()
            .source_region(&region)
            .source_snapshot_id(&snapshot_id)
            .encrypted(true)
            .kms_key_id(&arn)
            .send()
            .await?;
        let id = c.snapshot_id().context("no copy id")?.to_string();
        ec2_copy.wait_until_snapshot_completed().snapshot_ids(&id).wait(WAIT).await?;
        let d = ec2_copy.describe_snapshots().snapshot_ids(&id).send().await?;
        let s = d.snapshots().first().context("copy not listed")?;
        ensure!(s.encrypted() == Some(true) && s.kms_key_id() == Some(arn.as_str()), "{s:?}");
        Ok(())
    })
    .await?;

    step("DescribeSnapshots with filters + paginator", async {
        let filtered = ec2
            .describe_snapshots()
            .owner_ids("self")
            .filters(Filter::builder().name("tag:interop").values(&run).build())
            .filters(Filter::builder().name("volume-id").values(&volume_id).build())
            .send()
            .await?;
        ensure!(filtered.snapshots().len() >= 2, "{filtered:?}");
        ensure!(filtered.snapshots().iter().all(|s| s.volume_id() == Some(volume_id.as_str())));
        let mut stream = ec2.describe_snapshots().owner_ids("self").into_paginator().page_size(5).items().send();
        let mut paged = Vec::new();
        while let Some(s) = stream.next().await {
            paged.push(s?.snapshot_id().unwrap_or_default().to_string());
        }
        ensure!(paged.contains(&snapshot_id), "paginator missed {snapshot_id}");
        let mut unique = paged.clone();
        unique.sort();
        unique.dedup();
        ensure!(unique.len() == paged.len(), "a snapshot listed twice across pages");
        Ok(())
    })
    .await?;

    step("typed error InvalidVolume.NotFound", async {
        match ec2.describe_volumes().volume_ids("vol-0123456789abcdef0").send().await {
            Ok(r) => bail!("expected InvalidVolume.NotFound, got {r:?}"),
            Err(e) => {
                ensure!(e.code() == Some("InvalidVolume.NotFound"), "code {:?}", e.code());
                ensure!(e.raw_response().map(|r| r.status().as_u16()) == Some(400));
                ensure!(e.message().is_some_and(|m| m.contains("vol-0123456789abcdef0")));
            }
        }
        Ok(())
    })
    .await?;

    step("Lightsail CreateDisk + CreateDiskSnapshot + GetDiskSnapshot", async {
        let disk = format!("{run}-disk");
        let snap = format!("{run}-snap");
        ls.create_disk().disk_name(&disk).availability_zone(format!("{ls_region}a")).size_in_gb(8).send().await?;
        poll(
            "disk available",
            || async { Ok(ls.get_disk().disk_name(&disk).send().await?) },
            |d| d.disk().and_then(|d| d.state()) == Some(&DiskState::Available),
        )
        .await?;
        let ops = ls.create_disk_snapshot().disk_name(&disk).disk_snapshot_name(&snap).send().await?;
        let op = ops.operations().first().and_then(|o| o.id()).context("no operation")?.to_string();
        poll(
            "operation succeeded",
            || async { Ok(ls.get_operation().operation_id(&op).send().await?) },
            |o| o.operation().and_then(|o| o.status()) == Some(&OperationStatus::Succeeded),
        )
        .await?;
        let s = poll(
            "disk snapshot completed",
            || async { Ok(ls.get_disk_snapshot().disk_snapshot_name(&snap).send().await?) },
            |s| s.disk_snapshot().and_then(|s| s.state()) == Some(&DiskSnapshotState::Completed),
        )
        .await?;
        let s = s.disk_snapshot().context("no disk snapshot")?;
        ensure!(s.from_disk_name() == Some(disk.as_str()) && s.size_in_gb() == Some(8), "{s:?}");
        Ok(())
    })
    .await?;
    Ok(())
}
