"""``<topic>.<session_id>.summary.md``: a teammate part and a leader part (at most ~25 lines).

Mostly selecting and compressing the notes. Every claim links to the inspect step that proves
it (the task(s) run in, or just before, the cell where the note was made) and to its manifest.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime
from pathlib import Path

from pyx_magics.core.hashing import atomic_write
from pyx_magics.report import md
from pyx_magics.report.inspect import inspect_url
from pyx_magics.report.model import Investigation, Note

LEADER_LINES = 25
DATA_FIX = re.compile(r"\b(correct|backfill|repair|re-?sync|reprocess|replay|restore|data fix|clean ?up|"
                      r"migrat|rewrite|recompute|reconcil)", re.I)
DETECTION = re.compile(r"\b(detect|notic|unnoticed|caught|visib)", re.I)
DETECTION_WEAK = re.compile(r"\b(alert|monitor|dashboard|observab|pag(e|ed|ing)\b)", re.I)


def render(inv: Investigation, out_dir: Path, base: Path | None = None) -> str:
    return inv.redactor.text("\n".join(_Summary(inv, out_dir.resolve(), (base or out_dir).resolve()).document()) + "\n")


def write(inv: Investigation, out_dir: Path) -> list[Path]:
    out_dir.mkdir(parents=True, exist_ok=True)
    path = inv.report_path(out_dir, "summary.md")
    atomic_write(path, render(inv, out_dir).encode("utf-8"))
    return [path]


class _Summary:
    def __init__(self, inv: Investigation, out_dir: Path, base: Path) -> None:
        self.inv = inv
        self.out_dir = out_dir
        self.base = base

    def evidence(self, note: Note, section: str) -> str:
        """``([step 3](…inspect.md#step-3-x), [manifest](…))``, or the inspect section when no step proves it."""
        inv = self.inv
        links = []
        for step in note.steps[-2:]:
            links.append(md.link(f"step {step.number}", inspect_url(inv, self.out_dir, self.base, step)))
            if step.manifest_path is not None:
                links.append(md.link("manifest", md.href(step.manifest_path, self.base)))
        if not links:
            links.append(md.link("log", md.href(inv.report_path(self.out_dir, "inspect.md"), self.base,
                                                md.slug(section))))
        return "(" + ", ".join(links) + ")"

    def claim(self, note: Note, section: str, limit: int = 220) -> str:
        text = note.text.split("\n\n", 1)[0] if note.source == "markdown" else note.text
        text = re.sub(r"^[-*+]\s+", "", text.strip())
        return f"{md.prose(md.shorten(text, limit))} {self.evidence(note, section)}"

    def claims(self, notes: list[Note], section: str, most: int = 2) -> str:
        return " ".join(self.claim(n, section) for n in notes[-most:])

    def document(self) -> list[str]:
        inv = self.inv
        stamp = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        log = md.link("investigation log", inspect_url(inv, self.out_dir, self.base))
        out = [f"# Summary: {md.prose(inv.topic)}", "",
               f"_Session {md.code(inv.session_id)} · environment **{md.prose(inv.env_label.upper())}** · "
               f"{len(inv.steps)} steps · full {log} · generated {stamp}_", ""]
        return out + self.teammate() + [""] + self.leader()

    # ------------------------------------------------------------ teammate
    def teammate(self) -> list[str]:
        inv = self.inv
        out = ["## For the teammate", ""]
        problem = inv.notes_of("problem")
        cause = inv.notes_of("root_cause") or inv.notes_of("finding")
        what = []
        if problem:
            what.append(self.claim(problem[0], "Problem statement", 160))
        if cause:
            what.append(self.claims(cause, "Root cause" if inv.notes_of("root_cause") else "Steps + evidence"))
        out.append("**What happened.** " + (" ".join(what) if what else
                   "_Nothing recorded yet: add `%pyx_note problem ...` and `%pyx_note finding ...`._"))
        out.append("")
        fixes = inv.notes_of("fix")
        workaround = [n for n in fixes if not DATA_FIX.search(n.text)] or fixes
        out.append("**Workaround.** " + (self.claims(workaround, "Mitigation / Fix") if workaround else
                   "_None recorded: add `%pyx_note fix ...`._"))
        out.append("")
        eta = [n for n in inv.notes_of("status") if re.search(r"\beta\b", n.text, re.I)]
        actions = [n for n in inv.notes_of("action") if n.due]
        dated = sorted([n for n in actions if DATA_FIX.search(n.text)] or actions, key=lambda n: str(n.due))
        if eta:
            out.append("**ETA.** " + self.claim(eta[-1], "Prevention"))
        elif dated:
            last = dated[-1]
            who = f", owner {md.prose(last.owner)}" if last.owner else ""
            out.append(f"**ETA.** {md.prose(str(last.due))}: {self.claim(last, 'Prevention', 140)}{who}")
        else:
            out.append("**ETA.** _Not set: add `%pyx_note action ... owner=NAME due=YYYY-MM-DD`._")
        out.append("")
        plan = [n for n in inv.notes_of("fix", "action") if DATA_FIX.search(n.text)]
        out.append("**Data correction plan.** " + (self.claims(plan, "Mitigation / Fix", 3) if plan else
                   "_None recorded: add `%pyx_note action correct ... owner=NAME due=YYYY-MM-DD`._"))
        return out

    # ------------------------------------------------------------ leader
    def leader(self) -> list[str]:
        inv = self.inv
        out = ["## For the leader", ""]
        status = inv.notes_of("status")
        if status:
            out.append("- **Status:** " + self.claim(status[-1], "Steps + evidence", 160))
        else:
            out.append("- **Status:** " + self.derived_status())
        impact = inv.notes_of("impact")
        out.append("- **Impact:** " + (self.claims(impact, "Scope") if impact else
                   "_Not recorded: add `%pyx_note impact ...`._") + self.scope_facts())
        cause = inv.notes_of("root_cause")
        out.append("- **Root cause:** " + (self.claims(cause, "Root cause") if cause else
                   "_Not identified yet: add `%pyx_note root_cause ...`._"))
        kinds = ("finding", "root_cause", "prevention", "impact", "action", "fix")
        gap = ([n for n in inv.notes if n.kind in kinds and DETECTION.search(n.text)]
               or [n for n in inv.notes if n.kind in kinds and DETECTION_WEAK.search(n.text)])
        out.append("- **Detection gap:** " + (self.claims(gap, "Prevention", 1) if gap else
                   "_Not recorded: add `%pyx_note prevention alert on ...` saying why this was not detected._"))
        prevention = inv.notes_of("prevention")
        actions = inv.notes_of("action")
        out.append("- **Prevention actions:**" + ("" if prevention or actions else
                   " _None recorded: add `%pyx_note action ... owner=NAME due=YYYY-MM-DD`._"))
        budget = LEADER_LINES - len(out) - 3
        for n in prevention[-2:]:
            out.append("  - " + self.claim(n, "Prevention", 160))
            budget -= 1
        if actions:
            rows = [[md.cell(a.text, 120), md.cell(a.owner or "— (missing)"), md.cell(a.due or "— (missing)"),
                     self.evidence(a, "Prevention")[1:-1]] for a in actions[: max(1, budget - 2)]]
            out += ["", *md.table(["action", "owner", "due", "evidence"], rows)]
            if len(actions) > len(rows):
                out.append(f"\n_{len(actions) - len(rows)} more in the investigation log._")
        return out

    def derived_status(self) -> str:
        inv = self.inv
        failed = sum(1 for s in inv.steps if s.status in ("failed", "timed_out", "interrupted", "refused"))
        pending = sum(1 for s in inv.steps if s.manifest is None)
        if inv.notes_of("fix") and inv.notes_of("root_cause"):
            state = "mitigated, root cause known"
        elif inv.notes_of("root_cause"):
            state = "root cause identified, fix pending"
        else:
            state = "investigating"
        extra = [f"{len(inv.run_steps())} tasks run"]
        if failed:
            extra.append(f"{failed} failed")
        if pending:
            extra.append(f"{pending} not run")
        return f"{state} ({', '.join(extra)}; add `%pyx_note status ...` to say more)"

    def scope_facts(self) -> str:
        ids: set[str] = set()
        for s in self.inv.run_steps():
            params = (s.manifest or {}).get("input", {}).get("params") or {}
            ids.update(str(e) for e in params.get("entity_ids") or [])
        return f" Entities checked: {len(ids)}." if ids else ""
