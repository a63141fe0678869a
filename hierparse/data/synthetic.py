"""A procedural human-parsing dataset labelled with LIP's raw ids: works offline, no download.

Each image shows one to three people drawn from a jointed 2D body (head, torso, two-segment arms
and legs with random angles) on a cluttered background. Outfits combine upper clothes, dress,
coat or jumpsuit with pants, shorts or a skirt, and optional hat, sunglasses, scarf, gloves and
socks. Left and right are the person's own, as in LIP: a person seen from the back (no face,
hair over the back of the head) has the left arm on the image's left. Garment, skin and hair
textures are also used for background clutter, so colour alone does not give the class; shape,
position and context do. Sample ``i`` of ``(seed, split)`` is always the same image.

Run ``python -m hierparse.data OUT.png`` to save a contact sheet of samples.
"""

from __future__ import annotations

import math
from typing import Sequence

import numpy as np
import torch.utils.data
from PIL import Image, ImageDraw

from hierparse.data.dataset import Sample, Transform, as_hierarchy
from hierparse.hierarchy import Hierarchy

# LIP raw ids (hierarchies/lip.yaml).
BACKGROUND, HAT, HAIR, GLOVE, SUNGLASSES, UPPER_CLOTHES, DRESS, COAT = 0, 1, 2, 3, 4, 5, 6, 7
SOCKS, PANTS, JUMPSUITS, SCARF, SKIRT, FACE = 8, 9, 10, 11, 12, 13
ARM = {+1: 14, -1: 15}  # person's own left (+1) and right (-1)
LEG = {+1: 16, -1: 17}
SHOE = {+1: 18, -1: 19}
NUM_LIP_IDS = 20

SPLITS = {"train": 0, "val": 1, "test": 2}

SKIN_TONES = np.array(
    [[255, 224, 196], [241, 194, 150], [224, 172, 125], [198, 134, 86], [161, 102, 64], [110, 70, 45], [80, 52, 36]],
    dtype=np.float32,
)
HAIR_COLOURS = np.array(
    [[20, 16, 14], [60, 40, 28], [110, 75, 45], [200, 160, 95], [150, 60, 30], [170, 170, 170], [235, 225, 200]],
    dtype=np.float32,
)

# Pattern bank: each material is colour_a + (colour_b - colour_a) * pattern(x, y).
SOLID, STRIPES_A, STRIPES_B, CHECKS, BLOTCHES, SPECKLE, GRADIENT = range(7)
GARMENT_PATTERNS = (SOLID, SOLID, SOLID, STRIPES_A, STRIPES_B, CHECKS, BLOTCHES, SPECKLE)


def _pick(rng: np.random.Generator, options: Sequence, weights: Sequence[float] | None = None):
    """One of ``options``, uniformly or by ``weights`` (summing to 1); cheaper than ``rng.choice``."""
    if weights is None:
        return options[int(rng.integers(len(options)))]
    roll = rng.random()
    for option, weight in zip(options, weights):
        roll -= weight
        if roll < 0:
            return option
    return options[-1]


class _Materials:
    """The materials of one image: a pattern index and two colours each; index 0 is the backdrop."""

    def __init__(self) -> None:
        self.patterns: list[int] = []
        self.colours_a: list[np.ndarray] = []
        self.colours_b: list[np.ndarray] = []

    def add(self, pattern: int, colour_a: np.ndarray, colour_b: np.ndarray) -> int:
        """A new material's index (the material map is uint8; an image uses well under 100)."""
        self.patterns.append(pattern)
        self.colours_a.append(colour_a)
        self.colours_b.append(colour_b)
        return len(self.patterns) - 1

    def garment(self, rng: np.random.Generator) -> int:
        colour = rng.uniform(0, 255, 3)
        second = rng.uniform(0, 255, 3) if rng.random() < 0.6 else colour * rng.uniform(0.4, 0.8)
        return self.add(_pick(rng, GARMENT_PATTERNS), colour, second)

    def skin(self, rng: np.random.Generator) -> int:
        tone = SKIN_TONES[rng.integers(len(SKIN_TONES))] + rng.normal(0, 8, 3)
        return self.add(GRADIENT, tone * 1.05, tone * 0.85)

    def hair(self, rng: np.random.Generator) -> int:
        colour = rng.uniform(0, 255, 3) if rng.random() < 0.1 else HAIR_COLOURS[rng.integers(len(HAIR_COLOURS))]
        return self.add(SPECKLE, colour, colour * 0.7 + rng.normal(0, 6, 3))

    def dark(self, rng: np.random.Generator) -> int:
        colour = rng.uniform(0, 60, 3)
        return self.add(GRADIENT, colour, colour + 40)

    def like_any(self, rng: np.random.Generator, existing: Sequence[int]) -> int:
        """A clutter material: often the colours of one of this image's people, else new."""
        roll = rng.random()
        if existing and roll < 0.2:
            source = int(existing[rng.integers(len(existing))])
            if roll < 0.03:  # now and then the very same material: camouflage
                return source
            shift = rng.normal(0, 12, 3)
            pattern = _pick(rng, GARMENT_PATTERNS)
            return self.add(pattern, self.colours_a[source] + shift, self.colours_b[source] + shift)
        if roll < 0.5:
            return self.skin(rng)
        if roll < 0.58:
            return self.hair(rng)
        return self.garment(rng)


class _Canvas:
    """The label map and the material map, drawn with the same shapes."""

    def __init__(self, height: int, width: int):
        self.label = Image.new("L", (width, height), BACKGROUND)
        self.material = Image.new("L", (width, height), 0)
        self._draws = (ImageDraw.Draw(self.label), ImageDraw.Draw(self.material))

    def polygon(self, points: list[tuple[float, float]], label: int, material: int) -> None:
        for draw, value in zip(self._draws, (label, material)):
            draw.polygon(points, fill=value)

    def ellipse(self, centre: tuple[float, float], rx: float, ry: float, label: int, material: int) -> None:
        box = [centre[0] - rx, centre[1] - ry, centre[0] + rx, centre[1] + ry]
        if box[2] < box[0] + 0.5 or box[3] < box[1] + 0.5:
            return
        for draw, value in zip(self._draws, (label, material)):
            draw.ellipse(box, fill=value)

    def limb(self, points: list[tuple[float, float]], width: float, label: int, material: int) -> None:
        """A thick polyline with round joints and round ends."""
        pixels = max(1, round(width))
        for draw, value in zip(self._draws, (label, material)):
            draw.line(points, fill=value, width=pixels, joint="curve")
        for point in (points[0], points[-1]):
            self.ellipse(point, width / 2, width / 2, label, material)


def _lerp(a: tuple[float, float], b: tuple[float, float], t: float) -> tuple[float, float]:
    return (a[0] + (b[0] - a[0]) * t, a[1] + (b[1] - a[1]) * t)


class _Body:
    """One person's outfit, pose and placement, and the geometry of the body frame (height 1,
    x = own left); :class:`_Person` draws it."""

    def __init__(
        self,
        rng: np.random.Generator,
        materials: _Materials,
        height: float,
        cx: float,
        top: float,
        facing_back: bool | None = None,
    ):
        self.rng = rng
        self.scale = height
        self.x_scale = height * rng.uniform(0.8, 1.3)
        self.cx, self.top = cx, top
        # Seen from the front, the person's own left is on the image's right.
        self.facing_back = bool(rng.random() < 0.3) if facing_back is None else facing_back
        self.mirror = -1.0 if self.facing_back else 1.0

        self.top_kind = _pick(rng, ("upper", "dress", "coat", "jumpsuit"), (0.42, 0.2, 0.23, 0.15))
        self.bottom_kind = (
            _pick(rng, ("pants", "shorts", "skirt"), (0.5, 0.2, 0.3)) if self.top_kind in ("upper", "coat") else None
        )
        self.sleeves = "long" if self.top_kind == "coat" else _pick(rng, ("none", "short", "long"))
        self.hat = rng.random() < 0.3
        self.sunglasses = not self.facing_back and rng.random() < 0.3
        self.gloves = rng.random() < 0.2
        self.scarf = rng.random() < 0.25
        self.socks = rng.random() < 0.4
        self.long_hair = rng.random() < 0.45
        self.bald = not self.hat and rng.random() < 0.05

        self.skin = materials.skin(rng)
        self.hair = materials.hair(rng)
        self.top_material = materials.garment(rng)
        same_as_top = self.top_kind == "jumpsuit" or rng.random() < 0.1
        self.bottom_material = self.top_material if same_as_top else materials.garment(rng)
        self.inner_material = materials.garment(rng)
        self.hat_material = materials.garment(rng)
        self.glasses_material = materials.dark(rng)
        self.glove_material = materials.garment(rng)
        self.scarf_material = materials.garment(rng)
        self.sock_material = materials.garment(rng)
        self.shoe_material = materials.garment(rng) if rng.random() < 0.5 else materials.dark(rng)
        self.garments = [
            self.top_material, self.bottom_material, self.inner_material, self.hat_material, self.scarf_material
        ]

        # Pose: (upper, lower) segment angles from straight down, positive away from the body.
        def arm_pose() -> tuple[float, float]:
            upper = rng.uniform(2.0, 2.8) if rng.random() < 0.1 else rng.uniform(-0.2, 1.3)  # 10% raised
            return upper, upper + rng.uniform(-1.6, 0.9)

        def leg_pose() -> tuple[float, float]:
            upper = rng.uniform(-0.05, 0.4)
            return upper, upper + rng.uniform(-0.35, 0.25)

        self.arm_angles = {side: arm_pose() for side in (+1, -1)}
        self.leg_angles = {side: leg_pose() for side in (+1, -1)}

    # ---------------------------------------------------------------- geometry
    def at(self, x: float, y: float) -> tuple[float, float]:
        """Body frame -> image pixels."""
        return (self.cx + self.mirror * x * self.x_scale, self.top + y * self.scale)

    def chain(self, side: int, start: tuple[float, float], lengths: tuple[float, float], angles) -> list:
        """Joint positions (body frame) of a two-segment limb hanging from ``start``."""
        points = [start]
        for length, angle in zip(lengths, angles):
            x, y = points[-1]
            points.append((x + side * math.sin(angle) * length, y + math.cos(angle) * length))
        return points

    def arm(self, side: int) -> list[tuple[float, float]]:
        return self.chain(side, (side * 0.105, 0.19), (0.165, 0.15), self.arm_angles[side])

    def leg(self, side: int) -> list[tuple[float, float]]:
        return self.chain(side, (side * 0.05, 0.5), (0.235, 0.225), self.leg_angles[side])

    def px(self, width: float) -> float:
        return width * self.x_scale


class _Person(_Body):
    """One person, drawn part by part onto a canvas (in the order that makes the right parts occlude)."""

    def draw(self, canvas: _Canvas) -> None:
        if self.long_hair and not self.facing_back and not self.bald:
            self.draw_long_hair(canvas)
        self.draw_legs(canvas)
        self.draw_lower_garment(canvas)
        self.draw_torso(canvas)
        self.draw_arms(canvas)
        if self.long_hair and self.facing_back and not self.bald:
            self.draw_long_hair(canvas)
        self.draw_head(canvas)
        if self.scarf:
            self.draw_scarf(canvas)

    def draw_long_hair(self, canvas: _Canvas) -> None:
        length = self.rng.uniform(0.22, 0.36)
        outline = [(-0.07, 0.05), (0.07, 0.05), (0.085, length), (-0.085, length)]
        canvas.polygon([self.at(*p) for p in outline], HAIR, self.hair)

    def draw_legs(self, canvas: _Canvas) -> None:
        for side in (+1, -1):
            hip, knee, ankle = self.leg(side)
            canvas.limb([self.at(*hip), self.at(*knee), self.at(*ankle)], self.px(0.062), LEG[side], self.skin)
            if self.socks:
                sock_top = _lerp(knee, ankle, 0.7)
                canvas.limb([self.at(*sock_top), self.at(*ankle)], self.px(0.058), SOCKS, self.sock_material)
            foot = self.at(ankle[0] + side * 0.012, ankle[1] + 0.018)
            canvas.ellipse(foot, self.px(0.04), self.scale * 0.022, SHOE[side], self.shoe_material)

    def draw_lower_garment(self, canvas: _Canvas) -> None:
        if self.top_kind == "dress" or self.bottom_kind == "skirt":
            label = DRESS if self.top_kind == "dress" else SKIRT
            material = self.top_material if self.top_kind == "dress" else self.bottom_material
            hem_y = self.rng.uniform(0.58, 0.8)
            hem_x = self.rng.uniform(0.1, 0.2)
            outline = [(-0.08, 0.4), (0.08, 0.4), (hem_x, hem_y), (-hem_x, hem_y)]
            canvas.polygon([self.at(*p) for p in outline], label, material)
            return
        label = JUMPSUITS if self.top_kind == "jumpsuit" else PANTS
        reach = self.rng.uniform(0.25, 0.5) if self.bottom_kind == "shorts" else self.rng.uniform(0.8, 0.95)
        for side in (+1, -1):
            hip, knee, ankle = self.leg(side)
            if reach <= 0.5:
                points = [hip, _lerp(hip, knee, reach * 2)]
            else:
                points = [hip, knee, _lerp(knee, ankle, (reach - 0.5) * 2)]
            canvas.limb([self.at(*p) for p in points], self.px(0.08), label, self.bottom_material)
        pelvis = [(-0.092, 0.42), (0.092, 0.42), (0.095, 0.53), (0.0, 0.57), (-0.095, 0.53)]
        canvas.polygon([self.at(*p) for p in pelvis], label, self.bottom_material)

    def draw_torso(self, canvas: _Canvas) -> None:
        label = {"upper": UPPER_CLOTHES, "dress": DRESS, "coat": COAT, "jumpsuit": JUMPSUITS}[self.top_kind]
        hem_y, hem_x = (self.rng.uniform(0.58, 0.7), 0.11) if self.top_kind == "coat" else (0.5, 0.092)
        outline = [(-0.04, 0.15), (0.04, 0.15), (0.125, 0.175), (0.09, 0.3), (0.078, 0.42), (hem_x, hem_y),
                   (-hem_x, hem_y), (-0.078, 0.42), (-0.09, 0.3), (-0.125, 0.175)]
        canvas.polygon([self.at(*p) for p in outline], label, self.top_material)
        if self.top_kind == "coat" and not self.facing_back and self.rng.random() < 0.7:
            opening = self.rng.uniform(0.02, 0.045)
            inner = [(-0.03, 0.155), (0.03, 0.155), (opening, hem_y - 0.08), (-opening, hem_y - 0.08)]
            canvas.polygon([self.at(*p) for p in inner], UPPER_CLOTHES, self.inner_material)

    def draw_arms(self, canvas: _Canvas) -> None:
        label = {"upper": UPPER_CLOTHES, "dress": DRESS, "coat": COAT, "jumpsuit": JUMPSUITS}[self.top_kind]
        for side in (+1, -1):
            shoulder, elbow, wrist = self.arm(side)
            hand = self.chain(side, wrist, (0.035,), (self.arm_angles[side][1],))[-1]
            canvas.limb([self.at(*shoulder), self.at(*elbow), self.at(*wrist)], self.px(0.04), ARM[side], self.skin)
            canvas.ellipse(self.at(*hand), self.px(0.026), self.scale * 0.026, ARM[side], self.skin)
            if self.sleeves == "short":
                points = [shoulder, _lerp(shoulder, elbow, 0.6)]
            elif self.sleeves == "long":
                points = [shoulder, elbow, _lerp(elbow, wrist, 0.9)]
            else:
                points = [shoulder, _lerp(shoulder, elbow, 0.12)]
            canvas.limb([self.at(*p) for p in points], self.px(0.05), label, self.top_material)
            if self.gloves:
                canvas.limb([self.at(*_lerp(elbow, wrist, 0.85)), self.at(*hand)], self.px(0.045), GLOVE,
                            self.glove_material)

    def draw_head(self, canvas: _Canvas) -> None:
        head = self.at(0.0, 0.075)
        rx, ry = self.px(0.058), self.scale * 0.075
        if self.facing_back:
            canvas.ellipse(head, rx, ry, FACE if self.bald else HAIR, self.skin if self.bald else self.hair)
        else:
            if not self.bald:
                canvas.ellipse(self.at(0.0, 0.068), rx * 1.06, ry * 0.97, HAIR, self.hair)
            canvas.ellipse(self.at(0.0, 0.088), rx * 0.86, ry * 0.8, FACE, self.skin)
            if not self.bald and self.rng.random() < 0.4:
                fringe = [(-0.05, 0.03), (0.05, 0.03), (0.045, 0.06), (-0.045, 0.055)]
                canvas.polygon([self.at(*p) for p in fringe], HAIR, self.hair)
            if self.sunglasses:
                for side in (+1, -1):
                    canvas.ellipse(self.at(side * 0.022, 0.078), self.px(0.019), self.scale * 0.012, SUNGLASSES,
                                   self.glasses_material)
                canvas.limb([self.at(-0.01, 0.076), self.at(0.01, 0.076)], self.scale * 0.006, SUNGLASSES,
                            self.glasses_material)
        if self.hat:
            self.draw_hat(canvas)

    def draw_hat(self, canvas: _Canvas) -> None:
        style = self.rng.integers(3)
        if style == 0:  # beanie
            canvas.ellipse(self.at(0.0, 0.03), self.px(0.064), self.scale * 0.042, HAT, self.hat_material)
        elif style == 1:  # cap with a brim to the side it faces
            canvas.ellipse(self.at(0.0, 0.035), self.px(0.06), self.scale * 0.035, HAT, self.hat_material)
            brim = [(-0.07, 0.035), (0.07, 0.035), (0.075, 0.05), (-0.075, 0.05)]
            canvas.polygon([self.at(*p) for p in brim], HAT, self.hat_material)
        else:  # wide brim
            canvas.ellipse(self.at(0.0, 0.045), self.px(0.12), self.scale * 0.014, HAT, self.hat_material)
            crown = [(-0.05, 0.045), (0.05, 0.045), (0.045, -0.01), (-0.045, -0.01)]
            canvas.polygon([self.at(*p) for p in crown], HAT, self.hat_material)

    def draw_scarf(self, canvas: _Canvas) -> None:
        band = [(-0.06, 0.14), (0.06, 0.14), (0.078, 0.19), (-0.078, 0.19)]
        canvas.polygon([self.at(*p) for p in band], SCARF, self.scarf_material)
        if not self.facing_back:
            tail_x = self.rng.uniform(-0.04, 0.04)
            tail = [self.at(tail_x, 0.17), self.at(tail_x * 1.2, self.rng.uniform(0.28, 0.4))]
            canvas.limb(tail, self.px(0.035), SCARF, self.scarf_material)


def _smooth_field(rng: np.random.Generator, height: int, width: int, cell: int) -> np.ndarray:
    """float32 ``HxW`` values in [0, 1] that vary smoothly over about ``cell`` pixels."""
    coarse = rng.random((height // cell + 2, width // cell + 2), dtype=np.float32)
    return np.asarray(Image.fromarray(coarse).resize((width, height), Image.BILINEAR), dtype=np.float32)


def _pattern_bank(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    """float32 ``[7, H, W]`` patterns in [0, 1], indexed by SOLID ... GRADIENT."""
    ys = np.arange(height, dtype=np.float32)[:, None]
    xs = np.arange(width, dtype=np.float32)[None, :]
    bank = np.empty((7, height, width), dtype=np.float32)
    bank[SOLID] = 0.0
    for index in (STRIPES_A, STRIPES_B):
        angle = rng.uniform(0, math.pi)
        period = rng.uniform(3, 10)
        phase = (xs * (math.cos(angle) / period)) + (ys * (math.sin(angle) / period))
        bank[index] = (phase - np.floor(phase)) < 0.5
    cell = rng.uniform(3, 9)
    bank[CHECKS] = (np.floor(xs / cell) + np.floor(ys / cell)) % 2
    bank[BLOTCHES] = _smooth_field(rng, height, width, cell=8)
    bank[SPECKLE] = rng.random((height, width), dtype=np.float32) * 0.6
    bank[GRADIENT] = ys / max(height - 1, 1)
    return bank


def _draw_clutter(
    rng: np.random.Generator, canvas: _Canvas, materials: _Materials, reuse: list[int], height: int, width: int
) -> None:
    """Background shapes (boxes, blobs, polygons, poles) in colours and textures people also wear."""
    for _ in range(rng.integers(2, 9)):
        material = materials.like_any(rng, reuse)
        kind = rng.integers(4)
        cx, cy = rng.uniform(-0.1, 1.1) * width, rng.uniform(-0.1, 1.1) * height
        size = rng.uniform(0.05, 0.45) * min(height, width)
        if kind == 0:
            canvas.polygon([(cx - size, cy - size * 0.6), (cx + size, cy - size * 0.6), (cx + size, cy + size * 0.6),
                            (cx - size, cy + size * 0.6)], BACKGROUND, material)
        elif kind == 1:
            canvas.ellipse((cx, cy), size, size * rng.uniform(0.3, 1.0), BACKGROUND, material)
        elif kind == 2:
            angles = np.sort(rng.uniform(0, 2 * math.pi, rng.integers(3, 7)))
            radii = size * rng.uniform(0.4, 1.0, len(angles))
            canvas.polygon([(cx + r * math.cos(a), cy + r * math.sin(a)) for a, r in zip(angles, radii)],
                           BACKGROUND, material)
        else:  # a limb-like pole or branch
            end = (cx + rng.uniform(-1, 1) * size * 2, cy + rng.uniform(-1, 1) * size * 2)
            canvas.limb([(cx, cy), end], rng.uniform(0.02, 0.07) * height, BACKGROUND, material)


def render(rng: np.random.Generator, height: int, width: int) -> tuple[np.ndarray, np.ndarray]:
    """One synthetic image (uint8 ``HxWx3``) and its LIP raw-id label map (uint8 ``HxW``)."""
    materials = _Materials()
    backdrop = materials.garment(rng)
    materials.patterns[backdrop] = _pick(rng, (GRADIENT, BLOTCHES, STRIPES_A, SOLID))
    canvas = _Canvas(height, width)

    count = _pick(rng, (1, 2, 3), (0.55, 0.3, 0.15))
    people = []
    for number in range(count):
        # The first person is the subject, roughly centred as in LIP's crops; others are anywhere.
        if number == 0:
            person_height, cx = rng.uniform(0.75, 1.35) * height, rng.uniform(0.3, 0.7) * width
        else:
            person_height, cx = rng.uniform(0.4, 1.1) * height, rng.uniform(-0.05, 1.05) * width
        top = rng.uniform(-0.15 * person_height, max(height - 0.8 * person_height, -0.05 * person_height))
        people.append(_Person(rng, materials, person_height, cx, top))
    people.sort(key=lambda person: person.scale)  # nearer (taller) people occlude farther ones

    reuse = [m for person in people for m in (*person.garments, person.skin, person.hair)]
    _draw_clutter(rng, canvas, materials, reuse, height, width)
    for person in people:
        person.draw(canvas)

    material = np.asarray(canvas.material)
    patterns = np.asarray(materials.patterns)
    colour_a = np.clip(np.asarray(materials.colours_a, dtype=np.float32), 0, 255)
    delta = np.clip(np.asarray(materials.colours_b, dtype=np.float32), 0, 255) - colour_a
    bank = _pattern_bank(rng, height, width).reshape(7, height * width)
    weight = bank[patterns[material].ravel(), np.arange(height * width)].reshape(height, width, 1)
    image = colour_a[material]
    image += delta[material] * weight
    light = 0.75 + 0.5 * _smooth_field(rng, height, width, cell=max(height, width) // 3)
    image *= light[..., None]
    image += rng.standard_normal((height, width, 1), dtype=np.float32) * rng.uniform(2, 9)
    return np.clip(image, 0, 255, out=image).astype(np.uint8), np.array(canvas.label)


class SyntheticParsing(torch.utils.data.Dataset):
    """``n`` procedurally drawn people images of ``size`` labelled with LIP raw ids 0-19.

    Deterministic per ``(seed, split, index)``; ``train``, ``val`` and ``test`` draw from
    different streams; sample ``i`` is image ``first + i`` of the stream (disjoint pools of one
    stream). ``hierarchy`` must declare raw ids 0-19 (LIP's); it is kept for transforms and metrics. Samples are dicts like :class:`ParsingDataset`'s (``path`` is ``synthetic/<split>/<i>``).
    """

    def __init__(
        self,
        hierarchy: Hierarchy | str = "lip",
        n: int = 1000,
        size: int | Sequence[int] = 128,
        seed: int = 0,
        split: str = "train",
        transform: Transform | None = None,
        first: int = 0,
    ):
        self.hierarchy = as_hierarchy(hierarchy)
        missing = sorted(set(range(NUM_LIP_IDS)) - set(self.hierarchy.declared_ids()))
        if missing:
            raise ValueError(
                f"synthetic data uses LIP raw ids 0-{NUM_LIP_IDS - 1}; hierarchy {self.hierarchy.name!r} "
                f"does not declare {missing}"
            )
        if split not in SPLITS:
            raise ValueError(f"unknown split {split!r} (known: {', '.join(SPLITS)})")
        if n < 1:
            raise ValueError(f"n must be at least 1, got {n}")
        if first < 0:
            raise ValueError(f"first must be >= 0, got {first}")
        self.height, self.width = (size, size) if isinstance(size, int) else (int(size[0]), int(size[1]))
        if min(self.height, self.width) < 16:
            raise ValueError(f"size must be at least 16x16, got {size!r}")
        self.n, self.seed, self.split, self.transform, self.first = n, seed, split, transform, first

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, index: int) -> Sample:
        if not -self.n <= index < self.n:
            raise IndexError(f"index {index} out of range for {self.n} samples")
        index = index % self.n + self.first
        rng = np.random.default_rng([self.seed, SPLITS[self.split], index])
        image, label = render(rng, self.height, self.width)
        sample = {"image": image, "label": label, "path": f"synthetic/{self.split}/{index}"}
        return self.transform(sample) if self.transform is not None else sample

    def __repr__(self) -> str:
        return (
            f"SyntheticParsing(hierarchy={self.hierarchy.name!r}, n={self.n}, "
            f"size=({self.height}, {self.width}), seed={self.seed}, split={self.split!r}, first={self.first})"
        )


def colorize(label: np.ndarray, hierarchy: Hierarchy, level: int = -1) -> np.ndarray:
    """uint8 ``HxWx3`` rendering of a raw-id label map in the colours of ``level`` (ignored, and coarse
    labels above ``level``: white)."""
    classes = hierarchy.exact_table()[level].numpy()[label]
    palette = np.asarray(hierarchy.colors(level), dtype=np.uint8)
    valid = classes < len(palette)
    out = np.full((*label.shape, 3), 255, dtype=np.uint8)
    out[valid] = palette[classes[valid]]
    return out


def contact_sheet(dataset: SyntheticParsing, count: int = 16, columns: int = 4) -> np.ndarray:
    """A grid of ``image | colourised label`` tiles of the first ``count`` raw samples."""
    tiles = []
    for index in range(count):
        sample = render(np.random.default_rng([dataset.seed, SPLITS[dataset.split], index]), dataset.height,
                        dataset.width)
        tiles.append(np.concatenate([sample[0], colorize(sample[1], dataset.hierarchy)], axis=1))
    gap = np.full((tiles[0].shape[0], 4, 3), 255, np.uint8)
    rows = []
    for start in range(0, count, columns):
        row = [part for tile in tiles[start : start + columns] for part in (tile, gap)][:-1]
        rows.append(np.concatenate(row, axis=1))
        rows.append(np.full((4, rows[-1].shape[1], 3), 255, np.uint8))
    return np.concatenate(rows[:-1], axis=0)

