// The blocksnap web console: hash-routed pages built from the APIs' answers. Every value from the
// server goes into the page as text (textContent), never as markup; every action is a labelled form
// (inline or in a dialog) whose errors are shown next to the field they are about.
import { bytes, ec2, lightsail, list, nbd, saveSession, session, signOut, store } from "./api.js";
import { diskSnapshotsSection, disksSection } from "./lightsail.js";
import { $, act, actionForm, after, confirmDialog, current, dialog, every, h, later, newPage, pager, progressCell, status, table } from "./ui.js";

const PAGE = 50;
const VOLUME_TYPES = ["gp3", "gp2", "io1", "io2", "st1", "sc1", "standard"];

function tags(t) {
  return list(t).map((x) => `${x.key}=${x.value}`).join(", ");
}

function nameOf(t) {
  return list(t).find((x) => x.key === "Name")?.value || "";
}

/// Updates the saved session (read afresh: another part of the page may have saved since).
function updateSession(f) {
  const s = session();
  f(s);
  saveSession(s);
  return s;
}

const zoneCache = new Map();
/// The region's zones (one call per region and page load; a failed call is asked again).
function zones(region) {
  if (!zoneCache.has(region)) {
    const p = ec2("DescribeAvailabilityZones").then((r) => list(r.availabilityZoneInfo).map((z) => z.zoneName));
    p.catch(() => zoneCache.delete(region));
    zoneCache.set(region, p);
  }
  return zoneCache.get(region);
}

/// The EC2 form field an API error is about, from its code and message.
function ec2Field(map) {
  return (e) => {
    for (const [name, re] of Object.entries(map)) if (re.test(`${e.code} ${e.message}`)) return name;
    return null;
  };
}

const nameTag = (resource, name) => (name
  ? { "TagSpecification.1.ResourceType": resource, "TagSpecification.1.Tag.1.Key": "Name", "TagSpecification.1.Tag.1.Value": name }
  : {});

// --- sign-in ------------------------------------------------------------------------------------

function signInPage() {
  const err = h("p", { id: "signin-error", class: "error", role: "alert" });
  const form = h("form", { class: "signin", "aria-describedby": "signin-error" },
    h("h1", {}, "Sign in"),
    h("p", {}, "Your access key signs each request in this browser; the secret is kept in this tab only and never sent."),
    h("label", {}, "Access key ID", h("input", { name: "akid", required: true, autocomplete: "username", spellcheck: "false" })),
    h("label", {}, "Secret access key", h("input", { name: "secret", type: "password", required: true, autocomplete: "current-password" })),
    h("label", {}, "Region", h("input", { name: "region", value: "us-east-1", required: true })),
    h("button", { type: "submit" }, "Sign in"), err);
  form.addEventListener("submit", async (ev) => {
    ev.preventDefault();
    const f = new FormData(form);
    const s = { accessKeyId: f.get("akid").trim(), secretAccessKey: f.get("secret"), region: f.get("region").trim() };
    err.textContent = "";
    try {
      // A signed call proves the keys: a wrong secret is refused here (AuthFailure).
      const r = await ec2("DescribeRegions", {}, { creds: s });
      s.regions = list(r.regionInfo).map((x) => x.regionName);
      saveSession(s);
      if (location.hash === "#/volumes") route();
      else location.hash = "#/volumes";
    } catch (e) {
      err.textContent = `Sign-in refused: ${e.message}`;
    }
  });
  return form;
}

// --- volumes ------------------------------------------------------------------------------------

async function nbdIdentity() {
  const s = session();
  if (s.nbdIdentity) return s.nbdIdentity;
  let identity = "";
  try {
    const r = await nbd("ListNbdCredentials", {});
    identity = r.Credentials?.[0]?.Identity || "";
  } catch { /* no key yet, or not allowed: the page offers to create one */ }
  updateSession((x) => { x.nbdIdentity = identity; });
  return identity;
}

function nbdCell(e, error, uri) {
  if (!e) return h("td", {}, error || "—");
  return h("td", {}, h("code", { class: "nbd-uri" }, uri(e)), e.Available ? null : h("div", { class: "nbd-reason" }, `(${e.Reason || "not served now"})`));
}

function createVolumeForm(azs, onCreated) {
  const f = actionForm({
    label: "Create volume",
    className: "inline",
    submitLabel: "Create volume",
    fields: [
      { name: "size", label: "Size (GiB)", type: "number", min: 1, max: 65536, value: 1, required: true, inputmode: "numeric" },
      { name: "type", label: "Type", type: "select", options: VOLUME_TYPES, value: "gp3" },
      { name: "az", label: "Availability Zone", type: "select", options: azs, required: true },
      { name: "name", label: "Name" },
      { name: "encrypted", label: "Encrypted", type: "checkbox" },
    ],
    fieldFor: ec2Field({ size: /\bsize\b|Size/, type: /Iops|Throughput|VolumeType/, az: /zone/i, name: /tag/i }),
    onSubmit: (v) => {
      const p = { Size: v.size, VolumeType: v.type, AvailabilityZone: v.az, ...nameTag("volume", v.name) };
      if (v.type === "io1" || v.type === "io2") p.Iops = 3000;
      if (v.encrypted) p.Encrypted = "true";
      return ec2("CreateVolume", p);
    },
    done: (r) => onCreated(r),
  });
  return f.form;
}

async function instancesIn(az) {
  const r = await ec2("DescribeInstances", { "Filter.1.Name": "availability-zone", "Filter.1.Value.1": az,
    "Filter.2.Name": "instance-state-name", "Filter.2.Value.1": "running", "Filter.2.Value.2": "stopped" });
  return list(r.reservationSet).flatMap((x) => list(x.instancesSet))
    .map((i) => [i.instanceId, nameOf(i.tagSet) ? `${i.instanceId} (${nameOf(i.tagSet)})` : i.instanceId]);
}

function volumeActions(v, reload) {
  const id = v.volumeId;
  const att = list(v.attachmentSet)[0];
  const snapshot = () => dialog({
    title: `Create a snapshot of ${id}`,
    submitLabel: "Create snapshot",
    fields: [{ name: "description", label: "Description" }, { name: "name", label: "Name" }],
    fieldFor: ec2Field({ description: /description/i, name: /tag/i }),
    onSubmit: (x) => ec2("CreateSnapshot", { VolumeId: id, Description: x.description, ...nameTag("snapshot", x.name) }),
  }).then((r) => { if (r) status(`Snapshot ${r.snapshotId} started; follow it on the Snapshots page.`); });
  const attach = async () => {
    const instances = await instancesIn(v.availabilityZone).catch(() => []);
    const r = await dialog({
      title: `Attach ${id}`,
      submitLabel: "Attach",
      fields: [
        { name: "instance", label: "Instance", type: "select", options: instances, required: true,
          hint: instances.length ? `Instances in ${v.availabilityZone}.` : `No instance runs in ${v.availabilityZone}: start one there first.` },
        { name: "device", label: "Device name", value: "/dev/sdf", required: true, pattern: "/dev/[a-z0-9]+", invalid: "A device name such as /dev/sdf." },
      ],
      fieldFor: ec2Field({ instance: /InstanceID|instance|zone/i, device: /device/i }),
      onSubmit: (x) => ec2("AttachVolume", { VolumeId: id, InstanceId: x.instance, Device: x.device }),
    });
    if (r) { status(`Attached ${id} to ${r.instanceId} as ${r.device}.`); reload(); }
  };
  const detach = () => confirmDialog({
    title: `Detach ${id}?`,
    text: `Detach ${id} from ${att.instanceId}: its NBD export stops being served.`,
    confirmLabel: "Detach",
    run: () => ec2("DetachVolume", { VolumeId: id }),
  }).then((r) => { if (r) { status(`Detaching ${id}.`); reload(); } });
  const remove = () => confirmDialog({
    title: `Delete ${id}?`,
    text: `Delete ${id}? Its data is gone for good (its snapshots stay).`,
    confirmLabel: "Delete volume",
    run: () => ec2("DeleteVolume", { VolumeId: id }),
  }).then((r) => { if (r) { status(`Deleted ${id}.`); reload(); } });
  return h("td", {},
    h("button", { type: "button", "aria-label": `Create snapshot of ${id}`, onclick: snapshot }, "Snapshot"),
    att
      ? h("button", { type: "button", "aria-label": `Detach ${id}`, onclick: detach }, "Detach")
      : h("button", { type: "button", "aria-label": `Attach ${id}`, onclick: attach }, "Attach"),
    h("button", { type: "button", "aria-label": `Delete ${id}`, onclick: remove }, "Delete"));
}

async function volumesPage(main) {
  const s = session();
  const [id0, azs] = await Promise.all([nbdIdentity(), zones(s.region)]);
  let identity = id0;
  main.append(h("h1", { tabindex: -1 }, `Volumes in ${s.region}`));
  // The URI the API answers for an export (DescribeNbdEndpoints), with what a TLS-PSK client adds:
  // the account's identity and its key file.
  const uri = (e) => (e.Endpoint?.Tls
    ? `${e.Uri.replace("nbds://", `nbds://${identity || "<identity>"}@`)}?tls-psk-file=keys.psk`
    : e.Uri);
  const keyBox = h("div");
  if (!identity) {
    keyBox.append(h("p", {}, "This account has no NBD key yet: volumes are served over NBD with TLS-PSK. ",
      h("button", { type: "button", onclick: async () => {
        const r = await act("Create NBD key", () => nbd("CreateNbdCredential", {}));
        if (!r) return;
        const c = r.Credential;
        updateSession((x) => { x.nbdIdentity = c.Identity; });
        identity = c.Identity;
        vols.reload();
        const e = c.Endpoint;
        keyBox.replaceChildren(h("p", {}, "Save this line as keys.psk (shown once): ", h("code", { id: "psk-line" }, `${c.Identity}:${c.Key}`),
          e ? ` — the NBD listener is ${e.Host.includes(":") ? `[${e.Host}]` : e.Host}:${e.Port} (${e.Tls ? "TLS with this key" : "plaintext"}).` : null));
      } }, "Create NBD key")));
  }
  main.append(keyBox);
  main.append(createVolumeForm(azs, (r) => { status(`Created ${r.volumeId}.`); vols.reload(); }));

  const section = h("section", { "aria-label": "EC2 volumes" });
  main.append(section);
  let moving = false; // a volume on this page is between states: refresh until it settles
  const vols = pager(section, async (token) => {
    const r = await ec2("DescribeVolumes", { MaxResults: PAGE, NextToken: token });
    const ids = list(r.volumeSet).map((v) => v.volumeId);
    // Where each volume of the page is served, as the API says (a volume deleted meanwhile fails
    // the call: the page shows the error in place of the URIs and the next reload fixes it).
    let exports = new Map();
    let exportsError = "";
    if (ids.length) {
      try {
        exports = new Map((await nbd("DescribeNbdEndpoints", { VolumeIds: ids })).Exports.map((e) => [e.VolumeId, e]));
      } catch (e) {
        exportsError = `unknown (${e.message})`;
      }
    }
    moving = list(r.volumeSet).some((v) => v.status === "creating" || v.status === "deleting"
      || list(v.attachmentSet).some((a) => a.status === "attaching" || a.status === "detaching"));
    const rows = list(r.volumeSet).map((v) => {
      const att = list(v.attachmentSet)[0];
      const id = v.volumeId;
      return h("tr", { dataset: { id } },
        h("th", { scope: "row" }, h("code", {}, id), nameOf(v.tagSet) ? h("div", {}, nameOf(v.tagSet)) : null),
        h("td", { class: "state" }, v.status), h("td", {}, `${v.size} GiB`), h("td", {}, v.volumeType),
        h("td", {}, v.availabilityZone), h("td", {}, v.encrypted === "true" ? "encrypted" : "not encrypted"),
        h("td", {}, att ? `${att.instanceId} ${att.device} (${att.status})` : "not attached"),
        nbdCell(exports.get(id), exportsError, uri),
        h("td", {}, tags(v.tagSet)),
        volumeActions(v, () => vols.reload()));
    });
    return { next: r.nextToken, node: table("EC2 volumes", ["Volume", "State", "Size", "Type", "AZ", "Encryption", "Attachment", "NBD URI", "Tags", "Actions"], rows) };
  });
  every(1500, () => { if (moving) vols.reload(); });
  // The Lightsail rows once the volumes are shown: the page's first rows do not wait on them.
  after(vols.ready, () => disksSection(main));
}

// --- snapshots ----------------------------------------------------------------------------------

function snapshotActions(sn, reload, showLineage) {
  const id = sn.snapshotId;
  const s = session();
  const restore = async () => dialog({
    title: `Restore ${id} to a new volume`,
    submitLabel: "Create volume",
    fields: [
      { name: "az", label: "Availability Zone", type: "select", options: await zones(s.region), required: true },
      { name: "size", label: "Size (GiB)", type: "number", value: sn.volumeSize, min: sn.volumeSize, max: 65536, required: true,
        hint: `At least the snapshot's ${sn.volumeSize} GiB.` },
      { name: "type", label: "Type", type: "select", options: VOLUME_TYPES, value: "gp3" },
      { name: "name", label: "Name" },
    ],
    fieldFor: ec2Field({ size: /\bsize\b|Size/, type: /Iops|Throughput|VolumeType/, az: /zone/i, name: /tag/i }),
    onSubmit: (x) => ec2("CreateVolume", { SnapshotId: id, AvailabilityZone: x.az, Size: x.size, VolumeType: x.type,
      Iops: x.type === "io1" || x.type === "io2" ? 3000 : undefined, ...nameTag("volume", x.name) }),
  }).then((r) => { if (r) status(`Restored ${id} to ${r.volumeId}.`); });
  const copy = () => dialog({
    title: `Copy ${id} to a region`,
    submitLabel: "Copy snapshot",
    fields: [
      { name: "region", label: "Destination region", type: "select", options: s.regions || [s.region],
        value: (s.regions || []).find((x) => x !== s.region) || s.region, required: true },
      { name: "description", label: "Description", value: `Copy of ${id}` },
    ],
    fieldFor: ec2Field({ region: /region/i, description: /description/i }),
    onSubmit: async (x) => ({ ...(await ec2("CopySnapshot", { SourceRegion: s.region, SourceSnapshotId: id, Description: x.description }, { region: x.region })), to: x.region }),
  }).then((r) => {
    if (!r) return;
    status(`Copying ${id} to ${r.to} as ${r.snapshotId}.`);
    showLineage(sn.volumeId);
  });
  const share = async () => {
    const a = await ec2("DescribeSnapshotAttribute", { SnapshotId: id, Attribute: "createVolumePermission" }).catch(() => null);
    const now = list(a?.createVolumePermission).map((p) => p.userId || p.group).filter(Boolean);
    const r = await dialog({
      title: `Share ${id}`,
      intro: now.length ? `Shared now with: ${now.join(", ")}.` : "Not shared with any account yet.",
      submitLabel: "Share",
      fields: [{ name: "account", label: "Account ID", required: true, pattern: "[0-9]{12}", invalid: "An account ID is 12 digits.", inputmode: "numeric" }],
      fieldFor: ec2Field({ account: /user|account/i }),
      onSubmit: async (x) => {
        await ec2("ModifySnapshotAttribute", { SnapshotId: id, Attribute: "createVolumePermission", OperationType: "add", "UserId.1": x.account });
        return x.account;
      },
    });
    if (r) status(`Shared ${id} with ${r}.`);
  };
  const remove = () => confirmDialog({
    title: `Delete ${id}?`,
    text: `Delete ${id}? Volumes restored from it stay; its blocks leave the store once no other snapshot needs them.`,
    confirmLabel: "Delete snapshot",
    run: () => ec2("DeleteSnapshot", { SnapshotId: id }),
  }).then((r) => { if (r) { status(`Deleted ${id}.`); reload(); } });
  return h("td", {},
    h("button", { type: "button", "aria-label": `Lineage of ${sn.volumeId}`, onclick: () => showLineage(sn.volumeId) }, "Lineage"),
    h("button", { type: "button", "aria-label": `Restore ${id}`, onclick: () => restore().catch((e) => status(`Restore failed: ${e.message}`, true)) }, "Restore"),
    h("button", { type: "button", "aria-label": `Copy ${id}`, onclick: copy }, "Copy"),
    h("button", { type: "button", "aria-label": `Share ${id}`, onclick: share }, "Share"),
    h("button", { type: "button", "aria-label": `Delete ${id}`, onclick: remove }, "Delete"));
}

function snapshotRow(sn, reload, showLineage) {
  return h("tr", { dataset: { id: sn.snapshotId, state: sn.status } },
    h("th", { scope: "row" }, h("code", {}, sn.snapshotId)), h("td", {}, sn.volumeId),
    h("td", { class: "state" }, sn.status), progressCell(sn.status, sn.progress, sn.stateMessage),
    h("td", {}, `${sn.volumeSize} GiB`), h("td", {}, sn.startTime), h("td", {}, sn.description || ""),
    h("td", {}, sn.encrypted === "true" ? "encrypted" : "not encrypted"),
    snapshotActions(sn, reload, showLineage));
}

/// The lineage of one volume's snapshots: parent -> child, and copies (in any region) under the
/// snapshot they were copied from, each with the bytes it added to its region's store.
function lineageTree(entries) {
  const byParent = new Map();
  const ids = new Set(entries.map((e) => e.SnapshotId));
  const key = (e) => e.CopySource?.SnapshotId || e.ParentSnapshotId;
  for (const e of entries) {
    const p = ids.has(key(e)) ? key(e) : null;
    if (!byParent.has(p)) byParent.set(p, []);
    byParent.get(p).push(e);
  }
  const node = (e) => {
    const kids = byParent.get(e.SnapshotId) || [];
    const what = e.CopySource ? `copy of ${e.CopySource.SnapshotId} from ${e.CopySource.Region}` : e.ParentSnapshotId ? `incremental on ${e.ParentSnapshotId}` : "full";
    return h("li", { role: "treeitem", "aria-expanded": kids.length ? "true" : undefined, dataset: { id: e.SnapshotId, state: e.State } },
      h("code", {}, e.SnapshotId), ` ${e.Region} · ${e.State} `,
      h("progress", { max: 100, value: parseInt(e.Progress, 10) || 0, "aria-label": `${e.SnapshotId} progress` }),
      ` ${parseInt(e.Progress, 10) || 0}% · added ${bytes(e.StoredBytesAdded)} · ${what}`,
      e.StateMessage ? h("span", { class: "error" }, ` (${e.StateMessage})`) : null,
      kids.length ? h("ul", { role: "group" }, kids.map(node)) : null);
  };
  return h("ul", { class: "tree", role: "tree", "aria-label": "Snapshot lineage" }, (byParent.get(null) || []).map(node));
}

async function snapshotsPage(main) {
  const s = session();
  main.append(h("h1", { tabindex: -1 }, `Snapshots in ${s.region}`));
  const lineageBox = h("section", { id: "lineage", "aria-label": "Lineage" });
  let lineageVolume = null;
  async function showLineage(volumeId) {
    lineageVolume = volumeId;
    const all = [];
    let token;
    do {
      const r = await store("DescribeLineage", { VolumeId: volumeId, MaxResults: 1000, NextToken: token });
      all.push(...r.Snapshots);
      token = r.NextToken;
    } while (token);
    lineageBox.replaceChildren(h("h2", {}, `Lineage of ${volumeId}`), all.length ? lineageTree(all) : h("p", {}, "No snapshots."));
    return all;
  }
  const lineage = (v) => showLineage(v).catch((e) => status(e.message, true));

  const section = h("section", { "aria-label": "EC2 snapshots" });
  main.append(section, lineageBox);
  let pending = [];
  const snaps = pager(section, async (token) => {
    const r = await ec2("DescribeSnapshots", { "Owner.1": "self", MaxResults: PAGE, NextToken: token });
    const items = list(r.snapshotSet);
    pending = items.filter((x) => x.status === "pending").map((x) => x.snapshotId);
    const rows = items.map((x) => snapshotRow(x, () => snaps.reload(), lineage));
    return { next: r.nextToken, node: table("EC2 snapshots (yours)", ["Snapshot", "Volume", "State", "Progress", "Size", "Started", "Description", "Encryption", "Actions"], rows) };
  });
  // Live progress: pending rows (and the lineage shown, across regions) are refreshed in place.
  every(1000, async () => {
    if (pending.length) {
      const p = {};
      pending.forEach((id, i) => { p[`SnapshotId.${i + 1}`] = id; });
      try {
        const r = await ec2("DescribeSnapshots", p);
        for (const x of list(r.snapshotSet)) {
          const row = section.querySelector(`tr[data-id="${x.snapshotId}"]`);
          if (!row) continue;
          row.dataset.state = x.status;
          row.querySelector(".state").textContent = x.status;
          row.querySelector(".progress").replaceWith(progressCell(x.status, x.progress, x.stateMessage));
        }
        pending = list(r.snapshotSet).filter((x) => x.status === "pending").map((x) => x.snapshotId);
      } catch { /* the next tick tries again */ }
    }
    if (lineageVolume && lineageBox.querySelector('[data-state="pending"]')) showLineage(lineageVolume).catch(() => {});
  });

  // Once the first rows are shown: the Lightsail rows, and the zones the dialogs offer.
  after(snaps.ready, () => {
    zones(s.region).catch(() => {});
    diskSnapshotsSection(main, () => zones(s.region));
    const lsi = h("section", { "aria-label": "Lightsail instance snapshots" });
    main.append(lsi);
    pager(lsi, async (token) => {
      const r = await lightsail("GetInstanceSnapshots", token ? { pageToken: token } : {});
      const rows = (r.instanceSnapshots || []).map((d) => h("tr", { dataset: { id: d.name } },
        h("th", { scope: "row" }, d.name), h("td", {}, d.fromInstanceName || ""), h("td", {}, d.state),
        progressCell(d.state, d.progress), h("td", {}, `${d.sizeInGb} GiB`)));
      return { next: r.nextPageToken, node: table("Lightsail instance snapshots", ["Snapshot", "Instance", "State", "Progress", "Size"], rows) };
    });
  });
}

// --- store --------------------------------------------------------------------------------------

/// The store's figures over time in one region: the server's samples (`History`, kept since it
/// started: one every few minutes and one per GC sweep) and the figures of this answer as "now".
/// Drawn as two lines on a time axis, readable without colour (solid vs dashed, and the numbers
/// in the caption and the table).
function chart(region, now) {
  const pts = (region.History || []).map((x) => ({ t: x.Time, logical: x.LogicalBytes, stored: x.StoredBytes }));
  if (region.LogicalBytes !== undefined) pts.push({ t: now, logical: region.LogicalBytes, stored: region.StoredBytes });
  if (pts.length === 1) pts.push(pts[0]); // one sample: a flat line, not an invisible point
  const W = 480, H = 140;
  const t0 = pts[0]?.t || 0;
  const span = (pts[pts.length - 1]?.t || 0) - t0;
  // x by time (the server's clock: `now` is the answer's ComputedAt); all at one instant: evenly.
  const x = (p, i) => (span > 0 ? ((p.t - t0) / span) * W : (i / Math.max(1, pts.length - 1)) * W);
  const max = Math.max(1, ...pts.map((p) => Math.max(p.logical || 0, p.stored || 0)));
  const line = (f) => pts.map((p, i) => `${x(p, i)},${H - ((f(p) || 0) / max) * (H - 10)}`).join(" ");
  const svg = document.createElementNS("http://www.w3.org/2000/svg", "svg");
  svg.setAttribute("viewBox", `0 0 ${W} ${H}`);
  svg.setAttribute("width", W);
  svg.setAttribute("height", H);
  svg.setAttribute("class", "chart");
  svg.setAttribute("role", "img");
  const when = (t) => new Date(t * 1000).toLocaleString();
  const from = pts.length ? when(t0) : "";
  svg.setAttribute("aria-label", `Store of ${region.Region} since ${from}: logical ${bytes(region.LogicalBytes)} (solid line), stored ${bytes(region.StoredBytes)} (dashed line) now`);
  for (const [f, dash, colour] of [[(p) => p.logical, "", "#246"], [(p) => p.stored, "6 4", "#a40"]]) {
    const pl = document.createElementNS("http://www.w3.org/2000/svg", "polyline");
    pl.setAttribute("points", line(f));
    pl.setAttribute("fill", "none");
    pl.setAttribute("stroke", colour);
    pl.setAttribute("stroke-width", "2");
    if (dash) pl.setAttribute("stroke-dasharray", dash);
    svg.append(pl);
  }
  return h("figure", { dataset: { samples: (region.History || []).length } }, svg,
    h("figcaption", {}, `Solid: logical bytes; dashed: stored bytes (scale up to ${bytes(max)}), from ${from} to now: `
      + `${(region.History || []).length} sample(s) kept by the server since it started, and the figures now.`));
}

async function storePage(main) {
  const s = session();
  main.append(h("h1", { tabindex: -1 }, "Store"));
  const box = h("div");
  main.append(box);
  async function sample() {
    const r = await store("GetStoreStats", {});
    const whole = r.Scope === "store";
    const used = r.Regions.filter((x) => x.Snapshots || x.StoredBytes || x.Region === s.region);
    const fig = (x, v) => (x.Counting ? "counting…" : whole ? v : "—");
    const rows = used.map((x) => {
      const g = x.Gc;
      const gc = g ? `${g.Status} at ${new Date(g.LastRun * 1000).toISOString()} in ${g.DurationMs} ms, removed ${g.ChunksRemoved} chunks (${bytes(g.BytesRemoved)})${g.Error ? `: ${g.Error}` : ""}` : "no run yet";
      return h("tr", { dataset: { region: x.Region } }, h("th", { scope: "row" }, x.Region), h("td", {}, String(x.Snapshots)),
        h("td", { class: "logical" }, fig(x, bytes(x.LogicalBytes))), h("td", { class: "stored" }, fig(x, bytes(x.StoredBytes))),
        h("td", { class: "ratio" }, x.ReductionRatio !== undefined ? `${Number(x.ReductionRatio).toFixed(2)} : 1` : "—"),
        h("td", { class: "chunks" }, x.Chunks !== undefined ? String(x.Chunks) : "—"),
        h("td", {}, bytes(x.SnapshotBytesAdded)), h("td", { class: "gc" }, whole ? gc : "—"));
    });
    const here = r.Regions.find((x) => x.Region === s.region);
    box.replaceChildren(
      h("p", {}, whole ? "The whole store (you are the root account)." : "Your account's share of the store."),
      table("Store usage per region (regions in use)", ["Region", "Snapshots", "Logical bytes", "Stored bytes", "Dedup + compression", "Chunks", "Bytes your snapshots added", "Last GC"], rows),
      h("h2", {}, `Over time in ${s.region}`),
      here?.History ? chart(here, r.ComputedAt) : h("p", {}, whole ? "No figures for this region yet." : "The store's history is shown to the root account (it is the whole store's)."));
  }
  // GetStoreStats answers from the engine's running totals: one call every 5 s while shown.
  box.append(h("p", {}, "Measuring the store…"));
  async function loop() {
    try {
      await sample();
    } catch (e) {
      status(`Store statistics failed: ${e.message}`, true);
    }
    later(5000, loop);
  }
  loop();
}

// --- routing ------------------------------------------------------------------------------------

const PAGES = { "#/volumes": volumesPage, "#/snapshots": snapshotsPage, "#/store": storePage };

async function route() {
  const g = newPage();
  const main = h("div");
  const s = session();
  $("#nav").hidden = !s;
  $("#who").hidden = !s;
  if (!s) {
    main.append(signInPage());
    $("#main").replaceChildren(main);
    return;
  }
  $("#identity").textContent = `Signed in as ${s.accessKeyId}`;
  const sel = $("#region");
  sel.replaceChildren(...(s.regions || [s.region]).map((r) => h("option", { selected: r === s.region }, r)));
  const page = PAGES[location.hash] ? location.hash : "#/volumes";
  for (const a of document.querySelectorAll("nav a")) a.toggleAttribute("aria-current", a.getAttribute("href") === page) && a.setAttribute("aria-current", "page");
  status("");
  try {
    await PAGES[page](main);
    if (!current(g)) return;
    $("#main").replaceChildren(main);
    main.querySelector("h1")?.focus();
  } catch (e) {
    if (current(g)) status(`Loading failed: ${e.message}`, true);
  }
}

$("#region").addEventListener("change", (ev) => {
  const s = session();
  s.region = ev.target.value;
  saveSession(s);
  route();
});
$("#signout").addEventListener("click", () => {
  signOut();
  history.replaceState(null, "", location.pathname);
  route();
});
window.addEventListener("hashchange", route);
route();
