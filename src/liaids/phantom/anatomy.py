"""Patient anatomy as implicit shapes in millimetres, painted onto any sampling grid.

Frame: DICOM patient coordinates (LPS): ``x`` towards the patient's left, ``y`` posterior, ``z``
superior, in mm. ``z = 0`` is near the top of the right liver dome. Every organ is a :class:`Shape`
(an inside-test over coordinate arrays) with a bounding box, a label and the share of the breathing
shift it follows. Shapes are drawn per patient from random parameters, so organ forms differ between
patients rather than being one template rescaled.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace

import numpy as np

from liaids.phantom.labels import Tissue

InsideFn = Callable[[np.ndarray, np.ndarray, np.ndarray], np.ndarray]


@dataclass(frozen=True)
class Shape:
    """One painted region.

    Args:
        label: tissue label written where ``inside`` holds.
        lo, hi: bounding box corners (x, y, z) in mm, before breathing shift.
        inside: boolean test over broadcastable coordinate arrays (mm).
        motion: share of the phase's breathing shift this organ follows (0 = fixed to the table).
        where: if given, only voxels currently holding one of these labels are painted.
        liver_envelope: +1 adds the painted voxels to the liver mask, -1 removes them, 0 leaves it.
    """

    label: int
    lo: tuple[float, float, float]
    hi: tuple[float, float, float]
    inside: InsideFn
    motion: float = 0.0
    where: frozenset[int] | None = None
    liver_envelope: int = 0


# ---------------------------------------------------------------------------------------------------------
# Shape primitives


def _rotation(rng: np.random.Generator, max_deg: float) -> np.ndarray:
    """Small random rotation (x, y, z Euler angles within +-max_deg)."""
    ax, ay, az = np.deg2rad(rng.uniform(-max_deg, max_deg, 3))
    rx = np.array([[1, 0, 0], [0, np.cos(ax), -np.sin(ax)], [0, np.sin(ax), np.cos(ax)]])
    ry = np.array([[np.cos(ay), 0, np.sin(ay)], [0, 1, 0], [-np.sin(ay), 0, np.cos(ay)]])
    rz = np.array([[np.cos(az), -np.sin(az), 0], [np.sin(az), np.cos(az), 0], [0, 0, 1]])
    return rz @ ry @ rx


@dataclass(frozen=True)
class Ellipsoid:
    """Ellipsoid with a random low-order surface perturbation (lobulation, nodularity).

    ``radius_field`` gives the normalised radius: < 1 inside, 1 on the (perturbed) surface.
    """

    centre: np.ndarray
    axes: np.ndarray
    rotation: np.ndarray = field(default_factory=lambda: np.eye(3))
    wave_dirs: np.ndarray = field(default_factory=lambda: np.zeros((0, 3)))
    wave_freq: np.ndarray = field(default_factory=lambda: np.zeros(0))
    wave_amp: np.ndarray = field(default_factory=lambda: np.zeros(0))
    wave_phase: np.ndarray = field(default_factory=lambda: np.zeros(0))

    @classmethod
    def random(
        cls,
        rng: np.random.Generator,
        centre: Sequence[float],
        axes: Sequence[float],
        *,
        rotate_deg: float = 10.0,
        bumps: float = 0.05,
        n_waves: int = 4,
        freq: tuple[float, float] = (1.5, 3.5),
    ) -> Ellipsoid:
        dirs = rng.normal(size=(n_waves, 3))
        dirs /= np.linalg.norm(dirs, axis=1, keepdims=True)
        return cls(
            centre=np.asarray(centre, float),
            axes=np.asarray(axes, float),
            rotation=_rotation(rng, rotate_deg),
            wave_dirs=dirs,
            wave_freq=rng.uniform(*freq, n_waves),
            wave_amp=rng.uniform(0.3, 1.0, n_waves) * bumps / max(1, n_waves) * 2,
            wave_phase=rng.uniform(0, 2 * np.pi, n_waves),
        )

    def scaled(self, factor: float) -> Ellipsoid:
        return replace(self, axes=self.axes * factor)

    @property
    def extent(self) -> float:
        return float(self.axes.max() * (1.0 + self.wave_amp.sum() + 0.02))

    def bbox(self, margin: float = 0.0) -> tuple[tuple[float, float, float], tuple[float, float, float]]:
        r = self.extent + margin
        lo = tuple(float(v) for v in self.centre - r)
        hi = tuple(float(v) for v in self.centre + r)
        return lo, hi  # type: ignore[return-value]

    def local(self, x: np.ndarray, y: np.ndarray, z: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Coordinates in the ellipsoid's frame, divided by its axes (float32 in, float32 out)."""
        c = [float(v) for v in self.centre]
        # R^T (p - c) / axes, with the division folded into the coefficients; python floats keep float32.
        m = [[float(self.rotation[i, j] / self.axes[j]) for i in range(3)] for j in range(3)]
        dx, dy, dz = x - c[0], y - c[1], z - c[2]
        u = m[0][0] * dx + m[0][1] * dy + m[0][2] * dz
        v = m[1][0] * dx + m[1][1] * dy + m[1][2] * dz
        w = m[2][0] * dx + m[2][1] * dy + m[2][2] * dz
        return u, v, w

    def _surface_gain(self, u: np.ndarray, v: np.ndarray, w: np.ndarray, r: np.ndarray) -> np.ndarray:
        inv = 1.0 / np.maximum(r, np.float32(1e-6))
        g = np.ones_like(r)
        for d, f, a, p in zip(self.wave_dirs, self.wave_freq, self.wave_amp, self.wave_phase, strict=True):
            k = float(f * np.pi)
            g += float(a) * np.sin(k * (float(d[0]) * u + float(d[1]) * v + float(d[2]) * w) * inv + float(p))
        return g

    def radius_field(self, x: np.ndarray, y: np.ndarray, z: np.ndarray) -> np.ndarray:
        u, v, w = self.local(x, y, z)
        r = np.sqrt(u * u + v * v + w * w)
        if len(self.wave_amp):
            r = r / self._surface_gain(u, v, w, r)
        return r

    def inside(self, x: np.ndarray, y: np.ndarray, z: np.ndarray) -> np.ndarray:
        u, v, w = self.local(x, y, z)
        r = np.sqrt(u * u + v * v + w * w)
        amp = float(self.wave_amp.sum())
        if amp == 0:
            return r < 1.0
        # The surface gain lies in [1 - amp, 1 + amp]: only the shell between needs the waves.
        out = r < 1.0 - amp
        shell = (r >= 1.0 - amp) & (r < 1.0 + amp)
        if shell.any():
            us, vs, ws = (np.broadcast_to(a, r.shape)[shell] for a in (u, v, w))
            out[shell] = r[shell] < self._surface_gain(us, vs, ws, r[shell])
        return out


def _box_slices(
    lo: Sequence[float], hi: Sequence[float], x: np.ndarray, y: np.ndarray, z: np.ndarray
) -> tuple[slice, slice, slice] | None:
    """Index window of axis-aligned coordinate vectors (x last axis, y middle, z first) inside a box."""
    out = []
    for arr, axis, a, b in ((z, 0, lo[2], hi[2]), (y, 1, lo[1], hi[1]), (x, 2, lo[0], hi[0])):
        vec = arr.reshape(-1) if arr.shape[axis] == arr.size else None
        if vec is None:
            out.append(slice(None))
            continue
        idx = np.nonzero((vec >= a) & (vec <= b))[0]
        if idx.size == 0:
            return None
        out.append(slice(int(idx[0]), int(idx[-1]) + 1))
    return out[0], out[1], out[2]


def union_inside(parts: Sequence[Ellipsoid]) -> InsideFn:
    """Inside-test of a union; each part is evaluated only within its own bounding box."""
    boxes = [p.bbox() for p in parts]

    def inside(x: np.ndarray, y: np.ndarray, z: np.ndarray) -> np.ndarray:
        out = np.zeros(np.broadcast_shapes(x.shape, y.shape, z.shape), bool)
        for part, (lo, hi) in zip(parts, boxes, strict=True):
            win = _box_slices(lo, hi, x, y, z)
            if win is None:
                continue
            sz, sy, sx = win
            xs, ys, zs = x[..., sx], y[:, sy, :], z[sz]
            out[sz, sy, sx] |= np.broadcast_to(part.inside(xs, ys, zs), out[sz, sy, sx].shape)
        return out

    return inside


def union_bbox(
    parts: Sequence[Ellipsoid], margin: float = 0.0
) -> tuple[tuple[float, ...], tuple[float, ...]]:
    boxes = [p.bbox(margin) for p in parts]
    lo = tuple(min(b[0][i] for b in boxes) for i in range(3))
    hi = tuple(max(b[1][i] for b in boxes) for i in range(3))
    return lo, hi


def capsules_inside(p0: np.ndarray, p1: np.ndarray, r0: np.ndarray, r1: np.ndarray) -> InsideFn:
    """Union of tapered tubes from ``p0[n]`` to ``p1[n]`` with radii ``r0[n]`` -> ``r1[n]`` (mm)."""

    def inside(x: np.ndarray, y: np.ndarray, z: np.ndarray) -> np.ndarray:
        out = np.zeros(np.broadcast_shapes(x.shape, y.shape, z.shape), bool)
        for a, b, ra, rb in zip(p0, p1, r0, r1, strict=True):
            # Cull on the segment's own box before the full distance computation.
            rmax = max(ra, rb)
            lo, hi = np.minimum(a, b) - rmax, np.maximum(a, b) + rmax
            mx = (x >= lo[0]) & (x <= hi[0])
            my = (y >= lo[1]) & (y <= hi[1])
            mz = (z >= lo[2]) & (z <= hi[2])
            if not (mx.any() and my.any() and mz.any()):
                continue
            ix, iy, iz = np.nonzero(mx.ravel())[0], np.nonzero(my.ravel())[0], np.nonzero(mz.ravel())[0]
            sx = slice(ix[0], ix[-1] + 1) if x.shape[-1] > 1 else slice(None)
            sy = slice(iy[0], iy[-1] + 1) if y.shape[-2] > 1 else slice(None)
            sz = slice(iz[0], iz[-1] + 1) if z.shape[-3] > 1 else slice(None)
            xs, ys, zs = x[..., sx], y[..., sy, :], z[sz, ...]
            d = b - a
            ll = float(d @ d) or 1e-9
            t = ((xs - a[0]) * d[0] + (ys - a[1]) * d[1] + (zs - a[2]) * d[2]) / ll
            t = np.clip(t, 0.0, 1.0)
            qx, qy, qz = xs - a[0] - t * d[0], ys - a[1] - t * d[1], zs - a[2] - t * d[2]
            rad = ra + t * (rb - ra)
            out[sz, sy, sx] |= qx * qx + qy * qy + qz * qz < rad * rad
        return out

    return inside


def capsules_bbox(
    p0: np.ndarray, p1: np.ndarray, r: np.ndarray
) -> tuple[tuple[float, ...], tuple[float, ...]]:
    lo = np.minimum(p0, p1).min(axis=0) - r.max()
    hi = np.maximum(p0, p1).max(axis=0) + r.max()
    return tuple(float(v) for v in lo), tuple(float(v) for v in hi)


@dataclass(frozen=True)
class Cylinder:
    """Vertical elliptic cylinder with an angular boundary perturbation, between ``z0`` and ``z1``."""

    cx: float
    cy: float
    a: float
    b: float
    z0: float
    z1: float
    harm_amp: tuple[float, ...] = ()
    harm_phase: tuple[float, ...] = ()

    def normalised_radius(self, x: np.ndarray, y: np.ndarray) -> np.ndarray:
        u, v = (x - self.cx) / self.a, (y - self.cy) / self.b
        r = np.sqrt(u * u + v * v)
        if self.harm_amp:
            th = np.arctan2(v, u)
            g = 1.0
            for k, (amp, ph) in enumerate(zip(self.harm_amp, self.harm_phase, strict=True), start=2):
                g = g + amp * np.cos(k * th + ph)
            r = r / g
        return r

    def inside(self, x: np.ndarray, y: np.ndarray, z: np.ndarray) -> np.ndarray:
        return (self.normalised_radius(x, y) < 1.0) & (z >= self.z0) & (z <= self.z1)

    def shrunk(self, mm: float) -> Cylinder:
        return Cylinder(
            self.cx, self.cy, self.a - mm, self.b - mm, self.z0, self.z1, self.harm_amp, self.harm_phase
        )

    def bbox(self) -> tuple[tuple[float, float, float], tuple[float, float, float]]:
        g = 1.0 + sum(abs(a) for a in self.harm_amp)
        return (
            (self.cx - self.a * g, self.cy - self.b * g, self.z0),
            (self.cx + self.a * g, self.cy + self.b * g, self.z1),
        )


# ---------------------------------------------------------------------------------------------------------
# The patient


#: Tissues the liver may be painted over (organs drawn first that it may touch).
LIVER_OVERPAINTS = frozenset(
    {
        Tissue.VISCERAL_FAT,
        Tissue.SPLEEN,
        Tissue.STOMACH_WALL,
        Tissue.LUMEN_FLUID,
        Tissue.BOWEL_GAS,
        Tissue.PANCREAS,
        Tissue.KIDNEY_CORTEX,
        Tissue.KIDNEY_MEDULLA,
    }
)
#: Labels that count as liver parenchyma for lesion placement (vessels inside the liver included).
LIVER_TISSUES = (Tissue.LIVER, Tissue.PORTAL_VEIN, Tissue.HEPATIC_VEIN, Tissue.HEPATIC_ARTERY)


def paint(
    shapes: Sequence[Shape], x: np.ndarray, y: np.ndarray, z: np.ndarray, shift: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Paint shapes in order on a grid given by sorted coordinate vectors (mm).

    Args:
        shapes: shapes in paint order.
        x, y, z: 1D sample positions along i, j, k.
        shift: breathing displacement (mm); each shape follows ``shape.motion`` of it.

    Returns:
        ``(labels, liver_envelope)``, both ``(len(z), len(y), len(x))``.
    """
    labels = np.zeros((z.size, y.size, x.size), np.uint8)
    envelope = np.zeros(labels.shape, bool)
    allowed = np.zeros(256, bool)
    for s in shapes:
        sh = s.motion * shift
        x0, x1 = np.searchsorted(x, s.lo[0] + sh[0]), np.searchsorted(x, s.hi[0] + sh[0], "right")
        y0, y1 = np.searchsorted(y, s.lo[1] + sh[1]), np.searchsorted(y, s.hi[1] + sh[1], "right")
        z0, z1 = np.searchsorted(z, s.lo[2] + sh[2]), np.searchsorted(z, s.hi[2] + sh[2], "right")
        if x0 >= x1 or y0 >= y1 or z0 >= z1:
            continue
        X = (x[x0:x1] - sh[0]).astype(np.float32)[None, None, :]
        Y = (y[y0:y1] - sh[1]).astype(np.float32)[None, :, None]
        Z = (z[z0:z1] - sh[2]).astype(np.float32)[:, None, None]
        sub = labels[z0:z1, y0:y1, x0:x1]
        mask = np.broadcast_to(s.inside(X, Y, Z), sub.shape)
        if s.where is not None:
            allowed[:] = False
            allowed[list(s.where)] = True
            mask = mask & allowed[sub]
        sub[mask] = s.label
        if s.liver_envelope:
            envelope[z0:z1, y0:y1, x0:x1][mask] = s.liver_envelope > 0
    return labels, envelope


@dataclass
class Anatomy:
    """One patient's organs in paint order, plus what lesion placement and breathing need."""

    shapes: list[Shape]
    liver_parts: list[Ellipsoid]
    z_range: tuple[float, float]  # liver z extent (mm), unshifted
    body: Cylinder
    cirrhotic: bool
    fatty: bool
    hilum: np.ndarray
    cavity: Cylinder
    keep_out: list[tuple[float, float, float]]  # vertical structures (x, y, radius) a grown liver avoids
    notes: dict[str, float] = field(default_factory=dict)

    def liver_inside(self, x: np.ndarray, y: np.ndarray, z: np.ndarray) -> np.ndarray:
        return union_inside(self.liver_parts)(x, y, z)

    def grow_liver(self, part: Ellipsoid) -> None:
        """Add a part to the liver (a large tumour enlarges the liver around it) and repaint it."""
        self.liver_parts.append(part)
        n = next(i for i, s in enumerate(self.shapes) if s.label == Tissue.LIVER and s.liver_envelope == 1)
        old = self.shapes[n]
        lo, hi = union_bbox(self.liver_parts)
        self.shapes[n] = Shape(old.label, lo, hi, union_inside(self.liver_parts), old.motion, old.where, 1)  # type: ignore[arg-type]
        self.z_range = (min(self.z_range[0], lo[2]), max(self.z_range[1], hi[2]))

    def add_bile_ducts(self, p0: np.ndarray, p1: np.ndarray, r: np.ndarray) -> None:
        """Dilated ducts (e.g. upstream of a cholangiocarcinoma): fluid tubes painted inside the liver."""
        lo, hi = capsules_bbox(p0, p1, r)
        self.shapes.append(
            Shape(
                Tissue.BILE_DUCT,
                lo,
                hi,
                capsules_inside(p0, p1, r, r * 0.7),
                1.0,
                frozenset({Tissue.LIVER, Tissue.PORTAL_VEIN, Tissue.HEPATIC_VEIN}),
            )
        )


def _vessel_tree(
    rng: np.random.Generator,
    root: np.ndarray,
    targets: list[np.ndarray],
    radius: float,
    depth: int,
    liver: InsideFn,
) -> tuple[list[np.ndarray], list[np.ndarray], list[float], list[float]]:
    """Grow tapered branches from ``root`` towards targets, each splitting towards random liver points."""
    p0: list[np.ndarray] = []
    p1: list[np.ndarray] = []
    r0: list[float] = []
    r1: list[float] = []
    stack = [(root, t, radius, depth) for t in targets]
    while stack:
        a, b, r, d = stack.pop()
        end_r = max(1.2, r * 0.7)
        p0.append(a)
        p1.append(b)
        r0.append(r)
        r1.append(end_r)
        if d <= 0:
            continue
        direction = (b - a) / (np.linalg.norm(b - a) + 1e-6)
        for _ in range(2):
            for _try in range(8):
                step = direction * rng.uniform(20, 45) + rng.normal(0, 18, 3)
                c = b + step
                if liver(np.array([[[c[0]]]]), np.array([[[c[1]]]]), np.array([[[c[2]]]])).item():
                    stack.append((b, c, end_r, d - 1))
                    break
    return p0, p1, r0, r1


def build_anatomy(rng: np.random.Generator, *, cirrhotic: bool, fatty: bool) -> Anatomy:
    """Draw one patient's abdomen.

    Args:
        rng: random generator (the only source of randomness).
        cirrhotic: small right lobe, large caudate, nodular surface, splenomegaly, maybe ascites.
        fatty: only recorded here; the attenuation table applies it.

    Returns:
        The anatomy, shapes in paint order.
    """
    T = Tissue
    u = rng.uniform
    # Body wall: elliptic cross-section, thicker fat in some patients.
    a_body, b_body = u(135, 180), u(95, 130)
    fat_sc, wall = u(8, 35), u(7, 14)
    body = Cylinder(
        0.0,
        0.0,
        a_body,
        b_body,
        -400,
        200,
        tuple(rng.normal(0, 0.02, 3)),
        tuple(rng.uniform(0, 2 * np.pi, 3)),
    )
    muscle = body.shrunk(fat_sc)
    cavity = muscle.shrunk(wall)
    ac, bc = cavity.a, cavity.b
    yv = bc * u(0.5, 0.6)  # vertebral body centre (posterior)
    shapes: list[Shape] = []

    def add(
        label: int, box: tuple, fn: InsideFn, motion: float = 0.0, where: set[int] | None = None, env: int = 0
    ) -> None:
        shapes.append(
            Shape(label, box[0], box[1], fn, motion, None if where is None else frozenset(where), env)
        )

    add(T.SUBCUTANEOUS_FAT, body.bbox(), body.inside)
    add(T.MUSCLE, muscle.bbox(), muscle.inside)
    add(T.VISCERAL_FAT, cavity.bbox(), cavity.inside)

    # Spine: vertebral bodies with discs, spinal canal, posterior elements, paraspinal muscles.
    vr = u(17, 22)
    vb = Cylinder(0.0, yv, vr * 1.1, vr, -400, 200)
    disc_period, disc_phase = u(30, 36), u(0, 36)
    add(
        T.MUSCLE,
        ((-70, yv + 5, -400), (70, yv + 90, 200)),
        lambda x, y, z: ((((np.abs(x) - 33) / 26) ** 2 + ((y - yv - 45) / 24) ** 2) < 1) & (z > -1e9),
    )
    add(T.BONE_CORTICAL, vb.bbox(), vb.inside)
    add(T.BONE_CANCELLOUS, vb.shrunk(2.5).bbox(), vb.shrunk(2.5).inside)
    add(T.DISC, vb.bbox(), lambda x, y, z: vb.inside(x, y, z) & (((z - disc_phase) % disc_period) < 6.0))
    add(
        T.BONE_CORTICAL,
        ((-12, yv + vr, -400), (12, yv + vr + 45, 200)),
        lambda x, y, z: ((x / 11) ** 2 + ((y - yv - vr - 20) / 22) ** 2 < 1) & (z > -1e9),
    )
    canal = Cylinder(0.0, yv + vr + 9, 8.0, 7.0, -400, 200)
    add(T.SPINAL_CANAL, canal.bbox(), canal.inside)

    # Ribs: arcs inside the muscle wall, bands that descend laterally.
    rib_z = np.arange(u(60, 80), -230, -u(22, 28))
    rib_th = rng.uniform(0.9, 1.4, len(rib_z))

    def ribs(x: np.ndarray, y: np.ndarray, z: np.ndarray) -> np.ndarray:
        out = np.zeros(np.broadcast_shapes(x.shape, y.shape, z.shape), bool)
        rho = muscle.normalised_radius(x, y)
        plane = (1, *out.shape[1:])
        ring = np.broadcast_to((rho > 1.0 - 0.6 * wall / min(muscle.a, muscle.b)) & (rho < 1.0), plane)[0]
        if not ring.any():
            return out
        # Work on the ring pixels only: angle 0 lateral, -pi/2 anterior, +pi/2 posterior.
        th = np.broadcast_to(np.arctan2(y, np.abs(x)), plane)[0][ring]
        zc_all = z.reshape(-1) if z.size == out.shape[0] else np.full(out.shape[0], float(z.reshape(-1)[0]))
        hit = np.zeros((out.shape[0], th.size), bool)
        for zc, span in zip(rib_z, rib_th, strict=True):
            hit |= (np.abs(zc_all[:, None] - zc - 60.0 * th[None, :]) < 5.0) & (np.abs(th) < span)[None, :]
        hit &= (zc_all < 40)[:, None]
        out[:, ring] = hit
        return out

    add(T.BONE_CORTICAL, body.bbox(), ribs)

    # Liver: right lobe, segment IV, left lobe, caudate; cirrhosis reshapes it.
    right_scale = 0.8 if cirrhotic else 1.0
    caud_scale = 1.45 if cirrhotic else 1.0
    bumps = 0.09 if cirrhotic else 0.035
    freq = (4.0, 8.0) if cirrhotic else (1.5, 3.5)
    rl_axes = np.array([u(0.45, 0.58) * ac, u(0.72, 0.88) * bc, u(75, 100)]) * right_scale
    rl = Ellipsoid.random(
        rng,
        (-ac * u(0.9, 0.98) + rl_axes[0], u(-0.1, 0.05) * bc, -rl_axes[2]),
        rl_axes,
        bumps=bumps,
        freq=freq,
        n_waves=6 if cirrhotic else 4,
    )
    seg4_axes = np.array([u(0.22, 0.32) * ac, u(0.3, 0.4) * bc, u(45, 60)])
    seg4 = Ellipsoid.random(
        rng, (-u(0.05, 0.15) * ac, -u(0.3, 0.4) * bc, -u(45, 65)), seg4_axes, bumps=bumps, freq=freq
    )
    ll_axes = np.array([u(0.3, 0.5) * ac, u(0.18, 0.28) * bc, u(30, 48)])
    ll = Ellipsoid.random(
        rng,
        (u(0.1, 0.25) * ac, -u(0.4, 0.55) * bc, -u(35, 55)),
        ll_axes,
        rotate_deg=15,
        bumps=bumps,
        freq=freq,
    )
    cd_axes = np.array([u(18, 26), u(16, 22), u(25, 35)]) * caud_scale
    ivc_a, ivc_b = u(11, 15), u(8, 11)
    ivc_x, ivc_y = -u(20, 30), yv - vr - ivc_b - u(5, 12)
    cd = Ellipsoid.random(
        rng, (ivc_x + cd_axes[0] * 0.8, ivc_y - 5, -u(45, 60)), cd_axes, bumps=bumps, freq=freq
    )
    parts = [rl, seg4, ll, cd]
    if rng.random() < 0.15:  # Riedel lobe: inferior tongue of the right lobe
        parts.append(
            Ellipsoid.random(
                rng,
                (rl.centre[0] - rl_axes[0] * 0.3, rl.centre[1], rl.centre[2] - rl_axes[2] * 0.9),
                (25, 35, 50),
                bumps=bumps,
            )
        )
    liver_fn = union_inside(parts)
    lbox = union_bbox(parts)
    z_lo, z_hi = float(lbox[0][2]), float(lbox[1][2])

    # Organs that sit around the liver, painted before it so the liver wins where they touch.
    spleen_scale = u(1.3, 1.6) if cirrhotic else u(0.85, 1.1)
    sp = Ellipsoid.random(
        rng,
        (ac * u(0.55, 0.68), bc * u(0.2, 0.4), -u(40, 70)),
        np.array([u(25, 32), u(45, 60), u(40, 55)]) * spleen_scale,
        rotate_deg=25,
        bumps=0.04,
    )
    add(T.SPLEEN, sp.bbox(), sp.inside, 0.9, {T.VISCERAL_FAT})

    st_c = (ac * u(0.2, 0.4), -bc * u(0.25, 0.45), -u(35, 60))
    st = Ellipsoid.random(rng, st_c, (u(35, 50), u(30, 45), u(45, 60)), rotate_deg=20, bumps=0.04)
    add(T.STOMACH_WALL, st.bbox(), st.inside, 0.7, {T.VISCERAL_FAT})
    lumen = replace(st, axes=st.axes - 5)
    add(T.LUMEN_FLUID, lumen.bbox(), lumen.inside, 0.7, {T.STOMACH_WALL})
    if rng.random() < 0.7:
        level = st_c[1] - u(0.0, 0.6) * st.axes[1]
        add(
            T.BOWEL_GAS,
            lumen.bbox(),
            lambda x, y, z: lumen.inside(x, y, z) & (y < level),
            0.7,
            {T.LUMEN_FLUID},
        )

    # Pancreas: head near the duodenum, body over the vessels, tail to the splenic hilum.
    pz = -u(85, 115)
    pan_pts = np.array(
        [
            [-u(25, 40), yv - u(45, 60), pz - u(5, 15)],
            [u(0, 15), yv - u(55, 70), pz],
            [u(45, 60), yv - u(35, 50), pz + u(5, 15)],
            [sp.centre[0] - 15, sp.centre[1] - 5, pz + 15],
        ]
    )
    pr = np.array([u(11, 15), u(8, 11), u(7, 10)])
    add(
        T.PANCREAS,
        capsules_bbox(pan_pts[:-1], pan_pts[1:], pr),
        capsules_inside(pan_pts[:-1], pan_pts[1:], pr, np.append(pr[1:], pr[-1] * 0.8)),
        0.6,
        {T.VISCERAL_FAT},
    )

    # Kidneys, lateral to the spine, the right one lower (under the liver).
    for side, zc in ((-1, -u(120, 150)), (1, -u(105, 135))):
        kc = (side * u(55, 75), yv + u(-5, 15), zc)
        kid = Ellipsoid.random(rng, kc, (u(24, 30), u(22, 28), u(45, 60)), rotate_deg=20, bumps=0.02)
        add(T.KIDNEY_CORTEX, kid.bbox(), kid.inside, 0.5, {T.VISCERAL_FAT, T.MUSCLE})
        med = kid.scaled(0.62)
        add(T.KIDNEY_MEDULLA, med.bbox(), med.inside, 0.5, {T.KIDNEY_CORTEX})
        sinus = Ellipsoid(kid.centre - np.array([side * kid.axes[0] * 0.55, 0, 0]), kid.axes * 0.35)
        add(T.VISCERAL_FAT, sinus.bbox(), sinus.inside, 0.5, {T.KIDNEY_CORTEX, T.KIDNEY_MEDULLA})

    # Big vessels.
    ao_r = u(9, 13)
    ao_x, ao_y = u(12, 25), yv - vr - ao_r - u(3, 8)
    aorta = Cylinder(ao_x, ao_y, ao_r, ao_r, -400, 200)
    add(T.AORTA, aorta.bbox(), aorta.inside, 0.0, {T.VISCERAL_FAT, T.MUSCLE, T.PANCREAS})

    add(
        T.LIVER,
        lbox,
        liver_fn,
        1.0,
        LIVER_OVERPAINTS,
        env=1,
    )

    # Portal venous system: SMV, confluence, splenic vein, trunk to the hilum, intrahepatic branches.
    confl = np.array([u(-5, 10), yv - u(45, 60), pz - 10])
    hilum = np.array(
        [
            rl.centre[0] + rl_axes[0] * u(0.3, 0.5),
            rl.centre[1] - rl_axes[1] * 0.1,
            rl.centre[2] - rl_axes[2] * u(0.05, 0.25),
        ]
    )
    pv_p0 = np.array([confl - [0, 0, 120], confl, sp.centre - np.array([sp.axes[0] * 0.6, 0.0, 0.0])])
    pv_p1 = np.array([confl, hilum, confl])
    pv_r = np.array([u(5, 7), u(6.5, 9), u(4, 5.5)])
    add(
        T.PORTAL_VEIN,
        capsules_bbox(pv_p0, pv_p1, pv_r),
        capsules_inside(pv_p0, pv_p1, pv_r, pv_r),
        0.7,
        {T.VISCERAL_FAT, T.PANCREAS, T.LIVER},
    )
    targets = [rl.centre + rng.normal(0, 10, 3), ll.centre + rng.normal(0, 8, 3)]
    p0, p1, r0, r1 = _vessel_tree(rng, hilum, targets, float(pv_r[1]) * 0.8, 3, liver_fn)
    p0a, p1a, r0a = np.array(p0), np.array(p1), np.array(r0)
    add(
        T.PORTAL_VEIN,
        capsules_bbox(p0a, p1a, r0a),
        capsules_inside(p0a, p1a, r0a, np.array(r1)),
        1.0,
        {T.LIVER},
    )
    # Hepatic artery branches run beside the first portal generations.
    ha_off = rng.normal(0, 1, 3)
    ha_off = ha_off / np.linalg.norm(ha_off) * 5.0
    n_ha = min(len(p0), 6)
    ha_r = np.full(n_ha, 1.6)
    add(
        T.HEPATIC_ARTERY,
        capsules_bbox(p0a[:n_ha] + ha_off, p1a[:n_ha] + ha_off, ha_r),
        capsules_inside(p0a[:n_ha] + ha_off, p1a[:n_ha] + ha_off, ha_r, ha_r * 0.8),
        1.0,
        {T.LIVER},
    )

    # Hepatic veins: three trunks from the IVC at the dome, branching inferiorly and anteriorly.
    hv_root = np.array([ivc_x, ivc_y - 5, -u(12, 22)])
    hv_targets = [
        np.array([rl.centre[0] - rl_axes[0] * 0.5, rl.centre[1], rl.centre[2] - 15]),
        np.array([seg4.centre[0] + 10, seg4.centre[1], seg4.centre[2] - 10]),
        np.array([ll.centre[0], ll.centre[1] + 5, ll.centre[2]]),
    ]
    p0, p1, r0, r1 = _vessel_tree(rng, hv_root, hv_targets, u(5, 7), 2, liver_fn)
    p0a, p1a, r0a = np.array(p0), np.array(p1), np.array(r0)
    add(
        T.HEPATIC_VEIN,
        capsules_bbox(p0a, p1a, r0a),
        capsules_inside(p0a, p1a, r0a, np.array(r1)),
        1.0,
        {T.LIVER},
    )

    # IVC through the bare area of the liver: carved out of the liver mask.
    ivc = Cylinder(ivc_x, ivc_y, ivc_a, ivc_b, -400, 200)
    add(T.IVC, ivc.bbox(), ivc.inside, 0.5, {T.VISCERAL_FAT, T.LIVER, T.MUSCLE, T.PANCREAS}, env=-1)

    # Gallbladder in its fossa on the inferior surface of the liver (absent after cholecystectomy).
    if rng.random() < 0.85:
        gb = Ellipsoid.random(
            rng,
            (
                rl.centre[0] + rl_axes[0] * u(0.2, 0.5),
                rl.centre[1] - rl_axes[1] * u(0.5, 0.7),
                rl.centre[2] - rl_axes[2] * u(0.55, 0.8),
            ),
            (u(13, 20), u(14, 22), u(30, 45)),
            rotate_deg=25,
            bumps=0.02,
        )
        add(T.GALLBLADDER, gb.bbox(), gb.inside, 1.0, {T.LIVER, T.VISCERAL_FAT, T.PORTAL_VEIN}, env=-1)

    # Bowel loops in the lower abdomen: wall, then fluid or gas lumen.
    n_loops = int(rng.integers(14, 24))
    starts = np.column_stack(
        [
            rng.uniform(-0.7, 0.7, n_loops) * ac,
            rng.uniform(-0.6, 0.3, n_loops) * bc,
            rng.uniform(z_lo - 140, z_lo + 30, n_loops),
        ]
    )
    ends = starts + rng.normal(0, 30, (n_loops, 3))
    radii = rng.uniform(9, 18, n_loops)
    add(
        T.BOWEL_WALL,
        capsules_bbox(starts, ends, radii),
        capsules_inside(starts, ends, radii, radii),
        0.3,
        {T.VISCERAL_FAT},
    )
    gas = rng.random(n_loops) < 0.4
    for sel, lab in ((gas, T.BOWEL_GAS), (~gas, T.LUMEN_FLUID)):
        if sel.any():
            rr = radii[sel] - 3.0
            add(
                lab,
                capsules_bbox(starts[sel], ends[sel], rr),
                capsules_inside(starts[sel], ends[sel], rr, rr),
                0.3,
                {T.BOWEL_WALL},
            )

    if cirrhotic and rng.random() < 0.5:  # ascites around the liver and spleen
        rim = [p.scaled(1.12) for p in parts] + [sp.scaled(1.15)]
        add(T.ASCITES, union_bbox(rim), union_inside(rim), 1.0, {T.VISCERAL_FAT})

    # Lungs above the diaphragm domes; the domes move with the liver.
    r_apex = np.array([rl.centre[0], rl.centre[1] + 10, z_hi + 3])
    l_apex = np.array([sp.centre[0] - 20, sp.centre[1], max(sp.centre[2] + sp.axes[2], z_hi - u(5, 20)) + 3])
    curv = u(90, 140)

    def lung(x: np.ndarray, y: np.ndarray, z: np.ndarray) -> np.ndarray:
        zr = r_apex[2] - ((x - r_apex[0]) ** 2 + (y - r_apex[1]) ** 2 * 0.6) / (2 * curv)
        zl = l_apex[2] - ((x - l_apex[0]) ** 2 + (y - l_apex[1]) ** 2 * 0.6) / (2 * curv)
        return cavity.inside(x, y, z) & (z > np.maximum(zr, zl) + 6 * (y / bc))

    add(T.LUNG, ((-ac, -bc, z_hi - 160), (ac, bc, 200)), lung, 1.0, {T.VISCERAL_FAT})
    heart = Ellipsoid.random(
        rng,
        (u(5, 30), -bc * u(0.2, 0.4), z_hi + u(30, 55)),
        (u(50, 65), u(45, 55), u(40, 50)),
        rotate_deg=20,
        bumps=0.02,
    )
    add(T.HEART, heart.bbox(), heart.inside, 0.3, {T.LUNG, T.VISCERAL_FAT})

    return Anatomy(
        shapes=shapes,
        liver_parts=parts,
        z_range=(z_lo, z_hi),
        body=body,
        cirrhotic=cirrhotic,
        fatty=fatty,
        hilum=hilum,
        cavity=cavity,
        keep_out=[(ao_x, ao_y, ao_r), (ivc_x, ivc_y, max(ivc_a, ivc_b)), (0.0, yv, vr * 1.1 + 4.0)],
        notes={"body_width_mm": 2 * a_body, "body_ap_mm": 2 * b_body},
    )
