"""The published numbers: the one place they live, and the paper's row names.

Test mAP (%) of each table cell that a preset reproduces, keyed by the preset's name
(``DATASET-ROW``).  Preset descriptions quote them through a placeholder (``{paper}`` for the
preset's own cell, ``{paper:NAME}`` for another preset's), filled in by
`pamc.config.preset_descriptions`; `pamc table` prints them beside the measured cells.  The
numbers are kept as written in the papers (their precision too: 69.2 is not 69.20).

Sources: spec 6.1 (BoostLU paper, Kim et al. CVPR 2023, single positive labels, Table 2: VOC, COCO,
NUS-WIDE, CUB), spec 6.2 (its OpenImages V3 table, mAP over all classes) and spec 6.3 (the
Large Loss paper's WAN / EPR / LS + LI rows), spec since-2023 1 (the GR loss paper's single-positive
table), spec since-2024 1 (VLPL, AEVLP: rows that used an extra resource, a frozen CLIP, marked
by `Published.extra`).  Hill, SPLC, focal margin and IGNORE (ResNet-50) have no published number
on this protocol ("paper [unverified]" in their presets).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

#: the table's columns, in the paper's order, and how they are printed
DATASET_NAMES = {"voc": "VOC", "coco": "COCO", "nuswide": "NUS-WIDE", "cub": "CUB", "openimages": "OpenImages"}

#: preset suffix -> the paper's row name, in the paper's row order (+ BoostLU rows after their method)
ROWS = {
    "full": "Full label", "an": "AN", "an-ls": "LS", "wan": "WAN", "asl": "ASL", "epr": "EPR", "role": "ROLE",
    "role-li": "ROLE + LI", "an-ls-li": "LS + LI", "em": "EM", "em-apl": "EM + APL",
    "ll-r": "LL-R", "ll-r-boostlu": "LL-R + BoostLU", "ll-ct": "LL-Ct", "ll-ct-boostlu": "LL-Ct + BoostLU",
    "ll-cp": "LL-Cp", "ll-cp-boostlu": "LL-Cp + BoostLU",
    "gr": "GR", "hill": "Hill", "splc": "SPLC", "focal-margin": "Focal margin",
    "ignore": "IGNORE", "vlpl": "VLPL", "aevlp": "AEVLP",
}

#: method name -> the name of its row (the loss registry's names)
METHODS = {"full": "Full label", "an": "AN", "an-ls": "LS", "wan": "WAN", "asl": "ASL", "epr": "EPR",
           "role": "ROLE", "em": "EM", "em-apl": "EM + APL", "ll-r": "LL-R", "ll-ct": "LL-Ct", "ll-cp": "LL-Cp",
           "gr": "GR", "hill": "Hill", "splc": "SPLC", "focal-margin": "Focal margin",
           "ignore": "IGNORE", "vlpl": "VLPL", "gpr": "AEVLP"}

_TABLE = """
row            voc    coco   nuswide  cub    source
full           89.42  76.78  52.08    30.90  spec 6.1
an             85.89  64.92  42.27    18.31  spec 6.1
an-ls          87.90  67.15  43.77    16.26  spec 6.1
wan            86.5   64.8   46.3     20.3   spec 6.3 (LL paper, end-to-end)
asl            87.76  68.78  46.93    18.81  spec 6.1
epr            85.5   63.3   46.0     20.0   spec 6.3 (LL paper, end-to-end)
role           87.77  67.04  41.63    13.66  spec 6.1
role-li        88.26  69.12  45.98    14.86  spec 6.1
an-ls-li       86.5   69.2   50.5     16.6   spec 6.3 (LL paper, LinearInit)
em             89.09  70.70  47.15    20.85  spec 6.1
em-apl         89.19  70.87  47.59    21.84  spec 6.1
ll-r           88.27  70.70  48.76    19.56  spec 6.1
ll-r-boostlu   89.29  72.89  49.59    19.80  spec 6.1
ll-ct          87.79  70.29  48.08    19.06  spec 6.1
ll-ct-boostlu  88.61  71.78  48.37    19.25  spec 6.1
ll-cp          87.44  70.27  47.92    19.21  spec 6.1
ll-cp-boostlu  87.81  71.41  48.61    19.34  spec 6.1
gr             89.83  73.17  49.08    21.64  spec since-2023 1 (GR paper)
vlpl           89.10  71.45  49.55    24.02  spec since-2024 1 (VLPL paper)
aevlp          90.46  73.54  50.70    24.89  spec since-2024 1 (AEVLP paper)
"""

#: rows whose published numbers used a resource beyond the training images and labels
EXTRA_RESOURCES = {"vlpl": "CLIP ViT-L/14-336 (frozen)", "aevlp": "CLIP ViT-B/16 (frozen)"}

#: OpenImages V3 (spec 6.2, mAP over all classes)
_OPENIMAGES = {"ll-r": "82.53", "ll-r-boostlu": "83.86", "ll-ct": "82.58", "ll-ct-boostlu": "83.94",
               "ll-cp": "82.46", "ll-cp-boostlu": "84.04"}


@dataclass(frozen=True)
class Published:
    text: str  # as printed in the paper
    source: str
    extra: Optional[str] = None  # the extra resource the published run used (a frozen CLIP), if any

    @property
    def value(self) -> float:
        return float(self.text)


def _parse() -> dict[str, Published]:
    lines = [line.split() for line in _TABLE.strip().splitlines()]
    columns = lines[0][1:5]
    out = {}
    for row, *cells in lines[1:]:
        source = " ".join(cells[4:])
        for dataset, text in zip(columns, cells[:4]):
            out[f"{dataset}-{row}"] = Published(text, source, EXTRA_RESOURCES.get(row))
    out.update({f"openimages-{row}": Published(text, "spec 6.2") for row, text in _OPENIMAGES.items()})
    return out


#: preset name -> its published cell
PUBLISHED: dict[str, Published] = _parse()

#: preset suffixes that keep the protocol of the preset they extend (same cell); `-fast64` changes it
SAME_PROTOCOL = ("-fast",)


def published_cell(preset: Optional[str]) -> Optional[Published]:
    """The published cell a run of `preset` reproduces, or None (no preset, or one that changes the
    protocol: `-fast64`, recipes that are not the paper's)."""
    if not preset:
        return None
    if preset in PUBLISHED:
        return PUBLISHED[preset]
    for suffix in SAME_PROTOCOL:
        if preset.endswith(suffix) and preset[: -len(suffix)] in PUBLISHED:
            return PUBLISHED[preset[: -len(suffix)]]
    return None


def fill_description(name: str, text: str) -> str:
    """A preset description with its placeholders filled: {paper} = this preset's published number,
    {paper:NAME} = preset NAME's."""
    import re

    def number(match: "re.Match") -> str:
        key = match.group(1) or name
        if key not in PUBLISHED:
            raise KeyError(f"preset {name!r} quotes {{paper{':' + match.group(1) if match.group(1) else ''}}}, "
                           f"but pamc/published.py has no number for {key!r}")
        return PUBLISHED[key].text

    return re.sub(r"\{paper(?::([a-z0-9-]+))?\}", number, text)


def row_label(method: str, alpha=1.0, eval_alpha=None, linear_init: bool = False, activation=None) -> str:
    """The table row of a run: the method's name, `+ LI` with a linear-init phase, and
    `+ BoostLU` when trained with alpha > 1 (`+ BoostLU (inference only)` when only evaluated with
    it); an alpha other than the paper's 5, and a form other than boostlu, are named."""
    from .activation import as_form, check_alpha, describe_alpha, form_text, is_identity
    from .losses import LOSSES

    try:
        name = METHODS.get(method) or getattr(LOSSES.get(method), "label", None) or method
    except Exception:  # a method of another pamc
        name = method
    if linear_init:
        name += " + LI"
    alpha = check_alpha(alpha)
    test = alpha if eval_alpha is None else check_alpha(eval_alpha)
    boost = "BoostLU" if as_form(activation).name == "boostlu" else f"BoostLU [{form_text(activation)}]"
    if not is_identity(alpha):
        detail = [] if alpha == 5 else [f"alpha {describe_alpha(alpha)}"]
        if test != alpha:
            detail.append(f"eval alpha {describe_alpha(test)}")
        return name + " + " + boost + (f" ({', '.join(detail)})" if detail else "")
    if not is_identity(test):
        return name + f" + {boost} (inference only" + ("" if test == 5 else f", alpha {describe_alpha(test)}") + ")"
    return name
