"""One self-contained HTML report of an analysis: pictures embedded, every artifact linked.

The pictures are embedded as data URIs, so ``report.html`` opens on its own; the tables and
pictures also sit next to it as files, linked by relative paths that resolve in the analysis
run's artifact folder. In the MLflow UI's artifact view, where a link would blank the frame, a
small script turns those links into artifact paths and makes the contents' links scroll.
"""
from __future__ import annotations

import base64
import html
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

STYLE = """body{font-family:sans-serif;max-width:1100px;margin:2em auto;color:#222}
table{border-collapse:collapse;font-size:12px}td,th{border:1px solid #ccc;padding:2px 6px}
th{background:#eee}img{max-width:100%;border:1px solid #ddd;margin:4px 0}code{background:#f0f0f0}
.note{background:#f6f6f6;padding:.6em;border-left:4px solid #888}section{margin-bottom:2em}"""


@dataclass
class Section:
    """One finding: what it shows, its pictures and a preview of its table, and its files."""

    title: str
    text: str
    files: list[str]  # artifact paths relative to the report, all linked
    images: list[str] = field(default_factory=list)  # of ``files``: embedded as pictures
    table: pd.DataFrame | None = None  # a preview (first rows) of the section's table


def _embed(root: Path, name: str) -> str:
    data = base64.b64encode((root / name).read_bytes()).decode()
    return f'<img alt="{html.escape(name)}" src="data:image/png;base64,{data}">'


def _link(name: str) -> str:
    return f'<a href="{html.escape(name)}">{html.escape(name)}</a>'


# The MLflow UI shows an HTML artifact from a blob: URL in a frame sandboxed to scripts only, where
# following any link blanks the frame. There, in-page links scroll instead, and a link to another
# artifact becomes its path as text (open it from the Artifacts tree). Opened as a file, links stay.
BROWSE_IN_UI = """<script>(function(){
var inUi = location.protocol === 'blob:' || location.protocol === 'about:';
document.querySelectorAll('a[href]').forEach(function(a){
  var href = a.getAttribute('href');
  if (href.charAt(0) === '#') {
    a.addEventListener('click', function(e){
      e.preventDefault(); var target = document.getElementById(href.slice(1));
      if (target) { target.scrollIntoView(); }
    });
  } else if (inUi) {
    var path = document.createElement('code'); path.textContent = href;
    path.title = 'artifact path: open it from the Artifacts tree'; a.replaceWith(path);
  }
});
})();</script>"""


def write(root: Path, title: str, summary: dict[str, str], sections: list[Section], name: str = "report.html") -> Path:
    """Write ``root/name`` and return its path; every file under ``root`` gets a link."""
    parts = [f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
             f"<style>{STYLE}</style></head><body><h1>{html.escape(title)}</h1>",
             "<p class='note'><b>Sign convention:</b> positive influence = including the source class "
             "<i>helps</i> the target (raises its margin, probability or correctness); negative = it hurts.</p>",
             "<table>" + "".join(f"<tr><th>{html.escape(k)}</th><td>{html.escape(str(v))}</td></tr>"
                                 for k, v in summary.items()) + "</table>"]
    parts.append("<h2>Contents</h2><ul>" + "".join(f"<li><a href='#s{i}'>{html.escape(s.title)}</a></li>"
                                                  for i, s in enumerate(sections)) + "</ul>")
    for i, section in enumerate(sections):
        parts.append(f"<section id='s{i}'><h2>{html.escape(section.title)}</h2><p>{html.escape(section.text)}</p>")
        parts.append("<p>Files: " + ", ".join(_link(f) for f in section.files) + "</p>")
        parts += [_embed(root, image) for image in section.images]
        if section.table is not None and len(section.table):
            parts.append(section.table.to_html(index=False, float_format=lambda v: f"{v:.4g}", border=0))
        parts.append("</section>")
    every = sorted(p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file() and p.name != name)
    parts.append("<section><h2>All artifacts</h2><ul>" + "".join(f"<li>{_link(f)}</li>" for f in every)
                 + "</ul></section>" + BROWSE_IN_UI + "</body></html>")
    path = root / name
    path.write_text("\n".join(parts), encoding="utf-8")
    return path
