"""BoostLU and its forms: amplify the positive part of a class activation map before pooling.

Models trained with partial labels attend to the right regions but with smaller positive
attributions than full-label models (Kim et al., CVPR 2023); BoostLU(x) = alpha*x for x > 0 and
x otherwise restores that scale.  Applied to the CAM *before* global average pooling it is not a
monotone function of the logit, so even inference-only boosting changes per-class rankings.

Every form is ``f(x) = x + (alpha - 1) * g(x)`` with its own boosted part g, so each is the
identity at alpha = 1 and the pooled logit at any alpha is ``mean(x) + (alpha - 1) * mean(g(x))``
(what `pamc tune-alpha` sweeps without rerunning the model).  The forms (spec since-2024 6), by
name in `FORMS`, built with ``build(name, alpha=..., **params)``:

* ``boostlu``            g(x) = max(x, 0): the paper's BoostLU;
* ``boostlu-threshold``  g(x) = max(x - tau, 0), tau >= 0: boost only what lies above tau (CAM
                         units), so weak, diffuse activations stay as they are;
* ``boostlu-smooth``     g(x) = softplus(beta x) / beta, beta > 0: a differentiable boost that
                         tends to ``boostlu`` as beta grows (it also lifts negatives slightly).

`alpha` is one number >= 1 or one per class (a sequence of C numbers, per-class alpha, e.g. tuned
on the validation split by ``pamc tune-alpha --per-class``), broadcast over the class axis of a
(..., C, h, w) map.
"""
from __future__ import annotations

import math
from typing import Optional, Sequence, Union

import torch
import torch.nn.functional as F
from torch import nn

from .errors import PamcError
from .registry import Registry, check_keywords

#: one alpha for every class, or one per class
Alpha = Union[float, Sequence[float]]

FORMS: Registry[type] = Registry("BoostLU form")
DEFAULT_FORM = "boostlu"


def check_alpha(alpha: Alpha) -> float | tuple[float, ...]:
    """A float >= 1, or a tuple of them for per-class alpha (a sequence, array or 1-D tensor)."""
    if hasattr(alpha, "tolist"):  # a tensor or array: a number when 0-d, else a list
        alpha = alpha.tolist()
    if isinstance(alpha, (list, tuple)):
        values = tuple(float(a) for a in alpha)
        if not values:
            raise PamcError("per-class BoostLU alpha is empty; give one alpha per class")
        for value in values:
            check_alpha(value)
        return values
    try:
        alpha = float(alpha)
    except (TypeError, ValueError):
        raise PamcError(f"BoostLU alpha must be a number >= 1 or one per class (got {alpha!r})") from None
    if not alpha >= 1.0:  # also rejects NaN
        raise PamcError(f"BoostLU alpha must be >= 1 (got {alpha}); alpha = 1 disables boosting")
    if math.isinf(alpha):
        raise PamcError("BoostLU alpha must be finite (got inf)")
    return alpha


def is_identity(alpha: Alpha) -> bool:
    alpha = check_alpha(alpha)
    return all(a == 1.0 for a in alpha) if isinstance(alpha, tuple) else alpha == 1.0


def alpha_value(alpha: Alpha) -> float | list[float]:
    """`alpha` as JSON writes it: a float, or a list of one per class."""
    alpha = check_alpha(alpha)
    return list(alpha) if isinstance(alpha, tuple) else alpha


def same_alpha(a: Alpha, b: Alpha) -> bool:
    """Whether two alphas (each one, or one per class) are the same, to 1e-9."""
    a, b = check_alpha(a), check_alpha(b)
    a, b = (a,) if not isinstance(a, tuple) else a, (b,) if not isinstance(b, tuple) else b
    return len(a) == len(b) and all(abs(x - y) <= 1e-9 for x, y in zip(a, b))


def describe_alpha(alpha: Alpha) -> str:
    """``5`` for one alpha, ``per-class 1-8 (mean 3.4)`` for a vector: for tables and messages."""
    alpha = check_alpha(alpha)
    if not isinstance(alpha, tuple):
        return f"{alpha:g}"
    return f"per-class {min(alpha):g}-{max(alpha):g} (mean {sum(alpha) / len(alpha):.3g})"


def alpha_factor(alpha: Alpha, x: torch.Tensor) -> float | torch.Tensor:
    """`alpha` ready to multiply a (..., C, h, w) map: a float, or a C x 1 x 1 tensor."""
    alpha = check_alpha(alpha)
    if not isinstance(alpha, tuple):
        return alpha
    if x.ndim < 3 or x.shape[-3] != len(alpha):
        raise PamcError(f"per-class alpha has {len(alpha)} values but the maps have shape {tuple(x.shape)} "
                        f"(..., classes, h, w); give one alpha per class")
    return torch.tensor(alpha, dtype=x.dtype, device=x.device).view(-1, 1, 1)


def _finite(value, name: str, form: str) -> float:
    try:
        value = float(value)
    except (TypeError, ValueError):
        raise PamcError(f"{form} {name} must be a number (got {value!r})") from None
    if not math.isfinite(value):
        raise PamcError(f"{form} {name} must be finite (got {value})")
    return value


class Form:
    """One form of BoostLU: f(x) = x + (alpha - 1) * part(x); `params` are its settings."""

    name = ""

    def part(self, x: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    @property
    def params(self) -> dict:
        return {}

    def apply(self, x: torch.Tensor, alpha: Alpha) -> torch.Tensor:
        if is_identity(alpha):
            return x
        return x + (alpha_factor(alpha, x) - 1) * self.part(x)

    def spec(self) -> dict:
        """What config files and model.json record: ``{"name": ..., **params}``."""
        return {"name": self.name, **self.params}

    def __repr__(self) -> str:
        return form_text(self)


@FORMS.register("boostlu")
class Plain(Form):
    """alpha * x where x > 0, x elsewhere; the gradient is alpha where x > 0 and 1 elsewhere."""

    name = "boostlu"

    def part(self, x: torch.Tensor) -> torch.Tensor:
        return x.clamp(min=0)

    def apply(self, x: torch.Tensor, alpha: Alpha) -> torch.Tensor:
        if is_identity(alpha):
            return x
        return torch.where(x > 0, x * alpha_factor(alpha, x), x)  # bit for bit the paper's BoostLU


@FORMS.register("boostlu-threshold")
class Threshold(Form):
    """x + (alpha - 1) * max(x - tau, 0): only the part of the map above tau is boosted."""

    name = "boostlu-threshold"

    def __init__(self, tau: float = 0.5):
        self.tau = _finite(tau, "tau", self.name)
        if self.tau < 0:
            raise PamcError(f"{self.name} tau must be >= 0 (got {self.tau:g}); tau = 0 is plain boostlu")

    @property
    def params(self) -> dict:
        return {"tau": self.tau}

    def part(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.tau).clamp(min=0)


@FORMS.register("boostlu-smooth")
class Smooth(Form):
    """x + (alpha - 1) * softplus(beta x) / beta: differentiable everywhere; boostlu as beta -> inf.

    softplus as torch computes it: linear where beta x > 20 (the viewer's script does the same)."""

    name = "boostlu-smooth"

    def __init__(self, beta: float = 2.0):
        self.beta = _finite(beta, "beta", self.name)
        if self.beta <= 0:
            raise PamcError(f"{self.name} beta must be > 0 (got {self.beta:g}); larger beta is closer to boostlu")

    @property
    def params(self) -> dict:
        return {"beta": self.beta}

    def part(self, x: torch.Tensor) -> torch.Tensor:
        return F.softplus(x, beta=self.beta)


def as_form(spec: Union[None, str, dict, Form] = None, **params) -> Form:
    """A `Form` from a name (with `params`), the text ``NAME:KEY=VALUE,...``, a spec dict
    ``{"name": ..., **params}``, or None (boostlu)."""
    if isinstance(spec, Form):
        if params:
            raise PamcError(f"BoostLU form {spec.name} is already built; give its parameters to build() instead")
        return spec
    if isinstance(spec, str) and ":" in spec:  # the command-line text, NAME:KEY=VALUE[,KEY=VALUE]
        spec, params = spec.split(":", 1)[0], {**parse_params(spec), **params}
    if isinstance(spec, dict):
        spec = dict(spec)
        if "name" not in spec:
            raise PamcError(f"a BoostLU form needs a name (one of {', '.join(FORMS.names())}); got {spec}")
        params = {**{k: v for k, v in spec.items() if k != "name"}, **params}
        spec = spec["name"]
    cls = FORMS.get(DEFAULT_FORM if spec is None else spec)
    check_keywords(cls, params, f"BoostLU form {cls.name!r}", "parameter")
    return cls(**params)


def parse_params(text: str) -> dict:
    """The parameters of ``NAME:KEY=VALUE[,KEY=VALUE]`` (values are numbers)."""
    name, _, rest = text.partition(":")
    params = {}
    for item in filter(None, (part.strip() for part in rest.split(","))):
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise PamcError(f"BoostLU form {text!r}: write NAME:KEY=VALUE[,KEY=VALUE], e.g. boostlu-threshold:tau=0.5")
        params[key.strip()] = _finite(value, key.strip(), name)
    return params


def form_text(spec: Union[None, str, dict, Form]) -> str:
    """A form as the command line writes it: ``boostlu``, ``boostlu-threshold:tau=0.5``."""
    built = as_form(spec)
    return built.name + (":" + ",".join(f"{k}={v:g}" for k, v in built.params.items()) if built.params else "")


def names() -> list[str]:
    return FORMS.names()


class BoostLU(nn.Module):
    """A form of BoostLU with its alpha (one, or one per class); ``forward(x, alpha=...)`` overrides alpha."""

    def __init__(self, alpha: Alpha = 5.0, form: Union[None, str, dict, Form] = None, **params):
        super().__init__()
        self.form = as_form(form, **params)
        self.alpha = check_alpha(alpha)

    def forward(self, x: torch.Tensor, alpha: Optional[Alpha] = None) -> torch.Tensor:
        return self.form.apply(x, self.alpha if alpha is None else alpha)

    def extra_repr(self) -> str:
        alpha = self.alpha if not isinstance(self.alpha, tuple) else describe_alpha(self.alpha)
        return ("" if self.form.name == DEFAULT_FORM else f"{self.form!r}, ") + f"alpha={alpha}"


def build(name: str = DEFAULT_FORM, alpha: Alpha = 1.0, **params) -> BoostLU:
    """``build("boostlu-threshold", alpha=5, tau=0.5)``: the form registered as `name`, as a module."""
    return BoostLU(alpha, name, **params)


def boostlu(x: torch.Tensor, alpha: Alpha) -> torch.Tensor:
    """The paper's BoostLU: alpha*x where x > 0, x elsewhere (alpha: one, or one per class)."""
    return Plain().apply(x, alpha)
