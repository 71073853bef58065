// Sallyport console: live pages. An element with data-live="VIEW" and data-src="URL" is refreshed
// from URL whenever the broker's event stream for VIEW says it changed (a change that arrives
// while a refresh runs is fetched right after it). No other script runs; the pages work without
// it (reload to update).
'use strict';
(function () {
  document.querySelectorAll('[data-live]').forEach(function (el) {
    var source = new EventSource('/console/events?view=' + encodeURIComponent(el.dataset.live));
    var busy = false;
    var again = false;
    function refresh() {
      if (busy) { again = true; return; }
      busy = true;
      fetch(el.dataset.src, { credentials: 'same-origin', headers: { 'Accept': 'text/html' } })
        .then(function (r) {
          // Signed out (idle, or ended): show the sign-in page.
          if (r.status === 401) { window.location.reload(); }
          if (!r.ok) { throw new Error('status ' + r.status); }
          return r.text();
        })
        .then(function (html) {
          el.innerHTML = html;
          el.dataset.refreshed = String(Number(el.dataset.refreshed || '0') + 1);
          delete el.dataset.stale;
        })
        .catch(function () { el.dataset.stale = 'true'; })
        .finally(function () {
          busy = false;
          if (again) { again = false; refresh(); }
        });
    }
    source.addEventListener('changed', refresh);
  });
})();
