// The draw-a-mask page of `python -m lama_jax.demo` (served with index.html and demo.css).
//
// Strokes are recorded in the photo's own pixel coordinates, so the on-screen
// canvas can be a downscaled copy of a large photo while the mask that is sent
// is rendered again at full resolution. Undo replays the recorded strokes.
"use strict";

const DISPLAY_MAX_SIDE = 1600;  // on-screen canvases are at most this many pixels per side
const MASK_COLOR = "rgb(255, 0, 90)";

const $ = (id) => document.getElementById(id);
const ui = {
  upload: $("upload"), sample: $("sample"), brushSize: $("brush-size"), brushSizeValue: $("brush-size-value"),
  paint: $("paint"), erase: $("erase"), undo: $("undo"), clear: $("clear"), refine: $("refine"),
  refineLabel: $("refine-label"), refineNote: $("refine-note"), inpaint: $("inpaint"), status: $("status"),
  model: $("model"), noWeights: $("no-weights"), stack: $("stack"), photo: $("photo"), mask: $("mask"),
  cursor: $("cursor"), inputSize: $("input-size"), result: $("result"), downloadResult: $("download-result"),
  downloadMask: $("download-mask"), continueEditing: $("continue"),
};

const state = {
  server: null,        // GET /api/status
  photo: null,         // {blob, name, bitmap, width, height}
  strokes: [],         // {erase, size, points: [[x, y], ...]} in photo pixels, or {clear: true}
  drawing: null,       // the stroke under the pointer
  hasHole: false,      // whether the strokes leave any painted pixel
  erase: false,
  busy: false,
  objectUrls: [],
};

function setStatus(text, kind = "") {
  ui.status.textContent = text;
  ui.status.className = "status " + kind;
}

function fileStem(name) {
  return (name || "photo").replace(/\.[^.]*$/, "") || "photo";
}

function updateButtons() {
  const ready = state.server && state.server.model_loaded && state.photo && !state.busy;
  ui.inpaint.disabled = !ready || !state.hasHole;
  ui.undo.disabled = state.busy || state.strokes.length === 0;
  ui.clear.disabled = state.busy || !state.hasHole;
  ui.paint.setAttribute("aria-pressed", String(!state.erase));
  ui.erase.setAttribute("aria-pressed", String(state.erase));
}

// ---- Strokes ----------------------------------------------------------------

function drawStroke(ctx, stroke) {
  ctx.globalCompositeOperation = stroke.erase ? "destination-out" : "source-over";
  ctx.strokeStyle = ctx.fillStyle = MASK_COLOR;
  ctx.lineWidth = stroke.size;
  ctx.lineCap = ctx.lineJoin = "round";
  const [first, ...rest] = stroke.points;
  if (rest.length === 0) {
    ctx.beginPath();
    ctx.arc(first[0], first[1], stroke.size / 2, 0, 2 * Math.PI);
    ctx.fill();
    return;
  }
  ctx.beginPath();
  ctx.moveTo(first[0], first[1]);
  for (const [x, y] of rest) ctx.lineTo(x, y);
  ctx.stroke();
}

// Draws every stroke onto `canvas`, whose size may differ from the photo's.
function renderStrokes(canvas, strokes) {
  const ctx = canvas.getContext("2d");
  ctx.setTransform(1, 0, 0, 1, 0, 0);
  ctx.clearRect(0, 0, canvas.width, canvas.height);
  ctx.setTransform(canvas.width / state.photo.width, 0, 0, canvas.height / state.photo.height, 0, 0);
  for (const stroke of strokes) {
    if (stroke.clear) {
      ctx.save();
      ctx.setTransform(1, 0, 0, 1, 0, 0);
      ctx.clearRect(0, 0, canvas.width, canvas.height);
      ctx.restore();
    } else {
      drawStroke(ctx, stroke);
    }
  }
}

function redraw() {
  renderStrokes(ui.mask, state.drawing ? [...state.strokes, state.drawing] : state.strokes);
}

// After the list of strokes changed: redraw, and find out whether any painted pixel is left
// (judged on the on-screen canvas, which is cheap enough to scan once per change).
function strokesChanged() {
  redraw();
  state.hasHole = false;
  if (state.strokes.length > 0) {
    const alpha = ui.mask.getContext("2d").getImageData(0, 0, ui.mask.width, ui.mask.height).data;
    for (let i = 3; i < alpha.length && !state.hasHole; i += 4) state.hasHole = alpha[i] > 127;
  }
  updateButtons();
}

// The mask at the photo's full resolution as a black/white PNG (white = hole).
async function maskPng() {
  const canvas = document.createElement("canvas");
  canvas.width = state.photo.width;
  canvas.height = state.photo.height;
  renderStrokes(canvas, state.strokes);
  const ctx = canvas.getContext("2d");
  ctx.setTransform(1, 0, 0, 1, 0, 0);
  const pixels = ctx.getImageData(0, 0, canvas.width, canvas.height);
  const data = pixels.data;
  for (let i = 0; i < data.length; i += 4) {
    const value = data[i + 3] > 127 ? 255 : 0;
    data[i] = data[i + 1] = data[i + 2] = value;
    data[i + 3] = 255;
  }
  ctx.putImageData(pixels, 0, 0);
  return new Promise((resolve) => canvas.toBlob(resolve, "image/png"));
}

// ---- Pointer ------------------------------------------------------------------

function photoPoint(event) {
  const box = ui.mask.getBoundingClientRect();
  return [
    (event.clientX - box.left) * state.photo.width / box.width,
    (event.clientY - box.top) * state.photo.height / box.height,
  ];
}

function brushPhotoPixels() {
  // The slider is in screen pixels; strokes are stored in photo pixels.
  return Number(ui.brushSize.value) * state.photo.width / ui.mask.getBoundingClientRect().width;
}

function moveCursor(event) {
  const box = ui.mask.getBoundingClientRect();
  const size = Number(ui.brushSize.value);
  ui.cursor.hidden = false;
  ui.cursor.style.width = ui.cursor.style.height = size + "px";
  ui.cursor.style.transform =
    `translate(${event.clientX - box.left - size / 2}px, ${event.clientY - box.top - size / 2}px)`;
}

ui.mask.addEventListener("pointerdown", (event) => {
  if (!state.photo || state.busy || event.button !== 0) return;
  ui.mask.setPointerCapture(event.pointerId);
  state.drawing = { erase: state.erase, size: brushPhotoPixels(), points: [photoPoint(event)] };
  redraw();
});
ui.mask.addEventListener("pointermove", (event) => {
  moveCursor(event);
  if (!state.drawing) return;
  state.drawing.points.push(photoPoint(event));
  redraw();
});
function finishStroke() {
  if (!state.drawing) return;
  state.strokes.push(state.drawing);
  state.drawing = null;
  strokesChanged();
}
ui.mask.addEventListener("pointerup", finishStroke);
ui.mask.addEventListener("pointercancel", finishStroke);
ui.mask.addEventListener("pointerleave", () => { ui.cursor.hidden = true; });

// ---- Tools -------------------------------------------------------------------

ui.brushSize.addEventListener("input", () => { ui.brushSizeValue.textContent = ui.brushSize.value + " px"; });
ui.paint.addEventListener("click", () => { state.erase = false; updateButtons(); });
ui.erase.addEventListener("click", () => { state.erase = true; updateButtons(); });
function undo() {
  if (state.busy || state.strokes.length === 0) return;
  state.strokes.pop();
  strokesChanged();
}
ui.undo.addEventListener("click", undo);
ui.clear.addEventListener("click", () => {
  if (!state.hasHole) return;
  state.strokes.push({ clear: true });  // undoable like a stroke
  strokesChanged();
});
document.addEventListener("keydown", (event) => {
  if ((event.ctrlKey || event.metaKey) && event.key.toLowerCase() === "z") {
    event.preventDefault();
    undo();
  }
});

// ---- Photos ------------------------------------------------------------------

function resetResult() {
  for (const url of state.objectUrls) URL.revokeObjectURL(url);
  state.objectUrls = [];
  for (const element of [ui.result, ui.downloadResult, ui.downloadMask, ui.continueEditing]) element.hidden = true;
  ui.result.removeAttribute("src");
}

async function loadPhoto(blob, name) {
  const server = state.server;
  if (server && blob.size > server.max_upload_bytes) {
    setStatus(`${name} is ${(blob.size / 2 ** 20).toFixed(1)} MiB; this server accepts up to ` +
              `${(server.max_upload_bytes / 2 ** 20).toFixed(1)} MiB.`, "error");
    return;
  }
  let bitmap;
  try {
    bitmap = await createImageBitmap(blob);  // applies EXIF orientation, as the server does
  } catch (error) {
    setStatus(`${name} is not an image this browser can read.`, "error");
    return;
  }
  const { width, height } = bitmap;
  if (server && width * height > server.max_image_pixels) {
    setStatus(`${name} has ${(width * height / 1e6).toFixed(1)} MP; this server accepts up to ` +
              `${(server.max_image_pixels / 1e6).toFixed(1)} MP. Downscale it first.`, "error");
    return;
  }
  const display = Math.min(1, DISPLAY_MAX_SIDE / Math.max(width, height));
  state.photo = { blob, name, bitmap, width, height };
  state.strokes = [];
  state.drawing = null;
  for (const canvas of [ui.photo, ui.mask]) {
    canvas.width = Math.max(1, Math.round(width * display));
    canvas.height = Math.max(1, Math.round(height * display));
  }
  ui.photo.getContext("2d").drawImage(bitmap, 0, 0, ui.photo.width, ui.photo.height);
  ui.stack.hidden = false;
  ui.inputSize.textContent = `${width}×${height} px` + (display < 1 ? " (shown downscaled)" : "");
  resetResult();
  strokesChanged();
  if (server && width * height > server.max_inpaint_pixels) {
    setStatus(`${name} has ${(width * height / 1e6).toFixed(1)} MP: it will be inpainted at ` +
              `${(server.max_inpaint_pixels / 1e6).toFixed(1)} MP and the fill upscaled into the mask.`);
  } else {
    setStatus(`Loaded ${name}. Paint over what should disappear, then press Inpaint.`);
  }
}

ui.upload.addEventListener("change", () => {
  const file = ui.upload.files[0];
  if (file) loadPhoto(file, file.name);
  ui.sample.value = "";
});

ui.sample.addEventListener("change", async () => {
  const name = ui.sample.value;
  if (!name) return;
  ui.upload.value = "";
  const response = await fetch("samples/" + encodeURIComponent(name));
  if (!response.ok) {
    setStatus(`Could not load the sample ${name} (HTTP ${response.status}).`, "error");
    return;
  }
  await loadPhoto(await response.blob(), name);
});

// ---- Inpaint -----------------------------------------------------------------

ui.inpaint.addEventListener("click", async () => {
  if (ui.inpaint.disabled) return;
  state.busy = true;
  updateButtons();
  setStatus("Inpainting…", "busy");
  try {
    const mask = await maskPng();
    const form = new FormData();
    form.append("image", state.photo.blob, state.photo.name);
    form.append("mask", mask, "mask.png");
    form.append("refine", ui.refine.checked ? "1" : "0");
    const response = await fetch("api/inpaint", { method: "POST", body: form });
    const reply = await response.json().catch(() => ({ error: `HTTP ${response.status} without a message` }));
    if (!response.ok) throw new Error(reply.error);
    resetResult();
    const stem = fileStem(state.photo.name);
    ui.result.src = reply.result;
    ui.result.hidden = false;
    ui.downloadResult.href = reply.result;
    ui.downloadResult.download = `${stem}_inpainted.png`;
    const maskUrl = URL.createObjectURL(mask);
    state.objectUrls.push(maskUrl);
    ui.downloadMask.href = maskUrl;
    ui.downloadMask.download = `${stem}_mask.png`;
    for (const element of [ui.downloadResult, ui.downloadMask, ui.continueEditing]) element.hidden = false;
    setStatus(reply.message);
  } catch (error) {
    setStatus(`Error: ${error.message}`, "error");
  } finally {
    state.busy = false;
    updateButtons();
  }
});

ui.continueEditing.addEventListener("click", async () => {
  const blob = await (await fetch(ui.result.src)).blob();
  await loadPhoto(blob, `${fileStem(state.photo.name)}_inpainted.png`);
});

// ---- Start -------------------------------------------------------------------

async function start() {
  try {
    const response = await fetch("api/status");
    state.server = await response.json();
  } catch (error) {
    setStatus(`Cannot reach the demo server: ${error.message}`, "error");
    return;
  }
  const server = state.server;
  ui.model.textContent = server.model;
  if (!server.model_loaded) {
    ui.noWeights.textContent = server.message;
    ui.noWeights.hidden = false;
  }
  if (!server.refine_available) {
    ui.refineLabel.hidden = true;
    ui.refineNote.textContent = server.refine_note;
    ui.refineNote.hidden = false;
  }
  for (const name of server.samples) ui.sample.add(new Option(name, name));
  ui.sample.disabled = server.samples.length === 0;
  updateButtons();
  document.body.dataset.ready = "true";  // lets the browser test wait for the page to be usable
}

start();
