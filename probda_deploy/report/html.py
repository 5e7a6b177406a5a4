"""A self-contained HTML report of an evaluation (no network resources).

Layout of `out_dir/`: `index.html`, `per_image.csv` + `summary.json` (the same
numbers as `probda evaluate --out`), `calibration.png`, `compare.png` and
`panels/NAME.png`; `compare/` holds the second model's CSV and JSON. With
`inline=True` the PNGs are also embedded as data: URIs so index.html alone
carries everything.
"""

from __future__ import annotations

import base64
import html
import logging
from pathlib import Path

from .calibration import plot_calibration
from .compare import paired_rows, plot_compare
from .panels import render_panel


def _summary_key(metric: str) -> str:
    """Summary key of a per-image metric (see evaluation.summary_key)."""
    from ..evaluation import summary_key as key

    return key(metric)


log = logging.getLogger(__name__)

CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Helvetica,Arial,sans-serif;margin:2em auto;max-width:1200px;color:#222}
table{border-collapse:collapse;margin:0.6em 0 1.4em}th,td{border:1px solid #ccc;padding:3px 8px;text-align:right}
th{background:#f2f2f2}td.name,th.name{text-align:left}tr.mean td{font-weight:bold;background:#fafafa}
.pos{color:#1a7f1a}.neg{color:#b01c1c}img{max-width:100%;border:1px solid #ddd}code{background:#f4f4f4;padding:0 3px}
.failed{color:#b01c1c}
"""
METRIC_HEADERS = (("dice_hard", "dice (hard)"), ("dice_soft", "dice (soft)"), ("iou", "IoU"),
                  ("foreground_pred", "foreground pred"), ("foreground_true", "foreground true"),
                  ("mean_consensus", "mean consensus"))


def write_report(report, out_dir: str | Path, *, compare=None, max_panels: int = 6, inline: bool = False,
                 names: tuple[str, str] | None = None) -> Path:
    """Write the HTML report of an EvalReport (optionally against a second model's).

    Args:
        report: the EvalReport (evaluation.evaluate_model) of the model to show.
        out_dir: folder to write (created).
        compare: EvalReport of another model on the same images (e.g. the source model), or None.
        max_panels: at most this many picture panels (worst first, then best, by hard dice).
        inline: embed the PNGs as base64 data: URIs (the PNG files are written too).
        names: display names (model, compare); default: the model file names.

    Returns:
        Path of `out_dir/index.html`.
    """
    from ..evaluation import write_eval

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    names = names or _default_names(report, compare)
    write_eval(report, out_dir)
    parts = [_header(report, compare, names), _summary_table(report, compare, names)]
    if compare is not None:
        write_eval(compare, out_dir / "compare")
        parts.append(_compare_section(report, compare, names, out_dir, inline))
    if report.has_labels:
        png = plot_calibration(report.calibration, out_dir / "calibration.png", title=names[0])
        parts.append("<h2>Uncertainty vs error</h2>" + _img(png, out_dir, inline, "calibration plot")
                     + "<p>Left: fraction of wrongly classified pixels per consensus bin; low consensus should mean"
                     " more errors. Right: mean probability against the observed foreground fraction.</p>")
    parts.append(_image_table(report))
    parts.append(_objects_table(report))
    parts.append(_panels(report, compare, names, out_dir, max_panels, inline))
    if report.failed:
        items = "".join(f"<li><code>{_e(f)}</code>: {_e(msg)}</li>" for f, msg in report.failed)
        parts.append(f"<h2 class='failed'>Failed files ({len(report.failed)})</h2><ul class='failed'>{items}</ul>")
    doc = ("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
           f"<title>probda evaluation: {_e(names[0])}</title><style>{CSS}</style></head><body>"
           + "\n".join(parts) + "</body></html>\n")
    from ..files import write_text_atomic

    return write_text_atomic(out_dir / "index.html", doc)


def _default_names(report, compare) -> tuple[str, str]:
    a, b = Path(report.model), Path(compare.model) if compare is not None else Path("compare")
    if a.name == b.name:
        return f"{a.parent.name}/{a.name}", f"{b.parent.name}/{b.name}"
    return a.name, b.name


def _e(value) -> str:
    return html.escape(str(value), quote=True)


def _fmt(value) -> str:
    return "-" if value is None else f"{value:.4f}"


def _td(value, cls: str = "") -> str:
    """A number cell carrying the full-precision value in data-value."""
    data = "" if value is None else f" data-value=\"{value!r}\""
    klass = f" class=\"{cls}\"" if cls else ""
    return f"<td{klass}{data}>{_fmt(value)}</td>"


def _img(path: Path, out_dir: Path, inline: bool, alt: str) -> str:
    if inline:
        src = "data:image/png;base64," + base64.b64encode(path.read_bytes()).decode("ascii")
    else:
        src = path.relative_to(out_dir).as_posix()
    return f"<p><img src=\"{_e(src)}\" alt=\"{_e(alt)}\"></p>"


def _header(report, compare, names) -> str:
    facts = [("model", f"{report.model} ({report.kind}, K={report.samples})"),
             ("device", f"{report.device} ({report.provider})"),
             ("images", f"{len(report.rows)} evaluated, {len(report.failed)} failed"),
             ("settings", f"seed {report.seed}, threshold {report.threshold}")]
    if compare is not None:
        facts.insert(1, ("compared with", f"{compare.model} ({compare.kind}, K={compare.samples})"))
    rows = "".join(f"<tr><th class='name'>{_e(k)}</th><td class='name'>{_e(v)}</td></tr>" for k, v in facts)
    links = "<a href=\"per_image.csv\">per_image.csv</a> · <a href=\"summary.json\">summary.json</a>"
    if compare is not None:
        links += " · <a href=\"compare/per_image.csv\">compare/per_image.csv</a>"
    return f"<h1>probda evaluation: {_e(names[0])}</h1><table>{rows}</table><p>{links}</p>"


def _summary_table(report, compare, names) -> str:
    s = report.summary
    head = "<tr><th class='name'>mean over images</th><th>" + _e(names[0]) + "</th>"
    c = compare.summary if compare is not None else None
    if c is not None:
        head += f"<th>{_e(names[1])}</th><th>difference</th>"
    body = ""
    for key, label in METRIC_HEADERS:
        a = s[_summary_key(key)]
        row = f"<tr id=\"summary-{key}\"><td class='name'>{_e(label)}</td>{_td(a)}"
        if c is not None:
            b = c[_summary_key(key)]
            d = None if a is None or b is None else a - b
            row += _td(b) + _td(d, "" if d is None else ("pos" if d >= 0 else "neg"))
        body += row + "</tr>"
    return f"<h2>Summary</h2><table id=\"summary\">{head}</tr>{body}</table>"


def _image_table(report) -> str:
    head = "<tr><th class='name'>image</th>" + "".join(f"<th>{_e(lab)}</th>" for _, lab in METRIC_HEADERS) + "</tr>"
    body = ""
    for r in report.rows:
        body += f"<tr><td class='name'>{_e(r.name)}</td>" + "".join(_td(getattr(r, k)) for k, _ in METRIC_HEADERS) + "</tr>"
    s = report.summary
    body += "<tr class='mean'><td class='name'>mean</td>" + "".join(_td(s[_summary_key(k)]) for k, _ in METRIC_HEADERS) + "</tr>"
    return f"<h2>Per image</h2><table id=\"per-image\">{head}{body}</table>"


def _objects_table(report) -> str:
    """The least certain objects over all images (lowest mean consensus of the K samples)."""
    if not report.objects:
        return ""
    stack = any("z" in o for o in report.objects)
    cols = (("id", "{}"), ("centroid_y", "{:.1f}"), ("centroid_x", "{:.1f}"), ("area", "{}"),
            ("mean_consensus", "{:.3f}"), ("mean_std", "{:.3f}"))
    head = ("<tr><th class='name'>image</th>" + ("<th>z</th>" if stack else "")
            + "".join("<th>" + c.replace("_", " ") + "</th>" for c, _ in cols) + "<th class='name'>flag</th></tr>")
    body = ""
    for o in report.objects:
        cells = "".join("<td>" + fmt.format(o[c]) + "</td>" for c, fmt in cols)
        z = "<td>" + str(o.get("z", "")) + "</td>" if stack else ""
        flag = "uncertain" if o["uncertain"] else ""
        body += f"<tr><td class='name'>{_e(o['image'])}</td>{z}{cells}<td class='name'>{flag}</td></tr>"
    intro = ("<p>Objects of the seeded watershed (<code>probda segment --instances</code>) whose pixels the prior"
             " samples agree on least, over all images: the ones to check by hand.</p>")
    return f"<h2>Least certain objects</h2>{intro}<table id='objects'>{head}{body}</table>"


def _compare_section(report, compare, names, out_dir: Path, inline: bool) -> str:
    pairs = paired_rows(report, compare)
    head = (f"<tr><th class='name'>image</th><th>dice {_e(names[0])}</th><th>dice {_e(names[1])}</th>"
            "<th>difference</th></tr>")
    body = ""
    for name, a, b in pairs:
        d = None if a is None or b is None else a - b
        body += (f"<tr><td class='name'>{_e(name)}</td>{_td(a)}{_td(b)}"
                 f"{_td(d, '' if d is None else ('pos' if d >= 0 else 'neg'))}</tr>")
    fig = ""
    if any(a is not None and b is not None for _, a, b in pairs):
        fig = _img(plot_compare(pairs, out_dir / "compare.png", names=names), out_dir, inline, "dice comparison")
    return f"<h2>{_e(names[0])} vs {_e(names[1])}</h2>{fig}<table id=\"compare\">{head}{body}</table>"


def _panel_order(report, max_panels: int) -> list[str]:
    """Kept images, worst first then best (by hard dice), at most max_panels."""
    kept = [r for r in report.rows if r.name in report.maps]
    if report.has_labels:
        kept.sort(key=lambda r: r.dice_hard)
        n_worst = (max_panels + 1) // 2
        chosen = kept if len(kept) <= max_panels else kept[:n_worst] + kept[len(kept) - (max_panels - n_worst):]
        return [r.name for r in chosen]
    return [r.name for r in kept[:max_panels]]


def _panels(report, compare, names, out_dir: Path, max_panels: int, inline: bool) -> str:
    parts = []
    for i, name in enumerate(_panel_order(report, max_panels)):
        row = report.row(name)
        other = compare.maps.get(name) if compare is not None else None
        title = name if row.dice_hard is None else f"{name}: dice {row.dice_hard:.3f}"
        if other is not None and compare.row(name).dice_hard is not None:
            title += f" ({names[1]}: {compare.row(name).dice_hard:.3f})"
        png = render_panel(report.maps[name], out_dir / "panels" / f"{i:02d}_{Path(name).stem}.png", title=title,
                           threshold=report.threshold, row_names=names, compare=other)
        parts.append(f"<h3>{_e(title)}</h3>" + _img(png, out_dir, inline, f"panel {name}"))
    if not parts:
        return ""
    note = "worst and best images by hard dice" if report.has_labels else "first images"
    return f"<h2>Pictures ({note})</h2>" + "".join(parts)
