"""The SOP classes the SCP accepts, and which event each one produces."""

from __future__ import annotations

from typing import Literal

VERIFICATION = "1.2.840.10008.1.1"
RT_PLAN = "1.2.840.10008.5.1.4.1.1.481.5"
RT_ION_PLAN = "1.2.840.10008.5.1.4.1.1.481.8"
RT_BEAMS_RECORD = "1.2.840.10008.5.1.4.1.1.481.4"
RT_ION_BEAMS_RECORD = "1.2.840.10008.5.1.4.1.1.481.9"
RT_BRACHY_RECORD = "1.2.840.10008.5.1.4.1.1.481.6"
RT_SUMMARY_RECORD = "1.2.840.10008.5.1.4.1.1.481.7"
SPATIAL_REGISTRATION = "1.2.840.10008.5.1.4.1.1.66.1"
DEFORMABLE_REGISTRATION = "1.2.840.10008.5.1.4.1.1.66.3"
RAW_DATA = "1.2.840.10008.5.1.4.1.1.66"  # Elekta XVI "RPS" registration export
CT_IMAGE = "1.2.840.10008.5.1.4.1.1.2"
ENHANCED_CT = "1.2.840.10008.5.1.4.1.1.2.1"
RT_IMAGE = "1.2.840.10008.5.1.4.1.1.481.1"
RT_STRUCTURE_SET = "1.2.840.10008.5.1.4.1.1.481.3"
RT_DOSE = "1.2.840.10008.5.1.4.1.1.481.2"
ENCAPSULATED_PDF = "1.2.840.10008.5.1.4.1.1.104.1"

CT_CLASSES = frozenset({CT_IMAGE, ENHANCED_CT})

Route = Literal["plan", "treatment", "summary", "image", "registration", "document", "store_only"]

# Storage SOP class -> what the SCP does with it after storing it.
STORAGE: dict[str, Route] = {
    RT_PLAN: "plan",
    RT_ION_PLAN: "plan",
    RT_BEAMS_RECORD: "treatment",
    RT_ION_BEAMS_RECORD: "treatment",
    RT_BRACHY_RECORD: "treatment",
    RT_SUMMARY_RECORD: "summary",
    SPATIAL_REGISTRATION: "registration",
    DEFORMABLE_REGISTRATION: "registration",
    RAW_DATA: "registration",
    CT_IMAGE: "image",
    ENHANCED_CT: "image",
    RT_IMAGE: "image",
    RT_STRUCTURE_SET: "store_only",
    RT_DOSE: "store_only",
    ENCAPSULATED_PDF: "document",
}

NAMES: dict[str, str] = {
    RT_PLAN: "RT Plan",
    RT_ION_PLAN: "RT Ion Plan",
    RT_BEAMS_RECORD: "RT Beams Treatment Record",
    RT_ION_BEAMS_RECORD: "RT Ion Beams Treatment Record",
    RT_BRACHY_RECORD: "RT Brachy Treatment Record",
    RT_SUMMARY_RECORD: "RT Treatment Summary Record",
    SPATIAL_REGISTRATION: "Spatial Registration",
    DEFORMABLE_REGISTRATION: "Deformable Spatial Registration",
    RAW_DATA: "Raw Data",
    CT_IMAGE: "CT Image",
    ENHANCED_CT: "Enhanced CT Image",
    RT_IMAGE: "RT Image",
    RT_STRUCTURE_SET: "RT Structure Set",
    RT_DOSE: "RT Dose",
    ENCAPSULATED_PDF: "Encapsulated PDF",
}
