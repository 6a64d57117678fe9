// Swagger UI for the service's OpenAPI document, from the assets BentoML installs with the service: nothing from
// another origin. The document's description is replaced by ours (BentoML's default one is a row of badge
// images from third-party sites), and validatorUrl is null (Swagger UI would fetch a badge from an online
// validator).
"use strict";

const DESCRIPTION = [
  "Fovea screens fundus photographs for diabetic retinopathy: `POST /analyze` (one photograph: DICOM, JPEG or",
  "PNG), `POST /analyze_study` (one patient's visit), background jobs under `/jobs/analyze_study`, DICOMweb",
  "under `/dicomweb`. Errors are `{\"error\": {\"code\", \"message\"}}` with a 4xx status.",
  "",
  "`/info` names the served models and their intended use: they are research models, not clinically validated.",
].join("\n");

window.addEventListener("DOMContentLoaded", async () => {
  const response = await fetch("/docs.json", { credentials: "same-origin" });
  const spec = await response.json();
  spec.info = { title: "Fovea", version: "", description: DESCRIPTION };
  window.ui = window.SwaggerUIBundle({
    spec,
    dom_id: "#swagger-ui",
    deepLinking: true,
    validatorUrl: null,
    presets: [window.SwaggerUIBundle.presets.apis, window.SwaggerUIStandalonePreset],
    layout: "BaseLayout",
  });
});
