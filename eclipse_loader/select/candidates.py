"""The defences `select_defense` compares: offline steps + an online augmentation, as plain values.

A `Candidate` names at most one of each component, applied in a fixed order: outlier repair,
grayscale, chroma low-pass or chroma swap (one of the three), JPEG, diffusion purification (offline, once), then every epoch crop + flip (always),
RSK+FF and the corruption compensation. Each has a *weight* (how heavy it is: compute, and how much
it changes clean images); ties in accuracy go to the lighter candidate.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, replace
from typing import Optional

from ..recipes import AUGMENTS, DEFAULT_RECIPE, PAPER_RECIPE, Recipe

#: online compensation levels: name -> (p_gray, sigma). ``mid`` is the default recipe's, ``paper`` ECLIPSE's;
#: ``mild`` is the ablation's (README "Choosing the default").
COMPENSATION_LEVELS: dict[str, tuple[float, float]] = {
    "none": (0.0, 0.0), "mild": (0.1, 0.02), "mid": (DEFAULT_RECIPE.p_gray, DEFAULT_RECIPE.sigma),
    "paper": (PAPER_RECIPE.p_gray, PAPER_RECIPE.sigma)}
DEFAULT_T_STARS = (100, 200, 400, 600)
_WEIGHTS = {"repair": 0.5, "grayscale": 3.0, "chroma": 1.5, "chroma-swap": 2.0, "rsk-ff": 3.0, "mix": 0.25,
            "compensation": {"none": 0.0, "mild": 1.0, "mid": 2.0, "paper": 3.0}}


@dataclass(frozen=True)
class Candidate:
    """One defence. Attributes: ``repair`` isolated outlier pixels; ``grayscale``; ``jpeg`` quality (None:
    off); ``t_star`` of the purification (None: off); ``compensation`` level (`COMPENSATION_LEVELS`);
    ``augment`` (None or ``"rsk-ff"``); ``mix_trusted``: train on the trusted images too; ``chroma``: block
    size of the chroma low-pass (`eclipse_loader.select.colour.chroma_low_pass`; None: off); ``chroma_swap``: each
    image takes another training image's chroma (`eclipse_loader.select.colour.swap_chroma`)."""

    repair: bool = False
    grayscale: bool = False
    jpeg: Optional[int] = None
    t_star: Optional[int] = None
    compensation: str = "none"
    augment: Optional[str] = None
    mix_trusted: bool = False
    chroma: Optional[int] = None
    chroma_swap: bool = False

    def __post_init__(self) -> None:
        if sum((self.grayscale, self.chroma is not None, self.chroma_swap)) > 1:
            raise ValueError("grayscale, chroma and chroma-swap each replace the chroma: give one of them")
        if self.chroma is not None and (not isinstance(self.chroma, int) or self.chroma < 1):
            raise ValueError(f"chroma block must be a positive integer, got {self.chroma!r}")
        if self.compensation not in COMPENSATION_LEVELS:
            raise ValueError(f"compensation must be one of {sorted(COMPENSATION_LEVELS)}, got {self.compensation!r}")
        if self.augment not in AUGMENTS:
            raise ValueError(f"augment must be one of {AUGMENTS}, got {self.augment!r}")
        if self.jpeg is not None and not 1 <= self.jpeg <= 100:
            raise ValueError(f"jpeg quality must be in [1, 100], got {self.jpeg}")
        if self.t_star is not None and self.t_star < 1:
            raise ValueError(f"t_star must be positive, got {self.t_star}")

    @property
    def name(self) -> str:
        """A stable, readable name: ``none``, ``repair+purify400+comp-mid``, ``jpeg10+trusted`` ..."""
        parts = (["repair"] if self.repair else []) + (["grayscale"] if self.grayscale else [])
        parts += [f"chroma{self.chroma}"] if self.chroma is not None else []
        parts += ["chroma-swap"] if self.chroma_swap else []
        parts += [f"jpeg{self.jpeg}"] if self.jpeg is not None else []
        parts += [f"purify{self.t_star}"] if self.t_star is not None else []
        parts += [self.augment] if self.augment else []
        parts += [f"comp-{self.compensation}"] if self.compensation != "none" else []
        parts += ["trusted"] if self.mix_trusted else []
        return "+".join(parts) or "none"

    @property
    def offline(self) -> bool:
        """Whether the candidate changes the stored training images."""
        return (self.repair or self.grayscale or self.chroma is not None or self.chroma_swap or self.jpeg is not None
                or self.t_star is not None)

    @property
    def weight(self) -> float:
        """How heavy the defence is (larger = more compute / more change to clean images)."""
        w = _WEIGHTS["repair"] * self.repair + _WEIGHTS["grayscale"] * self.grayscale
        w += (_WEIGHTS["chroma"] + self.chroma / 16.0) if self.chroma is not None else 0.0  # 4: 1.75 ... 16: 2.5
        w += _WEIGHTS["chroma-swap"] * self.chroma_swap
        w += (2.0 + (100 - self.jpeg) / 45.0) if self.jpeg is not None else 0.0  # q30: 3.6, q10: 4.0
        w += (4.0 + self.t_star / 200.0) if self.t_star is not None else 0.0  # t*100: 4.5 ... t*600: 7.0
        w += _WEIGHTS["compensation"][self.compensation]  # type: ignore[index]
        w += _WEIGHTS["rsk-ff"] * (self.augment is not None) + _WEIGHTS["mix"] * self.mix_trusted
        return round(w, 3)

    @property
    def p_gray_sigma(self) -> tuple[float, float]:
        return COMPENSATION_LEVELS[self.compensation]

    def with_trusted(self) -> Candidate:
        return replace(self, mix_trusted=True)

    def to_recipe(self, purify_steps: Optional[int] = DEFAULT_RECIPE.purify_steps,
                  repair_threshold: int = DEFAULT_RECIPE.repair_threshold) -> Recipe:  # type: ignore[assignment]
        """The `Recipe` that runs this defence (purification off: the default recipe's t* fields, unused)."""
        p_gray, sigma = self.p_gray_sigma
        t_star = self.t_star if self.t_star is not None else DEFAULT_RECIPE.t_star
        return Recipe(t_star=t_star, purify_steps=None if purify_steps is None else min(purify_steps, t_star),
                      repair_threshold=repair_threshold if self.repair else None,
                      denoiser_t_max=DEFAULT_RECIPE.denoiser_t_max if self.t_star is None else t_star - 1,
                      p_gray=p_gray, sigma=sigma, purification=self.t_star is not None, grayscale=self.grayscale,
                      jpeg_quality=self.jpeg, augment=self.augment, mix_trusted=self.mix_trusted,
                      chroma_block=self.chroma, chroma_swap=self.chroma_swap)

    @classmethod
    def from_name(cls, name: str) -> Candidate:
        """The candidate whose `name` is ``name`` (e.g. ``"jpeg10+purify100"``, ``"chroma8+comp-mid"``);
        ValueError naming the part it cannot read."""
        values: dict[str, object] = {}
        for part in name.split("+") if name != "none" else []:
            match = _NAME_PART.fullmatch(part)
            key = next((k for k, v in (match.groupdict() if match else {}).items() if v is not None), None)
            if key is None or (key in values):
                raise ValueError(f"candidate name {name!r}: cannot read {part!r} (parts: repair, grayscale, chromaK, "
                                 f"chroma-swap, jpegQ, purifyT, rsk-ff, comp-{{{','.join(COMPENSATION_LEVELS)}}}, "
                                 "trusted, each once)")
            text = match.group(key)  # type: ignore[union-attr]
            values[key] = {"repair": True, "grayscale": True, "chroma_swap": True, "augment": text, "mix_trusted": True,
                           "compensation": text}.get(key, int(text) if text.isdigit() else text)
        try:
            candidate = cls(**values)  # type: ignore[arg-type]
        except ValueError as error:
            raise ValueError(f"candidate name {name!r}: {error}") from None
        if candidate.name != name:
            raise ValueError(f"candidate name {name!r}: its parts must be in the order {candidate.name!r}")
        return candidate


_NAME_PART = re.compile(r"(?P<repair>repair)|(?P<grayscale>grayscale)|chroma(?P<chroma>\d+)|(?P<chroma_swap>chroma-swap)"
                        r"|jpeg(?P<jpeg>\d+)|purify(?P<t_star>\d+)|(?P<augment>rsk-ff)|comp-(?P<compensation>\w+)"
                        r"|(?P<mix_trusted>trusted)")


def default_candidates(t_stars: tuple[int, ...] = DEFAULT_T_STARS, purification: bool = True) -> list[Candidate]:
    """The candidate list of issue 18 (24 defences with purification, 13 without), lightest first.

    Single components: none; repair; JPEG q30 and q10; grayscale; the chroma swap and the chroma low-pass at
    4-pixel blocks (`eclipse_loader.select.colour`); purification at each ``t_stars`` with and without repair;
    the compensation at mild / mid / paper; RSK+FF. Combinations: JPEG q10 + grayscale,
    repair + JPEG q10, ECLIPSE as published (purify t*=100 + paper compensation), the product default
    (repair + purify t*=400 + mid), repair + purify t*=400 + RSK+FF.
    """
    c = Candidate
    out = [c(), c(repair=True), c(jpeg=30), c(jpeg=10), c(grayscale=True), c(chroma_swap=True), c(chroma=4),
           c(grayscale=True, jpeg=10),
           c(repair=True, jpeg=10), c(compensation="mild"), c(compensation="mid"), c(compensation="paper"),
           c(augment="rsk-ff")]
    if purification:
        for t in t_stars:
            out += [c(t_star=t), c(repair=True, t_star=t)]
        mid_t = DEFAULT_RECIPE.t_star if DEFAULT_RECIPE.t_star in t_stars else t_stars[len(t_stars) // 2]
        out += [c(t_star=PAPER_RECIPE.t_star, compensation="paper"),
                c(repair=True, t_star=mid_t, compensation="mid"), c(repair=True, t_star=mid_t, augment="rsk-ff")]
    unique = list(dict.fromkeys(out))
    return sorted(unique, key=lambda cand: (cand.weight, cand.name))
