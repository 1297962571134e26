"""One child's history as a page people read: one self-contained HTML file (inline SVG and CSS, no
network), one lane per sector, referrals as arrows between lanes, each referral's states over time,
the verification result stamped on it; a table of every event below, for print."""

import html
from datetime import datetime

from refbus.contracts.events import ReferralEvent, ReferralRequested, event_type
from refbus.contracts.vocabulary import Sector
from refbus.services.eventstore.records import StoredEvent

LANE_H = 90
STEP_W = 120
LEFT = 130
TOP = 40
COLOURS = {
    "requested": "#1f5fbf", "accepted": "#2e7d32", "received": "#6d6d6d", "in-progress": "#00838f",
    "on-hold": "#b26a00", "completed": "#1b5e20", "rejected": "#b71c1c", "failed": "#b71c1c",
    "cancelled": "#6a1b9a", "entered-in-error": "#424242",
}


def _esc(text: object) -> str:
    return html.escape(str(text), quote=True)


def _when(at: datetime) -> str:
    return at.strftime("%Y-%m-%d %H:%M")


def render_html(child: str, history: list[StoredEvent], verification: str, verified: bool,
                generated_at: datetime | None = None) -> str:
    """The page. `verification`: the verifier's one-line result, stamped at the top."""
    sectors = list(Sector)
    lane = {s: TOP + i * LANE_H + LANE_H // 2 for i, s in enumerate(sectors)}
    events = [h for h in history if h.event is not None]
    width = LEFT + STEP_W * (len(events) + 1)
    height = TOP + LANE_H * len(sectors) + 30
    svg: list[str] = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" role="img" '
        f'aria-label="timeline of {_esc(child)}">',
        '<defs><marker id="arrow" viewBox="0 0 10 10" refX="9" refY="5" markerWidth="7" markerHeight="7" '
        'orient="auto-start-reverse"><path d="M 0 0 L 10 5 L 0 10 z" fill="context-stroke"/></marker></defs>',
    ]
    for i, sector in enumerate(sectors):
        y0 = TOP + i * LANE_H
        fill = "#f4f6f8" if i % 2 == 0 else "#ffffff"
        svg.append(f'<rect x="0" y="{y0}" width="{width}" height="{LANE_H}" fill="{fill}" stroke="#d0d4d8"/>')
        svg.append(f'<text x="10" y="{y0 + LANE_H // 2 + 5}" class="lane">{_esc(sector.value)}</text>')
    status: dict[object, str] = {}
    for n, stored in enumerate(events):
        event = stored.event
        assert event is not None
        x = LEFT + STEP_W * n + STEP_W // 2
        kind = event_type(event).split(".", 1)[-1]
        colour = COLOURS.get(kind, "#37474f")
        y_from = lane[event.from_sector]
        svg.append(f'<text x="{x}" y="{TOP - 8}" class="time" text-anchor="middle">{_esc(_when(stored.stored_at))}'
                   "</text>")
        if isinstance(event, ReferralEvent) and event.to_sector is not None:
            y_to = lane[event.to_sector]
            dash = "" if isinstance(event, ReferralRequested) else ' stroke-dasharray="5 3"'
            svg.append(f'<line x1="{x}" y1="{y_from}" x2="{x}" y2="{y_to + (-12 if y_to > y_from else 12)}" '
                       f'stroke="{colour}" stroke-width="2.5" marker-end="url(#arrow)"{dash}/>')
            status[event.referral_id] = kind
        svg.append(f'<circle cx="{x}" cy="{y_from}" r="7" fill="{colour}"/>')
        label = kind if not isinstance(event, ReferralEvent) else f"{kind} #{str(event.referral_id)[:4]}"
        svg.append(f'<text x="{x + 10}" y="{y_from - 10}" class="ev" fill="{colour}">{_esc(label)}</text>')
    svg.append("</svg>")
    rows = []
    for stored in history:
        event = stored.event
        if event is None:
            rows.append(f'<tr class="bad"><td>{stored.seq}</td><td>{_esc(_when(stored.stored_at))}</td>'
                        f'<td colspan="4">withheld: {_esc(stored.error)}</td></tr>')
            continue
        detail = ""
        for name in ("service", "reason", "outcome", "dimension"):
            if getattr(event, name, None) is not None:
                detail += f"{name}={getattr(event, name)} "
        referral = str(event.referral_id)[:8] if isinstance(event, ReferralEvent) else ""
        rows.append(
            f"<tr><td>{stored.seq}</td><td>{_esc(_when(stored.stored_at))}</td><td>{_esc(_when(event.occurred_at))}</td>"
            f"<td>{_esc(event.from_sector.value)}{' → ' + _esc(event.to_sector.value) if event.to_sector else ''}</td>"
            f"<td>{_esc(event_type(event))} {_esc(referral)}</td><td>{_esc(detail)}</td></tr>"
        )
    stamp_class = "ok" if verified else "fail"
    stamp = ("VERIFIED" if verified else "NOT VERIFIED") + f": {verification}"
    states = "".join(f"<li>referral {_esc(str(r)[:8])}: <b>{_esc(s)}</b></li>" for r, s in status.items())
    generated = f" · generated {_esc(_when(generated_at))} UTC" if generated_at else ""
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>refbus timeline {_esc(child)}</title>
<style>
body {{ font-family: "DejaVu Sans", Arial, sans-serif; margin: 24px; color: #1c2833; }}
h1 {{ font-size: 20px; margin: 0 0 8px; }}
.stamp {{ display: inline-block; padding: 6px 12px; border: 3px solid; font-weight: bold; margin: 8px 0 16px; }}
.stamp.ok {{ color: #1b5e20; border-color: #1b5e20; }}
.stamp.fail {{ color: #b71c1c; border-color: #b71c1c; }}
.lane {{ font-size: 15px; font-weight: bold; fill: #263238; }}
.ev {{ font-size: 12px; }} .time {{ font-size: 11px; fill: #546e7a; }}
.chart {{ overflow-x: auto; border: 1px solid #d0d4d8; }}
table {{ border-collapse: collapse; margin-top: 16px; font-size: 12px; }}
td, th {{ border: 1px solid #cfd8dc; padding: 3px 6px; text-align: left; }}
tr.bad td {{ color: #b71c1c; }}
@media print {{ body {{ margin: 0; }} .chart {{ overflow: visible; border: none; }}
  svg {{ max-width: 100%; height: auto; }}
  tr {{ page-break-inside: avoid; }} }}
</style></head><body>
<h1>Child {_esc(child)}: referrals across sectors</h1>
<div class="stamp {stamp_class}">{_esc(stamp)}</div>
<div>{len(events)} events{generated}. Solid arrow: a referral sent; dashed: an answer about it.</div>
<div class="chart">{"".join(svg)}</div>
<h2>Current states</h2><ul>{states or "<li>no referrals</li>"}</ul>
<h2>Every event</h2>
<table><tr><th>seq</th><th>stored</th><th>occurred</th><th>route</th><th>event</th><th>detail</th></tr>
{"".join(rows)}</table>
</body></html>
"""
