"""Dataset cards: the markdown a generator writes next to its dataset (``--card PATH``).

A card is rendered from the generator's summary (what it recorded and measured), so a card
and its file cannot disagree: regenerate both with the command the card states.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np


def return_stats(x: list[float]) -> dict[str, float]:
    """mean, std (population), min, max of per-episode returns."""
    a = np.asarray(x)
    return {"mean": float(a.mean()), "std": float(a.std()), "min": float(a.min()),
            "max": float(a.max())}


def generator_parser(doc: str, env: str, qualities: list[str], quality: str, episodes: int
                     ) -> argparse.ArgumentParser:
    """The options every dataset generator shares (env, quality, episodes, seed, out, card)."""
    p = argparse.ArgumentParser(description=doc.split("\n\n")[0])
    p.add_argument("--env", default=env)
    p.add_argument("--quality", choices=sorted(qualities), default=quality)
    p.add_argument("--episodes", type=int, default=episodes)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--card", type=Path, default=None, help="also write the dataset card here")
    return p


def _stats_row(label: str, s: dict, extra: str = "") -> str:
    return (f"| {label} | {s['mean']:.3f} | {s['std']:.3f} | {s['min']:.3f} | {s['max']:.3f} |"
            f"{extra}")


def render_card(summary: dict, definition: str, policy_note: str) -> str:
    """Markdown of one dataset card.

    ``summary`` is the generator's JSON summary (env, quality, seed, episodes, transitions,
    returns, reference, wall_s, file_bytes, command, versions; ``groups`` and ``win_rate``
    when the generator has them); ``definition`` says precisely what the quality is;
    ``policy_note`` names the behaviour policy and how to rebuild it.
    """
    ref, ret = summary["reference"], summary["returns"]
    span = ref["behaviour"]["mean"] - ref["random"]["mean"]
    norm = 100 * (ret["mean"] - ref["random"]["mean"]) / span
    name = Path(summary["out"]).stem
    lines = [
        f"# Dataset card: `{name}`", "",
        "| | |", "|---|---|",
        f"| environment | `{summary['env']}` (docs/design.md section 6) |",
        f"| quality | `{summary['quality']}`: {definition} |",
        f"| behaviour policy | {policy_note} |",
        f"| file | `{summary['out']}` ({summary['file_bytes']:,} bytes, gzip) |",
        f"| transitions | {summary['transitions']:,} |",
        f"| episodes | {summary['episodes']:,} |",
        f"| seed | {summary['seed']} |",
        f"| behaviour return | mean {ret['mean']:.3f}, std {ret['std']:.3f}, min "
        f"{ret['min']:.3f}, max {ret['max']:.3f} (normalised {norm:.1f}) |",
    ]
    if "win_rate" in summary:
        lines.append(f"| behaviour win rate | {100 * summary['win_rate']:.1f}% |")
    lines += [
        f"| wall time | {summary['wall_s']:.1f} s on the 2-core CPU (generation + references, "
        "from the saved behaviour policy) |",
        f"| versions | Python {summary['python']}, numpy {summary['numpy']}, torch "
        f"{summary['torch']} |",
        "", "## Command", "", "```bash", summary["command"], "```", "",
        "Re-running it rewrites this file and this card.", "",
        "## Reference returns (evaluation seeds, not the recorded episodes)", "",
        "| policy | mean | std | min | max |", "|---|---|---|---|---|",
        _stats_row("expert reference (`ref_behaviour_return`)", ref["behaviour"]),
        _stats_row("random reference (`ref_random_return`)", ref["random"]),
        "",
        "Normalised score: `100 (R - random) / (expert - random)`; both references are also "
        "file attributes.",
    ]
    if summary.get("groups"):
        lines += ["", "## Composition", "",
                  "| group | noise sigma | episodes | rollout seed | return mean | std | min | "
                  "max |", "|---|---|---|---|---|---|---|---|"]
        for g in summary["groups"]:
            r = g["returns"]
            lines.append(f"| {g['label']} | {g['sigma']} | {g['episodes']} | {g['seed']} | "
                         f"{r['mean']:.1f} | {r['std']:.1f} | {r['min']:.1f} | {r['max']:.1f} |")
    return "\n".join(lines) + "\n"


def write_card(path: Path, summary: dict, definition: str, policy_note: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(render_card(summary, definition, policy_note))
