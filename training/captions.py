"""SynthScenes captions: which objects a caption mentions, how it phrases them, the wrong-attribute noise, and
whether a caption is true of a scene (``caption_fits``: one caption fits many scenes)."""

from __future__ import annotations

import re
from dataclasses import dataclass, replace
from functools import lru_cache

import numpy as np

from softclip.training.scenes import (
    ATTRIBUTE_VALUES,
    COLOURS,
    SHAPES,
    SIZES,
    TEXTURE_WORDS,
    Scene,
    SceneObject,
)

_P_COLOUR, _P_SIZE, _P_COUNT, _P_THE, _P_RELATION, _P_BACKGROUND = 0.85, 0.35, 0.7, 0.2, 0.4, 0.5
_NUMBER_WORDS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten")
_PLAIN_TEMPLATES = (
    "{objs}.",
    "a photo of {objs}.",
    "an image with {objs}.",
    "a picture showing {objs}.",
    "a drawing of {objs}.",
    "{objs} in a simple scene.",
    "shapes: {objs}.",
    "a rendering of {objs}.",
)
_BACKGROUND_TEMPLATES = (
    "{objs} on a {bg} background.",
    "a photo of {objs} on a {bg} background.",
    "{objs} against a {bg} backdrop.",
    "a {bg} background with {objs}.",
    "a picture of {objs}, {bg} background.",
)


@dataclass(frozen=True)
class _Mention:
    """A noun phrase of a caption; attributes left out are None."""

    shape: str
    colour: str | None
    size: str | None
    count: int  # how many objects it names (> 1 is said with a number word)
    target: SceneObject | None  # the one scene object it singles out, if it is unique


def _fits(obj: SceneObject, shape: str, colour: str | None, size: str | None) -> bool:
    return obj.shape == shape and colour in (None, obj.colour) and size in (None, obj.size)


def caption_for(
    scene: Scene,
    rng: np.random.Generator,
    *,
    wrong_attribute: bool = False,
    excluded: frozenset[tuple[str, str]] = frozenset(),
) -> str:
    """A caption mentioning a random non-empty subset of the scene's objects.

    Counts ("two red circles") and relations ("above") are only said when true of the whole scene. With
    `wrong_attribute`, one mention gets a colour, shape or size that no object in the scene has, never
    forming a pair in `excluded`.
    """
    if not scene.objects:
        raise ValueError("cannot caption a scene without objects")
    mentions = _mentions(scene, rng)
    if wrong_attribute:
        mentions = _corrupt(mentions, scene, rng, excluded)
    return _fill_template(_join(_phrases(mentions, rng)), scene, rng)


def _mentions(scene: Scene, rng: np.random.Generator) -> list[_Mention]:
    chosen = rng.permutation(len(scene.objects))[: int(rng.integers(1, len(scene.objects) + 1))]
    descriptions: list[tuple[str, str | None, str | None]] = []
    for obj in (scene.objects[int(i)] for i in chosen):
        colour = obj.colour if rng.random() < _P_COLOUR else None
        description = (obj.shape, colour, obj.size if rng.random() < _P_SIZE else None)
        if description not in descriptions:
            descriptions.append(description)
    mentions, named = [], []
    for description in descriptions:
        matching = [i for i, o in enumerate(scene.objects) if _fits(o, *description)]
        if matching not in named:  # "two blue squares" and "two small blue squares" name the same pair
            named.append(matching)
            mentions.append(_mention(scene, description, rng))
    return mentions


def _mention(scene: Scene, description: tuple[str, str | None, str | None], rng: np.random.Generator) -> _Mention:
    matching = [o for o in scene.objects if _fits(o, *description)]
    count = len(matching) if len(matching) > 1 and rng.random() < _P_COUNT else 1
    return _Mention(*description, count=count, target=matching[0] if len(matching) == 1 else None)


def _corrupt(
    mentions: list[_Mention], scene: Scene, rng: np.random.Generator, excluded: frozenset[tuple[str, str]]
) -> list[_Mention]:
    """Replaces one mention by one naming an object that the scene does not have."""
    index = int(rng.integers(len(mentions)))
    original = next(o for o in scene.objects if _fits(o, mentions[index].shape, mentions[index].colour, None))
    candidates = [(attribute, value) for attribute, values in ATTRIBUTE_VALUES.items() for value in values]
    for attribute, value in (candidates[int(i)] for i in rng.permutation(len(candidates))):
        wrong = replace(original, **{attribute: value})
        size = wrong.size if attribute == "size" else None
        if (wrong.colour, wrong.shape) in excluded or any(
            _fits(o, wrong.shape, wrong.colour, size) for o in scene.objects
        ):
            continue
        mentions = list(mentions)
        mentions[index] = _Mention(wrong.shape, wrong.colour, size, count=1, target=None)
        return mentions
    raise RuntimeError("no wrong attribute is possible for this scene")


def _phrases(mentions: list[_Mention], rng: np.random.Generator) -> list[str]:
    """Noun phrases; sometimes two uniquely identified objects are joined by their spatial relation."""
    phrases = [_phrase(m, rng) for m in mentions]
    unique = [i for i, m in enumerate(mentions) if m.target is not None]
    if len(unique) >= 2 and rng.random() < _P_RELATION:
        first, second = (unique[int(i)] for i in rng.permutation(len(unique))[:2])
        relation = spatial_relation(mentions[first].target, mentions[second].target)
        phrases[first] = f"{phrases[first]} {relation} {phrases[second]}"
        del phrases[second]
    return phrases


def _phrase(mention: _Mention, rng: np.random.Generator) -> str:
    noun = mention.shape if mention.count == 1 else _plural(mention.shape)
    words = " ".join(w for w in (mention.size, mention.colour, noun) if w)
    if mention.count > 1:
        return f"{_NUMBER_WORDS[mention.count]} {words}"
    if mention.target is not None and rng.random() < _P_THE:
        return f"the {words}"
    return f"{'an' if words[0] in 'aeiou' else 'a'} {words}"


def _plural(noun: str) -> str:
    return noun + ("es" if noun.endswith(("s", "x")) else "s")


def spatial_relation(a: SceneObject, b: SceneObject) -> str:
    """Where `a` is relative to `b`, along the axis where their centres are further apart."""
    (ax, ay), (bx, by) = a.center, b.center
    if abs(ax - bx) >= abs(ay - by):
        return "to the left of" if ax < bx else "to the right of"
    return "above" if ay < by else "below"


def _join(phrases: list[str]) -> str:
    if len(phrases) == 1:
        return phrases[0]
    return ", ".join(phrases[:-1]) + " and " + phrases[-1]


def _fill_template(objects_text: str, scene: Scene, rng: np.random.Generator) -> str:
    if rng.random() < _P_BACKGROUND:
        words = [TEXTURE_WORDS[scene.background], scene.tone]
        kept = words if rng.random() < 0.5 else [words[int(rng.integers(2))]]
        template = _BACKGROUND_TEMPLATES[int(rng.integers(len(_BACKGROUND_TEMPLATES)))]
        return template.format(objs=objects_text, bg=" ".join(kept))
    return _PLAIN_TEMPLATES[int(rng.integers(len(_PLAIN_TEMPLATES)))].format(objs=objects_text)


# ---- reading a caption back: is it true of a scene? --------------------------------------------------------------

_RELATIONS = ("to the left of", "to the right of", "above", "below")
_PHRASE = re.compile(
    rf"(?P<det>a|an|the|{'|'.join(_NUMBER_WORDS)}) (?:(?P<size>{'|'.join(SIZES)}) )?"
    rf"(?:(?P<colour>{'|'.join(COLOURS)}) )?(?P<noun>{'|'.join(SHAPES + tuple(_plural(s) for s in SHAPES))})"
)
_RELATION = re.compile(rf"(?P<first>.+?) (?P<relation>{'|'.join(_RELATIONS)}) (?P<second>.+)")


def _template_pattern(template: str) -> re.Pattern:
    pattern = re.escape(template).replace(re.escape("{objs}"), "(?P<objs>.+)")
    return re.compile(pattern.replace(re.escape("{bg}"), "(?P<bg>[a-z]+(?: [a-z]+)?)"))


_TEMPLATE_PATTERNS = tuple(_template_pattern(t) for t in _BACKGROUND_TEMPLATES + _PLAIN_TEMPLATES)


@dataclass(frozen=True)
class _Claim:
    """One noun phrase read back: which objects fit it and how many the determiner says there are."""

    shape: str
    colour: str | None
    size: str | None
    count: int | None  # exactly this many fit; None: at least one ("a red circle")

    def fitting(self, scene: Scene) -> list[SceneObject]:
        return [o for o in scene.objects if _fits(o, self.shape, self.colour, self.size)]

    def holds(self, scene: Scene) -> bool:
        found = len(self.fitting(scene))
        return found >= 1 if self.count is None else found == self.count


def _claim(phrase: str) -> _Claim | None:
    match = _PHRASE.fullmatch(phrase)
    if match is None:
        return None
    det, noun = match["det"], match["noun"]
    shape = noun if noun in SHAPES else next(s for s in SHAPES if _plural(s) == noun)
    count = {"a": None, "an": None, "the": 1}.get(det, _NUMBER_WORDS.index(det) if det in _NUMBER_WORDS else None)
    return _Claim(shape, match["colour"], match["size"], count)


@lru_cache(maxsize=65536)
def _readings(caption: str) -> tuple[tuple[str | None, tuple], ...]:
    """Every way ``caption`` parses: (background words or None, ((claim, relation, claim) or (claim,), ...))."""
    readings = []
    for pattern in _TEMPLATE_PATTERNS:
        match = pattern.fullmatch(caption)
        if match is None:
            continue
        parts = []
        for phrase in re.split(r", | and ", match["objs"]):
            related = _RELATION.fullmatch(phrase)
            if related is not None:
                parts.append((_claim(related["first"]), related["relation"], _claim(related["second"])))
            else:
                parts.append((_claim(phrase),))
        if all(part[0] is not None and part[-1] is not None for part in parts):
            readings.append((match.groupdict().get("bg"), tuple(parts)))
    return tuple(readings)


def _part_holds(part: tuple, scene: Scene) -> bool:
    if len(part) == 1:
        return part[0].holds(scene)
    first, relation, second = part
    return any(
        spatial_relation(a, b) == relation for a in first.fitting(scene) for b in second.fitting(scene) if a is not b
    )


def _background_holds(words: str | None, scene: Scene) -> bool:
    texture, tone = TEXTURE_WORDS[scene.background], scene.tone
    return words is None or words in (f"{texture} {tone}", texture, tone)


def caption_fits(caption: str, scene: Scene) -> bool:
    """Whether ``caption`` (as ``caption_for`` writes them, without noise) is true of ``scene``.

    Captions mention only some objects, so one caption fits many scenes: "a hexagon." fits every scene
    with a hexagon. "a"/"an" asks for at least one fitting object, "the" for exactly one, a number word for
    exactly that many; a relation holds when some object of the first phrase has it to some object of
    the second; background words must name the scene's texture and/or tone. A caption that does not
    parse fits no scene.
    """
    return any(
        _background_holds(words, scene) and all(_part_holds(part, scene) for part in parts)
        for words, parts in _readings(caption)
    )
