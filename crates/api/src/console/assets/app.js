// The blocksnap web console: hash-routed pages built from the APIs' answers. Every value from the
// server goes into the page as text (textContent), never as markup.
import { ApiError, bytes, ec2, lightsail, list, nbd, saveSession, session, signOut, store } from "./api.js";

const $ = (sel) => document.querySelector(sel);
const PAGE = 50;
let timers = [];
let generation = 0; // a page built for an older route is dropped

/// h("tag", {attrs}, ...children): a DOM element; strings become text nodes.
function h(tag, attrs = {}, ...children) {
  const el = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === undefined || v === null || v === false) continue;
    if (k.startsWith("on")) el.addEventListener(k.slice(2), v);
    else if (k === "dataset") Object.assign(el.dataset, v);
    else el.setAttribute(k, v === true ? "" : String(v));
  }
  for (const c of children.flat()) if (c !== undefined && c !== null && c !== false) el.append(c instanceof Node ? c : String(c));
  return el;
}

function status(msg, isError = false) {
  const s = $("#status");
  s.textContent = msg;
  s.className = isError ? "error" : "";
}

/// Runs an action, reporting its outcome (errors named by their AWS code).
async function act(label, fn) {
  status(`${label}…`);
  try {
    const r = await fn();
    status(`${label}: done.`);
    return r;
  } catch (e) {
    status(`${label} failed: ${e instanceof ApiError ? e.message : e}`, true);
    return undefined;
  }
}

function every(ms, fn) { // fn every ms while this page is shown
  const g = generation;
  const t = setInterval(() => {
    if (g !== generation) clearInterval(t);
    else fn();
  }, ms);
  timers.push(t);
}

function table(caption, headers, rows) {
  return h("table", {}, h("caption", {}, caption),
    h("thead", {}, h("tr", {}, headers.map((x) => h("th", { scope: "col" }, x)))),
    h("tbody", {}, rows.length ? rows : h("tr", {}, h("td", { colspan: headers.length }, "None."))));
}

function progressCell(state, progress, message) {
  const pct = parseInt(progress, 10) || (state === "completed" || state === "available" ? 100 : 0);
  return h("td", { class: "progress" },
    h("progress", { max: 100, value: pct, "aria-label": `${pct}%` }), ` ${pct}%`,
    message ? h("div", { class: state === "error" ? "error" : "", role: state === "error" ? "alert" : undefined }, message) : null);
}

function tags(t) {
  return list(t).map((x) => `${x.key}=${x.value}`).join(", ");
}

function nameOf(t) {
  return list(t).find((x) => x.key === "Name")?.value || "";
}

/// A pager over a NextToken API: `load(token)` answers {rows, next}.
function pager(container, load) {
  const tokens = [null];
  let page = 0;
  const body = h("div");
  const info = h("span");
  const prev = h("button", { type: "button", onclick: () => go(page - 1) }, "Previous page");
  const next = h("button", { type: "button", onclick: () => go(page + 1) }, "Next page");
  container.append(body, h("div", { class: "pager" }, prev, info, next));
  async function go(p) {
    try {
      const r = await load(tokens[p]);
      page = p;
      tokens[p + 1] = r.next || undefined;
      body.replaceChildren(r.node);
      info.textContent = `Page ${p + 1}`;
      prev.disabled = p === 0;
      next.disabled = !r.next;
    } catch (e) {
      status(`Loading failed: ${e.message}`, true);
    }
  }
  go(0);
  return { reload: () => go(page) };
}

// --- sign-in ------------------------------------------------------------------------------------

function signInPage() {
  const err = h("p", { id: "signin-error", class: "error", role: "alert" });
  const form = h("form", { class: "signin", "aria-describedby": "signin-error" },
    h("h1", {}, "Sign in"),
    h("p", {}, "Your access key signs each request in this browser; the secret is kept in this tab only and never sent."),
    h("label", {}, "Access key ID", h("input", { name: "akid", required: true, autocomplete: "username", spellcheck: "false" })),
    h("label", {}, "Secret access key", h("input", { name: "secret", type: "password", required: true, autocomplete: "current-password" })),
    h("label", {}, "Region", h("input", { name: "region", value: "us-east-1", required: true })),
    h("label", {}, "NBD endpoint (host:port)", h("input", { name: "nbd", value: `${location.hostname}:10809` })),
    h("button", { type: "submit" }, "Sign in"), err);
  form.addEventListener("submit", async (ev) => {
    ev.preventDefault();
    const f = new FormData(form);
    const s = { accessKeyId: f.get("akid").trim(), secretAccessKey: f.get("secret"), region: f.get("region").trim(), nbd: f.get("nbd").trim() };
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
  try {
    const r = await nbd("ListNbdCredentials", {});
    s.nbdIdentity = r.Credentials?.[0]?.Identity || "";
    saveSession(s);
  } catch {
    s.nbdIdentity = "";
  }
  return s.nbdIdentity;
}

async function volumesPage(main) {
  const s = session();
  const identity = await nbdIdentity();
  const azs = list((await ec2("DescribeAvailabilityZones")).availabilityZoneInfo).map((z) => z.zoneName);
  main.append(h("h1", { tabindex: -1 }, `Volumes in ${s.region}`));
  const uri = (v) => (identity ? `nbds://${identity}@${s.nbd}/${v}?tls-psk-file=keys.psk` : `nbds://<identity>@${s.nbd}/${v}?tls-psk-file=keys.psk`);
  const keyBox = h("div");
  if (!identity) {
    keyBox.append(h("p", {}, "This account has no NBD key yet: volumes are served over NBD with TLS-PSK. ",
      h("button", { type: "button", onclick: async () => {
        const r = await act("Create NBD key", () => nbd("CreateNbdCredential", {}));
        if (!r) return;
        const c = r.Credential;
        s.nbdIdentity = c.Identity;
        saveSession(s);
        keyBox.replaceChildren(h("p", {}, "Save this line as keys.psk (shown once): ", h("code", { id: "psk-line" }, `${c.Identity}:${c.Key}`)));
      } }, "Create NBD key")));
  }
  main.append(keyBox);

  const form = h("form", { class: "inline", "aria-label": "Create volume" },
    h("label", {}, "Size (GiB)", h("input", { name: "size", type: "number", min: 1, value: 1, required: true })),
    h("label", {}, "Type", h("select", { name: "type" }, ["gp3", "gp2", "io1", "io2", "st1", "sc1", "standard"].map((t) => h("option", {}, t)))),
    h("label", {}, "Availability Zone", h("select", { name: "az" }, azs.map((z) => h("option", {}, z)))),
    h("label", {}, "Name", h("input", { name: "name" })),
    h("label", {}, h("span", {}, "Encrypted"), h("input", { name: "encrypted", type: "checkbox" })),
    h("button", { type: "submit" }, "Create volume"));
  form.addEventListener("submit", async (ev) => {
    ev.preventDefault();
    const f = new FormData(form);
    const p = { Size: f.get("size"), VolumeType: f.get("type"), AvailabilityZone: f.get("az") };
    if (f.get("type") === "io1" || f.get("type") === "io2") p.Iops = 3000;
    if (f.get("encrypted")) p.Encrypted = "true";
    if (f.get("name")) Object.assign(p, { "TagSpecification.1.ResourceType": "volume", "TagSpecification.1.Tag.1.Key": "Name", "TagSpecification.1.Tag.1.Value": f.get("name") });
    const r = await act("Create volume", () => ec2("CreateVolume", p));
    if (r) { status(`Created ${r.volumeId}.`); vols.reload(); }
  });
  main.append(form);

  const section = h("section", { "aria-label": "EC2 volumes" });
  main.append(section);
  let moving = false; // a volume on this page is between states: refresh until it settles
  const vols = pager(section, async (token) => {
    const r = await ec2("DescribeVolumes", { MaxResults: PAGE, NextToken: token });
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
        h("td", {}, h("code", { class: "nbd-uri" }, uri(id)), att ? null : h("div", {}, "(served while attached)")),
        h("td", {}, tags(v.tagSet)),
        h("td", {},
          h("button", { type: "button", "aria-label": `Create snapshot of ${id}`, onclick: async () => {
            const desc = prompt(`Description of the snapshot of ${id}`, "") ?? null;
            if (desc === null) return;
            const s2 = await act(`Snapshot ${id}`, () => ec2("CreateSnapshot", { VolumeId: id, Description: desc }));
            if (s2) status(`Snapshot ${s2.snapshotId} started; follow it on the Snapshots page.`);
          } }, "Snapshot"),
          att
            ? h("button", { type: "button", "aria-label": `Detach ${id}`, onclick: async () => {
              if (!confirm(`Detach ${id} from ${att.instanceId}?`)) return;
              if (await act(`Detach ${id}`, () => ec2("DetachVolume", { VolumeId: id }))) vols.reload();
            } }, "Detach")
            : h("button", { type: "button", "aria-label": `Attach ${id}`, onclick: async () => {
              const inst = prompt(`Attach ${id} to which instance (i-…)?`);
              if (!inst) return;
              const dev = prompt("Device name", "/dev/sdf");
              if (!dev) return;
              if (await act(`Attach ${id}`, () => ec2("AttachVolume", { VolumeId: id, InstanceId: inst.trim(), Device: dev.trim() }))) vols.reload();
            } }, "Attach"),
          h("button", { type: "button", "aria-label": `Delete ${id}`, onclick: async () => {
            if (!confirm(`Delete ${id}? Its data is gone for good (its snapshots stay).`)) return;
            if (await act(`Delete ${id}`, () => ec2("DeleteVolume", { VolumeId: id }))) vols.reload();
          } }, "Delete")));
    });
    return { rows, next: r.nextToken, node: table("EC2 volumes", ["Volume", "State", "Size", "Type", "AZ", "Encryption", "Attachment", "NBD URI", "Tags", "Actions"], rows) };
  });

  every(1500, () => { if (moving) vols.reload(); });

  const ls = h("section", { "aria-label": "Lightsail disks" });
  main.append(ls);
  pager(ls, async (token) => {
    const r = await lightsail("GetDisks", token ? { pageToken: token } : {});
    const rows = (r.disks || []).map((d) => h("tr", { dataset: { id: d.name } },
      h("th", { scope: "row" }, d.name), h("td", {}, d.state), h("td", {}, `${d.sizeInGb} GiB`),
      h("td", {}, d.location?.availabilityZone || ""), h("td", {}, d.isAttached ? `${d.attachedTo} ${d.path || ""}` : "not attached"),
      h("td", {}, (d.tags || []).map((t) => `${t.key}=${t.value ?? ""}`).join(", "))));
    return { rows, next: r.nextPageToken, node: table("Lightsail disks", ["Disk", "State", "Size", "AZ", "Attachment", "Tags"], rows) };
  });
}

// --- snapshots ----------------------------------------------------------------------------------

function snapshotRow(sn, reload, showLineage) {
  const id = sn.snapshotId;
  const s = session();
  return h("tr", { dataset: { id, state: sn.status } },
    h("th", { scope: "row" }, h("code", {}, id)), h("td", {}, sn.volumeId),
    h("td", { class: "state" }, sn.status), progressCell(sn.status, sn.progress, sn.stateMessage),
    h("td", {}, `${sn.volumeSize} GiB`), h("td", {}, sn.startTime), h("td", {}, sn.description || ""),
    h("td", {}, sn.encrypted === "true" ? "encrypted" : "not encrypted"),
    h("td", {},
      h("button", { type: "button", "aria-label": `Lineage of ${sn.volumeId}`, onclick: () => showLineage(sn.volumeId) }, "Lineage"),
      h("button", { type: "button", "aria-label": `Restore ${id}`, onclick: async () => {
        const az = prompt(`Restore ${id} to a new volume in which Availability Zone?`, `${s.region}a`);
        if (!az) return;
        const r = await act(`Restore ${id}`, () => ec2("CreateVolume", { SnapshotId: id, AvailabilityZone: az.trim() }));
        if (r) status(`Restored ${id} to ${r.volumeId}.`);
      } }, "Restore"),
      h("button", { type: "button", "aria-label": `Copy ${id}`, onclick: async () => {
        const to = prompt(`Copy ${id} to which region?`, s.regions.find((x) => x !== s.region) || "");
        if (!to) return;
        const r = await act(`Copy ${id} to ${to}`, () => ec2("CopySnapshot", { SourceRegion: s.region, SourceSnapshotId: id, Description: `Copy of ${id}` }, { region: to.trim() }));
        if (r) { status(`Copying ${id} to ${to} as ${r.snapshotId}.`); showLineage(sn.volumeId); }
      } }, "Copy"),
      h("button", { type: "button", "aria-label": `Share ${id}`, onclick: async () => {
        const acct = prompt(`Share ${id} with which account id?`);
        if (!acct) return;
        await act(`Share ${id}`, () => ec2("ModifySnapshotAttribute", { SnapshotId: id, Attribute: "createVolumePermission", OperationType: "add", "UserId.1": acct.trim() }));
      } }, "Share"),
      h("button", { type: "button", "aria-label": `Delete ${id}`, onclick: async () => {
        if (!confirm(`Delete ${id}?`)) return;
        if (await act(`Delete ${id}`, () => ec2("DeleteSnapshot", { SnapshotId: id }))) reload();
      } }, "Delete")));
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

  const section = h("section", { "aria-label": "EC2 snapshots" });
  main.append(section, lineageBox);
  let pending = [];
  const snaps = pager(section, async (token) => {
    const r = await ec2("DescribeSnapshots", { "Owner.1": "self", MaxResults: PAGE, NextToken: token });
    const items = list(r.snapshotSet);
    pending = items.filter((x) => x.status === "pending").map((x) => x.snapshotId);
    const rows = items.map((x) => snapshotRow(x, () => snaps.reload(), (v) => showLineage(v).catch((e) => status(e.message, true))));
    return { rows, next: r.nextToken, node: table("EC2 snapshots (yours)", ["Snapshot", "Volume", "State", "Progress", "Size", "Started", "Description", "Encryption", "Actions"], rows) };
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

  const lsBox = h("section", { "aria-label": "Lightsail snapshots" });
  main.append(lsBox);
  pager(lsBox, async (token) => {
    const r = await lightsail("GetDiskSnapshots", token ? { pageToken: token } : {});
    const rows = (r.diskSnapshots || []).map((d) => h("tr", { dataset: { id: d.name } },
      h("th", { scope: "row" }, d.name), h("td", {}, d.fromDiskName || ""), h("td", {}, d.state),
      progressCell(d.state, d.progress), h("td", {}, `${d.sizeInGb} GiB`)));
    return { rows, next: r.nextPageToken, node: table("Lightsail disk snapshots", ["Snapshot", "Disk", "State", "Progress", "Size"], rows) };
  });
  const lsi = h("section", { "aria-label": "Lightsail instance snapshots" });
  main.append(lsi);
  pager(lsi, async (token) => {
    const r = await lightsail("GetInstanceSnapshots", token ? { pageToken: token } : {});
    const rows = (r.instanceSnapshots || []).map((d) => h("tr", { dataset: { id: d.name } },
      h("th", { scope: "row" }, d.name), h("td", {}, d.fromInstanceName || ""), h("td", {}, d.state),
      progressCell(d.state, d.progress), h("td", {}, `${d.sizeInGb} GiB`)));
    return { rows, next: r.nextPageToken, node: table("Lightsail instance snapshots", ["Snapshot", "Instance", "State", "Progress", "Size"], rows) };
  });
}

// --- store --------------------------------------------------------------------------------------

const HISTORY = "blocksnap-console-store-history";

function chart(samples, region) {
  const pts = samples.map((x) => ({ t: x.t, r: x.regions.find((y) => y.Region === region) })).filter((x) => x.r);
  if (pts.length === 1) pts.push(pts[0]); // one sample: a flat line, not an invisible point
  const W = 480, H = 140;
  const max = Math.max(1, ...pts.map((p) => Math.max(p.r.LogicalBytes || 0, p.r.StoredBytes || 0, p.r.SnapshotBytesAdded || 0)));
  const line = (f) => pts.map((p, i) => `${pts.length > 1 ? (i / (pts.length - 1)) * W : 0},${H - ((f(p.r) || 0) / max) * (H - 10)}`).join(" ");
  const svg = document.createElementNS("http://www.w3.org/2000/svg", "svg");
  svg.setAttribute("viewBox", `0 0 ${W} ${H}`);
  svg.setAttribute("width", W);
  svg.setAttribute("height", H);
  svg.setAttribute("class", "chart");
  svg.setAttribute("role", "img");
  const last = pts[pts.length - 1]?.r || {};
  svg.setAttribute("aria-label", `Store of ${region} over the last ${samples.length} samples: logical ${bytes(last.LogicalBytes)} (solid line), stored ${bytes(last.StoredBytes)} (dashed line)`);
  for (const [f, dash, colour] of [[(r) => r.LogicalBytes ?? r.SnapshotBytesAdded, "", "#246"], [(r) => r.StoredBytes, "6 4", "#a40"]]) {
    const pl = document.createElementNS("http://www.w3.org/2000/svg", "polyline");
    pl.setAttribute("points", line(f));
    pl.setAttribute("fill", "none");
    pl.setAttribute("stroke", colour);
    pl.setAttribute("stroke-width", "2");
    if (dash) pl.setAttribute("stroke-dasharray", dash);
    svg.append(pl);
  }
  return h("figure", {}, svg, h("figcaption", {}, `Solid: logical bytes; dashed: stored bytes (scale up to ${bytes(max)}), sampled every 5 s or more while this page is open.`));
}

async function storePage(main) {
  const s = session();
  main.append(h("h1", { tabindex: -1 }, "Store"));
  const box = h("div");
  main.append(box);
  async function sample() {
    const r = await store("GetStoreStats", {});
    let hist = [];
    try { hist = JSON.parse(sessionStorage.getItem(HISTORY) || "[]"); } catch { hist = []; }
    hist.push({ t: Date.now(), regions: r.Regions });
    hist = hist.slice(-120);
    sessionStorage.setItem(HISTORY, JSON.stringify(hist));
    const used = r.Regions.filter((x) => x.Snapshots || x.StoredBytes || x.Region === s.region);
    const rows = used.map((x) => {
      const g = x.Gc;
      const gc = g ? `${g.Status} at ${new Date(g.LastRun * 1000).toISOString()} in ${g.DurationMs} ms, removed ${g.ChunksRemoved} chunks (${bytes(g.BytesRemoved)})${g.Error ? `: ${g.Error}` : ""}` : "no run yet";
      return h("tr", { dataset: { region: x.Region } }, h("th", { scope: "row" }, x.Region), h("td", {}, String(x.Snapshots)),
        h("td", { class: "logical" }, r.Scope === "store" ? bytes(x.LogicalBytes) : "—"), h("td", { class: "stored" }, r.Scope === "store" ? bytes(x.StoredBytes) : "—"),
        h("td", { class: "ratio" }, x.ReductionRatio !== undefined ? `${Number(x.ReductionRatio).toFixed(2)} : 1` : "—"),
        h("td", { class: "chunks" }, x.Chunks !== undefined ? String(x.Chunks) : "—"),
        h("td", {}, bytes(x.SnapshotBytesAdded)), h("td", { class: "gc" }, r.Scope === "store" ? gc : "—"));
    });
    box.replaceChildren(
      h("p", {}, r.Scope === "store" ? "The whole store (you are the root account)." : "Your account's share of the store."),
      table("Store usage per region (regions in use)", ["Region", "Snapshots", "Logical bytes", "Stored bytes", "Dedup + compression", "Chunks", "Bytes your snapshots added", "Last GC"], rows),
      h("h2", {}, `Over time in ${s.region}`), chart(hist, s.region));
  }
  // GetStoreStats walks the store (its cost grows with the snapshots it holds): one call at a time,
  // the next one 5 s after the last answer or four times its duration, whichever is longer.
  const g = generation;
  box.append(h("p", {}, "Measuring the store…"));
  async function loop() {
    const t0 = performance.now();
    try {
      await sample();
    } catch (e) {
      status(`Store statistics failed: ${e.message}`, true);
    }
    if (g === generation) timers.push(setTimeout(loop, Math.max(5000, 4 * (performance.now() - t0))));
  }
  loop();
}

// --- routing ------------------------------------------------------------------------------------

const PAGES = { "#/volumes": volumesPage, "#/snapshots": snapshotsPage, "#/store": storePage };

async function route() {
  timers.forEach((t) => { clearInterval(t); clearTimeout(t); });
  timers = [];
  const g = ++generation;
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
    if (g !== generation) return;
    $("#main").replaceChildren(main);
    main.querySelector("h1")?.focus();
  } catch (e) {
    if (g === generation) status(`Loading failed: ${e.message}`, true);
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
  sessionStorage.removeItem(HISTORY);
  history.replaceState(null, "", location.pathname);
  route();
});
window.addEventListener("hashchange", route);
route();
