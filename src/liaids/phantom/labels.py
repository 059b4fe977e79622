"""Anatomy label ids of the phantom's ``anatomy_{NC,ART,PV}.nii.gz`` maps (phantom only)."""

from __future__ import annotations

from enum import IntEnum


class Tissue(IntEnum):
    """Label id of each tissue class painted by the phantom. 0 is air outside the body."""

    AIR = 0
    SUBCUTANEOUS_FAT = 1
    MUSCLE = 2
    VISCERAL_FAT = 3
    LUNG = 4
    BONE_CORTICAL = 5
    BONE_CANCELLOUS = 6
    DISC = 7
    SPINAL_CANAL = 8
    LIVER = 9
    SPLEEN = 10
    KIDNEY_CORTEX = 11
    KIDNEY_MEDULLA = 12
    AORTA = 13
    IVC = 14
    PORTAL_VEIN = 15
    HEPATIC_VEIN = 16
    HEPATIC_ARTERY = 17
    PANCREAS = 18
    STOMACH_WALL = 19
    BOWEL_WALL = 20
    LUMEN_FLUID = 21
    BOWEL_GAS = 22
    GALLBLADDER = 23
    HEART = 24
    ASCITES = 25
    BILE_DUCT = 26


#: Human-readable names for dataset.json.
TISSUE_NAMES: dict[int, str] = {int(t): t.name.lower() for t in Tissue}
N_TISSUES = len(Tissue)
