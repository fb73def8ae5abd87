// The blocksnap scenario through the AWS SDK for JavaScript v3, which serialises EC2 Query and the JSON
// protocols, signs, presigns, paginates and waits with its own code (not botocore's).
//
//   BLOCKSNAP_ENDPOINT=http://127.0.0.1:4566 AWS_ACCESS_KEY_ID=… AWS_SECRET_ACCESS_KEY=… node scenario.mjs
//
// Prints one line per step; exits non-zero at the first failed step.
import assert from "node:assert/strict";

import {
  AttachVolumeCommand,
  CopySnapshotCommand,
  CreateSnapshotCommand,
  CreateSnapshotsCommand,
  CreateVolumeCommand,
  DescribeImagesCommand,
  DescribeSnapshotsCommand,
  DescribeVolumesCommand,
  EC2Client,
  EC2ServiceException,
  RunInstancesCommand,
  paginateDescribeSnapshots,
  waitUntilInstanceRunning,
  waitUntilSnapshotCompleted,
  waitUntilVolumeAvailable,
  waitUntilVolumeInUse,
} from "@aws-sdk/client-ec2";
import { CreateKeyCommand, KMSClient } from "@aws-sdk/client-kms";
import {
  CreateDiskCommand,
  CreateDiskSnapshotCommand,
  GetDiskCommand,
  GetDiskSnapshotCommand,
  GetOperationCommand,
  LightsailClient,
} from "@aws-sdk/client-lightsail";

const endpoint = process.env.BLOCKSNAP_ENDPOINT;
assert.ok(endpoint, "set BLOCKSNAP_ENDPOINT (e.g. http://127.0.0.1:4566)");
const region = process.env.AWS_REGION || process.env.AWS_DEFAULT_REGION || "us-east-1";
const copyRegion = process.env.BLOCKSNAP_COPY_REGION || "eu-west-1";
const lsRegion = process.env.BLOCKSNAP_LIGHTSAIL_REGION || "us-west-2";
const run = `js-${Date.now().toString(36)}`;
const cfg = (r) => ({ region: r, endpoint, maxAttempts: 1 });
const wait = (client) => ({ client, maxWaitTime: 120, minDelay: 1, maxDelay: 2 });

const ec2 = new EC2Client(cfg(region));
const ec2Copy = new EC2Client(cfg(copyRegion));
const kmsCopy = new KMSClient(cfg(copyRegion));
const ls = new LightsailClient(cfg(lsRegion));

async function step(name, fn) {
  try {
    const detail = await fn();
    console.log(`ok   ${name}${detail ? `: ${detail}` : ""}`);
  } catch (e) {
    console.log(`FAIL ${name}: ${e.name ?? ""} ${e.message}`);
    process.exitCode = 1;
    throw e;
  }
}

async function poll(fn, done, what, timeoutMs = 120_000) {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const v = await fn();
    if (done(v)) return v;
    if (Date.now() > deadline) throw new Error(`${what} not reached within ${timeoutMs} ms: ${JSON.stringify(v)}`);
    await new Promise((r) => setTimeout(r, 300));
  }
}

const tag = (type) => [{ ResourceType: type, Tags: [{ Key: "interop", Value: run }] }];
let az, instanceId, volumeId, snapshotId;

try {
  await step("DescribeImages + RunInstances + waitUntilInstanceRunning", async () => {
    const images = (await ec2.send(new DescribeImagesCommand({}))).Images;
    assert.ok(images.length > 0);
    az = `${region}a`;
    const r = await ec2.send(new RunInstancesCommand({
      ImageId: images[0].ImageId, MinCount: 1, MaxCount: 1, Placement: { AvailabilityZone: az },
      TagSpecifications: tag("instance"),
    }));
    instanceId = r.Instances[0].InstanceId;
    assert.match(instanceId, /^i-[0-9a-f]{17}$/);
    await waitUntilInstanceRunning(wait(ec2), { InstanceIds: [instanceId] });
    return instanceId;
  });

  await step("CreateVolume + waitUntilVolumeAvailable", async () => {
    const v = await ec2.send(new CreateVolumeCommand({
      AvailabilityZone: az, Size: 1, VolumeType: "gp3", TagSpecifications: tag("volume"),
    }));
    volumeId = v.VolumeId;
    assert.equal(v.Size, 1);
    assert.equal(v.AvailabilityZone, az);
    await waitUntilVolumeAvailable(wait(ec2), { VolumeIds: [volumeId] });
    return volumeId;
  });

  await step("AttachVolume + waitUntilVolumeInUse", async () => {
    const a = await ec2.send(new AttachVolumeCommand({ VolumeId: volumeId, InstanceId: instanceId, Device: "/dev/sdf" }));
    assert.equal(a.Device, "/dev/sdf");
    await waitUntilVolumeInUse(wait(ec2), { VolumeIds: [volumeId] });
    const v = (await ec2.send(new DescribeVolumesCommand({ VolumeIds: [volumeId] }))).Volumes[0];
    assert.equal(v.Attachments[0].InstanceId, instanceId);
    assert.ok(v.CreateTime instanceof Date, "CreateTime parses as a Date");
  });

  await step("CreateSnapshot + waitUntilSnapshotCompleted", async () => {
    const s = await ec2.send(new CreateSnapshotCommand({
      VolumeId: volumeId, Description: "interop js", TagSpecifications: tag("snapshot"),
    }));
    snapshotId = s.SnapshotId;
    assert.equal(s.VolumeId, volumeId);
    await waitUntilSnapshotCompleted(wait(ec2), { SnapshotIds: [snapshotId] });
    return snapshotId;
  });

  await step("CreateSnapshots (instance)", async () => {
    const r = await ec2.send(new CreateSnapshotsCommand({
      InstanceSpecification: { InstanceId: instanceId }, Description: "interop js multi",
      TagSpecifications: tag("snapshot"),
    }));
    assert.ok(r.Snapshots.length >= 2, "the root volume and the attached one");
    assert.ok(r.Snapshots.some((s) => s.VolumeId === volumeId));
    await waitUntilSnapshotCompleted(wait(ec2), { SnapshotIds: r.Snapshots.map((s) => s.SnapshotId) });
    return r.Snapshots.map((s) => s.SnapshotId).join(",");
  });

  await step(`CopySnapshot ${region} -> ${copyRegion}, encrypted with a KMS key there`, async () => {
    const key = (await kmsCopy.send(new CreateKeyCommand({ Description: "interop js copy" }))).KeyMetadata;
    // SourceRegion without PresignedUrl: the SDK presigns the source-region CopySnapshot itself.
    const c = await ec2Copy.send(new CopySnapshotCommand({
      SourceRegion: region, SourceSnapshotId: snapshotId, Encrypted: true, KmsKeyId: key.Arn,
      Description: "interop js copy",
    }));
    assert.match(c.SnapshotId, /^snap-/);
    await waitUntilSnapshotCompleted(wait(ec2Copy), { SnapshotIds: [c.SnapshotId] });
    const s = (await ec2Copy.send(new DescribeSnapshotsCommand({ SnapshotIds: [c.SnapshotId] }))).Snapshots[0];
    assert.equal(s.Encrypted, true);
    assert.equal(s.KmsKeyId, key.Arn);
    return c.SnapshotId;
  });

  await step("DescribeSnapshots with filters + paginateDescribeSnapshots", async () => {
    const filters = [{ Name: "tag:interop", Values: [run] }, { Name: "status", Values: ["completed"] }];
    const all = (await ec2.send(new DescribeSnapshotsCommand({ OwnerIds: ["self"], Filters: filters }))).Snapshots;
    assert.ok(all.length >= 3, `expected 3 snapshots, got ${all.length}`);
    const byVolume = (await ec2.send(new DescribeSnapshotsCommand({
      Filters: [{ Name: "volume-id", Values: [volumeId] }, { Name: "tag:interop", Values: [run] }],
    }))).Snapshots;
    assert.ok(byVolume.length >= 2 && byVolume.every((s) => s.VolumeId === volumeId));
    const paged = [];
    let pages = 0;
    for await (const page of paginateDescribeSnapshots({ client: ec2, pageSize: 5 }, { OwnerIds: ["self"] })) {
      pages += 1;
      assert.ok(page.Snapshots.length <= 5);
      paged.push(...page.Snapshots.map((s) => s.SnapshotId));
    }
    assert.equal(new Set(paged).size, paged.length, "no snapshot twice across pages");
    for (const s of all) assert.ok(paged.includes(s.SnapshotId));
    return `${all.length} filtered, ${paged.length} in ${pages} pages`;
  });

  await step("typed error InvalidVolume.NotFound", async () => {
    await assert.rejects(
      ec2.send(new DescribeVolumesCommand({ VolumeIds: ["vol-0123456789abcdef0"] })),
      (e) => {
        assert.ok(e instanceof EC2ServiceException, "an EC2ServiceException");
        assert.equal(e.name, "InvalidVolume.NotFound");
        assert.equal(e.$metadata.httpStatusCode, 400);
        assert.match(e.message, /vol-0123456789abcdef0/);
        return true;
      },
    );
  });

  await step("Lightsail CreateDisk + CreateDiskSnapshot + GetDiskSnapshot", async () => {
    const disk = `${run}-disk`;
    const snap = `${run}-snap`;
    const ops = (await ls.send(new CreateDiskCommand({ diskName: disk, availabilityZone: `${lsRegion}a`, sizeInGb: 8 }))).operations;
    assert.equal(ops[0].operationType, "CreateDisk");
    await poll(async () => (await ls.send(new GetDiskCommand({ diskName: disk }))).disk.state, (s) => s === "available", "disk available");
    const sops = (await ls.send(new CreateDiskSnapshotCommand({ diskName: disk, diskSnapshotName: snap }))).operations;
    assert.equal(sops[0].operationType, "CreateDiskSnapshot");
    await poll(async () => (await ls.send(new GetOperationCommand({ operationId: sops[0].id }))).operation.status,
      (s) => s === "Succeeded", "operation succeeded");
    const s = await poll(async () => (await ls.send(new GetDiskSnapshotCommand({ diskSnapshotName: snap }))).diskSnapshot,
      (d) => d.state === "completed", "disk snapshot completed");
    assert.equal(s.fromDiskName, disk);
    assert.equal(s.sizeInGb, 8);
    assert.ok(s.createdAt instanceof Date);
    return snap;
  });
} catch {
  process.exitCode = 1;
}
