"""The page's charts, drawn on the server as SVG by pygal and inlined in the HTML.

Why pygal: it draws time-series line charts as plain SVG in pure Python (no native
dependency, a small wheel), so the page needs no JavaScript and no chart library served to
the browser; a hand-drawn SVG would re-do its axes, scales and date labels.

Two changes to pygal's defaults keep the page self-contained: `js=[]` (pygal would
otherwise reference its tooltip script on a CDN) and the inline `<script>` config pygal
adds to every chart is removed, so the page's Content-Security-Policy can forbid scripts.
"""

from __future__ import annotations

from typing import Any

from syncd.status_page.pygal_shim import DateTimeLine, Style, etree
from syncd.status_page.queries import ChartData

_STYLE = Style(
    background="transparent",
    plot_background="#ffffff",
    foreground="#333333",
    foreground_strong="#111111",
    foreground_subtle="#888888",
    colors=("#1f6fb2", "#d9480f", "#2b8a3e", "#7048e8", "#c2255c", "#0c8599"),
    font_family="system-ui, sans-serif",
    label_font_size=11,
    major_label_font_size=11,
    legend_font_size=12,
    title_font_size=14,
)


def render_chart(chart: ChartData) -> str:
    """The chart as an `<svg>` element's markup (no XML declaration, no script)."""
    line = DateTimeLine(
        js=[],
        disable_xml_declaration=True,
        style=_STYLE,
        width=720,
        height=260,
        title=chart.title,
        show_dots=True,
        dots_size=2,
        stroke_style={"width": 1.5},
        x_label_rotation=20,
        x_value_formatter=_time_label if chart.window.span.days <= 1 else _day_label,
        show_legend=True,
        legend_at_bottom=True,
        min_scale=3,
        max_scale=6,
        no_data_text="no samples yet",
        range=(0, None),
        include_x_axis=True,
        xrange=(chart.start.timestamp(), chart.end.timestamp()),
    )
    for series in chart.series:
        line.add(series.subject, [(moment, value) for moment, value in series.points])
    tree = line.render_tree()
    _drop_scripts(tree)
    return str(etree.tostring(tree, encoding="unicode"))


def _drop_scripts(tree: Any) -> None:
    for parent in list(tree.iter()):
        for child in list(parent):
            if child.tag == "script" or str(child.tag).endswith("}script"):
                parent.remove(child)


def _time_label(moment: Any) -> str:
    return str(moment.strftime("%H:%M"))


def _day_label(moment: Any) -> str:
    return str(moment.strftime("%a %H:%M"))
