"""The report page's inline style sheet and script (kept inline: the page must be one self-contained file)."""

CSS = """
:root{--ink:#1f2937;--muted:#6b7280;--line:#e5e7eb;--bg:#f6f7f9;--card:#fff;--accent:#2563eb;--best:#16a34a;--worst:#dc2626}
*{box-sizing:border-box}
body{margin:0;background:var(--bg);color:var(--ink);font:14px/1.5 system-ui,-apple-system,"Segoe UI",Roboto,"Helvetica Neue",Arial,sans-serif}
header{background:#111827;color:#f9fafb;padding:22px 32px 18px}
header h1{margin:2px 0 2px;font-size:24px;font-weight:650;display:flex;align-items:center;gap:12px;flex-wrap:wrap;word-break:break-all}
.brand{font-size:12px;letter-spacing:.08em;text-transform:uppercase;color:#9ca3af}
.sub{color:#d1d5db}
.pill{font-size:12px;font-weight:500;padding:2px 10px;border-radius:999px;word-break:normal}
.pill.live{background:#fef3c7;color:#92400e}.pill.done{background:#dcfce7;color:#166534}
.pill.stopped{background:#e5e7eb;color:#374151}
main{max-width:1280px;margin:0 auto;padding:8px 32px 24px}
section{margin:26px 0}
h2{font-size:18px;margin:0 0 12px;font-weight:650}
h3{font-size:14px;margin:0 0 8px;font-weight:650}
code{font-family:ui-monospace,SFMono-Regular,Menlo,Consolas,monospace;font-size:12px}
.muted,.hint{color:var(--muted)}.hint{margin:-6px 0 8px;font-size:12px}
.cards{display:grid;grid-template-columns:repeat(auto-fit,minmax(170px,1fr));gap:12px}
.card,.panel{background:var(--card);border:1px solid var(--line);border-radius:10px;padding:12px 14px}
.card .label{font-size:12px;color:var(--muted);text-transform:uppercase;letter-spacing:.04em}
.card .value{font-size:20px;font-weight:650;margin-top:2px;word-break:break-word}
.card.accent .value{color:var(--accent);font-size:26px}
.card .note{font-size:12px;color:var(--muted)}
.bar{height:6px;background:#eef0f3;border-radius:3px;overflow:hidden;margin-top:6px}
.bar span{display:block;height:100%;background:var(--accent);border-radius:3px}
.two{display:grid;grid-template-columns:3fr 2fr;gap:12px;margin-top:12px}
@media (max-width:900px){.two{grid-template-columns:1fr}}
table.kv{border-collapse:collapse;width:100%}
table.kv th{text-align:left;font-weight:500;color:var(--muted);padding:3px 12px 3px 0;white-space:nowrap;vertical-align:top;width:1%}
table.kv td{padding:3px 0;word-break:break-all}
table.kv code.path{color:var(--muted);margin-left:6px}
table.stages td.num{padding-right:12px;white-space:nowrap;width:1%;text-align:right}
table.stages .barcell .bar{margin:0}
table.stages tr.total th,table.stages tr.total td{border-top:1px solid var(--line);font-weight:600;color:var(--ink)}
img.plot{display:block;width:100%;height:auto;background:#fff;border:1px solid var(--line);border-radius:10px}
.mbw{display:flex;gap:10px;align-items:baseline;margin-top:10px}
.mbw span{color:var(--muted);font-size:12px;white-space:nowrap}
.mbw code{background:#fff;border:1px solid var(--line);border-radius:6px;padding:4px 8px;word-break:break-all;user-select:all}
.payload{background:var(--card);border:1px solid var(--line);border-radius:10px;padding:12px 14px;margin-bottom:12px}
.compare{display:grid;gap:16px}.compare.cols-2{grid-template-columns:1fr 1fr}
.side-head{font-size:12px;color:var(--muted);margin-bottom:6px}
.tag{display:inline-block;font-weight:600;font-size:11px;text-transform:uppercase;letter-spacing:.05em;padding:1px 8px;border-radius:999px;color:#fff}
.tag.best{background:var(--best)}.tag.worst{background:var(--worst)}
.thumbs{display:flex;flex-wrap:wrap;gap:8px}
.thumbs figure{margin:0;width:min(220px,100%)}
.thumbs img{display:block;width:100%;height:auto;border-radius:6px;border:1px solid var(--line)}
.side.best .thumbs img{outline:2px solid #bbf7d0}.side.worst .thumbs img{outline:2px solid #fecaca}
.thumbs figcaption{font-size:12px;font-weight:600;margin-top:2px}
.missing{display:flex;flex-direction:column;align-items:center;justify-content:center;aspect-ratio:1;background:#f3f4f6;border:1px dashed #d1d5db;border-radius:6px;color:var(--muted);font-size:12px;text-align:center;padding:8px;word-break:break-all}
.count{font-size:12px;font-weight:500;background:#e5e7eb;border-radius:999px;padding:1px 8px;vertical-align:middle}
.table-wrap{overflow-x:auto;background:var(--card);border:1px solid var(--line);border-radius:10px}
table.trials{border-collapse:collapse;width:100%;font-size:13px}
table.trials th{position:sticky;top:0;background:#f9fafb;text-align:left;font-weight:600;font-size:12px;color:var(--muted);padding:8px 10px;border-bottom:1px solid var(--line);white-space:nowrap}
table.trials th[data-type]{cursor:pointer;user-select:none}
table.trials th[data-type]:hover{color:var(--ink)}
table.trials th[data-type]::after{content:" \\2195";opacity:.35}
table.trials th[aria-sort=descending]::after{content:" \\25BC";opacity:1}
table.trials th[aria-sort=ascending]::after{content:" \\25B2";opacity:1}
table.trials td{padding:6px 10px;border-bottom:1px solid #f1f2f4;vertical-align:top}
table.trials tbody tr:hover{background:#f9fafb}
table.trials td.num{text-align:right;font-variant-numeric:tabular-nums;white-space:nowrap}
table.trials td.score{font-weight:650}
table.trials tr.best{background:#f0fdf4}table.trials tr.best td.score{color:var(--best)}
table.trials tr.worst td.score{color:var(--worst)}
table.trials tr.failed{color:var(--muted)}
.status{font-size:11px;font-weight:600;padding:1px 8px;border-radius:999px;background:#e5e7eb}
.status.ok{background:#dcfce7;color:#166534}.status.failed{background:#fee2e2;color:#991b1b}
td.weights{min-width:320px;max-width:520px;width:40%}
.wrow{display:flex;align-items:center;gap:6px;margin:3px 0 2px}
.wrow span{font-size:11px;color:var(--muted);width:9px}
.strip{flex:1;display:flex;height:10px;border-radius:3px;overflow:hidden;background:#eee}
.strip i{flex:1;min-width:2px}
code.mbw-s{display:block;margin-left:15px;color:var(--muted);font-size:10.5px;word-break:break-all;line-height:1.35;margin-bottom:4px}
td.error{color:var(--worst);font-size:12px;max-width:320px;word-break:break-word}
footer{max-width:1280px;margin:0 auto;padding:8px 32px 32px;color:var(--muted);font-size:12px}
"""

# Sort a table by the clicked header: numbers by value, text alphabetically, empty cells always last.
JS = """
(function(){
  function key(row, col, numeric){
    var v = row.cells[col].getAttribute('data-v');
    if (v === null) v = row.cells[col].textContent;
    if (v === '') return null;
    if (!numeric) return v.toLowerCase();
    var x = parseFloat(v); return isNaN(x) ? null : x;
  }
  document.querySelectorAll('table.sortable').forEach(function(table){
    var heads = table.tHead.rows[0].cells;
    Array.prototype.forEach.call(heads, function(th, col){
      if (!th.hasAttribute('data-type')) return;
      th.tabIndex = 0;
      function sort(){
        var numeric = th.getAttribute('data-type') === 'num';
        var current = th.getAttribute('aria-sort');
        var desc = current ? current === 'ascending' : (numeric && th.getAttribute('data-first') !== 'asc');
        Array.prototype.forEach.call(heads, function(h){ h.removeAttribute('aria-sort'); });
        th.setAttribute('aria-sort', desc ? 'descending' : 'ascending');
        var body = table.tBodies[0];
        var rows = Array.prototype.slice.call(body.rows);
        rows.sort(function(a, b){
          var x = key(a, col, numeric), y = key(b, col, numeric);
          if (x === null || y === null) return x === y ? 0 : (x === null ? 1 : -1);
          var c = x < y ? -1 : (x > y ? 1 : 0);
          return desc ? -c : c;
        });
        rows.forEach(function(r){ body.appendChild(r); });
      }
      th.addEventListener('click', sort);
      th.addEventListener('keydown', function(e){ if (e.key === 'Enter' || e.key === ' ') { e.preventDefault(); sort(); } });
    });
  });
})();
"""
