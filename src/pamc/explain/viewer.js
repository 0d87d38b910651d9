/* pamc view: the page's logic, plain JavaScript and canvas (no framework, no network).

   It reads the JSON block #pamc-data (its format: pamc/explain/viewer.py), decodes the raw CAMs
   and recomputes, for the alpha on the slider, BoostLU(CAM) in each model's form, the scores
   p = sigmoid(mean(BoostLU(CAM))) and the colours.  window.pamcView exposes the state and the
   numbers the page shows (for tests and the console):
     pamcView.ready                  true once the first image is drawn
     pamcView.state()                {image, row, classIndex, className, alpha, scaleAlpha, opacity, boxes, hold}
     pamcView.setImage(i) / setRow(k) / setAlpha(a) / setOpacity(o) / setBoxes(b)
     pamcView.score(m, k)            {p, logit} of model m, row k of the current image, at the current alpha
     pamcView.tunedScore(m, k)       the same at the model's evaluation (tuned) alpha of that row's class
     pamcView.scale(k)               the row's colour scale: colours span -scale .. +scale
     pamcView.colour(v, scale)       [r, g, b] the page paints for value v
     pamcView.mapValue(m, k, x, y)   the drawn (boosted, upsampled) value at pixel (x, y) of that map's canvas
   Pages made by `pamc suggest-labels --review` carry DATA.review (pamc/review.py): suggested (image,
   class) pairs to accept or reject from the keyboard, filtered by class, exported as CSV:
     pamcView.review.state()         {item, position, visible, accepted, rejected, filter, decision}
     pamcView.review.decide(d)       "accept" / "reject" the current suggestion (then the next), or null
     pamcView.review.move(step) / setFilter(classIndex or "") / csv()   the decisions file's text */
(function () {
  "use strict";

  const DATA = JSON.parse(document.getElementById("pamc-data").textContent);
  const CELL = 176;  // canvas pixels across one map (height follows the image's aspect ratio)
  const BAR = 64;  // colour bar canvas width
  const BINS = 24;
  const PALETTE = ["#4a4a4a", "#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2", "#17becf", "#bcbd22"];
  const models = DATA.models;
  const M = models.length;
  const images = DATA.images;
  const names = DATA.class_names;
  const LUT = bytes(DATA.colormap.lut);
  const state = { image: 0, row: 0, alpha: 1, opacity: 0.65, boxes: true, hold: false, heldAlpha: 1 };
  const decoded = new Map();  // image -> [model][row] Float32Array(h * w)
  const axes = new Map();  // "n,N" -> bilinear sampling positions
  const scratch = document.createElement("canvas");
  let pictures = [];  // decoded <img> per image
  let cells = [];  // per row of the current image: {row, image, maps: [canvas], scores, tuned, bar}
  let drawn = [];  // per row, per model: the values drawn on its canvas (for mapValue)
  const $ = (id) => document.getElementById(id);

  function bytes(b64) {
    const text = atob(b64);
    const out = new Uint8Array(text.length);
    for (let i = 0; i < text.length; i++) out[i] = text.charCodeAt(i);
    return out;
  }

  function camsOf(i) {  // base64 float32 little-endian, shape (models, classes, h, w)
    if (!decoded.has(i)) {
      const entry = images[i];
      const size = entry.cam_shape[0] * entry.cam_shape[1];
      const K = entry.classes.length;
      const view = new DataView(bytes(entry.cams).buffer);
      const maps = [];
      for (let m = 0; m < M; m++) {
        const rows = [];
        for (let k = 0; k < K; k++) {
          const map = new Float32Array(size);
          const base = (m * K + k) * size;
          for (let j = 0; j < size; j++) map[j] = view.getFloat32((base + j) * 4, true);
          rows.push(map);
        }
        maps.push(rows);
      }
      decoded.set(i, maps);
    }
    return decoded.get(i);
  }

  // The forms of BoostLU, as pamc.activation: x + (alpha - 1) * part(x), in float32 arrays
  const softplus = (z) => (z > 20 ? z : Math.log1p(Math.exp(z)));  // torch's softplus: linear above 20
  const FORMS = {
    boostlu: () => (map, alpha) => map.map((v) => (v > 0 ? alpha * v : v)),
    "boostlu-threshold": ({ tau }) => (map, alpha) => map.map((v) => v + (alpha - 1) * Math.max(v - tau, 0)),
    "boostlu-smooth": ({ beta }) => (map, alpha) => map.map((v) => v + ((alpha - 1) * softplus(beta * v)) / beta),
  };
  const forms = models.map((model) => {
    const make = FORMS[model.activation.name];
    if (!make) throw new Error(`this page cannot draw the BoostLU form ${model.activation.name}`);
    return make(model.activation);
  });
  const boosted = (m, map, alpha) => (alpha === 1 ? map : forms[m](map, alpha));
  // a model's evaluation alpha for class c: one number, or one per class (per-class alpha)
  const tunedAlpha = (m, c) => (Array.isArray(models[m].eval_alpha) ? models[m].eval_alpha[c] : models[m].eval_alpha);
  const alphaText = (a) => (Array.isArray(a) ? "per class" : a.toFixed(1));

  function score(m, k, alpha) {
    const map = boosted(m, camsOf(state.image)[m][k], alpha);
    let sum = 0;
    for (const v of map) sum += v;
    const logit = sum / map.length;
    return { p: 1 / (1 + Math.exp(-logit)), logit };
  }

  const scaleAlpha = () => (state.hold ? state.heldAlpha : state.alpha);

  function scale(k) {  // shared by the row's models: the largest |BoostLU(CAM)| among them
    let top = 0;
    for (let m = 0; m < M; m++) for (const v of boosted(m, camsOf(state.image)[m][k], scaleAlpha())) top = Math.max(top, Math.abs(v));
    return Math.max(top, 1e-12);
  }

  function colour(v, vmax) {  // matplotlib's lookup: t in [0, 1] -> entry min(255, floor(256 t))
    const t = Math.min(1, Math.max(0, (v / vmax + 1) / 2));
    const j = Math.min(255, Math.floor(t * 256)) * 3;
    return [LUT[j], LUT[j + 1], LUT[j + 2]];
  }

  function axis(n, N) {  // bilinear, align_corners=False: torch.nn.functional.interpolate's sampling
    const key = n + "," + N;
    if (!axes.has(key)) {
      const lo = new Int32Array(N), hi = new Int32Array(N), f = new Float64Array(N);
      for (let x = 0; x < N; x++) {
        const s = Math.max(0, ((x + 0.5) * n) / N - 0.5);
        lo[x] = Math.min(Math.floor(s), n - 1);
        hi[x] = Math.min(lo[x] + 1, n - 1);
        f[x] = s - lo[x];
      }
      axes.set(key, { lo, hi, f });
    }
    return axes.get(key);
  }

  function upsample(map, h, w, H, W) {
    const ay = axis(h, H), ax = axis(w, W), out = new Float64Array(H * W);
    for (let y = 0; y < H; y++) {
      const r0 = ay.lo[y] * w, r1 = ay.hi[y] * w, fy = ay.f[y];
      for (let x = 0; x < W; x++) {
        const a = map[r0 + ax.lo[x]], b = map[r0 + ax.hi[x]], c = map[r1 + ax.lo[x]], d = map[r1 + ax.hi[x]];
        const fx = ax.f[x];
        out[y * W + x] = (1 - fy) * ((1 - fx) * a + fx * b) + fy * ((1 - fx) * c + fx * d);
      }
    }
    return out;
  }

  const fmt = (v, digits = 3) => {
    if (v === 0) return "0";
    const a = Math.abs(v);
    return a >= 100 || a < 0.01 ? v.toExponential(1) : v.toPrecision(digits);
  };
  const className = (c) => names[c] ?? String(c);
  const element = (tag, cls, text) => {
    const e = document.createElement(tag);
    if (cls) e.className = cls;
    if (text !== undefined) e.textContent = text;
    return e;
  };

  // ------------------------------------------------------------------ drawing

  function drawBoxes(ctx, k, onImage) {
    const entry = images[state.image];
    if (!entry.boxes || (!onImage && !state.boxes)) return;
    const c = entry.classes[k];
    const sx = ctx.canvas.width / entry.box_canvas[1], sy = ctx.canvas.height / entry.box_canvas[0];
    ctx.save();
    ctx.font = "600 11px system-ui, sans-serif";
    ctx.textBaseline = "top";
    for (const [cls, x0, y0, x1, y1] of entry.boxes) {
      const mine = cls === c;
      if (!mine && !onImage) continue;
      ctx.setLineDash(mine ? [] : [3, 3]);
      ctx.lineWidth = mine ? 2 : 1;
      ctx.strokeStyle = mine ? (onImage ? "#ffd400" : "#111") : "rgba(255,255,255,0.75)";
      ctx.strokeRect(x0 * sx + 0.5, y0 * sy + 0.5, (x1 - x0) * sx - 1, (y1 - y0) * sy - 1);
      if (onImage) {
        const label = className(cls);
        const tw = ctx.measureText(label).width + 4;
        ctx.fillStyle = mine ? "#ffd400" : "rgba(255,255,255,0.75)";
        ctx.fillRect(x0 * sx, Math.max(0, y0 * sy - 13), tw, 13);
        ctx.fillStyle = "#000";
        ctx.fillText(label, x0 * sx + 2, Math.max(0, y0 * sy - 13) + 1);
      }
    }
    ctx.restore();
  }

  function drawImageCell(canvas, k) {
    const ctx = canvas.getContext("2d");
    ctx.imageSmoothingEnabled = true;
    ctx.drawImage(pictures[state.image], 0, 0, canvas.width, canvas.height);
    drawBoxes(ctx, k, true);
    const peak = review && review.peaks.get(state.image + "," + k);
    if (peak) {  // where the suggestion's evidence is: the CAM's peak
      ctx.strokeStyle = "#ffd400";
      ctx.lineWidth = 2;
      ctx.beginPath();
      ctx.arc(peak[0] * canvas.width, peak[1] * canvas.height, 7, 0, 2 * Math.PI);
      ctx.stroke();
    }
  }

  function drawMap(canvas, m, k, vmax) {
    const entry = images[state.image];
    const [h, w] = entry.cam_shape;
    const W = canvas.width, H = canvas.height;
    const values = upsample(boosted(m, camsOf(state.image)[m][k], state.alpha), h, w, H, W);
    drawn[k][m] = values;
    scratch.width = W;
    scratch.height = H;
    const sctx = scratch.getContext("2d");
    const layer = sctx.createImageData(W, H);
    for (let j = 0; j < values.length; j++) {
      const rgb = colour(values[j], vmax);
      layer.data[4 * j] = rgb[0];
      layer.data[4 * j + 1] = rgb[1];
      layer.data[4 * j + 2] = rgb[2];
      layer.data[4 * j + 3] = 255;
    }
    sctx.putImageData(layer, 0, 0);
    const ctx = canvas.getContext("2d");
    ctx.globalAlpha = 1;
    ctx.drawImage(pictures[state.image], 0, 0, W, H);
    ctx.globalAlpha = state.opacity;
    ctx.drawImage(scratch, 0, 0);
    ctx.globalAlpha = 1;
    drawBoxes(ctx, k, false);
  }

  function drawBar(canvas, vmax) {
    const ctx = canvas.getContext("2d");
    const top = 6, bottom = canvas.height - 18, x = 4, width = 12;
    ctx.clearRect(0, 0, canvas.width, canvas.height);
    for (let y = top; y < bottom; y++) {
      const rgb = colour(vmax * (1 - (2 * (y + 0.5 - top)) / (bottom - top)), vmax);
      ctx.fillStyle = `rgb(${rgb[0]},${rgb[1]},${rgb[2]})`;
      ctx.fillRect(x, y, width, 1);
    }
    ctx.strokeStyle = "#666";
    ctx.strokeRect(x + 0.5, top + 0.5, width - 1, bottom - top - 1);
    ctx.fillStyle = "#222";
    ctx.font = "11px system-ui, sans-serif";
    ctx.textBaseline = "middle";
    for (const f of [1, 0.5, 0, -0.5, -1]) {
      const y = top + ((1 - f) / 2) * (bottom - top);
      ctx.fillRect(x + width, Math.round(y), 3, 1);
      ctx.fillText(fmt(f * vmax), x + width + 5, y);
    }
    ctx.fillStyle = "#5c6370";
    ctx.textBaseline = "bottom";
    ctx.fillText("CAM units", 0, canvas.height);
  }

  function drawHistogram() {
    const canvas = $("hist");
    const ctx = canvas.getContext("2d");
    const k = state.row;
    const maps = camsOf(state.image);
    const series = [{ label: models[0].label + " (raw)", values: maps[0][k], colour: PALETTE[0], kind: "filled" }];
    for (let m = 1; m < M; m++) series.push({ label: models[m].label + " (raw)", values: maps[m][k], colour: PALETTE[m % PALETTE.length], kind: "dashed" });
    for (let m = M > 1 ? 1 : 0; m < M; m++) {
      series.push({ label: `${models[m].label} boosted \u03b1 ${state.alpha.toFixed(1)}`, values: boosted(m, maps[m][k], state.alpha),
                    colour: PALETTE[m % PALETTE.length], kind: "solid" });
    }
    let lo = Infinity, hi = -Infinity;
    for (const s of series) for (const v of s.values) { lo = Math.min(lo, v); hi = Math.max(hi, v); }
    if (!(hi > lo)) { lo -= 0.5; hi += 0.5; }
    const counts = series.map((s) => {
      const c = new Array(BINS).fill(0);
      for (const v of s.values) c[Math.min(BINS - 1, Math.floor(((v - lo) / (hi - lo)) * BINS))]++;
      return c;
    });
    const peak = Math.max(1, ...counts.flat());
    const left = 8, right = canvas.width - 8, top = 6, bottom = canvas.height - 30;
    const X = (v) => left + ((v - lo) / (hi - lo)) * (right - left);
    const Y = (c) => bottom - (c / peak) * (bottom - top);
    ctx.clearRect(0, 0, canvas.width, canvas.height);
    series.forEach((s, i) => {
      ctx.beginPath();
      ctx.moveTo(left, bottom);
      counts[i].forEach((c, b) => {
        ctx.lineTo(left + (b / BINS) * (right - left), Y(c));
        ctx.lineTo(left + ((b + 1) / BINS) * (right - left), Y(c));
      });
      ctx.lineTo(right, bottom);
      if (s.kind === "filled") {
        ctx.fillStyle = s.colour + "55";
        ctx.fill();
      } else {
        ctx.setLineDash(s.kind === "dashed" ? [4, 3] : []);
        ctx.strokeStyle = s.colour;
        ctx.lineWidth = 1.5;
        ctx.stroke();
        ctx.setLineDash([]);
      }
    });
    ctx.strokeStyle = "#888";
    ctx.lineWidth = 1;
    ctx.beginPath();
    ctx.moveTo(left, bottom + 0.5);
    ctx.lineTo(right, bottom + 0.5);
    ctx.stroke();
    ctx.fillStyle = "#222";
    ctx.font = "11px system-ui, sans-serif";
    ctx.textBaseline = "top";
    const ticks = [lo, hi].concat(lo < 0 && hi > 0 ? [0] : []);
    for (const v of ticks) {
      ctx.fillRect(Math.round(X(v)), bottom, 1, 4);
      ctx.textAlign = v === lo ? "left" : v === hi ? "right" : "center";
      ctx.fillText(fmt(v), X(v), bottom + 5);
    }
    ctx.textAlign = "center";
    ctx.fillStyle = "#5c6370";
    ctx.fillText(`CAM value (${images[state.image].cam_shape.join(" \u00d7 ")} positions per map)`, (left + right) / 2, bottom + 17);
    ctx.textAlign = "left";
    $("hist-title").textContent = `CAM values of the row: ${className(images[state.image].classes[k])}`;
    const legend = $("hist-legend");
    legend.replaceChildren(...series.map((s) => {
      const item = element("span");
      const swatch = element("i", "swatch " + s.kind);
      swatch.style.borderTopColor = s.colour;
      item.append(swatch, s.label);
      return item;
    }));
  }

  function redraw() {  // everything that depends on alpha, opacity, boxes or the colour scale
    $("alpha-value").textContent = state.alpha.toFixed(1);
    cells.forEach((cell, k) => {
      const vmax = scale(k);
      drawImageCell(cell.image, k);
      cell.maps.forEach((canvas, m) => {
        drawMap(canvas, m, k, vmax);
        const s = score(m, k, state.alpha);
        cell.scores[m].textContent = s.p.toFixed(4);
        cell.scores[m].dataset.p = String(s.p);
        cell.logits[m].textContent = s.logit.toFixed(3);
        const a = tunedAlpha(m, images[state.image].classes[k]);
        const t = score(m, k, a);
        cell.tuned[m].textContent = `tuned \u03b1 ${a.toFixed(1)}: p ${t.p.toFixed(4)}`;
      });
      drawBar(cell.bar, vmax);
    });
    drawHistogram();
  }

  // ------------------------------------------------------------------ building the grid

  function labelBadges(entry, c) {
    const out = [];
    if (entry.truth) out.push(entry.truth.includes(c) ? element("span", "badge gt", "ground truth") : element("span", "badge none", "absent"));
    if (entry.observed) {
      if (entry.observed.positive.includes(c)) out.push(element("span", "badge obs", "observed +"));
      else if (entry.observed.negative.includes(c)) out.push(element("span", "badge obs", "observed \u2212"));
    }
    return out;
  }

  function buildGrid() {
    const entry = images[state.image];
    const H = Math.max(1, Math.round((CELL * entry.height) / entry.width));
    const grid = $("grid");
    grid.style.gridTemplateColumns = `repeat(${M + 1}, ${CELL + 12}px) ${BAR}px`;
    const heads = [element("div", "head", "image")];
    models.forEach((model, m) => {
      const head = element("div", "head");
      head.style.color = PALETTE[m % PALETTE.length];
      head.append(model.label, element("small", "", `${model.method || "model"} \u00b7 ${model.form} \u00b7 trained \u03b1 ${alphaText(model.train_alpha)} \u00b7 tuned \u03b1 ${alphaText(model.eval_alpha)}`));
      heads.push(head);
    });
    heads.push(element("div", "head", ""));
    cells = [];
    drawn = [];
    const rows = entry.classes.map((c, k) => {
      const row = element("div", "row");
      row.dataset.row = String(k);
      const imageCell = element("div", "cell");
      const label = element("div", "label", className(c));
      label.append(...labelBadges(entry, c));
      const imageCanvas = element("canvas");
      imageCanvas.width = CELL;
      imageCanvas.height = H;
      imageCell.append(label, imageCanvas);
      row.append(imageCell);
      const cell = { row, image: imageCanvas, maps: [], scores: [], logits: [], tuned: [], bar: null };
      models.forEach((model, m) => {
        const mapCell = element("div", "cell");
        mapCell.append(element("div", "label", "\u00a0"));
        const canvas = element("canvas", "map");
        canvas.width = CELL;
        canvas.height = H;
        canvas.dataset.model = String(m);
        canvas.dataset.row = String(k);
        const caption = element("div", "caption");
        const p = element("span", "score");
        p.dataset.model = String(m);
        p.dataset.row = String(k);
        const logit = element("span", "logit");
        const tuned = element("div", "tuned");
        caption.append("p ", p, " \u00b7 logit ", logit, tuned);
        mapCell.append(canvas, caption);
        row.append(mapCell);
        cell.maps.push(canvas);
        cell.scores.push(p);
        cell.logits.push(logit);
        cell.tuned.push(tuned);
      });
      const barCell = element("div", "cell bar");
      barCell.append(element("div", "label", "\u00a0"));
      const bar = element("canvas");
      bar.width = BAR;
      bar.height = H + 18;
      barCell.append(bar);
      row.append(barCell);
      cell.bar = bar;
      row.addEventListener("click", () => setRow(k));
      cells.push(cell);
      drawn.push(new Array(M));
      return row;
    });
    grid.replaceChildren(...heads, ...rows);
    $("class-picker").replaceChildren(...entry.classes.map((c, k) => {
      const option = element("option", "", className(c) + (entry.truth && entry.truth.includes(c) ? " (ground truth)" : ""));
      option.value = String(k);
      return option;
    }));
    $("image-picker").value = String(state.image);
    document.querySelectorAll("#thumbs img").forEach((img, i) => img.classList.toggle("current", i === state.image));
    showInfo();
  }

  function showInfo() {
    const entry = images[state.image];
    const list = (cs) => (cs.length ? cs.map(className).join(", ") : "none");
    const items = [["name", entry.name], ["size", `${entry.width} \u00d7 ${entry.height} px, CAM ${entry.cam_shape[1]} \u00d7 ${entry.cam_shape[0]}`],
                   ["ground truth", entry.truth ? list(entry.truth) : "unknown"]];
    if (entry.observed) items.push(["observed in training", `+ ${list(entry.observed.positive)}; \u2212 ${list(entry.observed.negative)}; the rest unobserved`]);
    if (entry.boxes) items.push(["boxes", String(entry.boxes.length)]);
    items.push(["rows", DATA.rows]);
    $("info").replaceChildren(...items.flatMap(([k, v]) => [element("dt", "", k), element("dd", "", v)]));
  }

  // ------------------------------------------------------------------ state changes

  function setImage(i) {
    state.image = ((Math.round(i) % images.length) + images.length) % images.length;
    state.row = 0;
    buildGrid();
    redraw();
    setRow(0);
  }

  function setRow(k) {
    const K = images[state.image].classes.length;
    state.row = Math.min(K - 1, Math.max(0, Math.round(k)));
    cells.forEach((cell, j) => cell.row.classList.toggle("current", j === state.row));
    $("class-picker").value = String(state.row);
    drawHistogram();
  }

  const jumpToTuned = (m) => setAlpha(tunedAlpha(m, images[state.image].classes[state.row]));

  function setAlpha(a) {
    const { min, max, step } = DATA.alpha;
    state.alpha = Math.min(max, Math.max(min, Math.round(Number(a) / step) * step));
    state.alpha = Number(state.alpha.toFixed(6));
    $("alpha").value = String(state.alpha);
    redraw();
  }

  function setOpacity(o) {
    state.opacity = Math.min(1, Math.max(0, Number(o)));
    $("opacity").value = String(state.opacity);
    redraw();
  }

  function setBoxes(on) {
    state.boxes = Boolean(on);
    $("boxes").checked = state.boxes;
    redraw();
  }

  function setHold(on) {
    state.hold = Boolean(on);
    state.heldAlpha = state.alpha;
    $("hold").checked = state.hold;
    redraw();
  }

  // ------------------------------------------------------------------ review of suggested labels

  const review = DATA.review ? { items: DATA.review.items, decisions: new Map(), filter: "", position: 0, peaks: new Map() } : null;
  if (review) review.items.forEach((item) => review.peaks.set(item.image + "," + item.row, item.peak));

  const visibleItems = () => review.items.map((_, j) => j).filter((j) => review.filter === "" || String(review.items[j].class) === review.filter);

  function currentItem() {
    const visible = visibleItems();
    return visible.length ? visible[Math.min(review.position, visible.length - 1)] : -1;
  }

  function showItem() {
    const j = currentItem();
    if (j >= 0) {
      const item = review.items[j];
      if (state.image !== item.image) setImage(item.image);
      setRow(item.row);
    }
    showReview();
  }

  function moveReview(step) {
    const count = visibleItems().length;
    review.position = Math.min(Math.max(0, review.position + step), Math.max(0, count - 1));
    showItem();
  }

  function decideItem(decision) {
    const j = currentItem();
    if (j < 0) return;
    if (decision) review.decisions.set(j, { decision, at: new Date().toISOString() });
    else review.decisions.delete(j);
    if (decision && review.position < visibleItems().length - 1) moveReview(1);
    else showReview();
  }

  function setFilter(c) {
    review.filter = c === "" || c === null || c === undefined ? "" : String(c);
    review.position = 0;
    $("review-class").value = review.filter;
    showItem();
  }

  function counts() {
    let accepted = 0, rejected = 0;
    for (const d of review.decisions.values()) d.decision === "accept" ? accepted++ : rejected++;
    return { accepted, rejected };
  }

  function showReview() {
    const j = currentItem();
    const visible = visibleItems();
    const { accepted, rejected } = counts();
    const current = $("review-current");
    if (j < 0) {
      current.textContent = "no suggestion for this class";
    } else {
      const item = review.items[j];
      const d = review.decisions.get(j);
      current.replaceChildren(
        element("b", "", `${review.position + 1} / ${visible.length}`),
        ` ${item.name}: ${className(item.class)} (rank ${item.rank}, score ${Number(item.score).toFixed(3)}) `,
        element("span", "badge " + (d ? d.decision : "open"), d ? (d.decision === "accept" ? "accepted" : "rejected") : "open"));
    }
    $("review-counts").textContent = `${accepted} accepted, ${rejected} rejected, ${review.items.length - accepted - rejected} open of ${review.items.length}`;
  }

  const csvCell = (v) => (/[",\n\r]/.test(String(v)) ? `"${String(v).replace(/"/g, '""')}"` : String(v));

  function decisionsCsv() {
    const header = ["image", "class", "decision", "score", "rank", "split", "index", "run", "suggested_at", "reviewer", "decided_at"];
    const reviewer = $("reviewer").value.trim();
    const lines = [header.join(",")];
    review.items.forEach((item, j) => {
      const d = review.decisions.get(j);
      if (!d) return;
      lines.push([item.name, className(item.class), d.decision, item.score, item.rank, item.split, item.index,
                  DATA.review.run, DATA.review.suggested_at, reviewer, d.at].map(csvCell).join(","));
    });
    return lines.join("\n") + "\n";
  }

  function exportDecisions() {
    const link = element("a");
    link.href = URL.createObjectURL(new Blob([decisionsCsv()], { type: "text/csv" }));
    link.download = "decisions.csv";
    document.body.append(link);
    link.click();
    link.remove();
  }

  function buildReview() {
    $("review").hidden = false;
    const classes = [...new Set(review.items.map((item) => item.class))].sort((a, b) => a - b);
    const all = element("option", "", `all classes (${review.items.length})`);
    all.value = "";
    $("review-class").replaceChildren(all, ...classes.map((c) => {
      const option = element("option", "", `${className(c)} (${review.items.filter((item) => item.class === c).length})`);
      option.value = String(c);
      return option;
    }));
    $("review-class").addEventListener("change", (e) => {
      setFilter(e.target.value);
      e.target.blur();  // so that a / r / j / k act on the suggestions again, not on the picker
    });
    $("accept").addEventListener("click", () => decideItem("accept"));
    $("reject").addEventListener("click", () => decideItem("reject"));
    $("review-export").addEventListener("click", exportDecisions);
  }

  // ------------------------------------------------------------------ controls

  function buildControls() {
    document.title = DATA.title;
    $("source").textContent = `${DATA.source}; ${names.length} classes; ${M} model${M > 1 ? "s" : ""}`;
    const slider = $("alpha");
    slider.min = DATA.alpha.min;
    slider.max = DATA.alpha.max;
    slider.step = DATA.alpha.step;
    slider.addEventListener("input", () => setAlpha(slider.value));
    $("opacity").addEventListener("input", (e) => setOpacity(e.target.value));
    $("boxes").addEventListener("change", (e) => setBoxes(e.target.checked));
    $("hold").addEventListener("change", (e) => setHold(e.target.checked));
    $("prev").addEventListener("click", () => setImage(state.image - 1));
    $("next").addEventListener("click", () => setImage(state.image + 1));
    $("image-picker").replaceChildren(...images.map((entry, i) => {
      const truth = entry.truth ? " \u00b7 " + (entry.truth.map(className).join(", ") || "none") : "";
      const option = element("option", "", `${i + 1}/${images.length}  ${entry.name}${truth}`);
      option.value = String(i);
      return option;
    }));
    $("image-picker").addEventListener("change", (e) => setImage(Number(e.target.value)));
    $("class-picker").addEventListener("change", (e) => setRow(Number(e.target.value)));
    const span = DATA.alpha.max - DATA.alpha.min;
    const jumps = [element("button", "", "\u03b1 1 (raw)")];
    jumps[0].addEventListener("click", () => setAlpha(1));
    const tuned = new Map();  // alpha -> the models tuned to it: one mark each (per-class alphas: none)
    models.forEach((model, m) => {
      if (!Array.isArray(model.eval_alpha)) tuned.set(model.eval_alpha, (tuned.get(model.eval_alpha) || []).concat([m]));
      const jump = element("button", "", `${m + 1}: \u03b1 ${alphaText(model.eval_alpha)}`);
      jump.title = `BoostLU alpha tuned for ${model.label}` + (Array.isArray(model.eval_alpha) ? " (for the selected class)" : "");
      jump.style.borderColor = PALETTE[m % PALETTE.length];
      jump.addEventListener("click", () => jumpToTuned(m));
      jumps.push(jump);
    });
    $("alpha-marks").replaceChildren(...[...tuned].map(([alpha, ms]) => {
      const mark = element("span", "mark", ms.map((m) => m + 1).join(" "));
      mark.title = ms.map((m) => models[m].label).join(", ") + `: tuned \u03b1 ${alpha}`;
      mark.style.background = ms.length > 1 ? "#5c6370" : PALETTE[ms[0] % PALETTE.length];
      // the thumb's centre runs from 8 px to width - 8 px of the slider
      mark.style.left = `calc(8px + (100% - 16px) * ${(alpha - DATA.alpha.min) / span})`;
      mark.addEventListener("click", () => setAlpha(alpha));
      return mark;
    }));
    $("jumps").replaceChildren(element("span", "", "jump to"), ...jumps);
    $("thumbs").replaceChildren(...images.map((entry, i) => {
      const img = element("img");
      img.src = entry.src;
      img.alt = entry.name;
      img.title = entry.name;
      img.addEventListener("click", () => setImage(i));
      return img;
    }));
    document.addEventListener("keydown", onKey);
  }

  function onKey(e) {
    const target = e.target;
    const control = target && (target.tagName === "SELECT" || (target.tagName === "INPUT" && target.type === "range"));
    if (e.ctrlKey || e.metaKey || e.altKey) return;
    if (e.key === "Escape") {
      if (document.activeElement) document.activeElement.blur();
      return;
    }
    if (target && target.tagName === "INPUT" && target.type === "text") return;  // typing the reviewer's name
    if (control && e.key.startsWith("Arrow")) return;  // a focused slider or picker moves itself
    const step = e.shiftKey ? 1 : DATA.alpha.step;
    const actions = {
      ArrowLeft: () => setImage(state.image - 1),
      ArrowRight: () => setImage(state.image + 1),
      ArrowUp: () => setRow(state.row - 1),
      ArrowDown: () => setRow(state.row + 1),
      "-": () => setAlpha(state.alpha - step),
      _: () => setAlpha(state.alpha - step),
      "+": () => setAlpha(state.alpha + step),
      "=": () => setAlpha(state.alpha + step),
      0: () => setAlpha(1),
      b: () => setBoxes(!state.boxes),
      h: () => setHold(!state.hold),
    };
    if (review) {
      Object.assign(actions, { a: () => decideItem("accept"), r: () => decideItem("reject"), u: () => decideItem(null),
                               j: () => moveReview(1), k: () => moveReview(-1) });
    }
    let action = actions[e.key];
    if (!action && /^[1-9]$/.test(e.key) && Number(e.key) <= M) action = () => jumpToTuned(Number(e.key) - 1);
    if (action) {
      e.preventDefault();
      action();
    }
  }

  window.pamcView = {
    ready: false,
    state: () => ({ image: state.image, row: state.row, classIndex: images[state.image].classes[state.row],
                    className: className(images[state.image].classes[state.row]), alpha: state.alpha,
                    scaleAlpha: scaleAlpha(), opacity: state.opacity, boxes: state.boxes, hold: state.hold }),
    setImage, setRow, setAlpha, setOpacity, setBoxes,
    score: (m, k = state.row) => score(m, k, state.alpha),
    tunedScore: (m, k = state.row) => score(m, k, tunedAlpha(m, images[state.image].classes[k])),
    scale: (k = state.row) => scale(k),
    colour,
    mapValue: (m, k, x, y) => drawn[k][m][y * cells[k].maps[m].width + x],
    review: review && {
      state: () => {
        const j = currentItem();
        const d = j >= 0 ? review.decisions.get(j) : undefined;
        return { item: j, position: review.position, visible: visibleItems().length, filter: review.filter,
                 decision: d ? d.decision : null, ...counts() };
      },
      decide: decideItem, move: moveReview, setFilter, csv: decisionsCsv,
    },
  };

  buildControls();
  pictures = images.map((entry) => {
    const img = new Image();
    img.src = entry.src;
    return img;
  });
  if (review) buildReview();
  Promise.all(pictures.map((img) => img.decode())).then(() => {
    setImage(0);
    if (review) {  // suggestions were ranked at the model's evaluation alpha (per class: the item's class's): show it
      showItem();
      jumpToTuned(0);
    }
    window.pamcView.ready = true;
    document.body.dataset.ready = "true";
  });
})();
