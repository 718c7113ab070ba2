// hookrelay admin console: the playground's live Result. While you type in the playground's
// form, its fields go as JSON (with the session's CSRF token) to /admin/playground/try, 300 ms
// after the last keystroke; the answer carries the Result region's HTML, escaped on the server.
// Without this script the page still works: its Try button posts the form.
(function () {
  "use strict";
  var form = document.getElementById("playground");
  var region = document.getElementById("result-body");
  if (!form || !region) return;
  var timer = null;
  var latest = 0;

  function field(name) {
    var element = form.elements.namedItem(name);
    return element ? element.value : "";
  }

  function update() {
    var mine = ++latest;
    fetch(form.dataset.tryUrl, {
      method: "POST",
      credentials: "same-origin",
      headers: { "Content-Type": "application/json", "X-CSRF-Token": field("csrf_token") },
      body: JSON.stringify({
        mapping: field("mapping"), payload: field("payload"),
        name: field("name"), format: field("format")
      })
    }).then(function (answer) {
      if (answer.status === 401 || answer.status === 403) {
        throw new Error("Your session has ended: reload the page and sign in again.");
      }
      return answer.json();
    }).then(function (result) {
      if (mine === latest && typeof result.html === "string") region.innerHTML = result.html;
    }).catch(function (error) {
      if (mine === latest) region.textContent = error.message || "The relay did not answer.";
    });
  }

  form.addEventListener("input", function () {
    clearTimeout(timer);
    timer = setTimeout(update, 300);
  });
  form.addEventListener("change", function () {
    clearTimeout(timer);
    timer = setTimeout(update, 300);
  });
})();
