"""The vocabulary every module shares: phase names, lesion type codes, clinical fields.

Kept in one place so that a dataset, a report and a network head can never disagree on an order.
"""

from __future__ import annotations

from typing import Final

#: Contrast phases in acquisition order: non-contrast, late arterial (~35 s), portal venous (~70 s).
PHASES: Final[tuple[str, ...]] = ("NC", "ART", "PV")

#: The seven focal liver lesion types. Index order is the class order of every classifier output.
LESION_TYPES: Final[tuple[str, ...]] = ("HCC", "ICC", "HM", "FNH", "HH", "HC", "HA")

LESION_TYPE_NAMES: Final[dict[str, str]] = {
    "HCC": "hepatocellular carcinoma",
    "ICC": "intrahepatic cholangiocarcinoma",
    "HM": "hepatic metastasis",
    "FNH": "focal nodular hyperplasia",
    "HH": "hepatic haemangioma",
    "HC": "hepatic cyst",
    "HA": "hepatic abscess",
}

#: The paper's small-lesion cutoff: detection and classification figures are split at lesions under 1 cm.
SMALL_LESION_MM: Final[float] = 10.0

MALIGNANT_TYPES: Final[frozenset[str]] = frozenset({"HCC", "ICC", "HM"})
BENIGN_TYPES: Final[frozenset[str]] = frozenset({"FNH", "HH", "HC", "HA"})
#: Positions of the malignant types in LESION_TYPES: P(malignant) is the sum of these probabilities.
MALIGNANT_INDICES: Final[tuple[int, ...]] = tuple(
    n for n, t in enumerate(LESION_TYPES) if t in MALIGNANT_TYPES
)

#: Clinical fields, as in the paper's Methods (hepatitis split into B and C as in the authors' code).
CLINICAL_FIELDS: Final[tuple[str, ...]] = (
    "age",
    "sex",
    "hepatitis_b",
    "hepatitis_c",
    "cirrhosis",
    "cholangiolithiasis",
    "extrahepatic_tumour",
)


def is_malignant(lesion_type: str) -> bool:
    """Return True for HCC, ICC and HM.

    Raises:
        ValueError: if ``lesion_type`` is not one of :data:`LESION_TYPES`.
    """
    if lesion_type not in LESION_TYPES:
        raise ValueError(f"unknown lesion type {lesion_type!r}; expected one of {', '.join(LESION_TYPES)}")
    return lesion_type in MALIGNANT_TYPES
