"""Structure sources for the training data: crystals and amorphous boxes, offline.

Every structure has a stable string id; :func:`build_structure` rebuilds it from the id
alone (no network, no files), so a manifest of ids is a complete record of a data set.

Sources (prefix of the id)
--------------------------
``ase:<El>``
    ase's reference crystal of an element (``ase.build.bulk``; molecular gases skipped).
``compound:<name>-<prototype>``
    Real binary and ternary compounds with experimental lattice parameters, built with
    ``ase.build.bulk`` prototypes (rock salt, zinc blende, wurtzite, CsCl, fluorite) or
    ``ase.spacegroup.crystal`` from Wyckoff positions (perovskite, rutile, corundum,
    spinel, layered chalcogenides, ...). Each one is checked against its space group.
``dcdft:<El>``
    ``ase.collections.dcdft``: the DFT-relaxed elemental solids of the Delta test.
``crystals:<name>``
    The CIF files shipped with the ``crystals`` package.
``pyxtal:<index>``
    A random crystal from pyxtal: space group and chemistry drawn from the index
    (deterministic), atoms on Wyckoff sites with a minimum distance.
``amorphous:<chemistry>:<seed>``
    A periodic cube packed at the measured density with pair-specific minimum
    distances (metallic glasses, covalent, oxide and molecular chemistries).
``vacuum``
    No atoms: the bare probe (for calibration and tests; never drawn).

Physically identical crystals from different sources (same reduced formula and space
group) are kept once, in the order above, so that a split by structure id is a split by
structure; pyxtal draws that land on a known (formula, space group) are redrawn.

Orientation and cutting
-----------------------
:func:`cut_box` returns an orthogonal ``L x L x T`` box (beam along +z) of the rotated
structure. Crystals are cut from the infinite rotated lattice; the lateral periodic
boundary of the box is therefore a seam (the probe is placed far from it). Amorphous
boxes are tiled from the cached cube with a random cube-symmetry operation and a random
periodic translation per tile, so no two tiles are alike.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import math
import warnings
from typing import Literal

import numpy as np

__all__ = [
    "Structure",
    "StructureInfo",
    "AMORPHOUS_CHEMISTRIES",
    "catalogue",
    "select_structures",
    "build_structure",
    "split_of",
    "stable_unit",
    "stable_unit_int",
    "random_rotation",
    "zone_axis_rotation",
    "cut_box",
    "ZONE_AXES",
]

Kind = Literal["crystal", "amorphous", "vacuum"]


def _require_ase():
    try:
        import ase  # noqa: F401
    except ImportError as err:  # pragma: no cover - depends on the environment
        raise ImportError("building structures needs ase: install the simulation extra, `pip install 'prenet-jax[simulate]'`") from err


# --------------------------------------------------------------------------------------
# ids, hashing and splits
# --------------------------------------------------------------------------------------


def stable_unit(text: str) -> float:
    """A number in ``[0, 1)`` that depends only on ``text`` (sha256; stable across runs and platforms)."""
    digest = hashlib.sha256(text.encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "big") / 2.0**64


def stable_unit_int(text: str) -> int:
    """A 32-bit integer that depends only on ``text`` (for seeding)."""
    return int(stable_unit(text) * 2**32)


def split_of(structure_id: str, fractions: tuple[float, float, float] = (0.8, 0.1, 0.1)) -> str:
    """``"train"``, ``"val"`` or ``"test"`` for a structure, by a hash of its id.

    The split depends on the id alone, so a structure keeps its split across runs,
    seeds and data-set sizes: patterns of one structure never leak between splits.
    """
    f = np.asarray(fractions, dtype=np.float64)
    if f.shape != (3,) or np.any(f < 0) or not math.isclose(float(f.sum()), 1.0, abs_tol=1e-6):
        raise ValueError(f"split fractions must be three non-negative numbers summing to 1 (train, val, test), got {fractions}")
    u = stable_unit("split:" + structure_id)
    if u < f[0]:
        return "train"
    if u < f[0] + f[1]:
        return "val"
    return "test"


@dataclasses.dataclass(frozen=True)
class StructureInfo:
    """One entry of the catalogue (cheap: nothing is built)."""

    id: str
    source: str
    kind: Kind


@dataclasses.dataclass
class Structure:
    """A built structure.

    Attributes
    ----------
    id : str
    kind : "crystal" or "amorphous"
    atoms : ase.Atoms
        Crystals: a unit cell (any shape). Amorphous: a periodic cube.
    formula : str
        Reduced chemical formula (amorphous: the nominal composition).
    spacegroup : int
        International number; 0 for amorphous.
    density : float
        g/cm^3 of the cell.
    """

    id: str
    kind: Kind
    atoms: object
    formula: str
    spacegroup: int
    density: float


# --------------------------------------------------------------------------------------
# real compounds (experimental room-temperature lattice parameters, Angstrom)
# --------------------------------------------------------------------------------------

# (formula as ase reads it, a)
_ROCKSALT = [
    ("LiF", 4.027),
    ("LiCl", 5.130),
    ("NaF", 4.634),
    ("NaCl", 5.640),
    ("NaBr", 5.977),
    ("KF", 5.347),
    ("KCl", 6.293),
    ("KBr", 6.600),
    ("KI", 7.066),
    ("RbCl", 6.581),
    ("AgCl", 5.549),
    ("AgBr", 5.774),
    ("MgO", 4.212),
    ("CaO", 4.811),
    ("SrO", 5.160),
    ("BaO", 5.523),
    ("NiO", 4.177),
    ("CoO", 4.261),
    ("FeO", 4.332),
    ("MnO", 4.445),
    ("CdO", 4.695),
    ("EuO", 5.144),
    ("TiN", 4.240),
    ("TiC", 4.328),
    ("ZrN", 4.578),
    ("ZrC", 4.698),
    ("HfC", 4.640),
    ("NbC", 4.470),
    ("TaC", 4.456),
    ("VN", 4.139),
    ("VC", 4.165),
    ("CrN", 4.149),
    ("ScN", 4.501),
    ("PbS", 5.936),
    ("PbSe", 6.124),
    ("PbTe", 6.462),
    ("SnTe", 6.327),
    ("LaN", 5.301),
]
_ZINCBLENDE = [
    ("GaAs", 5.653),
    ("GaP", 5.451),
    ("GaSb", 6.096),
    ("InP", 5.869),
    ("InAs", 6.058),
    ("InSb", 6.479),
    ("AlP", 5.467),
    ("AlAs", 5.661),
    ("AlSb", 6.136),
    ("ZnS", 5.409),
    ("ZnSe", 5.668),
    ("ZnTe", 6.101),
    ("CdTe", 6.482),
    ("CdSe", 6.052),
    ("BN", 3.615),
    ("BP", 4.538),
    ("SiC", 4.358),
    ("CuCl", 5.420),
    ("CuBr", 5.690),
    ("CuI", 6.054),
    ("HgTe", 6.460),
]
# (formula, a, c)
_WURTZITE = [
    ("GaN", 3.189, 5.185),
    ("AlN", 3.112, 4.982),
    ("InN", 3.545, 5.703),
    ("ZnO", 3.250, 5.207),
    ("CdS", 4.136, 6.714),
    ("CdSe", 4.300, 7.011),
    ("BeO", 2.698, 4.380),
    ("ZnS", 3.821, 6.257),
    ("SiC", 3.076, 5.048),
    ("AgI", 4.580, 7.494),
]
_CSCL = [
    ("CsCl", 4.123),
    ("CsBr", 4.286),
    ("CsI", 4.567),
    ("TlCl", 3.842),
    ("NiAl", 2.887),
    ("CuZn", 2.952),
    ("FeAl", 2.908),
    ("CoAl", 2.862),
    ("FeTi", 2.976),
    ("NiTi", 3.015),
]
# ase puts the first symbol on the Ca site: "OLi2" is the anti-fluorite Li2O.
_FLUORITE = [
    ("CaF2", 5.463),
    ("SrF2", 5.800),
    ("BaF2", 6.200),
    ("CeO2", 5.411),
    ("ZrO2", 5.070),
    ("UO2", 5.470),
    ("ThO2", 5.597),
    ("HfO2", 5.080),
    ("OLi2", 4.611),
    ("ONa2", 5.550),
    ("SiMg2", 6.351),
    ("CoSi2", 5.365),
    ("NiSi2", 5.406),
    ("PtAl2", 5.910),
]
# ase.spacegroup.crystal entries: name -> (symbols, basis, spacegroup, cellpar, setting)
_SPACEGROUP = {
    # cubic perovskites ABX3, Pm-3m: A 1a, B 1b, X 3c
    "SrTiO3-perovskite": (["Sr", "Ti", "O"], [(0, 0, 0), (0.5, 0.5, 0.5), (0.5, 0.5, 0)], 221, [3.905] * 3 + [90] * 3, 1),
    "KTaO3-perovskite": (["K", "Ta", "O"], [(0, 0, 0), (0.5, 0.5, 0.5), (0.5, 0.5, 0)], 221, [3.989] * 3 + [90] * 3, 1),
    "BaZrO3-perovskite": (["Ba", "Zr", "O"], [(0, 0, 0), (0.5, 0.5, 0.5), (0.5, 0.5, 0)], 221, [4.193] * 3 + [90] * 3, 1),
    "BaSnO3-perovskite": (["Ba", "Sn", "O"], [(0, 0, 0), (0.5, 0.5, 0.5), (0.5, 0.5, 0)], 221, [4.116] * 3 + [90] * 3, 1),
    "SrVO3-perovskite": (["Sr", "V", "O"], [(0, 0, 0), (0.5, 0.5, 0.5), (0.5, 0.5, 0)], 221, [3.842] * 3 + [90] * 3, 1),
    "KMgF3-perovskite": (["K", "Mg", "F"], [(0, 0, 0), (0.5, 0.5, 0.5), (0.5, 0.5, 0)], 221, [3.989] * 3 + [90] * 3, 1),
    "CsPbBr3-perovskite": (["Cs", "Pb", "Br"], [(0, 0, 0), (0.5, 0.5, 0.5), (0.5, 0.5, 0)], 221, [5.874] * 3 + [90] * 3, 1),
    # rutile MO2, P4_2/mnm: M 2a, O 4f (u, u, 0)
    "TiO2-rutile": (["Ti", "O"], [(0, 0, 0), (0.3049, 0.3049, 0)], 136, [4.594, 4.594, 2.959, 90, 90, 90], 1),
    "SnO2-rutile": (["Sn", "O"], [(0, 0, 0), (0.3071, 0.3071, 0)], 136, [4.737, 4.737, 3.186, 90, 90, 90], 1),
    "RuO2-rutile": (["Ru", "O"], [(0, 0, 0), (0.3058, 0.3058, 0)], 136, [4.492, 4.492, 3.106, 90, 90, 90], 1),
    "IrO2-rutile": (["Ir", "O"], [(0, 0, 0), (0.3080, 0.3080, 0)], 136, [4.498, 4.498, 3.154, 90, 90, 90], 1),
    "GeO2-rutile": (["Ge", "O"], [(0, 0, 0), (0.3062, 0.3062, 0)], 136, [4.397, 4.397, 2.862, 90, 90, 90], 1),
    "MnO2-rutile": (["Mn", "O"], [(0, 0, 0), (0.3047, 0.3047, 0)], 136, [4.398, 4.398, 2.873, 90, 90, 90], 1),
    "CrO2-rutile": (["Cr", "O"], [(0, 0, 0), (0.3030, 0.3030, 0)], 136, [4.421, 4.421, 2.917, 90, 90, 90], 1),
    # anatase TiO2, I4_1/amd origin choice 1
    "TiO2-anatase": (["Ti", "O"], [(0, 0, 0), (0, 0, 0.2081)], 141, [3.785, 3.785, 9.514, 90, 90, 90], 1),
    # corundum M2O3, R-3c hexagonal axes: M 12c (0, 0, z), O 18e (x, 0, 1/4)
    "Al2O3-corundum": (["Al", "O"], [(0, 0, 0.3523), (0.3064, 0, 0.25)], 167, [4.759, 4.759, 12.991, 90, 90, 120], 1),
    "Fe2O3-corundum": (["Fe", "O"], [(0, 0, 0.3553), (0.3059, 0, 0.25)], 167, [5.035, 5.035, 13.747, 90, 90, 120], 1),
    "Cr2O3-corundum": (["Cr", "O"], [(0, 0, 0.3475), (0.3058, 0, 0.25)], 167, [4.959, 4.959, 13.594, 90, 90, 120], 1),
    # spinels AB2O4, Fd-3m origin choice 2: A 8a, B 16d, O 32e (u, u, u)
    "MgAl2O4-spinel": (
        ["Mg", "Al", "O"],
        [(0.125, 0.125, 0.125), (0.5, 0.5, 0.5), (0.2624, 0.2624, 0.2624)],
        227,
        [8.083] * 3 + [90] * 3,
        2,
    ),
    "Fe3O4-spinel": (["Fe", "Fe", "O"], [(0.125, 0.125, 0.125), (0.5, 0.5, 0.5), (0.2549, 0.2549, 0.2549)], 227, [8.396] * 3 + [90] * 3, 2),
    "Co3O4-spinel": (["Co", "Co", "O"], [(0.125, 0.125, 0.125), (0.5, 0.5, 0.5), (0.2632, 0.2632, 0.2632)], 227, [8.084] * 3 + [90] * 3, 2),
    # C15 Laves MgCu2 (Fd-3m origin 2: Mg 8a, Cu 16d)
    "MgCu2-laves": (["Mg", "Cu"], [(0.125, 0.125, 0.125), (0.5, 0.5, 0.5)], 227, [7.048] * 3 + [90] * 3, 2),
    # cuprite Cu2O, Pn-3m origin choice 2: Cu 4b, O 2a
    "Cu2O-cuprite": (["Cu", "O"], [(0, 0, 0), (0.25, 0.25, 0.25)], 224, [4.269] * 3 + [90] * 3, 2),
    # pyrite FeS2, Pa-3: Fe 4a, S 8c (u, u, u)
    "FeS2-pyrite": (["Fe", "S"], [(0, 0, 0), (0.385, 0.385, 0.385)], 205, [5.418] * 3 + [90] * 3, 1),
    # L1_2 ordered alloys, Pm-3m: B 1a, A 3c
    "Cu3Au-L12": (["Au", "Cu"], [(0, 0, 0), (0, 0.5, 0.5)], 221, [3.749] * 3 + [90] * 3, 1),
    "Ni3Al-L12": (["Al", "Ni"], [(0, 0, 0), (0, 0.5, 0.5)], 221, [3.572] * 3 + [90] * 3, 1),
    # L1_0 FePt / CuAu in the primitive tetragonal cell, P4/mmm
    "FePt-L10": (["Pt", "Fe"], [(0, 0, 0), (0.5, 0.5, 0.5)], 123, [2.725, 2.725, 3.713, 90, 90, 90], 1),
    "CuAu-L10": (["Au", "Cu"], [(0, 0, 0), (0.5, 0.5, 0.5)], 123, [2.803, 2.803, 3.670, 90, 90, 90], 1),
    # A15 Nb3Sn, Pm-3n: Sn 2a, Nb 6c
    "Nb3Sn-A15": (["Sn", "Nb"], [(0, 0, 0), (0.25, 0, 0.5)], 223, [5.289] * 3 + [90] * 3, 1),
    # L2_1 Heusler Cu2MnAl, Fm-3m: Al 4a, Mn 4b, Cu 8c
    "Cu2MnAl-heusler": (["Al", "Mn", "Cu"], [(0, 0, 0), (0.5, 0.5, 0.5), (0.25, 0.25, 0.25)], 225, [5.949] * 3 + [90] * 3, 1),
    # hexagonal layered and NiAs-type, P6_3/mmc
    "C-graphite": (["C", "C"], [(0, 0, 0.25), (1 / 3, 2 / 3, 0.25)], 194, [2.464, 2.464, 6.711, 90, 90, 120], 1),
    "BN-hexagonal": (["B", "N"], [(1 / 3, 2 / 3, 0.25), (2 / 3, 1 / 3, 0.25)], 194, [2.504, 2.504, 6.661, 90, 90, 120], 1),
    "MoS2-2H": (["Mo", "S"], [(1 / 3, 2 / 3, 0.25), (1 / 3, 2 / 3, 0.621)], 194, [3.160, 3.160, 12.294, 90, 90, 120], 1),
    "WS2-2H": (["W", "S"], [(1 / 3, 2 / 3, 0.25), (1 / 3, 2 / 3, 0.622)], 194, [3.153, 3.153, 12.323, 90, 90, 120], 1),
    "MoSe2-2H": (["Mo", "Se"], [(1 / 3, 2 / 3, 0.25), (1 / 3, 2 / 3, 0.621)], 194, [3.288, 3.288, 12.920, 90, 90, 120], 1),
    "WSe2-2H": (["W", "Se"], [(1 / 3, 2 / 3, 0.25), (1 / 3, 2 / 3, 0.621)], 194, [3.282, 3.282, 12.960, 90, 90, 120], 1),
    "NiAs-nickeline": (["Ni", "As"], [(0, 0, 0), (1 / 3, 2 / 3, 0.25)], 194, [3.619, 3.619, 5.034, 90, 90, 120], 1),
    # CdI2-type TiS2, P-3m1
    "TiS2-CdI2": (["Ti", "S"], [(0, 0, 0), (1 / 3, 2 / 3, 0.25)], 164, [3.407, 3.407, 5.695, 90, 90, 120], 1),
    # tetradymites, R-3m hexagonal axes
    "Bi2Se3-tetradymite": (["Bi", "Se", "Se"], [(0, 0, 0.4008), (0, 0, 0), (0, 0, 0.2117)], 166, [4.143, 4.143, 28.636, 90, 90, 120], 1),
    "Bi2Te3-tetradymite": (["Bi", "Te", "Te"], [(0, 0, 0.4001), (0, 0, 0), (0, 0, 0.2095)], 166, [4.386, 4.386, 30.497, 90, 90, 120], 1),
    # alpha-quartz, P3_221 (Levien et al. 1980)
    "SiO2-quartz": (["Si", "O"], [(0.4697, 0, 0), (0.4135, 0.2669, 0.1191)], 154, [4.913, 4.913, 5.405, 90, 90, 120], 1),
    # monoclinic zirconia (baddeleyite), P2_1/c (Howard et al. 1988)
    "ZrO2-baddeleyite": (
        ["Zr", "O", "O"],
        [(0.2754, 0.0395, 0.2083), (0.0700, 0.3317, 0.3447), (0.4496, 0.7569, 0.4792)],
        14,
        [5.1505, 5.2116, 5.3173, 90, 99.23, 90],
        1,
    ),
}


def _compound_table() -> dict[str, tuple]:
    """name -> builder spec for every curated compound (order is part of the catalogue)."""
    table: dict[str, tuple] = {}
    for formula, a in _ROCKSALT:
        table[f"{formula}-rocksalt"] = ("bulk", formula, "rocksalt", dict(a=a))
    for formula, a in _ZINCBLENDE:
        table[f"{formula}-zincblende"] = ("bulk", formula, "zincblende", dict(a=a))
    for formula, a, c in _WURTZITE:
        table[f"{formula}-wurtzite"] = ("bulk", formula, "wurtzite", dict(a=a, c=c))
    for formula, a in _CSCL:
        table[f"{formula}-cesiumchloride"] = ("bulk", formula, "cesiumchloride", dict(a=a))
    for formula, a in _FLUORITE:
        table[f"{formula}-fluorite"] = ("bulk", formula, "fluorite", dict(a=a))
    for name, spec in _SPACEGROUP.items():
        table[name] = ("spacegroup",) + spec
    return table


# --------------------------------------------------------------------------------------
# amorphous chemistries
# --------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class AmorphousChemistry:
    """Composition (atom fractions), density (g/cm^3) and minimum-distance rule.

    ``anions`` are the network formers' partners (O, N): cation-anion pairs may come as
    close as ``bond_factor`` x the sum of covalent radii; cation-cation pairs sit across an
    anion, so no closer than ``cation_ratio`` x the mean of their two cation-anion
    distances; anion-anion pairs no closer than ``anion_distance``.
    Without anions every pair uses ``metal_factor`` x the sum of covalent radii.
    ``molecule`` (water) packs molecules by their centre and adds the hydrogens.
    """

    name: str
    composition: tuple[tuple[str, float], ...]
    density: float
    category: str
    metal_factor: float = 0.85
    anions: tuple[str, ...] = ()
    bond_factor: float = 0.88
    cation_ratio: float = 1.6
    anion_distance: float = 2.45
    molecule: str | None = None


AMORPHOUS_CHEMISTRIES: tuple[AmorphousChemistry, ...] = (
    # metallic glasses (densities from the literature, room temperature)
    AmorphousChemistry("Cu50Zr50", (("Cu", 0.50), ("Zr", 0.50)), 7.45, "metallic glass"),
    AmorphousChemistry("Cu64Zr36", (("Cu", 0.64), ("Zr", 0.36)), 7.95, "metallic glass"),
    AmorphousChemistry("Cu46Zr46Al8", (("Cu", 0.46), ("Zr", 0.46), ("Al", 0.08)), 7.05, "metallic glass"),
    AmorphousChemistry("Pd40Ni40P20", (("Pd", 0.40), ("Ni", 0.40), ("P", 0.20)), 9.35, "metallic glass"),
    AmorphousChemistry("Vit1", (("Zr", 0.412), ("Ti", 0.138), ("Cu", 0.125), ("Ni", 0.10), ("Be", 0.225)), 6.11, "metallic glass"),
    AmorphousChemistry("Fe80B20", (("Fe", 0.80), ("B", 0.20)), 7.40, "metallic glass"),
    AmorphousChemistry("Ni80P20", (("Ni", 0.80), ("P", 0.20)), 7.90, "metallic glass"),
    AmorphousChemistry("Mg65Cu25Y10", (("Mg", 0.65), ("Cu", 0.25), ("Y", 0.10)), 3.95, "metallic glass"),
    AmorphousChemistry("Pt57Cu15Ni5P23", (("Pt", 0.575), ("Cu", 0.147), ("Ni", 0.053), ("P", 0.225)), 15.0, "metallic glass"),
    # covalent
    AmorphousChemistry("a-Si", (("Si", 1.0),), 2.28, "covalent", metal_factor=0.95),
    AmorphousChemistry("a-Ge", (("Ge", 1.0),), 5.10, "covalent", metal_factor=0.95),
    AmorphousChemistry("a-C", (("C", 1.0),), 2.00, "covalent", metal_factor=0.92),
    AmorphousChemistry("ta-C", (("C", 1.0),), 3.10, "covalent", metal_factor=0.92),
    AmorphousChemistry("a-Se", (("Se", 1.0),), 4.28, "covalent", metal_factor=0.95),
    AmorphousChemistry("a-GST225", (("Ge", 2 / 9), ("Sb", 2 / 9), ("Te", 5 / 9)), 5.87, "covalent", metal_factor=0.95),
    AmorphousChemistry("a-Si3N4", (("Si", 3 / 7), ("N", 4 / 7)), 3.00, "covalent", anions=("N",), anion_distance=2.6),
    # oxides
    AmorphousChemistry("a-SiO2", (("Si", 1 / 3), ("O", 2 / 3)), 2.20, "oxide", anions=("O",)),
    AmorphousChemistry("a-GeO2", (("Ge", 1 / 3), ("O", 2 / 3)), 3.66, "oxide", anions=("O",)),
    AmorphousChemistry("a-Al2O3", (("Al", 0.4), ("O", 0.6)), 3.05, "oxide", anions=("O",)),
    AmorphousChemistry("a-TiO2", (("Ti", 1 / 3), ("O", 2 / 3)), 3.80, "oxide", anions=("O",)),
    AmorphousChemistry("a-HfO2", (("Hf", 1 / 3), ("O", 2 / 3)), 9.20, "oxide", anions=("O",)),
    AmorphousChemistry("a-Ta2O5", (("Ta", 2 / 7), ("O", 5 / 7)), 7.80, "oxide", anions=("O",)),
    # molecular: vitreous ice (the matrix of cryo samples)
    AmorphousChemistry("vitreous-ice", (("O", 1 / 3), ("H", 2 / 3)), 0.94, "molecular", molecule="H2O"),
)
_CHEMISTRY_BY_NAME = {c.name: c for c in AMORPHOUS_CHEMISTRIES}
AMORPHOUS_CUBE = 36.0  # Angstrom: side of the periodic amorphous cube (about 2,000-8,000 atoms)


# --------------------------------------------------------------------------------------
# pyxtal random crystals
# --------------------------------------------------------------------------------------

_CATIONS = ("Li Na K Mg Ca Sr Ba Sc Y La Ti Zr Hf V Nb Ta Cr Mo W Mn Fe Co Ni Cu Zn Cd Al Ga In Sn Pb Bi Ce").split()
_ANIONS = "O O O N S Se F Cl C P".split()  # O weighted: oxides dominate real samples
_METALS = "Al Ti V Cr Mn Fe Co Ni Cu Zn Zr Nb Mo Ru Rh Pd Ag Hf Ta W Re Os Ir Pt Au Mg Si Ge".split()
# stoichiometry templates: (number of cation species, counts per formula unit)
_TEMPLATES = (
    ("A", (1,)),
    ("AX", (1, 1)),
    ("AX2", (1, 2)),
    ("A2X3", (2, 3)),
    ("AX3", (1, 3)),
    ("A2X", (2, 1)),
    ("ABX3", (1, 1, 3)),
    ("AB2X4", (1, 2, 4)),
    ("ABX2", (1, 1, 2)),
    ("AB", (1, 1)),
    ("A3B", (3, 1)),
    ("AB2", (1, 2)),
)


@functools.lru_cache(maxsize=1)
def _space_group_weights() -> np.ndarray:
    """Weights over space groups 1..230 that favour the ones common in real crystals.

    Real inorganic crystals crowd into a few groups (P2_1/c, Fm-3m, Pnma, C2/c, P6_3/mmc,
    Fd-3m, ...); a uniform draw over 230 would be mostly exotic ones. Every group keeps
    a floor weight so that any space group is reachable.
    """
    w = np.ones(230)
    common = {
        14: 12,
        62: 10,
        225: 10,
        15: 6,
        194: 8,
        227: 6,
        221: 6,
        2: 6,
        166: 6,
        12: 5,
        139: 5,
        63: 4,
        167: 4,
        136: 4,
        61: 3,
        191: 3,
        216: 4,
        186: 4,
        164: 3,
        148: 3,
        229: 4,
        123: 3,
        140: 3,
        141: 3,
        65: 2,
        71: 2,
        74: 2,
        176: 2,
        152: 2,
        154: 2,
    }
    for g, k in common.items():
        w[g - 1] = 1.0 + 4.0 * k
    return w / w.sum()


# --------------------------------------------------------------------------------------
# catalogue
# --------------------------------------------------------------------------------------


def _reduced_formula(atoms) -> str:
    return atoms.get_chemical_formula(mode="metal", empirical=True)


def _spacegroup_number(atoms, symprec: float = 1e-3) -> int:
    import spglib

    cell = (np.asarray(atoms.cell), atoms.get_scaled_positions(), atoms.numbers)
    try:
        with warnings.catch_warnings():  # spglib >= 2.5 warns about its old error handling on every call
            warnings.simplefilter("ignore", DeprecationWarning)
            ds = spglib.get_symmetry_dataset(cell, symprec=symprec)
    except Exception:  # spglib's new-style error for a cell it cannot analyse: call it P1
        return 1
    return int(ds.number) if ds is not None else 1


def _density(atoms) -> float:
    return float(atoms.get_masses().sum() / atoms.get_volume() * 1.66053906660)


def _build_deterministic(structure_id: str):
    """ase.Atoms of a deterministic (non-random) crystal id."""
    _require_ase()
    import ase.build

    source, _, name = structure_id.partition(":")
    if source == "ase":
        return ase.build.bulk(name)
    if source == "dcdft":
        from ase.collections import dcdft

        return dcdft[name]
    if source == "crystals":
        import crystals

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            cryst = crystals.Crystal.from_database(name)
            atoms = cryst.to_ase()
        atoms.pbc = True
        return atoms
    if source == "compound":
        spec = _compound_table().get(name)
        if spec is None:
            raise ValueError(f"unknown compound {name!r}: see prenet_jax.data._structures._compound_table()")
        if spec[0] == "bulk":
            _, formula, proto, kw = spec
            return ase.build.bulk(formula, proto, **kw)
        from ase.spacegroup import crystal

        _, symbols, basis, sg, cellpar, setting = spec
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return crystal(symbols, basis=basis, spacegroup=sg, cellpar=cellpar, setting=setting)
    raise ValueError(f"{structure_id!r} is not a deterministic crystal id")


def _deterministic_ids() -> list[tuple[str, str]]:
    """(id, source) of every deterministic crystal candidate, in priority order."""
    _require_ase()
    from ase.collections import dcdft
    from ase.data import chemical_symbols, reference_states

    out: list[tuple[str, str]] = []
    for z, ref in enumerate(reference_states):
        if ref and ref.get("symmetry") not in (None, "diatom", "atom") and z > 0:
            out.append((f"ase:{chemical_symbols[z]}", "ase"))
    out += [(f"compound:{name}", "compound") for name in _compound_table()]
    out += [(f"dcdft:{name}", "dcdft") for name in dcdft.names]
    try:
        import crystals

        out += [(f"crystals:{name}", "crystals") for name in sorted(crystals.Crystal.builtins)]
    except ImportError:  # optional source
        pass
    return out


@functools.lru_cache(maxsize=1)
def _deterministic_catalogue() -> tuple[tuple[StructureInfo, ...], frozenset]:
    """Deduplicated deterministic crystals and the set of their (formula, space group) keys."""
    keep: list[StructureInfo] = []
    seen: set[tuple[str, int]] = set()
    for sid, source in _deterministic_ids():
        try:
            atoms = _build_deterministic(sid)
        except Exception:  # a broken entry of a third-party collection: skip, never fail the catalogue
            continue
        if len(atoms) == 0 or len(atoms) > 500:
            continue
        key = (_reduced_formula(atoms), _spacegroup_number(atoms))
        if key in seen:
            continue
        seen.add(key)
        keep.append(StructureInfo(sid, source, "crystal"))
    return tuple(keep), frozenset(seen)


def catalogue(n_pyxtal: int = 2000, n_amorphous_seeds: int = 20) -> list[StructureInfo]:
    """Every reachable structure (deterministic crystals, then amorphous, then pyxtal).

    Nothing random is built here except the deterministic crystals (once per process,
    a few seconds), so listing is cheap. With the defaults about 2,700 structures.
    """
    det, _ = _deterministic_catalogue()
    amorphous = [
        StructureInfo(f"amorphous:{c.name}:{s:03d}", "amorphous", "amorphous")
        for s in range(n_amorphous_seeds)
        for c in AMORPHOUS_CHEMISTRIES
    ]
    pyx = [StructureInfo(f"pyxtal:{i:05d}", "pyxtal", "crystal") for i in range(n_pyxtal)]
    return list(det) + amorphous + pyx


def select_structures(n: int, seed: int = 0, amorphous_fraction: float = 0.1) -> list[str]:
    """``n`` distinct structure ids: about ``amorphous_fraction`` amorphous, the rest crystals.

    Real crystals come first (a seeded random subset when there are more than needed),
    pyxtal random crystals fill the rest; amorphous boxes cycle through the chemistries
    (seed 0 of every chemistry before seed 1 of any). The returned order is shuffled by
    ``seed`` so that any prefix of tasks mixes sources.
    """
    if n < 1:
        raise ValueError(f"need at least one structure, got n={n}")
    if not 0.0 <= amorphous_fraction <= 1.0:
        raise ValueError(f"amorphous_fraction must be in [0, 1], got {amorphous_fraction}")
    rng = np.random.default_rng(np.random.SeedSequence([seed, 0x5EED]))
    n_amorphous = int(round(n * amorphous_fraction))
    n_crystal = n - n_amorphous
    det, _ = _deterministic_catalogue()
    det_ids = [s.id for s in det]
    if n_crystal <= len(det_ids):
        crystal_ids = [det_ids[i] for i in sorted(rng.choice(len(det_ids), n_crystal, replace=False))]
    else:
        crystal_ids = det_ids + [f"pyxtal:{i:05d}" for i in range(n_crystal - len(det_ids))]
    chems = [c.name for c in AMORPHOUS_CHEMISTRIES]
    amorphous_ids = [f"amorphous:{chems[i % len(chems)]}:{i // len(chems):03d}" for i in range(n_amorphous)]
    ids = crystal_ids + amorphous_ids
    return [ids[i] for i in rng.permutation(len(ids))]


# --------------------------------------------------------------------------------------
# building
# --------------------------------------------------------------------------------------


def _build_pyxtal(index: int):
    """Deterministic random crystal number ``index`` (a fixed sequence of seeded attempts)."""
    try:
        from pyxtal import pyxtal
    except ImportError as err:  # pragma: no cover - depends on the environment
        raise ImportError("pyxtal random crystals need pyxtal: `pip install 'prenet-jax[simulate]'`") from err
    _, known = _deterministic_catalogue()
    weights = _space_group_weights()
    for attempt in range(200):
        rng = np.random.default_rng(np.random.SeedSequence([index, attempt, 0xC0FFEE]))
        group = int(rng.choice(230, p=weights)) + 1
        name, counts = _TEMPLATES[rng.integers(len(_TEMPLATES))]
        if name in ("AB", "A3B", "AB2", "A"):
            species = list(rng.choice(_METALS, size=len(counts), replace=False))
        else:
            cations = list(rng.choice(_CATIONS, size=len(counts) - 1, replace=False))
            anion = str(rng.choice(_ANIONS))
            if anion in cations:
                continue
            species = cations + [anion]
        z = int(rng.choice([1, 2, 4, 8]))
        num = [int(c * z) for c in counts]
        if sum(num) > 120:
            continue
        crystal = pyxtal()
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                crystal.from_random(3, group, [str(s) for s in species], num, factor=1.0, random_state=int(rng.integers(2**31)))
        except Exception:  # incompatible Wyckoff multiplicities or no room: next attempt
            continue
        if not crystal.valid:
            continue
        atoms = crystal.to_ase()
        atoms.pbc = True
        # No near-degenerate cells (a needle of a cell makes a meaningless cut).
        lengths = atoms.cell.lengths()
        if lengths.min() < 2.0 or lengths.max() / lengths.min() > 8.0:
            continue
        if (_reduced_formula(atoms), _spacegroup_number(atoms)) in known:
            continue
        return atoms, group
    raise RuntimeError(f"pyxtal found no valid crystal for index {index} in 200 attempts")


def _pair_distances(chem: AmorphousChemistry, symbols: list[str]) -> np.ndarray:
    from ase.data import atomic_numbers, covalent_radii

    r = np.array([covalent_radii[atomic_numbers[s]] for s in symbols])
    anion = np.array([s in chem.anions for s in symbols])
    d = chem.metal_factor * (r[:, None] + r[None, :])
    if chem.anions:
        cat = ~anion
        r_anion = float(np.mean(r[anion]))
        bond = chem.bond_factor * (r + r_anion)  # each cation's distance to an anion
        d = np.where(cat[:, None] & cat[None, :], chem.cation_ratio * 0.5 * (bond[:, None] + bond[None, :]), d)
        d = np.where(cat[:, None] ^ cat[None, :], chem.bond_factor * (r[:, None] + r[None, :]), d)
        d = np.where(anion[:, None] & anion[None, :], chem.anion_distance, d)
    return d


def _relax_packing(pos: np.ndarray, types: np.ndarray, dmat: np.ndarray, box: float, iterations: int = 400) -> np.ndarray:
    """Push overlapping pairs apart until every pair respects its minimum distance.

    Starts from any positions (random) in a periodic cube; each sweep moves both atoms
    of every overlapping pair apart by half the overlap (plus 5 % to converge), which is
    a steepest descent on a soft-sphere repulsion. Stops when no pair is closer than 98 %
    of its distance.
    """
    from scipy.spatial import cKDTree

    dmax = float(dmat.max())
    for _ in range(iterations):
        tree = cKDTree(pos, boxsize=box)
        pairs = tree.query_pairs(dmax, output_type="ndarray")
        if len(pairs) == 0:
            break
        i, j = pairs[:, 0], pairs[:, 1]
        d = pos[j] - pos[i]
        d -= box * np.round(d / box)
        r = np.linalg.norm(d, axis=1)
        need = dmat[types[i], types[j]]
        over = need - r
        bad = over > 0.02 * need
        if not bad.any():
            break
        over = np.where(over > 0, over, 0.0)
        u = d / np.maximum(r, 1e-6)[:, None]
        step = 0.525 * over[:, None] * u
        disp = np.zeros_like(pos)
        np.add.at(disp, i, -step)
        np.add.at(disp, j, step)
        pos = np.mod(pos + disp, box)
    return pos


@functools.lru_cache(maxsize=8)
def _amorphous_cube(chemistry: str, seed: int):
    """The periodic amorphous cube of one chemistry and seed (cached: about 1 s to build)."""
    _require_ase()
    from ase import Atoms
    from ase.data import atomic_masses, atomic_numbers

    chem = _CHEMISTRY_BY_NAME.get(chemistry)
    if chem is None:
        raise ValueError(f"unknown amorphous chemistry {chemistry!r}; known: {sorted(_CHEMISTRY_BY_NAME)}")
    rng = np.random.default_rng(np.random.SeedSequence([seed, stable_unit_int(chemistry)]))
    box = AMORPHOUS_CUBE
    symbols = [s for s, _ in chem.composition]
    frac = np.array([f for _, f in chem.composition])
    mean_mass = float(sum(f * atomic_masses[atomic_numbers[s]] for s, f in chem.composition))
    n_total = int(round(chem.density / 1.66053906660 / mean_mass * box**3))
    if chem.molecule == "H2O":
        # Pack oxygens (O-O >= 2.6 A, the hydrogen-bonded distance), then put two H at
        # 0.96 A and 104.5 degrees in a random orientation on each.
        n_mol = n_total // 3
        pos = _relax_packing(rng.random((n_mol, 3)) * box, np.zeros(n_mol, int), np.array([[2.6]]), box)
        half = math.radians(104.5) / 2
        local = 0.9572 * np.array([[math.sin(half), 0, math.cos(half)], [-math.sin(half), 0, math.cos(half)]])
        from scipy.spatial.transform import Rotation

        rot = Rotation.random(n_mol, random_state=rng).as_matrix()  # (n, 3, 3)
        hpos = pos[:, None, :] + np.einsum("nij,kj->nki", rot, local)
        positions = np.concatenate([pos, hpos.reshape(-1, 3)])
        numbers = [8] * n_mol + [1] * (2 * n_mol)
        atoms = Atoms(numbers=numbers, positions=np.mod(positions, box), cell=[box] * 3, pbc=True)
        return atoms
    counts = np.floor(frac * n_total).astype(int)
    counts[np.argmax(frac)] += n_total - counts.sum()
    types = np.repeat(np.arange(len(symbols)), counts)
    rng.shuffle(types)
    pos = _relax_packing(rng.random((n_total, 3)) * box, types, _pair_distances(chem, symbols), box)
    return Atoms(symbols=[symbols[t] for t in types], positions=pos, cell=[box] * 3, pbc=True)


@functools.lru_cache(maxsize=64)
def build_structure(structure_id: str) -> Structure:
    """Build the structure of an id (see the module docstring for the id forms).

    Raises
    ------
    ValueError
        For an id that names no known source or entry.
    """
    _require_ase()
    source, _, rest = structure_id.partition(":")
    if structure_id == "vacuum":
        from ase import Atoms

        return Structure("vacuum", "vacuum", Atoms(cell=np.eye(3), pbc=True), "", 0, 0.0)
    if source == "amorphous":
        chemistry, _, seed = rest.rpartition(":")
        if not chemistry or not seed.isdigit():
            raise ValueError(f"amorphous ids look like 'amorphous:Cu50Zr50:003', got {structure_id!r}")
        atoms = _amorphous_cube(chemistry, int(seed))
        formula = "".join(f"{s}{f:.3g}" for s, f in _CHEMISTRY_BY_NAME[chemistry].composition)
        return Structure(structure_id, "amorphous", atoms, formula, 0, _density(atoms))
    if source == "pyxtal":
        if not rest.isdigit():
            raise ValueError(f"pyxtal ids look like 'pyxtal:00042', got {structure_id!r}")
        atoms, _ = _build_pyxtal(int(rest))
    elif source in ("ase", "dcdft", "crystals", "compound"):
        atoms = _build_deterministic(structure_id)
    else:
        raise ValueError(
            f"unknown structure source {source!r} in {structure_id!r}: use ase, compound, dcdft, crystals, pyxtal, amorphous or vacuum"
        )
    return Structure(structure_id, "crystal", atoms, _reduced_formula(atoms), _spacegroup_number(atoms), _density(atoms))


# --------------------------------------------------------------------------------------
# orientation and cutting
# --------------------------------------------------------------------------------------

# Low-index zone axes [uvw] (direct-lattice directions), one of each +/- pair.
ZONE_AXES: tuple[tuple[int, int, int], ...] = (
    (0, 0, 1),
    (0, 1, 0),
    (1, 0, 0),
    (0, 1, 1),
    (1, 0, 1),
    (1, 1, 0),
    (0, 1, -1),
    (1, 0, -1),
    (1, -1, 0),
    (1, 1, 1),
    (1, 1, -1),
    (1, -1, 1),
    (-1, 1, 1),
    (1, 1, 2),
    (1, 2, 1),
    (2, 1, 1),
    (0, 1, 2),
    (1, 0, 2),
    (2, 1, 0),
    (0, 1, 3),
    (1, 1, 3),
    (1, 1, 4),
)


def random_rotation(rng: np.random.Generator) -> np.ndarray:
    """A rotation matrix drawn uniformly from SO(3) (acts on column vectors, lab = R @ crystal)."""
    from scipy.spatial.transform import Rotation

    return Rotation.random(random_state=rng).as_matrix()


def _rotation_z(phi: float) -> np.ndarray:
    c, s = math.cos(phi), math.sin(phi)
    return np.array([[c, -s, 0.0], [s, c, 0.0], [0.0, 0.0, 1.0]])


def zone_axis_rotation(cell: np.ndarray, uvw, inplane: float = 0.0, tilt: float = 0.0, tilt_azimuth: float = 0.0) -> np.ndarray:
    """Rotation that puts the direct-lattice direction ``uvw`` along +z (the beam).

    Parameters
    ----------
    cell : (3, 3) lattice vectors as rows (ase convention)
    uvw : (3,) zone-axis indices
    inplane : rotation about the beam afterwards (radians)
    tilt, tilt_azimuth : a small mistilt off the zone axis (radians) and its direction
    """
    d = np.asarray(uvw, dtype=np.float64) @ np.asarray(cell, dtype=np.float64)
    d /= np.linalg.norm(d)
    z = np.array([0.0, 0.0, 1.0])
    v = np.cross(d, z)
    s, c = np.linalg.norm(v), float(d @ z)
    if s < 1e-12:
        align = np.eye(3) if c > 0 else np.diag([1.0, -1.0, -1.0])
    else:
        k = v / s
        kx = np.array([[0, -k[2], k[1]], [k[2], 0, -k[0]], [-k[1], k[0], 0]])
        align = np.eye(3) + s * kx + (1 - c) * kx @ kx
    if tilt:
        axis = np.array([math.cos(tilt_azimuth), math.sin(tilt_azimuth), 0.0])
        kx = np.array([[0, -axis[2], axis[1]], [axis[2], 0, -axis[0]], [-axis[1], axis[0], 0]])
        tilt_m = np.eye(3) + math.sin(tilt) * kx + (1 - math.cos(tilt)) * kx @ kx
        align = tilt_m @ align
    return _rotation_z(inplane) @ align


def _cut_crystal(atoms, rotation: np.ndarray, box: np.ndarray, origin_frac: np.ndarray, max_atoms: int):
    """Atoms of the infinite crystal, rotated, inside ``[0, box)`` (lab frame)."""
    cell = np.asarray(atoms.cell, dtype=np.float64)
    frac0 = atoms.get_scaled_positions(wrap=True)
    numbers = atoms.numbers
    inv_cell = np.linalg.inv(cell)
    corners = np.array([[i, j, k] for i in (0, 1) for j in (0, 1) for k in (0, 1)], dtype=np.float64) * box
    # lab -> crystal: x_c = R^T x_lab, shifted so that lab origin sits at origin_frac.
    shift = origin_frac @ cell
    frac_corners = (corners @ rotation + shift) @ inv_cell
    lo = np.floor(frac_corners.min(axis=0)).astype(int) - 1
    hi = np.ceil(frac_corners.max(axis=0)).astype(int) + 1
    n_cells = int(np.prod(hi - lo))
    est = n_cells * len(atoms)
    if est > 50 * max_atoms:
        raise ValueError(f"cutting this box enumerates {est} atoms: reduce the extent or thickness")
    pos_out, num_out = [], []
    ii, jj = np.meshgrid(np.arange(lo[0], hi[0]), np.arange(lo[1], hi[1]), indexing="ij")
    ij = np.stack([ii.ravel(), jj.ravel()], axis=1).astype(np.float64)
    for k in range(lo[2], hi[2]):  # one layer of cells at a time keeps memory flat
        n = np.concatenate([ij, np.full((len(ij), 1), float(k))], axis=1)
        frac = (n[:, None, :] + frac0[None, :, :]).reshape(-1, 3)
        lab = (frac @ cell - shift) @ rotation.T
        inside = np.all((lab >= 0) & (lab < box), axis=1)
        if inside.any():
            pos_out.append(lab[inside])
            num_out.append(np.tile(numbers, len(n))[inside])
    positions = np.concatenate(pos_out) if pos_out else np.zeros((0, 3))
    nums = np.concatenate(num_out) if num_out else np.zeros((0,), int)
    return positions, nums


def _cube_symmetries() -> np.ndarray:
    """The 48 signed permutation matrices (the point group of a cube)."""
    import itertools

    mats = []
    for perm in itertools.permutations(range(3)):
        for signs in itertools.product((1, -1), repeat=3):
            m = np.zeros((3, 3))
            for r, (c, s) in enumerate(zip(perm, signs)):
                m[r, c] = s
            mats.append(m)
    return np.array(mats)


def _cut_amorphous(atoms, box: np.ndarray, rng: np.random.Generator):
    """Tile ``[0, box)`` with copies of the periodic cube, each under a random cube symmetry
    and periodic translation, so the box has no periodicity at the tile scale."""
    side = float(atoms.cell[0, 0])
    base = atoms.get_positions()
    nums = atoms.numbers
    syms = _cube_symmetries()
    reps = np.ceil(box / side).astype(int)
    pos_out, num_out = [], []
    for i in range(reps[0]):
        for j in range(reps[1]):
            for k in range(reps[2]):
                m = syms[rng.integers(len(syms))]
                p = np.mod((base - side / 2) @ m.T + side / 2 + rng.random(3) * side, side)
                p = p + np.array([i, j, k]) * side
                inside = np.all(p < box, axis=1)
                pos_out.append(p[inside])
                num_out.append(nums[inside])
    return np.concatenate(pos_out), np.concatenate(num_out)


def cut_box(
    structure: Structure,
    extent: float,
    thickness: float,
    rotation: np.ndarray | None,
    rng: np.random.Generator,
    max_atoms: int = 2_000_000,
):
    """An orthogonal periodic ``extent x extent x thickness`` box (Angstrom), beam along +z.

    Parameters
    ----------
    structure : Structure
    extent, thickness : float
        Lateral side ``L`` and thickness ``T`` of the box in Angstrom.
    rotation : (3, 3) or None
        Lab = ``rotation @ crystal`` (crystals). Ignored for amorphous boxes, which are
        isotropic; None means the identity.
    rng : numpy Generator
        Draws the crystal's translation (so the probe lands anywhere in the unit cell)
        or the amorphous tiling.

    Returns
    -------
    ase.Atoms with cell ``diag(L, L, T)`` and ``pbc=True``.
    """
    from ase import Atoms

    if extent <= 0 or thickness <= 0:
        raise ValueError(f"extent and thickness must be positive, got {extent}, {thickness}")
    box = np.array([extent, extent, thickness], dtype=np.float64)
    if structure.kind == "vacuum":
        positions, numbers = np.zeros((0, 3)), np.zeros((0,), int)
    elif structure.kind == "amorphous":
        positions, numbers = _cut_amorphous(structure.atoms, box, rng)
    else:
        rot = np.eye(3) if rotation is None else np.asarray(rotation, dtype=np.float64)
        positions, numbers = _cut_crystal(structure.atoms, rot, box, rng.random(3), max_atoms)
    if len(numbers) > max_atoms:
        raise ValueError(f"the box holds {len(numbers)} atoms (> {max_atoms}): reduce the extent or thickness")
    return Atoms(numbers=numbers, positions=positions, cell=np.diag(box), pbc=True)
