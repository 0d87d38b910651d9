"""Label encodings, observation procedures and the store of observed labels.

Encoding (everywhere in pamc): observed labels are floats, 1 = observed positive,
0 = unobserved, -1 = observed negative; values in (-1, 0) are soft negatives written by
EM-APL (-q means "negative with target probability q").  Full labels are 0/1.

Observation: one vocabulary for training (`observation:`) and `pamc prepare --observation`:

* ``as-given``        the labels the data carries: its observed (partial) labels where it has
                      them, else every full label observed (1 / -1);
* ``full``            every full label observed (1 / -1);
* ``single-positive`` one positive per image, the reference procedure (`single_positive`);
* ``fraction:P``      each label kept with probability 0 < P <= 1 (`observe_fraction`);
* ``auto``            the dataset's default where one is known (`pamc prepare`: single-positive
                      for the benchmarks, as-given for OpenImages and own data), else as-given
                      when the data carries observed labels and single-positive when it does not.

Any of them may be followed by one label-noise protocol, ``BASE+NOISE:P`` (0 <= P <= 1), that
corrupts the observed labels as well as hiding them (spec since-2024 6; `corrupt`):

* ``+false-positive:P``  each observed positive is replaced, with probability P, by a class the
                         image does not have (a wrong single positive: ``single-positive+false-positive:0.2``);
* ``+flip-negative:P``   each observed negative (-1) becomes a positive with probability P (noisy
                         partial labels; for observations with negatives: ``fraction:0.5+flip-negative:0.1``).

The noise is drawn from its own seeded stream (the observation seed and the protocol), so the
labels it leaves alone are exactly those of the base observation; `Observation.draw` also says
what was corrupted (`pamc prepare` reports it).
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Optional

import numpy as np
import torch

from .errors import PamcError
from .reference import REFERENCE_SEED


def check_full_labels(full: np.ndarray, name: str = "full labels") -> np.ndarray:
    full = np.asarray(full)
    if full.ndim != 2:
        raise PamcError(f"{name} must be a 2-D (images x classes) matrix, got shape {full.shape}")
    if not np.isin(full, (0, 1)).all():
        raise PamcError(f"{name} must hold only 0 and 1; found {sorted(set(np.unique(full).tolist()) - {0, 1})[:5]}")
    return full


def check_observed(observed, num_classes: Optional[int] = None, name: str = "observed labels") -> torch.Tensor:
    """Validate a 1/0/-1 matrix (soft negatives in (-1, 0) allowed) and return it as float32."""
    obs = torch.as_tensor(np.asarray(observed) if not torch.is_tensor(observed) else observed, dtype=torch.float32)
    if obs.ndim != 2:
        raise PamcError(f"{name} must be a 2-D (images x classes) matrix, got shape {tuple(obs.shape)}")
    if num_classes is not None and obs.shape[1] != num_classes:
        raise PamcError(f"{name} have {obs.shape[1]} columns but the model has {num_classes} classes")
    hard = (obs == 1) | (obs == 0) | (obs == -1)
    soft = (obs > -1) & (obs < 0)
    if not bool((hard | soft).all()):
        bad = obs[~(hard | soft)].unique()[:5].tolist()
        raise PamcError(f"{name} may hold only 1 (positive), 0 (unobserved), -1 (negative); found {bad}")
    return obs


def single_positive(full_labels, seed: int = REFERENCE_SEED, num_pos: int = 1, num_neg: int = 0) -> np.ndarray:
    """The reference single-positive observation (Cole et al. 2021, spec 1.3), reproduced exactly.

    A fresh RandomState(seed) per call; rows in order; per row the positive indices are shuffled
    and the first `num_pos` kept, then the negative indices are shuffled (consuming the RNG even
    when num_neg = 0) and the first `num_neg` kept as -1.
    """
    full = check_full_labels(full_labels)
    rng = np.random.RandomState(seed)
    observed = np.zeros(full.shape, dtype=np.float32)
    for n, row in enumerate(full):
        positives = np.nonzero(row == 1)[0]
        rng.shuffle(positives)
        observed[n, positives[:num_pos]] = 1
        negatives = np.nonzero(row == 0)[0]
        rng.shuffle(negatives)
        observed[n, negatives[:num_neg]] = -1
    return observed


def observe_fraction(full_labels, fraction: float, seed: int = REFERENCE_SEED) -> np.ndarray:
    """Keep each label (positive as 1, negative as -1) with probability `fraction`, like OpenImages."""
    if not 0.0 <= fraction <= 1.0:
        raise PamcError(f"fraction must lie in [0, 1] (got {fraction})")
    full = check_full_labels(full_labels)
    keep = np.random.RandomState(seed).random_sample(full.shape) < fraction
    return np.where(keep, np.where(full == 1, 1.0, -1.0), 0.0).astype(np.float32)


OBSERVATIONS = ("auto", "as-given", "full", "single-positive", "fraction:P")
#: label-noise protocols (``BASE+NAME:P``) -> the key of their random stream
NOISES = {"false-positive": 1, "flip-negative": 2}


def corrupt(observed: np.ndarray, full: Optional[np.ndarray], noise: str, rate: float,
            seed: int = REFERENCE_SEED) -> tuple[np.ndarray, dict]:
    """(corrupted copy of the dense 1/0/-1 `observed` labels, what was corrupted) under `noise`
    (module doc) at rate `rate`.  Draws come from ``default_rng([seed, stream of noise])``: one
    uniform per candidate label in row-major order, and for each replaced positive one more that
    picks its wrong class among the image's absent, not yet positive classes (by `full`)."""
    if noise not in NOISES:
        raise PamcError(f"unknown label noise {noise!r}; valid: {', '.join(NOISES)}")
    rate = float(rate)
    if not 0.0 <= rate <= 1.0:
        raise PamcError(f"{noise} rate P must lie in [0, 1] (got {rate:g})")
    if not isinstance(observed, np.ndarray):
        raise PamcError(f"{noise} noise needs dense observed labels, not a sparse store; use a dense observation")
    rng = np.random.default_rng([int(seed), NOISES[noise]])
    out = np.array(observed, dtype=np.float32, copy=True)
    if noise == "flip-negative":
        rows, cols = np.nonzero(out == -1)
        hit = rng.random(len(rows)) < rate
        out[rows[hit], cols[hit]] = 1.0
        return out, {"noise": noise, "rate": rate, "candidates": int(len(rows)), "corrupted": int(hit.sum()),
                     "what": "observed negatives flipped to positive"}
    if full is None:
        raise PamcError("false-positive noise needs the full labels, to know which classes an image does not have")
    full = check_full_labels(full)
    rows, cols = np.nonzero(out == 1)
    hit = rng.random(len(rows)) < rate
    replaced = kept = 0
    for r, c in zip(rows[hit], cols[hit]):
        wrong = np.flatnonzero((full[r] == 0) & (out[r] != 1))
        if len(wrong) == 0:  # the image has (or already shows) every class: nothing wrong to put there
            kept += 1
            continue
        out[r, c] = 0.0
        out[r, wrong[min(int(rng.random() * len(wrong)), len(wrong) - 1)]] = 1.0
        replaced += 1
    return out, {"noise": noise, "rate": rate, "candidates": int(len(rows)), "corrupted": replaced,
                 "what": "observed positives replaced by a class the image does not have",
                 **({"left_for_want_of_a_wrong_class": kept} if kept else {})}


@dataclass(frozen=True)
class Observation:
    """A parsed observation setting (see the module doc); `str()` gives it back as written."""

    mode: str
    fraction: Optional[float] = None
    noise: Optional[str] = None  # a label-noise protocol of NOISES, or None
    rate: Optional[float] = None  # its probability P

    @classmethod
    def parse(cls, text) -> "Observation":
        if isinstance(text, Observation):
            return text
        if isinstance(text, str) and "+" in text:
            base, _, noise = text.partition("+")
            name, sep, value = noise.partition(":")
            if name not in NOISES or not sep:
                raise PamcError(f"label noise must be +NAME:P with NAME one of {', '.join(NOISES)} (got {text!r})")
            try:
                rate = float(value)
            except ValueError:
                rate = float("nan")
            if not 0.0 <= rate <= 1.0:
                raise PamcError(f"{name} rate P must lie in [0, 1] (got {value!r} in {text!r})")
            return dataclasses.replace(cls.parse(base), noise=name, rate=rate)
        if text in OBSERVATIONS[:4]:
            return cls(text)
        if isinstance(text, str) and text.startswith("fraction:"):
            try:
                fraction = float(text.split(":", 1)[1])
            except ValueError:
                fraction = -1.0
            if 0.0 < fraction <= 1.0:
                return cls("fraction", fraction)
        raise PamcError(f"observation must be one of {', '.join(OBSERVATIONS)} with 0 < P <= 1 (got {text!r})")

    def __str__(self) -> str:
        base = f"fraction:{self.fraction:g}" if self.mode == "fraction" else self.mode
        return base + (f"+{self.noise}:{self.rate:g}" if self.noise else "")

    def resolve(self, has_observed: bool, default: Optional[str] = None) -> "Observation":
        """`auto` made concrete for data that does (not) carry observed labels (the noise kept)."""
        if self.mode != "auto":
            return self
        base = Observation.parse(default) if default else Observation("as-given" if has_observed else "single-positive")
        return dataclasses.replace(base, noise=self.noise, rate=self.rate)

    def apply(self, full, observed, seed: int = REFERENCE_SEED, what: str = "the data", default: Optional[str] = None):
        """The observed labels (dense 1/0/-1, or the data's own sparse store) of one label set."""
        return self.draw(full, observed, seed, what, default)[0]

    def draw(self, full, observed, seed: int = REFERENCE_SEED, what: str = "the data", default: Optional[str] = None):
        """(observed labels, what the noise corrupted: see `corrupt`, or None without noise)."""
        labels = self._observe(full, observed, seed, what, default)
        if self.noise is None:
            return labels, None
        return corrupt(labels, full, self.noise, self.rate, seed)

    def _observe(self, full, observed, seed: int, what: str, default: Optional[str]):
        mode = self.resolve(observed is not None, default)
        if mode.mode == "as-given" and observed is not None:
            return observed
        if full is None:
            raise PamcError(f"{what} has only partial labels, so no {mode} observation can be drawn; "
                            "use observation='as-given'")
        if mode.mode in ("as-given", "full"):
            return np.where(check_full_labels(full) == 1, 1.0, -1.0).astype(np.float32)
        if mode.mode == "single-positive":
            return single_positive(full, seed=seed)
        return observe_fraction(full, mode.fraction, seed=seed)


def observe(full, observed, observation="auto", seed: int = REFERENCE_SEED, what: str = "the data",
            default: Optional[str] = None):
    """The observed labels of a label set (full 0/1 and/or observed) under `observation`."""
    return Observation.parse(observation).apply(full, observed, seed, what, default)


def label_store(labels):
    """Dense matrices go into a LabelStore; sparse stores (huge label sets) are used as they are."""
    return labels if hasattr(labels, "batch") else LabelStore(labels)


class LabelStore:
    """The training set's observed labels, which some methods edit during training.

    Edits (LL-Cp corrections, EM-APL soft negatives) arrive as (dataset indices, mask, values)
    from the loss through the engine; the store keeps the initial labels, so it can report what
    changed, and its state goes into every checkpoint so a resumed run continues with the edits.
    """

    def __init__(self, observed):
        self.observed = check_observed(observed).clone()
        self.initial = self.observed.clone()

    @property
    def shape(self) -> tuple[int, int]:
        return tuple(self.observed.shape)

    def __len__(self) -> int:
        return self.observed.shape[0]

    def batch(self, index: torch.Tensor) -> torch.Tensor:
        return self.observed[index.cpu()]

    def apply(self, index: torch.Tensor, mask: torch.Tensor, values: torch.Tensor) -> int:
        """Write `values` where `mask` is set, for the rows `index`; returns the number of edits."""
        index, mask, values = index.cpu(), mask.cpu().bool(), values.cpu().float()
        rows = self.observed[index]
        rows[mask] = values[mask]
        self.observed[index] = rows
        return int(mask.sum())

    def num_edits(self) -> int:
        return int((self.observed != self.initial).sum())

    def state_dict(self) -> dict[str, torch.Tensor]:
        return {"observed": self.observed.clone(), "initial": self.initial.clone()}

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        if tuple(state["observed"].shape) != self.shape:
            raise PamcError(f"checkpoint labels have shape {tuple(state['observed'].shape)}, data has {self.shape}; "
                            "resume with the same dataset")
        self.observed = state["observed"].clone().float()
        self.initial = state["initial"].clone().float()
