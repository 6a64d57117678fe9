// Fovea's reader page: upload photographs, call the service, show what it found.
// Plain browser JavaScript, no framework, nothing fetched from another origin (the page's CSP forbids it).
// Every value from the service or the file is put into the page as text (textContent), never as HTML.
"use strict";

(() => {
  /** The ICDR scale, in grade order (the service reports the predicted grade's label; these name the bars). */
  const ICDR = ["No DR", "Mild NPDR", "Moderate NPDR", "Severe NPDR", "Proliferative DR"];
  const EYES = { R: "Right eye (OD)", L: "Left eye (OS)" };
  /** The quality gate's reasons (service/quality.py) in a reader's words. */
  const QUALITY_REASONS = {
    field: "field of view incomplete (off-centre, cut off or covered)",
    underexposed: "too dark (underexposed)",
    overexposed: "too bright (overexposed)",
    blur: "out of focus (blurred)",
    haze: "hazy (low vessel contrast)",
    uneven: "unevenly lit",
  };
  /** Lesion types: a name, a colour AND a line pattern, so a box's type never depends on colour alone. */
  const LESION_STYLES = {
    microaneurysm: { name: "Microaneurysm", colour: "#00e5ff", dash: [] },
    haemorrhage: { name: "Haemorrhage", colour: "#ffffff", dash: [10, 5] },
    hard_exudate: { name: "Hard exudate", colour: "#76ff03", dash: [3, 4] },
    cotton_wool_spot: { name: "Cotton-wool spot", colour: "#ff4dff", dash: [12, 4, 3, 4] },
  };
  const SPARE_STYLES = [
    { colour: "#ffea00", dash: [6, 3] }, { colour: "#40c4ff", dash: [2, 2] }, { colour: "#ff9e80", dash: [8, 2, 2, 2] },
  ];
  /** The heatmap canvas is at most this many pixels on its long side (the browser scales it to the photo). */
  const HEATMAP_MAX_SIDE = 1024;

  const $ = (id) => document.getElementById(id);
  let limits = null;
  let objectUrls = [];
  let uid = 0;

  /** Create an element: attrs are properties (or "aria-*"/"data-*" attributes); children are nodes or text. */
  function el(tag, attrs = {}, ...children) {
    const node = document.createElement(tag);
    for (const [key, value] of Object.entries(attrs)) {
      if (value === undefined || value === null || value === false) continue;
      if (key.startsWith("aria-") || key.startsWith("data-") || key === "role" || key === "for") {
        node.setAttribute(key, value === true ? "true" : String(value));
      } else {
        node[key] = value;
      }
    }
    for (const child of children.flat()) {
      if (child === null || child === undefined || child === false) continue;
      node.append(child instanceof Node ? child : document.createTextNode(String(child)));
    }
    return node;
  }

  const pct = (p, digits = 1) => `${(100 * p).toFixed(digits)}%`;
  /** "no referable DR" → "No referable DR." */
  const sentence = (text) => (text ? `${text[0].toUpperCase()}${text.slice(1)}${/[.!?]$/.test(text) ? "" : "."}` : "");
  const nextId = (stem) => `${stem}-${++uid}`;
  const lesionStyle = (type, index) => LESION_STYLES[type] ||
    { name: type.replace(/_/g, " "), ...SPARE_STYLES[index % SPARE_STYLES.length] };

  // ---------------------------------------------------------------- status and errors

  function setStatus(text, busy = false) {
    const status = $("status");
    status.textContent = text;
    status.classList.toggle("busy", busy);
  }

  function showError(message) {
    const box = $("error");
    box.replaceChildren(el("strong", {}, "Could not analyse: "), message);
    box.hidden = false;
  }

  function clearError() {
    $("error").hidden = true;
    $("error").replaceChildren();
  }

  /** The message of a service error body {"error": {"code", "message"}}, or a description of a foreign one. */
  async function errorMessage(response) {
    const text = await response.text();
    try {
      const body = JSON.parse(text);
      if (body && body.error && body.error.message) return `${body.error.message} (${response.status} ${body.error.code})`;
    } catch (_) { /* not JSON: described below */ }
    return `the service answered ${response.status} ${response.statusText || ""}`.trim();
  }

  // ---------------------------------------------------------------- API key (service/auth.py)

  const KEY_STORAGE = "fovea-api-key";  // sessionStorage: this tab only, gone when it closes

  /** The Authorization header for the key the reader pasted, or none. */
  function authHeaders() {
    const key = $("api-key").value.trim();
    return key ? { Authorization: `Bearer ${key}` } : {};
  }

  function onKeyChanged() {
    const key = $("api-key").value.trim();
    if (key) sessionStorage.setItem(KEY_STORAGE, key); else sessionStorage.removeItem(KEY_STORAGE);
    loadInfo();
  }

  // ---------------------------------------------------------------- service information

  async function loadInfo() {
    try {
      const response = await fetch("/info", {
        method: "POST", headers: { "Content-Type": "application/json", ...authHeaders() }, body: "{}",
      });
      if (!response.ok) throw new Error(await errorMessage(response));
      const info = await response.json();
      limits = info.limits || null;
      const model = info.models && info.models[0];
      if (model && model.intended_use) {
        const note = $("intended-use");
        note.replaceChildren(el("strong", {}, "Intended use: "), model.intended_use);
        note.hidden = false;
      }
      const op = info.referable_operating_point || {};
      $("models-footer").replaceChildren(
        ...info.models.flatMap((m, i) => [i ? " · " : "", modelText(m)]),
        op.threshold != null ? ` · referral threshold ${pct(op.threshold)} (${op.source})` : "",
      );
    } catch (err) {
      $("models-footer").textContent = `Model information unavailable: ${err.message}`;
    }
  }

  function modelText(m) {
    return el("span", { title: `sha256 ${m.sha256}` },
      el("strong", {}, `${m.name} ${m.version}`), ` (sha256 ${m.sha256.slice(0, 12)}…, ${m.provider})`);
  }

  // ---------------------------------------------------------------- the form

  function onFilesChosen() {
    const files = Array.from($("files").files);
    const list = $("laterality-list");
    list.replaceChildren();
    files.forEach((file, i) => {
      const id = `laterality-${i}`;
      list.append(el("li", {},
        el("label", { for: id }, file.name),
        el("select", { id, name: id },
          el("option", { value: "" }, "from the file / not known"),
          el("option", { value: "R" }, EYES.R),
          el("option", { value: "L" }, EYES.L))));
    });
    $("lateralities").hidden = files.length === 0;
    clearError();
    setStatus(files.length ? `${files.length} file${files.length > 1 ? "s" : ""} chosen.` : "");
  }

  function validate(files) {
    if (!files.length) return "choose a photograph first.";
    if (limits) {
      if (files.length > limits.max_study_images) {
        return `${files.length} files chosen; one study takes at most ${limits.max_study_images}.`;
      }
      const big = files.find((f) => f.size > limits.max_upload_bytes);
      if (big) return `${big.name} is ${big.size} bytes; the limit is ${limits.max_upload_bytes} bytes.`;
    }
    return null;
  }

  async function onSubmit(event) {
    event.preventDefault();
    clearError();
    const files = Array.from($("files").files);
    const problem = validate(files);
    if (problem) {
      showError(problem);
      setStatus("");
      $("files").focus();
      return;
    }
    const sides = files.map((_, i) => $(`laterality-${i}`).value);
    const form = new FormData();
    let url;
    if (files.length === 1) {
      url = "/analyze";
      form.append("image", files[0]);
      if (sides[0]) form.append("laterality", sides[0]);
    } else {
      url = "/analyze_study";
      files.forEach((f) => form.append("images", f));
      if (sides.some(Boolean)) form.append("laterality", sides.join(","));
    }
    const button = $("submit");
    button.disabled = true;
    button.textContent = "Analysing…";
    $("results").setAttribute("aria-busy", "true");
    setStatus(files.length === 1 ? `Analysing ${files[0].name}…` : `Analysing ${files.length} photographs…`, true);
    const started = performance.now();
    try {
      let response;
      try {
        response = await fetch(url, { method: "POST", body: form, headers: authHeaders() });
      } catch (err) {
        throw new Error(`the service could not be reached (${err.message}).`);
      }
      if (!response.ok) throw new Error(await errorMessage(response));
      const body = await response.json();
      const seconds = ((performance.now() - started) / 1000).toFixed(1);
      releaseUrls();
      if (files.length === 1) renderSingle(body, files[0]);
      else renderStudy(body, files);
      setStatus(`Analysis finished in ${seconds} s.`);
      $("results-heading").focus();
    } catch (err) {
      setStatus("Analysis failed.");
      showError(err.message);
    } finally {
      button.disabled = false;
      button.textContent = "Analyse";
      $("results").removeAttribute("aria-busy");
    }
  }

  function onReset() {
    clearError();
    setStatus("");
    $("lateralities").hidden = true;
    $("laterality-list").replaceChildren();
    $("results").hidden = true;
    $("results-body").replaceChildren();
    releaseUrls();
  }

  function releaseUrls() {
    objectUrls.forEach((u) => URL.revokeObjectURL(u));
    objectUrls = [];
  }

  // ---------------------------------------------------------------- results

  /** Replace the results; the cards were built after :func:`releaseUrls` freed the previous ones' files. */
  function showResults(...nodes) {
    $("results-body").replaceChildren(...nodes);
    $("results").hidden = false;
  }

  function renderSingle(findings, file) {
    const frames = [findings, ...(findings.additional_frames || [])];
    showResults(...frames.map((f) => findingCard(f, frames.length === 1 ? file : null,
      frames.length > 1 ? `${file.name}, frame ${f.image.frame + 1} of ${f.image.frames}` : file.name)));
  }

  function renderStudy(study, files) {
    // Each upload gives one image per analysed frame, in upload order: frame 0 starts the next upload.
    let upload = -1;
    const cards = study.images.map((f, i) => {
      if (f.image.frame === 0) upload += 1;
      const file = files[upload];
      const name = f.image.frames > 1 ? `${file.name}, frame ${f.image.frame + 1} of ${f.image.frames}` : file.name;
      return findingCard(f, f.image.frames === 1 ? file : null, `Photograph ${i + 1}: ${name}`);
    });
    showResults(patientCard(study), ...cards);
  }

  function disclaimer(text) {
    return el("p", { className: "warning", role: "note" }, el("strong", {}, "Not for diagnosis. "), text);
  }

  /** Refer / Do not refer / Insufficient quality: a word, a symbol and a colour, never the colour alone. */
  function verdict(referable, detail, headingLevel = "h4") {
    const kind = referable === true ? "refer" : referable === false ? "no-refer" : "ungradable";
    const words = { refer: "Refer", "no-refer": "Do not refer", ungradable: "Insufficient quality" }[kind];
    const symbol = { refer: "!", "no-refer": "✓", ungradable: "?" }[kind];
    return el("div", { className: `verdict ${kind}` },
      el("span", { className: "symbol", "aria-hidden": true }, symbol),
      el("div", {},
        el(headingLevel, { className: "verdict-title" }, el("span", { className: "visually-hidden" }, "Referral: "), words),
        detail ? el("p", {}, detail) : null));
  }

  function patientCard(study) {
    const p = study.patient;
    const decided = p.decided_by && p.decided_by !== "unknown" ? ` Decided by the ${EYES[p.decided_by].toLowerCase()}.` : "";
    const rows = study.eyes.map((e) => el("tr", {},
      el("th", { scope: "row" }, EYES[e.laterality]),
      el("td", {}, e.images.map((i) => `#${i + 1}`).join(", ")),
      el("td", {}, e.gradable ? "Gradable" : "Ungradable"),
      el("td", {}, e.dr_grade != null ? `${e.dr_grade} — ${e.label}` : "—",
        e.fellow_eye_weight != null && e.photograph_grade !== e.dr_grade
          ? el("span", { className: "photo-grade" }, ` (photograph alone: ${e.photograph_grade})`) : null),
      el("td", {}, e.referable === true ? "Refer" : e.referable === false ? "Do not refer" : "Insufficient quality"),
      el("td", { className: "num" }, e.referable_probability != null ? pct(e.referable_probability) : "—")));
    const unknown = study.images.map((f, i) => (f.image.laterality ? null : `#${i + 1}`)).filter(Boolean);
    const fellow = study.eyes.find((e) => e.fellow_eye_weight != null);
    const perEye = fellow
      ? `Per eye (the worst gradable photograph decides, with the other eye's photograph weighing ${fellow.fellow_eye_weight}: the grader's fellow-eye rule)`
      : "Per eye (the worst gradable photograph decides)";
    return el("article", { className: "card patient", "aria-labelledby": "patient-heading" },
      el("h3", { id: "patient-heading" }, "Patient outcome"),
      disclaimer(study.disclaimer),
      verdict(p.referable, `${sentence(p.reason)}${decided}`),
      rows.length ? el("table", { className: "eyes" },
        el("caption", {}, perEye),
        el("thead", {}, el("tr", {}, ["Eye", "Photographs", "Quality", "Grade", "Referral", "P(referable)"]
          .map((h) => el("th", { scope: "col" }, h)))),
        el("tbody", {}, rows)) : null,
      unknown.length ? el("p", {}, `Photographs without laterality: ${unknown.join(", ")} (choose the eye to group them).`) : null,
      (study.notes || []).length ? el("ul", { className: "notes" }, study.notes.map((n) => el("li", {}, n))) : null);
  }

  function findingCard(f, file, title) {
    const headingId = nextId("finding");
    const side = f.image.laterality ? ` — ${EYES[f.image.laterality]}` : "";
    return el("article", { className: "card finding", "aria-labelledby": headingId },
      el("h3", { id: headingId }, title, side),
      disclaimer(f.disclaimer),
      el("div", { className: "finding-grid" }, viewer(f, file), summary(f)));
  }

  function summary(f) {
    const q = f.quality;
    const r = f.referable_dr;
    const g = f.dr_grade;
    let referral;
    if (!r) referral = verdict(null, "No referral decision was made for this photograph.");
    else if (r.value === null) referral = verdict(null, sentence(r.reason || "the photograph cannot be graded"));
    else {
      referral = verdict(r.value,
        `${r.value ? "Referable" : "No referable"} diabetic retinopathy: P(grade ≥ 2) = ${pct(r.probability)}, ` +
        `threshold ${pct(r.operating_point)} (${r.operating_point_source}).`);
    }
    const reasons = q.reasons.map((x) => QUALITY_REASONS[x] || x);
    const quality = el("section", { className: "block", "aria-label": "Image quality" },
      el("h4", {}, "Image quality"),
      el("p", { className: q.gradable ? "quality ok" : "quality bad" },
        el("strong", {}, q.gradable ? "✓ Gradable" : "✗ Ungradable"),
        ` — quality score ${q.score.toFixed(2)} (0.5 is the boundary)`),
      reasons.length ? el("ul", { className: "reasons" }, reasons.map((x) => el("li", {}, x))) : null);
    const grade = el("section", { className: "block", "aria-label": "DR grade" },
      el("h4", {}, "ICDR grade"),
      el("p", { className: "grade" }, el("strong", {}, `Grade ${g.grade} — ${g.label}`),
        q.gradable ? null : " (not reliable: the photograph is ungradable)"),
      probabilityBars(g));
    return el("div", { className: "summary" }, referral, quality, grade, details(f));
  }

  function probabilityBars(g) {
    const list = el("ol", { className: "probs", "aria-label": "Probability of each grade" });
    g.probabilities.forEach((p, i) => {
      const fill = el("span", { className: "fill" });
      fill.style.width = `${Math.max(0, Math.min(1, p)) * 100}%`;
      const predicted = i === g.grade;
      list.append(el("li", { className: predicted ? "predicted" : "" },
        el("span", { className: "name" }, `${i} ${ICDR[i]}`),
        el("span", { className: "bar", "aria-hidden": true }, fill),
        el("span", { className: "value" }, pct(p)),
        predicted ? el("span", { className: "tag" }, "predicted") : null));
    });
    return list;
  }

  function details(f) {
    const img = f.image;
    const timing = f.timing_ms || {};
    const parts = Object.entries(timing).filter(([k]) => k !== "total").map(([k, v]) => `${k} ${Math.round(v)}`);
    const rows = [
      ["Image", `${img.source.toUpperCase()}, ${img.width} × ${img.height} px` +
        (img.frames > 1 ? `, frame ${img.frame + 1} of ${img.frames}` : "") +
        (img.laterality ? `, ${EYES[img.laterality]} (from the ${img.laterality_source === "dicom" ? "DICOM header" : "form"})` : "")],
      ["Model", f.models.flatMap((m, i) => [i ? "; " : "", modelText(m)])],
      ["Quality method", f.quality.method],
      ["Saliency", `${f.saliency.method}; evidence for grade ${f.saliency.target_grade} (${ICDR[f.saliency.target_grade]})`],
      ["Time", `${Math.round(timing.total || 0)} ms${parts.length ? ` (${parts.join(", ")} ms)` : ""}`],
      ["Request", f.request_id],
    ];
    return el("section", { className: "block", "aria-label": "Details" },
      el("h4", {}, "Details"),
      el("dl", { className: "details" }, rows.flatMap(([k, v]) => [el("dt", {}, k), el("dd", {}, v)])),
      img.notes.length ? el("ul", { className: "notes" }, img.notes.map((n) => el("li", {}, n))) : null);
  }

  // ---------------------------------------------------------------- the image viewer

  /** The photograph with a saliency layer (toggle + opacity) and lesion boxes (when the service sends any). */
  function viewer(f, file) {
    const overlaySrc = `data:image/png;base64,${f.saliency.overlay_png}`;
    const photo = el("img", { className: "photo", alt: `Fundus photograph ${f.image.width} × ${f.image.height} pixels` });
    const heat = el("canvas", {
      className: "heat", role: "img",
      "aria-label": `Saliency heatmap: where the model found evidence for grade ${f.saliency.target_grade}`,
    });
    const boxes = el("canvas", { className: "boxes", "aria-hidden": true });
    const stack = el("div", { className: "stack" }, photo, heat, boxes);
    const caption = el("figcaption", {});
    // An all-negative CAM leaves the heatmap blank: say so, so that no one takes it for a failed overlay.
    const noEvidence = f.saliency.evidence === false
      ? `The grader found no region of evidence for grade ${f.saliency.target_grade} ` +
        `(${ICDR[f.saliency.target_grade]}) in this photograph: the saliency heatmap is blank.`
      : null;

    const toggleId = nextId("overlay");
    const sliderId = nextId("opacity");
    const toggle = el("input", { type: "checkbox", id: toggleId, checked: true, className: "overlay-toggle" });
    const slider = el("input", {
      type: "range", id: sliderId, min: 0, max: 100, step: 5, value: 50, className: "opacity",
      "aria-valuetext": "50 percent",
    });
    const output = el("output", { for: sliderId, className: "opacity-value" }, "50%");
    const controls = el("div", { className: "controls" },
      el("div", { className: "control" }, toggle, el("label", { for: toggleId }, "Show saliency overlay")),
      el("div", { className: "control" }, el("label", { for: sliderId }, "Overlay opacity"), slider, output));
    const apply = () => {
      heat.hidden = !toggle.checked;
      slider.disabled = !toggle.checked;
      heat.style.opacity = String(slider.value / 100);
      output.textContent = `${slider.value}%`;
      slider.setAttribute("aria-valuetext", `${slider.value} percent`);
    };
    toggle.addEventListener("change", apply);
    slider.addEventListener("input", apply);
    apply();

    // Overlay-only mode: the service's own rendering (photo + heatmap + caption) when the browser cannot show
    // the file (DICOM) or decodes it at another size than the service did; the toggle has nothing to hide then.
    const overlayOnly = (why) => {
      photo.src = overlaySrc;
      photo.alt = "Fundus photograph with the service's saliency overlay burned in";
      heat.hidden = true;
      controls.replaceChildren(el("p", { className: "help" }, why));
      caption.textContent = noEvidence || "The service's rendering: heatmap over the photograph (red = strongest evidence).";
      stack.dataset.mode = "overlay";
    };
    caption.textContent = noEvidence || "Photograph with the saliency heatmap (red = strongest evidence, blue = weak).";
    stack.dataset.mode = "photo";

    const displayable = file && /^image\/(jpeg|png)$/.test(file.type);
    if (displayable) {
      const url = URL.createObjectURL(file);
      objectUrls.push(url);
      photo.addEventListener("load", () => {
        if (photo.naturalWidth !== f.image.width || photo.naturalHeight !== f.image.height) {
          if (stack.dataset.mode === "photo") {
            overlayOnly("The browser shows this file at another size than the service analysed; " +
              "the service's overlay is shown instead.");
          }
        }
      }, { once: true });
      photo.addEventListener("error", () => overlayOnly("The browser cannot display this file; " +
        "the service's overlay is shown instead."), { once: true });
      photo.src = url;
      colourHeatmap(heat, f.saliency.heatmap_png);
    } else {
      overlayOnly(file === null && f.image.frames > 1 ? "Frame of a multi-frame file: the service's overlay is shown."
        : "The browser cannot display DICOM files; the service's rendering with the overlay is shown.");
    }

    const lesions = Array.isArray(f.lesions) ? f.lesions : null;
    const extra = [];
    if (lesions && lesions.length) {
      const legend = drawLesions(boxes, lesions, f.image.width, f.image.height);
      const boxToggleId = nextId("boxes");
      const boxToggle = el("input", { type: "checkbox", id: boxToggleId, checked: true });
      boxToggle.addEventListener("change", () => { boxes.hidden = !boxToggle.checked; });
      extra.push(el("div", { className: "control" }, boxToggle, el("label", { for: boxToggleId }, "Show lesion boxes")), legend);
    } else {
      boxes.hidden = true;
      if (lesions) extra.push(el("p", { className: "help" }, "No lesions detected."));
    }
    return el("figure", { className: "viewer" }, stack, caption, controls, ...extra);
  }

  /** JET colour of t in [0, 1] (OpenCV's COLORMAP_JET, as the service's overlay uses). */
  function jet(t) {
    const c = (x) => Math.round(255 * Math.max(0, Math.min(1, 1.5 - Math.abs(x))));
    return [c(4 * t - 3), c(4 * t - 2), c(4 * t - 1)];
  }

  /** Draw the grey heatmap PNG as JET colours whose alpha is the evidence (at 50 % opacity this is the
   * service's own blend: weight = 0.5 × heat). The PNG may be smaller than the photo (``saliency.scale``
   * original pixels per PNG pixel); it covers the whole photo, so the canvas is stretched over it. */
  function colourHeatmap(canvas, base64png) {
    const img = new Image();
    img.addEventListener("load", () => {
      const scale = Math.min(1, HEATMAP_MAX_SIDE / Math.max(img.naturalWidth, img.naturalHeight));
      canvas.width = Math.max(1, Math.round(img.naturalWidth * scale));
      canvas.height = Math.max(1, Math.round(img.naturalHeight * scale));
      const ctx = canvas.getContext("2d", { willReadFrequently: true });
      ctx.drawImage(img, 0, 0, canvas.width, canvas.height);
      const data = ctx.getImageData(0, 0, canvas.width, canvas.height);
      const px = data.data;
      const lut = Array.from({ length: 256 }, (_, v) => jet(v / 255));
      for (let i = 0; i < px.length; i += 4) {
        const v = px[i];
        const [r, g, b] = lut[v];
        px[i] = r; px[i + 1] = g; px[i + 2] = b; px[i + 3] = v;
      }
      ctx.putImageData(data, 0, 0);
      canvas.dataset.ready = "true";
    });
    img.src = `data:image/png;base64,${base64png}`;
  }

  /** Boxes in original pixel coordinates on a canvas of the photo's size; returns the legend. */
  function drawLesions(canvas, lesions, width, height) {
    canvas.width = width;
    canvas.height = height;
    const ctx = canvas.getContext("2d");
    const line = Math.max(2, Math.round(Math.max(width, height) / 250));
    const fontPx = Math.max(12, line * 5);
    ctx.font = `600 ${fontPx}px system-ui, sans-serif`;
    ctx.textBaseline = "bottom";
    const types = [...new Set(lesions.map((l) => l.type))];
    const styleOf = (t) => lesionStyle(t, types.indexOf(t));
    for (const les of lesions) {
      const s = styleOf(les.type);
      const [x0, y0, x1, y1] = les.box;
      ctx.lineWidth = line;
      ctx.strokeStyle = s.colour;
      ctx.setLineDash(s.dash.map((d) => d * line));
      ctx.strokeRect(x0, y0, x1 - x0, y1 - y0);
      // A label on a dark plate above the box (below it at the top edge): type and score, readable anywhere.
      const label = `${s.name} ${les.score.toFixed(2)}`;
      const w = ctx.measureText(label).width + 2 * line;
      const h = fontPx + line;
      const top = y0 - h - line >= 0 ? y0 - h - line : y1 + line;
      ctx.fillStyle = "rgba(0, 0, 0, 0.7)";
      ctx.fillRect(x0, top, w, h);
      ctx.fillStyle = s.colour;
      ctx.fillText(label, x0 + line, top + h - line / 2);
    }
    const legend = el("ul", { className: "legend", "aria-label": "Lesion boxes" });
    for (const t of types) {
      const s = styleOf(t);
      const found = lesions.filter((l) => l.type === t);
      const swatch = el("canvas", { className: "swatch", width: 40, height: 12, "aria-hidden": true });
      const sctx = swatch.getContext("2d");
      sctx.strokeStyle = s.colour;
      sctx.lineWidth = 3;
      sctx.setLineDash(s.dash);
      sctx.beginPath(); sctx.moveTo(0, 6); sctx.lineTo(40, 6); sctx.stroke();
      const best = Math.max(...found.map((l) => l.score));
      legend.append(el("li", { "data-type": t }, swatch,
        `${s.name}: ${found.length} box${found.length > 1 ? "es" : ""} (highest score ${best.toFixed(2)})`));
    }
    return legend;
  }

  // ---------------------------------------------------------------- start

  document.addEventListener("DOMContentLoaded", () => {
    $("files").addEventListener("change", onFilesChosen);
    $("upload").addEventListener("submit", onSubmit);
    $("upload").addEventListener("reset", onReset);
    $("api-key").value = sessionStorage.getItem(KEY_STORAGE) || "";
    $("api-key").addEventListener("change", onKeyChanged);
    loadInfo();
  });
})();
