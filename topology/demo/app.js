// Shows which protocol delivered this page (HTTP/3 once the browser followed Alt-Svc).
document.addEventListener("DOMContentLoaded", () => {
  const nav = performance.getEntriesByType("navigation")[0];
  const proto = nav && nav.nextHopProtocol ? nav.nextHopProtocol : "unknown";
  document.getElementById("proto").textContent = proto;
  document.body.dataset.ready = "yes";
});
