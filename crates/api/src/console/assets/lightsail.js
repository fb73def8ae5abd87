// Lightsail disks and disk snapshots, with the actions the Lightsail console has on them (snapshot a
// disk, create a disk from a snapshot, delete a snapshot). Each action answers an operation; the
// operations started from this tab are listed and followed until they are terminal.
import { lightsail, saveSession, session } from "./api.js";
import { confirmDialog, dialog, every, h, pager, progressCell, status, table } from "./ui.js";

const NAME = "[A-Za-z0-9_][A-Za-z0-9_\\-]*[A-Za-z0-9_]";
const NAME_RULE = "2 to 255 letters, digits, underscores and hyphens, starting and ending with a letter, digit or underscore.";

function tagText(t) {
  return (t || []).map((x) => `${x.key}=${x.value ?? ""}`).join(", ");
}

/// An API error's field in a Lightsail form, from the member its message names.
function lightsailField(names) {
  return (e) => {
    const m = String(e.message);
    if (/sizeInGb/.test(m)) return names.size;
    if (/availabilityZone|zone/i.test(m)) return names.az;
    if (/already in use|not a valid Lightsail resource name|diskSnapshotName|diskName/.test(m)) return names.name;
    return null;
  };
}

function stamp() {
  return new Date().toISOString().slice(0, 16).replace(/[-:T]/g, "");
}

// --- operations started here ----------------------------------------------------------------------

const MAX_OPS = 10;

function remember(ops) {
  const s = session();
  const mine = (s.lsOps || []).filter((o) => !ops.some((x) => x.id === o.id));
  s.lsOps = [...ops.map((o) => ({ ...o, region: s.region })), ...mine].slice(0, MAX_OPS);
  saveSession(s);
}

/// The "operations started here" list of the region shown, refreshed while any is not terminal;
/// `onSettled` runs when one becomes terminal (the rows it changed are reloaded).
export function operationsSection(onSettled) {
  const box = h("section", { "aria-label": "Lightsail operations" });
  function draw() {
    const s = session();
    const ops = (s.lsOps || []).filter((o) => o.region === s.region);
    box.hidden = ops.length === 0;
    box.replaceChildren(table("Lightsail operations started from this tab", ["Operation", "Type", "Resource", "Status", "Started"],
      ops.map((o) => h("tr", { dataset: { op: o.id, status: o.status } },
        h("th", { scope: "row" }, h("code", {}, o.id)), h("td", {}, o.operationType), h("td", {}, o.resourceName),
        h("td", { class: "op-status" }, o.status, o.errorDetails ? h("div", { class: "error", role: "alert" }, o.errorDetails) : null),
        h("td", {}, new Date(o.createdAt * 1000).toLocaleString())))));
  }
  async function poll() {
    const s = session();
    const open = (s.lsOps || []).filter((o) => o.region === s.region && !o.isTerminal);
    if (!open.length) return;
    let settled = false;
    for (const o of open) {
      try {
        const r = await lightsail("GetOperation", { operationId: o.id });
        remember([r.operation]);
        settled ||= r.operation.isTerminal;
      } catch { /* the next tick tries again */ }
    }
    draw();
    if (settled) onSettled();
  }
  draw();
  every(1500, poll);
  return { box, started: (r) => { remember(r.operations || []); draw(); } };
}

// --- disks ------------------------------------------------------------------------------------------

/// The Lightsail disks section of the Volumes page.
export function disksSection(main) {
  const ls = h("section", { "aria-label": "Lightsail disks" });
  let moving = false;
  const ops = operationsSection(() => disks.reload());
  main.append(ls, ops.box);
  const snapshot = (d) => dialog({
    title: `Snapshot Lightsail disk ${d.name}`,
    submitLabel: "Create disk snapshot",
    fields: [{ name: "name", label: "Snapshot name", value: `${d.name}-${stamp()}`, required: true, pattern: NAME, invalid: NAME_RULE }],
    fieldFor: lightsailField({ name: "name" }),
    onSubmit: (v) => lightsail("CreateDiskSnapshot", { diskName: d.name, diskSnapshotName: v.name }),
  }).then((r) => {
    if (!r) return;
    ops.started(r);
    status(`Disk snapshot of ${d.name} started (operation ${r.operations?.[0]?.id}); it is on the Snapshots page.`);
  });
  const disks = pager(ls, async (token) => {
    const r = await lightsail("GetDisks", token ? { pageToken: token } : {});
    moving = (r.disks || []).some((d) => d.state === "pending");
    const rows = (r.disks || []).map((d) => h("tr", { dataset: { id: d.name, state: d.state } },
      h("th", { scope: "row" }, d.name), h("td", { class: "state" }, d.state), h("td", {}, `${d.sizeInGb} GiB`),
      h("td", {}, d.location?.availabilityZone || ""), h("td", {}, d.isAttached ? `${d.attachedTo} ${d.path || ""}` : "not attached"),
      h("td", {}, tagText(d.tags)),
      h("td", {}, h("button", { type: "button", "aria-label": `Create snapshot of disk ${d.name}`, onclick: () => snapshot(d) }, "Snapshot"))));
    return { next: r.nextPageToken, node: table("Lightsail disks", ["Disk", "State", "Size", "AZ", "Attachment", "Tags", "Actions"], rows) };
  });
  every(1500, () => { if (moving) disks.reload(); });
}

// --- disk snapshots ----------------------------------------------------------------------------------

/// The Lightsail disk snapshots section of the Snapshots page. `zones()`: the region's zones.
export function diskSnapshotsSection(main, zones) {
  const box = h("section", { "aria-label": "Lightsail snapshots" });
  let moving = false;
  const ops = operationsSection(() => snaps.reload());
  main.append(box, ops.box);
  const createDisk = async (d) => dialog({
    title: `Create a Lightsail disk from ${d.name}`,
    submitLabel: "Create disk",
    fields: [
      { name: "name", label: "Disk name", value: `${d.fromDiskName || "disk"}-restored-${stamp()}`, required: true, pattern: NAME, invalid: NAME_RULE },
      { name: "az", label: "Availability Zone", type: "select", options: await zones(), value: d.location?.availabilityZone, required: true },
      { name: "size", label: "Size (GB)", type: "number", value: d.sizeInGb, min: d.sizeInGb, max: 16384, required: true,
        hint: `At least the snapshot's ${d.sizeInGb} GB.` },
    ],
    fieldFor: lightsailField({ name: "name", az: "az", size: "size" }),
    onSubmit: (v) => lightsail("CreateDiskFromSnapshot", {
      diskName: v.name, diskSnapshotName: d.name, availabilityZone: v.az, sizeInGb: Number(v.size),
    }),
  }).then((r) => {
    if (!r) return;
    ops.started(r);
    status(`Creating disk ${r.operations?.[0]?.resourceName} from ${d.name}; it is on the Volumes page.`);
  });
  const remove = (d) => confirmDialog({
    title: `Delete disk snapshot ${d.name}?`,
    text: `The disk snapshot ${d.name} is deleted for good (disks created from it stay).`,
    confirmLabel: "Delete disk snapshot",
    run: () => lightsail("DeleteDiskSnapshot", { diskSnapshotName: d.name }),
  }).then((r) => {
    if (!r) return;
    ops.started(r);
    status(`Deleted disk snapshot ${d.name}.`);
    snaps.reload();
  });
  const snaps = pager(box, async (token) => {
    const r = await lightsail("GetDiskSnapshots", token ? { pageToken: token } : {});
    moving = (r.diskSnapshots || []).some((d) => d.state === "pending");
    const rows = (r.diskSnapshots || []).map((d) => h("tr", { dataset: { id: d.name, state: d.state } },
      h("th", { scope: "row" }, d.name), h("td", {}, d.fromDiskName || d.fromInstanceName || ""), h("td", { class: "state" }, d.state),
      progressCell(d.state, d.progress), h("td", {}, `${d.sizeInGb} GiB`),
      h("td", {},
        h("button", { type: "button", "aria-label": `Create disk from ${d.name}`, disabled: d.state !== "completed", onclick: () => createDisk(d).catch((e) => status(`Create disk failed: ${e.message}`, true)) }, "Create disk"),
        h("button", { type: "button", "aria-label": `Delete disk snapshot ${d.name}`, onclick: () => remove(d) }, "Delete"))));
    return { next: r.nextPageToken, node: table("Lightsail disk snapshots", ["Snapshot", "From", "State", "Progress", "Size", "Actions"], rows) };
  });
  every(1500, () => { if (moving) snaps.reload(); });
}
