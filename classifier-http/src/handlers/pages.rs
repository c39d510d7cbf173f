//! `/` (the demo page) and the OpenAPI document.

use http::{Response, StatusCode};

use crate::response::{json_response, with_type, Body};

/// The demo page: pick a photo and a model, upload it, follow the job over the WebSocket, show
/// the result, and send a correction (feedback) if the model got it wrong.
pub fn demo() -> Response<Body> {
    with_type(StatusCode::OK, DEMO_HTML.into(), "text/html; charset=utf-8")
}

/// `GET /openapi.json`: the document of this server (auth on or off, its model versions; see
/// [`crate::openapi::document_for`]).
pub fn openapi(auth_enabled: bool, model_versions: &[String]) -> Response<Body> {
    json_response(
        StatusCode::OK,
        &crate::openapi::document_for(auth_enabled, model_versions),
    )
}

const DEMO_HTML: &str = r#"<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>Image classifier</title>
<meta name="viewport" content="width=device-width, initial-scale=1">
<style>
body{font-family:system-ui,sans-serif;max-width:40rem;margin:2rem auto;padding:0 1rem}
#log{background:#f4f4f4;padding:.5rem;white-space:pre-wrap;font-size:.85rem;min-height:3rem}
img{max-width:100%;max-height:16rem} table{border-collapse:collapse} td{padding:.2rem .6rem}
</style></head><body>
<h1>Image classifier</h1>
<p>Upload a photo (JPEG, PNG or WebP). The job's progress is pushed over a WebSocket.
API docs: <a href="/openapi.json">/openapi.json</a>.</p>
<form id="f"><input type="file" id="file" accept="image/*" required>
<select id="priority"><option>normal</option><option>low</option><option>high</option><option>urgent</option></select>
<select id="model"><option value="latest">latest</option></select>
<input id="key" placeholder="API key (if auth is on)">
<button>Classify</button></form>
<p><img id="preview" alt=""></p>
<div id="log"></div>
<table id="result"></table>
<form id="fb" hidden>Wrong? Correct label (class name or id):
<input id="label" placeholder="e.g. tabby or 281" required> <button>Send feedback</button></form>
<script>
const log = m => { document.getElementById('log').textContent += m + '\n'; };
const headers = () => { const k = document.getElementById('key').value.trim(); return k ? {'X-API-Key': k} : {}; };
let jobId = null;
async function loadModels() {
  const r = await fetch('/api/v1/models', {headers: headers()}); if (!r.ok) return;
  const body = await r.json(); const sel = document.getElementById('model');
  sel.innerHTML = '<option value="latest">latest (' + body.default + ')</option>' + body.models.map(m =>
    '<option>' + m.version.replace(/</g, '&lt;') + '</option>').join('');
}
loadModels(); document.getElementById('key').onchange = loadModels;
document.getElementById('fb').onsubmit = async ev => {
  ev.preventDefault();
  const label = document.getElementById('label').value.trim();
  const r = await fetch('/api/v1/feedback', {method: 'POST', headers: Object.assign({'Content-Type': 'application/json'}, headers()),
    body: JSON.stringify({job_id: jobId, correct_label: /^\d+$/.test(label) ? Number(label) : label})});
  const body = await r.json();
  log(r.ok ? 'feedback stored (' + body.feedback_count + ' in all)' : 'feedback: ' + body.error + ': ' + body.detail);
};
async function showResult(id) {
  const r = await fetch('/api/v1/result/' + id, {headers: headers()});
  const body = await r.json();
  if (!r.ok) { log('result: ' + body.error + ': ' + body.detail); return; }
  document.getElementById('result').innerHTML = body.predictions.map(p =>
    '<tr><td>' + p.class_name.replace(/</g, '&lt;') + '</td><td>' + (100 * p.confidence).toFixed(1) + ' %</td></tr>').join('');
  jobId = id; document.getElementById('fb').hidden = false;
}
function poll(id) {
  const t = setInterval(async () => {
    const r = await fetch('/api/v1/status/' + id, {headers: headers()});
    const s = await r.json(); log(JSON.stringify(s));
    if (!r.ok || ['completed', 'failed', 'cancelled'].includes(s.status)) { clearInterval(t); if (s.status === 'completed') showResult(id); }
  }, 500);
}
document.getElementById('f').onsubmit = async ev => {
  ev.preventDefault();
  document.getElementById('log').textContent = ''; document.getElementById('result').innerHTML = '';
  document.getElementById('fb').hidden = true;
  const file = document.getElementById('file').files[0]; if (!file) return;
  document.getElementById('preview').src = URL.createObjectURL(file);
  const form = new FormData(); form.append('file', file); form.append('priority', document.getElementById('priority').value);
  form.append('model_version', document.getElementById('model').value);
  const r = await fetch('/api/v1/classify', {method: 'POST', body: form, headers: headers()});
  const t = await r.json();
  if (r.status !== 202) { log(r.status + ' ' + t.error + ': ' + t.detail); return; }
  log('accepted: job ' + t.job_id + ' (' + t.model_version + ')');
  if (t.status === 'completed') { log('answered from the result cache'); showResult(t.job_id); return; }
  if (Object.keys(headers()).length) { poll(t.job_id); return; } // browsers cannot send the key on a WebSocket
  const ws = new WebSocket((location.protocol === 'https:' ? 'wss://' : 'ws://') + location.host + '/api/v1/status/' + t.job_id + '/ws');
  let last = null;
  ws.onmessage = e => { last = JSON.parse(e.data); log(last.status + ' ' + last.stage + ' ' + last.progress + '%'); };
  ws.onclose = e => { log('websocket closed (' + e.code + ')'); if (last && last.status === 'completed') showResult(t.job_id); };
};
</script></body></html>
"#;
