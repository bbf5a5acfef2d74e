// Starts Swagger UI on the service's own OpenAPI document. A file of its own, not inline:
// the page's Content-Security-Policy runs scripts from this origin only.
window.addEventListener("load", function () {
  window.ui = SwaggerUIBundle({
    url: "/api/openapi.json",
    dom_id: "#swagger-ui",
    deepLinking: true,
    // No badge from the public validator: the page talks to this origin only.
    validatorUrl: null,
  });
});
