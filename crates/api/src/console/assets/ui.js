// The console's DOM helpers: elements built from data (every server value goes in as text, never
// as markup), the status line, tables, pagers, and the forms and dialogs every action goes through.
import { ApiError } from "./api.js";

export const $ = (sel) => document.querySelector(sel);

/// h("tag", {attrs}, ...children): a DOM element; strings become text nodes.
export function h(tag, attrs = {}, ...children) {
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

// --- the shown page's lifetime: its timers stop when another page is built -------------------------

let timers = [];
let generation = 0;

/// A new page is being built: the older page's timers stop. Answers its generation.
export function newPage() {
  timers.forEach((t) => { clearInterval(t); clearTimeout(t); });
  timers = [];
  return ++generation;
}

/// Whether the page of generation `g` is still the one being shown.
export const current = (g) => g === generation;

/// `fn` every `ms` while this page is shown.
export function every(ms, fn) {
  const g = generation;
  const t = setInterval(() => {
    if (g !== generation) clearInterval(t);
    else fn();
  }, ms);
  timers.push(t);
}

/// `fn` once `promise` has settled, if this page is still shown then.
export function after(promise, fn) {
  const g = generation;
  promise.finally(() => { if (g === generation) fn(); });
}

/// `fn` once after `ms`, if this page is still shown then.
export function later(ms, fn) {
  const g = generation;
  timers.push(setTimeout(() => { if (g === generation) fn(); }, ms));
}

export function status(msg, isError = false) {
  const s = $("#status");
  s.textContent = msg;
  s.className = isError ? "error" : "";
}

/// Runs an action, reporting its outcome on the status line (errors named by their AWS code).
export async function act(label, fn) {
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

export function table(caption, headers, rows) {
  return h("table", {}, h("caption", {}, caption),
    h("thead", {}, h("tr", {}, headers.map((x) => h("th", { scope: "col" }, x)))),
    h("tbody", {}, rows.length ? rows : h("tr", {}, h("td", { colspan: headers.length }, "None."))));
}

export function progressCell(state, progress, message) {
  const pct = parseInt(progress, 10) || (state === "completed" || state === "available" ? 100 : 0);
  return h("td", { class: "progress" },
    h("progress", { max: 100, value: pct, "aria-label": `${pct}%` }), ` ${pct}%`,
    message ? h("div", { class: state === "error" ? "error" : "", role: state === "error" ? "alert" : undefined }, message) : null);
}

/// The control that had the focus, found again after its part of the page was rebuilt (same
/// aria-label or id), else `fallback`, else the page's heading.
function refocus(el, fallback) {
  if (el && el.isConnected) return el.focus();
  const label = el?.getAttribute?.("aria-label");
  const again = (label && document.querySelector(`#main [aria-label="${CSS.escape(label)}"]`))
    || (el?.id && document.getElementById(el.id));
  (again || fallback || document.querySelector("#main h1"))?.focus();
}

/// A pager over a NextToken API: `load(token)` answers {node, next}. `reload()` rebuilds the
/// current page, keeping the keyboard focus on the same control.
export function pager(container, load, onError = (e) => status(`Loading failed: ${e.message}`, true)) {
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
      const focused = body.contains(document.activeElement) ? document.activeElement : null;
      const row = focused?.closest("tr[data-id]")?.dataset.id;
      body.replaceChildren(r.node);
      // The same control again, or (an Attach that became Detach) the first one of its row.
      if (focused) refocus(focused, row && body.querySelector(`tr[data-id="${CSS.escape(row)}"] button`));
      info.textContent = `Page ${p + 1}`;
      prev.disabled = p === 0;
      next.disabled = !r.next;
    } catch (e) {
      onError(e);
    }
  }
  const first = go(0);
  return { reload: () => go(page), ready: first };
}

// --- forms ----------------------------------------------------------------------------------------

/// An error that belongs to one field of a form (shown next to it).
export class FieldError extends Error {
  constructor(field, message) {
    super(message);
    this.field = field;
  }
}

let seq = 0;

/// One labelled control: {name, label, type ("text", "number", "select", "checkbox"), value,
/// options (values or [value, text]), required, min, max, pattern, hint, placeholder,
/// autocomplete, invalid (the message when the browser's check fails)}.
function field(f, id) {
  const cid = `${id}-${f.name}`;
  const err = h("p", { class: "field-error", id: `${cid}-error` });
  const hint = f.hint ? h("p", { class: "hint", id: `${cid}-hint` }, f.hint) : null;
  const described = [hint && `${cid}-hint`, `${cid}-error`].filter(Boolean).join(" ");
  let control;
  if (f.type === "select") {
    control = h("select", { id: cid, name: f.name, required: f.required, "aria-describedby": described },
      (f.options || []).map((o) => {
        const [value, text] = Array.isArray(o) ? o : [o, o];
        return h("option", { value, selected: String(value) === String(f.value ?? "") }, text);
      }));
  } else {
    control = h("input", {
      id: cid, name: f.name, type: f.type || "text", required: f.required, min: f.min, max: f.max,
      pattern: f.pattern, placeholder: f.placeholder, autocomplete: f.autocomplete || "off",
      spellcheck: "false", "aria-describedby": described, inputmode: f.inputmode,
    });
    if (f.type === "checkbox") control.checked = !!f.value;
    else if (f.value !== undefined && f.value !== null) control.value = String(f.value);
  }
  const wrap = h("div", { class: `field${f.type === "checkbox" ? " check" : ""}` },
    h("label", { for: cid }, f.label), control, hint, err);
  return { wrap, control, err };
}

/// A form whose every input is labelled and whose errors are shown as text next to the field they
/// are about (or under the form). `onSubmit(values)` runs the action: a FieldError, or an API error
/// that `fieldFor(error)` maps to a field, is shown next to that field and focuses it; any other
/// error is shown under the form. `done(result)` gets the action's answer.
export function actionForm({ label, fields, submitLabel, onSubmit, fieldFor = () => null, done = () => {}, extra = [], intro, className }) {
  const id = `form${++seq}`;
  const controls = new Map();
  const general = h("p", { class: "form-error", id: `${id}-error`, role: "alert" });
  const parts = fields.map((f) => {
    const x = field(f, id);
    controls.set(f.name, { ...x, spec: f });
    return x.wrap;
  });
  const submit = h("button", { type: "submit" }, submitLabel);
  const form = h("form", { class: className, "aria-label": label, novalidate: true, "aria-describedby": `${id}-error` },
    intro ? h("p", { class: "intro" }, intro) : null, parts, h("div", { class: "buttons" }, submit, extra), general);

  function clear() {
    general.textContent = "";
    for (const c of controls.values()) {
      c.err.textContent = "";
      c.control.removeAttribute("aria-invalid");
    }
  }
  function show(name, msg) {
    const c = name && controls.get(name);
    if (!c) {
      general.textContent = msg;
      return submit;
    }
    c.err.textContent = msg;
    c.control.setAttribute("aria-invalid", "true");
    return c.control;
  }
  function values() {
    const v = {};
    for (const [n, c] of controls) v[n] = c.spec.type === "checkbox" ? c.control.checked : c.control.value.trim();
    return v;
  }
  let busy = false;
  form.addEventListener("submit", async (ev) => {
    ev.preventDefault();
    if (busy) return;
    clear();
    let firstBad = null;
    for (const [n, c] of controls) {
      if (c.control.checkValidity()) continue;
      const el = show(n, c.spec.invalid && !c.control.validity.valueMissing ? c.spec.invalid : c.control.validationMessage);
      firstBad = firstBad || el;
    }
    if (firstBad) return firstBad.focus();
    busy = true;
    submit.disabled = true;
    form.setAttribute("aria-busy", "true");
    try {
      const r = await onSubmit(values());
      done(r);
    } catch (e) {
      const name = e instanceof FieldError ? e.field : fieldFor(e);
      show(name, e.message).focus();
    } finally {
      busy = false;
      submit.disabled = false;
      form.removeAttribute("aria-busy");
    }
  });
  return { form, values, busy: () => busy, first: () => controls.values().next().value?.control || submit };
}

/// A modal dialog around an action form: it opens with the focus on its first field, Escape or
/// Cancel closes it, and the focus goes back to the control that opened it. Answers the action's
/// result (true if it answered nothing), or null when cancelled.
export function dialog({ title, fields = [], submitLabel, onSubmit, fieldFor, intro, danger = false }) {
  return new Promise((resolve) => {
    const opener = document.activeElement;
    const titleId = `dialog${++seq}`;
    let result = null;
    const dlg = h("dialog", { "aria-labelledby": titleId, class: danger ? "danger" : undefined });
    const cancel = h("button", { type: "button", onclick: () => dlg.close() }, "Cancel");
    const f = actionForm({ label: title, fields, submitLabel, onSubmit, fieldFor, intro, extra: [cancel],
      done: (r) => { result = r ?? true; dlg.close(); } });
    dlg.append(h("h2", { id: titleId }, title), f.form);
    // Escape while the call is on its way would hide its outcome: it is only refused then.
    dlg.addEventListener("cancel", (ev) => { if (f.busy()) ev.preventDefault(); });
    dlg.addEventListener("close", () => {
      dlg.remove();
      refocus(opener);
      resolve(result);
    });
    document.body.append(dlg);
    dlg.showModal();
    f.first().focus();
  });
}

/// A yes/no question in a dialog: `run` does it, and its errors are shown in the dialog.
export function confirmDialog({ title, text, confirmLabel, run }) {
  return dialog({ title, intro: text, submitLabel: confirmLabel, onSubmit: run, danger: true });
}
